//! Reload black-box tests: persistent clients and connection churn through
//! reloads, draining (last client gone, drain_timeout), bad configs, changing
//! the worker count and the listeners, and the cap on old generations.
//! Everything runs the real `corral` binary on loopback ports; see
//! `common/mod.rs` for the harness rules.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// Rewrites the running config file with `f` (which must change it): a raw text
/// edit, kept because the test that uses it writes malformed values on purpose.
fn edit_config(c: &Corral, f: impl FnOnce(&str) -> String) {
    let old = std::fs::read_to_string(c.config()).expect("read config");
    let new = f(&old);
    assert_ne!(old, new, "test bug: config edit changed nothing:\n{old}");
    std::fs::write(c.config(), new).expect("write config");
}

/// `corral status --json`: (generation, workers).
fn status(c: &Corral) -> (u64, Vec<StatusWorker>) {
    let (_, generation, workers) = common::status(c);
    (generation, workers)
}

/// True when the only live workers are the `n` ready workers of the current
/// generation, in status and in /proc alike.
fn only_current_generation(c: &Corral, n: usize) -> bool {
    let (generation, ws) = status(c);
    let procs: HashSet<i32> = c.worker_pids().into_iter().collect();
    let listed: HashSet<i32> = ws.iter().map(|w| w.pid).collect();
    ws.len() == n
        && ws
            .iter()
            .all(|w| w.generation == generation && w.state == "ready")
        && procs == listed
}

// ---------------------------------------------------------------------------
// 1. persistent clients ride through several reloads
// ---------------------------------------------------------------------------

#[test]
fn persistent_clients_ride_through_reloads() {
    const CLIENTS: usize = 20;
    const RELOADS: usize = 5;
    let c = Corral::start(&Conf::new(2).drain("60s").pinned().render());
    let gen1 = c.workers();

    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let mut threads = Vec::new();
    for i in 0..CLIENTS {
        let mut s = c.connect();
        must_echo(&c, &mut s, &format!("client {i} hello\n"));
        let (stop, errors, counts) = (stop.clone(), errors.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("client {i} round {n}\n");
                match echo(&mut s, msg.as_bytes(), Duration::from_secs(10)) {
                    Echo::Ok => {
                        n += 1;
                        counts[i].store(n, Ordering::Relaxed);
                    }
                    other => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("client {i} round {n}: {other:?}"));
                        break;
                    }
                }
                // Pacing between round trips.
                std::thread::sleep(Duration::from_millis(10));
            }
            s
        }));
    }
    let snapshot = |counts: &Vec<AtomicUsize>| -> Vec<usize> {
        counts.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    };

    for r in 1..=RELOADS {
        let out = c.must_reload();
        eprintln!("reload {r}: {}", out.trim());
        // Every client keeps being served after this reload.
        let base = snapshot(&counts);
        let progressed = wait_until(Duration::from_secs(20), || {
            !errors.lock().unwrap().is_empty()
                || snapshot(&counts)
                    .iter()
                    .zip(&base)
                    .all(|(now, then)| *now >= then + 3)
        });
        let errs = errors.lock().unwrap().clone();
        assert!(
            errs.is_empty(),
            "persistent clients got errors during reload {r}: {errs:?}\n{}",
            c.log_tail(40)
        );
        assert!(
            progressed,
            "clients stalled after reload {r}: round trips {:?} (before {base:?})\n{}",
            snapshot(&counts),
            c.log_tail(40)
        );
    }

    stop.store(true, Ordering::Relaxed);
    let mut conns: Vec<TcpStream> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let errs = errors.lock().unwrap().clone();
    assert!(
        errs.is_empty(),
        "persistent clients got errors: {errs:?}\n{}",
        c.log_tail(40)
    );
    eprintln!("round trips per client: {:?}", snapshot(&counts));

    // The clients were riding on the first generation, which is still draining.
    let (generation, _) = status(&c);
    assert_eq!(
        generation,
        1 + RELOADS as u64,
        "{RELOADS} reloads should give generation {}\n{}",
        1 + RELOADS,
        c.log_tail(40)
    );
    assert!(
        gen1.iter().any(|w| proc_alive(*w)),
        "no first-generation worker alive while its {CLIENTS} clients are connected \
         (drain_timeout 60s)\n{}",
        c.log_tail(40)
    );
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("client {i} last word\n"));
    }

    // Clients leave: the old workers exit (long before drain_timeout).
    for s in conns {
        close(s);
    }
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || only_current_generation(&c, 2)),
        "10s after the clients closed (drain_timeout 60s), old workers remain: status {:?}, \
         live first-generation workers {:?}\n{}",
        status(&c),
        gen1.iter().filter(|w| proc_alive(**w)).collect::<Vec<_>>(),
        c.log_tail(40)
    );
    assert!(
        gen1.iter().all(|w| !proc_alive(*w)),
        "first-generation workers still alive: {gen1:?}\n{}",
        c.log_tail(40)
    );
    eprintln!(
        "old workers gone {:?} after the clients closed",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. a reload storm with connection churn
// ---------------------------------------------------------------------------

#[test]
fn reload_storm_with_connection_churn_loses_nothing() {
    const THREADS: usize = 4;
    const HUPS: usize = 20;
    let c = Corral::start(&Conf::new(2).drain("20s").render());
    let addr = c.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let (stop, failures, counts) = (stop.clone(), failures.clone(), counts.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // One attempt per connection: a refused or reset connect is a failure.
                match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("thread {t} connection {n}: connect: {e}")),
                    Ok(mut s) => {
                        let _ = s.set_nodelay(true);
                        let msg = format!("churn {t} {n}\n");
                        match echo(&mut s, msg.as_bytes(), Duration::from_secs(10)) {
                            Echo::Ok => {
                                counts[t].fetch_add(1, Ordering::Relaxed);
                            }
                            other => failures
                                .lock()
                                .unwrap()
                                .push(format!("thread {t} connection {n}: {other:?}")),
                        }
                        close(s);
                    }
                }
                n += 1;
                // Pacing between connections.
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    let total = |counts: &Vec<AtomicUsize>| -> Vec<usize> {
        counts.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    };

    // Churn is flowing before the storm.
    assert!(
        wait_until(Duration::from_secs(10), || total(&counts)
            .iter()
            .all(|&n| n >= 5)),
        "churn does not flow before the reloads: {:?}\n{}",
        total(&counts),
        c.log_tail(40)
    );

    // 20 SIGHUPs at 4 per second.
    let t0 = Instant::now();
    let mut max_children = 0;
    for i in 0..HUPS {
        c.signal(Signal::SIGHUP);
        // Pacing of the storm (4 per second), sampling the worker count meanwhile.
        let next = Duration::from_millis(250 * (i as u64 + 1));
        wait_until(next.saturating_sub(t0.elapsed()), || {
            max_children = max_children.max(c.workers().len());
            false
        });
    }
    // A final synchronous reload must succeed (it may be queued behind the storm).
    let out = c.must_reload();
    eprintln!(
        "storm of {HUPS} SIGHUPs took {:?}; final reload: {}",
        t0.elapsed(),
        out.trim()
    );

    // Churn keeps flowing after the storm.
    let base = total(&counts);
    let flowing = wait_until(Duration::from_secs(20), || {
        total(&counts)
            .iter()
            .zip(&base)
            .all(|(now, then)| *now >= then + 5)
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("churn thread");
    }
    let fails = failures.lock().unwrap().clone();
    let done: usize = total(&counts).iter().sum();
    eprintln!(
        "{done} connections served, {} failed; most workers seen at once during the storm: \
         {max_children}",
        fails.len()
    );
    assert!(
        fails.is_empty(),
        "{} of {} connections failed during the reload storm: {:?}\n{}",
        fails.len(),
        done + fails.len(),
        &fails[..fails.len().min(20)],
        c.log_tail(60)
    );
    assert!(
        flowing,
        "churn stalled after the storm: {:?} (before {base:?})\n{}",
        total(&counts),
        c.log_tail(40)
    );

    // Old generations do not pile up: soon only the current one is left.
    let ok = wait_until(Duration::from_secs(15), || only_current_generation(&c, 2));
    let (generation, ws) = status(&c);
    eprintln!("after the storm: generation {generation}, workers {ws:?}");
    assert!(
        ok,
        "15s after the storm, workers other than the current generation's 2 remain: \
         generation {generation}, status {ws:?}, live {:?}\n{}",
        c.worker_pids(),
        c.log_tail(60)
    );
    assert!(
        generation >= 2,
        "no new generation after the storm\n{}",
        c.log_tail(40)
    );
}

// ---------------------------------------------------------------------------
// 3. old workers exit when their last client leaves, or at drain_timeout
// ---------------------------------------------------------------------------

#[test]
fn old_worker_exits_as_soon_as_its_last_client_leaves() {
    let c = Corral::start(&Conf::new(2).drain("60s").pinned().render());
    let old = c.workers();
    let old_pids: Vec<i32> = old.iter().map(|w| w.pid).collect();
    let mut s = c.connect();
    must_echo(&c, &mut s, "before reload\n");
    let conns = [s];
    let mut holder = None;
    wait_until(Duration::from_secs(5), || {
        holder = owners(&c, &conns, &old_pids)[0];
        holder.is_some()
    });
    let [mut s] = conns;
    let holder = holder.unwrap_or_else(|| {
        panic!(
            "cannot tell which worker holds the client\n{}",
            c.log_tail(40)
        )
    });
    let holder = *old.iter().find(|w| w.pid == holder).expect("holder");

    c.must_reload();
    // The idle old worker leaves at once; the one with a client stays.
    assert!(
        wait_until(Duration::from_secs(10), || old
            .iter()
            .filter(|w| proc_alive(**w))
            .eq([&holder])),
        "after the reload, expected only old worker {} (holding a client) alive; alive: {:?}\n{}",
        holder.pid,
        old.iter().filter(|w| proc_alive(**w)).collect::<Vec<_>>(),
        c.log_tail(40)
    );
    for i in 0..5 {
        must_echo(&c, &mut s, &format!("while draining {i}\n"));
    }
    assert!(
        proc_alive(holder),
        "the old worker left while its client was connected\n{}",
        c.log_tail(40)
    );

    let t0 = Instant::now();
    close(s);
    let gone = wait_until(Duration::from_secs(3), || !proc_alive(holder));
    assert!(
        gone,
        "old worker {} still alive {:?} after its last client left (drain_timeout 60s)\n{}",
        holder.pid,
        t0.elapsed(),
        c.log_tail(40)
    );
    eprintln!(
        "old worker gone {:?} after its last client left",
        t0.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || only_current_generation(&c, 2)),
        "status {:?}\n{}",
        status(&c),
        c.log_tail(40)
    );
}

#[test]
fn old_worker_exits_at_drain_timeout_with_a_client_that_never_leaves() {
    let c = Corral::start(&Conf::new(2).drain("2s").pinned().render());
    let old = c.workers();
    let mut s = c.connect();
    must_echo(&c, &mut s, "before reload\n");

    c.must_reload();
    let t0 = Instant::now();
    // Still served right after the reload: the drain does not cut it at once.
    must_echo(&c, &mut s, "draining\n");

    let closed = wait_closed(&mut s, Duration::from_secs(2) + MARGIN);
    let at = t0.elapsed();
    match closed {
        Ok(_) => eprintln!("client saw the connection close {at:?} after the reload"),
        Err(e) => panic!(
            "client never closed by the server {at:?} after the reload (drain_timeout 2s): {e}\n{}",
            c.log_tail(40)
        ),
    }
    assert!(
        at >= Duration::from_millis(1500),
        "client cut {at:?} after the reload, well before drain_timeout 2s\n{}",
        c.log_tail(40)
    );
    assert!(
        wait_until(
            (Duration::from_secs(2) + MARGIN).saturating_sub(t0.elapsed()) + Duration::from_secs(1),
            || old.iter().all(|w| !proc_alive(*w))
        ),
        "old workers still alive {:?} after the reload (drain_timeout 2s): {:?}\n{}",
        t0.elapsed(),
        old.iter().filter(|w| proc_alive(**w)).collect::<Vec<_>>(),
        c.log_tail(40)
    );
    eprintln!("old workers gone {:?} after the reload", t0.elapsed());
    // And the new generation serves.
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "new generation\n");
}

// ---------------------------------------------------------------------------
// 4. a bad config is refused; fixing it works
// ---------------------------------------------------------------------------

#[test]
fn bad_config_is_refused_and_service_is_untouched() {
    let c = Corral::start(&Conf::new(2).drain("20s").render());
    let before = c.workers();
    let (gen_before, _) = status(&c);
    let mut s = c.connect();
    must_echo(&c, &mut s, "before bad reload\n");
    let good = std::fs::read_to_string(c.config()).expect("read config");

    for (key, from, to) in [
        ("master.workers", "workers = 2", "workers = \"many\""),
        (
            "master.drain_timeout",
            "drain_timeout = \"20s\"",
            "drain_timeout = \"soon\"",
        ),
    ] {
        edit_config(&c, |cfg| cfg.replace(from, to));
        let out = c.cli(&["-s", "reload"]);
        eprintln!("reload with `{to}`: {:?}: {}", out.status, out.all().trim());
        assert!(
            !out.status.success(),
            "`corral -s reload` accepted `{to}`: {}\n{}",
            out.all(),
            c.log_tail(40)
        );
        assert!(
            out.all().contains(key),
            "`corral -s reload` refusing `{to}` does not name the key `{key}`: {}",
            out.all()
        );
        // Same workers, same generation, still serving old and new clients.
        assert_eq!(
            c.workers(),
            before,
            "workers changed after a refused reload\n{}",
            c.log_tail(40)
        );
        let (generation, ws) = status(&c);
        assert_eq!(
            generation,
            gen_before,
            "generation changed after a refused reload: {ws:?}\n{}",
            c.log_tail(40)
        );
        must_echo(&c, &mut s, &format!("after refused `{to}`\n"));
        let mut fresh = c.connect();
        must_echo(&c, &mut fresh, "fresh client\n");
        close(fresh);
        std::fs::write(c.config(), &good).expect("restore config");
    }

    // Fixed (the good config is back): the reload goes through.
    let out = c.must_reload();
    eprintln!("fixed config: {}", out.trim());
    let (generation, _) = status(&c);
    assert_eq!(generation, gen_before + 1, "{}", c.log_tail(40));
    must_echo(&c, &mut s, "after the good reload\n");
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "new generation\n");
    close(s);
    assert!(
        wait_until(Duration::from_secs(10), || only_current_generation(&c, 2)),
        "status {:?}\n{}",
        status(&c),
        c.log_tail(40)
    );
}

// ---------------------------------------------------------------------------
// 5. workers 2 -> 3
// ---------------------------------------------------------------------------

#[test]
fn reload_changes_worker_count() {
    let c = Corral::start(&Conf::new(2).drain("20s").render());
    let (g1, ws) = status(&c);
    assert_eq!(ws.len(), 2, "{ws:?}");
    c.write_config(&Conf::new(3).drain("20s").render());
    let out = c.must_reload();
    eprintln!("{}", out.trim());
    assert!(
        out.contains("3 workers"),
        "reload to 3 workers reports: {out}"
    );
    let ok = wait_until(Duration::from_secs(10), || only_current_generation(&c, 3));
    let (g2, ws) = status(&c);
    assert!(
        ok,
        "after reloading to 3 workers: generation {g2}, status {ws:?}, live {:?}\n{}",
        c.worker_pids(),
        c.log_tail(40)
    );
    assert_eq!(g2, g1 + 1, "{}", c.log_tail(40));
    let slots: HashSet<u64> = ws.iter().map(|w| w.slot).collect();
    assert_eq!(slots.len(), 3, "3 workers should have 3 slots: {ws:?}");
    let mut conns: Vec<TcpStream> = (0..6).map(|_| c.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("three workers {i}\n"));
    }
}

// ---------------------------------------------------------------------------
// 6. adding and dropping a listener
// ---------------------------------------------------------------------------

#[test]
fn reload_adds_and_drops_a_listener() {
    let conf = Conf::new(2).drain("20s");
    let c = Corral::start(&conf.render());

    // Add a second listener on a new port (retrying if someone took the port).
    let mut port2 = 0;
    for _ in 0..3 {
        let p = free_port();
        c.write_config(&conf.clone().listen(p, "echo", "").render());
        let out = c.cli(&["-s", "reload"]);
        if out.status.success() {
            eprintln!("added listener {p}: {}", out.all().trim());
            port2 = p;
            break;
        }
        assert!(
            out.all().contains("in use"),
            "reload adding listener {p} failed: {}\n{}",
            out.all(),
            c.log_tail(40)
        );
    }
    assert_ne!(port2, 0, "could not add a listener\n{}", c.log_tail(40));

    let mut s2 = TcpStream::connect_timeout(&loopback(port2), Duration::from_secs(5))
        .unwrap_or_else(|e| {
            panic!(
                "connect to the new listener {port2}: {e}\n{}",
                c.log_tail(40)
            )
        });
    must_echo(&c, &mut s2, "on the new listener\n");
    close(s2);
    let mut s1 = c.connect();
    must_echo(&c, &mut s1, "on the first listener\n");
    close(s1);

    // Drop it again.
    c.write_config(&conf.render());
    let out = c.must_reload();
    eprintln!("dropped listener {port2}: {}", out.trim());
    let mut last = String::new();
    let refused = wait_until(
        Duration::from_secs(10),
        || match TcpStream::connect_timeout(&loopback(port2), Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
            Err(e) => {
                last = format!("connect: {e}");
                false
            }
            Ok(mut s) => {
                last = format!(
                    "connected; echo: {:?}",
                    echo(&mut s, b"x\n", Duration::from_millis(500))
                );
                false
            }
        },
    );
    assert!(
        refused,
        "dropped listener {port2} still accepts 10s after the reload ({last})\n{}",
        c.log_tail(40)
    );
    let mut s1 = c.connect();
    must_echo(&c, &mut s1, "first listener still serves\n");
}

// ---------------------------------------------------------------------------
// 7. max_old_generations
// ---------------------------------------------------------------------------

#[test]
fn max_old_generations_caps_draining_generations() {
    let c = Corral::start(
        &Conf::new(2)
            .drain("60s")
            .master("max_old_generations = 1")
            .pinned()
            .render(),
    );
    // One client per generation, each held open.
    let mut clients: Vec<(u64, TcpStream)> = Vec::new();
    let mut pids_by_gen: HashMap<u64, Vec<ProcId>> = HashMap::new();
    for r in 0..=3 {
        if r > 0 {
            let out = c.must_reload();
            eprintln!("reload {r}: {}", out.trim());
        }
        let (generation, ws) = status(&c);
        let live = c.workers();
        pids_by_gen.insert(
            generation,
            live.iter()
                .filter(|p| {
                    ws.iter()
                        .any(|w| w.pid == p.pid && w.generation == generation)
                })
                .copied()
                .collect(),
        );
        if r < 3 {
            let mut s = c.connect();
            must_echo(&c, &mut s, &format!("client of generation {generation}\n"));
            clients.push((generation, s));
        }
    }
    let (current, _) = status(&c);
    eprintln!("generation {current}; workers by generation {pids_by_gen:?}");

    // Only one old generation may remain: current - 1.
    let ok = wait_until(Duration::from_secs(10), || {
        let (_, ws) = status(&c);
        let gens: HashSet<u64> = ws.iter().map(|w| w.generation).collect();
        gens.iter().all(|g| *g >= current - 1)
            && pids_by_gen
                .iter()
                .filter(|(g, _)| **g < current - 1)
                .all(|(_, ps)| ps.iter().all(|p| !proc_alive(*p)))
    });
    assert!(
        ok,
        "with max_old_generations = 1, more than one old generation is alive: status {:?}, \
         live {:?}, workers by generation {pids_by_gen:?}\n{}",
        status(&c),
        c.worker_pids(),
        c.log_tail(40)
    );
    for (generation, s) in clients.iter_mut() {
        if *generation < current - 1 {
            if let Err(e) = wait_closed(s, Duration::from_secs(5)) {
                panic!(
                    "client of cut generation {generation} not closed: {e}\n{}",
                    c.log_tail(40)
                );
            }
        } else {
            must_echo(&c, s, "the newest old generation still serves me\n");
        }
    }
    let (_, ws) = status(&c);
    assert!(
        ws.iter()
            .any(|w| w.generation == current - 1 && w.state == "draining"),
        "the last old generation (holding a client) should still drain: {ws:?}\n{}",
        c.log_tail(40)
    );
}

#[test]
fn concurrent_reload_requests_are_queued_and_all_answered() {
    let c = Corral::start(&Conf::new(2).drain("30s").render());
    let (g0, _) = status(&c);
    // Five operators (or scripts) ask for a reload at the same moment: each gets an
    // answer, and the requests that arrive during a reload share the next one.
    let outs: Vec<CliOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..5)
            .map(|_| s.spawn(|| c.cli(&["-s", "reload"])))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("reload thread"))
            .collect()
    });
    for o in &outs {
        assert!(
            o.status.success(),
            "a queued reload failed: {}\n{}",
            o.all(),
            c.log_tail(30)
        );
        assert!(o.all().contains("reloaded: generation"), "{}", o.all());
    }
    let (g1, _) = status(&c);
    eprintln!(
        "5 concurrent reloads: generation {g0} -> {g1}, {} queued behind another",
        c.log().matches("reload queued").count()
    );
    assert!(
        g1 > g0 && g1 <= g0 + 5,
        "5 concurrent reloads took the generation from {g0} to {g1}\n{}",
        c.log_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(15), || only_current_generation(&c, 2)),
        "old generations left after the reloads\n{}",
        c.log_tail(30)
    );
    let mut s = c.connect();
    must_echo(&c, &mut s, "after concurrent reloads\n");
}
