//! Black-box test harness for corral: starts the real binary with a generated
//! config on a loopback port, finds its workers through /proc, drives it with
//! real sockets and signals, and kills (by pid) everything it started when the
//! test ends, whatever the outcome.
//!
//! Rules the harness enforces for every test: waits are deadline loops (never a
//! bare sleep used as synchronisation), ports are probed before use and retried
//! on "Address already in use", the master's stderr goes to a file in the test's
//! own temp dir, and only pids this harness started are ever signalled.

#![allow(dead_code)]

pub mod http;

use std::collections::HashSet;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[allow(dead_code)]
pub mod inputs;
pub mod opsec;
pub mod pressure;
#[allow(dead_code)]
pub mod recycle;

/// How long `Corral::start` waits for a usable master (loaded 2-core box).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Polling period of `wait_until`.
pub const POLL: Duration = Duration::from_millis(15);

/// Polls `cond` every ~15 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports handed out by this test process, so that two tests running in
/// parallel threads never race for the same one.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process and advanced per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A free loopback port in 20000..32000 (below Linux's ephemeral range, so no
/// outgoing connection of ours can take it), probed by binding it once.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20000 + (random_u64() % 12000) as u16;
        {
            let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
            let used = used.get_or_insert_with(HashSet::new);
            if used.contains(&port) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            used.insert(port);
        }
        return port;
    }
    panic!("no free port found in 20000..32000 after 1000 tries");
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

/// A process identity that survives pid reuse: pid plus start time (clock
/// ticks since boot, field 22 of /proc/PID/stat).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// What /proc/PID/stat says of a process.
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub start: u64,
}

/// Reads /proc/PID/stat.
pub fn read_stat(pid: i32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), f[1] field 4 (ppid), f[2] field 5 (pgrp), f[19] field
    // 22 (starttime).
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// The identity (pid and start time) of a running process.
pub fn proc_id(pid: i32) -> Option<ProcId> {
    read_stat(pid).map(|s| ProcId {
        pid,
        start: s.start,
    })
}

/// Whether this exact process still runs (not gone, not a zombie, not reused).
pub fn proc_alive(p: ProcId) -> bool {
    match read_stat(p.pid) {
        Some(st) => st.start == p.start && st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

/// The comm (process name) of a pid, if readable.
pub fn proc_comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Live (non-zombie) children of `parent`.
pub fn live_children(parent: i32) -> Vec<ProcId> {
    let mut pids: Vec<i32> = Vec::new();
    match fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        Ok(s) => pids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
        Err(_) => {
            // Kernel without CONFIG_PROC_CHILDREN: scan every process.
            if let Ok(rd) = fs::read_dir("/proc") {
                for e in rd.flatten() {
                    if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                        if read_stat(pid).map(|st| st.ppid) == Some(parent) {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
    }
    let mut out: Vec<ProcId> = pids
        .into_iter()
        .filter_map(|pid| {
            let st = read_stat(pid)?;
            (st.ppid == parent && st.state != 'Z' && st.state != 'X').then_some(ProcId {
                pid,
                start: st.start,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Socket inodes held open by `pid` (from /proc/PID/fd).
pub fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                    if let Ok(ino) = n.parse() {
                        out.insert(ino);
                    }
                }
            }
        }
    }
    out
}

/// Inodes of the server-side TCP sockets of loopback connections to
/// `server_port` (IPv4), by client port: one read of /proc/net/tcp for all.
pub fn server_socket_inodes(server_port: u16) -> std::collections::HashMap<u16, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tcp) = fs::read_to_string("/proc/net/tcp") else {
        return out;
    };
    let local = format!("0100007F:{server_port:04X}");
    for line in tcp.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_), Some(l), Some(r)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if l != local {
            continue;
        }
        let Some(port) = r
            .strip_prefix("0100007F:")
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if let Some(ino) = f.nth(6).and_then(|i| i.parse::<u64>().ok()) {
            if ino != 0 {
                out.insert(port, ino);
            }
        }
    }
    out
}

/// Inode of the server-side TCP socket of the loopback connection whose
/// server end is `server_port` and client end is `client_port` (IPv4).
pub fn server_socket_inode(server_port: u16, client_port: u16) -> Option<u64> {
    let tcp = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[1] == local && f[2] == remote {
            let ino: u64 = f[9].parse().ok()?;
            if ino != 0 {
                return Some(ino);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Echo client helpers
// ---------------------------------------------------------------------------

/// Connects to `addr` with a timeout, retrying on transient errors until
/// `timeout` passes.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(50))) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads exactly `n` bytes before `timeout`; Err describes what happened
/// instead (EOF, reset, timeout).
pub fn read_exact_timeout(
    s: &mut TcpStream,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout(buf[..got].to_vec()));
        }
        s.set_read_timeout(Some(left)).map_err(ReadEnd::Other)?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadEnd::Eof(buf[..got].to_vec())),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ReadEnd::Timeout(buf[..got].to_vec())),
            Err(e) if is_reset(&e) => return Err(ReadEnd::Reset(e)),
            Err(e) => return Err(ReadEnd::Other(e)),
        }
    }
    Ok(buf)
}

/// How a read ended when it did not get what was asked.
#[derive(Debug)]
pub enum ReadEnd {
    Eof(Vec<u8>),
    Reset(io::Error),
    Timeout(Vec<u8>),
    Other(io::Error),
}

impl ReadEnd {
    /// The peer closed the connection (orderly or by reset).
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadEnd::Eof(_) | ReadEnd::Reset(_))
    }
}

/// A read that ran into its read timeout (the kind depends on the socket's mode).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Outcome of one echo round trip on an existing connection.
#[derive(Debug)]
pub enum Echo {
    /// The message came back exactly.
    Ok,
    /// The peer closed (EOF, reset, broken pipe) — on write or read.
    Closed(String),
    /// Something else: wrong bytes, timeout, unexpected error.
    Bad(String),
}

/// Sends `msg` and expects exactly `msg` back within `timeout`.
pub fn echo(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> Echo {
    if let Err(e) = s.write_all(msg) {
        return if is_reset(&e) {
            Echo::Closed(format!("write: {e}"))
        } else {
            Echo::Bad(format!("write: {e}"))
        };
    }
    match read_exact_timeout(s, msg.len(), timeout) {
        Ok(b) if b == msg => Echo::Ok,
        Ok(b) => Echo::Bad(format!(
            "wrong echo: sent {:?}, got {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&b)
        )),
        Err(ReadEnd::Eof(b)) if b.is_empty() => Echo::Closed("EOF".into()),
        Err(ReadEnd::Reset(e)) => Echo::Closed(format!("read: {e}")),
        Err(other) => Echo::Bad(format!("{other:?}")),
    }
}

/// Waits until the peer closes `s` (EOF or reset) within `timeout`, without
/// sending anything. Returns the time it took, or an error describing what
/// was seen instead.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Result<Duration, String> {
    match sysd::wait_ending(s, timeout) {
        sysd::Ending::Eof(took) | sysd::Ending::Reset(took) => Ok(took),
        sysd::Ending::StillOpen => Err(format!("still open after {timeout:?}")),
        sysd::Ending::Other(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// Config builder
// ---------------------------------------------------------------------------

/// A config for one echo listener; `render()` gives a template where `{port}`
/// stands for the listening port (the harness adds the pid file).
#[derive(Clone, Debug)]
pub struct Conf {
    pub workers: usize,
    pub drain_timeout: String,
    pub stop_timeout: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    pub level: String,
}

impl Conf {
    pub fn new(workers: usize) -> Conf {
        Conf {
            workers,
            drain_timeout: "20s".into(),
            stop_timeout: "3s".into(),
            idle_timeout: "60s".into(),
            max_connections: 1024,
            level: "info".into(),
        }
    }
    pub fn drain(mut self, d: &str) -> Conf {
        self.drain_timeout = d.into();
        self
    }
    pub fn stop(mut self, d: &str) -> Conf {
        self.stop_timeout = d.into();
        self
    }
    pub fn idle(mut self, d: &str) -> Conf {
        self.idle_timeout = d.into();
        self
    }
    pub fn render(&self) -> String {
        format!(
            "[master]\n\
             workers = {}\n\
             drain_timeout = \"{}\"\n\
             stop_timeout = \"{}\"\n\
             \n\
             [worker]\n\
             max_connections = {}\n\
             idle_timeout = \"{}\"\n\
             \n\
             [log]\n\
             level = \"{}\"\n\
             \n\
             [[listen]]\n\
             address = \"127.0.0.1:{{port}}\"\n\
             service = \"echo\"\n",
            self.workers,
            self.drain_timeout,
            self.stop_timeout,
            self.max_connections,
            self.idle_timeout,
            self.level
        )
    }
}

/// Parses `workers = N` (or "auto") out of a config body.
fn expected_workers(body: &str) -> usize {
    for line in body.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("workers") {
            let v = v.trim_start();
            if let Some(v) = v.strip_prefix('=') {
                let v = v.split('#').next().unwrap_or("").trim();
                if v.trim_matches('"') == "auto" {
                    return std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1);
                }
                if let Ok(n) = v.parse() {
                    return n;
                }
            }
        }
    }
    panic!("test config must set `workers = N` explicitly:\n{body}");
}

/// Adds `pid_file = "..."` to the `[master]` table of `body` (creating it if
/// the body has none).
fn with_pid_file(body: &str, pid_file: &Path) -> String {
    let line = format!("pid_file = \"{}\"", pid_file.display());
    let mut out = String::new();
    let mut done = false;
    for l in body.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && l.trim() == "[master]" {
            out.push_str(&line);
            out.push('\n');
            done = true;
        }
    }
    if done {
        out
    } else {
        format!("[master]\n{line}\n\n{out}")
    }
}

// ---------------------------------------------------------------------------
// The running corral
// ---------------------------------------------------------------------------

pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// Output of a short-lived `corral …` invocation.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `corral ARGS` with output to files in `dir`, killing it (by pid) if
/// it has not exited after `timeout`.
pub fn run_cli(dir: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    run_cli_with(dir, args, timeout, || {})
}

/// `run_cli`, calling `tick` at every poll (e.g. to reap a master that the
/// command waits for: an unreaped zombie still answers `kill(pid, 0)`).
pub fn run_cli_with(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
    mut tick: impl FnMut(),
) -> CliOutput {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("cli-{n}.stdout"));
    let err_path = dir.join(format!("cli-{n}.stderr"));
    let mut child = Command::new(corral_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create cli stdout file"))
        .stderr(File::create(&err_path).expect("create cli stderr file"))
        .spawn()
        .expect("spawn corral cli");
    let mut status = None;
    wait_until(timeout, || {
        tick();
        status = child.try_wait().expect("try_wait corral cli");
        status.is_some()
    });
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`corral {}` did not exit within {timeout:?}; stdout: {}; stderr: {}",
                args.join(" "),
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    CliOutput {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A running corral master started by this test, and everything it forked.
pub struct Corral {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pid_file: PathBuf,
    pub log_path: PathBuf,
    pub port: u16,
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

    /// Runs `corral ARGS -c CONFIG`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let cfg = self.config_str();
        let mut all: Vec<&str> = args.to_vec();
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

/// Convenience: `Shutdown::Both` ignoring errors.
pub fn close(s: TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
}

/// Echoes `msg` on `s`, or fails the test with the log tail.
pub fn must_echo(c: &Corral, s: &mut TcpStream, msg: &str) {
    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!("echo of {msg:?} failed: {other:?}\n{}", c.log_tail(40)),
    }
}

/// Which of `pids` holds the server side of each connection in `conns` (by socket
/// inode), or None where it cannot be told.
pub fn owners(c: &Corral, conns: &[TcpStream], pids: &[i32]) -> Vec<Option<i32>> {
    handover::owners_on(c.port, conns, pids)
}

/// Resident memory of a process in KiB (0 if it is gone).
pub fn vm_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// One worker as `corral status --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusWorker {
    pub pid: i32,
    pub slot: u64,
    pub generation: u64,
    pub state: String,
}

/// `corral status --json`: (master pid, generation, workers).
pub fn status(c: &Corral) -> (i32, u64, Vec<StatusWorker>) {
    let out = c.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "`corral status --json` failed: {:?}\n{}\n{}",
        out.status,
        out.all(),
        c.log_tail(40)
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`corral status --json` is not JSON ({e}): {}\n{}",
            out.stdout, out.stderr
        )
    });
    assert_eq!(v["ok"], serde_json::Value::Bool(true), "status: {v}");
    let master = v["master_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("status without master_pid: {v}")) as i32;
    let generation = v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("status without a generation: {v}"));
    let workers = v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status without workers: {v}"))
        .iter()
        .map(|w| StatusWorker {
            pid: w["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("worker pid: {w}")) as i32,
            slot: w["slot"]
                .as_u64()
                .unwrap_or_else(|| panic!("worker slot: {w}")),
            generation: w["generation"]
                .as_u64()
                .unwrap_or_else(|| panic!("worker generation: {w}")),
            state: w["state"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    (master, generation, workers)
}

/// Copies `src` to `dst` as an executable, through a `cp` child: a file this
/// (multi-threaded) process had open for writing could leak into a child another test
/// thread is forking, making exec of it fail with "Text file busy" until that child
/// execs.
pub fn install_exec(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp {} {}: {st:?}",
        src.display(),
        dst.display()
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
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

#[allow(dead_code)]
pub mod fault;
#[allow(dead_code)]
pub mod handover;
#[allow(dead_code)]
pub mod moves;
pub mod pp;
#[allow(dead_code)]
pub mod privs;
#[allow(dead_code)]
pub mod scale;
#[allow(dead_code)]
pub mod sysd;

#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod million;
#[allow(dead_code)]
pub mod xmaster;
