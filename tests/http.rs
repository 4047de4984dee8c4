//! Black-box tests of the built-in `http` service: the real binary, real clients
//! (curl, wrk when installed, raw sockets). Each config has two listeners: the echo
//! listener on `{port}`, which the harness's readiness check needs, and the http
//! listener under test on a second free port. See `common/mod.rs` for the harness
//! rules (deadline waits, loopback only, kill by pid).

use crate::common;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(6);
/// How long one request may take before the test calls it a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A corral with an echo listener (for the harness) and an http listener.
struct Http {
    c: Corral,
    port: u16,
}

impl Http {
    /// `conf` with an http listener after the echo one; `http_keys` are its lines
    /// (sub-tables such as `[listen.headers]` last, so they may follow them).
    fn start(conf: Conf, http_keys: &str) -> Http {
        let port = free_port();
        let c = Corral::start(&conf.listen(port, "http", http_keys).render());
        Http { c, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn client(&self) -> Client {
        match Client::connect(self.addr()) {
            Ok(c) => c,
            Err(e) => panic!("connect to {}: {e}\n{}", self.addr(), self.c.log_tail(40)),
        }
    }
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why reading a response failed.
enum Fail {
    /// EOF or reset; `got` bytes of a response had arrived.
    Closed {
        got: usize,
        why: String,
    },
    Timeout {
        got: usize,
    },
    Bad(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Closed { got, why } => write!(f, "closed ({why}) after {got} bytes"),
            Fail::Timeout { got } => write!(f, "timed out after {got} bytes"),
            Fail::Bad(e) => write!(f, "{e}"),
        }
    }
}

/// A raw HTTP/1.1 client over one connection, with a buffer so pipelined
/// responses can be split.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        Ok(Client { s, buf: Vec::new() })
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads more bytes before `deadline`; Ok(0) is EOF.
    fn fill(&mut self, deadline: Instant) -> Result<usize, Fail> {
        let got = self.buf.len();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::Timeout { got });
        }
        self.s
            .set_read_timeout(Some(left))
            .map_err(|e| Fail::Bad(e.to_string()))?;
        let mut tmp = [0u8; 16 << 10];
        loop {
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(Fail::Timeout { got }),
                Err(e) if is_reset(&e) => {
                    return Err(Fail::Closed {
                        got,
                        why: e.to_string(),
                    })
                }
                Err(e) => return Err(Fail::Bad(e.to_string())),
            }
        }
    }

    /// Reads one response (framed by Content-Length; `head_only` for HEAD).
    fn response(&mut self, head_only: bool) -> Result<Resp, Fail> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill(deadline)? == 0 {
                return Err(Fail::Closed {
                    got: self.buf.len(),
                    why: "EOF".into(),
                });
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Fail::Bad(format!("bad status line: {head:?}")))?;
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = match r.header("content-length") {
            Some(v) => v
                .parse()
                .map_err(|_| Fail::Bad(format!("bad Content-Length: {:?}", r.head)))?,
            None => 0,
        };
        let len = if head_only { 0 } else { len };
        while self.buf.len() < end + len {
            if self.fill(deadline)? == 0 {
                return Err(Fail::Closed {
                    got: self.buf.len(),
                    why: "EOF in body".into(),
                });
            }
        }
        r.body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Ok(r)
    }

    /// Sends `req` and reads its response.
    fn roundtrip(&mut self, req: &[u8]) -> Result<Resp, Fail> {
        self.send(req).map_err(|e| Fail::Closed {
            got: 0,
            why: format!("write: {e}"),
        })?;
        self.response(req.starts_with(b"HEAD "))
    }

    /// Waits for the server to close (EOF or reset), with nothing more sent.
    fn expect_closed(&mut self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let before = self.buf.len();
        match self.fill(t0 + timeout) {
            Ok(0) | Err(Fail::Closed { .. }) => Ok(t0.elapsed()),
            Ok(_) => Err(format!(
                "unexpected bytes before the close: {:?}",
                String::from_utf8_lossy(&self.buf[before..])
            )),
            Err(Fail::Timeout { .. }) => Err(format!("still open after {timeout:?}")),
            Err(Fail::Bad(e)) => Err(e),
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

fn must<T>(h: &Http, what: &str, r: Result<T, Fail>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", h.c.log_tail(40)))
}

/// `req` on a fresh connection gets a 400 that says `Connection: close`, and the
/// connection is closed after it.
fn refused_400_and_closed(h: &Http, req: &[u8], what: &str) {
    let mut cl = h.client();
    let r = must(h, what, cl.roundtrip(req));
    assert_eq!(r.status, 400, "{what}: {r:?}");
    assert!(r.closes(), "{what}: {r:?}");
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("{what}: not closed after 400: {e}");
    }
}

/// Runs curl with `args` (and `--noproxy '*'`) by `http::run_curl`: bounded in time,
/// killed by pid if it overruns; None if curl is not installed.
fn curl(h: &Http, args: &[&str]) -> Option<http::CurlRun> {
    let mut all = vec!["--noproxy", "*"];
    all.extend_from_slice(args);
    http::run_curl(h.c.dir.path(), &all)
}

/// wrk's path, if it is installed.
fn wrk_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wrk"))
        .find(|p| p.is_file())
}

/// Whether everything the client on `client_port` sent to `server_port` was
/// delivered (client's send queue empty) and read by the server (server's receive
/// queue empty), from /proc/net/tcp.
fn all_read(server_port: u16, client_port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let (srv, cli) = (
        format!("0100007F:{server_port:04X}"),
        format!("0100007F:{client_port:04X}"),
    );
    let queues = |local: &str, remote: &str| {
        tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 4 && f[1] == local && f[2] == remote {
                let (tx, rx) = f[4].split_once(':')?;
                Some((
                    u64::from_str_radix(tx, 16).ok()?,
                    u64::from_str_radix(rx, 16).ok()?,
                ))
            } else {
                None
            }
        })
    };
    matches!(
        (queues(&cli, &srv), queues(&srv, &cli)),
        (Some((0, _)), Some((_, 0)))
    )
}

/// `corral -s reload`, which must succeed.
// ---------------------------------------------------------------------------
// Basic responses
// ---------------------------------------------------------------------------

#[test]
fn default_response_is_200_with_a_body() {
    let h = Http::start(Conf::new(1), "");
    let mut cl = h.client();
    let r = must(&h, "GET", cl.roundtrip(GET));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.is_empty(), "the default body is not empty");
    assert_eq!(r.header("server"), Some("corral"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(
        r.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{r:?}"
    );
}

#[test]
fn curl_sees_configured_status_body_and_headers() {
    let h = Http::start(
        Conf::new(2),
        "status = 418\nbody = \"short and stout\\n\"\n\
         [listen.headers]\nX-Corral-Test = \"yes\"\nCache-Control = \"no-store\"\n",
    );
    let Some(out) = curl(&h, &["--include", &h.url()]) else {
        return;
    };
    assert!(out.ok, "curl failed: {}", out.stderr);
    let (head, body) = out
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in curl output: {:?}", out.stdout));
    let head = format!("{head}\r\n");
    assert!(head.starts_with("HTTP/1.1 418 "), "{head}");
    assert!(head.contains("X-Corral-Test: yes\r\n"), "{head}");
    assert!(head.contains("Cache-Control: no-store\r\n"), "{head}");
    assert!(head.contains("Content-Length: 16\r\n"), "{head}");
    assert_eq!(body, "short and stout\n");
}

#[test]
fn curl_reuses_the_keep_alive_connection() {
    let h = Http::start(Conf::new(2), "");
    let url = h.url();
    let Some(out) = curl(&h, &["--verbose", &url, &url, &url]) else {
        return;
    };
    assert!(out.ok, "curl failed: {}", out.stderr);
    assert_eq!(out.stdout, "ok\nok\nok\n");
    assert_eq!(
        out.stderr.matches("e-using existing").count(),
        2,
        "curl did not reuse its connection:\n{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("Connected to").count(),
        1,
        "{}",
        out.stderr
    );
}

#[test]
fn raw_keep_alive_serves_many_requests_on_one_connection() {
    let h = Http::start(Conf::new(1), "");
    let mut cl = h.client();
    for i in 0..50 {
        let r = must(&h, &format!("request {i}"), cl.roundtrip(GET));
        assert_eq!(r.status, 200);
        assert!(!r.closes());
    }
}

#[test]
fn head_gets_the_length_but_no_body() {
    let h = Http::start(Conf::new(1), "body = \"0123456789\"\n");
    if let Some(out) = curl(&h, &["--head", &h.url()]) {
        assert!(out.ok, "curl failed: {}", out.stderr);
        assert!(
            out.stdout.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("Content-Length: 10\r\n"),
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("0123456789"), "{}", out.stdout);
    }
    // Raw: a HEAD then a GET on one connection; if the HEAD response had a body,
    // the GET's response would not parse.
    let mut cl = h.client();
    let r = must(
        &h,
        "HEAD",
        cl.roundtrip(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"),
    );
    assert_eq!(r.header("content-length"), Some("10"));
    let r = must(&h, "GET after HEAD", cl.roundtrip(GET));
    assert_eq!(r.body_str(), "0123456789");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = Http::start(Conf::new(1), "");
    let mut cl = h.client();
    // Three requests in one write; the middle one is a HEAD, so the order is
    // visible: a reordered stream would not frame.
    let mut reqs = Vec::new();
    reqs.extend_from_slice(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n");
    reqs.extend_from_slice(b"HEAD /2 HTTP/1.1\r\nHost: t\r\n\r\n");
    reqs.extend_from_slice(b"POST /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    must(
        &h,
        "pipelined write",
        cl.send(&reqs).map_err(|e| Fail::Bad(e.to_string())),
    );
    let r1 = must(&h, "response 1", cl.response(false));
    let r2 = must(&h, "response 2", cl.response(true));
    let r3 = must(&h, "response 3", cl.response(false));
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(r1.body_str(), "ok\n");
    assert_eq!(r3.body_str(), "ok\n");
    assert!(cl.buf.is_empty(), "extra bytes: {:?}", cl.buf);
    // The connection is still usable.
    let r = must(&h, "after the pipeline", cl.roundtrip(GET));
    assert_eq!(r.status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let h = Http::start(Conf::new(1), "");
    let mut cl = h.client();
    let r = must(
        &h,
        "GET with Connection: close",
        cl.roundtrip(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert!(r.closes(), "{r:?}");
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("the server did not close after Connection: close: {e}");
    }
    if let Some(out) = curl(
        &h,
        &["--verbose", "--header", "Connection: close", &h.url()],
    ) {
        assert!(out.ok, "curl failed: {}", out.stderr);
        assert_eq!(out.stdout, "ok\n");
        assert!(out.stderr.contains("< Connection: close"), "{}", out.stderr);
    }
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let h = Http::start(Conf::new(1), "");
    // Plain 1.0: one response, then the server closes.
    let mut cl = h.client();
    let r = must(&h, "1.0 GET", cl.roundtrip(b"GET / HTTP/1.0\r\n\r\n"));
    assert_eq!(r.status, 200);
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("HTTP/1.0 without keep-alive stayed open: {e}");
    }
    // 1.0 with keep-alive: the connection serves several requests.
    let mut cl = h.client();
    for i in 0..3 {
        let r = must(
            &h,
            &format!("1.0 keep-alive {i}"),
            cl.roundtrip(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        );
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    }
    if let Some(out) = curl(&h, &["--http1.0", "--include", &h.url()]) {
        assert!(out.ok, "curl failed: {}", out.stderr);
        assert!(
            out.stdout.starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.ends_with("\r\n\r\nok\n"), "{}", out.stdout);
    }
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[test]
fn malformed_requests_get_400_and_a_close() {
    let h = Http::start(Conf::new(1), "");
    let bad: &[&[u8]] = &[
        b"NOT A REQUEST\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ];
    for req in bad {
        refused_400_and_closed(&h, req, &String::from_utf8_lossy(req));
    }
    // A body whose end cannot be trusted (chunked and Content-Length): 400, closed.
    let mut cl = h.client();
    let r = must(
        &h,
        "chunked",
        cl.roundtrip(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    );
    assert!(r.status == 400, "{r:?}");
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("not closed after a chunked request: {e}");
    }
}

#[test]
fn oversized_heads_get_431_and_a_close() {
    let h = Http::start(Conf::new(1), "max_header_size = \"4KiB\"\n");
    let mut cl = h.client();
    let mut req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 6000));
    req.extend_from_slice(b"\r\n\r\n");
    let r = must(&h, "big head", cl.roundtrip(&req));
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.closes());
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("not closed after 431: {e}");
    }
    // A head under the limit is fine on the same listener.
    let mut cl = h.client();
    let mut req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 3000));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(must(&h, "3 KB head", cl.roundtrip(&req)).status, 200);
}

#[test]
fn slowloris_is_cut_at_header_timeout_but_idle_keep_alive_is_not() {
    let h = Http::start(Conf::new(1), "header_timeout = \"1s\"\n");
    // Idle keep-alive: header_timeout does not apply between requests.
    let mut idle = h.client();
    must(&h, "first request", idle.roundtrip(GET));

    let mut slow = h.client();
    let t0 = Instant::now();
    must(
        &h,
        "half a head",
        slow.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow:")
            .map_err(|e| Fail::Bad(e.to_string())),
    );
    // The answer is a 408 (then FIN) or a plain close.
    let deadline = t0 + Duration::from_secs(1) + MARGIN;
    loop {
        match slow.fill(deadline) {
            Ok(0) | Err(Fail::Closed { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "slow client not cut within 1s + {MARGIN:?}: {e}\n{}",
                h.c.log_tail(20)
            ),
        }
    }
    let took = t0.elapsed();
    let got = String::from_utf8_lossy(&slow.buf).into_owned();
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408 "),
        "unexpected answer to a slow head: {got:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before header_timeout"
    );
    eprintln!("slow client cut after {took:?} with {got:?}");

    // The idle connection, by now idle for longer than header_timeout, still works.
    assert!(t0.elapsed() > Duration::from_secs(1));
    let r = must(&h, "request on the idle connection", idle.roundtrip(GET));
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------

#[test]
fn a_request_finished_by_a_draining_worker_keeps_its_connection_which_then_moves() {
    // The half head waits through a reload: on a loaded box that took the default
    // header timeout (10 s) once, and the request got a 408. The timeout is not what
    // this test is about.
    let h = Http::start(Conf::new(1), "header_timeout = \"120s\"");
    let old = h.c.worker_pids();
    assert_eq!(old.len(), 1);
    let mut cl = h.client();
    must(&h, "first request", cl.roundtrip(GET));
    // Half a head: the connection is busy (not idle), so it stays with its worker
    // through the reload instead of being handed to the new generation.
    must(
        &h,
        "half a head",
        cl.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
            .map_err(|e| Fail::Bad(e.to_string())),
    );
    // Wait until the worker has read it (else the connection looks idle and the
    // reload hands it over with the half head still in the socket).
    let client_port = cl.s.local_addr().map(|a| a.port()).unwrap_or(0);
    assert!(
        wait_until(IO_TIMEOUT, || all_read(h.port, client_port)),
        "the worker never read the half head"
    );
    h.c.must_reload();
    let marker = format!("pid={} ", old[0]);
    assert!(
        wait_until(Duration::from_secs(10), || h
            .c
            .log()
            .lines()
            .any(|l| l.contains(&marker) && l.contains("draining"))),
        "the old worker never logged that it drains\n{}",
        h.c.log_tail(40)
    );
    must(
        &h,
        "rest of the head",
        cl.send(b"\r\n").map_err(|e| Fail::Bad(e.to_string())),
    );
    let r = must(&h, "response from the draining worker", cl.response(false));
    assert_eq!(r.status, 200, "{r:?}");
    // The connection will move once idle: the client is not told to go away
    // (reconnecting would cost it a handshake, and a request in flight may race).
    assert!(
        !r.closes(),
        "a connection that moves was told to close: {r:?}"
    );
    // It moved: the same connection is answered by the new generation, and the old
    // worker exits.
    let r = must(&h, "after the move", cl.roundtrip(GET));
    assert!(!r.closes(), "{r:?}");
    assert!(
        wait_until(Duration::from_secs(10), || !h
            .c
            .worker_pids()
            .contains(&old[0])),
        "the old worker did not exit once its last connection moved\n{}",
        h.c.log_tail(40)
    );
}

/// Parses wrk's summary: (requests, socket-error line, non-2xx/3xx line).
fn wrk_summary(out: &str) -> (u64, Option<String>, Option<String>) {
    let requests = out
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or(0);
    let find = |p: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(p))
            .map(|l| l.trim().to_string())
    };
    (
        requests,
        find("Socket errors:"),
        find("Non-2xx or 3xx responses:"),
    )
}

#[test]
fn wrk_with_keep_alive_across_10_reloads_sees_zero_errors() {
    let Some(wrk) = wrk_path() else {
        skipped(format_args!(
            "skipping: wrk is not installed (apt-get install wrk)"
        ));
        return;
    };
    const RELOADS: u32 = 10;
    const RUN: Duration = Duration::from_secs(8);
    let h = Http::start(Conf::new(2), "");
    let out_path = h.c.dir.path().join("wrk.stdout");
    let err_path = h.c.dir.path().join("wrk.stderr");
    // A generous request timeout: a slow answer on a loaded box is not an error;
    // a reset or an EOF without a response is.
    let mut child = Command::new(&wrk)
        .args([
            "-t1",
            "-c20",
            "-d8s",
            "--latency",
            "--timeout",
            "5s",
            &h.url(),
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create wrk stdout"))
        .stderr(File::create(&err_path).expect("create wrk stderr"))
        .spawn()
        .expect("spawn wrk");
    let t0 = Instant::now();
    // Spread the reloads over the run: reload i starts at 0.5 s + i * 0.65 s (or
    // as soon as the previous one returns, if it took longer).
    for i in 0..RELOADS {
        let at = t0 + Duration::from_millis(500 + 650 * u64::from(i));
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing, not synchronisation
        }
        h.c.must_reload();
    }
    let reloads_took = t0.elapsed();
    let mut status = None;
    let exited = wait_until(RUN + Duration::from_secs(30), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "wrk did not finish within {:?}",
            RUN + Duration::from_secs(30)
        );
    }
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    eprintln!("{RELOADS} reloads took {reloads_took:?}; wrk:\n{out}{err}");
    assert!(
        status.is_some_and(|s| s.success()),
        "wrk failed: {out}{err}"
    );
    let (requests, socket_errors, non2xx) = wrk_summary(&out);
    assert!(requests > 0, "wrk made no requests: {out}");
    assert_eq!(
        socket_errors,
        None,
        "wrk saw socket errors across reloads\n{}",
        h.c.log_tail(40)
    );
    assert_eq!(non2xx, None, "wrk saw error responses across reloads");
}

#[test]
fn raw_keep_alive_clients_across_10_reloads_see_zero_errors() {
    const CLIENTS: usize = 4;
    const RELOADS: usize = 10;
    let h = Http::start(Conf::new(2), "");
    let addr = h.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for i in 0..CLIENTS {
        let (stop, errors, requests, reconnects) = (
            stop.clone(),
            errors.clone(),
            requests.clone(),
            reconnects.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut cl: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let c = match &mut cl {
                    Some(c) => c,
                    None => match Client::connect(addr) {
                        Ok(c) => cl.insert(c),
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("client {i}: connect: {e}"));
                            return;
                        }
                    },
                };
                match c.roundtrip(GET) {
                    Ok(r) if r.status == 200 && r.body == b"ok\n" => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if r.closes() {
                            // A draining worker's goodbye: not an error, reconnect.
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            cl = None;
                        }
                    }
                    Ok(r) => {
                        errors.lock().unwrap().push(format!("client {i}: {r:?}"));
                        return;
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(format!("client {i}: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    let ok_so_far = |n: usize| {
        wait_until(Duration::from_secs(20), || {
            requests.load(Ordering::Relaxed) >= n || !errors.lock().unwrap().is_empty()
        })
    };
    assert!(
        ok_so_far(100),
        "clients do not get going\n{}",
        h.c.log_tail(40)
    );
    for r in 1..=RELOADS {
        h.c.must_reload();
        // Traffic keeps flowing after each reload.
        let base = requests.load(Ordering::Relaxed);
        let progressed = ok_so_far(base + 50);
        let errs = errors.lock().unwrap().clone();
        assert!(
            errs.is_empty(),
            "errors by reload {r}: {errs:?}\n{}",
            h.c.log_tail(40)
        );
        assert!(
            progressed,
            "requests stalled after reload {r}\n{}",
            h.c.log_tail(40)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let errs = errors.lock().unwrap().clone();
    assert!(errs.is_empty(), "errors: {errs:?}\n{}", h.c.log_tail(40));
    eprintln!(
        "{} requests, {} reconnects after Connection: close, across {RELOADS} reloads",
        requests.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------
// Protocol inputs that used to break the service
// ---------------------------------------------------------------------------

#[test]
fn a_pipelining_client_that_pauses_reading_gets_every_response() {
    // Big responses and padded requests: the first read of 64 KiB of requests queues
    // megabytes of output, so the worker stops reading with half a head in its buffer
    // while the client, which does not read, holds it back for 2x header_timeout.
    const N: usize = 200;
    let body = "b".repeat(64 << 10);
    let h = Http::start(
        Conf::new(1),
        &format!("header_timeout = \"1s\"\nbody = \"{body}\"\n"),
    );
    let mut one = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ".to_vec();
    one.extend(std::iter::repeat_n(b'p', 1000 - one.len() - 4));
    one.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        one.len(),
        1000,
        "not a divisor of the read size: heads get split"
    );
    let all: Vec<u8> = one.repeat(N);
    let mut cl = h.client();
    let mut w = cl.s.try_clone().expect("clone the socket");
    // The writes block while the server does not read: a thread sends them.
    let writer = std::thread::spawn(move || w.write_all(&all));
    std::thread::sleep(Duration::from_secs(2)); // the scenario: 2x header_timeout
    let mut got = 0;
    for i in 0..N {
        match cl.response(false) {
            Ok(r) => {
                assert_eq!(r.status, 200, "response {i}: {:?}", r.head);
                assert_eq!(r.body.len(), body.len(), "response {i}");
                got += 1;
            }
            Err(e) => panic!(
                "response {i} of {N}: {e}; got {got} before\n{}",
                h.c.log_tail(20)
            ),
        }
    }
    match writer.join() {
        Ok(r) => r.expect("all requests sent"),
        Err(_) => panic!("writer thread panicked"),
    }
    assert_eq!(got, N);
    // And the connection is still in keep-alive.
    assert_eq!(
        must(&h, "after the pipeline", cl.roundtrip(GET)).status,
        200
    );
}

#[test]
fn empty_lines_every_300ms_do_not_keep_a_connection_open() {
    let h = Http::start(Conf::new(1), "header_timeout = \"1s\"\n");
    let mut cl = h.client();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(1) + MARGIN;
    let closed = loop {
        if Instant::now() >= deadline {
            break false;
        }
        let _ = cl.send(b"\r\n");
        match cl.fill(Instant::now() + Duration::from_millis(300)) {
            Ok(0) | Err(Fail::Closed { .. }) => break true,
            Ok(_) | Err(Fail::Timeout { .. }) => {}
            Err(Fail::Bad(e)) => panic!("{e}"),
        }
    };
    let took = t0.elapsed();
    let got = String::from_utf8_lossy(&cl.buf).into_owned();
    assert!(
        closed,
        "a client sending only CRLF every 300 ms is still connected after {took:?} \
         (header_timeout 1s); got {got:?}\n{}",
        h.c.log_tail(20)
    );
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408 ") || got.starts_with("HTTP/1.1 400 "),
        "{got:?}"
    );
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    eprintln!("CRLF trickler closed after {took:?} with {got:?}");
}

#[test]
fn http_1_1_needs_exactly_one_host_and_1_0_needs_none() {
    let h = Http::start(Conf::new(1), "");
    for (req, what) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 without Host"),
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            "two Host headers",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"[..],
            "the same Host twice",
        ),
    ] {
        refused_400_and_closed(&h, req, what);
    }
    let mut cl = h.client();
    let r = must(
        &h,
        "1.0 without Host",
        cl.roundtrip(b"GET / HTTP/1.0\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // curl, told to send no Host header.
    if let Some(out) = curl(&h, &["--include", "--header", "Host:", &h.url()]) {
        assert!(
            out.stdout.starts_with("HTTP/1.1 400 "),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn connect_is_refused_and_the_connection_closed() {
    let h = Http::start(Conf::new(1), "");
    let mut cl = h.client();
    let r = must(
        &h,
        "CONNECT",
        cl.roundtrip(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
    );
    assert!(r.status == 405 || r.status == 501, "{r:?}");
    assert!(r.closes(), "{r:?}");
    if let Err(e) = cl.expect_closed(IO_TIMEOUT) {
        panic!("CONNECT left the connection open: {e}");
    }
    // curl using corral as an HTTP proxy tunnels with CONNECT: it must be told no
    // (the tunnel never reaches the outside: curl only talks to 127.0.0.1).
    let proxy = format!("http://127.0.0.1:{}", h.port);
    if let Some(out) = http::run_curl(
        h.c.dir.path(),
        &[
            "--proxytunnel",
            "--proxy",
            &proxy,
            "--verbose",
            "http://tunnel.invalid/",
        ],
    ) {
        assert!(!out.ok, "curl's tunnel was accepted: {}", out.stderr);
        assert!(
            out.stderr.contains("< HTTP/1.1 501") || out.stderr.contains("< HTTP/1.1 405"),
            "{}",
            out.stderr
        );
    }
}
