//! A real systemd (the distribution's `/lib/systemd/systemd`, booted here as PID 1 of
//! fresh pid, mount, uts, ipc, net and cgroup namespaces) running corral from the
//! shipped unit files, for `tests/systemd_real.rs` and `tests/deb.rs`. The boot is the
//! repository's own (no script outside it): `unshare` starts a small `sh` that mounts
//! a private /run, binds the test's unit folder over /etc/systemd/system and execs
//! systemd into `corral-test.target`; `nsenter` runs commands inside. Each instance
//! first moves into cgroups of its own (one per hierarchy), so the systemd inside
//! manages that subtree and nothing of the host's, and `timeout` bounds its life.
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

use super::{corral_bin, install_exec, wait_until, Conf};

/// The port the test configs listen on (the network namespace is private).
pub const PORT: u16 = 7070;

/// The target systemd boots into: no default dependencies (there is no basic.target
/// in these namespaces).
const TARGET: &str = "[Unit]\nDescription=corral test target\nDefaultDependencies=no\n";

/// PID 1's first steps inside the namespaces (private mount propagation): its own /run,
/// the test's units as /etc/systemd/system, loopback up, then systemd.
const INNER: &str = "set -e
umount -R /sys/fs/cgroup || true
mount -t tmpfs tmpfs /run
mount --bind \"$UNITS\" /etc/systemd/system
ip link set lo up 2>/dev/null || true
export container=corral-test
exec /lib/systemd/systemd --log-target=console --log-level=info --unit=corral-test.target --show-status=no";

/// The longest one systemd may live (a test that hangs still ends).
const MAX_LIFE_S: &str = "300";

/// How long one `systemctl`/`exec` call may take on a loaded box.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A proof that systemd can be booted here (returned by [`available`]).
pub struct Boot(());

/// Whether systemd can be booted here, or why these tests cannot run.
pub fn available() -> Result<Boot, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: booting systemd in namespaces needs root".into());
    }
    for tool in ["unshare", "nsenter", "timeout", "ps", "mount"] {
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
    Ok(Boot(()))
}

/// Whether systemd can be booted here, or prints why the test is skipped and returns
/// None.
pub fn or_skip(test: &str) -> Option<Boot> {
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
    /// `timeout` (whose child is `unshare`, whose child is systemd); killed and reaped
    /// on drop.
    boot: Option<std::process::Child>,
    /// This instance's cgroup in each hierarchy, removed on drop.
    cgroups: Vec<PathBuf>,
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

    /// Writes `conf` as the installed config, with what the namespace fixes: the
    /// echo listener on `PORT` and the pid file where the shipped unit looks for it.
    pub fn write_config(&self, conf: &Conf) {
        let body = conf
            .clone()
            .pid_file("/run/corral/corral.pid")
            .render_on(PORT);
        fs::write(self.config(), body).expect("write config");
    }

    /// Installs corral (the built binary, `conf` as `write_config` writes it, the
    /// shipped units adapted to the test) and boots systemd. Panics with the console
    /// if systemd does not come up.
    pub fn boot(_: &Boot, conf: &Conf, opts: &UnitOpts) -> SystemdNs {
        let mut ns = SystemdNs::prepare(None);
        install_exec(Path::new(corral_bin()), &ns.bin());
        ns.write_config(conf);
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
    pub fn boot_unit(_: &Boot, service: &str, bin: &Path, config: &Path) -> SystemdNs {
        let mut ns = SystemdNs::prepare(Some((bin, config)));
        let unit = adapt_service(service, bin, config, &ns.log_path(), &UnitOpts::default());
        fs::write(ns.root.join("units/corral.service"), unit).expect("write unit");
        ns.start();
        ns
    }

    /// A fresh root with its units and state folders; the binary and config are in
    /// it unless `installed` names them.
    fn prepare(installed: Option<(&Path, &Path)>) -> SystemdNs {
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
            boot: None,
            cgroups: Vec::new(),
            root,
            host_pid: 0,
            bin,
            config,
        }
    }

    /// Boots systemd on the units written in `root/units` (plus the target it boots
    /// into). Panics with the console if systemd does not come up.
    fn start(&mut self) {
        fs::write(self.root.join("units/corral-test.target"), TARGET).expect("write target");
        self.cgroups = own_cgroups(&self.root);
        let console = fs::File::create(self.root.join("state/systemd.console")).expect("console");
        // sh moves itself into this instance's cgroups (so the systemd it becomes
        // manages them as its root), then becomes `timeout`, which bounds the rest.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#"for d in "$@"; do echo $$ > "$d/cgroup.procs" 2>/dev/null; done
exec timeout --kill-after=5 "$MAX_LIFE_S" unshare --fork --kill-child=SIGKILL --pid --mount \
  --propagation private --uts --ipc --net --cgroup --mount-proc sh -c "$INNER""#,
            )
            .arg("sh")
            .args(&self.cgroups)
            .env("UNITS", self.root.join("units"))
            .env("INNER", INNER)
            .env("MAX_LIFE_S", MAX_LIFE_S)
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("dup console"))
            .stderr(console);
        let child = cmd.spawn().expect("spawn unshare");
        let timeout_pid = child.id() as i32;
        self.boot = Some(child);
        // timeout → unshare → systemd (PID 1 inside).
        let mut systemd = 0;
        wait_until(Duration::from_secs(20), || {
            systemd = child_of(timeout_pid).and_then(child_of).unwrap_or(0);
            systemd > 0
        });
        self.host_pid = systemd;
        let mut state = String::new();
        let up = systemd > 0
            && wait_until(EXEC_TIMEOUT, || {
                state = self.exec(&["systemctl", "is-system-running"]).1;
                matches!(state.trim(), "running" | "degraded")
            });
        assert!(
            up,
            "systemd did not boot (host pid {systemd}, state {state:?})\n{}",
            self.console_tail(40)
        );
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
        if let Some(mut boot) = self.boot.take() {
            // Killing PID 1 ends its namespace and everything in it; then `unshare` and
            // `timeout` exit, and reaping `timeout` says so.
            if self.host_pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.host_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let gone = wait_until(Duration::from_secs(30), || {
                boot.try_wait().ok().flatten().is_some()
            });
            if !gone {
                let _ = boot.kill();
                let _ = boot.wait();
            }
        }
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
        if std::env::var_os("CORRAL_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {}", self.root.display());
        }
    }
}

/// The first child of `pid` (from `ps`, as the kernel's children list may be absent).
fn child_of(pid: i32) -> Option<i32> {
    let out = Command::new("ps")
        .args(["-o", "pid=", "--ppid", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Makes a cgroup for this instance (named after its root folder) under this
/// process's cgroup in every mounted hierarchy (cgroup v1 controllers, the named
/// systemd hierarchy, the unified v2 one), and returns their paths.
fn own_cgroups(root: &Path) -> Vec<PathBuf> {
    let name = root
        .file_name()
        .expect("root name")
        .to_string_lossy()
        .to_string();
    let mine = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    let Ok(dirs) = fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for d in dirs.flatten() {
        let h = d.path();
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let base = d.file_name().to_string_lossy().to_string();
        // "ID:CONTROLLERS:PATH": v1 names its controllers (or name=systemd); v2 is "0::".
        let within = mine.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (id, ctl, path) = (f.next()?, f.next()?, f.next()?);
            let hit = ctl
                .split(',')
                .any(|c| c == base || c == format!("name={base}"))
                || (base == "unified" && id == "0");
            hit.then(|| path.trim_start_matches('/').to_string())
        });
        let Some(within) = within else { continue };
        let dir = h.join(within).join(&name);
        if fs::create_dir_all(&dir).is_ok() {
            out.push(dir);
        }
    }
    // Unified-only hosts mount v2 at /sys/fs/cgroup itself.
    if out.is_empty() && Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        let within = mine
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let dir = Path::new("/sys/fs/cgroup").join(within).join(&name);
        if fs::create_dir_all(&dir).is_ok() {
            out.push(dir);
        }
    }
    out
}

/// Removes a cgroup and the ones systemd made in it, deepest first; a cgroup whose
/// last process is still exiting is busy for a moment, so each try is retried.
fn remove_cgroup(cg: &Path) {
    fn dirs(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs(&e.path(), out);
                }
            }
        }
        out.push(p.to_path_buf());
    }
    wait_until(Duration::from_secs(10), || {
        let mut all = Vec::new();
        dirs(cg, &mut all);
        for d in &all {
            let _ = fs::remove_dir(d);
        }
        !cg.exists()
    });
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
