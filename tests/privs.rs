//! Privileges, limits, listener options and container duty, seen from outside: the
//! workers' credentials in /proc, their limits, the options on the very sockets that
//! serve (borrowed with `pidfd_getfd`), the Unix socket file's life, and corral as
//! PID 1 reaping what it inherits and draining on SIGTERM when told to.
//!
//! Needs root (everything here is about giving root up); tests skip with the reason
//! printed otherwise.

use crate::common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::privs::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const T: Duration = Duration::from_secs(20);

fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skipped(format_args!("skipping {what}: needs root"));
    false
}

/// A directory others may traverse (a tempdir is 0700), for files a worker that is
/// no longer root must reach by path.
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("corral-privs-")
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Every worker runs as `uid`/`gid` in all four fields, with `groups`, no
/// capability and no_new_privs.
fn assert_dropped(c: &Corral, uid: u32, gid: u32, groups: &[u32]) {
    let workers = c.worker_pids();
    // Draining workers of an older generation count too: they must be dropped as well.
    assert!(workers.len() >= c.workers, "{}", c.log_tail(30));
    for pid in workers {
        assert_eq!(
            status_field(pid, "Uid"),
            vec![uid.to_string(); 4],
            "worker {pid} Uid"
        );
        assert_eq!(
            status_field(pid, "Gid"),
            vec![gid.to_string(); 4],
            "worker {pid} Gid"
        );
        let mut got: Vec<u32> = status_field(pid, "Groups")
            .iter()
            .map(|g| g.parse().unwrap())
            .collect();
        got.sort();
        let mut want = groups.to_vec();
        want.sort();
        assert_eq!(got, want, "worker {pid} Groups");
        for cap in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
            assert_eq!(
                status_field(pid, cap),
                vec!["0000000000000000"],
                "worker {pid} {cap}"
            );
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), vec!["1"], "worker {pid}");
    }
    let m = c.master_pid();
    assert_eq!(
        status_field(m, "Uid"),
        vec!["0"; 4],
        "the master stays root"
    );
    assert_ne!(status_field(m, "CapEff"), vec!["0000000000000000"]);
}

/// A free port below 1024, which only a privileged process may bind.
fn privileged_port() -> u16 {
    for p in (700..1000).rev() {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port below 1024");
}

#[test]
fn workers_run_as_nobody_and_the_master_stays_root() {
    if !root_or_skip("workers_run_as_nobody") {
        return;
    }
    let logs = open_dir();
    let log = logs.path().join("corral.log");
    let nogroup = gid_of("nogroup");
    let conf = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .master("user = \"nobody\"")
        .log_file(&log.display().to_string());
    let c = Corral::start(&conf.render());
    assert_dropped(&c, 65534, nogroup, &[nogroup]);
    let mut s = c.connect();
    must_echo(&c, &mut s, "served by nobody");

    // The worker logs into the master's file after its drop.
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("worker dropped privileges user=nobody")
            .count(),
        2,
        "{text}"
    );

    // logrotate: the file moves away, reopen; the (non-root) workers must open
    // the new file by path, which works because the master hands it to them.
    let rotated = logs.path().join("corral.log.1");
    fs::rename(&log, &rotated).unwrap();
    let out = c.cli(&["-s", "reopen"]);
    assert!(out.status.success(), "{}", out.all());
    assert!(log.exists());
    assert_eq!(fs::metadata(&log).unwrap().uid(), 65534);

    // A reload that binds a port below 1024: only the (root) master can.
    let low = privileged_port();
    let old = c.worker_pids();
    c.write_config(&conf.listen(low, "echo", "").render());
    c.must_reload();
    assert!(
        wait_until(T, || {
            let now = c.worker_pids();
            now.iter().filter(|p| !old.contains(p)).count() == 2
        }),
        "{}",
        c.log_tail(30)
    );
    assert_dropped(&c, 65534, nogroup, &[nogroup]);
    let mut low_conn = connect(([127, 0, 0, 1], low).into(), T).unwrap();
    must_echo(&c, &mut low_conn, "privileged port, unprivileged worker");
    if !matches!(echo(&mut s, b"still served\n", T), Echo::Ok) {
        panic!(
            "the connection was lost on reload:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    close(s);
    // The old generation drains: its workers (reopened onto the new file) log there,
    // and never failed to reopen.
    assert!(
        wait_until(T, || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("gen=1}: draining")),
        "old workers did not log into the reopened file:\nnew: {}\nold: {}",
        fs::read_to_string(&log).unwrap_or_default(),
        fs::read_to_string(&rotated).unwrap_or_default()
    );
    let all = format!(
        "{}{}",
        fs::read_to_string(&rotated).unwrap_or_default(),
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!all.contains("cannot reopen"), "{all}");
}

#[test]
fn a_user_made_for_the_test_with_its_groups_or_one_group() {
    if !root_or_skip("a_user_made_for_the_test") {
        return;
    }
    let Some(u) = TempUser::new("a", "nogroup") else {
        skipped(format_args!("skipping: useradd is missing or failed"));
        return;
    };
    let nogroup = gid_of("nogroup");
    let c = Corral::start(
        &Conf::bare(2)
            .drain("20s")
            .stop("3s")
            .level("info")
            .master(&format!("user = \"{}\"", u.name))
            .render(),
    );
    // Its own group first, plus the supplementary one it was given.
    assert_dropped(&c, u.uid, u.gid, &[u.gid, nogroup]);
    drop(c);
    // `group` replaces both the primary and the supplementary groups.
    let c = Corral::start(
        &Conf::bare(2)
            .drain("20s")
            .stop("3s")
            .level("info")
            .master(&format!("user = {}\ngroup = \"nogroup\"", u.uid))
            .render(),
    );
    assert_dropped(&c, u.uid, nogroup, &[nogroup]);
}

#[test]
fn unknown_user_or_group_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (master, key, why) in [
        (
            "user = \"no-such-user-corral\"",
            "master.user",
            "no user named `no-such-user-corral`",
        ),
        (
            "user = \"nobody\"\ngroup = \"no-such-group-corral\"",
            "master.group",
            "no group named",
        ),
        ("user = 3999999", "master.user", "has no passwd entry"),
        ("group = \"nogroup\"", "master.group", "needs master.user"),
    ] {
        let body = Conf::bare(2)
            .drain("20s")
            .stop("3s")
            .level("info")
            .master(master)
            .render_on(1);
        fs::write(&path, body).unwrap();
        let out = run_cli(dir.path(), &["-t", "-c", path.to_str().unwrap()], T);
        let all = out.all();
        assert!(!out.status.success(), "{master}: {all}");
        assert!(all.contains(&format!("`{key}`")), "{master}: {all}");
        assert!(all.contains(why), "{master}: {all}");
        assert!(
            all.contains(path.to_str().unwrap()),
            "names the file: {all}"
        );
    }
}

#[test]
fn user_other_than_self_is_refused_when_not_root() {
    if !root_or_skip("user_other_than_self") || !have("setpriv") {
        skipped(format_args!(
            "skipping the unprivileged check: needs root and setpriv"
        ));
        return;
    }
    let dir = open_dir();
    let path = dir.path().join("c.toml");
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .master("user = \"root\"")
        .render_on(1);
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(corral_bin())
        .args(["-t", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("`master.user`") && all.contains("not root"),
        "{all}"
    );
}

#[test]
fn worker_limits_and_the_master_raises_its_own() {
    if !root_or_skip("worker_limits") {
        return;
    }
    // Start the master with a low soft limit, as a login shell would give it.
    let dir = open_dir();
    let wrapper = dir.path().join("low-nofile.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -Sn 1024 || exit 97\nexec {} \"$@\"\n",
            corral_bin()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let (_, hard) = limit(std::process::id() as i32, "Max open files");
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .worker("rlimit_nofile = 5000\nmax_connections = 1000\nrlimit_core = \"unlimited\"")
        .render();
    let c = Corral::start_with(
        &body,
        Launch {
            binary: Some(wrapper.clone()),
            ..Default::default()
        },
    );
    for pid in c.worker_pids() {
        assert_eq!(limit(pid, "Max open files"), ("5000".into(), hard.clone()));
        assert_eq!(limit(pid, "Max core file size").0, "unlimited");
    }
    assert_eq!(
        limit(c.master_pid(), "Max open files"),
        (hard.clone(), hard.clone())
    );
    let line = format!("soft limit raised from 1024 to the hard limit {hard}");
    assert!(c.log().contains(&line), "{}", c.log_tail(20));
    drop(c);

    // Above the hard limit: a warning with both numbers, and workers get the most
    // they can.
    let over: u64 = hard.parse::<u64>().unwrap() + 1000;
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .worker(&format!("rlimit_nofile = {over}"))
        .render();
    let c = Corral::start(&body);
    let warning = format!("worker.rlimit_nofile = {over} exceeds the hard RLIMIT_NOFILE of {hard}");
    assert!(c.log().contains(&warning), "{}", c.log_tail(20));
    for pid in c.worker_pids() {
        assert_eq!(limit(pid, "Max open files").0, hard);
    }
    // And max_connections that cannot fit under the fd limit is said at -t.
    let out = c.cli(&["-t"]);
    assert!(out.status.success(), "{}", out.all());
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .worker("rlimit_nofile = 500\nmax_connections = 1000")
        .render_on(1);
    let path = c.dir.path().join("tight.toml");
    fs::write(&path, body).unwrap();
    let out = run_cli(c.dir.path(), &["-t", "-c", path.to_str().unwrap()], T);
    assert!(out.status.success(), "{}", out.all());
    assert!(
        out.all().contains("worker.max_connections = 1000"),
        "{}",
        out.all()
    );
}

/// The server end of `client`'s connection, borrowed from whichever worker holds it.
fn server_end(c: &Corral, client: &TcpStream) -> std::os::fd::OwnedFd {
    let cport = client.local_addr().unwrap().port();
    let mut found = None;
    wait_until(T, || {
        let Some(ino) = server_socket_inode(c.port, cport) else {
            return false;
        };
        found = c
            .worker_pids()
            .into_iter()
            .find_map(|w| fd_of_inode(w, ino).map(|fd| (w, fd)));
        found.is_some()
    });
    let (w, fd) = found.expect("no worker holds the connection");
    borrow_fd(w, fd).expect("pidfd_getfd")
}

#[test]
fn listener_options_are_on_the_real_sockets() {
    if !root_or_skip("listener_options") {
        return;
    }
    if !have("ss") {
        skipped(format_args!(
            "skipping listener_options: ss is not installed (iproute2)"
        ));
        return;
    }
    let tcp = libc::IPPROTO_TCP;
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .echo(
            "backlog = 77\ndefer_accept = \"5s\"\nkeepalive = true\nkeepalive_idle = \"33s\"\n\
         keepalive_interval = \"7s\"\nkeepalive_count = 4\nnodelay = false\n",
        )
        .render();
    let c = Corral::start(&body);
    assert_eq!(ss_backlog(c.port), Some(77));
    let ino = listener_inode(c.port).expect("listener in /proc/net/tcp");
    let fd = fd_of_inode(c.master_pid(), ino).expect("the master holds its listener");
    let listener = borrow_fd(c.master_pid(), fd).unwrap();
    // The kernel keeps TCP_DEFER_ACCEPT as retransmits and reports it rounded up.
    assert!(sockopt(&listener, tcp, libc::TCP_DEFER_ACCEPT) >= 5);

    let mut s = c.connect();
    must_echo(&c, &mut s, "options");
    let server = server_end(&c, &s);
    assert_eq!(sockopt(&server, tcp, libc::TCP_NODELAY), 0);
    assert_eq!(sockopt(&server, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(sockopt(&server, tcp, libc::TCP_KEEPIDLE), 33);
    assert_eq!(sockopt(&server, tcp, libc::TCP_KEEPINTVL), 7);
    assert_eq!(sockopt(&server, tcp, libc::TCP_KEEPCNT), 4);
    // What an operator would look at: the keep-alive timer on the connection.
    let timer = ss_timer(c.port, s.local_addr().unwrap().port());
    assert!(timer.contains("timer:(keepalive,"), "{timer}");

    // A reload back to the defaults: new connections get nodelay and no keep-alive.
    c.write_config(&Conf::bare(2).drain("20s").stop("3s").level("info").render());
    c.must_reload();
    let mut s2 = c.connect();
    must_echo(&c, &mut s2, "defaults");
    let server = server_end(&c, &s2);
    assert_eq!(sockopt(&server, tcp, libc::TCP_NODELAY), 1);
    assert_eq!(sockopt(&server, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
}

#[test]
fn unix_socket_mode_owner_and_removal_on_stop_only() {
    if !root_or_skip("unix_socket") {
        return;
    }
    let dir = open_dir();
    let sock = dir.path().join("echo.sock");
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .listen_at(
            &format!("unix:{}", sock.display()),
            "echo",
            "mode = \"0660\"\nowner = \"nobody:nogroup\"",
        )
        .render();
    let c = Corral::start(&body);
    let check = |what: &str| {
        let m = fs::symlink_metadata(&sock).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.mode() & 0o7777, 0o660, "{what}");
        assert_eq!((m.uid(), m.gid()), (65534, gid_of("nogroup")), "{what}");
        let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        u.set_read_timeout(Some(T)).unwrap();
        u.write_all(b"unix\n").unwrap();
        let mut buf = [0u8; 5];
        u.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"unix\n", "{what}");
    };
    check("after start");
    c.must_reload();
    check("after reload");
    // A binary upgrade keeps the file; the new master removes it when it stops.
    let new = c.must_upgrade();
    assert!(wait_until(T, || c.read_pid_file() == Some(new)));
    assert!(wait_until(T, || c.master_exited()), "{}", c.log_tail(30));
    check("after upgrade");
    let id = proc_id(new).expect("the new master runs");
    kill(Pid::from_raw(new), Signal::SIGTERM).unwrap();
    assert!(wait_until(T, || !proc_alive(id)), "{}", c.log_tail(30));
    assert!(!sock.exists(), "the socket file outlived the stop");
}

/// Forks a child that exits at once and one that leaves an orphan (`sleep`) behind,
/// waits until both are zombies (never reaping them), then execs corral: corral
/// starts as PID 1 with children whose SIGCHLD it never saw.
const INIT_PY: &str = r#"#!/usr/bin/env python3
import os, sys, time
a = os.fork()
if a == 0:
    os._exit(0)
b = os.fork()
if b == 0:
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
def zombie(p):
    try:
        return open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
deadline = time.time() + 10
while not (zombie(a) and zombie(b)) and time.time() < deadline:
    time.sleep(0.01)
os.execv(sys.argv[1], sys.argv[1:])
"#;

/// corral as PID 1, started by a wrapper that leaves it two children of its own: one
/// that already exited (a zombie before corral runs) and a long sleeper whose parent
/// died (an orphan re-parented to PID 1).
fn start_pid1(dir: &Path, master: &str) -> (Pid1, u16) {
    let port = free_port();
    let cfg = dir.join("corral.toml");
    let body = Conf::bare(2)
        .drain("20s")
        .stop("3s")
        .level("info")
        .master(master)
        .pid_file(&dir.join("corral.pid").display().to_string())
        .render_on(port);
    fs::write(&cfg, body).unwrap();
    let wrapper = dir.join("init.py");
    fs::write(&wrapper, INIT_PY).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    (Pid1::start(dir, &wrapper, &cfg), port)
}

fn pid1_skip() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for (tool, pkg) in [("unshare", "util-linux"), ("python3", "python3")] {
        if !have(tool) {
            return Some(format!("{tool} is not installed ({pkg})"));
        }
    }
    let ok = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "cannot create a pid namespace here".into())
}

#[test]
fn as_pid1_corral_reaps_orphans_and_drains_on_sigterm() {
    if let Some(why) = pid1_skip() {
        skipped(format_args!("skipping as_pid1: {why}"));
        return;
    }
    let dir = open_dir();
    let (mut ns, port) = start_pid1(dir.path(), "graceful_sigterm = true");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(T, || ns
            .init()
            .is_some_and(|i| proc_comm(i).as_deref() == Some("corral"))
            && connect(addr, Duration::from_millis(300)).is_ok()),
        "corral did not start as PID 1\n{}",
        ns.log()
    );
    let init = ns.init().unwrap();
    assert_eq!(
        status_field(init, "NSpid").last().map(String::as_str),
        Some("1")
    );
    // The orphaned sleeper is ours now; the shells that exited before corral ran
    // must not stay zombies.
    let sleeper = || {
        children_states(init)
            .into_iter()
            .find(|(_, _, comm)| comm == "sleep")
    };
    assert!(
        wait_until(T, || sleeper().is_some()),
        "{:?}",
        children_states(init)
    );
    let zombies = || {
        children_states(init)
            .into_iter()
            .filter(|(_, st, _)| *st == 'Z')
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(T, || zombies().is_empty()),
        "zombies under PID 1: {:?}\n{}",
        zombies(),
        ns.log()
    );
    let (orphan, _, _) = sleeper().unwrap();
    kill(Pid::from_raw(orphan), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(T, || !children_states(init)
            .iter()
            .any(|(p, _, _)| *p == orphan)),
        "the orphan was not reaped: {:?}",
        children_states(init)
    );

    // graceful_sigterm: a connection in flight finishes after SIGTERM.
    let mut s = connect(addr, T).unwrap();
    assert!(matches!(echo(&mut s, b"before\n", T), Echo::Ok));
    kill(Pid::from_raw(init), Signal::SIGTERM).unwrap();
    assert!(
        wait_until(T, || ns.log().contains("graceful stop")),
        "{}",
        ns.log()
    );
    assert!(
        matches!(echo(&mut s, b"after SIGTERM\n", T), Echo::Ok),
        "the connection was cut by SIGTERM\n{}",
        ns.log()
    );
    assert!(!ns.exited(), "corral exited with a connection in flight");
    close(s);
    assert!(
        wait_until(T, || ns.exited()),
        "corral did not exit after the drain\n{}",
        ns.log()
    );
}

#[test]
fn without_graceful_sigterm_sigterm_stays_a_fast_stop() {
    if let Some(why) = pid1_skip() {
        skipped(format_args!("skipping: {why}"));
        return;
    }
    let dir = open_dir();
    let (mut ns, port) = start_pid1(dir.path(), "");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(T, || connect(addr, Duration::from_millis(300)).is_ok()),
        "{}",
        ns.log()
    );
    let mut s = connect(addr, T).unwrap();
    assert!(matches!(echo(&mut s, b"before\n", T), Echo::Ok));
    kill(Pid::from_raw(ns.init().unwrap()), Signal::SIGTERM).unwrap();
    assert!(wait_until(T, || ns.exited()), "{}", ns.log());
    assert!(ns.log().contains("fast stop"), "{}", ns.log());
    assert!(!matches!(
        echo(&mut s, b"after\n", Duration::from_secs(5)),
        Echo::Ok
    ));
}
