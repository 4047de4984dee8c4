//! Containment of a worker, proved through the operator's tool: `corral fault
//! escape` makes a live worker try what an attacker would, and with the shipped
//! defaults every attempt is blocked; a call outside the allowlist kills the worker,
//! which the master reports as "killed by seccomp" and replaces.

use crate::common;

use std::time::Duration;

use common::fault::{master_view, ready_in_slot};
use common::privs::TempUser;
use common::{free_port, must_echo, run_cli, skipped, wait_until, Conf, Corral};

const T: Duration = Duration::from_secs(30);

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `corral fault escape --json` on slot 0: (exit ok, the JSON, stderr).
fn escape(c: &Corral) -> (bool, serde_json::Value, String) {
    let config = c.config_path.display().to_string();
    let out = run_cli(
        c.dir.path(),
        &["-c", &config, "fault", "escape", "--slot", "0", "--json"],
        Duration::from_secs(60),
    );
    let v = serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v, out.stderr)
}

fn attempts(v: &serde_json::Value) -> Vec<(String, bool, String)> {
    v["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {v}"))
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or("?").to_string(),
                a["blocked"].as_bool().expect("blocked is a bool"),
                a["how"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn assert_all_blocked(c: &Corral) {
    let (ok, v, err) = escape(c);
    let a = attempts(&v);
    let names: Vec<&str> = a.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "exec-shell",
        "fork",
        "read-etc-shadow",
        "read-outside",
        "write-outside",
        "ptrace-master",
        "signal-master",
        "connect-elsewhere",
        "setuid-root",
    ] {
        assert!(names.contains(&want), "{want} missing from {v}");
    }
    let open: Vec<_> = a.iter().filter(|(_, b, _)| !b).collect();
    assert!(
        open.is_empty(),
        "not blocked: {open:?}\n{err}\n{}",
        c.log_tail(30)
    );
    assert!(ok, "{err}");
    assert_eq!(v["outcome"], "survived", "{v}");
    // It survived, and still serves.
    must_echo(c, &mut c.connect(), "still here");
}

#[test]
fn with_the_defaults_every_escape_is_blocked() {
    let c = Corral::start(&Conf::new(1).fault_injection().render());
    assert_all_blocked(&c);
    if root() {
        assert!(
            c.log().contains("worker dropped privileges user=nobody"),
            "{}",
            c.log_tail(30)
        );
    }
}

#[test]
fn with_an_explicit_user_every_escape_is_blocked() {
    if !root() {
        skipped(format_args!("skipping: needs root"));
        return;
    }
    let Some(u) = TempUser::new("esc", "nogroup") else {
        skipped(format_args!("skipping: useradd is missing or failed"));
        return;
    };
    let c = Corral::start(
        &Conf::new(1)
            .fault_injection()
            .master(&format!("user = \"{}\"", u.name))
            .render(),
    );
    assert_all_blocked(&c);
}

#[test]
fn with_the_filter_off_the_escapes_are_seen_getting_through() {
    // The test of the test: the attempts are real. A root worker without the
    // filter can fork, exec, write to /tmp, signal the master and become root.
    if !root() {
        skipped(format_args!("skipping: needs root"));
        return;
    }
    let c = Corral::start(
        &Conf::new(1)
            .fault_injection()
            .master("user = \"root\"")
            .worker("seccomp = \"off\"")
            .render(),
    );
    let (ok, v, _) = escape(&c);
    assert!(!ok, "exit status must say something got through: {v}");
    let a = attempts(&v);
    for name in [
        "fork",
        "exec-shell",
        "read-outside",
        "write-outside",
        "signal-master",
        "setuid-root",
    ] {
        let got = a.iter().find(|(n, _, _)| n == name).unwrap();
        assert!(!got.1, "{got:?}");
    }
    must_echo(&c, &mut c.connect(), "still here");
}

#[test]
fn a_worker_dead_by_sigsys_is_reported_as_killed_by_seccomp_and_replaced() {
    // The kernel's own SIGSYS for a call outside the allowlist is exercised by the
    // unit test in src/os/seccomp.rs (in a forked child); here a SIGSYS sent by
    // hand stands in for it, to check the master's report and the respawn.
    let c = Corral::start(&Conf::new(1).fault_injection().render());
    let pid = ready_in_slot(&c, 0).expect("a ready worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSYS,
    )
    .unwrap();
    wait_until(T, || {
        ready_in_slot(&c, 0).is_some_and(|p| p != pid) && c.log().contains("killed by seccomp")
    });
    let log = c.log();
    assert!(
        log.contains("reason=signal SIGSYS (killed by seccomp)"),
        "{}",
        c.log_tail(30)
    );
    assert!(
        log.contains("killed by seccomp: system call"),
        "{}",
        c.log_tail(30)
    );
    assert!(master_view(&c).is_some());
}

#[test]
fn in_log_mode_nothing_is_refused_and_the_worker_lives() {
    // For bringing up a custom service: the kernel logs, the worker keeps running,
    // and `fault escape` shows what the filter would have stopped.
    let c = Corral::start(
        &Conf::new(1)
            .fault_injection()
            .worker("seccomp = \"log\"")
            .render(),
    );
    let (ok, v, _) = escape(&c);
    assert!(!ok, "{v}");
    assert_eq!(v["outcome"], "survived", "{v}");
    let a = attempts(&v);
    let fork = a.iter().find(|(n, _, _)| n == "fork").unwrap();
    assert!(!fork.1, "{fork:?}");
    must_echo(&c, &mut c.connect(), "still here");
}

#[test]
fn a_proxy_worker_may_dial_its_upstreams_only() {
    // A proxy must make sockets and connect, which seccomp cannot restrict by
    // address; Landlock's network rules (where the kernel has them) limit it to the
    // upstreams' ports. The upstream is the echo listener itself.
    let proxy_port = free_port();
    let body = Conf::new(1)
        .fault_injection()
        .proxy(proxy_port, &["127.0.0.1:{port}"], "")
        .render();
    let c = Corral::start(&body);
    // Through the proxy to the upstream: allowed.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    std::io::Write::write_all(&mut s, b"via proxy\n").unwrap();
    let mut buf = [0u8; 10];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf, b"via proxy\n");
    let (_, v, _) = escape(&c);
    let a = attempts(&v);
    let connect = a.iter().find(|(n, _, _)| n == "connect-elsewhere").unwrap();
    if corral::os::landlock::abi() >= 4 {
        assert!(connect.1, "{connect:?}");
        assert!(
            connect.2.contains("os error 13"),
            "Landlock says EACCES: {connect:?}"
        );
    } else {
        // Without Landlock's network rules the attempt reaches the network.
        assert!(!connect.1, "{connect:?}");
    }
    let others: Vec<_> = a
        .iter()
        .filter(|(n, b, _)| !b && n != "connect-elsewhere")
        .collect();
    assert!(others.is_empty(), "{others:?}");
}
