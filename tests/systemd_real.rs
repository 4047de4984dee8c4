//! corral under the real systemd (the distribution's, 252 here), booted as PID 1 of
//! private namespaces by the harness's own boot (`common::sysd`) with the shipped
//! `systemd/corral.service` and `corral.socket` (paths adapted, log to a file).
//!
//! What an operator relies on: `systemctl start` returns once corral serves; `systemctl
//! reload` fails on a bad config and leaves the service alone; binary upgrades move
//! `MainPID` to a new master that systemd follows as its own child, so that a later
//! `systemctl stop` drains it (connections served until `drain_timeout`, then closed
//! cleanly, the unit ending `Result=success`) instead of SIGKILLing the unit; the
//! watchdog stays fed across upgrades; socket activation works.
//!
//! Skipped, with the reason printed, only where root, namespaces or systemd are
//! missing.
//!
//! Every config pins its echo connections (`Conf::pinned`, `suspend = false`): these
//! tests keep a connection on the old master to watch what systemd does while it
//! drains (whose child the new master is, a stop mid-drain); a movable echo connection
//! would follow the upgrade to the new master instead (tests/moves.rs and
//! tests/upgrade_moves.rs cover that).

use crate::common;

use std::time::{Duration, Instant};

use common::sysd::{or_skip, wait_ending, Ending, SystemdNs, UnitOpts};
use common::*;

/// Extra time allowed on top of a configured timeout on a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(10);

fn must_echo_ns(ns: &SystemdNs, s: &mut std::net::TcpStream, msg: &str, what: &str) {
    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
        Echo::Ok => {}
        other => panic!(
            "{what}: echo of {msg:?} failed: {other:?}\n{}",
            ns.log_tail(30)
        ),
    }
}

/// A fresh connection that echoes.
fn fresh_echo(ns: &SystemdNs, what: &str) {
    let mut s = ns
        .connect()
        .unwrap_or_else(|e| panic!("{what}: connect: {e}\n{}", ns.log_tail(30)));
    must_echo_ns(ns, &mut s, "ping\n", what);
}

fn assert_active(ns: &SystemdNs, what: &str) {
    let p = ns.show(
        "corral.service",
        &["ActiveState", "SubState", "Result", "NRestarts"],
    );
    assert!(
        p["ActiveState"] == "active"
            && p["SubState"] == "running"
            && p["Result"] == "success"
            && p["NRestarts"] == "0",
        "{what}: unit not active/running/success/0 restarts: {p:?}\n{}",
        ns.log_tail(30)
    );
}

/// Asks for an upgrade the systemd way: SIGUSR2 to the unit's main process.
fn upgrade_by_systemctl(ns: &SystemdNs) {
    ns.systemctl(&[
        "kill",
        "-s",
        "SIGUSR2",
        "--kill-whom=main",
        "corral.service",
    ]);
}

/// Waits until systemd's MainPID is a pid other than `old` and returns it; the
/// failure ends with `why`.
fn main_pid_moved(ns: &SystemdNs, old: i32, why: &str) -> i32 {
    let mut new = 0;
    assert!(
        wait_until(Duration::from_secs(20) + MARGIN, || {
            new = ns.main_pid();
            new > 0 && new != old
        }),
        "MainPID did not move from {old}{why}\n{}",
        ns.log_tail(30)
    );
    new
}

/// `s` ends with a clean close (FIN) within `within`; anything else fails with `what`.
fn closed_cleanly(ns: &SystemdNs, s: &mut std::net::TcpStream, within: Duration, what: &str) {
    match wait_ending(s, within) {
        Ending::Eof(_) => {}
        other => panic!("{what}: {other:?}\n{}", ns.log_tail(40)),
    }
}

/// `systemctl stop --no-block`, and waits until the unit has left `active`; returns
/// when the stop was asked.
fn stop_no_block(ns: &SystemdNs) -> Instant {
    let t0 = Instant::now();
    ns.systemctl(&["stop", "--no-block", "corral.service"]);
    assert!(
        wait_until(Duration::from_secs(10), || ns.prop("ActiveState")
            != "active"),
        "unit did not start stopping"
    );
    t0
}

/// Upgrades by `how` with a connection open on the old master, and waits until
/// systemd's MainPID is the new master, the connection was drained (clean close) and
/// the old master is gone. Returns the new MainPID.
fn upgrade(ns: &SystemdNs, how: &str, drain: Duration) -> i32 {
    let old = ns.main_pid();
    assert!(
        old > 0,
        "no MainPID before the upgrade\n{}",
        ns.log_tail(30)
    );
    // Keeps the old master draining (alive) for drain_timeout after the hand-over, so
    // that the new master's parent is checked while the old master still exists.
    let mut held = ns.connect().expect("connect before the upgrade");
    must_echo_ns(ns, &mut held, "before upgrade\n", "before the upgrade");
    match how {
        "systemctl" => {
            upgrade_by_systemctl(ns);
        }
        _ => {
            let (ok, out) = ns.corral(&["-s", "upgrade"]);
            assert!(ok, "corral -s upgrade failed: {out}\n{}", ns.log_tail(30));
        }
    }
    let new = main_pid_moved(ns, old, &format!(" after an upgrade by {how}"));
    // The point of the double fork: systemd's own child, not an "alien" main pid
    // (a child of the old master, which is still there).
    let (ppid, old_alive) = (
        ns.ppid(new),
        ns.corral_processes().iter().any(|&(p, _)| p == old),
    );
    assert!(
        old_alive && ppid == Some(1),
        "new master {new}: parent {ppid:?}, not systemd (old master {old} alive: {old_alive})\n{}",
        ns.log_tail(30)
    );
    // The old master keeps serving its connection until drain_timeout, then closes it.
    must_echo_ns(
        ns,
        &mut held,
        "old master drains\n",
        "old master's connection",
    );
    closed_cleanly(
        ns,
        &mut held,
        drain + MARGIN,
        "old master's connection not closed cleanly by its drain",
    );
    assert!(
        wait_until(Duration::from_secs(20) + MARGIN, || ns
            .corral_processes()
            .iter()
            .all(|&(p, _)| p != old)),
        "old master {old} still runs after handing over\n{}",
        ns.log_tail(30)
    );
    new
}

/// `systemctl stop` (not waiting) with an open connection on the current master:
/// the connection keeps being served while the unit deactivates, then ends with a
/// clean close at `drain`, and the unit ends inactive with Result=success and no
/// process left. Returns (time to the close, time to inactive).
fn stop_drains(ns: &SystemdNs, drain: Duration) -> (Duration, Duration) {
    let mut s = ns.connect().expect("connect before stop");
    must_echo_ns(ns, &mut s, "before stop\n", "before stop");
    let main = ns.main_pid();
    let t0 = stop_no_block(ns);
    // Still served while draining (unless the drain already ended, which it must
    // not before drain_timeout).
    if t0.elapsed() < drain {
        must_echo_ns(ns, &mut s, "while stopping\n", "during the drain");
    }
    closed_cleanly(
        ns,
        &mut s,
        drain + MARGIN,
        &format!("connection not closed cleanly by the drain (main pid {main})"),
    );
    let closed = t0.elapsed();
    assert!(
        closed + Duration::from_millis(200) >= drain,
        "connection closed after {closed:?}, before drain_timeout {drain:?}"
    );
    assert!(
        ns.wait_prop("ActiveState", "inactive", Duration::from_secs(20) + MARGIN),
        "unit not inactive after the drain: {:?}\n{}",
        ns.show("corral.service", &["ActiveState", "SubState", "Result"]),
        ns.log_tail(40)
    );
    let inactive = t0.elapsed();
    let p = ns.show(
        "corral.service",
        &["Result", "ExecMainCode", "ExecMainStatus"],
    );
    assert_eq!(
        p["Result"],
        "success",
        "stop did not end in success: {p:?}\n{}",
        ns.log_tail(40)
    );
    let left = ns.corral_processes();
    assert!(
        left.is_empty(),
        "processes left after stop: {left:?}\n{}",
        ns.log_tail(40)
    );
    (closed, inactive)
}

#[test]
fn start_reload_upgrades_watchdog_and_drained_stop() {
    let Some(boot) = or_skip("start_reload_upgrades_watchdog_and_drained_stop") else {
        return;
    };
    let drain = Duration::from_secs(3);
    let watchdog = Duration::from_secs(3);
    let ns = SystemdNs::boot(
        &boot,
        &Conf::bare(2)
            .drain("3s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
        &UnitOpts {
            watchdog: Some("3s".into()),
            ..UnitOpts::default()
        },
    );

    // Start: returns once READY=1 came, and it serves.
    ns.systemctl(&["start", "corral.service"]);
    assert_active(&ns, "after start");
    let first = ns.main_pid();
    assert!(first > 0);
    fresh_echo(&ns, "after start");

    // A good reload: exit 0, same main process, the new generation serves.
    ns.write_config(
        &Conf::bare(3)
            .drain("3s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
    );
    ns.systemctl(&["reload", "corral.service"]);
    assert_eq!(ns.main_pid(), first, "reload changed the main pid");
    assert_active(&ns, "after reload");
    assert!(
        wait_until(Duration::from_secs(10), || ns
            .corral_processes()
            .iter()
            .filter(|(_, c)| c == "corral-worker")
            .count()
            == 3),
        "not 3 workers after reloading to workers = 3: {:?}",
        ns.corral_processes()
    );
    fresh_echo(&ns, "after a good reload");
    // Held across the bad reload below (opened now: the good reload's old generation
    // drained its connections).
    let mut held = ns.connect().expect("connect");
    must_echo_ns(&ns, &mut held, "hello\n", "after the good reload");

    // A bad one: non-zero, and nothing changes.
    // Raw text on purpose: a malformed value is the point.
    std::fs::write(ns.config(), "[master]\nworkers = \"lots\"\n").expect("config");
    let (ok, out, err) = ns.exec(&["systemctl", "reload", "corral.service"]);
    assert!(
        !ok,
        "systemctl reload of a bad config succeeded: {out}{err}"
    );
    assert_eq!(ns.main_pid(), first, "a failed reload changed the main pid");
    assert_active(&ns, "after a bad reload");
    must_echo_ns(
        &ns,
        &mut held,
        "still\n",
        "held connection after a bad reload",
    );
    fresh_echo(&ns, "after a bad reload");
    assert!(
        ns.log().contains("workers"),
        "the log does not say what was wrong with the config\n{}",
        ns.log_tail(20)
    );
    ns.write_config(
        &Conf::bare(2)
            .drain("3s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
    );
    drop(held);

    // Three upgrades in a row, both ways of asking.
    let mut mains = vec![first];
    for how in ["systemctl", "cli", "systemctl"] {
        let new = upgrade(&ns, how, drain);
        assert!(
            !mains.contains(&new),
            "MainPID {new} seen before: {mains:?}"
        );
        mains.push(new);
        assert_active(&ns, &format!("after upgrade by {how}"));
        fresh_echo(&ns, &format!("after upgrade by {how}"));
    }
    eprintln!("MainPID across three upgrades: {mains:?}");

    // The watchdog is fed by the new master: over four periods systemd kills nothing.
    let last = *mains.last().expect("mains");
    let t0 = Instant::now();
    while t0.elapsed() < watchdog * 4 {
        assert_eq!(
            ns.main_pid(),
            last,
            "main pid changed while watching the watchdog\n{}",
            ns.log_tail(30)
        );
        assert_active(&ns, "while watching the watchdog");
        // Pacing of the checks: a watchdog timeout can only be shown absent over
        // time, so the four periods of idling are the property, not a wait.
        std::thread::sleep(Duration::from_millis(300));
    }
    let console =
        std::fs::read_to_string(ns.root.join("state/systemd.console")).unwrap_or_default();
    assert!(
        !console.contains("Watchdog timeout"),
        "systemd reports a watchdog timeout:\n{console}"
    );
    fresh_echo(&ns, "after the watchdog periods");

    // Stop drains the (thrice upgraded) service.
    let (closed, inactive) = stop_drains(&ns, drain);
    eprintln!(
        "stop after 3 upgrades: connection closed cleanly at {closed:?}, inactive at {inactive:?}"
    );
}

#[test]
fn stop_after_upgrade_drains_ten_times_in_a_row() {
    let Some(boot) = or_skip("stop_after_upgrade_drains_ten_times_in_a_row") else {
        return;
    };
    let drain = Duration::from_secs(1);
    let ns = SystemdNs::boot(
        &boot,
        &Conf::bare(2)
            .drain("1s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
        &UnitOpts::default(),
    );
    let mut figures = Vec::new();
    for run in 1..=10 {
        // Ten starts in a few seconds are past systemd's default start rate limit
        // (5 in 10 s); that limit is not what this test is about.
        // (It fails harmlessly when the inactive unit was already unloaded.)
        let _ = ns.exec(&["systemctl", "reset-failed", "corral.service"]);
        ns.systemctl(&["start", "corral.service"]);
        assert_active(&ns, &format!("run {run}: after start"));
        let new = upgrade(&ns, "systemctl", drain);
        assert_active(&ns, &format!("run {run}: after upgrade"));
        let (closed, inactive) = stop_drains(&ns, drain);
        eprintln!(
            "run {run}: new master {new}; stop: connection closed cleanly at {closed:?}, unit inactive (Result=success) at {inactive:?}"
        );
        figures.push((closed, inactive));
    }
    let max = figures.iter().map(|f| f.1).max().unwrap_or_default();
    eprintln!("10/10 stops after an upgrade drained and ended Result=success; slowest {max:?}");
}

#[test]
fn socket_activation_through_corral_socket() {
    let Some(boot) = or_skip("socket_activation_through_corral_socket") else {
        return;
    };
    let ns = SystemdNs::boot(
        &boot,
        &Conf::bare(2)
            .drain("2s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
        &UnitOpts {
            socket: true,
            ..UnitOpts::default()
        },
    );
    ns.systemctl(&["start", "corral.socket"]);
    assert_eq!(
        ns.prop("ActiveState"),
        "inactive",
        "service started before any connection"
    );
    // The first connection is accepted by systemd's socket and starts the service.
    let mut s = ns.connect().expect("connect to the activation socket");
    must_echo_ns(&ns, &mut s, "activated\n", "first connection");
    // Workers may serve a moment before the master's READY=1 reaches systemd.
    assert!(
        ns.wait_prop("ActiveState", "active", Duration::from_secs(10)),
        "not active after activation\n{}",
        ns.log_tail(20)
    );
    assert_active(&ns, "after activation");
    assert!(
        ns.log().contains("using passed-in socket"),
        "corral did not use systemd's socket\n{}",
        ns.log_tail(20)
    );
    // An upgrade hands systemd's socket on.
    upgrade(&ns, "systemctl", Duration::from_secs(2));
    fresh_echo(&ns, "after an upgrade of a socket-activated service");
    // The connection from before it was drained by the old master: closed cleanly.
    closed_cleanly(
        &ns,
        &mut s,
        Duration::from_secs(2) + MARGIN,
        "connection from before the upgrade",
    );
    // Stopped, the socket stays with systemd: the next connection starts it again.
    ns.systemctl(&["stop", "corral.service"]);
    assert_eq!(ns.prop("Result"), "success", "{}", ns.log_tail(30));
    assert_eq!(
        ns.show("corral.socket", &["ActiveState"])["ActiveState"],
        "active",
        "socket unit not listening after the service stopped"
    );
    fresh_echo(&ns, "connection after stop (re-activation)");
    assert!(
        ns.wait_prop("ActiveState", "active", Duration::from_secs(10)),
        "not active after re-activation\n{}",
        ns.log_tail(20)
    );
    assert_active(&ns, "after re-activation");
}

#[test]
fn broken_upgrade_rolls_back_and_systemd_keeps_the_old_master() {
    let Some(boot) = or_skip("broken_upgrade_rolls_back_and_systemd_keeps_the_old_master") else {
        return;
    };
    let ns = SystemdNs::boot(
        &boot,
        &Conf::bare(2)
            .drain("2s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
        &UnitOpts::default(),
    );
    ns.systemctl(&["start", "corral.service"]);
    assert_active(&ns, "after start");
    let main = ns.main_pid();
    let mut held = ns.connect().expect("connect");
    must_echo_ns(&ns, &mut held, "before\n", "before the upgrade");

    // A new binary that dies at once: write it beside and rename it over.
    let staged = ns.root.join("corral.new");
    std::fs::write(&staged, "#!/bin/sh\nexit 3\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let real = ns.root.join("corral.real");
    std::fs::rename(ns.bin(), &real).expect("keep the real binary");
    std::fs::rename(&staged, ns.bin()).expect("install the broken binary");
    upgrade_by_systemctl(&ns);
    assert!(
        wait_until(Duration::from_secs(20) + MARGIN, || ns
            .log()
            .contains("upgrade rolled back")),
        "no rollback\n{}",
        ns.log_tail(30)
    );
    let log = ns.log();
    let line = log
        .lines()
        .find(|l| l.contains("upgrade rolled back"))
        .unwrap_or_default();
    eprintln!("rollback under systemd: {line}");
    // systemd, the new master's parent now, may have reaped it before we looked.
    assert!(
        line.contains("exit code 3")
            || line.contains("exited, status unknown")
            || line.contains("closed its readiness pipe"),
        "rollback reason: {line}"
    );
    assert_eq!(ns.main_pid(), main, "MainPID moved to a failed new master");
    assert_active(&ns, "after the rollback");
    must_echo_ns(
        &ns,
        &mut held,
        "after\n",
        "held connection after the rollback",
    );
    fresh_echo(&ns, "after the rollback");

    // The real binary back: the next upgrade works.
    std::fs::rename(&real, ns.bin()).expect("restore the binary");
    upgrade(&ns, "cli", Duration::from_secs(2));
    assert_active(&ns, "after a good upgrade following the rollback");
    drop(held);
    stop_drains(&ns, Duration::from_secs(2));
}

/// `systemctl stop` right after an upgrade, while the old master still drains a
/// connection: the new master exits only after the old one, so systemd does not
/// SIGKILL the old master's connection (KillMode=mixed kills what is left in the unit
/// once the main process is gone). The connection keeps being served and ends with a
/// clean close at the old master's drain deadline.
#[test]
fn stop_while_the_old_master_drains_keeps_its_connections() {
    let Some(boot) = or_skip("stop_while_the_old_master_drains_keeps_its_connections") else {
        return;
    };
    let drain = Duration::from_secs(5);
    let ns = SystemdNs::boot(
        &boot,
        &Conf::bare(2)
            .drain("5s")
            .upgrade_timeout("20s")
            .level("info")
            .pinned(),
        &UnitOpts::default(),
    );
    ns.systemctl(&["start", "corral.service"]);
    assert_active(&ns, "after start");
    let old = ns.main_pid();
    let mut held = ns.connect().expect("connect before the upgrade");
    must_echo_ns(&ns, &mut held, "before upgrade\n", "before the upgrade");
    upgrade_by_systemctl(&ns);
    let new = main_pid_moved(&ns, old, "");
    let t0 = stop_no_block(&ns);
    // The new master has no connection of its own: it would exit (and systemd kill
    // what is left in the unit) as soon as its workers are gone. Wait for that moment
    // (it says it waits for the old master, and its workers are gone) instead of a
    // fixed sleep; from then on the old master's connection must still be served.
    let waits = "the old master of the last upgrade still drains; exiting after it";
    assert!(
        wait_until(Duration::from_secs(10) + MARGIN, || {
            ns.log().contains(waits)
                && !ns
                    .corral_processes()
                    .iter()
                    .any(|(p, comm)| comm == "corral-worker" && ns.ppid(*p) == Some(new))
        }),
        "the new master {new} did not say it waits for the old one, or kept its workers: \
         {:?}\n{}",
        ns.corral_processes(),
        ns.log_tail(40)
    );
    if t0.elapsed() + Duration::from_millis(500) < drain {
        must_echo_ns(
            &ns,
            &mut held,
            "still draining\n",
            "old master's connection during stop",
        );
    }
    closed_cleanly(
        &ns,
        &mut held,
        drain + MARGIN,
        "old master's connection not closed cleanly",
    );
    assert!(
        ns.wait_prop("ActiveState", "inactive", Duration::from_secs(20) + MARGIN),
        "unit not inactive: {:?}\n{}",
        ns.show("corral.service", &["ActiveState", "SubState", "Result"]),
        ns.log_tail(40)
    );
    assert_eq!(ns.prop("Result"), "success", "{}", ns.log_tail(40));
    let left = ns.corral_processes();
    assert!(left.is_empty(), "processes left after stop: {left:?}");
}
