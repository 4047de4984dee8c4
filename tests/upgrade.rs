//! Binary upgrade black-box tests: `corral -s upgrade` and SIGUSR2 under continuous
//! load, to the same binary (nothing may be lost) and to broken binaries (exits,
//! crashes, hangs: the old master must roll back by itself and keep serving).
//!
//! Each test copies the built `corral` into a temp dir and starts that copy, because
//! the old master execs the binary *path* it was started from; a test replaces the
//! file by writing a new one next to it and renaming it over (never in place: "text
//! file busy"). New masters are adopted by the harness as soon as their pid is known,
//! and every process left in a new master's process group is killed at the end.

use crate::common;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------
// Local /proc helpers (the harness keeps its stat parser private)
// ---------------------------------------------------------------------------

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<ProcId> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(st) = read_stat(pid) {
                if st.pgid == pgid && st.state != 'Z' && st.state != 'X' {
                    out.push(ProcId {
                        pid,
                        start: st.start,
                    });
                }
            }
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Kills, at the end of a test, whatever is left in the process groups of the new
/// masters it caused (a rollback that failed to clean up, workers of an adopted
/// master that were reparented). Only processes started after the guard was made.
struct GroupGuard {
    pgids: Mutex<Vec<i32>>,
    /// Start time (clock ticks since boot) of this test process: anything in a
    /// recorded group that started before it is not ours.
    not_before: u64,
}

impl GroupGuard {
    fn new() -> GroupGuard {
        let me = std::process::id() as i32;
        GroupGuard {
            pgids: Mutex::new(Vec::new()),
            not_before: read_stat(me).map(|s| s.start).unwrap_or(0),
        }
    }

    fn add(&self, pgid: i32) {
        let mut g = self.pgids.lock().unwrap_or_else(|e| e.into_inner());
        if !g.contains(&pgid) {
            g.push(pgid);
        }
    }

    fn ours(&self, pgid: i32) -> Vec<ProcId> {
        group_members(pgid)
            .into_iter()
            .filter(|p| p.start >= self.not_before)
            .collect()
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let pgids = self.pgids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for _round in 0..3 {
            let mut any = false;
            for &g in &pgids {
                let members = self.ours(g);
                // Freeze first, so a master cannot fork while we kill.
                for p in &members {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
                }
                for p in self.ours(g) {
                    any = true;
                    eprintln!(
                        "[upgrade] cleanup: killing leftover {} of process group {g}",
                        p.pid
                    );
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
            if !any {
                break;
            }
            wait_until(Duration::from_secs(3), || {
                pgids.iter().all(|&g| self.ours(g).is_empty())
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Binary and config
// ---------------------------------------------------------------------------

/// A temp dir holding a copy of the built corral, which the test may replace.
struct Bin {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Bin {
    fn copy() -> Bin {
        let (dir, path) = copy_binary();
        Bin { _dir: dir, path }
    }

    /// Replaces the binary by `contents` (written next to it, then renamed over it).
    fn replace_with(&self, contents: &[u8]) {
        let src = self.path.with_extension("src");
        fs::write(&src, contents).expect("write replacement source");
        let tmp = self.path.with_extension("new");
        install_exec(&src, &tmp);
        fs::rename(&tmp, &self.path).expect("rename the replacement over the binary");
    }

    /// Replaces the binary by a fresh copy of the built corral (a "new version").
    fn replace_with_corral(&self) {
        let tmp = self.path.with_extension("new");
        install_exec(Path::new(corral_bin()), &tmp);
        fs::rename(&tmp, &self.path).expect("rename the copy over the binary");
    }
}

/// Starts `conf` running `bin`.
fn start(bin: &Bin, conf: Conf) -> Corral {
    Corral::start_with(
        &conf.render(),
        Launch {
            binary: Some(bin.path.clone()),
            ..Launch::default()
        },
    )
}

fn oldbin(c: &Corral) -> PathBuf {
    let mut s = c.pid_file.clone().into_os_string();
    s.push(".oldbin");
    PathBuf::from(s)
}

/// `N` out of "upgraded: new master N is serving (ready in X ms)".
fn parse_upgraded(out: &str) -> Option<(i32, u64)> {
    let rest = &out[out.find("upgraded: new master ")? + "upgraded: new master ".len()..];
    let pid = rest.split_whitespace().next()?.parse().ok()?;
    let ms = rest[rest.find("ready in ")? + "ready in ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((pid, ms))
}

/// Adopts every new master the log names that still runs, and guards its group.
fn adopt_new_masters(c: &Corral, guard: &GroupGuard) -> Vec<i32> {
    let pids = new_master_pids(&c.log());
    for &p in &pids {
        guard.add(p);
        c.adopt_master(p);
    }
    pids
}

// ---------------------------------------------------------------------------
// Continuous load: persistent echo connections plus one new connection per round trip
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    rt_ok: AtomicU64,
    rt_failed: AtomicU64,
    connects: AtomicU64,
    connect_failed: AtomicU64,
    /// Round trips done by each persistent connection (index = connection).
    persistent_rt: Vec<AtomicU64>,
    /// Client ports of the persistent connections (to find their worker).
    persistent_ports: Mutex<Vec<u16>>,
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 20 {
            f.push(what);
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
    t0: Instant,
}

/// Round-trip timeout: an echo slower than this on loopback is a failure.
const RT_TIMEOUT: Duration = Duration::from_secs(10);

impl Load {
    /// `persistent` threads each hold one connection open for the whole run and echo
    /// on it; `churn` threads open a new connection per round trip. Returns once every
    /// persistent connection has done one round trip.
    fn start(addr: SocketAddr, persistent: usize, churn: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats {
            persistent_rt: (0..persistent).map(|_| AtomicU64::new(0)).collect(),
            ..Stats::default()
        });
        let mut threads = Vec::new();
        for i in 0..persistent {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                persistent_loop(addr, i, &stop, &stats)
            }));
        }
        for i in 0..churn {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(std::thread::spawn(move || {
                churn_loop(addr, i, &stop, &stats)
            }));
        }
        let load = Load {
            stop,
            stats,
            threads,
            t0: Instant::now(),
        };
        let warm = wait_until(Duration::from_secs(20), || {
            load.stats
                .persistent_rt
                .iter()
                .all(|n| n.load(Ordering::Relaxed) > 0)
                && load.ok() > 0
        });
        assert!(warm, "load did not get going: {}", load.summary());
        load
    }

    fn ok(&self) -> u64 {
        self.stats.rt_ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.stats.rt_failed.load(Ordering::Relaxed)
            + self.stats.connect_failed.load(Ordering::Relaxed)
    }

    fn persistent_counts(&self) -> Vec<u64> {
        self.stats
            .persistent_rt
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} round trips ok, {} failed; {} connects, {} failed; first failures: {:?}",
            self.ok(),
            self.stats.rt_failed.load(Ordering::Relaxed),
            self.stats.connects.load(Ordering::Relaxed),
            self.stats.connect_failed.load(Ordering::Relaxed),
            self.stats
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        )
    }

    /// Waits until `n` more round trips have completed (proof that service goes on).
    fn wait_progress(&self, n: u64, timeout: Duration) -> bool {
        let from = self.ok();
        wait_until(timeout, || self.ok() >= from + n)
    }

    /// Stops every thread (persistent connections are closed); returns the number of
    /// failed round trips and connects, and a summary.
    fn finish(mut self) -> (u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.failed(),
            format!("{} in {:?}", self.summary(), self.t0.elapsed()),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Pacing between round trips, so that the load does not starve a 2-core box.
const PACE: Duration = Duration::from_millis(3);

fn persistent_loop(addr: SocketAddr, i: usize, stop: &AtomicBool, stats: &Stats) {
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        if let Ok(a) = s.local_addr() {
                            stats
                                .persistent_ports
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(a.port());
                        }
                        conn.insert(s)
                    }
                    Err(e) => {
                        stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                        stats.fail(format!("persistent {i}: connect: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        n += 1;
        let msg = format!("persistent {i} round trip {n}\n");
        match echo(s, msg.as_bytes(), RT_TIMEOUT) {
            Echo::Ok => {
                stats.rt_ok.fetch_add(1, Ordering::Relaxed);
                stats.persistent_rt[i].fetch_add(1, Ordering::Relaxed);
            }
            other => {
                stats.rt_failed.fetch_add(1, Ordering::Relaxed);
                stats.fail(format!("persistent {i} round trip {n}: {other:?}"));
                conn = None;
            }
        }
        std::thread::sleep(PACE);
    }
    if let Some(s) = conn {
        close(s);
    }
}

fn churn_loop(addr: SocketAddr, i: usize, stop: &AtomicBool, stats: &Stats) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        // One attempt, no retry: a refused or unanswered connect is a failure.
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                stats.fail(format!("churn {i} connect {n}: {e}"));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let msg = format!("churn {i} connection {n}\n");
        match echo(&mut s, msg.as_bytes(), RT_TIMEOUT) {
            Echo::Ok => {
                stats.rt_ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                stats.rt_failed.fetch_add(1, Ordering::Relaxed);
                stats.fail(format!("churn {i} connection {n}: {other:?}"));
            }
        }
        close(s);
        std::thread::sleep(PACE);
    }
}

/// Which of `workers` holds the server side of each client port (None: unknown).
fn owners(port: u16, client_ports: &[u16], workers: &[ProcId]) -> Vec<Option<i32>> {
    let by_port = server_socket_inodes(port);
    let inodes: Vec<(i32, std::collections::HashSet<u64>)> = workers
        .iter()
        .map(|w| (w.pid, socket_inodes(w.pid)))
        .collect();
    client_ports
        .iter()
        .map(|cp| {
            let ino = by_port.get(cp)?;
            inodes
                .iter()
                .find(|(_, set)| set.contains(ino))
                .map(|(pid, _)| *pid)
        })
        .collect()
}

/// A fresh connection, its echo, and the worker (among `workers`) serving it.
fn fresh_served_by(c: &Corral, workers: &[ProcId]) -> Option<i32> {
    let mut s = connect(c.addr(), Duration::from_secs(10)).ok()?;
    if !matches!(echo(&mut s, b"who serves me?\n", RT_TIMEOUT), Echo::Ok) {
        return None;
    }
    let cp = s.local_addr().ok()?.port();
    let owner = owners(c.port, &[cp], workers)[0];
    close(s);
    owner
}

fn alive(pid: i32, start: u64) -> bool {
    proc_alive(ProcId { pid, start })
}

// ---------------------------------------------------------------------------
// 1. Upgrade to the same binary under load: nothing lost
// ---------------------------------------------------------------------------

#[test]
fn upgrade_to_same_binary_under_load_loses_nothing() {
    // Dropped after the harness (declared first): only catches what it left.
    let guard = GroupGuard::new();
    let bin = Bin::copy();
    // Pinned echo connections (`suspend = false`): this test watches the old master
    // drain connections that cannot move (movable ones follow the upgrade to the new
    // master: tests/moves.rs, tests/upgrade_moves.rs).
    let c = start(&bin, Conf::new(2).upgrade_timeout("20s").pinned());
    let old_master = c.master_pid();
    let old_workers = c.workers();
    assert_eq!(old_workers.len(), 2, "{}", c.log_tail(40));

    let load = Load::start(c.addr(), 3, 1);
    // The persistent connections are on the old workers.
    let ports = load.stats.persistent_ports.lock().unwrap().clone();
    let own = owners(c.port, &ports, &old_workers);
    eprintln!("persistent connections on old workers: {own:?}");
    assert!(
        own.iter().all(|o| o.is_some()),
        "persistent connections not all on the old workers {old_workers:?}: {own:?}"
    );
    assert!(
        load.wait_progress(50, Duration::from_secs(20)),
        "{}",
        load.summary()
    );

    // A new version is deployed: the file at the path is replaced.
    bin.replace_with_corral();
    let t0 = Instant::now();
    let out = c.cli(&["-s", "upgrade"]);
    let took = t0.elapsed();
    let new_pids = adopt_new_masters(&c, &guard);
    eprintln!("`corral -s upgrade` took {took:?}: {}", out.all().trim());
    assert!(
        out.status.success(),
        "`corral -s upgrade` failed: {:?}\n{}\n{}",
        out.status,
        out.all(),
        c.log_tail(60)
    );
    let (new_master, ready_ms) = parse_upgraded(&out.all()).unwrap_or_else(|| {
        panic!(
            "no \"upgraded: new master N ... ready in X ms\" in {:?}",
            out.all()
        )
    });
    eprintln!("UPGRADE: new master {new_master}, ready in {ready_ms} ms (wall {took:?})");
    assert_ne!(new_master, old_master);
    assert_eq!(
        new_pids.last(),
        Some(&new_master),
        "the log names new masters {new_pids:?}\n{}",
        c.log_tail(40)
    );
    guard.add(new_master);
    c.adopt_master(new_master);
    let new_id = proc_id(new_master).expect("the new master runs");

    // The new master has its own workers, which serve new connections.
    let mut new_workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            new_workers = c.workers_of(new_master);
            new_workers.len() == 2
        }),
        "new master {new_master} has workers {new_workers:?}, want 2\n{}",
        c.log_tail(40)
    );
    assert_eq!(
        read_stat(new_master).map(|s| s.pgid),
        Some(new_master),
        "the new master leads its own process group"
    );
    let mut served_by = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            served_by = fresh_served_by(&c, &new_workers);
            served_by.is_some()
        }),
        "no new connection is served by the new workers {new_workers:?}\n{}",
        c.log_tail(40)
    );
    assert_eq!(
        c.read_pid_file(),
        Some(new_master),
        "pid file after upgrade"
    );

    // Old workers drain: the persistent connections on them keep working while the
    // old master waits for them.
    let before = load.persistent_counts();
    let kept = wait_until(Duration::from_secs(15), || {
        load.persistent_counts()
            .iter()
            .zip(&before)
            .all(|(now, b)| *now >= b + 20)
    });
    assert!(
        kept,
        "persistent connections stalled after the upgrade: {before:?} -> {:?}; {}\n{}",
        load.persistent_counts(),
        load.summary(),
        c.log_tail(40)
    );
    assert!(
        c.master_alive(),
        "the old master exited while its workers still had open connections\n{}",
        c.log_tail(40)
    );
    let old_live: Vec<ProcId> = old_workers
        .iter()
        .copied()
        .filter(|w| proc_alive(*w))
        .collect();
    assert!(
        !old_live.is_empty(),
        "old workers gone while their connections were open\n{}",
        c.log_tail(40)
    );
    assert!(
        oldbin(&c).exists(),
        "{} missing while the old master drains",
        oldbin(&c).display()
    );
    assert!(
        load.wait_progress(50, Duration::from_secs(20)),
        "{}",
        load.summary()
    );

    // The clients close: the old workers and the old master exit.
    let (failed, summary) = load.finish();
    eprintln!("LOAD: {summary}");
    let t_close = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5) + MARGIN, || c.master_exited()
            && old_workers.iter().all(|w| !proc_alive(*w))),
        "old master exited {:?}, old workers alive {:?} {:?} after the clients closed\n{}",
        c.exit_status(),
        old_workers
            .iter()
            .filter(|w| proc_alive(**w))
            .collect::<Vec<_>>(),
        t_close.elapsed(),
        c.log_tail(40)
    );
    eprintln!(
        "old master exited {:?} after the last client closed, with {:?}",
        t_close.elapsed(),
        c.exit_status()
    );
    assert!(
        c.exit_status().map(|s| s.success()).unwrap_or(false),
        "old master exit status {:?}\n{}",
        c.exit_status(),
        c.log_tail(40)
    );
    assert_eq!(
        failed,
        0,
        "round trips or connects failed during the upgrade: {summary}\n{}",
        c.log_tail(60)
    );
    assert!(!oldbin(&c).exists(), "{} left behind", oldbin(&c).display());
    assert_eq!(c.read_pid_file(), Some(new_master), "pid file at the end");
    assert!(proc_alive(new_id), "new master died\n{}", c.log_tail(40));
    assert_eq!(c.workers_of(new_master), new_workers, "new workers changed");

    // The new master is the one `corral -s` talks to now; stop it and check that
    // nothing is left.
    let out = c.cli(&["-s", "stop"]);
    assert!(
        out.status.success(),
        "-s stop: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || {
            !alive(new_id.pid, new_id.start) && new_workers.iter().all(|w| !proc_alive(*w))
        }),
        "new master or its workers still alive after -s stop\n{}",
        c.log_tail(40)
    );
    assert!(
        guard.ours(new_master).is_empty(),
        "{:?}",
        guard.ours(new_master)
    );
    assert!(!c.pid_file_exists(), "pid file left after stop");
}

// ---------------------------------------------------------------------------
// 2-4. Broken binaries: automatic rollback
// ---------------------------------------------------------------------------

/// Replaces the binary by `script`, asks for an upgrade under load and checks that
/// the old master rolled back and serves on as if nothing happened. Returns how long
/// `-s upgrade` took.
fn rollback_case(script: &str, upgrade_timeout: &str, expect_why: &[&str]) -> Duration {
    // Dropped after the harness (declared first): only catches what it left.
    let guard = GroupGuard::new();
    let bin = Bin::copy();
    let c = start(&bin, Conf::new(2).upgrade_timeout(upgrade_timeout));
    let master = c.master_pid();
    let workers = c.workers();
    assert_eq!(workers.len(), 2, "{}", c.log_tail(40));
    let load = Load::start(c.addr(), 3, 1);
    assert!(
        load.wait_progress(50, Duration::from_secs(20)),
        "{}",
        load.summary()
    );

    bin.replace_with(script.as_bytes());
    let t0 = Instant::now();
    // Ask in a thread and adopt the new master as soon as the log names it, so that
    // it is cleaned up whatever happens.
    let (out, took, new_master) = std::thread::scope(|s| {
        let cli = s.spawn(|| {
            let out = c.cli(&["-s", "upgrade"]);
            (out, t0.elapsed())
        });
        let mut new_master = None;
        while !cli.is_finished() {
            if new_master.is_none() {
                new_master = adopt_new_masters(&c, &guard).first().copied();
            }
            std::thread::sleep(POLL);
        }
        let (out, took) = cli.join().expect("cli thread");
        if new_master.is_none() {
            new_master = adopt_new_masters(&c, &guard).first().copied();
        }
        (out, took, new_master)
    });
    eprintln!(
        "`corral -s upgrade` to {script:?} took {took:?} (new master {new_master:?}): {:?} {}",
        out.status,
        out.all().trim()
    );
    assert!(
        !out.status.success(),
        "`corral -s upgrade` to a broken binary succeeded: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let all = out.all();
    assert!(
        all.contains("rolled back") && all.contains(&master.to_string()),
        "`-s upgrade` output does not say it rolled back (master {master}): {all}\n{}",
        c.log_tail(40)
    );
    assert!(
        expect_why.iter().any(|w| all.contains(w)),
        "`-s upgrade` output gives no expected reason ({expect_why:?}): {all}"
    );
    let new_master = new_master
        .unwrap_or_else(|| panic!("the log never named the new master\n{}", c.log_tail(40)));

    // Nothing of the new master is left: not it, not anything in its group.
    assert!(
        wait_until(Duration::from_secs(5), || guard.ours(new_master).is_empty()),
        "processes of the failed new master {new_master} still run: {:?}\n{}",
        guard.ours(new_master),
        c.log_tail(40)
    );
    // The old master reaps its child: no zombie stays either.
    assert!(
        wait_until(Duration::from_secs(5), || read_stat(new_master)
            .map(|s| s.ppid != master)
            .unwrap_or(true)),
        "the failed new master {new_master} is still a child of the old master (ppid {:?})",
        read_stat(new_master).map(|s| s.ppid)
    );

    // The old master serves on, unchanged.
    assert!(c.master_alive(), "master exited\n{}", c.log_tail(40));
    assert!(
        load.wait_progress(100, Duration::from_secs(20)),
        "service stalled after the rollback: {}\n{}",
        load.summary(),
        c.log_tail(40)
    );
    assert_eq!(c.workers(), workers, "workers changed\n{}", c.log_tail(40));
    assert_eq!(c.read_pid_file(), Some(master), "pid file after rollback");
    assert!(
        !oldbin(&c).exists(),
        "{} left after rollback",
        oldbin(&c).display()
    );
    // The control socket answers again (a failed new master may have taken it).
    let st = c.cli(&["status"]);
    assert!(
        st.status.success() && st.stdout.contains(&master.to_string()),
        "`corral status` after rollback: {:?} {}",
        st.status,
        st.all()
    );
    let (failed, summary) = load.finish();
    eprintln!("LOAD: {summary}");
    assert_eq!(
        failed,
        0,
        "round trips or connects failed around the rollback: {summary}\n{}",
        c.log_tail(60)
    );
    assert_eq!(c.workers(), workers, "workers changed\n{}", c.log_tail(40));

    // A later upgrade to a good binary still works after a rollback.
    bin.replace_with_corral();
    let out = c.cli(&["-s", "upgrade"]);
    adopt_new_masters(&c, &guard);
    assert!(
        out.status.success(),
        "upgrade to a good binary after a rollback failed: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let (good, _) = parse_upgraded(&out.all()).expect("upgraded: new master N");
    guard.add(good);
    c.adopt_master(good);
    assert!(
        wait_until(Duration::from_secs(5) + MARGIN, || c.master_exited()),
        "old master did not exit after a good upgrade (no connections open)\n{}",
        c.log_tail(40)
    );
    assert_eq!(c.read_pid_file(), Some(good));
    let mut s = c.connect();
    assert!(matches!(echo(&mut s, b"after\n", RT_TIMEOUT), Echo::Ok));
    took
}

#[test]
fn upgrade_to_binary_that_exits_1_rolls_back() {
    let took = rollback_case(
        "#!/bin/sh\nexit 1\n",
        "20s",
        &["exit code 1", "closed its readiness pipe"],
    );
    assert!(
        took < Duration::from_secs(5) + MARGIN,
        "rollback after an immediate exit took {took:?}"
    );
}

#[test]
fn upgrade_to_binary_that_crashes_rolls_back() {
    let took = rollback_case(
        "#!/bin/sh\nkill -SEGV $$\n",
        "20s",
        &["SIGSEGV", "closed its readiness pipe"],
    );
    assert!(
        took < Duration::from_secs(5) + MARGIN,
        "rollback after a crash took {took:?}"
    );
}

#[test]
fn upgrade_to_binary_that_hangs_rolls_back_at_upgrade_timeout() {
    let took = rollback_case("#!/bin/sh\nexec sleep 60\n", "2s", &["upgrade_timeout"]);
    assert!(
        took >= Duration::from_millis(1900),
        "rollback of a hung new master came before upgrade_timeout (2s): {took:?}"
    );
    assert!(
        took < Duration::from_secs(2) + MARGIN,
        "rollback of a hung new master took {took:?} (upgrade_timeout 2s)"
    );
}

// ---------------------------------------------------------------------------
// 5. SIGUSR2, twice in a row
// ---------------------------------------------------------------------------

#[test]
fn sigusr2_upgrades_and_the_new_master_can_upgrade_again() {
    // Dropped after the harness (declared first): only catches what it left.
    let guard = GroupGuard::new();
    let bin = Bin::copy();
    let c = start(&bin, Conf::new(2).upgrade_timeout("20s"));
    let old_master = c.master_pid();
    let old_workers = c.workers();
    // New connections only: nothing holds the old workers, so the old master leaves
    // as soon as the new one serves.
    let load = Load::start(c.addr(), 0, 2);

    bin.replace_with_corral();
    let t0 = Instant::now();
    c.signal(Signal::SIGUSR2);
    let mut first = None;
    let changed = wait_until(Duration::from_secs(15), || {
        adopt_new_masters(&c, &guard);
        first = c.read_pid_file().filter(|p| *p != old_master);
        first.is_some()
    });
    assert!(
        changed,
        "pid file still names {old_master} 15s after SIGUSR2\n{}",
        c.log_tail(40)
    );
    let first = first.unwrap();
    guard.add(first);
    c.adopt_master(first);
    let first_id = proc_id(first).expect("first new master runs");
    assert!(
        wait_until(Duration::from_secs(5) + MARGIN, || c.master_exited()
            && old_workers.iter().all(|w| !proc_alive(*w))),
        "old master or workers still alive {:?} after SIGUSR2\n{}",
        t0.elapsed(),
        c.log_tail(40)
    );
    eprintln!(
        "SIGUSR2 upgrade to {first}: old master gone after {:?}",
        t0.elapsed()
    );
    assert!(!oldbin(&c).exists(), ".oldbin left");
    let mut w1 = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            w1 = c.workers_of(first);
            w1.len() == 2
        }),
        "first new master's workers: {w1:?}"
    );
    assert!(
        load.wait_progress(50, Duration::from_secs(20)),
        "{}",
        load.summary()
    );

    // The new master, which is not our child, upgrades again.
    bin.replace_with_corral();
    let out = c.cli(&["-s", "upgrade"]);
    adopt_new_masters(&c, &guard);
    assert!(
        out.status.success(),
        "second upgrade failed: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let (second, ms) = parse_upgraded(&out.all()).expect("upgraded: new master N");
    eprintln!("second upgrade: {first} -> {second}, ready in {ms} ms");
    guard.add(second);
    c.adopt_master(second);
    assert!(
        wait_until(Duration::from_secs(5) + MARGIN, || !proc_alive(first_id)
            && w1.iter().all(|w| !proc_alive(*w))),
        "first new master {first} or its workers still alive\n{}",
        c.log_tail(40)
    );
    assert_eq!(c.read_pid_file(), Some(second));
    assert!(!oldbin(&c).exists(), ".oldbin left");
    let mut w2 = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            w2 = c.workers_of(second);
            w2.len() == 2
        }),
        "second new master's workers: {w2:?}"
    );
    assert!(
        load.wait_progress(50, Duration::from_secs(20)),
        "{}",
        load.summary()
    );
    let (failed, summary) = load.finish();
    eprintln!("LOAD: {summary}");
    assert_eq!(
        failed,
        0,
        "round trips or connects failed during the upgrades: {summary}\n{}",
        c.log_tail(60)
    );
    assert!(
        fresh_served_by(&c, &w2).is_some(),
        "a new connection is not served by the latest workers {w2:?}"
    );

    let out = c.cli(&["-s", "stop"]);
    assert!(out.status.success(), "-s stop: {}", out.all());
    let second_id = proc_id(second);
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || {
            second_id.map(|p| !proc_alive(p)).unwrap_or(true) && w2.iter().all(|w| !proc_alive(*w))
        }),
        "latest master or workers left after -s stop\n{}",
        c.log_tail(40)
    );
}

/// The value of `corral_generation` in `corral status --prometheus`.
fn generation_gauge(c: &Corral) -> Option<u64> {
    let out = c.cli(&["status", "--prometheus"]);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("corral_generation "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[test]
fn generations_continue_across_an_upgrade_and_each_master_names_itself() {
    let guard = GroupGuard::new();
    let bin = Bin::copy();
    let c = start(&bin, Conf::new(2).upgrade_timeout("20s"));
    let old_master = c.master_pid();
    c.must_reload();
    assert_eq!(generation_gauge(&c), Some(2), "{}", c.log_tail(20));

    let out = c.cli(&["-s", "upgrade"]);
    adopt_new_masters(&c, &guard);
    assert!(
        out.status.success(),
        "upgrade: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let (new_master, _) = parse_upgraded(&out.all()).expect("upgraded: new master N");
    guard.add(new_master);
    c.adopt_master(new_master);
    // The new master continues the numbering: status, its workers and the gauge.
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = c.cli(&["status", "--json"]);
            status = serde_json::from_str(&out.stdout).unwrap_or_default();
            status["master_pid"] == new_master
        }),
        "status never answered from the new master: {status}\n{}",
        c.log_tail(40)
    );
    assert_eq!(status["generation"], 3, "{status}");
    let workers = status["workers"].as_array().expect("workers");
    assert!(
        workers.iter().any(|w| w["generation"] == 3),
        "no worker of generation 3: {status}"
    );
    assert!(
        workers.iter().all(|w| w["generation"].as_u64() >= Some(3)),
        "the new master runs a generation below 3: {status}"
    );
    assert_eq!(generation_gauge(&c), Some(3));
    assert!(
        wait_until(Duration::from_secs(20) + MARGIN, || !proc_alive_pid(
            old_master
        )),
        "old master {old_master} still alive\n{}",
        c.log_tail(40)
    );

    // Both masters wrote to one log: each of their lines says which one speaks.
    let log = c.log();
    let old_tag = format!("master{{pid={old_master}}}");
    let new_tag = format!("master{{pid={new_master}}}");
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` line in:\n{log}"))
            .to_string()
    };
    assert!(line("upgraded: new master").contains(&old_tag), "{log}");
    // What the old master does after the commit is a hand-over, not a shutdown.
    assert!(
        line("handing over to the new master").contains(&old_tag),
        "{log}"
    );
    assert!(
        !log.contains("graceful stop: draining"),
        "the old master's hand-over reads like a shutdown:\n{log}"
    );
    let starting = log
        .lines()
        .filter(|l| l.contains("listening"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        starting.iter().any(|l| l.contains(&new_tag)),
        "the new master's start lines do not name it: {starting:?}"
    );
    for l in log.lines().filter(|l| l.contains(" gone after ")) {
        assert!(l.contains("master{pid="), "whose generation? {l}");
    }
    // Worker lines name the worker only, never the master that forked it.
    for l in log.lines().filter(|l| l.contains("worker{pid=")) {
        assert!(
            !l.contains("master{pid="),
            "a worker line carries its master's tag: {l}"
        );
    }
    let out = c.cli(&["-s", "stop"]);
    assert!(out.status.success(), "-s stop: {}", out.all());
}

fn proc_alive_pid(pid: i32) -> bool {
    proc_id(pid).is_some_and(proc_alive)
}
