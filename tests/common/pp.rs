//! Helpers for the PROXY protocol tests: real peers (HAProxy in front of corral, nginx
//! behind it) started in the foreground by pid and killed on drop, clients bound to
//! chosen loopback source addresses, and the connection-log lines corral writes.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{wait_until, Corral};

/// An external server (haproxy, nginx) this test started; killed by pid on drop.
pub struct Peer {
    child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// What it printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Peer {
    /// SIGTERM first, so nginx's master takes its workers down with it (a SIGKILLed
    /// master would leave them running); SIGKILL for whatever is left, by pid.
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let children = super::live_children(pid);
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let exited = wait_until(Duration::from_secs(10), || !self.alive());
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for ch in children {
            if super::proc_alive(ch) {
                let _ = kill(Pid::from_raw(ch.pid), Signal::SIGKILL);
            }
        }
    }
}

/// The path of `bin` if it is installed, else None after printing why the test skips.
pub fn installed(bin: &str, test: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return Some(p);
        }
    }
    eprintln!("SKIP {test}: `{bin}` is not installed (.ci/run installs it: apt-get install {bin})");
    None
}

/// Starts `bin args...` in the foreground (its output in `dir`), then waits until
/// `port` accepts connections.
pub fn start_peer(name: &'static str, bin: &Path, args: &[&str], dir: &Path, port: u16) -> Peer {
    let log = dir.join(format!("{name}.out"));
    let out = fs::File::create(&log).expect("create peer log");
    let err = out.try_clone().expect("clone peer log");
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut peer = Peer { child, log };
    let up = wait_until(Duration::from_secs(20), || {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        )
        .is_ok()
            || !peer.alive()
    });
    assert!(
        up && peer.alive(),
        "{name} did not start:\n{}",
        peer.output()
    );
    peer
}

/// HAProxy in TCP mode on `front`, forwarding to corral on `back` with `send` (the
/// server option: `send-proxy` or `send-proxy-v2`).
pub fn haproxy(bin: &Path, dir: &Path, front: u16, back: u16, send: &str) -> Peer {
    let cfg = dir.join("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 30s\n    timeout server 30s\n\n\
             frontend front\n    bind 127.0.0.1:{front}\n    default_backend corral\n\n\
             backend corral\n    server c1 127.0.0.1:{back} {send}\n"
        ),
    )
    .expect("write haproxy.cfg");
    let cfg = cfg.display().to_string();
    start_peer("haproxy", bin, &["-f", &cfg, "-db"], dir, front)
}

/// nginx answering every request on `port` (which expects a PROXY header) with the
/// address the header named: `$proxy_protocol_addr:$proxy_protocol_port`.
pub fn nginx(bin: &Path, dir: &Path, port: u16) -> Peer {
    let prefix = dir.join("nginx");
    fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
    let conf = prefix.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {p}/logs/access.log;\n  client_body_temp_path {p};\n  \
             proxy_temp_path {p};\n  fastcgi_temp_path {p};\n  uwsgi_temp_path {p};\n  \
             scgi_temp_path {p};\n  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n    \
             location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port\"; }}\n  }}\n}}\n",
            p = prefix.display()
        ),
    )
    .expect("write nginx.conf");
    let conf = conf.display().to_string();
    let prefix = prefix.display().to_string();
    start_peer(
        "nginx",
        bin,
        &["-g", "daemon off;", "-c", &conf, "-p", &prefix],
        dir,
        port,
    )
}

/// A TCP connection to `to` from source address `from` (any 127.0.0.0/8 address
/// works on Linux loopback), so a test can tell its clients apart by IP.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything the server sends until it closes (or `timeout`): (bytes, closed).
pub fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if super::is_reset(&e) => return (got, true),
            Err(e) if super::is_timeout(&e) => return (got, false),
            Err(_) => return (got, true),
        }
    }
}

/// A one-shot HTTP/1.0 GET through `s`; returns the body.
pub fn http_get_body(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.0\r\nHost: pp\r\n\r\n")
        .expect("send GET");
    let (got, closed) = read_to_close(s, Duration::from_secs(15));
    assert!(
        closed,
        "no complete response: {:?}",
        String::from_utf8_lossy(&got)
    );
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// corral's connection-log lines.
pub fn conn_lines(c: &Corral) -> Vec<String> {
    c.log()
        .lines()
        .filter(|l| l.contains("conn client="))
        .map(str::to_string)
        .collect()
}

/// Waits for a connection-log line containing every one of `needles`.
pub fn wait_conn_line(c: &Corral, needles: &[&str]) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = conn_lines(c)
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no connection-log line with {needles:?}; lines: {:#?}\n{}",
            conn_lines(c),
            c.log_tail(40)
        )
    })
}

/// A v2 header from raw parts (signature, version/command, family, length, body).
pub fn v2_raw(vc: u8, fam: u8, len: u16, body: &[u8]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[vc, fam]);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// A valid v2 PROXY header for TCP over IPv4.
pub fn v2_tcp4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("v2_tcp4 takes IPv4 addresses");
    };
    let mut body = Vec::new();
    body.extend_from_slice(&s.ip().octets());
    body.extend_from_slice(&d.ip().octets());
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    v2_raw(0x21, 0x11, 12, &body)
}

/// `proxy_header_failed` summed over the workers in `corral status --json`.
pub fn header_failures(c: &Corral) -> u64 {
    let out = c.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["proxy_header_failed"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}
