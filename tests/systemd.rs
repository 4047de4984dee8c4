//! Running under a service manager, or alone: sd-notify messages through a
//! `NOTIFY_SOCKET` sink, socket activation through `systemd-socket-activate`,
//! daemon mode, and `systemd-analyze verify` of the shipped units.
//!
//! Tests that need a systemd tool skip (with a message) only where the tool is
//! missing. Processes the harness does not start (daemons, socket-activated
//! masters) are found by their command line, which names the test's own temp dir,
//! and killed by pid at the end whatever the outcome.

use crate::common;

use std::fs;
use std::io::{ErrorKind, IoSliceMut};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::Pid;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Live processes whose command line mentions `marker` (a test's unique temp dir).
fn procs_mentioning(marker: &str) -> Vec<ProcId> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmd).contains(marker) {
            continue;
        }
        if let Some(p) = proc_id(pid) {
            if proc_alive(p) {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Owns a temp dir; at drop, kills (by pid) every live process whose command line
/// names it — a daemon, a socket-activated master, their workers — and reaps the
/// child it was given, if any.
struct ProcGuard {
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

impl ProcGuard {
    fn new(prefix: &str) -> ProcGuard {
        ProcGuard {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("create temp dir"),
            child: Mutex::new(None),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn marker(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn ours(&self) -> Vec<ProcId> {
        procs_mentioning(&self.marker())
    }

    fn set_child(&self, c: Child) {
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// Exit status of the child, reaping it if it exited.
    fn child_exited(&self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        c.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        for _round in 0..3 {
            let left = self.ours();
            if left.is_empty() {
                break;
            }
            // Freeze them all first, so that no master forks while we kill.
            for p in &left {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
            }
            for p in self.ours() {
                eprintln!("[systemd] cleanup: killing leftover {}", p.pid);
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            wait_until(Duration::from_secs(3), || self.ours().is_empty());
        }
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn must_echo(s: &mut TcpStream, msg: &str, what: &str) {
    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!("{what}: echo of {msg:?} failed: {other:?}"),
    }
}

fn assert_refused(port: u16, what: &str) {
    match TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("{what}: connect to {port}: unexpected error {e}"),
        Ok(_) => panic!("{what}: port {port} still accepts connections"),
    }
}

/// Inodes of the listening (state 0A) IPv4 TCP sockets on 127.0.0.1:`port`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let Ok(tcp) = fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    let local = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].parse().ok())?
        })
        .collect()
}

fn tool(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

// ---------------------------------------------------------------------------
// 6. sd-notify: READY, RELOADING -> READY, MAINPID on upgrade, STOPPING
// ---------------------------------------------------------------------------

/// One datagram received on the notify socket: its sender (SCM_CREDENTIALS) and
/// its assignments.
#[derive(Clone, Debug)]
struct Note {
    pid: Option<i32>,
    vars: Vec<String>,
}

impl Note {
    fn has(&self, kv: &str) -> bool {
        self.vars.iter().any(|v| v == kv)
    }
    fn has_key(&self, k: &str) -> bool {
        self.vars.iter().any(|v| v.split('=').next() == Some(k))
    }
}

/// A NOTIFY_SOCKET sink: a datagram socket in the test's temp dir, read by a thread.
struct Sink {
    path: PathBuf,
    notes: Arc<Mutex<Vec<Note>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn bind(path: PathBuf) -> Sink {
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        setsockopt(&sock, sockopt::PassCred, &true).expect("SO_PASSCRED");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let notes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (notes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let (len, pid) = match recvmsg::<UnixAddr>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) {
                    Ok(m) => {
                        let mut pid = None;
                        if let Ok(cm) = m.cmsgs() {
                            for c in cm {
                                if let ControlMessageOwned::ScmCredentials(cred) = c {
                                    pid = Some(cred.pid());
                                }
                            }
                        }
                        (m.bytes, pid)
                    }
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("[systemd] notify sink: recvmsg: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let vars = text
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                n.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Note { pid, vars });
            }
        });
        Sink {
            path,
            notes,
            stop,
            thread: Some(thread),
        }
    }

    fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Index of the first note at or after `from` that satisfies `f`.
    fn find(&self, from: usize, f: impl Fn(&Note) -> bool) -> Option<usize> {
        self.notes()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, n)| f(n))
            .map(|(i, _)| i)
    }

    /// Waits for a note at or after `from` that satisfies `f`.
    fn wait(&self, from: usize, what: &str, f: impl Fn(&Note) -> bool) -> usize {
        let mut at = None;
        wait_until(Duration::from_secs(20), || {
            at = self.find(from, &f);
            at.is_some()
        });
        at.unwrap_or_else(|| {
            panic!(
                "no {what} notification (from #{from}); got:\n{}",
                self.dump()
            )
        })
    }

    fn dump(&self) -> String {
        self.notes()
            .iter()
            .enumerate()
            .map(|(i, n)| format!("  #{i} from {:?}: {}", n.pid, n.vars.join(" | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn sd_notify_ready_reload_upgrade_stop() {
    let sink_dir = tempfile::Builder::new()
        .prefix("corral-notify-")
        .tempdir()
        .expect("temp dir");
    let sink = Sink::bind(sink_dir.path().join("notify.sock"));
    // A copy of the binary, so that the upgrade execs a path this test owns.
    let bin = sink_dir.path().join("corral");
    install_exec(Path::new(corral_bin()), &bin);
    let c = Corral::start_with(
        &Conf::new(2).render(),
        Launch {
            binary: Some(bin.clone()),
            env: vec![("NOTIFY_SOCKET".into(), sink.path.display().to_string())],
            ..Launch::default()
        },
    );
    let master = c.master_pid();

    // Serving: READY=1 with the master's pid, and a STATUS.
    let ready = sink.wait(0, "READY=1", |n| n.has("READY=1"));
    let notes = sink.notes();
    assert_eq!(
        notes[ready].pid,
        Some(master),
        "READY=1 not sent by the master {master}:\n{}",
        sink.dump()
    );
    assert!(
        notes[..=ready]
            .iter()
            .any(|n| n.has(&format!("MAINPID={master}"))),
        "no MAINPID={master} up to READY:\n{}",
        sink.dump()
    );
    assert!(
        notes[ready].has_key("STATUS"),
        "READY without STATUS:\n{}",
        sink.dump()
    );
    assert!(
        sink.find(0, |n| n.has("RELOADING=1") || n.has("STOPPING=1"))
            .is_none(),
        "RELOADING/STOPPING before any reload:\n{}",
        sink.dump()
    );

    // Reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    c.must_reload();
    let reloading = sink.wait(ready + 1, "RELOADING=1", |n| n.has("RELOADING=1"));
    assert!(
        sink.notes()[reloading].has_key("MONOTONIC_USEC"),
        "RELOADING=1 without MONOTONIC_USEC:\n{}",
        sink.dump()
    );
    let reloaded = sink.wait(reloading + 1, "READY=1 after RELOADING", |n| {
        n.has("READY=1")
    });

    // Upgrade: MAINPID=<new> (from the old master, before it exits), and READY=1 from
    // the new master itself.
    let new = c.must_upgrade();
    assert_eq!(c.read_pid_file(), Some(new));
    let mainpid = sink.wait(reloaded + 1, "MAINPID=<new>", |n| {
        n.has(&format!("MAINPID={new}"))
    });
    let new_ready = sink.wait(reloaded + 1, "READY=1 from the new master", |n| {
        n.has("READY=1") && n.pid == Some(new)
    });
    // The old master hands the service over before it answers `-s upgrade`.
    let handover = sink.wait(reloaded + 1, "MAINPID=<new> from the old master", |n| {
        n.pid == Some(master) && n.has(&format!("MAINPID={new}"))
    });
    // The old master leaves quietly: nothing it sends may look like the service stopping.
    assert!(
        wait_until(Duration::from_secs(5) + MARGIN, || c.master_exited()),
        "old master still running after the upgrade\n{}",
        c.log_tail(40)
    );

    // Stop the new master: STOPPING=1, from it.
    let before_stop = sink.notes().len();
    let new_id = proc_id(new).expect("new master runs");
    let new_workers = c.workers_of(new);
    let out = c.cli(&["-s", "stop"]);
    assert!(out.status.success(), "-s stop: {}", out.all());
    let stopping = sink.wait(before_stop, "STOPPING=1", |n| n.has("STOPPING=1"));
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || !proc_alive(new_id)
            && new_workers.iter().all(|w| !proc_alive(*w))),
        "new master or workers left after -s stop"
    );
    let notes = sink.notes();
    eprintln!("notifications:\n{}", sink.dump());
    assert_eq!(
        notes[stopping].pid,
        Some(new),
        "STOPPING=1 not from the new master:\n{}",
        sink.dump()
    );
    let stops: Vec<usize> = notes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.has("STOPPING=1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        stops,
        vec![stopping],
        "STOPPING=1 sent other than by the final stop (the old master must not send it \
         on hand-over):\n{}",
        sink.dump()
    );
    assert!(
        ready < reloading
            && reloading < reloaded
            && reloaded < mainpid
            && reloaded < new_ready
            && mainpid <= handover
            && handover < stopping
            && mainpid < stopping
            && new_ready < stopping,
        "out of order: READY #{ready}, RELOADING #{reloading}, READY #{reloaded}, \
         MAINPID #{mainpid} (old master's #{handover}), new READY #{new_ready}, STOPPING #{stopping}:\n{}",
        sink.dump()
    );
}

#[test]
fn sd_notify_watchdog_pings_follow_the_main_process_across_an_upgrade() {
    let dir = tempfile::Builder::new()
        .prefix("corral-watchdog-")
        .tempdir()
        .expect("temp dir");
    let sink = Sink::bind(dir.path().join("notify.sock"));
    // systemd sets WATCHDOG_PID to the main pid; a wrapper that execs corral (same
    // pid) plays that part. The upgrade then execs the copy, not the wrapper.
    let bin = dir.path().join("corral");
    install_exec(Path::new(corral_bin()), &bin);
    let wrapper = dir.path().join("start-corral");
    let src = dir.path().join("start-corral.src");
    fs::write(
        &src,
        format!("#!/bin/sh\nWATCHDOG_PID=$$ exec {} \"$@\"\n", bin.display()),
    )
    .expect("write wrapper");
    install_exec(&src, &wrapper);
    // As with WatchdogSec=1s: the master must ping at least every second.
    let c = Corral::start_with(
        &Conf::new(1).render(),
        Launch {
            binary: Some(wrapper),
            env: vec![
                ("NOTIFY_SOCKET".into(), sink.path.display().to_string()),
                ("WATCHDOG_USEC".into(), "1000000".into()),
            ],
            ..Launch::default()
        },
    );
    let master = c.master_pid();
    let pings = |pid: i32| {
        sink.notes()
            .iter()
            .filter(|n| n.has("WATCHDOG=1") && n.pid == Some(pid))
            .count()
    };
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || pings(master) >= 3),
        "{} WATCHDOG=1 from the master in {:?} (WATCHDOG_USEC=1s):\n{}",
        pings(master),
        t0.elapsed(),
        sink.dump()
    );
    eprintln!("3 watchdog pings from {master} in {:?}", t0.elapsed());

    let new = c.must_upgrade();
    let t1 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || pings(new) >= 3),
        "{} WATCHDOG=1 from the new master {new} in {:?}: systemd would kill the service \
         after an upgrade:\n{}",
        pings(new),
        t1.elapsed(),
        sink.dump()
    );
    eprintln!(
        "3 watchdog pings from the new master {new} in {:?}",
        t1.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 7. Socket activation
// ---------------------------------------------------------------------------

#[test]
fn socket_activation_with_systemd_socket_activate() {
    socket_activation_case(None);
}

/// As `systemd/corral.socket` does it: the socket is named (`FileDescriptorName=`) and
/// matched to the `[[listen]]` entry of that name.
#[test]
fn socket_activation_matches_a_named_socket() {
    socket_activation_case(Some("echo"));
}

fn socket_activation_case(fdname: Option<&str>) {
    let Some(activate) = tool("systemd-socket-activate") else {
        skipped(format_args!(
            "SKIPPED: systemd-socket-activate not installed (apt-get install systemd)"
        ));
        return;
    };
    let g = ProcGuard::new("corral-sockact-");
    let cfg = g.path().join("corral.toml");
    let err = g.path().join("stderr");
    let pid_file = g.path().join("corral.pid");

    // systemd-socket-activate binds, then execs corral on the first connection.
    let mut started = None;
    for _attempt in 0..5 {
        let port = free_port();
        let mut conf = Conf::bare(2)
            .drain("10s")
            .stop("3s")
            .pid_file(&g.path().join("corral.pid").display().to_string());
        if let Some(name) = fdname {
            conf = conf.echo(&format!("name = \"{name}\""));
        }
        let body = conf.render_on(port);
        fs::write(&cfg, body).expect("write config");
        let mut cmd = Command::new(&activate);
        cmd.arg("-l").arg(format!("127.0.0.1:{port}"));
        if let Some(name) = fdname {
            cmd.arg(format!("--fdname={name}"));
        }
        let child = cmd
            .arg(corral_bin())
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn systemd-socket-activate");
        let pid = child.id() as i32;
        g.set_child(child);
        let listening = wait_until(Duration::from_secs(10), || {
            g.child_exited().is_some()
                || fs::read_to_string(&err)
                    .unwrap_or_default()
                    .contains("Listening on")
        });
        if g.child_exited().is_none() && listening {
            started = Some((port, pid));
            break;
        }
        eprintln!(
            "systemd-socket-activate on {port} did not listen: {}",
            fs::read_to_string(&err).unwrap_or_default()
        );
    }
    let (port, pid) = started.expect("systemd-socket-activate never listened");
    let log = || fs::read_to_string(&err).unwrap_or_default();

    // The socket it bound, before corral exists.
    let bound = listening_inodes(port);
    assert_eq!(bound.len(), 1, "listening sockets on {port}: {bound:?}");
    let bound = bound[0];
    assert!(
        socket_inodes(pid).contains(&bound),
        "systemd-socket-activate does not hold the listener"
    );

    // The first connection starts corral, and is served once it runs.
    let mut s = connect((Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(10))
        .expect("connect to the activated socket");
    must_echo(&mut s, "first, activating connection\n", "activation");
    assert!(
        wait_until(Duration::from_secs(20), || read_pid(&pid_file) == Some(pid)
            && live_children(pid).len() == 2),
        "corral (pid {pid}) not serving with 2 workers: pid file {:?}, children {:?}\n{}",
        read_pid(&pid_file),
        live_children(pid),
        log()
    );
    let used = log()
        .lines()
        .find(|l| l.contains("using passed-in socket"))
        .map(str::to_string);
    assert!(
        used.is_some(),
        "corral did not say it uses the passed-in socket:\n{}",
        log()
    );
    if let Some(name) = fdname {
        let used = used.unwrap_or_default();
        eprintln!("passed-in socket: {used}");
        assert!(
            used.contains(&format!("name=\"{name}\"")) || used.contains(&format!("name={name}")),
            "the passed-in socket was not matched by its name {name:?}: {used}"
        );
    }
    assert_eq!(
        proc_comm(pid).as_deref(),
        Some("corral"),
        "systemd-socket-activate did not exec corral"
    );
    // Never re-bound: the only listener is still the one systemd-socket-activate made,
    // and corral's master holds it.
    assert_eq!(listening_inodes(port), vec![bound], "the listener changed");
    assert!(
        socket_inodes(pid).contains(&bound),
        "corral's master does not hold the passed-in listener\n{}",
        log()
    );
    let workers = live_children(pid);
    for w in &workers {
        assert!(
            socket_inodes(w.pid).contains(&bound),
            "worker {} does not hold the listener",
            w.pid
        );
    }
    must_echo(&mut s, "again\n", "activated connection");
    for i in 0..10 {
        let mut t =
            connect((Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(10)).expect("connect");
        must_echo(&mut t, &format!("connection {i}\n"), "new connection");
        close(t);
    }

    // A reload keeps the passed-in socket too.
    let out = run_cli(
        g.path(),
        &["-s", "reload", "-c", &cfg.display().to_string()],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "-s reload: {}\n{}", out.all(), log());
    assert_eq!(
        listening_inodes(port),
        vec![bound],
        "the listener changed on reload\n{}",
        log()
    );
    must_echo(
        &mut s,
        "after reload\n",
        "activated connection after reload",
    );
    close(s);
    let mut t = connect((Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(10))
        .expect("connect after reload");
    must_echo(&mut t, "new after reload\n", "new connection after reload");
    close(t);

    // Stop: everything goes, and the port with it.
    let master = proc_id(pid).expect("master");
    let mut all: Vec<ProcId> = live_children(pid);
    all.extend(workers);
    let out = run_cli(
        g.path(),
        &["-s", "stop", "-c", &cfg.display().to_string()],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "-s stop: {}\n{}", out.all(), log());
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || {
            g.child_exited().is_some() && all.iter().all(|p| !proc_alive(*p))
        }),
        "after -s stop: master exited {:?} ({:?}), live workers {:?}\n{}",
        g.child_exited(),
        proc_alive(master),
        all.iter().filter(|p| proc_alive(**p)).collect::<Vec<_>>(),
        log()
    );
    assert!(g.ours().is_empty(), "left: {:?}", g.ours());
    assert_refused(port, "after stop");
}

// ---------------------------------------------------------------------------
// 8. Daemon mode
// ---------------------------------------------------------------------------

#[test]
fn daemon_mode_serves_when_launcher_returns_and_stops_cleanly() {
    let g = ProcGuard::new("corral-daemon-");
    let cfg = g.path().join("corral.toml");
    let pid_file = g.path().join("corral.pid");
    let log_file = g.path().join("corral.log");
    let cfg_s = cfg.display().to_string();

    let mut launched = None;
    for _attempt in 0..5 {
        let port = free_port();
        let body = Conf::bare(2)
            .drain("10s")
            .stop("3s")
            .pid_file(&g.path().join("corral.pid").display().to_string())
            .master("daemon = true")
            .log_file(&g.path().join("corral.log").display().to_string())
            .render_on(port);
        fs::write(&cfg, body).expect("write config");
        let t0 = Instant::now();
        let out = run_cli(g.path(), &["-c", &cfg_s], Duration::from_secs(40));
        let took = t0.elapsed();
        if !out.status.success() && out.all().contains("Address already in use") {
            continue;
        }
        // "Exit 0 only once serving", checked at once: the log already says so, the
        // workers exist, and a single connect (no retry) is served.
        let serving_logged = fs::read_to_string(&log_file)
            .unwrap_or_default()
            .contains("corral is serving");
        let pid_now = read_pid(&pid_file);
        let workers_now = pid_now.map(|p| live_children(p).len()).unwrap_or(0);
        let first =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(5));
        launched = Some((port, out, took, first, serving_logged, workers_now));
        break;
    }
    let (port, out, took, first, serving_logged, workers_now) =
        launched.expect("no free port for the daemon");
    eprintln!(
        "launcher took {took:?}: {:?} {}",
        out.status,
        out.all().trim()
    );
    let logs = || fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        out.status.success(),
        "daemon launcher failed: {}\n{}",
        out.all(),
        logs()
    );
    assert!(
        serving_logged,
        "the launcher returned before the daemon logged \"corral is serving\":\n{}",
        logs()
    );
    assert_eq!(
        workers_now,
        2,
        "workers of the daemon when the launcher returned\n{}",
        logs()
    );
    let mut first = first.unwrap_or_else(|e| {
        panic!(
            "the launcher returned 0 but a connection failed: {e}\n{}",
            logs()
        )
    });
    must_echo(
        &mut first,
        "served as soon as the launcher returned\n",
        "daemon",
    );
    close(first);

    let pid: i32 = out
        .stdout
        .split("serving in the background, master pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("launcher output names no master pid: {}", out.all()));
    assert_eq!(
        read_pid(&pid_file),
        Some(pid),
        "pid file vs launcher output"
    );
    let master = proc_id(pid).expect("the daemon runs");
    assert!(proc_alive(master), "daemon {pid} not running\n{}", logs());
    let ppid = read_stat(pid).expect("stat").ppid;
    eprintln!("daemon master {pid}, parent {ppid}");
    assert_ne!(
        ppid,
        std::process::id() as i32,
        "the daemon is still our child"
    );
    assert!(
        ppid == 1 || proc_comm(ppid).as_deref() != Some("corral"),
        "the daemon's parent is {ppid} ({:?}), not init",
        proc_comm(ppid)
    );
    let workers = live_children(pid);
    assert_eq!(workers.len(), 2, "daemon workers: {workers:?}\n{}", logs());
    assert!(
        logs().contains("corral is serving"),
        "log file has no \"corral is serving\":\n{}",
        logs()
    );
    let st = run_cli(g.path(), &["status", "-c", &cfg_s], Duration::from_secs(20));
    assert!(
        st.status.success() && st.stdout.contains(&pid.to_string()),
        "status: {}",
        st.all()
    );

    let out = run_cli(
        g.path(),
        &["-s", "stop", "-c", &cfg_s],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "-s stop: {}\n{}", out.all(), logs());
    assert!(
        wait_until(Duration::from_secs(3) + MARGIN, || !proc_alive(master)
            && workers.iter().all(|w| !proc_alive(*w))
            && g.ours().is_empty()),
        "after -s stop: master alive {}, processes left {:?}\n{}",
        proc_alive(master),
        g.ours(),
        logs()
    );
    assert!(!pid_file.exists(), "pid file left after stop");
    assert_refused(port, "after the daemon stopped");
}

#[test]
fn daemon_start_failure_is_reported_by_the_launcher() {
    let g = ProcGuard::new("corral-daemon-fail-");
    let cfg = g.path().join("corral.toml");
    let cfg_s = cfg.display().to_string();
    // A port the test holds.
    let (port, holder) = (0..100)
        .find_map(|_| {
            let p = free_port();
            TcpListener::bind((Ipv4Addr::LOCALHOST, p))
                .ok()
                .map(|l| (p, l))
        })
        .expect("a port to hold");
    let body = Conf::bare(2)
        .drain("10s")
        .stop("3s")
        .pid_file(&g.path().join("corral.pid").display().to_string())
        .log_file(&g.path().join("corral.log").display().to_string())
        .render_on(port);
    fs::write(&cfg, body).expect("write config");

    let t0 = Instant::now();
    let out = run_cli(
        g.path(),
        &["--daemon", "-c", &cfg_s],
        Duration::from_secs(40),
    );
    eprintln!(
        "launcher took {:?}: {:?} {}",
        t0.elapsed(),
        out.status,
        out.all().trim()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "launcher exit status with the port taken: {}",
        out.all()
    );
    assert!(
        out.stderr.contains("Address already in use") && out.stderr.contains(&port.to_string()),
        "launcher stderr does not give the error: {}",
        out.all()
    );
    assert!(
        !out.stdout.contains("serving in the background"),
        "launcher claims success: {}",
        out.all()
    );
    assert!(
        wait_until(Duration::from_secs(5), || g.ours().is_empty()),
        "processes left after a failed daemon start: {:?}",
        g.ours()
    );
    if let Some(p) = read_pid(&g.path().join("corral.pid")) {
        assert!(
            proc_id(p).map(|p| !proc_alive(p)).unwrap_or(true),
            "the pid file names a live process {p}"
        );
    }
    // Our listener is untouched.
    let s = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2));
    assert!(s.is_ok(), "the test's own listener stopped working");
    assert!(holder.accept().is_ok());
}

// ---------------------------------------------------------------------------
// 9. systemd-analyze verify
// ---------------------------------------------------------------------------

/// Rewrites every absolute path ending in `/corral` on Exec* lines to `bin`.
fn rewrite_exec_paths(unit: &str, bin: &str) -> String {
    unit.lines()
        .map(|l| {
            let t = l.trim_start();
            if !t.starts_with("Exec") || !t.contains('=') {
                return l.to_string();
            }
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            let v: Vec<String> = v
                .split(' ')
                .map(|tok| {
                    // Exec prefixes such as "-", "@", "+", "!" come before the path.
                    let prefix_len =
                        tok.len() - tok.trim_start_matches(['-', '@', '+', '!', ':']).len();
                    let (pre, path) = tok.split_at(prefix_len);
                    if path.starts_with('/') && path.ends_with("/corral") {
                        format!("{pre}{bin}")
                    } else {
                        tok.to_string()
                    }
                })
                .collect();
            format!("{k}={}", v.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = fs::read_to_string(root.join("corral.service")).expect("systemd/corral.service");
    let keys: Vec<(String, String)> = service
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |k: &str| {
        keys.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("Type"),
        vec!["notify".to_string()],
        "corral.service Type="
    );
    assert_eq!(
        get("NotifyAccess"),
        vec!["all".to_string()],
        "corral.service NotifyAccess= (the new master of an upgrade notifies too)"
    );
    assert!(
        get("ExecReload").iter().any(|v| v.contains("-s reload")),
        "ExecReload should be `corral -s reload`: {:?}",
        get("ExecReload")
    );
    let socket_path = root.join("corral.socket");
    assert!(
        socket_path.exists(),
        "systemd/corral.socket is missing (socket activation unit)"
    );
    let socket = fs::read_to_string(&socket_path).expect("read corral.socket");
    assert!(
        socket.lines().any(|l| l.trim_start().starts_with("Listen")),
        "corral.socket has no Listen*= line:\n{socket}"
    );

    let Some(analyze) = tool("systemd-analyze") else {
        skipped(format_args!(
            "SKIPPED: systemd-analyze not installed (apt-get install systemd)"
        ));
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("corral-units-")
        .tempdir()
        .expect("temp dir");
    let bin = corral_bin();
    assert!(bin.ends_with("/corral"), "built binary path {bin}");
    let svc = dir.path().join("corral.service");
    let sock = dir.path().join("corral.socket");
    fs::write(&svc, rewrite_exec_paths(&service, bin)).expect("write unit copy");
    fs::write(&sock, &socket).expect("write socket copy");
    for files in [vec![&svc], vec![&sock, &svc]] {
        let out = Command::new(&analyze)
            .arg("verify")
            .args(files.iter().map(|p| p.as_os_str()))
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-analyze");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "systemd-analyze verify {files:?}: {:?} {text:?}",
            out.status
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify {files:?} complained ({:?}):\n{text}\nunit as verified:\n{}",
            out.status,
            fs::read_to_string(&svc).unwrap_or_default()
        );
    }
}
