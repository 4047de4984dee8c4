//! Black-box tests of the PROXY protocol both ways and of the connection log: HAProxy
//! (`send-proxy`, `send-proxy-v2`) in front of corral with `accept_proxy = true`,
//! nginx (`listen ... proxy_protocol`) behind corral's proxy with `proxy_protocol`,
//! malformed headers that must close without reaching the service or the worker, the
//! real client through a reload's hand-over, and the line each connection logs.

use crate::common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::handover::{read_response, Answer, GET};
use common::pp::*;
use common::*;

const IO: Duration = Duration::from_secs(10);

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Checks `s` echoes `msg` (and only `msg`).
fn echoes(c: &Corral, s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("send");
    match read_exact_timeout(s, msg.len(), IO) {
        Ok(got) => assert_eq!(got, msg, "{}", c.log_tail(30)),
        Err(e) => panic!("no echo of {msg:?}: {e:?}\n{}", c.log_tail(30)),
    }
}

// ---------------------------------------------------------------------------
// HAProxy in front
// ---------------------------------------------------------------------------

#[test]
fn haproxy_send_proxy_v2_in_front_gives_the_real_client() {
    haproxy_in_front("send-proxy-v2");
}

#[test]
fn haproxy_send_proxy_v1_in_front_gives_the_real_client() {
    haproxy_in_front("send-proxy");
}

/// Clients on 127.0.0.21 and .22 reach corral only through HAProxy (whose own source is
/// 127.0.0.1 for every connection). With `max_connections_per_ip = 2`, the third
/// connection from .21 is refused while .22 still gets in: the limit counts the
/// addresses HAProxy forwarded. The connection log names the real client and port.
fn haproxy_in_front(send: &str) {
    let test = format!("haproxy {send}");
    let Some(bin) = installed("haproxy", &test) else {
        return;
    };
    let back = free_port();
    let c = Corral::start(&Conf::bare(1).listen(back, "echo", "accept_proxy = true\nmax_connections_per_ip = 2\nlog_connections = true\nname = \"behind-haproxy\"").render());
    let worker = c.worker_pids();
    let front = free_port();
    let _h = haproxy(&bin, c.dir.path(), front, back, send);

    let mut a1 = connect_from(lo(21), local(front));
    echoes(&c, &mut a1, b"first from .21\n");
    let mut a2 = connect_from(lo(21), local(front));
    echoes(&c, &mut a2, b"second from .21\n");
    // The third from .21 is over its limit: closed, nothing echoed.
    let mut a3 = connect_from(lo(21), local(front));
    let _ = a3.write_all(b"third from .21\n");
    let (got, closed) = read_to_close(&mut a3, IO);
    assert!(
        closed && got.is_empty(),
        "a third connection from .21 was served: {got:?}\n{}",
        c.log_tail(30)
    );
    // Another client is not affected by .21's count.
    let mut b1 = connect_from(lo(22), local(front));
    echoes(&c, &mut b1, b"from .22\n");

    let port = a1.local_addr().unwrap().port();
    drop(a1);
    let line = wait_conn_line(&c, &[&format!("client=127.0.0.21:{port} "), "bytes_in=15"]);
    assert!(line.contains("listener=behind-haproxy"), "{line}");
    assert!(line.contains("end=\"client closed\""), "{line}");
    let refused = wait_conn_line(&c, &["client=127.0.0.21:", "per-ip limit"]);
    assert!(refused.contains("bytes_in=0"), "{refused}");
    assert_eq!(c.worker_pids(), worker, "the worker changed");
}

/// 2000 connections through HAProxy `send-proxy-v2`, 200 open at a time from 8 source
/// addresses: every one echoes its own message (none lost, none mixed up) and every one
/// is logged under its own client address and port.
#[test]
fn haproxy_v2_two_thousand_connections_none_lost() {
    let Some(bin) = installed("haproxy", "haproxy 2000 connections") else {
        return;
    };
    let back = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(back, "echo", "accept_proxy = true\nlog_connections = true")
            .render(),
    );
    let worker = c.worker_pids();
    let front = free_port();
    let _h = haproxy(&bin, c.dir.path(), front, back, "send-proxy-v2");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut clients = Vec::new();
    let mut failures = Vec::new();
    for round in 0..10u32 {
        assert!(Instant::now() < deadline, "took too long (round {round})");
        let mut open = Vec::new();
        for i in 0..200u32 {
            let s = connect_from(lo(50 + (i % 8) as u8), local(front));
            clients.push(s.local_addr().unwrap());
            open.push((format!("r{round} c{i} {}\n", s.local_addr().unwrap()), s));
        }
        for (msg, s) in &mut open {
            s.write_all(msg.as_bytes()).unwrap();
        }
        for (msg, s) in &mut open {
            match read_exact_timeout(s, msg.len(), Duration::from_secs(20)) {
                Ok(got) if got == msg.as_bytes() => {}
                other => failures.push(format!("{msg:?}: {other:?}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 2000 failed, first: {:?}\n{}",
        failures.len(),
        failures.first(),
        c.log_tail(30)
    );
    let logged = wait_until(Duration::from_secs(30), || conn_lines(&c).len() >= 2000);
    let lines = conn_lines(&c);
    assert!(logged, "{} of 2000 connection-log lines", lines.len());
    let text = lines.join("\n");
    let missing: Vec<_> = clients
        .iter()
        .filter(|a| !text.contains(&format!("client={a} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} clients not logged, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(c.worker_pids(), worker, "the worker changed");
}

// ---------------------------------------------------------------------------
// nginx behind
// ---------------------------------------------------------------------------

#[test]
fn nginx_behind_sees_the_real_client_v1_copy_and_splice() {
    nginx_behind("v1");
}

#[test]
fn nginx_behind_sees_the_real_client_v2_copy_and_splice() {
    nginx_behind("v2");
}

/// corral proxies (one copying, one splicing) send the PROXY header to nginx, which
/// answers with the address it read from it: the client's own address and port.
fn nginx_behind(version: &str) {
    let Some(bin) = installed("nginx", &format!("nginx proxy_protocol {version}")) else {
        return;
    };
    let (up, copy, splice) = (free_port(), free_port(), free_port());
    let upstream = [format!("127.0.0.1:{up}")];
    let pp = format!("proxy_protocol = \"{version}\"");
    let c = Corral::start(
        &Conf::bare(1)
            .proxy(copy, &upstream, &pp)
            .proxy(splice, &upstream, &format!("{pp}\nsplice = true"))
            .render(),
    );
    let _n = nginx(&bin, c.dir.path(), up);
    for (mode, port, from) in [("copy", copy, 31), ("splice", splice, 32)] {
        for _ in 0..3 {
            let mut s = connect_from(lo(from), local(port));
            let me = s.local_addr().unwrap();
            let body = http_get_body(&mut s);
            assert_eq!(body, me.to_string(), "{version} {mode}\n{}", c.log_tail(20));
        }
    }
}

/// A client announced by its own PROXY header to an `accept_proxy` proxy is who the
/// proxy's `proxy_protocol` names to nginx: the address travels through corral.
#[test]
fn accepted_proxy_header_is_what_the_proxy_forwards() {
    let Some(bin) = installed("nginx", "accept_proxy + proxy_protocol") else {
        return;
    };
    let (up, port) = (free_port(), free_port());
    let c = Corral::start(
        &Conf::bare(1)
            .proxy(
                port,
                &[format!("127.0.0.1:{up}")],
                "proxy_protocol = \"v2\"\naccept_proxy = true",
            )
            .render(),
    );
    let _n = nginx(&bin, c.dir.path(), up);
    let mut s = TcpStream::connect(local(port)).unwrap();
    // The header and the request in one write: the bytes after the header are the
    // client's and go upstream after corral's own header.
    let mut first = b"PROXY TCP4 203.0.113.9 127.0.0.1 4242 80\r\n".to_vec();
    first.extend_from_slice(b"GET / HTTP/1.0\r\nHost: pp\r\n\r\n");
    s.write_all(&first).unwrap();
    let (got, closed) = read_to_close(&mut s, IO);
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed && text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        c.log_tail(20)
    );
    assert!(text.ends_with("\r\n\r\n203.0.113.9:4242"), "{text}");
}

// ---------------------------------------------------------------------------
// Malformed headers
// ---------------------------------------------------------------------------

/// Every malformed or missing header is a close with nothing passed to the service
/// (an echo would send it back); the worker survives and serves a good one after.
#[test]
fn malformed_headers_close_and_the_worker_survives() {
    let port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(
                port,
                "echo",
                "accept_proxy = true\naccept_proxy_timeout = \"1s\"",
            )
            .render(),
    );
    let worker = c.worker_pids();
    let long_v1 = {
        let mut b = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2".to_vec();
        b.resize(120, b' ');
        b.extend_from_slice(b"\r\n");
        b
    };
    let v2_short = v2_raw(0x21, 0x11, 4, &[10, 0, 0, 1]);
    let v2_long_lie = v2_raw(0x21, 0x11, 600, &[1; 12]);
    assert_eq!(header_failures(&c), 0);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "no PROXY header (plain data)",
            b"hello there\r\n".to_vec(),
            false,
        ),
        (
            "bad v1 signature",
            b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            false,
        ),
        ("v1 too long", long_v1, false),
        (
            "v1 bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n".to_vec(),
            false,
        ),
        (
            "v1 leading-zero port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n".to_vec(),
            false,
        ),
        (
            "v1 LF only",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 80\npayload\n".to_vec(),
            false,
        ),
        (
            "v1 truncated then FIN",
            b"PROXY TCP4 1.2.3.4 5.6".to_vec(),
            true,
        ),
        (
            "v2 bad signature",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\x0c".to_vec(),
            false,
        ),
        ("v2 bad version", v2_raw(0x31, 0x11, 12, &[1; 12]), false),
        ("v2 length shorter than its addresses", v2_short, false),
        (
            "v2 truncated then FIN",
            v2_raw(0x21, 0x11, 12, &[1; 5]),
            true,
        ),
        // Says 600 bytes, sends 12 and waits: the timeout ends it.
        ("v2 length longer than what is sent", v2_long_lie, false),
        ("nothing sent within the timeout", Vec::new(), false),
    ];
    for (what, bytes, fin) in cases {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(local(port)).unwrap();
        if !bytes.is_empty() {
            s.write_all(&bytes).unwrap();
        }
        if fin {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(15));
        assert!(
            closed,
            "{what}: still open after {:?}\n{}",
            t0.elapsed(),
            c.log_tail(20)
        );
        assert!(
            got.is_empty(),
            "{what}: the service saw bytes and echoed {:?}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(c.worker_pids(), worker, "{what}: the worker changed");
        // A good connection right after: header (arriving in pieces) then data.
        let mut ok = TcpStream::connect(local(port)).unwrap();
        let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n";
        ok.write_all(&header[..10]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        ok.write_all(&header[10..]).unwrap();
        echoes(&c, &mut ok, format!("after {what}\n").as_bytes());
    }
    // A v2 header with a TLV and the payload in the same packet: only the payload is
    // echoed, from the same write.
    let mut s = TcpStream::connect(local(port)).unwrap();
    let mut b = v2_raw(
        0x21,
        0x11,
        17,
        &[
            192, 0, 2, 8, 127, 0, 0, 1, 0x13, 0x88, 0, 80, 0x01, 0, 2, b'h', b'2',
        ],
    );
    b.extend_from_slice(b"payload\n");
    s.write_all(&b).unwrap();
    let got = read_exact_timeout(&mut s, 8, IO).expect("echo after a v2 header");
    assert_eq!(got, b"payload\n");
    // LOCAL (a balancer's health check): accepted, the socket's own address stands.
    let mut s = TcpStream::connect(local(port)).unwrap();
    s.write_all(&v2_raw(0x20, 0x00, 0, &[])).unwrap();
    echoes(&c, &mut s, b"health\n");
    assert_eq!(c.worker_pids(), worker);
    // Each refusal was counted, and shows in `corral status` (after a heartbeat).
    let mut n = 0;
    let counted = wait_until(Duration::from_secs(15), || {
        n = header_failures(&c);
        n >= 13
    });
    assert!(counted, "status counts {n} failed headers of 13");
    assert_eq!(n, 13, "good headers were counted as failures");
}

/// Per-IP limits count the address in the header, not the balancer's: two fake
/// clients behind one 127.0.0.1 each get their own allowance.
#[test]
fn per_ip_limit_counts_the_header_address() {
    let port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(
                port,
                "echo",
                "accept_proxy = true\nmax_connections_per_ip = 1",
            )
            .render(),
    );
    let hello = |ip: &str, sport: u16| {
        let mut s = TcpStream::connect(local(port)).unwrap();
        let h = v2_tcp4(format!("{ip}:{sport}").parse().unwrap(), local(port));
        s.write_all(&h).unwrap();
        s
    };
    let mut a = hello("198.51.100.1", 1000);
    echoes(&c, &mut a, b"a\n");
    let mut a2 = hello("198.51.100.1", 1001);
    let _ = a2.write_all(b"a2\n");
    let (got, closed) = read_to_close(&mut a2, IO);
    assert!(closed && got.is_empty(), "second from .1 served: {got:?}");
    let mut b = hello("198.51.100.2", 1000);
    echoes(&c, &mut b, b"b\n");
    // Once .1's first connection is gone, .1 may connect again.
    drop(a);
    let ok = wait_until(IO, || {
        let mut s = hello("198.51.100.1", 1002);
        let _ = s.write_all(b"x\n");
        matches!(read_exact_timeout(&mut s, 2, Duration::from_secs(2)), Ok(ref v) if v == b"x\n")
    });
    assert!(
        ok,
        "198.51.100.1 never got its slot back\n{}",
        c.log_tail(20)
    );
}

// ---------------------------------------------------------------------------
// Hand-over at reload
// ---------------------------------------------------------------------------

/// An idle keep-alive connection whose header named 203.0.113.5 is handed to the new
/// generation at reload: the new worker serves it without expecting a header again,
/// and logs it under the real client's address.
#[test]
fn handed_over_connection_keeps_its_real_client() {
    let port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(port, "http", "accept_proxy = true\nlog_connections = true")
            .render(),
    );
    let old = c.worker_pids();
    let mut s = TcpStream::connect(local(port)).unwrap();
    let mut first = b"PROXY TCP4 203.0.113.5 127.0.0.1 6000 80\r\n".to_vec();
    first.extend_from_slice(GET);
    s.write_all(&first).unwrap();
    let a = read_response(&mut s, Instant::now() + IO);
    assert!(
        matches!(
            a,
            Answer::Full {
                status: 200,
                closes: false,
                ..
            }
        ),
        "{a:?}"
    );
    c.must_reload();
    let handed = wait_conn_line(&c, &["client=203.0.113.5:6000 ", "end=\"handed over\""]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let w = c.worker_pids();
            !w.is_empty() && w.iter().all(|p| !old.contains(p))
        }),
        "no new generation\n{}",
        c.log_tail(30)
    );
    s.write_all(GET).unwrap();
    let a = read_response(&mut s, Instant::now() + IO);
    assert!(a.is_ok(), "after the hand-over: {a:?}\n{}", c.log_tail(30));
    drop(s);
    let last = wait_conn_line(&c, &["client=203.0.113.5:6000 ", "end=\"client closed\""]);
    let pid_of = |l: &str| {
        l.split("pid=")
            .nth(1)
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .map(str::to_string)
    };
    assert_ne!(pid_of(&handed), pid_of(&last), "{handed}\n{last}");
}

// ---------------------------------------------------------------------------
// Connection log
// ---------------------------------------------------------------------------

/// Echo and proxy lines carry client, listener, upstream, bytes each way, duration and
/// the end; a listener without `log_connections` logs nothing.
#[test]
fn connection_log_lines_for_echo_and_proxy_and_none_when_off() {
    let (logged, proxy, quiet, idle) = (free_port(), free_port(), free_port(), free_port());
    let c = Corral::start(
        &Conf::bare(1)
            .listen(logged, "echo", "log_connections = true")
            .proxy(
                proxy,
                &[format!("127.0.0.1:{logged}")],
                "log_connections = true\nname = \"to-echo\"",
            )
            .listen(quiet, "echo", "")
            .listen(
                idle,
                "echo",
                "log_connections = true\nidle_timeout = \"1s\"",
            )
            .render(),
    );
    // Echo: 11 bytes each way, closed by the client.
    let mut s = connect_from(lo(41), local(logged));
    let me = s.local_addr().unwrap();
    echoes(&c, &mut s, b"0123456789\n");
    drop(s);
    let line = wait_conn_line(&c, &[&format!("client={me} ")]);
    for want in [
        format!("listener=127.0.0.1:{logged} "),
        "upstream=- ".to_string(),
        "bytes_in=11 ".to_string(),
        "bytes_out=11 ".to_string(),
        "duration_ms=".to_string(),
        "end=\"client closed\"".to_string(),
    ] {
        assert!(line.contains(&want), "{want:?} missing in {line}");
    }
    assert_eq!(common::http::level_of(&line), Some("INFO"), "{line}");

    // Proxy: 7 bytes to the upstream (corral's echo) and back; then the upstream's
    // own line shows corral's proxy as its client.
    let mut s = connect_from(lo(42), local(proxy));
    let me = s.local_addr().unwrap();
    echoes(&c, &mut s, b"proxied");
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, closed) = read_to_close(&mut s, IO);
    assert!(closed && rest.is_empty(), "{rest:?}");
    let line = wait_conn_line(&c, &[&format!("client={me} ")]);
    for want in [
        "listener=to-echo ".to_string(),
        format!("upstream=127.0.0.1:{logged} "),
        "bytes_in=7 ".to_string(),
        "bytes_out=7 ".to_string(),
        "end=\"client closed\"".to_string(),
    ] {
        assert!(line.contains(&want), "{want:?} missing in {line}");
    }

    // Idle timeout.
    let mut s = connect_from(lo(43), local(idle));
    let me = s.local_addr().unwrap();
    echoes(&c, &mut s, b"then silence\n");
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(15));
    assert!(closed, "the idle timeout did not close it");
    let line = wait_conn_line(&c, &[&format!("client={me} ")]);
    assert!(line.contains("end=\"idle timeout\""), "{line}");

    // Off: a connection on the quiet listener leaves no line, though one logged after
    // it shows the log is flowing.
    let mut s = connect_from(lo(44), local(quiet));
    echoes(&c, &mut s, b"quiet\n");
    drop(s);
    let mut s = connect_from(lo(45), local(logged));
    echoes(&c, &mut s, b"marker\n");
    drop(s);
    wait_conn_line(&c, &["client=127.0.0.45:"]);
    let quiet_lines: Vec<String> = conn_lines(&c)
        .into_iter()
        .filter(|l| l.contains("127.0.0.44") || l.contains(&format!(":{quiet} ")))
        .collect();
    assert!(quiet_lines.is_empty(), "logged while off: {quiet_lines:?}");
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

#[test]
fn proxy_protocol_on_a_non_proxy_listener_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        Conf::bare(1)
            .listen(2, "http", "proxy_protocol = \"v2\"")
            .render_on(1),
    )
    .unwrap();
    let p = path.display().to_string();
    let out = run_cli(dir.path(), &["-t", "-c", &p], IO);
    assert!(!out.status.success(), "{}", out.all());
    let text = out.all();
    for want in ["bad.toml", "listen[1].proxy_protocol", "no upstream"] {
        assert!(text.contains(want), "{want:?} missing in {text}");
    }
}

/// A client that resets at once (as HAProxy's health checks do) is still logged with
/// its address, taken from accept(): never as `client=unix`, whether the reset came
/// before or after the worker accepted it.
#[test]
fn a_client_that_resets_at_once_is_logged_with_its_address() {
    let port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(port, "echo", "log_connections = true")
            .render(),
    );
    let mut clients = Vec::new();
    for _ in 0..10 {
        let s = connect_from(lo(45), local(port));
        clients.push(s.local_addr().unwrap());
        // SO_LINGER 0: close() sends a RST instead of a FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    for me in &clients {
        let line = wait_conn_line(&c, &[&format!("client={me} ")]);
        assert!(line.contains("bytes_in=0 "), "{line}");
    }
    let lines = conn_lines(&c);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("client=unix") || l.contains("client=unknown")),
        "{lines:#?}"
    );
}
