//! The running corral: starts the master with a generated config, waits until
//! it serves, finds its workers through /proc, and kills (by pid) everything it
//! and its upgrades started when dropped.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::conf::{expected_workers, with_pid_file};
use super::{
    connect, corral_bin, echo, free_port, live_children, proc_alive, read_stat, run_cli,
    run_cli_with, wait_until, CliOutput, Echo, ProcId,
};

/// How long `Corral::start` waits for a usable master (loaded 2-core box).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A running corral master started by this test, and everything it forked.
pub struct Corral {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pid_file: PathBuf,
    pub log_path: PathBuf,
    pub port: u16,
    /// `workers = N` from the config (only the privileged tests read it).
    #[allow(dead_code)]
    pub workers: usize,
    master: ProcId,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    /// Every worker this master has ever been seen with.
    seen: Mutex<Vec<ProcId>>,
    /// Other masters this test made (binary upgrades): killed at drop, with
    /// their children.
    extra_masters: Mutex<Vec<ProcId>>,
}

/// How to start corral, beyond the config.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The binary to run (default: the one cargo built). Upgrade tests copy it
    /// into their temp dir so they can replace it.
    pub binary: Option<PathBuf>,
    /// Extra environment for the master (e.g. `CORRAL_FAULT`, `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// Wait for this many workers instead of `workers = N` from the config
    /// (0: take it from the config).
    pub expect_workers: usize,
    /// Do not require an echo round trip before returning (e.g. when every
    /// worker is meant to crash).
    pub no_ready_check: bool,
}

enum StartError {
    AddrInUse(String),
    Failed(String),
}

impl Corral {
    /// Starts corral with `template` (`{port}` is replaced by a fresh port,
    /// a pid file in the test's temp dir is added) and waits until the pid
    /// file names the master, the configured number of workers exist and an
    /// echo round trip succeeds.
    pub fn start(template: &str) -> Corral {
        Corral::start_with(template, Launch::default())
    }

    /// `start` with a custom binary, environment or readiness condition.
    pub fn start_with(template: &str, launch: Launch) -> Corral {
        let workers = if launch.expect_workers > 0 {
            launch.expect_workers
        } else {
            expected_workers(template)
        };
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let body = template.replace("{port}", &port.to_string());
            match Corral::try_start(&body, port, workers, &launch) {
                Ok(c) => return c,
                Err(StartError::AddrInUse(log)) => last = log,
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("corral kept failing with \"Address already in use\"; last log:\n{last}");
    }

    fn try_start(
        body: &str,
        port: u16,
        workers: usize,
        launch: &Launch,
    ) -> Result<Corral, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("corral-test-")
            .tempdir()
            .expect("create temp dir");
        let config_path = dir.path().join("corral.toml");
        let pid_file = dir.path().join("corral.pid");
        let log_path = dir.path().join("corral.stderr");
        fs::write(&config_path, with_pid_file(body, &pid_file)).expect("write config");
        let log = File::create(&log_path).expect("create stderr file");
        let out = File::create(dir.path().join("corral.stdout")).expect("create stdout file");
        let bin = match &launch.binary {
            Some(b) => b.clone(),
            None => PathBuf::from(corral_bin()),
        };
        let child = Command::new(bin)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn corral");
        let pid = child.id() as i32;
        // The child cannot have exec'd-and-exited unnoticed: it is unreaped.
        let start = read_stat(pid).map(|s| s.start).unwrap_or(0);
        let c = Corral {
            dir,
            config_path,
            pid_file,
            log_path,
            port,
            workers,
            master: ProcId { pid, start },
            child: Mutex::new(child),
            exit: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            extra_masters: Mutex::new(Vec::new()),
        };

        let t0 = Instant::now();
        let mut stage = "pid file";
        let ready = wait_until(START_TIMEOUT, || {
            if c.master_exited() {
                return true;
            }
            if c.read_pid_file() != Some(pid) {
                stage = "pid file";
                return false;
            }
            if c.workers().len() != workers {
                stage = "worker count";
                return false;
            }
            if launch.no_ready_check {
                return true;
            }
            // The master says it serves once every worker reported ready; until
            // then a reload would be queued behind the start-up.
            stage = "master running";
            if !c.master_running() {
                return false;
            }
            stage = "echo round trip";
            let Ok(mut s) = TcpStream::connect_timeout(&c.addr(), Duration::from_secs(1)) else {
                return false;
            };
            matches!(
                echo(&mut s, b"startup-ping\n", Duration::from_secs(2)),
                Echo::Ok
            )
        });
        if c.master_exited() {
            let log = c.log();
            if log.contains("Address already in use") || log.contains("AddrInUse") {
                return Err(StartError::AddrInUse(log));
            }
            return Err(StartError::Failed(format!(
                "corral exited during start-up with {:?}; config:\n{}\nlog:\n{}",
                c.exit_status(),
                fs::read_to_string(&c.config_path).unwrap_or_default(),
                log
            )));
        }
        if !ready {
            return Err(StartError::Failed(format!(
                "corral not ready after {START_TIMEOUT:?} (stuck at: {stage}; pid file {:?}, \
                 workers {:?}, expected {workers}); config:\n{}\nlog:\n{}",
                c.read_pid_file(),
                c.workers(),
                fs::read_to_string(&c.config_path).unwrap_or_default(),
                c.log()
            )));
        }
        eprintln!(
            "[harness] corral master {pid} ready on port {port} with workers {:?} in {:?}",
            c.workers().iter().map(|p| p.pid).collect::<Vec<_>>(),
            t0.elapsed()
        );
        Ok(c)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn master_pid(&self) -> i32 {
        self.master.pid
    }

    pub fn config(&self) -> &Path {
        &self.config_path
    }

    pub fn config_str(&self) -> String {
        self.config_path.display().to_string()
    }

    /// Replaces the running config (for a reload or an upgrade to read) with
    /// `template`, as `start` wrote the first one: `{port}` is this master's echo
    /// port, and the pid file is added.
    pub fn write_config(&self, template: &str) {
        let body = template.replace("{port}", &self.port.to_string());
        fs::write(&self.config_path, with_pid_file(&body, &self.pid_file)).expect("write config");
    }

    /// The pid written in the pid file, if it exists and parses.
    pub fn read_pid_file(&self) -> Option<i32> {
        fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    pub fn pid_file_exists(&self) -> bool {
        self.pid_file.exists()
    }

    /// Current live workers (children of the master); remembers them so they
    /// can be checked and killed later.
    pub fn workers(&self) -> Vec<ProcId> {
        if self.master_exited() {
            return Vec::new();
        }
        let w = live_children(self.master.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &w {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        w
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers().iter().map(|p| p.pid).collect()
    }

    /// Every worker ever seen, dead or alive.
    pub fn seen_workers(&self) -> Vec<ProcId> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Seen workers that still run.
    pub fn live_seen_workers(&self) -> Vec<ProcId> {
        self.seen_workers()
            .into_iter()
            .filter(|p| proc_alive(*p))
            .collect()
    }

    /// Whether the master has exited (reaping it if so).
    pub fn master_exited(&self) -> bool {
        self.exit_status().is_some()
    }

    pub fn master_alive(&self) -> bool {
        !self.master_exited()
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            *exit = child.try_wait().ok().flatten();
        }
        *exit
    }

    /// Master exited and no worker ever seen is still running.
    pub fn all_gone(&self) -> bool {
        self.master_exited() && self.live_seen_workers().is_empty()
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: Signal) {
        assert!(
            self.master_alive(),
            "signal {sig:?}: master already exited\n{}",
            self.log_tail(40)
        );
        kill(Pid::from_raw(self.master.pid), sig).expect("kill(master)");
    }

    /// Sends `sig` to one worker (which must be one of ours).
    pub fn signal_worker(&self, w: ProcId, sig: Signal) {
        assert!(
            self.seen_workers().contains(&w),
            "{w:?} is not a worker of this corral"
        );
        assert!(proc_alive(w), "worker {w:?} is not running");
        kill(Pid::from_raw(w.pid), sig).expect("kill(worker)");
    }

    /// Runs `corral ARGS -c CONFIG`. `-s reload` and `-s upgrade` get `--no-wait`
    /// (they return once the new generation serves, as these tests expect; the
    /// following of the move is tested in tests/top.rs).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let cfg = self.config_str();
        let mut all: Vec<&str> = args.to_vec();
        let follows = args
            .windows(2)
            .any(|w| w[0] == "-s" && matches!(w[1], "reload" | "upgrade"));
        if follows && !args.contains(&"--no-wait") {
            all.push("--no-wait");
        }
        all.push("-c");
        all.push(&cfg);
        // Reap the master as soon as it exits: `-s stop` waits for it to be gone.
        run_cli_with(self.dir.path(), &all, Duration::from_secs(20), || {
            let _ = self.master_exited();
        })
    }

    /// New connection to the echo listener.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.addr(), self.log_tail(40)))
    }

    /// The master's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the master's stderr, framed for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- corral log (last {} of {} lines) ---\n{}\n--- end of log ---",
            lines.len() - from,
            lines.len(),
            lines[from..].join("\n")
        )
    }

    /// Waits until the master and every seen worker are gone.
    pub fn wait_all_gone(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.all_gone())
    }

    /// `corral status` reports the master as running (not starting, reloading
    /// or stopping).
    pub fn master_running(&self) -> bool {
        let cfg = self.config_str();
        let out = run_cli(
            self.dir.path(),
            &["status", "--json", "-c", &cfg],
            Duration::from_secs(10),
        );
        out.status.success() && out.stdout.contains("\"message\": \"running\"")
    }

    /// Records another master this test caused (a binary upgrade's new
    /// master), so that it and its workers are killed at drop.
    pub fn adopt_master(&self, pid: i32) {
        let Some(st) = read_stat(pid) else { return };
        let p = ProcId {
            pid,
            start: st.start,
        };
        let mut m = self.extra_masters.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains(&p) {
            m.push(p);
        }
        drop(m);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for w in live_children(pid) {
            if !seen.contains(&w) {
                seen.push(w);
            }
        }
    }

    /// Adopts every master a binary upgrade has started so far (from the log), so
    /// that each is killed at drop with its workers.
    pub fn adopt_new_masters(&self) {
        for p in new_master_pids(&self.log()) {
            self.adopt_master(p);
        }
    }

    /// The master now serving: the last one a binary upgrade started, or the first.
    pub fn serving_master(&self) -> i32 {
        new_master_pids(&self.log())
            .last()
            .copied()
            .unwrap_or(self.master.pid)
    }

    /// `corral -s reload`, which must succeed (it returns once the new generation
    /// serves); returns its output.
    pub fn must_reload(&self) -> String {
        let out = self.cli(&["-s", "reload"]);
        assert!(
            out.status.success(),
            "`corral -s reload` failed: {:?}\n{}\n{}",
            out.status,
            out.all(),
            self.log_tail(40)
        );
        assert!(
            out.all().contains("reloaded"),
            "`corral -s reload` succeeded without saying `reloaded`: {}",
            out.all()
        );
        out.all()
    }

    /// `corral -s upgrade`, which must succeed (it returns once the new master
    /// serves): adopts the new master for cleanup (before checking, so that a
    /// failed upgrade leaves nothing behind) and returns its pid.
    pub fn must_upgrade(&self) -> i32 {
        let before = new_master_pids(&self.log()).len();
        let out = self.cli(&["-s", "upgrade"]);
        self.adopt_new_masters();
        assert!(
            out.status.success(),
            "`corral -s upgrade` failed: {:?}\n{}\n{}",
            out.status,
            out.all(),
            self.log_tail(60)
        );
        let pids = new_master_pids(&self.log());
        assert!(
            pids.len() > before,
            "the upgrade succeeded but the log names no new master\n{}",
            self.log_tail(40)
        );
        pids[pids.len() - 1]
    }

    /// One step of a test that checks something before and through both kinds of
    /// deploy: `"reload"` (`must_reload`), `"upgrade"` (`must_upgrade_until_old_gone`),
    /// anything else nothing.
    pub fn deploy(&self, step: &str) {
        match step {
            "reload" => {
                self.must_reload();
            }
            "upgrade" => {
                self.must_upgrade_until_old_gone();
            }
            _ => {}
        }
    }

    /// `must_upgrade`, then waits until the old master (the one this handle started)
    /// has exited: every connection it held has moved or ended. Returns the new
    /// master's pid.
    pub fn must_upgrade_until_old_gone(&self) -> i32 {
        let new = self.must_upgrade();
        assert!(
            wait_until(Duration::from_secs(60), || self.master_exited()),
            "the old master {} stayed after the upgrade to {new}\n{}",
            self.master.pid,
            self.log_tail(40)
        );
        new
    }

    /// Waits (up to `limit`) until master `pid` has exited (or is a zombie) and
    /// none of `workers` runs: an old master after an upgrade.
    pub fn wait_master_gone(&self, pid: i32, workers: &[ProcId], limit: Duration) -> bool {
        wait_until(limit, || {
            let _ = self.master_exited();
            workers.iter().all(|w| !proc_alive(*w)) && read_stat(pid).is_none_or(|s| s.state == 'Z')
        })
    }

    /// Live workers of an adopted master (and remembers them for cleanup).
    pub fn workers_of(&self, pid: i32) -> Vec<ProcId> {
        let w = live_children(pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &w {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        w
    }

    /// Kills everything this corral started, by pid.
    fn kill_all(&self) {
        let extra = self
            .extra_masters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for m in &extra {
            if proc_alive(*m) {
                let _ = kill(Pid::from_raw(m.pid), Signal::SIGSTOP);
                let _ = self.workers_of(m.pid);
                let _ = kill(Pid::from_raw(m.pid), Signal::SIGKILL);
            }
        }
        if self.master_alive() {
            // Freeze the master so it cannot fork while we collect its children.
            let _ = kill(Pid::from_raw(self.master.pid), Signal::SIGSTOP);
            let _ = self.workers();
            if proc_alive(self.master) {
                let _ = kill(Pid::from_raw(self.master.pid), Signal::SIGKILL);
            }
        }
        for w in self.seen_workers() {
            if proc_alive(w) {
                let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
            }
        }
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            if exit.is_none() {
                let _ = child.kill();
                *exit = child.wait().ok();
            }
        }
        let ok = wait_until(Duration::from_secs(10), || {
            self.live_seen_workers().is_empty()
        });
        if !ok {
            eprintln!(
                "[harness] WARNING: workers still alive after SIGKILL: {:?}",
                self.live_seen_workers()
            );
        }
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("[harness] test failed; {}", self.log_tail(60));
        }
    }
}

/// Echoes `msg` on `s`, or fails the test with the log tail.
pub fn must_echo(c: &Corral, s: &mut TcpStream, msg: &str) {
    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!("echo of {msg:?} failed: {other:?}\n{}", c.log_tail(40)),
    }
}

/// Pids of the new masters a binary upgrade started, from the master's log.
pub fn new_master_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("new master started"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|t| t.strip_prefix("pid="))
                .and_then(|p| p.trim_matches(|ch: char| !ch.is_ascii_digit()).parse().ok())
        })
        .collect()
}
