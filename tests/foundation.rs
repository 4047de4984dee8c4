//! Foundation black-box tests: start/stop, many connections, worker crash
//! under load, graceful and fast stop, master death, `-t`, idle timeout.
//! Everything runs the real `corral` binary on loopback ports; see
//! `common/mod.rs` for the harness rules.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(6);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Probes the listener with a new connection: `Ok(how)` if it is refused or
/// not served (no echo within a short wait), `Err` if it is served. The probe
/// connection is closed at once either way.
fn new_connection_not_served(c: &Corral) -> Result<String, String> {
    match TcpStream::connect_timeout(&c.addr(), Duration::from_secs(1)) {
        Err(e) => Ok(format!("connect failed: {e}")),
        Ok(mut s) => {
            let r = echo(&mut s, b"probe\n", Duration::from_millis(500));
            close(s);
            match r {
                Echo::Ok => Err("served".into()),
                other => Ok(format!("connected but not served: {other:?}")),
            }
        }
    }
}

/// After everything is gone, nobody may still hold the listening socket.
fn assert_port_closed(c: &Corral) {
    match TcpStream::connect_timeout(&c.addr(), Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!(
            "connect after exit: unexpected error {e}\n{}",
            c.log_tail(40)
        ),
        Ok(_) => panic!(
            "port {} still accepts connections after corral exited: the listener leaked\n{}",
            c.port,
            c.log_tail(40)
        ),
    }
}

/// Parses `slot=` for the log line of worker `pid` (any token order).
fn slot_of(log: &str, pid: i32) -> Option<String> {
    let want = format!("pid={pid}");
    log.lines().find_map(|line| {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if !toks.contains(&want.as_str()) {
            return None;
        }
        toks.iter().find_map(|t| t.strip_prefix("slot=")).map(|s| {
            s.trim_matches(|ch: char| !ch.is_ascii_alphanumeric())
                .to_string()
        })
    })
}

// ---------------------------------------------------------------------------
// 1. start / stop
// ---------------------------------------------------------------------------

#[test]
fn start_echo_and_stop_with_cli() {
    let c = Corral::start(&Conf::new(2).render());
    let workers = c.workers();
    assert_eq!(workers.len(), 2, "expected 2 workers\n{}", c.log_tail(40));
    for w in &workers {
        eprintln!("worker pid {} comm {:?}", w.pid, proc_comm(w.pid));
    }
    assert_eq!(
        c.read_pid_file(),
        Some(c.master_pid()),
        "pid file must hold the master's pid"
    );

    let mut s = c.connect();
    for i in 0..5 {
        must_echo(&c, &mut s, &format!("hello {i}\n"));
    }
    // A message larger than one read.
    let big: String = (0..200_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    must_echo(&c, &mut s, &big);
    close(s);

    let out = c.cli(&["-s", "stop"]);
    assert!(
        out.status.success(),
        "`corral -s stop` failed: {:?}\nstdout: {}\nstderr: {}\n{}",
        out.status,
        out.stdout,
        out.stderr,
        c.log_tail(40)
    );
    let t0 = Instant::now();
    assert!(
        c.wait_all_gone(secs(3.0) + MARGIN),
        "after `-s stop` (stop_timeout 3s): master exited {:?}, live workers {:?}\n{}",
        c.exit_status(),
        c.live_seen_workers(),
        c.log_tail(40)
    );
    eprintln!(
        "stop took {:?}; master exit status {:?}",
        t0.elapsed(),
        c.exit_status()
    );
    assert!(
        !c.pid_file_exists(),
        "pid file {} still exists after stop\n{}",
        c.pid_file.display(),
        c.log_tail(40)
    );
    assert_port_closed(&c);
}

// ---------------------------------------------------------------------------
// 2. 300 concurrent connections
// ---------------------------------------------------------------------------

#[test]
fn three_hundred_concurrent_echo_connections() {
    const N: usize = 300;
    let c = Corral::start(&Conf::new(2).render());
    let before = c.workers();
    let mut conns: Vec<TcpStream> = (0..N).map(|_| c.connect()).collect();
    // Every connection sends first, then every one reads: all 300 are open and
    // in flight at once.
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("conn {i} says hello\n").as_bytes())
            .unwrap_or_else(|e| panic!("write on connection {i}: {e}\n{}", c.log_tail(40)));
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let want = format!("conn {i} says hello\n");
        let got = read_exact_timeout(s, want.len(), Duration::from_secs(10));
        match got {
            Ok(bytes) => assert_eq!(
                bytes,
                want.as_bytes(),
                "connection {i} got someone else's bytes\n{}",
                c.log_tail(40)
            ),
            Err(e) => panic!("connection {i}: no echo: {e:?}\n{}", c.log_tail(40)),
        }
    }
    // And a second round on the same connections, still all open.
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("round two {i}\n"));
    }
    assert_eq!(
        c.workers(),
        before,
        "workers changed during the test\n{}",
        c.log_tail(40)
    );
    for s in conns {
        close(s);
    }
}

// ---------------------------------------------------------------------------
// 3. SIGKILL one worker under load
// ---------------------------------------------------------------------------

#[test]
fn worker_sigkill_under_load_is_replaced() {
    const N: usize = 40;
    let c = Corral::start(&Conf::new(2).render());
    let before = c.workers();
    assert_eq!(before.len(), 2, "{}", c.log_tail(40));

    // This test is about isolation, not balance (balance has its own test): keep
    // opening connections, a few at a time, until both workers hold some. On a busy
    // 2-core box a burst of connects can all land on whichever worker has a CPU.
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut owner: Vec<Option<i32>> = Vec::new();
    let spread = wait_until(Duration::from_secs(15), || {
        let batch = if conns.len() < N { N - conns.len() } else { 4 };
        for _ in 0..batch {
            let mut s = c.connect();
            must_echo(&c, &mut s, &format!("warm-up {}\n", conns.len()));
            conns.push(s);
        }
        let pids: Vec<i32> = before.iter().map(|w| w.pid).collect();
        owner = owners(&c, &conns, &pids);
        let holders: HashSet<i32> = owner.iter().flatten().copied().collect();
        conns.len() >= N && holders.len() == 2
    });
    assert!(
        spread,
        "after {} connections, not both workers held one: {owner:?}\n{}",
        conns.len(),
        c.log_tail(40)
    );
    let mut per_worker: HashMap<i32, usize> = before.iter().map(|w| (w.pid, 0)).collect();
    for pid in owner.iter().flatten() {
        *per_worker.entry(*pid).or_default() += 1;
    }
    let unknown = owner.iter().filter(|o| o.is_none()).count();
    eprintln!("connections per worker: {per_worker:?}, unknown owner: {unknown}");

    // Kill the worker holding the most connections, so the kill really hurts.
    let victim = *before
        .iter()
        .max_by_key(|w| per_worker.get(&w.pid).copied().unwrap_or(0))
        .expect("a worker");
    let victim_slot = slot_of(&c.log(), victim.pid);

    let t_kill = Instant::now();
    c.signal_worker(victim, Signal::SIGKILL);

    let mut t_listed: Option<Duration> = None;
    let mut t_echo: Option<Duration> = None;
    let mut replacement: Option<ProcId> = None;
    let recovered = wait_until(Duration::from_secs(20), || {
        if t_listed.is_none() {
            let now = c.workers();
            if now.len() == 2 && !now.contains(&victim) {
                if let Some(new) = now.iter().find(|w| !before.contains(w)) {
                    t_listed = Some(t_kill.elapsed());
                    replacement = Some(*new);
                }
            }
        }
        if t_echo.is_none() {
            if let Ok(mut s) = TcpStream::connect_timeout(&c.addr(), Duration::from_millis(500)) {
                if matches!(
                    echo(&mut s, b"after-kill\n", Duration::from_millis(500)),
                    Echo::Ok
                ) {
                    t_echo = Some(t_kill.elapsed());
                }
            }
        }
        t_listed.is_some() && t_echo.is_some()
    });
    eprintln!(
        "SIGKILL of worker {}: replacement {:?} listed after {t_listed:?}; first new echo after {t_echo:?}",
        victim.pid,
        replacement.map(|r| r.pid)
    );
    assert!(
        recovered,
        "no recovery within 20s after SIGKILL of worker {}: listed {t_listed:?}, echo {t_echo:?}, workers now {:?}\n{}",
        victim.pid,
        c.workers(),
        c.log_tail(40)
    );
    let replacement = replacement.expect("replacement");
    assert_ne!(replacement.pid, victim.pid, "{}", c.log_tail(40));

    // The freed slot is refilled (checked through the log when it names slots).
    match (victim_slot, wait_slot(&c, replacement.pid)) {
        (Some(old), Some(new)) => assert_eq!(
            old,
            new,
            "replacement {} took slot {new}, killed worker {} had slot {old}\n{}",
            replacement.pid,
            victim.pid,
            c.log_tail(40)
        ),
        (old, new) => eprintln!("slot not visible in log (victim {old:?}, replacement {new:?})"),
    }

    // Existing connections: either they still echo, or they were closed.
    let mut survived = 0;
    let mut closed = 0;
    let mut bad = Vec::new();
    let mut misplaced = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        let r = echo(
            s,
            format!("after {i}\n").as_bytes(),
            Duration::from_secs(10),
        );
        match &r {
            Echo::Ok => survived += 1,
            Echo::Closed(_) => closed += 1,
            Echo::Bad(why) => bad.push(format!("{i}: {why}")),
        }
        match (owner[i], &r) {
            (Some(o), Echo::Ok) if o == victim.pid => {
                misplaced.push(format!("{i}: on killed worker but echoed"))
            }
            (Some(o), Echo::Closed(why)) if o != victim.pid => {
                misplaced.push(format!("{i}: on surviving worker {o} but closed ({why})"))
            }
            _ => {}
        }
    }
    eprintln!(
        "after kill: {survived} survived, {closed} closed, {} bad",
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "connections neither echoing nor closed: {bad:?}\n{}",
        c.log_tail(40)
    );
    assert!(
        misplaced.is_empty(),
        "connection fate does not match its worker: {misplaced:?}\n{}",
        c.log_tail(40)
    );

    // New connections work.
    let mut fresh: Vec<TcpStream> = (0..10).map(|_| c.connect()).collect();
    for (i, s) in fresh.iter_mut().enumerate() {
        must_echo(&c, s, &format!("fresh {i}\n"));
    }
    assert_eq!(c.workers().len(), 2, "{}", c.log_tail(40));

    // Last, as it depends on how the load was spread: with 40 connections over
    // 2 workers, killing one must leave some alive.
    assert!(
        survived > 0,
        "no connection survived the SIGKILL of one of 2 workers: connections per worker before \
         the kill were {per_worker:?} (all accepted by one worker)\n{}",
        c.log_tail(40)
    );
}

/// The slot of `pid` as the log names it, waiting a little for the line.
fn wait_slot(c: &Corral, pid: i32) -> Option<String> {
    let mut slot = None;
    wait_until(Duration::from_secs(3), || {
        slot = slot_of(&c.log(), pid);
        slot.is_some()
    });
    slot
}

// ---------------------------------------------------------------------------
// 4. SIGQUIT: graceful drain
// ---------------------------------------------------------------------------

#[test]
fn sigquit_drains_open_connection_then_exits() {
    let c = Corral::start(&Conf::new(2).drain("20s").render());
    let mut s = c.connect();
    must_echo(&c, &mut s, "before quit\n");

    c.signal(Signal::SIGQUIT);
    let t0 = Instant::now();
    let mut n = 0;
    // At least 5 round trips spread over at least 1 s of draining.
    while n < 5 || t0.elapsed() < Duration::from_secs(1) {
        assert!(
            c.master_alive(),
            "master exited while a connection was open (after {n} round trips)\n{}",
            c.log_tail(40)
        );
        must_echo(&c, &mut s, &format!("draining {n}\n"));
        n += 1;
        // Pacing between round trips, not synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }

    // Listeners closed or no longer served: new connections get no echo.
    let mut how = String::new();
    assert!(
        wait_until(
            Duration::from_secs(10),
            || match new_connection_not_served(&c) {
                Ok(h) => {
                    how = h;
                    true
                }
                Err(_) => false,
            }
        ),
        "new connections are still served 10s after SIGQUIT\n{}",
        c.log_tail(40)
    );
    eprintln!("after SIGQUIT, a new connection: {how}");

    // The old connection still works, and the master is still waiting for it.
    must_echo(&c, &mut s, "still here\n");
    assert!(
        c.master_alive(),
        "master exited while a connection was open\n{}",
        c.log_tail(40)
    );
    assert!(
        !c.live_seen_workers().is_empty(),
        "all workers exited while a connection was open\n{}",
        c.log_tail(40)
    );

    let t_close = Instant::now();
    close(s);
    assert!(
        c.wait_all_gone(Duration::from_secs(10)),
        "client closed, but 10s later (drain_timeout 20s) master exited {:?}, live workers {:?}\n{}",
        c.exit_status(),
        c.live_seen_workers(),
        c.log_tail(40)
    );
    eprintln!(
        "graceful stop finished {:?} after the client closed; exit status {:?}",
        t_close.elapsed(),
        c.exit_status()
    );
    assert!(
        !c.pid_file_exists(),
        "pid file still exists after graceful stop\n{}",
        c.log_tail(40)
    );
    assert_port_closed(&c);
}

// ---------------------------------------------------------------------------
// 5 + 9. SIGTERM / SIGINT: fast stop with open connections
// ---------------------------------------------------------------------------

fn fast_stop_with_open_connections(sig: Signal) {
    let c = Corral::start(&Conf::new(2).stop("2s").drain("30s").render());
    let mut conns: Vec<TcpStream> = (0..10).map(|_| c.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        must_echo(&c, s, &format!("open {i}\n"));
    }
    c.signal(sig);
    let t0 = Instant::now();
    assert!(
        c.wait_all_gone(secs(2.0) + MARGIN),
        "{sig:?} with open connections: after {:?} master exited {:?}, live workers {:?}\n{}",
        t0.elapsed(),
        c.exit_status(),
        c.live_seen_workers(),
        c.log_tail(40)
    );
    eprintln!(
        "{sig:?}: everything gone after {:?}; exit status {:?}",
        t0.elapsed(),
        c.exit_status()
    );
    for (i, s) in conns.iter_mut().enumerate() {
        if let Err(e) = wait_closed(s, Duration::from_secs(2)) {
            panic!(
                "connection {i} not closed after {sig:?}: {e}\n{}",
                c.log_tail(40)
            );
        }
    }
    assert!(
        !c.pid_file_exists(),
        "pid file still exists after {sig:?}\n{}",
        c.log_tail(40)
    );
    assert_port_closed(&c);
}

#[test]
fn sigterm_with_open_connections_leaves_no_process() {
    fast_stop_with_open_connections(Signal::SIGTERM);
}

#[test]
fn sigint_behaves_like_sigterm() {
    fast_stop_with_open_connections(Signal::SIGINT);
}

// ---------------------------------------------------------------------------
// 6. master SIGKILLed: workers exit on their own
// ---------------------------------------------------------------------------

fn master_killed(with_idle_connection: bool) {
    let c = Corral::start(&Conf::new(2).drain("2s").render());
    let workers = c.workers();
    assert_eq!(workers.len(), 2, "{}", c.log_tail(40));
    let mut conn = with_idle_connection.then(|| {
        let mut s = c.connect();
        must_echo(&c, &mut s, "idle after this\n");
        s
    });

    c.signal(Signal::SIGKILL);
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || c.master_exited()),
        "master did not die from SIGKILL"
    );
    assert!(
        wait_until(secs(2.0) + MARGIN, || c.live_seen_workers().is_empty()),
        "master SIGKILLed (idle connection: {with_idle_connection}); {:?} later workers still alive: {:?} \
         (drain_timeout 2s)\n{}",
        t0.elapsed(),
        c.live_seen_workers(),
        c.log_tail(40)
    );
    eprintln!(
        "master SIGKILLed (idle connection: {with_idle_connection}): workers gone after {:?}",
        t0.elapsed()
    );
    if let Some(s) = conn.as_mut() {
        if let Err(e) = wait_closed(s, Duration::from_secs(2)) {
            panic!(
                "idle connection not closed after the workers exited: {e}\n{}",
                c.log_tail(40)
            );
        }
    }
    assert_port_closed(&c);
}

#[test]
fn master_sigkill_workers_exit_on_their_own() {
    master_killed(false);
}

#[test]
fn master_sigkill_workers_exit_despite_idle_connection() {
    master_killed(true);
}

// ---------------------------------------------------------------------------
// 7. corral -t
// ---------------------------------------------------------------------------

#[test]
fn config_test_flag() {
    let dir = tempfile::Builder::new()
        .prefix("corral-test-")
        .tempdir()
        .expect("temp dir");
    let pid_file = dir.path().join("corral.pid");
    let base = Conf::new(2)
        .pid_file(&pid_file.display().to_string())
        .render_on(free_port());

    let check = |name: &str, body: &str| -> (String, CliOutput) {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write config");
        let p = path.display().to_string();
        let out = run_cli(dir.path(), &["-t", "-c", &p], Duration::from_secs(20));
        eprintln!("-t on {name}: {:?}\n{}", out.status, out.all());
        (p, out)
    };

    // Good config.
    let (path, out) = check("good.toml", &base);
    assert!(
        out.status.success(),
        "-t on a good config failed: {:?}\n{}\nconfig:\n{base}",
        out.status,
        out.all()
    );
    assert!(
        out.all().to_lowercase().contains("ok"),
        "-t on a good config should say it is ok: {}",
        out.all()
    );
    let _ = path;
    assert!(!pid_file.exists(), "-t must not write the pid file");

    // Bad values: the error names the file and the key.
    for (name, key, from, to) in [
        (
            "bad-workers.toml",
            "workers",
            "workers = 2",
            "workers = \"many\"",
        ),
        (
            "bad-drain.toml",
            "drain_timeout",
            "drain_timeout = \"20s\"",
            "drain_timeout = \"abc\"",
        ),
    ] {
        let body = base.replace(from, to);
        assert_ne!(body, base, "test bug: {from} not in config");
        let (path, out) = check(name, &body);
        assert!(!out.status.success(), "-t accepted `{to}`: {}", out.all());
        assert!(
            out.all().contains(key),
            "-t error for `{to}` does not name the key `{key}`: {}",
            out.all()
        );
        assert!(
            out.all().contains(&path),
            "-t error for `{to}` does not name the file {path}: {}",
            out.all()
        );
    }

    // Unknown key.
    let body = base.replace("workers = 2", "wrokers = 2");
    let (path, out) = check("unknown-key.toml", &body);
    assert!(
        !out.status.success(),
        "-t accepted the unknown key `wrokers`: {}",
        out.all()
    );
    assert!(
        out.all().contains("wrokers"),
        "-t error does not name the unknown key `wrokers`: {}",
        out.all()
    );
    assert!(
        out.all().contains(&path),
        "-t error does not name the file {path}: {}",
        out.all()
    );
}

// ---------------------------------------------------------------------------
// 8. idle timeout
// ---------------------------------------------------------------------------

#[test]
fn idle_timeout_closes_silent_client_only() {
    let c = Corral::start(&Conf::new(2).idle("1s").render());
    let mut silent = c.connect();
    must_echo(&c, &mut silent, "then silence\n");
    let t_silent = Instant::now();
    // Watch the silent client from another thread while the talker talks.
    let watcher = std::thread::spawn(move || {
        let r = wait_closed(
            &mut silent,
            Duration::from_secs(5).saturating_sub(t_silent.elapsed()),
        );
        (r, t_silent.elapsed())
    });
    let mut talker = c.connect();
    must_echo(&c, &mut talker, "talk 0\n");

    // The talker speaks every 300 ms for 2 s: never idle for 1 s.
    let t0 = Instant::now();
    let mut n = 1;
    while t0.elapsed() < Duration::from_secs(2) {
        // Pacing between messages, not synchronisation.
        std::thread::sleep(Duration::from_millis(300));
        match echo(
            &mut talker,
            format!("talk {n}\n").as_bytes(),
            Duration::from_secs(5),
        ) {
            Echo::Ok => {}
            other => panic!(
                "talking client (every 300 ms, idle_timeout 1s) lost after {:?}: {other:?}\n{}",
                t0.elapsed(),
                c.log_tail(40)
            ),
        }
        n += 1;
    }

    // The silent client is closed by the server within ~5 s of going silent.
    let (r, at) = watcher.join().expect("watcher thread");
    match r {
        Ok(_) => eprintln!("silent client closed {at:?} after its last message"),
        Err(e) => panic!(
            "silent client not closed {at:?} after its last message (idle_timeout 1s): {e}\n{}",
            c.log_tail(40)
        ),
    }
    // And the talker is still fine.
    must_echo(&c, &mut talker, "still talking\n");
}

/// `idle_timeout` inside a `[[listen]]` overrides `[worker] idle_timeout` for that
/// listener only: `"0"` keeps a quiet connection (a database pool, a pub/sub
/// subscriber) open for good, a longer one keeps it longer, and a listener without
/// its own keeps the global one.
#[test]
fn idle_timeout_per_listener_overrides_the_global_one() {
    let (quiet_port, long_port) = (free_port(), free_port());
    let c = Corral::start(
        &Conf::new(1)
            .idle("1s")
            .echo("idle_timeout = \"0\"")
            .listen(quiet_port, "echo", "")
            .listen(long_port, "echo", "idle_timeout = \"4s\"")
            .render(),
    );
    let open = |port: u16| {
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
        must_echo(&c, &mut s, "hello\n");
        s
    };
    let mut never = c.connect(); // its listener says "0"
    must_echo(&c, &mut never, "hello\n");
    let mut global = open(quiet_port); // no key of its own: [worker] idle_timeout = 1s
    let mut long = open(long_port); // "4s"
    let t0 = Instant::now();
    let closed = wait_closed(&mut global, Duration::from_secs(1) + Duration::from_secs(5));
    assert!(
        closed.is_ok(),
        "the listener without its own idle_timeout kept a connection silent for {:?} (global 1s): {closed:?}\n{}",
        t0.elapsed(),
        c.log_tail(20)
    );
    // Past the global 1 s, the connections whose listeners say otherwise stay. The
    // property under test is "stays open while idle", so idling is the point.
    let wait = Duration::from_millis(2500).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    must_echo(&c, &mut never, "still here (idle_timeout 0)\n");
    // Echoing resets the clock of `never` only; `long` has been silent 2.5 s.
    let t_long = Instant::now();
    let closed = wait_closed(&mut long, Duration::from_secs(4) + Duration::from_secs(5));
    let at = t0.elapsed();
    assert!(
        closed.is_ok(),
        "the 4s listener kept a silent connection for {at:?}: {closed:?}\n{}",
        c.log_tail(20)
    );
    assert!(
        at >= Duration::from_millis(3800),
        "the 4s listener closed a silent connection after only {at:?} (waited {:?})",
        t_long.elapsed()
    );
    must_echo(&c, &mut never, "still here after the others closed\n");
}
