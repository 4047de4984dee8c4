//! corral as PID 1 of its own pid namespace (a container's init, here made with
//! `unshare --pid --fork --mount-proc`): a binary upgrade must not take the namespace
//! down. The old master, once drained, stays as a minimal init for the new one: it
//! holds no listener, forwards signals, follows later upgrades, and exits with the
//! master's exit status.
//!
//! Skipped, with the reason printed, where root or `unshare`/`nsenter` are missing.

use crate::common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const MARGIN: Duration = Duration::from_secs(10);
const RT_TIMEOUT: Duration = Duration::from_secs(10);

/// `unshare` and everything in its namespace: killed (by pid) on drop; `--kill-child`
/// takes the namespace's PID 1 and with it every process inside.
struct Container {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Container {
    fn bin(&self) -> PathBuf {
        self.dir.path().join("corral")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("corral.toml")
    }
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("corral.log")).unwrap_or_default()
    }
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
    /// The namespace's PID 1, by its host pid.
    fn init(&self) -> Option<ProcId> {
        live_children(self.child.id() as i32).into_iter().next()
    }
    /// `corral ARGS -c CONFIG` run inside the namespace (so pids agree).
    fn cli(&self, init: i32, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &init.to_string(), "-p", "-m"])
            .arg(self.bin())
            .args(args)
            .arg("-c")
            .arg(self.config())
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for t in ["unshare", "nsenter"] {
        if !have(t) {
            return Some(format!("{t} is not installed (util-linux)"));
        }
    }
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "cannot create a pid namespace here".into())
}

/// The pid inside its namespace of a host pid (last field of NSpid).
fn ns_pid(host: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{host}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The master among the live children of `init` (the one that is not a worker).
fn masters_under(init: i32) -> Vec<ProcId> {
    live_children(init)
        .into_iter()
        .filter(|p| proc_comm(p.pid).as_deref() != Some("corral-worker"))
        .collect()
}

fn must_echo_at(c: &Container, addr: std::net::SocketAddr, what: &str) {
    let mut s = connect(addr, Duration::from_secs(10)).expect("connect");
    match echo(&mut s, b"ping\n", Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!("{what}: {other:?}\n{}", c.log_tail()),
    }
}

fn upgraded_to(out: &str) -> Option<i32> {
    let rest = &out[out.find("upgraded: new master ")? + "upgraded: new master ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn pid1_master_upgrades_and_stays_as_init_for_its_successors() {
    if let Some(why) = skip_reason() {
        skipped(format_args!(
            "SKIPPED pid1_master_upgrades_and_stays_as_init_for_its_successors: {why}"
        ));
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("corral-pid1-")
        .tempdir()
        .expect("temp dir");
    install_exec(Path::new(corral_bin()), &dir.path().join("corral"));
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    fs::write(
        dir.path().join("corral.toml"),
        Conf::bare(1)
            .drain("2s")
            .pid_file(&dir.path().join("corral.pid").display().to_string())
            .render_on(port),
    )
    .expect("config");
    let log = File::create(dir.path().join("corral.log")).expect("log");
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(dir.path().join("corral"))
        .arg("-c")
        .arg(dir.path().join("corral.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn unshare");
    let mut c = Container { child, dir };

    assert!(
        wait_until(START_TIMEOUT, || c.init().is_some()
            && connect(addr, Duration::from_millis(200)).is_ok()),
        "corral did not start as PID 1\n{}",
        c.log_tail()
    );
    let init = c.init().expect("init");
    assert_eq!(
        ns_pid(init.pid),
        Some(1),
        "corral is not PID 1 of its namespace"
    );
    must_echo_at(&c, addr, "PID 1 master serves");

    // Upgrade with a connection open on the old master.
    let mut held = connect(addr, Duration::from_secs(10)).expect("connect");
    assert!(matches!(echo(&mut held, b"a\n", RT_TIMEOUT), Echo::Ok));
    let (ok, out) = c.cli(init.pid, &["-s", "upgrade"]);
    assert!(ok, "-s upgrade as PID 1 failed: {out}\n{}", c.log_tail());
    let gen2_ns = upgraded_to(&out).expect("upgraded: new master N");
    must_echo_at(&c, addr, "after the first upgrade");
    // The old master's connection moves to the new master's worker: it is neither
    // cut nor closed, and it goes on echoing...
    assert!(matches!(echo(&mut held, b"b\n", RT_TIMEOUT), Echo::Ok));
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || c
            .log()
            .contains("generation 1 gone after")),
        "the old generation did not hand its connection over\n{}",
        c.log_tail()
    );
    assert!(
        matches!(echo(&mut held, b"c\n", RT_TIMEOUT), Echo::Ok),
        "the moved connection stopped echoing\n{}",
        c.log_tail()
    );
    // ... and stays as init: same process, no listener, the new master its only child.
    let mut gen2 = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || {
            gen2 = masters_under(init.pid);
            proc_comm(init.pid).as_deref() == Some("corral-init")
                && live_children(init.pid).len() == 1
                && gen2.len() == 1
        }),
        "PID 1 did not become the init shim of the new master: comm {:?}, children {:?}\n{}",
        proc_comm(init.pid),
        live_children(init.pid),
        c.log_tail()
    );
    assert!(
        proc_alive(init),
        "PID 1 exited: the namespace would be gone"
    );
    assert_eq!(
        ns_pid(gen2[0].pid),
        Some(gen2_ns),
        "the shim's child is not the new master"
    );
    assert!(
        socket_inodes(init.pid).is_empty(),
        "the init shim still holds sockets: {:?}",
        socket_inodes(init.pid)
    );

    // A second upgrade, from the new master: its successor is followed too.
    let (ok, out) = c.cli(init.pid, &["-s", "upgrade"]);
    assert!(ok, "second -s upgrade failed: {out}\n{}", c.log_tail());
    let gen3_ns = upgraded_to(&out).expect("upgraded: new master N");
    let mut gen3 = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || {
            gen3 = masters_under(init.pid);
            !proc_alive(gen2[0]) && gen3.len() == 1
        }),
        "second new master not the shim's only master child: {:?}\n{}",
        masters_under(init.pid),
        c.log_tail()
    );
    assert_eq!(ns_pid(gen3[0].pid), Some(gen3_ns));
    assert!(
        wait_until(Duration::from_secs(5), || c
            .log()
            .contains("following its successor")),
        "the shim did not say it follows the next master\n{}",
        c.log_tail()
    );
    must_echo_at(&c, addr, "after the second upgrade");

    // Signals to PID 1 reach the master: SIGHUP reloads it.
    let reloads = c.log().matches("reloaded: generation").count();
    kill(Pid::from_raw(init.pid), Signal::SIGHUP).expect("SIGHUP");
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || c
            .log()
            .matches("reloaded: generation")
            .count()
            > reloads),
        "SIGHUP to PID 1 did not reload the master\n{}",
        c.log_tail()
    );
    must_echo_at(&c, addr, "after the forwarded reload");
    assert!(proc_alive(gen3[0]), "the master changed on reload");

    // The shim exits with the master's status: killed by SIGKILL -> 137.
    kill(Pid::from_raw(gen3[0].pid), Signal::SIGKILL).expect("SIGKILL");
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || {
            status = c.child.try_wait().ok().flatten();
            status.is_some()
        }),
        "PID 1 did not exit after its master died\n{}",
        c.log_tail()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(137),
        "exit status of the namespace's init: {status:?}\n{}",
        c.log_tail()
    );
    eprintln!("log:\n{}", c.log_tail());
}
