//! Black-box tests of the worker IO engine: per-client rate limits, backpressure,
//! per-IP limits, accept balancing in both accept modes, and reuseport sockets that
//! survive a reload with connections queued on them.

use crate::common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn status_json(c: &Corral) -> serde_json::Value {
    let out = c.cli(&["status", "--json"]);
    assert!(out.status.success(), "status failed: {}", out.all());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}: {}", out.stdout))
}

/// `accepted` per worker pid, from `corral status --json`.
fn accepted_by_worker(c: &Corral) -> HashMap<i64, u64> {
    status_json(c)["workers"]
        .as_array()
        .expect("workers array")
        .iter()
        .map(|w| {
            (
                w["pid"].as_i64().unwrap_or(0),
                w["accepted"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn greedy_client_is_held_to_rate_while_light_clients_stay_fast() {
    const RATE: u64 = 256 * 1024;
    const SECS: f64 = 3.0;
    let c = Corral::start(
        &Conf::bare(1)
            .heartbeat("100ms")
            .table("flow", "rate = \"256KiB\"\nburst = \"32KiB\"")
            .accept("shared")
            .render(),
    );

    // The greedy client writes flat out from one thread and reads the echo from
    // another; the bytes echoed back over time are what the server read.
    let greedy = c.connect();
    let mut reader = greedy.try_clone().expect("clone");
    let mut writer = greedy;
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let w_stop = stop.clone();
    let wt = std::thread::spawn(move || {
        let chunk = vec![b'g'; 64 * 1024];
        while !w_stop.load(Ordering::Relaxed) {
            match writer.write(&chunk) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    });
    let r_echoed = echoed.clone();
    let r_stop = stop.clone();
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let rt = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !r_stop.load(Ordering::Relaxed) {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    r_echoed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    });

    // 40 light clients, each a small round trip every 50 ms.
    let light: Vec<_> = (0..40)
        .map(|i| {
            let mut s = c.connect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("light {i} {n}\n");
                    let t = Instant::now();
                    match echo(&mut s, msg.as_bytes(), Duration::from_secs(10)) {
                        Echo::Ok => lat.push(t.elapsed()),
                        other => return Err(format!("light client {i}: {other:?}")),
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(lat)
            })
        })
        .collect();

    // Skip the first burst, then measure the steady rate.
    std::thread::sleep(Duration::from_millis(500));
    let (t0, b0) = (Instant::now(), echoed.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(SECS));
    let (t1, b1) = (Instant::now(), echoed.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let rate = (b1 - b0) as f64 / (t1 - t0).as_secs_f64();
    let _ = wt.join();
    let _ = rt.join();
    let mut lats = Vec::new();
    for t in light {
        match t.join().expect("light thread") {
            Ok(l) => lats.extend(l),
            Err(e) => panic!("{e}\n{}", c.log_tail(40)),
        }
    }
    lats.sort();
    let p50 = lats[lats.len() / 2];
    let p99 = lats[lats.len() * 99 / 100];
    eprintln!(
        "greedy client: {:.0} B/s (limit {RATE}); light clients: {} round trips, p50 {p50:?}, p99 {p99:?}",
        rate,
        lats.len()
    );
    let ratio = rate / RATE as f64;
    assert!(
        (0.7..=1.3).contains(&ratio),
        "greedy client got {rate:.0} B/s, {ratio:.2}x the configured rate\n{}",
        c.log_tail(20)
    );
    // Starvation would show as seconds; a loaded 2-core box stays well under this.
    assert!(
        p50 < Duration::from_millis(100),
        "light clients slow: p50 {p50:?}"
    );
    assert!(
        p99 < Duration::from_secs(1),
        "light clients starved: p99 {p99:?}"
    );
}

#[test]
fn client_that_never_reads_does_not_grow_worker_memory() {
    let c = Corral::start(
        &Conf::bare(1)
            .heartbeat("100ms")
            .table(
                "flow",
                "write_high_water = \"256KiB\"\nwrite_low_water = \"64KiB\"",
            )
            .accept("shared")
            .render(),
    );
    let worker = c.workers()[0].pid;
    let before = vm_rss_kib(worker);
    let mut s = c.connect();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Write until the kernel buffers on both sides and the worker's output buffer
    // are full and the writes block: then the worker has stopped reading from us.
    let chunk = vec![b'w'; 64 * 1024];
    let mut written = 0u64;
    let mut blocked_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && written < 256 << 20 {
        match s.write(&chunk) {
            Ok(n) => {
                written += n as u64;
                blocked_since = None;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            Err(e) => panic!(
                "write failed after {written} bytes: {e}\n{}",
                c.log_tail(20)
            ),
        }
    }
    assert!(
        blocked_since.is_some(),
        "the worker kept reading a client that never reads: {written} bytes accepted\n{}",
        c.log_tail(20)
    );
    // Heartbeats carry RSS too, but /proc is immediate.
    let after = vm_rss_kib(worker);
    eprintln!("wrote {written} bytes before blocking; worker RSS {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "worker RSS grew by {} KiB for one client that never reads",
        after - before
    );
    // And it still serves others.
    let mut other = c.connect();
    must_echo(&c, &mut other, "still here\n");
}

#[test]
fn per_ip_connection_limit_closes_the_excess() {
    let c = Corral::start(
        &Conf::bare(1)
            .heartbeat("100ms")
            .table("flow", "max_connections_per_ip = 3")
            .accept("shared")
            .render(),
    );
    let mut held: Vec<TcpStream> = (0..3).map(|_| c.connect()).collect();
    for (i, s) in held.iter_mut().enumerate() {
        must_echo(&c, s, &format!("held {i}\n"));
    }
    let mut extra = c.connect();
    match echo(&mut extra, b"one too many\n", Duration::from_secs(10)) {
        Echo::Closed(_) => {}
        other => panic!(
            "the 4th connection from one IP was served: {other:?}\n{}",
            c.log_tail(20)
        ),
    }
    // Freeing one makes room again.
    close(held.pop().expect("held"));
    let ok = wait_until(Duration::from_secs(10), || {
        let mut s = c.connect();
        matches!(
            echo(&mut s, b"room again\n", Duration::from_secs(2)),
            Echo::Ok
        )
    });
    assert!(ok, "no room after a connection closed\n{}", c.log_tail(20));
}

/// Opens `n` connections one after another, each doing one round trip (and kept
/// open), then reads how many each worker accepted.
fn spread(accept: &str) {
    const N: usize = 400;
    const WORKERS: usize = 4;
    let c = Corral::start(
        &Conf::bare(WORKERS)
            .heartbeat("100ms")
            .table("flow", "")
            .accept(accept)
            .render(),
    );
    let pids: Vec<i64> = c.worker_pids().iter().map(|p| i64::from(*p)).collect();
    let base = accepted_by_worker(&c);
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = c.connect();
        must_echo(&c, &mut s, &format!("seq {i}\n"));
        conns.push(s);
    }
    let mut counts = HashMap::new();
    let settled = wait_until(Duration::from_secs(10), || {
        let now = accepted_by_worker(&c);
        counts = pids
            .iter()
            .map(|p| {
                (
                    *p,
                    now.get(p).copied().unwrap_or(0) - base.get(p).copied().unwrap_or(0),
                )
            })
            .collect::<HashMap<_, _>>();
        counts.values().sum::<u64>() >= N as u64
    });
    assert!(
        settled,
        "heartbeats never accounted for {N} connections: {counts:?}\n{}",
        c.log_tail(20)
    );
    let max = *counts.values().max().unwrap_or(&0);
    let min = *counts.values().min().unwrap_or(&0);
    eprintln!("accept = {accept}: {N} sequential connections over {WORKERS} workers: {counts:?}");
    assert!(
        min > 0 && max <= 2 * min,
        "accept = {accept}: spread over workers beyond 2x: {counts:?}\n{}",
        c.log_tail(20)
    );
}

#[test]
fn sequential_connections_spread_over_workers_shared() {
    spread("shared");
}

#[test]
fn sequential_connections_spread_over_workers_reuseport() {
    spread("reuseport");
}

#[test]
fn reuseport_reload_resets_no_queued_connection() {
    const N: usize = 40;
    let c = Corral::start(
        &Conf::bare(2)
            .watchdog("60s")
            .drain("10s")
            .accept("reuseport")
            .render(),
    );
    // Freeze the workers: new connections now wait in the per-slot accept queues.
    let old = c.workers();
    for w in &old {
        c.signal_worker(*w, Signal::SIGSTOP);
    }
    let mut queued: Vec<TcpStream> = (0..N).map(|_| c.connect()).collect();
    for (i, s) in queued.iter_mut().enumerate() {
        s.write_all(format!("queued {i}\n").as_bytes())
            .expect("write to a queued connection");
    }
    // The new generation takes over the same per-slot sockets and their queues.
    let out = c.cli(&["-s", "reload"]);
    for w in &old {
        let _ = kill(Pid::from_raw(w.pid), Signal::SIGCONT);
    }
    assert!(
        out.status.success(),
        "reload failed: {}\n{}",
        out.all(),
        c.log_tail(30)
    );
    let mut failed = Vec::new();
    for (i, s) in queued.iter_mut().enumerate() {
        let want = format!("queued {i}\n");
        match read_exact_timeout(s, want.len(), Duration::from_secs(15)) {
            Ok(b) if b == want.as_bytes() => {}
            other => failed.push(format!("{i}: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {N} queued connections lost across the reload: {failed:?}\n{}",
        failed.len(),
        c.log_tail(30)
    );
}

#[test]
fn cpu_affinity_pins_each_worker_to_one_cpu() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let c = Corral::start(&Conf::bare(2).master("cpu_affinity = true").render());
    let allowed: Vec<String> = c
        .worker_pids()
        .iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Cpus_allowed_list:"))
                        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                })
                .unwrap_or_default()
        })
        .collect();
    eprintln!("workers' allowed CPUs: {allowed:?} (this box has {cpus})");
    for a in &allowed {
        assert!(
            !a.is_empty() && !a.contains(',') && !a.contains('-'),
            "a worker is not pinned to one CPU: {allowed:?}\n{}",
            c.log_tail(20)
        );
    }
    if cpus >= 2 {
        assert_ne!(
            allowed[0], allowed[1],
            "both workers pinned to the same CPU"
        );
    }
}
