//! Helpers for `tests/pressure.rs`: a low fd limit for the master, CPU time and fd
//! limits read from /proc, raw control-socket requests (the CLI's wire format, with
//! or without a half-close), a bounded flood of silent control clients, and a second
//! master started by hand on a given port. Everything started here is stopped by
//! pid when its guard drops.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{corral_bin, echo, live_children, proc_alive, read_stat, wait_until, Corral, Echo};

/// A script that runs the corral binary with both fd limits at `nofile` (so the
/// master cannot raise its soft limit again), keeping the pid (`exec`).
pub fn low_nofile_wrapper(dir: &Path, nofile: u64) -> PathBuf {
    let path = dir.join(format!("corral-nofile-{nofile}"));
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nulimit -n {nofile} || exit 99\nexec {} \"$@\"\n",
            corral_bin()
        ),
    )
    .expect("write wrapper");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    path
}

/// The soft "Max open files" of a process, from /proc/PID/limits.
pub fn nofile_limit(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many fds a process has open.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[11] is field 14 (utime), f[12] field 15 (stime), in clock ticks.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// Share of one CPU that `pid` used over `window`.
pub fn cpu_share(pid: i32, window: Duration) -> f64 {
    let t0 = Instant::now();
    let before = cpu_seconds(pid).expect("read master stat");
    // Sampling a rate needs an interval; this sleep measures, it does not wait for
    // anything.
    std::thread::sleep(window);
    let after = cpu_seconds(pid).expect("read master stat");
    (after - before) / t0.elapsed().as_secs_f64()
}

/// The control socket of a corral started by the harness.
pub fn control_socket(c: &Corral) -> PathBuf {
    c.pid_file.with_extension("sock")
}

/// A connected control client that has sent nothing yet.
pub fn ctl_connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to control socket {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `body` on `s` (then shuts down the sending side if `half_close`) and
/// reads the answer up to EOF: what the master said, empty if it said nothing.
pub fn ctl_exchange(s: &mut UnixStream, body: &[u8], half_close: bool) -> io::Result<String> {
    s.write_all(body)?;
    if half_close {
        s.shutdown(Shutdown::Write)?;
    }
    read_answer(s)
}

/// Reads an answer up to EOF.
pub fn read_answer(s: &mut UnixStream) -> io::Result<String> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One raw request on a fresh connection.
pub fn ctl_request(path: &Path, body: &[u8], half_close: bool) -> io::Result<String> {
    let mut s = ctl_connect(path);
    ctl_exchange(&mut s, body, half_close)
}

/// A thread that opens silent control connections as fast as it can until it
/// holds `hold` of them (or `max_time` passes), then keeps them open, sending
/// nothing, until dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicUsize>,
    /// Milliseconds since `t0` of the last successful connect.
    progress_ms: Arc<AtomicU64>,
    t0: Instant,
    handle: Option<JoinHandle<()>>,
}

impl Flood {
    pub fn start(path: &Path, hold: usize, max_time: Duration) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicUsize::new(0));
        let progress_ms = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let (st, n, pr, path) = (
            stop.clone(),
            connects.clone(),
            progress_ms.clone(),
            path.to_path_buf(),
        );
        let handle = std::thread::spawn(move || {
            let mut held = Vec::with_capacity(hold);
            while !st.load(Ordering::Relaxed) && t0.elapsed() < max_time {
                if held.len() >= hold {
                    // Holding: idle until told to stop (nothing to wait for).
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                // Blocks while the master's listen backlog is full.
                match UnixStream::connect(&path) {
                    Ok(s) => {
                        held.push(s);
                        n.fetch_add(1, Ordering::Relaxed);
                        pr.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Flood {
            stop,
            connects,
            progress_ms,
            t0,
            handle: Some(handle),
        }
    }

    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    /// Time since the last successful connect.
    pub fn stalled_for(&self) -> Duration {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.t0.elapsed().saturating_sub(last)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            // A connect blocked on a full backlog returns once the master accepts
            // or is gone (the harness kills it right after this guard): if it is
            // still blocked, the thread is left to end with the test process.
            let _ = wait_until(Duration::from_secs(3), || h.is_finished());
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// A corral master started by hand with a config naming a fixed port (the
/// harness picks its own ports), killed with everything it forked on drop.
pub struct Manual {
    pub dir: tempfile::TempDir,
    child: Child,
    pub pid: i32,
    seen: Vec<super::ProcId>,
}

impl Manual {
    /// Starts corral with `body` (which must name its port) and waits until an
    /// echo round trip on `port` works; panics with the log if it does not.
    pub fn start(body: &str, port: u16) -> Manual {
        let dir = tempfile::Builder::new()
            .prefix("corral-manual-")
            .tempdir()
            .expect("temp dir");
        let cfg = dir.path().join("corral.toml");
        let pid_file = dir.path().join("corral.pid");
        let body = super::conf::with_pid_file(body, &pid_file);
        fs::write(&cfg, body).expect("write config");
        let log = fs::File::create(dir.path().join("corral.stderr")).expect("log file");
        let child = Command::new(corral_bin())
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn corral");
        let pid = child.id() as i32;
        let mut m = Manual {
            dir,
            child,
            pid,
            seen: Vec::new(),
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ok = wait_until(Duration::from_secs(20), || {
            m.remember_workers();
            if m.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            else {
                return false;
            };
            matches!(echo(&mut s, b"manual\n", Duration::from_secs(2)), Echo::Ok)
        });
        let exited = m.child.try_wait().ok().flatten();
        assert!(
            ok && exited.is_none(),
            "second master on port {port} did not serve (exit {exited:?}); log:\n{}",
            m.log()
        );
        m
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("corral.stderr")).unwrap_or_default()
    }

    fn remember_workers(&mut self) {
        for w in live_children(self.pid) {
            if !self.seen.contains(&w) {
                self.seen.push(w);
            }
        }
    }
}

impl Drop for Manual {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGSTOP);
            self.remember_workers();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for w in &self.seen {
            if proc_alive(*w) {
                let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
            }
        }
    }
}

/// The process state letter (R, S, T, Z, ...) of a pid.
pub fn proc_state(pid: i32) -> Option<char> {
    read_stat(pid).map(|s| s.state)
}
