//! WebSocket subscribers of the push example (`service = "push-ws"`, built on
//! `corral::websocket`): a raw client's handshake, frames and protocol errors, its
//! subscriptions through `-s reload` and `-s upgrade`, and a real browser (headless
//! Chromium) that subscribes from a page and keeps receiving through both.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::tls::{rustls_client, Pki};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The push example's binary in a temp dir of its own (an upgrade execs it).
fn push_binary() -> (tempfile::TempDir, PathBuf) {
    let built = example_bin("push");
    let dir = tempfile::Builder::new()
        .prefix("corral-push-ws-bin-")
        .tempdir()
        .expect("temp dir");
    let bin = dir.path().join("push");
    install_exec(&built, &bin);
    (dir, bin)
}

/// The push example on two workers with a WebSocket listener and an HTTP publisher:
/// (corral, WebSocket address, publishers' address).
fn start(bin: &Path) -> (Corral, SocketAddr, SocketAddr) {
    let (ws, publ) = (free_port(), free_port());
    let c = Corral::start_with(
        &Conf::bare(2)
            .drain("60s")
            .listen(ws, "push-ws", "")
            .listen(publ, "push-publish", "")
            .render(),
        Launch {
            binary: Some(bin.to_path_buf()),
            ..Launch::default()
        },
    );
    (c, loopback(ws), loopback(publ))
}

/// `POST /publish/<topic>`; the status code.
fn publish(addr: SocketAddr, topic: &str, body: &str) -> u16 {
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect the publisher");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {reply:?}"))
}

/// A WebSocket client written from RFC 6455, independent of `corral::websocket`,
/// over a plain or a TLS stream.
struct Ws<S: Read + Write = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = connect(addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

impl Ws {
    fn open_with(addr: SocketAddr, request: &str) -> (Ws, String) {
        Ws::over(tcp(addr), request)
    }

    fn open(addr: SocketAddr) -> Ws {
        Ws::checked(tcp(addr))
    }
}

impl<S: Read + Write> Ws<S> {
    /// Sends `request` (a handshake) over `s`; returns the client and the response
    /// head.
    fn over(s: S, request: &str) -> (Ws<S>, String) {
        let mut ws = Ws { s, buf: Vec::new() };
        ws.s.write_all(request.as_bytes()).unwrap();
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).to_string();
                ws.buf.drain(..end + 4);
                break head;
            }
            assert!(ws.fill(), "closed before a response: {:?}", ws.buf);
        };
        (ws, head)
    }

    /// The handshake over `s`, which must be accepted.
    fn checked(s: S) -> Ws<S> {
        let (ws, head) = Ws::over(s, &request("13"));
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // RFC 6455 §1.3's key and its accept value.
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        ws
    }

    /// Reads more; false at EOF.
    fn fill(&mut self) -> bool {
        let mut b = [0u8; 4096];
        match self.s.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) => panic!("no frame within {WAIT:?}: {e}"),
        }
    }

    /// Sends one masked frame.
    fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        assert!(payload.len() < 126);
        f.push(payload.len() as u8 | if masked { 0x80 } else { 0 });
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.s.write_all(&f).unwrap();
    }

    fn send(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true);
    }

    /// The next frame: (opcode, payload); None at EOF.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a server's frames are unmasked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    assert_eq!(self.buf[0] & 0x80, 0x80, "one frame per message");
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn text(&mut self) -> String {
        match self.frame() {
            Some((1, p)) => String::from_utf8(p).expect("UTF-8 text"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Subscribes and waits until the subscription is in place (PING is answered
    /// after it).
    fn subscribe(&mut self, topic: &str) {
        self.send(&format!("SUB {topic}"));
        self.send("PING");
        assert_eq!(self.text(), "PONG");
    }
}

fn request(version: &str) -> String {
    format!(
        "GET /push HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// The upgrade, the new master adopted by the handle, the old one gone.
fn upgrade(c: &Corral) {
    c.must_upgrade();
    assert!(
        wait_until(WAIT, || c.master_exited()),
        "the old master stayed\n{}",
        c.log_tail(40)
    );
}

#[test]
fn websocket_subscribers_keep_their_topics_through_reload_and_upgrade() {
    let (_dir, bin) = push_binary();
    let (c, ws, publ) = start(&bin);
    let mut subs: Vec<Ws> = (0..6).map(|_| Ws::open(ws)).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        s.subscribe(if i % 2 == 0 { "even" } else { "odd" });
    }
    let round = |subs: &mut Vec<Ws>, tag: &str| {
        assert_eq!(publish(publ, "even", &format!("e {tag}")), 204);
        assert_eq!(publish(publ, "odd", &format!("o {tag} ü")), 204);
        for (i, s) in subs.iter_mut().enumerate() {
            let want = if i % 2 == 0 {
                format!("e {tag}")
            } else {
                format!("o {tag} ü")
            };
            assert_eq!(s.text(), want, "subscriber {i}");
            // Nothing else came: the next answer is the PONG.
            s.send("PING");
            assert_eq!(s.text(), "PONG", "subscriber {i}: one message, once");
        }
    };
    round(&mut subs, "before");
    c.must_reload();
    assert!(
        wait_until(WAIT, || c.log().contains("generation 1 gone after")),
        "the old generation stayed\n{}",
        c.log_tail(40)
    );
    round(&mut subs, "after reload");
    upgrade(&c);
    round(&mut subs, "after upgrade");
    // Ping, then a clean close: the server answers with its own close frame.
    subs[0].send_frame(0x89, b"are you there", true);
    assert_eq!(subs[0].frame(), Some((0xa, b"are you there".to_vec())));
    subs[0].send_frame(0x88, &1000u16.to_be_bytes(), true);
    assert_eq!(subs[0].frame().map(|f| f.0), Some(0x8));
    assert_eq!(subs[0].frame(), None, "closed after the close frame");
}

#[test]
fn a_bad_handshake_or_frame_gets_its_error_and_a_close_and_the_service_goes_on() {
    let (_dir, bin) = push_binary();
    let (c, ws, _publ) = start(&bin);
    // An old protocol version: 426 naming the one spoken.
    let (mut old, head) = Ws::open_with(ws, &request("8"));
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    while old.fill() {}
    // Plain HTTP: 400, closed.
    let (mut plain, head) = Ws::open_with(ws, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    while plain.fill() {}
    // An unmasked frame: close 1002.
    let mut bad = Ws::open(ws);
    bad.send_frame(0x81, b"SUB x", false);
    let (op, payload) = bad.frame().expect("a close frame");
    assert_eq!(op, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    assert_eq!(bad.frame(), None, "closed");
    // A binary message to a text service: close 1003.
    let mut bin_msg = Ws::open(ws);
    bin_msg.send_frame(0x82, b"\x00\x01", true);
    let (op, payload) = bin_msg.frame().expect("a close frame");
    assert_eq!(
        (op, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1003)
    );
    // The workers are the ones that started, and a good client is served.
    let mut good = Ws::open(ws);
    good.subscribe("t");
    assert!(
        c.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        c.log()
    );
}

/// What a page reported: each request line's path, in order.
fn reports(listener: TcpListener) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 2048];
            let n = s.read(&mut b).unwrap_or(0);
            let line = String::from_utf8_lossy(&b[..n]);
            if let Some(path) = line.split(' ').nth(1) {
                let path = path.split('?').next().unwrap_or("").to_string();
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                if tx.send(path).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Headless Chromium in a process group of its own, ended (the group, by pid) on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn next(rx: &mpsc::Receiver<String>, what: &str, c: &Corral) -> String {
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the page did not report {what}\n{}", c.log_tail(40)))
}

#[test]
fn a_browser_subscribes_over_websocket_and_keeps_receiving_through_reload_and_upgrade() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium; .ci/run installs it)"
        );
        return;
    };
    let (_dir, bin) = push_binary();
    let (c, ws, publ) = start(&bin);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the report listener");
    let report_port = listener.local_addr().unwrap().port();
    let rx = reports(listener);
    let page_dir = tempfile::tempdir().expect("temp dir");
    let page = page_dir.path().join("push.html");
    // The page opens one WebSocket and never reconnects: a message after a reload or
    // an upgrade reached the connection it opened first. It reports by loading an
    // image from the test's listener (no CORS involved).
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><title>push</title><script>
const report = (what) => {{ new Image().src = "http://127.0.0.1:{report_port}/" + what + "?t=" + Math.random(); }};
const ws = new WebSocket("ws://127.0.0.1:{port}/push");
let pongs = 0;
ws.onopen = () => {{ ws.send("SUB news"); ws.send("PING"); }};
ws.onmessage = (e) => {{
  if (e.data === "PONG") {{ report("pong" + (++pongs)); return; }}
  report("got/" + encodeURIComponent(e.data));
  ws.send("PING");
}};
ws.onclose = (e) => report("closed/" + e.code);
ws.onerror = () => report("error");
</script>"#,
            port = ws.port()
        ),
    )
    .expect("write the page");
    let profile = page_dir.path().join("profile");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let _browser = Browser(cmd.spawn().expect("start chromium"));

    assert_eq!(next(&rx, "its subscription", &c), "/pong1");
    let mut pongs = 1;
    let started = Instant::now();
    for (i, step) in ["before", "reload", "upgrade"].iter().enumerate() {
        match *step {
            "reload" => {
                c.must_reload();
            }
            "upgrade" => upgrade(&c),
            _ => {}
        }
        let msg = format!("news {i} {step} ü");
        assert_eq!(publish(publ, "news", &msg), 204);
        let got = next(&rx, &msg, &c);
        assert_eq!(
            got,
            format!("/got/{}", msg.replace(' ', "%20").replace('ü', "%C3%BC")),
            "after {step}"
        );
        pongs += 1;
        assert_eq!(
            next(&rx, "the PING after it", &c),
            format!("/pong{pongs}"),
            "one message, once, the same connection"
        );
    }
    eprintln!(
        "a browser's WebSocket through a reload and an upgrade: 3 of 3 messages in {:?}",
        started.elapsed()
    );
    assert!(
        rx.try_recv().is_err(),
        "nothing else reported (no close, no error)"
    );
}

#[test]
fn a_wss_subscriber_keeps_its_tls_session_and_topics_through_reload_and_upgrade() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 30);
    let (_dir, bin) = push_binary();
    let (ws, publ) = (free_port(), free_port());
    let c = Corral::start_with(
        &Conf::bare(2)
            .drain("60s")
            .listen(ws, "push-ws", &srv.tls_table(""))
            .listen(publ, "push-publish", "")
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    let config = rustls_client(&pki.ca);
    let mut subs: Vec<_> = (0..4)
        .map(|_| {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp(loopback(ws)));
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("TLS handshake");
            }
            let mut w = Ws::checked(s);
            w.subscribe("news");
            w
        })
        .collect();
    for step in ["before", "reload", "upgrade"] {
        match step {
            "reload" => {
                c.must_reload();
            }
            "upgrade" => upgrade(&c),
            _ => {}
        }
        let msg = format!("secure {step}");
        assert_eq!(publish(loopback(publ), "news", &msg), 204);
        for (i, s) in subs.iter_mut().enumerate() {
            assert_eq!(s.text(), msg, "wss subscriber {i} after {step}");
        }
    }
    // Each message came on the TLS session each client opened first: a worker that
    // had lost its keys could not have sent a record these clients decrypt, and a
    // closed connection would have failed `text()`.
}
