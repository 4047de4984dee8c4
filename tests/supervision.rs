//! Supervision black-box tests: workers killed by signals, a hung worker, a
//! crash loop, a panicking service, `corral status`, log reopening, SIGWINCH.
//! Everything runs the real `corral` binary on loopback ports; see
//! `common/mod.rs` for the harness rules.

use crate::common;

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// The status slot of worker `pid`.
fn slot_of(c: &Corral, pid: i32) -> u64 {
    let (_, _, ws) = status(c);
    ws.iter()
        .find(|w| w.pid == pid)
        .unwrap_or_else(|| panic!("worker {pid} not in status {ws:?}\n{}", c.log_tail(40)))
        .slot
}

/// Opens connections (at least `n`, a few more at a time) until every worker
/// in `workers` holds some; returns them with their owners. Not about balance:
/// on a busy box a burst of connects can land on one worker.
fn spread(c: &Corral, workers: &[ProcId], n: usize) -> (Vec<TcpStream>, Vec<Option<i32>>) {
    let pids: Vec<i32> = workers.iter().map(|w| w.pid).collect();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut owner: Vec<Option<i32>> = Vec::new();
    let ok = wait_until(Duration::from_secs(15), || {
        let batch = if conns.len() < n { n - conns.len() } else { 4 };
        for _ in 0..batch {
            let mut s = c.connect();
            must_echo(c, &mut s, &format!("warm-up {}\n", conns.len()));
            conns.push(s);
        }
        owner = owners(c, &conns, &pids);
        let holders: HashSet<i32> = owner.iter().flatten().copied().collect();
        holders.len() == pids.len()
    });
    assert!(
        ok,
        "after {} connections, not every worker of {pids:?} held one: {owner:?}\n{}",
        conns.len(),
        c.log_tail(40)
    );
    (conns, owner)
}

/// Log lines naming `pid=PID` (as a whole token).
fn lines_about(log: &str, pid: i32) -> Vec<String> {
    let want = format!("pid={pid}");
    log.lines()
        .filter(|l| {
            l.split(|ch: char| ch.is_whitespace() || ch == '{' || ch == '}')
                .any(|t| t == want)
        })
        .map(str::to_string)
        .collect()
}

/// Echoes continuously on `conns` in a thread until `stop`; returns the
/// connections, round trips done and errors seen.
struct Echoer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<Vec<TcpStream>>,
}

impl Echoer {
    fn start(mut conns: Vec<TcpStream>) -> Echoer {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (st, r, e) = (stop.clone(), rounds.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !st.load(Ordering::Relaxed) {
                for (i, s) in conns.iter_mut().enumerate() {
                    let msg = format!("survivor {i} round {n}\n");
                    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
                        Echo::Ok => {}
                        other => e
                            .lock()
                            .unwrap()
                            .push(format!("connection {i} round {n}: {other:?}")),
                    }
                }
                n += 1;
                r.store(n, Ordering::Relaxed);
                // Pacing between rounds.
                std::thread::sleep(Duration::from_millis(10));
            }
            conns
        });
        Echoer {
            stop,
            rounds,
            errors,
            thread,
        }
    }

    fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn finish(self) -> (Vec<TcpStream>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let conns = self.thread.join().expect("echo thread");
        let errors = self.errors.lock().unwrap().clone();
        (conns, errors)
    }
}

/// Waits until a ready worker other than `victim` occupies `slot` (in the
/// current generation) and `victim` is gone; returns the replacement's pid.
fn wait_replacement(c: &Corral, victim: ProcId, slot: u64, timeout: Duration) -> Option<i32> {
    let mut found = None;
    wait_until(timeout, || {
        if proc_alive(victim) {
            return false;
        }
        let (_, generation, ws) = status(c);
        found = ws
            .iter()
            .find(|w| {
                w.slot == slot
                    && w.pid != victim.pid
                    && w.generation == generation
                    && w.state == "ready"
            })
            .map(|w| w.pid);
        found.is_some() && c.worker_pids().contains(&found.unwrap_or(0))
    });
    found
}

// ---------------------------------------------------------------------------
// 8. a worker killed by a signal costs only its own connections
// ---------------------------------------------------------------------------

fn worker_killed_by(sig: Signal) {
    let c = Corral::start(&Conf::new(2).render());
    let workers = c.workers();
    assert_eq!(workers.len(), 2, "{}", c.log_tail(40));
    let (conns, owner) = spread(&c, &workers, 20);

    // The victim holds the most connections.
    let count = |pid: i32| owner.iter().filter(|o| **o == Some(pid)).count();
    let victim = *workers.iter().max_by_key(|w| count(w.pid)).expect("worker");
    let survivor = *workers
        .iter()
        .find(|w| w.pid != victim.pid)
        .expect("worker");
    let slot = slot_of(&c, victim.pid);
    eprintln!(
        "{sig:?}: victim {} (slot {slot}) holds {}, survivor {} holds {}",
        victim.pid,
        count(victim.pid),
        survivor.pid,
        count(survivor.pid)
    );

    let mut on_victim = Vec::new();
    let mut on_survivor = Vec::new();
    for (s, o) in conns.into_iter().zip(&owner) {
        match o {
            Some(p) if *p == victim.pid => on_victim.push(s),
            Some(p) if *p == survivor.pid => on_survivor.push(s),
            _ => close(s),
        }
    }
    let n_survivor = on_survivor.len();
    // The survivor's clients talk through the whole kill and recovery.
    let echoer = Echoer::start(on_survivor);
    assert!(
        wait_until(Duration::from_secs(10), || echoer.rounds() >= 2),
        "survivor connections do not echo before the kill: {:?}\n{}",
        echoer.errors(),
        c.log_tail(40)
    );

    let t0 = Instant::now();
    c.signal_worker(victim, sig);
    let replacement = wait_replacement(&c, victim, slot, Duration::from_secs(20));
    let took = t0.elapsed();
    let Some(replacement) = replacement else {
        let errs = echoer.finish().1;
        panic!(
            "no replacement in slot {slot} 20s after {sig:?} of worker {} (alive: {}); \
             survivor errors {errs:?}; status {:?}\n{}",
            victim.pid,
            proc_alive(victim),
            status(&c),
            c.log_tail(40)
        );
    };
    eprintln!("{sig:?}: replacement {replacement} in slot {slot} after {took:?}");

    // The survivor's clients kept talking during and after the kill.
    let base = echoer.rounds();
    let more = wait_until(Duration::from_secs(10), || echoer.rounds() >= base + 3);
    let (mut on_survivor, errs) = echoer.finish();
    assert!(
        errs.is_empty(),
        "{sig:?} of one worker broke connections of the other worker: {errs:?}\n{}",
        c.log_tail(40)
    );
    assert!(more, "survivor connections stalled\n{}", c.log_tail(40));
    for (i, s) in on_survivor.iter_mut().enumerate() {
        must_echo(&c, s, &format!("survivor {i} after recovery\n"));
    }
    // The victim's clients were closed, not left hanging.
    for (i, s) in on_victim.iter_mut().enumerate() {
        match echo(s, b"anyone there?\n", Duration::from_secs(10)) {
            Echo::Closed(_) => {}
            other => panic!(
                "connection {i} of the worker killed by {sig:?}: {other:?} (expected closed)\n{}",
                c.log_tail(40)
            ),
        }
    }

    // The log names the worker and the signal.
    let name = format!("{sig:?}");
    let mut about = Vec::new();
    let named = wait_until(Duration::from_secs(5), || {
        about = lines_about(&c.log(), victim.pid);
        about.iter().any(|l| l.contains(&name))
    });
    assert!(
        named,
        "no log line names worker {} and {name}: {about:?}\n{}",
        victim.pid,
        c.log_tail(40)
    );

    // Service as before: 2 workers, new clients served.
    assert_eq!(
        c.worker_pids().len(),
        2,
        "workers after recovery: {:?}\n{}",
        c.workers(),
        c.log_tail(40)
    );
    let mut fresh: Vec<TcpStream> = (0..6).map(|_| c.connect()).collect();
    for (i, s) in fresh.iter_mut().enumerate() {
        must_echo(&c, s, &format!("fresh {i}\n"));
    }
    eprintln!(
        "{sig:?}: {} connections on the victim closed, {n_survivor} on the survivor kept echoing",
        on_victim.len()
    );
}

#[test]
fn worker_sigkill_costs_only_its_connections() {
    worker_killed_by(Signal::SIGKILL);
}

#[test]
fn worker_sigsegv_costs_only_its_connections() {
    worker_killed_by(Signal::SIGSEGV);
}

#[test]
fn worker_sigabrt_costs_only_its_connections() {
    worker_killed_by(Signal::SIGABRT);
}

// ---------------------------------------------------------------------------
// 9. a hung (SIGSTOPped) worker is replaced by the watchdog
// ---------------------------------------------------------------------------

#[test]
fn stopped_worker_is_replaced_by_the_watchdog() {
    let c = Corral::start(&Conf::new(2).watchdog("1s").heartbeat("100ms").render());
    let workers = c.workers();
    let victim = workers[0];
    let slot = slot_of(&c, victim.pid);

    let t0 = Instant::now();
    c.signal_worker(victim, Signal::SIGSTOP);
    // Replaced within watchdog_timeout + margin; the stopped process must be
    // gone, not left behind stopped.
    let replacement = wait_replacement(&c, victim, slot, Duration::from_secs(1) + MARGIN);
    let took = t0.elapsed();
    assert!(
        replacement.is_some(),
        "SIGSTOPped worker {} not replaced {took:?} later (watchdog_timeout 1s): alive {}, \
         state {:?}, status {:?}\n{}",
        victim.pid,
        proc_alive(victim),
        fs::read_to_string(format!("/proc/{}/stat", victim.pid)).unwrap_or_default(),
        status(&c),
        c.log_tail(40)
    );
    eprintln!(
        "hung worker {} replaced by {:?} after {took:?}",
        victim.pid, replacement
    );
    assert!(
        !proc_alive(victim),
        "hung worker {} still exists\n{}",
        victim.pid,
        c.log_tail(40)
    );
    let about = lines_about(&c.log(), victim.pid);
    assert!(
        about.iter().any(|l| l.contains("SIGABRT")),
        "no log line says worker {} was sent SIGABRT as hung: {about:?}\n{}",
        victim.pid,
        c.log_tail(40)
    );
    let mut s = c.connect();
    must_echo(&c, &mut s, "after the watchdog\n");
    assert_eq!(c.worker_pids().len(), 2, "{}", c.log_tail(40));
}

// ---------------------------------------------------------------------------
// 10. a crash loop backs off
// ---------------------------------------------------------------------------

/// A master started by hand (for faults where `Corral::start` cannot wait for
/// workers); killed with everything it forked on drop.
struct Spawned {
    _dir: tempfile::TempDir,
    log_path: PathBuf,
    child: Child,
    pid: i32,
}

impl Spawned {
    fn start(workers: usize, env: &[(&str, &str)]) -> Spawned {
        let dir = tempfile::Builder::new()
            .prefix("corral-test-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("corral.toml");
        let log_path = dir.path().join("corral.stderr");
        let port = free_port();
        let body = Conf::new(workers)
            .pid_file(&dir.path().join("corral.pid").display().to_string())
            .render_on(port);
        fs::write(&config, body).expect("write config");
        let child = Command::new(corral_bin())
            .envs(env.iter().copied())
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("corral.stdout")).expect("stdout file"))
            .stderr(File::create(&log_path).expect("stderr file"))
            .spawn()
            .expect("spawn corral");
        let pid = child.id() as i32;
        Spawned {
            _dir: dir,
            log_path,
            child,
            pid,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.alive() {
            // Freeze it so it cannot fork while we collect its children.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGSTOP);
            let kids = live_children(self.pid);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            for k in &kids {
                if proc_alive(*k) {
                    let _ = kill(Pid::from_raw(k.pid), Signal::SIGKILL);
                }
            }
            let _ = self.child.wait();
            wait_until(Duration::from_secs(10), || {
                kids.iter().all(|k| !proc_alive(*k))
            });
        }
        if std::thread::panicking() {
            eprintln!("[test] master log:\n{}", self.log());
        }
    }
}

/// "100ms", "1.6s", "10s" as a Duration.
fn parse_delay(s: &str) -> Option<Duration> {
    let s = s.trim_end_matches([',', ';']);
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    s.strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

#[test]
fn crash_loop_backs_off() {
    let mut m = Spawned::start(1, &[("CORRAL_FAULT", "crash-on-start")]);
    let deaths = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("died unexpectedly") || l.contains("keeps dying"))
            .map(str::to_string)
            .collect()
    };

    // The first death starts the window.
    let mut t_first: Option<Instant> = None;
    assert!(
        wait_until(START_TIMEOUT, || {
            if !deaths(&m.log()).is_empty() {
                t_first = Some(Instant::now());
            }
            t_first.is_some()
        }),
        "no worker death logged with CORRAL_FAULT=crash-on-start:\n{}",
        m.log()
    );
    let t_first = t_first.expect("first death");
    // A measurement window of 3 s, not synchronisation.
    let window = Duration::from_secs(3);
    wait_until(window + Duration::from_secs(1), || {
        t_first.elapsed() >= window
    });
    let log = m.log();
    let died = deaths(&log);
    let forks: HashSet<String> = died
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|t| t.starts_with("pid="))
                .map(str::to_string)
        })
        .collect();
    eprintln!(
        "{} deaths ({} distinct pids) in the first {:?} of the crash loop:\n{}",
        died.len(),
        forks.len(),
        t_first.elapsed(),
        died.join("\n")
    );
    assert!(
        m.alive(),
        "the master exited during a crash loop (crashes are not fatal exits):\n{log}"
    );
    assert!(
        died.len() >= 3,
        "the crashing slot was not refilled: only {} deaths in 3s:\n{log}",
        died.len()
    );
    assert!(
        died.len() < 15,
        "{} worker deaths in ~3s: the crash loop is not backing off:\n{log}",
        died.len()
    );

    // "keeps dying; respawning it in X" with X growing.
    let delays: Vec<Duration> = died
        .iter()
        .filter(|l| l.contains("keeps dying"))
        .filter_map(|l| {
            let rest = &l[l.find("respawning it in ")? + "respawning it in ".len()..];
            parse_delay(rest.split_whitespace().next()?)
        })
        .collect();
    eprintln!("backoff delays: {delays:?}");
    assert!(
        delays.len() >= 3,
        "expected several `keeps dying; respawning it in …` lines with a delay: {delays:?}\n{log}"
    );
    assert!(
        delays[0] >= Duration::from_millis(100),
        "first backoff {:?} is shorter than 100ms\n{log}",
        delays[0]
    );
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "backoff delays do not increase: {delays:?}\n{log}"
    );
    assert!(
        delays.iter().all(|d| *d <= Duration::from_secs(10)),
        "backoff beyond the 10s cap: {delays:?}\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 11. a panicking service takes down only its worker
// ---------------------------------------------------------------------------

#[test]
fn panicking_service_takes_down_only_its_worker() {
    let c = Corral::start_with(
        &Conf::new(2).render(),
        Launch {
            env: vec![("CORRAL_FAULT".into(), "panic-on:BOOM".into())],
            ..Launch::default()
        },
    );
    let workers = c.workers();
    assert_eq!(workers.len(), 2, "{}", c.log_tail(40));
    let (conns, owner) = spread(&c, &workers, 10);
    let victim = *workers
        .iter()
        .find(|w| owner.contains(&Some(w.pid)))
        .expect("a worker with connections");
    let survivor = *workers
        .iter()
        .find(|w| w.pid != victim.pid)
        .expect("worker");
    let slot = slot_of(&c, victim.pid);
    let mut on_victim = Vec::new();
    let mut on_survivor = Vec::new();
    for (s, o) in conns.into_iter().zip(&owner) {
        match o {
            Some(p) if *p == victim.pid => on_victim.push(s),
            Some(p) if *p == survivor.pid => on_survivor.push(s),
            _ => close(s),
        }
    }
    eprintln!(
        "victim {} holds {}, survivor {} holds {}",
        victim.pid,
        on_victim.len(),
        survivor.pid,
        on_survivor.len()
    );
    let echoer = Echoer::start(on_survivor);
    assert!(
        wait_until(Duration::from_secs(10), || echoer.rounds() >= 2),
        "survivor connections do not echo: {:?}\n{}",
        echoer.errors(),
        c.log_tail(40)
    );

    // BOOM on one of the victim's connections.
    let r = echo(&mut on_victim[0], b"BOOM\n", Duration::from_secs(10));
    assert!(
        matches!(r, Echo::Closed(_)),
        "the connection that made the service panic: {r:?} (expected closed)\n{}",
        c.log_tail(40)
    );
    let replacement = wait_replacement(&c, victim, slot, Duration::from_secs(20));
    let base = echoer.rounds();
    let more = wait_until(Duration::from_secs(10), || echoer.rounds() >= base + 3);
    let (mut on_survivor, errs) = echoer.finish();
    assert!(
        replacement.is_some(),
        "worker {} that panicked: alive {}, no replacement in slot {slot}; status {:?}\n{}",
        victim.pid,
        proc_alive(victim),
        status(&c),
        c.log_tail(40)
    );
    eprintln!("panicked worker {} replaced by {replacement:?}", victim.pid);
    assert!(
        errs.is_empty(),
        "the panic broke connections of the other worker: {errs:?}\n{}",
        c.log_tail(40)
    );
    assert!(more, "survivor connections stalled\n{}", c.log_tail(40));
    for (i, s) in on_survivor.iter_mut().enumerate() {
        must_echo(&c, s, &format!("survivor {i} after the panic\n"));
    }
    for (i, s) in on_victim.iter_mut().enumerate().skip(1) {
        let r = echo(s, b"still there?\n", Duration::from_secs(10));
        assert!(
            matches!(r, Echo::Closed(_)),
            "connection {i} of the panicked worker: {r:?} (expected closed)\n{}",
            c.log_tail(40)
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || c.log().contains("panicked")),
        "the log does not say the worker panicked\n{}",
        c.log_tail(40)
    );
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "fresh after the panic\n");
}

// ---------------------------------------------------------------------------
// 12. corral status lists every worker
// ---------------------------------------------------------------------------

/// Pids in the table of `corral status`; also checks the master line.
fn table_pids(c: &Corral) -> (String, HashSet<i32>) {
    let out = c.cli(&["status"]);
    assert!(
        out.status.success(),
        "`corral status` failed: {:?}\n{}\n{}",
        out.status,
        out.all(),
        c.log_tail(40)
    );
    let pids = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("master"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<i32>().ok())
        .collect();
    (out.stdout, pids)
}

#[test]
fn status_lists_every_worker() {
    // `suspend = false`: the echo client stays in its worker instead of moving.
    let c = Corral::start(&Conf::new(2).drain("30s").pinned().render());
    // A client held open across a reload leaves a draining worker to list too.
    let mut s = c.connect();
    must_echo(&c, &mut s, "keep me\n");
    c.must_reload();

    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let procs: HashSet<i32> = c.worker_pids().into_iter().collect();
        let (master, _, ws) = status(&c);
        let json: HashSet<i32> = ws.iter().map(|w| w.pid).collect();
        let (table, tpids) = table_pids(&c);
        let draining = ws.iter().filter(|w| w.state == "draining").count();
        last = format!(
            "/proc children {procs:?}; json {ws:?} (master {master}); table pids {tpids:?}:\n{table}"
        );
        master == c.master_pid()
            && table.contains(&c.master_pid().to_string())
            && procs.len() == 3
            && draining == 1
            && json == procs
            && tpids == procs
    });
    eprintln!("{last}");
    assert!(
        ok,
        "`corral status` does not list exactly the master's 3 workers (2 ready, 1 draining): \
         {last}\n{}",
        c.log_tail(40)
    );
    let (_, generation, ws) = status(&c);
    for w in &ws {
        let expect = if w.generation == generation {
            "ready"
        } else {
            "draining"
        };
        assert_eq!(w.state, expect, "worker {w:?} in generation {generation}");
    }
    close(s);
}

// ---------------------------------------------------------------------------
// 13. log reopening after rotation
// ---------------------------------------------------------------------------

#[test]
fn reopen_after_rename_writes_to_a_new_file() {
    let logs = tempfile::Builder::new()
        .prefix("corral-test-logs-")
        .tempdir()
        .expect("temp dir");
    let path = logs.path().join("corral.log");
    let c = Corral::start(&Conf::new(2).log_file(&path.display().to_string()).render());
    let read = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || read(&path)
            .contains("corral is serving")),
        "log file {} does not get the master's lines:\n{}\nstderr:\n{}",
        path.display(),
        read(&path),
        c.log_tail(20)
    );

    // Rotation 1: rename, SIGUSR1; rotation 2: rename, `corral -s reopen`. After
    // each, a reload makes the master and the (pre-reload) workers write lines.
    for round in 1..=2u64 {
        let rotated = logs.path().join(format!("corral.log.{round}"));
        // The current generation's workers (older ones may still be exiting).
        let (_, generation, ws) = status(&c);
        let gen_workers: Vec<i32> = ws
            .iter()
            .filter(|w| w.generation == generation)
            .map(|w| w.pid)
            .collect();
        assert_eq!(gen_workers.len(), 2, "status: {ws:?}");
        fs::rename(&path, &rotated).expect("rename log");
        if round == 1 {
            c.signal(Signal::SIGUSR1);
        } else {
            let out = c.cli(&["-s", "reopen"]);
            assert!(
                out.status.success(),
                "`corral -s reopen` failed: {:?} {}\n{}",
                out.status,
                out.all(),
                read(&rotated)
            );
        }
        assert!(
            wait_until(Duration::from_secs(10), || read(&path)
                .contains("log file reopened")),
            "round {round}: no new log file after reopen; {} exists: {}; rotated file tail:\n{}",
            path.display(),
            path.exists(),
            read(&rotated)
        );

        c.must_reload();
        let reloaded = format!("reloaded: generation {} ", round + 1);
        let drained: Vec<String> = gen_workers
            .iter()
            .map(|p| format!("worker{{pid={p} "))
            .collect();
        let ok = wait_until(Duration::from_secs(10), || {
            let new = read(&path);
            new.contains(&reloaded)
                && drained
                    .iter()
                    .all(|d| new.lines().any(|l| l.contains(d) && l.contains("draining")))
        });
        let new = read(&path);
        let old = read(&rotated);
        assert!(
            ok,
            "round {round}: the new log file lacks the reload (`{reloaded}`) or the draining \
             lines of workers {gen_workers:?}\n--- new file ---\n{new}\n--- rotated file ---\n{old}"
        );
        assert!(
            !old.contains(&reloaded)
                && !drained
                    .iter()
                    .any(|d| old.lines().any(|l| l.contains(d) && l.contains("draining"))),
            "round {round}: lines written after the reopen went to the rotated file\n\
             --- rotated file ---\n{old}"
        );
        eprintln!(
            "round {round}: rotated file {} lines, new file {} lines",
            old.lines().count(),
            new.lines().count()
        );
    }
}

// ---------------------------------------------------------------------------
// 14. SIGWINCH drains workers, keeps the master; reload brings them back
// ---------------------------------------------------------------------------

#[test]
fn sigwinch_drains_workers_and_reload_brings_them_back() {
    let c = Corral::start(&Conf::new(2).drain("30s").render());
    let before = c.workers();
    let mut s = c.connect();
    must_echo(&c, &mut s, "before SIGWINCH\n");

    c.signal(Signal::SIGWINCH);
    // The worker with a client drains: it keeps serving it, the others leave.
    assert!(
        wait_until(Duration::from_secs(10), || c.workers().len() == 1),
        "after SIGWINCH with one client: workers {:?}\n{}",
        c.workers(),
        c.log_tail(40)
    );
    for i in 0..3 {
        must_echo(&c, &mut s, &format!("draining {i}\n"));
    }
    close(s);
    assert!(
        wait_until(Duration::from_secs(10), || c.workers().is_empty()),
        "workers left after SIGWINCH and the last client closing: {:?}\n{}",
        c.workers(),
        c.log_tail(40)
    );
    assert!(before.iter().all(|w| !proc_alive(*w)), "{}", c.log_tail(40));
    assert!(
        c.master_alive(),
        "SIGWINCH killed the master\n{}",
        c.log_tail(40)
    );
    // Nobody refills the slots.
    assert!(
        !wait_until(Duration::from_secs(1), || !c.workers().is_empty()),
        "workers respawned after SIGWINCH: {:?}\n{}",
        c.workers(),
        c.log_tail(40)
    );
    let (master, _, ws) = status(&c);
    assert_eq!(master, c.master_pid());
    assert!(ws.is_empty(), "status lists workers after SIGWINCH: {ws:?}");

    // The listener is kept: a client connecting now waits in the queue.
    let mut queued =
        TcpStream::connect_timeout(&c.addr(), Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!(
                "connect while workers are down (the master keeps the listener): {e}\n{}",
                c.log_tail(40)
            )
        });
    let _ = queued.set_nodelay(true);

    let out = c.must_reload();
    eprintln!("after SIGWINCH: {}", out.trim());
    assert!(
        wait_until(Duration::from_secs(10), || c.workers().len() == 2),
        "workers after reload: {:?}\n{}",
        c.workers(),
        c.log_tail(40)
    );
    must_echo(&c, &mut queued, "queued while workers were down\n");
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "after the reload\n");
}

// ---------------------------------------------------------------------------
// Memory recycling
// ---------------------------------------------------------------------------

#[test]
fn worker_above_max_worker_rss_is_replaced_gracefully() {
    // 1 MiB is below any worker's RSS: every worker is over the limit, which also
    // shows that recycling is paced (a few heartbeats of life each), not a loop.
    let c = Corral::start(&Conf::new(1).max_rss("1MiB").heartbeat("100ms").render());
    let first = c.workers();
    let mut held = c.connect();
    must_echo(&c, &mut held, "before recycling\n");
    let holder = owners(&c, std::slice::from_ref(&held), &c.worker_pids())[0]
        .unwrap_or_else(|| panic!("no worker holds the connection\n{}", c.log_tail(20)));

    // A replacement starts, and the connection on the old worker keeps working while
    // it drains.
    let replaced = wait_until(Duration::from_secs(15), || {
        c.workers()
            .iter()
            .any(|w| w.pid != holder && !first.contains(w))
    });
    assert!(
        replaced,
        "no replacement for worker {holder}\n{}",
        c.log_tail(30)
    );
    must_echo(&c, &mut held, "during recycling\n");
    assert!(
        c.log().contains("outgrew max_worker_rss"),
        "the log does not say why the worker was replaced\n{}",
        c.log_tail(30)
    );

    // Paced: over 3 s no more than a handful of workers come and go.
    let t0 = Instant::now();
    let mut seen: HashSet<i32> = HashSet::new();
    while t0.elapsed() < Duration::from_secs(3) {
        seen.extend(c.worker_pids());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.len() <= 10,
        "{} workers within 3 s: recycling is not paced\n{}",
        seen.len(),
        c.log_tail(30)
    );
    must_echo(&c, &mut held, "still here\n");

    // Once its client leaves, the old worker is gone.
    close(held);
    let gone = wait_until(Duration::from_secs(10), || {
        !c.worker_pids().contains(&holder)
    });
    assert!(
        gone,
        "recycled worker {holder} did not exit after its client left\n{}",
        c.log_tail(30)
    );
    // New clients are served throughout.
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "fresh\n");
}

#[test]
fn silent_control_clients_are_dropped() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let c = Corral::start(&Conf::new(1).render());
    let sock = c.pid_file.with_extension("sock");
    let mut idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).expect("connect to the control socket"))
        .collect();
    // Meanwhile the master answers others.
    let out = c.cli(&["status"]);
    assert!(out.status.success(), "{}", out.all());
    // Each silent client is closed by the master (EOF) within its request timeout.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).expect("read from the control socket");
        assert_eq!(n, 0, "expected the master to close a silent control client");
    }
    let out = c.cli(&["status"]);
    assert!(out.status.success(), "{}", out.all());
}

/// A master too busy to answer (here: stopped) is running: `corral status` says it
/// took the request and did not answer in time, names its pid, and does not ask
/// whether corral is running.
#[test]
fn a_master_that_does_not_answer_is_reported_busy_not_absent() {
    let c = Corral::start(&Conf::new(1).render());
    let master = c.master_pid();
    let before = c.worker_pids();
    kill(Pid::from_raw(master), Signal::SIGSTOP).expect("SIGSTOP the master");
    let out = c.cli(&["status"]);
    kill(Pid::from_raw(master), Signal::SIGCONT).expect("SIGCONT the master");
    assert!(!out.status.success(), "status succeeded: {}", out.all());
    let text = out.all();
    assert!(
        text.contains(&format!("the master (pid {master}) took the request"))
            && text.contains("did not answer within"),
        "{text}"
    );
    assert!(!text.contains("is corral running"), "{text}");
    // Running again, it answers at once.
    let out = c.cli(&["status"]);
    assert!(out.status.success(), "{}", out.all());
    assert_eq!(c.worker_pids().len(), before.len());
}
