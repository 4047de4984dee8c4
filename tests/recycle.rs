//! Recycling workers by connections served and by age, rolling reloads, and
//! steering reuseport connections by client address. Everything runs the real
//! `corral` binary under real client load; see `common/mod.rs` for the harness rules.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::recycle::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Polls status while `load` runs (and at most `max`), then returns what it saw.
fn watch(c: &Corral, load: &Load, max: Duration, mut until: impl FnMut(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let end = Instant::now() + max;
    while Instant::now() < end && !load.done() {
        seen.poll(c);
        if until(&seen) {
            break;
        }
        // Between status polls (a CLI run each), /proc is read every 2 ms.
        let next = Instant::now() + Duration::from_millis(50);
        while Instant::now() < next {
            seen.max_alive = seen.max_alive.max(c.workers().len());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    seen
}

/// What both recycle-under-load tests require: no failed connection, at least
/// `least` made, every one of the 4 slots replaced, one slot (and so at most 5
/// workers) recycling at a time, in the log as in status.
fn assert_recycled_under_load(
    c: &Corral,
    seen: &Seen,
    (ok, failed, errors): (u64, u64, &[String]),
    least: u64,
) {
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed: {errors:?}\n{}",
        ok + failed,
        c.log_tail(30)
    );
    assert!(ok >= least, "only {ok} connections were made");
    assert_eq!(
        replaced_slots(seen, 4),
        4,
        "not every slot was recycled: {:?}\n{}",
        seen.workers,
        c.log_tail(30)
    );
    assert!(
        seen.max_busy_slots <= 1,
        "{} slots were recycling at the same time",
        seen.max_busy_slots
    );
    assert!(
        seen.max_alive <= 5,
        "{} workers alive at once: more than one slot recycling",
        seen.max_alive
    );
    assert_one_recycle_at_a_time(&c.log());
}

/// From the log: each recycled worker exited before the next recycle began.
fn assert_one_recycle_at_a_time(log: &str) {
    let pid_of = |l: &str| number_after(l, " pid=").map(|p| p as i32);
    let mut current: Option<i32> = None;
    for l in log.lines() {
        if l.contains("recycling worker") {
            assert!(
                current.is_none(),
                "a recycle began while worker {current:?} was still being recycled: {l}"
            );
            current = pid_of(l);
        } else if l.contains("worker exited") && current.is_some() && pid_of(l) == current {
            current = None;
        }
    }
}

/// Slots whose first (generation 1) worker has been replaced by another.
fn replaced_slots(seen: &Seen, workers: u64) -> usize {
    (0..workers)
        .filter(|s| seen.slot_history(*s).len() >= 2)
        .count()
}

/// `max_requests = 200` with a jitter of 50 and 4 workers under thousands of short
/// connections: every worker is replaced after serving at least its limit (drawn in
/// 200..=250 and not the same for all), one slot at a time, and no client
/// connection fails during the whole run.
#[test]
fn workers_are_recycled_after_max_requests_one_at_a_time_without_a_failure() {
    let c = Corral::start(
        &Conf::bare(4)
            .drain("10s")
            .stop("3s")
            .heartbeat("100ms")
            .worker("max_requests = 200\nmax_requests_jitter = 50")
            .level("info")
            .render(),
    );
    let load = Load::start(c.addr(), 4, 1500, Duration::from_secs(90));
    let mut seen = watch(&c, &load, Duration::from_secs(90), |s| {
        // Each slot replaced at least twice: limits were drawn more than once.
        (0..4).all(|slot| s.slot_history(slot).len() >= 3)
    });
    let (ok, failed, errors) = load.finish();
    seen.poll(&c);
    let log = c.log();
    assert_recycled_under_load(&c, &seen, (ok, failed, &errors), 2000);
    // No worker went before serving 200: the replaced ones together served at
    // least 200 each, out of the connections the clients made.
    let replaced: usize = (0..4).map(|s| seen.slot_history(s).len() - 1).sum();
    assert!(
        200 * replaced as u64 <= ok,
        "{replaced} workers replaced for only {ok} connections"
    );
    let lines = recycle_lines(&log);
    assert!(lines.len() >= 4, "no recycle lines in the log:\n{log}");
    eprintln!(
        "max_requests: {ok} connections, {failed} failed, {} recycles, at most {} workers alive, {} status polls",
        lines.len(),
        seen.max_alive,
        seen.polls
    );
    let mut limits = HashSet::new();
    for l in &lines {
        let served = number_after(l, "served").unwrap_or_else(|| panic!("{l}"));
        let limit = number_after(l, "is").unwrap_or_else(|| panic!("{l}"));
        assert!((200.0..=250.0).contains(&limit), "limit out of range: {l}");
        assert!(served >= limit, "recycled before its limit: {l}");
        limits.insert(limit as u64);
    }
    assert!(
        limits.len() >= 2,
        "every worker drew the same limit (no jitter): {limits:?}"
    );
}

/// `max_lifetime = "3s"` with a jitter of 2s: every worker is replaced after living
/// at least 3s, one slot at a time, with no failed connection under load.
#[test]
fn workers_are_recycled_after_max_lifetime_without_a_failure() {
    let c = Corral::start(
        &Conf::bare(4)
            .drain("10s")
            .stop("3s")
            .heartbeat("100ms")
            .worker("max_lifetime = \"3s\"\nmax_lifetime_jitter = \"2s\"")
            .level("info")
            .render(),
    );
    let started = Instant::now();
    let load = Load::start(c.addr(), 2, 1_000_000, Duration::from_secs(60));
    let mut seen = watch(&c, &load, Duration::from_secs(60), |s| {
        replaced_slots(s, 4) == 4 && started.elapsed() > Duration::from_secs(8)
    });
    let (ok, failed, errors) = load.finish();
    seen.poll(&c);
    assert_recycled_under_load(&c, &seen, (ok, failed, &errors), 1000);
    for slot in 0..4 {
        let hist = seen.slot_history(slot);
        for (pid, w) in &hist[..hist.len() - 1] {
            // Seen for that long by a 20 ms poll (first seen after its start, last
            // seen before it went): it lived at least this.
            let lived = w.last.saturating_duration_since(w.first);
            assert!(
                lived >= Duration::from_millis(2500),
                "worker {pid} of slot {slot} was replaced after {lived:?}"
            );
        }
    }
    let lines = recycle_lines(&c.log());
    assert!(
        lines.iter().all(|l| l.contains("max_lifetime")),
        "{lines:?}"
    );
    eprintln!(
        "max_lifetime: {ok} connections, {failed} failed, {} recycles, at most {} workers alive",
        lines.len(),
        seen.max_alive
    );
}

/// Live workers of the master, counted from /proc.
fn live_workers(c: &Corral) -> usize {
    c.workers().len()
}

/// `reload_surge = 1` with 4 workers, reloaded under load: never more than 5
/// workers alive at once, no failed connection, the reload answers ok, and every
/// slot ends on the new generation.
#[test]
fn a_rolling_reload_never_holds_more_than_one_extra_worker() {
    let c = Corral::start(
        &Conf::bare(4)
            .drain("10s")
            .stop("3s")
            .master("reload_surge = 1")
            .heartbeat("100ms")
            .level("info")
            .render(),
    );
    let load = Load::start(c.addr(), 3, 1_000_000, Duration::from_secs(60));
    // Some traffic first, so the reload happens under load.
    assert!(wait_until(Duration::from_secs(20), || load
        .ok
        .load(std::sync::atomic::Ordering::Relaxed)
        >= 200));
    let (answer, mut max_alive) = std::thread::scope(|s| {
        let reload = s.spawn(|| c.cli(&["-s", "reload"]));
        let mut max_alive = 0;
        while !reload.is_finished() {
            max_alive = max_alive.max(live_workers(&c));
            std::thread::sleep(Duration::from_millis(2));
        }
        (reload.join().expect("reload thread"), max_alive)
    });
    assert!(
        answer.status.success(),
        "reload failed: {}\n{}",
        answer.all(),
        c.log_tail(30)
    );
    assert!(answer.stdout.contains("reloaded"), "{}", answer.all());
    // Old workers drain after the answer: keep counting until they are gone.
    let mut settled = false;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        max_alive = max_alive.max(live_workers(&c));
        let (_, generation, ws) = status(&c);
        if generation == 2 && ws.len() == 4 && ws.iter().all(|w| w.generation == 2) {
            settled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // More traffic on the new generation, then stop the load.
    let target = load.ok.load(std::sync::atomic::Ordering::Relaxed) + 300;
    assert!(wait_until(Duration::from_secs(20), || load
        .ok
        .load(std::sync::atomic::Ordering::Relaxed)
        >= target));
    let (ok, failed, errors) = load.finish();
    assert!(
        settled,
        "slots did not all end on generation 2: {:?}",
        status(&c)
    );
    let (_, _, ws) = status(&c);
    let slots: HashSet<u64> = ws.iter().map(|w| w.slot).collect();
    assert_eq!(slots, (0..4).collect(), "{ws:?}");
    assert!(
        max_alive <= 5,
        "{max_alive} workers were alive at once during the reload (4 + surge 1 allowed)\n{}",
        c.log_tail(30)
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed: {errors:?}",
        ok + failed
    );
    assert!(ok >= 500, "only {ok} connections were made");
    eprintln!(
        "rolling reload: {ok} connections, {failed} failed, at most {max_alive} workers alive"
    );
}

/// A rolling reload whose new worker dies after its slot was replaced fails as a
/// whole: the answer says so and which slot was rolled back, every slot serves on
/// the old generation again, and nothing of the new one is left.
#[test]
fn a_failed_rolling_reload_rolls_the_replaced_slots_back() {
    let c = Corral::start(
        &Conf::bare(4)
            .drain("10s")
            .stop("3s")
            .master("reload_surge = 1\nwatchdog_timeout = \"60s\"")
            .heartbeat("100ms")
            .level("info")
            .render(),
    );
    let (_, _, before) = status(&c);
    let old0 = before
        .iter()
        .find(|w| w.slot == 0)
        .expect("slot 0 in status")
        .pid;
    // The old worker of slot 0 cannot drain while stopped: the roll waits there,
    // with slot 0 replaced, which is where the new worker is made to fail.
    kill(Pid::from_raw(old0), Signal::SIGSTOP).expect("SIGSTOP");
    let answer = std::thread::scope(|s| {
        let reload = s.spawn(|| c.cli(&["-s", "reload"]));
        let mut new0 = None;
        assert!(
            wait_until(Duration::from_secs(20), || {
                let (_, _, ws) = status(&c);
                let old_draining = ws.iter().any(|w| w.pid == old0 && w.state == "draining");
                new0 = ws
                    .iter()
                    .find(|w| w.generation == 2 && w.slot == 0 && w.state == "ready")
                    .map(|w| w.pid);
                old_draining && new0.is_some()
            }),
            "the roll did not replace slot 0: {:?}\n{}",
            status(&c),
            c.log_tail(30)
        );
        let new0 = new0.expect("new worker of slot 0");
        kill(Pid::from_raw(new0), Signal::SIGKILL).expect("SIGKILL");
        reload.join().expect("reload thread")
    });
    kill(Pid::from_raw(old0), Signal::SIGCONT).expect("SIGCONT");
    assert!(
        !answer.status.success(),
        "reload reported ok: {}",
        answer.all()
    );
    let text = answer.all();
    assert!(text.contains("reload failed"), "{text}");
    assert!(text.contains("rolling back slot(s) [0]"), "{text}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, generation, ws) = status(&c);
            generation == 1
                && ws.len() == 4
                && ws
                    .iter()
                    .all(|w| w.generation == 1 && w.state == "ready" && w.pid != old0)
                && ws.iter().map(|w| w.slot).collect::<HashSet<_>>().len() == 4
        }),
        "the old generation does not serve every slot again: {:?}\n{}",
        status(&c),
        c.log_tail(30)
    );
    for n in 0..200 {
        one_echo(c.addr(), n).unwrap_or_else(|e| panic!("after the failed reload: {e}"));
    }
    // The next reload works (the rolled-back generation number is free again).
    c.must_reload();
}

/// `steer` without `accept = "reuseport"` is refused, naming the key.
#[test]
fn steer_needs_reuseport() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let body = Conf::bare(2)
        .drain("10s")
        .stop("3s")
        .heartbeat("100ms")
        .level("info")
        .echo("steer = \"client-ip\"")
        .render_on(1);
    std::fs::write(&path, body).unwrap();
    let out = run_cli(
        dir.path(),
        &["-t", "-c", &path.to_string_lossy()],
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "{}", out.all());
    assert!(out.all().contains("listen[0].steer"), "{}", out.all());
    assert!(out.all().contains("reuseport"), "{}", out.all());
}

/// For each of 8 client addresses, which worker pid held its 50 connections.
fn placement(c: &Corral, pids: &[i32], conns_per_addr: usize) -> HashMap<u8, HashSet<Option<i32>>> {
    let mut conns: Vec<(u8, TcpStream)> = Vec::new();
    for last in 2u8..10 {
        for n in 0..conns_per_addr {
            let mut s = connect_from(Ipv4Addr::new(127, 0, 0, last), c.addr())
                .unwrap_or_else(|e| panic!("connect from 127.0.0.{last}: {e}"));
            // A round trip: the connection has been accepted by a worker.
            must_echo(c, &mut s, &format!("from {last} #{n}"));
            conns.push((last, s));
        }
    }
    let streams: Vec<TcpStream> = conns.iter().map(|(_, s)| s.try_clone().unwrap()).collect();
    // A read of a busy /proc/net/tcp can miss lines (it is read in pieces while
    // the table changes): look again for the ones not found.
    let mut owners = vec![None; streams.len()];
    wait_until(Duration::from_secs(10), || {
        for (o, found) in owners.iter_mut().zip(owners_any(&streams, pids)) {
            if o.is_none() {
                *o = found;
            }
        }
        owners.iter().all(Option::is_some)
    });
    let mut out: HashMap<u8, HashSet<Option<i32>>> = HashMap::new();
    for ((last, _), o) in conns.iter().zip(owners) {
        out.entry(*last).or_default().insert(o);
    }
    out
}

/// The slot of worker `pid`, from `corral status`.
fn slot_of(c: &Corral, pid: i32) -> u64 {
    let (_, _, ws) = status(c);
    ws.iter()
        .find(|w| w.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in status {ws:?}"))
        .slot
}

/// The one worker each address landed on (fails when an address landed on several).
fn one_each(p: &HashMap<u8, HashSet<Option<i32>>>) -> HashMap<u8, i32> {
    p.iter()
        .map(|(a, owners)| {
            assert_eq!(
                owners.len(),
                1,
                "connections from 127.0.0.{a} landed on several workers: {owners:?}"
            );
            let pid = owners.iter().next().copied().flatten();
            (
                *a,
                pid.unwrap_or_else(|| panic!("127.0.0.{a}: owner not found")),
            )
        })
        .collect()
}

const STEER: &str = "accept = \"reuseport\"\nsteer = \"client-ip\"";

/// Four workers with the echo listener steered by client address.
fn start_steered() -> Corral {
    Corral::start(
        &Conf::bare(4)
            .drain("10s")
            .stop("3s")
            .heartbeat("100ms")
            .level("info")
            .echo(STEER)
            .render(),
    )
}

/// `steer = "client-ip"`: 50 connections from each of 8 source addresses land on
/// one worker per address, the addresses spread over several workers, and after a
/// reload each address lands on the successor of the same slot.
#[test]
fn steer_by_client_ip_keeps_a_client_on_one_slot_across_reloads() {
    let c = start_steered();
    let first = one_each(&placement(&c, &c.worker_pids(), 50));
    let workers: HashSet<i32> = first.values().copied().collect();
    assert!(
        workers.len() >= 2,
        "8 addresses all landed on one worker: {first:?}"
    );
    let slots: HashMap<u8, u64> = first.iter().map(|(a, p)| (*a, slot_of(&c, *p))).collect();

    c.must_reload();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (_, _, ws) = status(&c);
            ws.len() == 4 && ws.iter().all(|w| w.generation == 2)
        }),
        "old workers still running: {:?}",
        status(&c)
    );
    let second = one_each(&placement(&c, &c.worker_pids(), 50));
    for (a, pid) in &second {
        assert!(!first.values().any(|p| p == pid), "{pid} is an old worker");
        assert_eq!(
            slot_of(&c, *pid),
            slots[a],
            "127.0.0.{a} moved from slot {} to another slot after the reload",
            slots[a]
        );
    }
}

/// A binary upgrade hands the reuseport sockets to the new master in slot order:
/// after it, each client address lands on the new master's worker of the same slot.
#[test]
fn steer_by_client_ip_survives_a_binary_upgrade() {
    let c = start_steered();
    let first = one_each(&placement(&c, &c.worker_pids(), 20));
    let slots: HashMap<u8, u64> = first.iter().map(|(a, p)| (*a, slot_of(&c, *p))).collect();
    let old_master = c.master_pid();
    let new_master = c.must_upgrade();
    assert_ne!(new_master, old_master);
    assert_eq!(
        c.read_pid_file(),
        Some(new_master),
        "the pid file does not name the new master"
    );
    let mut pids = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            pids = c.workers_of(new_master).iter().map(|w| w.pid).collect();
            c.master_exited() && pids.len() == 4 && c.worker_pids().is_empty()
        }),
        "the old master or its workers are still there, or the new one has {pids:?}\n{}",
        c.log_tail(30)
    );
    let second = one_each(&placement(&c, &pids, 20));
    for (a, pid) in &second {
        assert_eq!(
            slot_of(&c, *pid),
            slots[a],
            "127.0.0.{a} moved from slot {} to another slot after the upgrade",
            slots[a]
        );
    }
}
