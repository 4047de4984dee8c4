//! Helpers for the metrics tests: configs with a `service = "metrics"` listener,
//! scrapes with curl, raw HTTP on a kept-alive socket, and parsing with the real
//! Prometheus text parser (the `prometheus_client` Python package).

use super::skipped;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A sample's labels.
pub type Labels = BTreeMap<String, String>;
/// A sample's identity: metric name and labels.
pub type Key = (String, Labels);
/// One parsed sample: metric name and labels -> value.
pub type Samples = BTreeMap<Key, f64>;

/// The parse of a scrape: samples and each family's declared type.
#[derive(Debug, Default)]
pub struct Parsed {
    pub samples: Samples,
    pub types: BTreeMap<String, String>,
}

impl Parsed {
    /// The value of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// Every sample of `name`, with its labels.
    pub fn all(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }

    /// Counters: samples of families typed `counter`.
    pub fn counters(&self) -> Vec<(Key, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| {
                n.strip_suffix("_total")
                    .is_some_and(|f| self.types.get(f).is_some_and(|t| t == "counter"))
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// True if python3 with `prometheus_client` is here; prints why not otherwise.
pub fn parser_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skipped(format_args!(
            "SKIPPED: python3 with the prometheus_client package is needed \
             (pip install prometheus_client; .ci/run installs it)"
        ));
    }
    ok
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"samples": [], "types": {}}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Parses exposition text with prometheus_client; panics (with the text) if the
/// real parser rejects it.
pub fn parse(text: &str) -> Parsed {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client rejected the text: {}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
    let mut p = Parsed::default();
    for s in v["samples"].as_array().expect("samples") {
        let name = s[0].as_str().expect("name").to_string();
        let labels = s[1]
            .as_object()
            .expect("labels")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let value = s[2].as_f64().expect("value");
        let dup = p.samples.insert((name.clone(), labels), value);
        assert!(dup.is_none(), "duplicate sample {name}\n{text}");
    }
    for (k, t) in v["types"].as_object().expect("types") {
        p.types
            .insert(k.clone(), t.as_str().unwrap_or("").to_string());
    }
    p
}

/// What curl got.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `curl http://addr{path}` (a real client), bounded in time.
pub fn curl(addr: SocketAddr, path: &str) -> Got {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "15", "-D"])
        .arg(&headers)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Scrapes `/metrics` and parses it; panics unless it is a 200 in the format.
pub fn scrape(addr: SocketAddr) -> Parsed {
    let got = curl(addr, "/metrics");
    assert_eq!(got.status, 200, "scrape of {addr}: {got:?}");
    assert!(
        got.headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        got.headers
    );
    parse(&got.body)
}

/// Scrapes until `cond` holds (workers report with heartbeats), within `timeout`.
pub fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    mut cond: impl FnMut(&Parsed) -> bool,
) -> Parsed {
    let deadline = Instant::now() + timeout;
    loop {
        let p = scrape(addr);
        if cond(&p) || Instant::now() >= deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One HTTP/1.1 exchange on a kept-alive socket: the status, the head, and whether
/// the server closed after it.
pub fn request(s: &mut TcpStream, raw: &[u8]) -> (u16, String, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("send request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let head_only = raw.starts_with(b"HEAD ");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let len = if head_only { 0 } else { len };
            if buf.len() >= end + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let close = head.to_ascii_lowercase().contains("connection: close");
                return (status, head, close);
            }
        }
        assert!(Instant::now() < deadline, "no complete response: {buf:?}");
        match s.read(&mut chunk) {
            Ok(0) => return (0, String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading a response: {e}; got {buf:?}"),
        }
    }
}

/// Reads until EOF (true) or `timeout` (false); a reset counts as closed.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + timeout;
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}
