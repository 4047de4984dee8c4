//! The built-in `metrics` service, black-box: scrapes with curl parsed by the real
//! Prometheus text parser (`prometheus_client`), counters checked against the
//! traffic the test made, monotonic across a reload and a binary upgrade,
//! `corral status --prometheus`, `/healthz` during a graceful stop, strict parsing
//! of bad requests, a master that does not answer (503), and a text big enough to
//! travel in several channel messages (60 workers, 20 listeners).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::metrics::{
    closed_within, curl, parse, parser_available, request, scrape, scrape_until,
};
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

fn maddr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn echo_listen(c: &Corral) -> String {
    c.addr().to_string()
}

/// An upstream that echoes, on a thread that ends when the guard drops.
struct EchoUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl EchoUpstream {
    fn start() -> EchoUpstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                            let mut b = [0u8; 4096];
                            while let Ok(n) = s.read(&mut b) {
                                if n == 0 || s.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoUpstream { port, stop }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A port nothing listens on (bound, then closed: connects are refused).
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn echo_round_trips(c: &Corral, n: usize, payload: &[u8]) {
    for _ in 0..n {
        let mut s = c.connect();
        match echo(&mut s, payload, Duration::from_secs(10)) {
            Echo::Ok => {}
            other => panic!("echo failed: {other:?}\n{}", c.log_tail(40)),
        }
        close(s);
    }
}

#[test]
fn scrape_counts_what_clients_did_and_status_prints_the_same() {
    if !parser_available() {
        return;
    }
    let up = EchoUpstream::start();
    let dead = dead_port();
    let mport = free_port();
    let pport = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .listen(mport, "metrics", "")
            .proxy(
                pport,
                &[
                    format!("127.0.0.1:{dead}"),
                    format!("127.0.0.1:{}", up.port),
                ],
                "upstream_backoff = \"60s\"",
            )
            .render(),
    );
    let listen = echo_listen(&c);
    let proxy = format!("127.0.0.1:{pport}");
    let live_up = format!("127.0.0.1:{}", up.port);
    let dead_up = format!("127.0.0.1:{dead}");

    // 50 clients, 100 bytes each, on the echo listener; 10 through the proxy.
    let payload = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
    echo_round_trips(&c, 50, &payload);
    for _ in 0..10 {
        let mut s = connect(maddr(pport), Duration::from_secs(10)).expect("connect to proxy");
        match echo(&mut s, &payload, Duration::from_secs(10)) {
            Echo::Ok => {}
            other => panic!("proxied echo failed: {other:?}\n{}", c.log_tail(40)),
        }
        close(s);
    }

    let m = maddr(mport);
    let p = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(51.0)
            && p.get(
                "corral_upstream_connects_total",
                &[("listen", &proxy), ("upstream", &live_up)],
            ) >= Some(10.0)
    });
    // The harness's start-up check made one more echo connection.
    let accepted = p
        .get("corral_listener_accepted_total", &[("listen", &listen)])
        .unwrap_or(0.0);
    assert!(
        accepted >= 51.0,
        "accepted {accepted}\n{:?}",
        p.all("corral_listener_accepted_total")
    );
    assert_eq!(
        p.types.get("corral_listener_accepted").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        p.types.get("corral_worker_rss_bytes").map(String::as_str),
        Some("gauge")
    );
    let bytes_in = p.get("corral_received_bytes_total", &[]).unwrap_or(0.0);
    assert!(bytes_in >= 6000.0, "received {bytes_in}");
    assert!(p.get("corral_accepted_total", &[]).unwrap_or(0.0) >= 61.0);

    // Upstreams: every proxied client reached the live one; the dead one failed
    // (once per worker at most: then it is in backoff) and is in backoff.
    let conn = p
        .get(
            "corral_upstream_connects_total",
            &[("listen", &proxy), ("upstream", &live_up)],
        )
        .unwrap_or(0.0);
    assert!(conn >= 10.0, "{conn}");
    let sent = p
        .get(
            "corral_upstream_sent_bytes_total",
            &[("listen", &proxy), ("upstream", &live_up)],
        )
        .unwrap_or(0.0);
    let recv = p
        .get(
            "corral_upstream_received_bytes_total",
            &[("listen", &proxy), ("upstream", &live_up)],
        )
        .unwrap_or(0.0);
    assert!(
        sent >= 1000.0 && recv >= 1000.0,
        "sent {sent} received {recv}"
    );
    let failed = p
        .get(
            "corral_upstream_failures_total",
            &[("listen", &proxy), ("upstream", &dead_up)],
        )
        .unwrap_or(0.0);
    assert!(
        failed >= 1.0,
        "{:?}",
        p.all("corral_upstream_failures_total")
    );
    let backoff = p
        .get(
            "corral_upstream_backoff_workers",
            &[("listen", &proxy), ("upstream", &dead_up)],
        )
        .unwrap_or(0.0);
    assert!(
        backoff >= 1.0,
        "{:?}",
        p.all("corral_upstream_backoff_workers")
    );

    // Per-worker series name the real workers.
    let mut pids: Vec<String> = c.worker_pids().iter().map(|p| p.to_string()).collect();
    pids.sort();
    let mut seen: Vec<String> = p
        .all("corral_worker_accepted_total")
        .into_iter()
        .map(|(l, _)| {
            assert!(l.contains_key("slot") && l.get("generation").map(String::as_str) == Some("1"));
            l["pid"].clone()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, pids);
    let per_worker: f64 = p
        .all("corral_worker_accepted_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(per_worker >= 61.0, "{per_worker}");

    // A connection left open shows as active.
    let mut held = c.connect();
    must_echo(&c, &mut held, "held\n");
    let p = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_listener_active", &[("listen", &listen)]) == Some(1.0)
    });
    assert_eq!(
        p.get("corral_listener_active", &[("listen", &listen)]),
        Some(1.0)
    );

    // `status --prometheus` prints the same text: same counters, when nothing moves
    // (scrapes themselves count on the metrics listener, so compare the echo side).
    let out = c.cli(&["status", "--prometheus"]);
    assert!(out.status.success(), "{}", out.all());
    let s = parse(&out.stdout);
    let p = scrape(m);
    for name in [
        "corral_listener_accepted_total",
        "corral_upstream_connects_total",
    ] {
        let a: Vec<_> = s
            .all(name)
            .into_iter()
            .filter(|(l, _)| l.get("listen") != Some(&mport_s(mport)))
            .collect();
        let b: Vec<_> = p
            .all(name)
            .into_iter()
            .filter(|(l, _)| l.get("listen") != Some(&mport_s(mport)))
            .collect();
        assert_eq!(a, b, "{name}: status --prometheus vs scrape");
    }
    assert_eq!(
        s.get("corral_reloads_total", &[("result", "succeeded")]),
        Some(0.0)
    );
    close(held);
}

fn mport_s(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Every counter sample in `before` is present and not smaller in `after`.
fn no_counter_decreased(
    before: &common::metrics::Parsed,
    after: &common::metrics::Parsed,
    when: &str,
) {
    for ((name, labels), v) in before.counters() {
        // Per-worker series end with their worker; the totals must not go down.
        if name.starts_with("corral_worker_") && name != "corral_worker_restarts_total" {
            continue;
        }
        let now = after.samples.get(&(name.clone(), labels.clone())).copied();
        assert!(
            now.is_some_and(|n| n >= v),
            "{when}: {name}{labels:?} went from {v} to {now:?}"
        );
    }
}

#[test]
fn counters_never_decrease_across_a_reload_and_an_upgrade() {
    if !parser_available() {
        return;
    }
    let mport = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .drain("20s")
            .listen(mport, "metrics", "")
            .render(),
    );
    let m = maddr(mport);
    let listen = echo_listen(&c);
    echo_round_trips(&c, 30, b"before the reload\n");
    let p0 = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(31.0)
    });
    assert!(p0.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(31.0));
    // A health-check connection kept alive across the reload.
    let mut hc = connect(m, Duration::from_secs(10)).expect("connect to metrics");
    assert_eq!(request(&mut hc, GET_HEALTHZ).0, 200);

    c.must_reload();
    let p1 = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_reloads_total", &[("result", "succeeded")]) == Some(1.0)
            && p.get("corral_generations_alive", &[]) == Some(1.0)
    });
    assert_eq!(
        p1.get("corral_reloads_total", &[("result", "succeeded")]),
        Some(1.0)
    );
    assert_eq!(p1.get("corral_reload_last_success", &[]), Some(1.0));
    assert!(p1
        .get("corral_reload_ready_seconds", &[])
        .is_some_and(|s| s > 0.0));
    no_counter_decreased(&p0, &p1, "after the reload");
    // The old generation's workers are gone; what they counted is not.
    assert!(p1
        .all("corral_worker_accepted_total")
        .iter()
        .all(|(l, _)| l["generation"] == "2"));
    // The new generation answers health checks, also on the kept-alive connection.
    let (status, head, _) = request(&mut hc, GET_HEALTHZ);
    assert_eq!(status, 200, "{head}");
    assert_eq!(curl(m, "/healthz").status, 200);
    close(hc);

    echo_round_trips(&c, 30, b"after the reload\n");
    let p2 = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(61.0)
    });
    assert!(p2.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(61.0));

    // Binary upgrade to the same binary.
    let old_master = c.master_pid();
    let new_master = c.must_upgrade();
    assert_ne!(new_master, old_master);
    let p3 = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_upgrades_total", &[("result", "succeeded")]) == Some(1.0)
            && p.all("corral_worker_accepted_total").len() == 2
    });
    assert_eq!(
        p3.get("corral_upgrades_total", &[("result", "succeeded")]),
        Some(1.0),
        "the new master must carry the old one's counts\n{}",
        c.log_tail(40)
    );
    no_counter_decreased(&p2, &p3, "after the upgrade");
    // Served by the new master's workers.
    let new_workers: Vec<String> = c
        .workers_of(new_master)
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    for (l, _) in p3.all("corral_worker_accepted_total") {
        assert!(
            new_workers.contains(&l["pid"]),
            "{l:?} not in {new_workers:?}"
        );
    }
    // Once the old master is gone, its last word is in and counters still hold.
    assert!(
        wait_until(Duration::from_secs(30), || read_stat(old_master)
            .is_none_or(|s| s.state == 'Z')),
        "old master {old_master} still runs\n{}",
        c.log_tail(40)
    );
    echo_round_trips(&c, 10, b"after the upgrade\n");
    let p4 = scrape_until(m, Duration::from_secs(20), |p| {
        p.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(71.0)
    });
    no_counter_decreased(&p3, &p4, "after the old master exited");
    assert!(p4.get("corral_listener_accepted_total", &[("listen", &listen)]) >= Some(71.0));
    assert_eq!(
        p4.get("corral_reloads_total", &[("result", "succeeded")]),
        Some(1.0)
    );
}

#[test]
fn healthz_is_503_from_the_start_of_a_graceful_stop() {
    let mport = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .drain("30s")
            .stop("30s")
            .listen(mport, "metrics", "")
            .render(),
    );
    let m = maddr(mport);
    // An echo client keeps the worker draining.
    let mut held = c.connect();
    must_echo(&c, &mut held, "keep me\n");
    let mut hc = connect(m, Duration::from_secs(10)).expect("connect to metrics");
    for _ in 0..3 {
        let (status, head, close) = request(&mut hc, GET_HEALTHZ);
        assert_eq!(status, 200, "{head}");
        assert!(!close, "{head}");
    }
    c.signal(Signal::SIGQUIT);
    let mut last = (0, String::new(), false);
    let got = wait_until(Duration::from_secs(15), || {
        last = request(&mut hc, GET_HEALTHZ);
        last.0 == 503
    });
    assert!(got, "no 503 after SIGQUIT: {last:?}\n{}", c.log_tail(30));
    assert!(last.2, "a stopping worker closes after the 503: {}", last.1);
    assert!(closed_within(&mut hc, Duration::from_secs(10)));
    // Still draining: the held client is served, the master is there.
    assert!(c.master_alive());
    must_echo(&c, &mut held, "still here\n");
    close(held);
    assert!(
        c.wait_all_gone(Duration::from_secs(20)),
        "{}",
        c.log_tail(30)
    );
}

#[test]
fn malformed_requests_get_400_and_close_and_the_worker_survives() {
    let mport = free_port();
    let c = Corral::start(&Conf::new(1).listen(mport, "metrics", "").render());
    let m = maddr(mport);
    let workers = c.worker_pids();
    let long_header = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x00\x01\x02 hello\r\n\r\n".to_vec(), 400),
        ("no version", b"GET /metrics\r\n\r\n".to_vec(), 400),
        (
            "bad version",
            b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(),
            400,
        ),
        (
            "header without colon",
            b"GET /metrics HTTP/1.1\r\nbroken\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a body",
            b"GET /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "chunked",
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("head too long", long_header.into_bytes(), 431),
        ("not utf-8", b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), 400),
    ];
    for (what, raw, want) in cases {
        let mut s = connect(m, Duration::from_secs(10)).expect("connect");
        let (status, head, close) = request(&mut s, &raw);
        assert_eq!(status, want, "{what}: {head}");
        assert!(close, "{what}: must close: {head}");
        assert!(
            closed_within(&mut s, Duration::from_secs(10)),
            "{what}: not closed"
        );
    }
    // Unknown paths and methods are answered, and the connection stays usable.
    let mut s = connect(m, Duration::from_secs(10)).expect("connect");
    assert_eq!(request(&mut s, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(request(&mut s, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(request(&mut s, b"HEAD /healthz HTTP/1.1\r\n\r\n").0, 200);
    let (status, _, close) = request(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(status == 200 && close);
    assert_eq!(
        c.worker_pids(),
        workers,
        "the worker must survive\n{}",
        c.log_tail(30)
    );
    assert_eq!(curl(m, "/metrics").status, 200);
}

#[test]
fn a_master_that_does_not_answer_gets_503_and_the_worker_keeps_serving() {
    let mport = free_port();
    let c = Corral::start(&Conf::new(1).listen(mport, "metrics", "").render());
    let m = maddr(mport);
    assert_eq!(curl(m, "/metrics").status, 200);
    let master = Pid::from_raw(c.master_pid());
    kill(master, Signal::SIGSTOP).expect("SIGSTOP the master");
    struct Cont(Pid);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let _cont = Cont(master);
    let mut scrape_conn = connect(m, Duration::from_secs(10)).expect("connect");
    scrape_conn
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("send");
    // While the scrape waits, the loop serves others.
    let t0 = Instant::now();
    let mut echo_conn = c.connect();
    must_echo(&c, &mut echo_conn, "not blocked\n");
    assert_eq!(curl(m, "/healthz").status, 200);
    let (status, head, _) = request(&mut scrape_conn, b"");
    let waited = t0.elapsed();
    assert_eq!(status, 503, "{head}");
    assert!(
        waited >= Duration::from_millis(1500),
        "503 after {waited:?}"
    );
    drop(_cont);
    assert_eq!(
        scrape_until(m, Duration::from_secs(10), |_| true).get("corral_generation", &[]),
        Some(1.0)
    );
}

#[test]
fn sixty_workers_and_twenty_listeners_make_a_text_split_over_messages() {
    if !parser_available() {
        return;
    }
    let mport = free_port();
    let mut conf = Conf::new(60).listen(mport, "metrics", "");
    for _ in 0..18 {
        conf = conf.listen(free_port(), "echo", "");
    }
    let c = Corral::start(&conf.render());
    let m = maddr(mport);
    let got = curl(m, "/metrics");
    assert_eq!(got.status, 200, "{got:?}");
    eprintln!(
        "METRICS: {} bytes with 60 workers and 20 listeners",
        got.body.len()
    );
    assert!(got.body.len() > 32 * 1024, "{} bytes", got.body.len());
    let p = parse(&got.body);
    assert_eq!(p.all("corral_worker_rss_bytes").len(), 60);
    assert_eq!(p.all("corral_listener_accepted_total").len(), 20);
    let out = c.cli(&["status", "--prometheus"]);
    assert!(out.status.success());
    assert_eq!(parse(&out.stdout).all("corral_worker_rss_bytes").len(), 60);
}

#[test]
fn rejections_are_counted_by_reason() {
    if !parser_available() {
        return;
    }
    let mport = free_port();
    let limited = free_port();
    let slow = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(mport, "metrics", "")
            .listen(limited, "echo", "max_connections_per_ip = 1")
            .listen(slow, "echo", "rate = \"1KiB\"\nburst = \"1KiB\"")
            .render(),
    );
    let mut held = connect(maddr(limited), Duration::from_secs(10)).expect("connect");
    must_echo(&c, &mut held, "first\n");
    for _ in 0..3 {
        let mut over = connect(maddr(limited), Duration::from_secs(10)).expect("connect");
        assert!(
            wait_closed(&mut over, Duration::from_secs(10)).is_ok(),
            "not closed"
        );
    }
    // 4 KiB through a 1 KiB/s limit: held back at least once.
    let mut s = connect(maddr(slow), Duration::from_secs(10)).expect("connect");
    let big = [b'y'; 4096];
    s.write_all(&big).expect("send");
    let mut got = 0;
    let mut b = [0u8; 8192];
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    while got < big.len() {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert_eq!(got, big.len());
    let lim = mport_s(limited);
    let rl = mport_s(slow);
    let p = scrape_until(maddr(mport), Duration::from_secs(20), |p| {
        p.get(
            "corral_listener_rejected_total",
            &[("listen", &lim), ("reason", "per_ip")],
        ) >= Some(3.0)
            && p.get(
                "corral_listener_rejected_total",
                &[("listen", &rl), ("reason", "rate")],
            ) >= Some(1.0)
    });
    assert_eq!(
        p.get(
            "corral_listener_rejected_total",
            &[("listen", &lim), ("reason", "per_ip")]
        ),
        Some(3.0),
        "{:?}",
        p.all("corral_listener_rejected_total")
    );
    assert!(
        p.get(
            "corral_listener_rejected_total",
            &[("listen", &rl), ("reason", "rate")]
        ) >= Some(1.0)
    );
    assert_eq!(
        p.get("corral_listener_active", &[("listen", &lim)]),
        Some(1.0)
    );
    close(held);
}

/// `accepted` has one meaning everywhere: a client accepted from a listener, once, by
/// one worker. Connections moved at a reload are `adopted` by the new workers, not
/// accepted again: status and the metrics agree, and `corral_accepted_total` is the
/// sum of the listeners' counts.
#[test]
fn moved_connections_are_adopted_not_accepted_again() {
    if !parser_available() {
        return;
    }
    let mport = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .drain("30s")
            .listen(mport, "metrics", "")
            .render(),
    );
    const N: usize = 20;
    let mut conns: Vec<TcpStream> = (0..N).map(|_| c.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("before {i}\n"));
    }
    c.must_reload();
    // Every connection moved to the new generation and still echoes.
    let status = |c: &Corral| -> serde_json::Value {
        serde_json::from_str(&c.cli(&["status", "--json"]).stdout).unwrap_or_default()
    };
    let adopted = |v: &serde_json::Value| -> u64 {
        v["workers"].as_array().map_or(0, |ws| {
            ws.iter().filter_map(|w| w["adopted"].as_u64()).sum()
        })
    };
    let mut v = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            v = status(&c);
            adopted(&v) == N as u64
                && v["workers"]
                    .as_array()
                    .is_some_and(|ws| ws.iter().all(|w| w["generation"] == 2))
        }),
        "the new generation did not adopt the {N} connections: {v}\n{}",
        c.log_tail(30)
    );
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("after {i}\n"));
    }
    let p = scrape_until(maddr(mport), Duration::from_secs(20), |p| {
        p.get("corral_adopted_total", &[]) == Some(N as f64)
    });
    assert_eq!(p.get("corral_adopted_total", &[]), Some(N as f64));
    let per_worker: f64 = p
        .all("corral_worker_adopted_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(per_worker, N as f64, "status said {}", adopted(&v));
    let listeners: f64 = p
        .all("corral_listener_accepted_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let accepted = p.get("corral_accepted_total", &[]).unwrap_or(-1.0);
    assert_eq!(
        accepted, listeners,
        "corral_accepted_total is not the sum of the listeners' (moves counted twice?)"
    );
    // The new workers accepted none of the moved clients: at most the scrapes and
    // the harness's probes reached them.
    let echo_accepted = p
        .get(
            "corral_listener_accepted_total",
            &[("listen", &echo_listen(&c))],
        )
        .unwrap_or(0.0);
    assert!(
        echo_accepted < (2 * N) as f64,
        "echo listener accepted {echo_accepted} for {N} clients"
    );
    drop(conns);
}
