//! A real systemd (the distribution's, booted as PID 1 of private namespaces by
//! `../shared/systemd-ns/run-systemd-ns.sh`) running corral from the shipped unit
//! files, for the tests in `tests/systemd_real.rs`.
//!
//! Each `SystemdNs` has its own state folder and its own install folder under
//! `/var/lib` (the unit's `PrivateTmp=yes` hides /tmp from the service), and its
//! Drop kills that systemd and everything under it and removes both folders. Clients
//! reach the service's private network namespace from a thread that joins it with
//! `setns(CLONE_NEWNET)` (network namespaces are per thread), so tests use ordinary
//! `TcpStream`s.

use super::skipped;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{corral_bin, install_exec, wait_until};

/// The port the test configs listen on (the network namespace is private).
pub const PORT: u16 = 7070;

/// Where the boot script lives, relative to the repository root.
const SCRIPT: &str = "../shared/systemd-ns/run-systemd-ns.sh";

/// How long one `systemctl`/`exec` call may take on a loaded box.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the boot script is: `../shared` beside the clone, or, in a git worktree,
/// beside the main clone (`SYSTEMD_NS_SCRIPT` overrides both).
fn script_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SYSTEMD_NS_SCRIPT") {
        return Ok(PathBuf::from(p));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut tried = vec![repo.join(SCRIPT)];
    // A worktree's .git is a file naming <main clone>/.git/worktrees/<name>.
    if let Ok(dotgit) = fs::read_to_string(repo.join(".git")) {
        if let Some(dir) = dotgit.trim().strip_prefix("gitdir: ") {
            if let Some(main) = Path::new(dir).ancestors().nth(3) {
                tried.push(main.join(SCRIPT));
            }
        }
    }
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| format!("no {SCRIPT} (looked for {tried:?})"))
}

/// The boot script, or why these tests cannot run here.
pub fn available() -> Result<PathBuf, String> {
    let script = script_path()?;
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: booting systemd in namespaces needs root".into());
    }
    for tool in ["unshare", "nsenter", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("{tool} is not installed (util-linux)"));
        }
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Err("/lib/systemd/systemd is missing (package systemd)".into());
    }
    // Creating the namespaces is the last thing that can be missing (an unprivileged
    // container); try it.
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--net", "--cgroup", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("cannot create pid/mount/net/cgroup namespaces here".into());
    }
    Ok(script)
}

/// Returns the boot script, or prints why the test is skipped and returns None.
pub fn or_skip(test: &str) -> Option<PathBuf> {
    match available() {
        Ok(s) => Some(s),
        Err(why) => {
            skipped(format_args!("SKIPPED {test}: {why}"));
            None
        }
    }
}

/// Options for the unit under test.
#[derive(Clone, Debug, Default)]
pub struct UnitOpts {
    /// `WatchdogSec=` (the shipped value when None).
    pub watchdog: Option<String>,
    /// `TimeoutStopSec=` (the shipped value when None).
    pub timeout_stop: Option<String>,
    /// Install `corral.socket` too.
    pub socket: bool,
}

/// One systemd in its namespaces, with corral installed for it.
pub struct SystemdNs {
    script: PathBuf,
    /// `/var/lib/corral-test-<unique>`: binary, config, units, state, log.
    pub root: PathBuf,
    /// systemd's pid on the host, to enter its namespaces.
    host_pid: i32,
    /// The binary and config the unit runs: in `root`, or where a package put them.
    bin: PathBuf,
    config: PathBuf,
}

/// The installed binary, config and log inside `root` (same paths inside and out).
impl SystemdNs {
    pub fn bin(&self) -> PathBuf {
        self.bin.clone()
    }
    pub fn config(&self) -> PathBuf {
        self.config.clone()
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("corral.log")
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- corral log (last {n} lines) ---\n{}\n--- systemd console (tail) ---\n{}",
            lines[from..].join("\n"),
            self.console_tail(15)
        )
    }
    fn console_tail(&self, n: usize) -> String {
        let c = fs::read_to_string(self.root.join("state/systemd.console")).unwrap_or_default();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Installs corral (the built binary, `config`, the shipped units adapted to the
    /// test) and boots systemd. Panics with the console if systemd does not come up.
    pub fn boot(script: &Path, config: &str, opts: &UnitOpts) -> SystemdNs {
        let mut ns = SystemdNs::prepare(script, None);
        install_exec(Path::new(corral_bin()), &ns.bin());
        fs::write(ns.config(), config).expect("write config");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let unit = fs::read_to_string(repo.join("systemd/corral.service")).expect("unit");
        fs::write(
            ns.root.join("units/corral.service"),
            adapt_service(&unit, &ns.bin(), &ns.config(), &ns.log_path(), opts),
        )
        .expect("write unit");
        if opts.socket {
            let sock = fs::read_to_string(repo.join("systemd/corral.socket")).expect("socket");
            fs::write(ns.root.join("units/corral.socket"), adapt_common(&sock)).expect("write");
        }
        ns.start();
        ns
    }

    /// Boots systemd with `service` (e.g. the unit a package installs, which runs
    /// `bin` with `config` where the package puts them) as its corral.service, in the
    /// namespace's /etc/systemd/system, adapted like the shipped one (no default
    /// dependencies, log to a file).
    pub fn boot_unit(script: &Path, service: &str, bin: &Path, config: &Path) -> SystemdNs {
        let mut ns = SystemdNs::prepare(script, Some((bin, config)));
        let unit = adapt_service(service, bin, config, &ns.log_path(), &UnitOpts::default());
        fs::write(ns.root.join("units/corral.service"), unit).expect("write unit");
        ns.start();
        ns
    }

    /// A fresh root with its units and state folders; the binary and config are in
    /// it unless `installed` names them.
    fn prepare(script: &Path, installed: Option<(&Path, &Path)>) -> SystemdNs {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(n);
            h.finish() % 1_000_000
        };
        let root = PathBuf::from(format!(
            "/var/lib/corral-test-{}-{n}-{nonce}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("units")).expect("create install dir");
        fs::create_dir_all(root.join("state")).expect("create state dir");
        let (bin, config) = match installed {
            Some((b, c)) => (b.to_path_buf(), c.to_path_buf()),
            None => (root.join("corral"), root.join("corral.toml")),
        };
        // From here on Drop cleans up, even if booting fails.
        SystemdNs {
            script: script.to_path_buf(),
            root,
            host_pid: 0,
            bin,
            config,
        }
    }

    /// Boots systemd on the units written in `root/units` (plus the target it boots
    /// into). Panics with the console if systemd does not come up.
    fn start(&mut self) {
        let ns = self;
        let target = ns
            .script
            .parent()
            .expect("script dir")
            .join("system/corral-test.target");
        fs::copy(&target, ns.root.join("units/corral-test.target")).expect("copy target");
        let out = ns.script_cmd(&["start"]);
        let pid = fs::read_to_string(ns.root.join("state/systemd.pid")).unwrap_or_default();
        ns.host_pid = pid.trim().parse().unwrap_or(0);
        assert!(
            ns.host_pid > 0 && (out.contains("(running)") || out.contains("(degraded)")),
            "systemd did not boot: {out}\n{}",
            ns.console_tail(40)
        );
    }

    fn script_cmd(&self, args: &[&str]) -> String {
        let out = run_bounded(
            Command::new(&self.script)
                .args(args)
                .env("STATE", self.root.join("state"))
                .env("UNITS", self.root.join("units"))
                .env("SYSTEMD_NS_MAX_S", "300"),
            EXEC_TIMEOUT,
        );
        format!("{}{}", out.1, out.2)
    }

    /// Runs a command inside systemd's namespaces; (success, stdout, stderr).
    pub fn exec(&self, args: &[&str]) -> (bool, String, String) {
        let t = self.host_pid.to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &t, "-a"]).args(args);
        run_bounded(&mut cmd, EXEC_TIMEOUT)
    }

    /// `systemctl ARGS` inside; panics with the output if it fails.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.exec(&all);
        assert!(
            ok,
            "systemctl {} failed: {out}{err}\n{}",
            args.join(" "),
            self.log_tail(30)
        );
        out
    }

    /// Properties of `unit` (`systemctl show -p …`).
    pub fn show(&self, unit: &str, props: &[&str]) -> HashMap<String, String> {
        let (_, out, _) = self.exec(&["systemctl", "show", unit, "-p", &props.join(",")]);
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One property of corral.service.
    pub fn prop(&self, p: &str) -> String {
        self.show("corral.service", &[p])
            .remove(p)
            .unwrap_or_default()
    }

    pub fn main_pid(&self) -> i32 {
        self.prop("MainPID").parse().unwrap_or(0)
    }

    /// Waits until `prop` of corral.service is `want`.
    pub fn wait_prop(&self, prop: &str, want: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.prop(prop) == want)
    }

    /// Pids (in the namespace) of every process named corral*, with their names.
    pub fn corral_processes(&self) -> Vec<(i32, String)> {
        let (_, out, _) = self.exec(&["ps", "-e", "-o", "pid=,stat=,comm="]);
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let pid = f.next()?.parse().ok()?;
                let stat = f.next()?;
                let comm = f.next()?.to_string();
                (comm.starts_with("corral") && !stat.starts_with('Z')).then_some((pid, comm))
            })
            .collect()
    }

    /// The parent (in the namespace) of `pid`.
    pub fn ppid(&self, pid: i32) -> Option<i32> {
        let (_, out, _) = self.exec(&["ps", "-o", "ppid=", "-p", &pid.to_string()]);
        out.trim().parse().ok()
    }

    /// Connects to the service inside the namespace, from a thread that joined
    /// systemd's network namespace.
    pub fn connect(&self) -> io::Result<TcpStream> {
        let netns = fs::File::open(format!("/proc/{}/ns/net", self.host_pid))?;
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            super::connect(
                std::net::SocketAddr::from(([127, 0, 0, 1], PORT)),
                Duration::from_secs(10),
            )
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("connect thread panicked")))
    }

    /// `corral ARGS -c CONFIG` inside the namespace (e.g. `-s upgrade`). `-s reload`
    /// and `-s upgrade` get `--no-wait`, as in the harness: these tests watch the old
    /// generation or master drain, which following the move would wait out.
    pub fn corral(&self, args: &[&str]) -> (bool, String) {
        let bin = self.bin();
        let cfg = self.config();
        let mut all = vec![bin.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let follows = args
            .windows(2)
            .any(|w| w[0] == "-s" && matches!(w[1], "reload" | "upgrade"));
        if follows && !args.contains(&"--no-wait") {
            all.push("--no-wait");
        }
        all.extend(["-c", cfg.to_str().expect("utf-8 path")]);
        let (ok, out, err) = self.exec(&all);
        (ok, format!("{out}{err}"))
    }
}

impl Drop for SystemdNs {
    fn drop(&mut self) {
        if self.root.join("state/timeout.pid").exists() {
            let _ = self.script_cmd(&["stop"]);
        }
        if std::env::var_os("CORRAL_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {}", self.root.display());
        }
    }
}

/// Runs `cmd` with piped output, killing it (by pid) after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let o = stdout.join().unwrap_or_default();
    let e = reader.join().unwrap_or_default();
    match status {
        Some(s) => (s.success(), o, e),
        None => (false, o, format!("{e}\n(killed after {timeout:?})")),
    }
}

/// Units here boot into corral-test.target: no default dependencies, no network-online.
fn adapt_common(unit: &str) -> String {
    let mut out = String::new();
    for l in unit.lines() {
        if l.starts_with("After=network-online") || l.starts_with("Wants=network-online") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l.trim() == "[Unit]" {
            out.push_str("DefaultDependencies=no\n");
        }
    }
    out
}

/// The shipped service with the test's paths, its log in a file, and `opts`.
fn adapt_service(unit: &str, bin: &Path, cfg: &Path, log: &Path, opts: &UnitOpts) -> String {
    let unit = unit
        .replace("/usr/local/bin/corral", &bin.display().to_string())
        .replace("/etc/corral/corral.toml", &cfg.display().to_string());
    let mut out = String::new();
    for l in adapt_common(&unit).lines() {
        let l = match (l.split_once('=').map(|(k, _)| k), opts) {
            (
                Some("WatchdogSec"),
                UnitOpts {
                    watchdog: Some(w), ..
                },
            ) => format!("WatchdogSec={w}"),
            (
                Some("TimeoutStopSec"),
                UnitOpts {
                    timeout_stop: Some(t),
                    ..
                },
            ) => format!("TimeoutStopSec={t}"),
            _ => l.to_string(),
        };
        out.push_str(&l);
        out.push('\n');
        if l.trim() == "[Service]" {
            out.push_str(&format!("StandardError=append:{}\n", log.display()));
        }
    }
    out
}

/// How a connection ended while we waited for it, reading (and discarding nothing:
/// any data is an error) until `timeout`.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Orderly close (FIN): what a drain ends with.
    Eof(Duration),
    /// RST: a connection lost.
    Reset(Duration),
    StillOpen,
    Other(String),
}

pub fn wait_ending(s: &mut TcpStream, timeout: Duration) -> Ending {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = (t0 + timeout).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::StillOpen;
        }
        if let Err(e) = s.set_read_timeout(Some(left)) {
            return Ending::Other(e.to_string());
        }
        match s.read(&mut buf) {
            Ok(0) => return Ending::Eof(t0.elapsed()),
            Ok(n) => {
                return Ending::Other(format!(
                    "unexpected data: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if super::is_timeout(&e) => {}
            Err(e) if super::is_reset(&e) => return Ending::Reset(t0.elapsed()),
            Err(e) => return Ending::Other(e.to_string()),
        }
    }
}
