//! Unit tests of what a reload reads, opens and tells systemd, over the fake effects:
//! the config comes from the fake's memory, listeners are `/dev/null`, and every
//! `sd_notify` is recorded, so a bad config, a missing file, a new worker count and
//! the order of the notices are checked without a file, a port or a process.

use std::time::Duration;

use super::control::Request;
use super::effects::{Effects, Notice};
use super::fake::{config_text, Bench, Did};
use super::{Command, Job, WorkerState};
use crate::channel::ToWorker;
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

/// What the fake did after the first `skip` effects.
fn since(b: &Bench, skip: usize) -> Vec<Did> {
    b.fx.done().into_iter().skip(skip).collect()
}

#[test]
fn a_reload_with_a_bad_config_changes_nothing_and_names_key_and_reason() {
    let mut b = Bench::running(2, "");
    let path = b.config_path();
    b.fx.write_config(&path, Some("[master]\nworkers = \"many\"\n"));
    let before = b.fx.done().len();
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);

    let got = r.answer().expect("the reload is answered at once");
    assert!(!got.ok, "{got:?}");
    // The file's name comes from figment's file provider, which the fake (reading
    // from memory) does not use: the black-box config tests check it.
    for part in ["configuration unchanged", "master.workers", "many"] {
        assert!(got.message.contains(part), "{part:?} in {:?}", got.message);
    }
    assert_eq!(b.state(), "running");
    assert_eq!(b.m.generation, 1);
    let did = since(&b, before);
    assert!(
        !did.iter().any(|d| matches!(
            d,
            Did::Fork(_) | Did::Kill(..) | Did::OpenListeners(_) | Did::Steer
        )),
        "no worker started or stopped, no socket opened: {did:?}"
    );
    // systemd hears the reload begin and end, with the reason in its status line.
    let notices = b.fx.notices();
    let n = notices.len();
    assert_eq!(notices[n - 2], Notice::Reloading);
    match &notices[n - 1] {
        Notice::Ready(status) => assert!(status.contains("last reload failed"), "{status}"),
        other => panic!("READY after a failed reload, not {other:?}"),
    }
    for pid in b.pids(1, WorkerState::Ready) {
        assert!(
            !b.fx
                .sent_to(pid)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::Drain { .. })),
            "generation 1 keeps serving"
        );
    }
}

#[test]
fn a_reload_whose_config_file_is_gone_is_refused_and_says_which_file() {
    let mut b = Bench::running(1, "");
    let path = b.config_path();
    b.fx.write_config(&path, None);
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    let got = r.answer().expect("answered");
    assert!(!got.ok, "{got:?}");
    assert!(
        got.message.contains(&path.display().to_string()),
        "{:?}",
        got.message
    );
    assert_eq!(b.fx.forks(), 1);
    assert_eq!(b.state(), "running");
}

#[test]
fn a_reload_reads_the_new_config_then_starts_commits_steers_and_notifies_in_order() {
    let mut b = Bench::running(2, "");
    let path = b.config_path();
    let dir = path.parent().expect("a directory").to_path_buf();
    b.fx.write_config(&path, Some(&config_text(&dir, 3, "drain_timeout = \"7s\"")));
    let before = b.fx.done().len();
    b.handle(vec![signal(Command::Reload)]);
    assert_eq!(b.state(), "reloading to generation 2");

    let did = since(&b, before);
    let kinds: Vec<&str> = did
        .iter()
        .map(|d| match d {
            Did::Notify(Notice::Reloading) => "reloading",
            Did::LoadConfig(p) if *p == path => "load",
            Did::OpenListeners(1) => "open",
            Did::Fork(_) => "fork",
            other => panic!("unexpected before the new generation is ready: {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["reloading", "load", "open", "fork", "fork", "fork"],
        "systemd first, then the file, the sockets and the three new workers"
    );

    let before = b.fx.done().len();
    b.ready(2);
    assert_eq!(b.state(), "running");
    assert_eq!(b.m.config.master.workers.count(), 3);
    assert_eq!(b.m.config.master.drain_timeout.0, Duration::from_secs(7));
    let did = since(&b, before);
    let steer = did.iter().position(|d| *d == Did::Steer);
    let ready = did
        .iter()
        .position(|d| matches!(d, Did::Notify(Notice::Ready(_))));
    assert!(
        steer.is_some() && ready.is_some() && steer < ready,
        "the new group is steered, then systemd hears READY: {did:?}"
    );
    for pid in b.pids(
        1,
        WorkerState::Draining {
            deadline: b.fx.now(),
        },
    ) {
        assert!(
            b.fx.sent_to(pid)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::Drain { .. })),
            "old worker {pid} told to drain"
        );
    }
}

#[test]
fn systemd_hears_ready_with_the_main_pid_only_once_every_worker_is() {
    let mut b = Bench::starting(2, "");
    assert!(
        b.fx.notices().is_empty(),
        "nothing before the workers are up"
    );
    let first = b.pids(1, WorkerState::Starting)[0];
    b.m.record(vec![(first, crate::channel::ToMaster::Ready)]);
    b.tick();
    assert!(b.fx.notices().is_empty(), "one of two is not enough");
    b.ready(1);
    let notices = b.fx.notices();
    assert!(
        matches!(notices.as_slice(), [Notice::MainPid(p), Notice::Ready(_)] if *p == std::process::id()),
        "{notices:?}"
    );
}

#[test]
fn a_stop_tells_systemd_and_a_reaped_crash_during_it_is_not_respawned() {
    let mut b = Bench::running(2, "");
    b.handle(vec![signal(Command::GracefulStop)]);
    assert_eq!(b.fx.notices().last(), Some(&Notice::Stopping));
    let forks = b.fx.forks();
    let pid = b.m.workers.iter().next().expect("a worker").pid;
    b.exit(
        pid,
        ExitReason::Signal {
            signal: crate::os::master::Signal::SIGSEGV,
            core_dumped: false,
        },
    );
    assert!(b.m.worker_index(pid).is_none(), "reaped");
    assert_eq!(b.fx.forks(), forks, "a stopping master starts nobody");
}

/// Resizes a running `from`-worker master to `to` workers by a rolling reload with
/// `reload_surge = 1`, checking at every step that no more than `max(from, to) + 1`
/// workers of the two generations live, and that it ends with `to` new workers.
fn roll(from: usize, to: usize) {
    let mut b = Bench::running(from, "reload_surge = 1");
    let path = b.config_path();
    let dir = path.parent().expect("a directory").to_path_buf();
    b.fx.write_config(&path, Some(&config_text(&dir, to, "reload_surge = 1")));
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    let cap = from.max(to) + 1;
    for step in 1..=4 * cap {
        let alive = b.m.workers.iter().count();
        assert!(alive <= cap, "step {step}: {alive} alive, cap {cap}");
        if b.state() == "running" {
            let got = r.answer().expect("answered");
            assert!(got.ok, "{got:?}");
            assert_eq!(b.pids(2, WorkerState::Ready).len(), to);
            return;
        }
        b.ready(2);
        let draining = b.pids(
            1,
            WorkerState::Draining {
                deadline: b.fx.now(),
            },
        );
        for pid in draining {
            b.exit(pid, ExitReason::Code(0));
        }
    }
    panic!(
        "a rolling reload {from} -> {to} did not finish: {}",
        b.state()
    );
}

#[test]
fn rolling_reloads_that_shrink_or_grow_the_pool_stay_within_the_surge() {
    roll(3, 1);
    roll(1, 3);
    roll(4, 4);
}
