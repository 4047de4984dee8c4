//! Black-box tests of the `proxy` service: byte-exact forwarding both ways,
//! half-close, failover between upstreams, giving up within `connect_timeout`, and
//! backpressure against a client that does not read.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;

/// A port nobody listens on (bound once, then released).
fn dead_port() -> u16 {
    free_port()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn eight_mib_byte_exact_both_ways_through_echo() {
    eight_mib_through_echo("");
}

#[test]
fn eight_mib_byte_exact_both_ways_with_splice() {
    eight_mib_through_echo("splice = true");
}

fn eight_mib_through_echo(extra: &str) {
    let pp = free_port();
    // The upstream is corral's own echo listener (started first below).
    let echo_port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(echo_port, "echo", "")
            .proxy(pp, &[format!("127.0.0.1:{echo_port}")], extra)
            .render(),
    );
    let data = pattern(8 << 20);
    let s = connect(
        SocketAddr::from(([127, 0, 0, 1], pp)),
        Duration::from_secs(10),
    )
    .expect("connect");
    let mut reader = s.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let to_send = data.clone();
    let mut writer = s;
    let wt = std::thread::spawn(move || {
        writer.write_all(&to_send).expect("write 8 MiB");
        writer.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut got = Vec::with_capacity(data.len());
    reader
        .read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("read after {} bytes: {e}\n{}", got.len(), c.log_tail(20)));
    wt.join().expect("writer");
    assert_eq!(got.len(), data.len(), "{}", c.log_tail(20));
    assert!(got == data, "bytes differ after the proxy");
}

#[test]
fn half_close_is_forwarded_each_way() {
    half_close("");
}

#[test]
fn half_close_is_forwarded_each_way_with_splice() {
    half_close("splice = true");
}

fn half_close(extra: &str) {
    // An upstream that reads until EOF, then answers and closes.
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_addr = up.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read to EOF");
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .expect("answer");
    });
    let pp = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .proxy(pp, &[up_addr.to_string()], extra)
            .render(),
    );
    let mut s = connect(
        SocketAddr::from(([127, 0, 0, 1], pp)),
        Duration::from_secs(10),
    )
    .expect("connect");
    s.write_all(&pattern(100_000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer: {e}\n{}", c.log_tail(20)));
    assert_eq!(answer, "got 100000 bytes", "{}", c.log_tail(20));
    server.join().expect("upstream thread");
}

#[test]
fn fails_over_to_the_next_upstream() {
    let dead = dead_port();
    let pp = free_port();
    let echo_port = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .listen(echo_port, "echo", "")
            .proxy(
                pp,
                &[
                    format!("127.0.0.1:{dead}"),
                    format!("127.0.0.1:{echo_port}"),
                ],
                "",
            )
            .render(),
    );
    // Several connections: round robin starts some of them at the dead upstream.
    for i in 0..6 {
        let mut s = connect(
            SocketAddr::from(([127, 0, 0, 1], pp)),
            Duration::from_secs(10),
        )
        .expect("connect");
        match echo(
            &mut s,
            format!("via proxy {i}\n").as_bytes(),
            Duration::from_secs(10),
        ) {
            Echo::Ok => {}
            other => panic!(
                "connection {i} through the proxy: {other:?}\n{}",
                c.log_tail(20)
            ),
        }
    }
}

#[test]
fn all_upstreams_down_closes_the_client_within_connect_timeout() {
    // One refuses at once; the other never answers SYNs (its accept queue is full),
    // so only the connect timeout can end the attempt.
    let refused = dead_port();
    let blackhole =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    blackhole
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    blackhole.listen(0).unwrap();
    let bh_addr = blackhole.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue so further SYNs are dropped.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&bh_addr.into());
        fillers.push(s);
    }
    let pp = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .proxy(
                pp,
                &[format!("127.0.0.1:{refused}"), bh_addr.to_string()],
                "connect_timeout = \"1s\"",
            )
            .render(),
    );
    let mut s = connect(
        SocketAddr::from(([127, 0, 0, 1], pp)),
        Duration::from_secs(10),
    )
    .expect("connect");
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"anyone there?\n");
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    let took = t0.elapsed();
    match r {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        other => panic!(
            "expected the proxy to close the client, got {other:?}\n{}",
            c.log_tail(20)
        ),
    }
    eprintln!("client closed {took:?} after its request (connect_timeout 1s)");
    assert!(
        took < Duration::from_secs(6),
        "closing took {took:?}, connect_timeout is 1s\n{}",
        c.log_tail(20)
    );
    drop(fillers);
}

#[test]
fn slow_reading_client_does_not_grow_worker_memory() {
    slow_reader("");
}

#[test]
fn slow_reading_client_does_not_grow_worker_memory_with_splice() {
    slow_reader("splice = true");
}

fn slow_reader(extra: &str) {
    // An upstream that sends as much as it can.
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_addr = up.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && sent < 512 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        sent
    });
    let pp = free_port();
    let c = Corral::start(
        &Conf::bare(1)
            .proxy(pp, &[up_addr.to_string()], extra)
            .render(),
    );
    let worker = c.workers()[0].pid;
    let before = vm_rss_kib(worker);
    let s = connect(
        SocketAddr::from(([127, 0, 0, 1], pp)),
        Duration::from_secs(10),
    )
    .expect("connect");
    // Never read; give the upstream time to fill every buffer on the way.
    let mut last = 0;
    let settled = wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = vm_rss_kib(worker);
        let stable = now == last;
        last = now;
        stable
    });
    let after = vm_rss_kib(worker);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(s);
    let sent = server.join().expect("upstream");
    eprintln!("upstream sent {sent} bytes into a client that never reads; worker RSS {before} -> {after} KiB (settled: {settled})");
    assert!(
        sent < 64 << 20,
        "the proxy kept reading the upstream: {sent} bytes"
    );
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "worker RSS grew by {} KiB\n{}",
        after - before,
        c.log_tail(20)
    );
}

#[test]
fn proxy_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, Conf::bare(1).service("proxy").render_on(1)).unwrap();
    let out = run_cli(
        dir.path(),
        &["-t", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(out.all().contains("listen[0].upstreams"), "{}", out.all());
    std::fs::write(
        &cfg,
        Conf::bare(1)
            .echo("upstreams = [\"127.0.0.1:2\"]")
            .render_on(1),
    )
    .unwrap();
    let out = run_cli(
        dir.path(),
        &["-t", "-c", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(
        out.all().contains("listen[0].upstreams") && out.all().contains("echo"),
        "{}",
        out.all()
    );
}
