//! Chunked request bodies, as real clients send them: curl with `Transfer-Encoding:
//! chunked`, python `requests` with a generator body (what nginx's
//! `proxy_request_buffering off` produces too). Bodies are decoded and discarded, the
//! connection stays usable, limits answer 413, and broken framing is a 400 and a close
//! that the worker survives.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs python3 with `script`, bounded in time (killed by pid); None if python3 or
/// `requests` is missing (printed).
fn python(dir: &Path, script: &str) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("skipping the python part: python3 with `requests` is not installed");
        return None;
    }
    let out = dir.join("py.out");
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("NO_PROXY", "*")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3");
    let mut status = None;
    let done = wait_until(Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("python did not finish in 60 s");
    }
    assert!(status.unwrap().success(), "python failed");
    Some(std::fs::read_to_string(out).unwrap())
}

#[test]
fn curl_sends_a_chunked_body_and_reuses_the_connection() {
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(port, "http", "body = \"got it\\n\"")
            .render(),
    );
    let body = c.dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 3 << 20]).unwrap();
    let url = format!("http://127.0.0.1:{port}/upload");
    let data = format!("@{}", body.display());
    let args = [
        "--noproxy",
        "*",
        "-v",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
        "--next",
        "--noproxy",
        "*",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
    ];
    let Some(run) = common::http::run_curl(c.dir.path(), &args) else {
        return;
    };
    assert!(run.ok, "curl failed: {}\n{}", run.stderr, c.log_tail(30));
    assert_eq!(run.stdout, "got it\ngot it\n");
    assert!(
        run.stderr.contains("> Transfer-Encoding: chunked"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("< HTTP/1.1 200 OK").count(),
        2,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Re-using existing connection")
            || run.stderr.contains("Reusing existing"),
        "the second request did not reuse the connection: {}",
        run.stderr
    );
}

#[test]
fn python_requests_generator_bodies_are_read_and_limited() {
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(
                port,
                "http",
                "body = \"got it\\n\"\nmax_body_size = \"1MiB\"",
            )
            .render(),
    );
    let script = format!(
        r#"
import requests
s = requests.Session()
def gen(n, size):
    for _ in range(n):
        yield b"y" * size
url = "http://127.0.0.1:{port}/"
out = []
for _ in range(3):
    r = s.post(url, data=gen(100, 1000))
    out.append(f"{{r.status_code}} {{r.text.strip()}}")
r = s.post(url, data=gen(300, 4096))
out.append(f"{{r.status_code}} {{r.headers.get('Connection')}}")
print("\n".join(out))
"#
    );
    let Some(out) = python(c.dir.path(), &script) else {
        return;
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["200 got it"; 3], "{out}");
    // 1.2 MB in chunks against a 1 MiB limit: 413, and the connection closes.
    assert_eq!(lines[3], "413 close", "{out}");
}

#[test]
fn broken_chunked_framing_is_a_400_and_a_close_the_worker_survives() {
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(port, "http", "body = \"got it\\n\"")
            .render(),
    );
    let worker = c.worker_pids();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let bad: &[&[u8]] = &[
        b"5\r\nhelloXX0\r\n\r\n",
        b"zz\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"10000000000000000\r\n",
    ];
    for body in bad {
        let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        s.write_all(&req).unwrap();
        let mut got = Vec::new();
        // The server answers and closes: read to EOF.
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && text.matches("HTTP/1.1").count() == 1,
            "{:?}: {text}",
            String::from_utf8_lossy(body)
        );
    }
    // Transfer-Encoding with Content-Length is a smuggling attempt.
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 400 ") && text.matches("HTTP/1.1").count() == 1,
        "{text}"
    );
    // Same worker, still serving: a good chunked request, pipelined with a GET.
    assert_eq!(c.worker_pids(), worker, "the worker changed");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}
