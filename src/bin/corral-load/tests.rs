//! Unit tests of corral-load's parts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::conn::fill_message;
use crate::histogram::{Histogram, BUCKETS};
use crate::plan::{source_ips, validate_addr, Mode, Plan};
use crate::run::run_load;
use std::net::TcpListener;

#[test]
fn histogram_buckets_are_contiguous() {
    for v in 0..100_000u64 {
        let i = Histogram::index(v);
        assert!(
            Histogram::lower(i) <= v && v <= Histogram::upper(i),
            "{v} in {i}"
        );
    }
    assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
    for i in 0..BUCKETS - 1 {
        assert_eq!(Histogram::upper(i) + 1, Histogram::lower(i + 1));
    }
}

#[test]
fn histogram_percentiles_within_bucket_error() {
    let mut h = Histogram::new();
    for v in 1..=100_000u64 {
        h.record(v);
    }
    for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
        let got = h.quantile(q) as f64;
        assert!((got - want).abs() / want < 0.035, "q{q}: {got} vs {want}");
    }
    assert_eq!(h.quantile(1.0), 100_000);
    assert_eq!(h.max_or_zero(), 100_000);
    assert!((h.mean() - 50_000.5).abs() < 1e-6);
}

#[test]
fn histogram_small_and_single_values_are_exact() {
    let mut h = Histogram::new();
    assert_eq!(h.quantile(0.5), 0);
    h.record(1234);
    assert_eq!(h.quantile(0.5), 1234);
    assert_eq!(h.quantile(0.999), 1234);
    let mut h = Histogram::new();
    for v in [3, 3, 3, 7] {
        h.record(v);
    }
    assert_eq!(h.quantile(0.5), 3);
    assert_eq!(h.quantile(0.99), 7);
}

#[test]
fn histogram_merge_adds_up() {
    let mut a = Histogram::new();
    let mut b = Histogram::new();
    for v in 0..1000 {
        a.record(v);
        b.record(v + 1000);
    }
    a.merge(&b);
    assert_eq!(a.total, 2000);
    assert_eq!(a.min, 0);
    assert_eq!(a.max, 1999);
    let p50 = a.quantile(0.5) as f64;
    assert!((p50 - 1000.0).abs() / 1000.0 < 0.035, "{p50}");
}

#[test]
fn only_loopback_addresses_are_accepted() {
    for ok in ["127.0.0.1:7070", "127.255.255.254:1", "[::1]:80"] {
        assert!(validate_addr(ok).is_ok(), "{ok}");
    }
    for bad in [
        "10.0.0.1:80",
        "0.0.0.0:80",
        "192.168.1.1:7070",
        "[::]:80",
        "[::ffff:127.0.0.1]:80",
        "[2001:db8::1]:80",
        "localhost:7070",
        "127.0.0.1",
        "127.0.0.1:0",
        "",
    ] {
        assert!(validate_addr(bad).is_err(), "{bad}");
    }
    let e = validate_addr("8.8.8.8:53").unwrap_err();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn source_addresses_spread_over_127_0_0_k() {
    let v4 = validate_addr("127.0.0.1:9").unwrap();
    assert!(source_ips(&v4, 1).unwrap().is_empty());
    let ips = source_ips(&v4, 3).unwrap();
    assert_eq!(ips.len(), 3);
    assert_eq!(ips[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let v6 = validate_addr("[::1]:9").unwrap();
    assert!(source_ips(&v6, 2).is_err());
}

#[test]
fn messages_differ_per_round_trip_and_connection() {
    let mut a = vec![0; 32];
    let mut b = vec![0; 32];
    fill_message(&mut a, 1, 1);
    fill_message(&mut b, 1, 2);
    assert_ne!(a, b);
    fill_message(&mut b, 2, 1);
    assert_ne!(a, b);
    let mut tiny = vec![0; 1];
    fill_message(&mut tiny, 0, 5);
    assert_eq!(tiny, [5]);
}

/// A thread-per-connection echo server on an ephemeral loopback port; it lives
/// until the test process ends (its threads block in accept/read).
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    let addr = l.local_addr().expect("local_addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = match s.try_clone() {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

fn plan(addr: SocketAddr, mode: Mode, conns: usize) -> Plan {
    Plan {
        addr,
        conns,
        threads: 2,
        duration: Duration::from_millis(400),
        mode,
        size: 100,
        pace: None,
        sources: Vec::new(),
        connect_rate: None,
        timeout: Duration::from_secs(5),
        alive_check: Duration::from_secs(1),
        progress: false,
        capped_from: None,
        nofile: 1024,
    }
}

#[test]
fn echo_and_churn_against_a_real_server() {
    let addr = echo_server();
    let s = run_load(&plan(addr, Mode::Echo, 8)).expect("echo run");
    assert_eq!(s.counters.opened, 8);
    assert!(s.counters.round_trips > 8, "{:?}", s.counters);
    assert_eq!(s.counters.errors(), 0, "{:?}", s.counters);
    assert_eq!(s.open_at_end, 8);

    let s = run_load(&plan(addr, Mode::Churn, 4)).expect("churn run");
    assert!(s.counters.opened > 4, "{:?}", s.counters);
    assert!(s.counters.round_trips + 4 >= s.counters.opened);
    assert_eq!(s.counters.errors(), 0, "{:?}", s.counters);
}

#[test]
fn idle_mode_notices_a_server_that_closes() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    // Accept and close at once: every connection is seen as closed while idle.
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    let s = run_load(&plan(addr, Mode::Idle, 2)).expect("idle run");
    assert!(s.counters.closed_idle >= 2, "{:?}", s.counters);
}

#[test]
fn a_refused_connect_is_counted_and_retried() {
    // Bind then drop to get a loopback port with (almost certainly) no listener.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = run_load(&plan(addr, Mode::Echo, 2)).expect("refused run");
    assert_eq!(s.counters.opened, 0);
    assert!(s.counters.connect_failed >= 2, "{:?}", s.counters);
    assert!(s.first_connect_error.is_some());
}
