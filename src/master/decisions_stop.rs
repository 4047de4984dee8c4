//! Unit tests of starting and stopping over the fake (`fake.rs`): a startup that
//! fails (a fatal worker, a timeout) stops fast with exit code 1; graceful and fast
//! stops and how they combine; a stop that cuts an upgrade short; parking refused
//! while busy; and the exit, where every client still waiting is answered.

use std::time::Duration;

use super::control::Request;
use super::fake::{Bench, Did};
use super::{Command, Job, State, WorkerState, EXIT_FATAL, START_TIMEOUT};
use crate::channel::ToWorker;
use crate::os::master::{Pid, Signal};
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

fn told(b: &Bench, pid: Pid, what: fn(&ToWorker) -> bool) -> bool {
    b.fx.sent_to(pid).iter().any(|(m, _)| what(m))
}

#[test]
fn a_startup_serves_once_every_worker_is_ready() {
    let mut b = Bench::starting(2, "");
    assert_eq!(b.state(), "starting");
    let pids = b.pids(1, WorkerState::Starting);
    b.m.record(vec![(pids[0], crate::channel::ToMaster::Ready)]);
    b.tick();
    assert_eq!(b.state(), "starting", "one of two is not enough");
    b.m.record(vec![(pids[1], crate::channel::ToMaster::Ready)]);
    b.tick();
    assert_eq!(b.state(), "running");
    assert_eq!(b.m.finished(), None);
}

#[test]
fn a_fatal_worker_at_startup_stops_the_master_fast_with_exit_code_1() {
    let mut b = Bench::starting(2, "");
    let pids = b.pids(1, WorkerState::Starting);
    b.exit(pids[0], ExitReason::Code(EXIT_FATAL));
    assert_eq!(b.state(), "stopping (fast)", "startup failed");
    assert_eq!(
        b.fx.signals_to(pids[1]),
        vec![Signal::SIGTERM],
        "the other worker is stopped"
    );
    assert_eq!(b.m.finished(), None, "not before it is gone");
    b.exit(pids[1], ExitReason::Code(0));
    assert_eq!(b.m.finished(), Some(1), "a failed startup exits with 1");
}

#[test]
fn a_startup_not_ready_in_time_fails() {
    let mut b = Bench::starting(1, "");
    b.later(START_TIMEOUT - Duration::from_secs(1));
    assert_eq!(b.state(), "starting");
    b.later(Duration::from_secs(1));
    assert_eq!(b.state(), "stopping (fast)");
    let pid = b.m.workers[0].pid;
    b.exit(pid, ExitReason::Code(0));
    assert_eq!(b.m.finished(), Some(1));
}

#[test]
fn a_crash_at_startup_is_respawned_and_startup_goes_on() {
    let mut b = Bench::starting(1, "");
    let pid = b.pids(1, WorkerState::Starting)[0];
    b.exit(
        pid,
        ExitReason::Signal {
            signal: Signal::SIGSEGV,
            core_dumped: true,
        },
    );
    assert_eq!(b.fx.forks(), 2, "refilled");
    assert_eq!(b.state(), "starting");
    b.ready(1);
    assert_eq!(b.state(), "running");
}

#[test]
fn a_fast_stop_overrides_a_graceful_one_but_not_the_reverse() {
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    b.handle(vec![signal(Command::GracefulStop)]);
    assert_eq!(b.state(), "stopping (graceful)");
    for &pid in &pids {
        assert!(
            told(&b, pid, |m| matches!(m, ToWorker::Drain { .. })),
            "a graceful stop drains"
        );
        assert!(b.fx.signals_to(pid).is_empty(), "and signals nobody");
    }
    b.handle(vec![signal(Command::FastStop)]);
    assert_eq!(b.state(), "stopping (fast)", "a fast stop escalates");
    for &pid in &pids {
        assert_eq!(b.fx.signals_to(pid), vec![Signal::SIGTERM]);
    }
    let (quit, mut q) = b.ask(Request::Quit);
    b.handle(vec![quit]);
    assert_eq!(
        b.state(),
        "stopping (fast)",
        "a graceful one does not soften it"
    );
    let got = q.answer().expect("the late quit is answered");
    assert!(got.ok, "{got:?}");
    for &pid in &pids {
        assert_eq!(b.fx.signals_to(pid).len(), 1, "nobody signalled twice");
    }
}

#[test]
fn a_graceful_stop_kills_what_still_drains_at_its_deadline() {
    let mut b = Bench::running(1, "drain_timeout = \"10s\"\nwatchdog_timeout = \"600s\"");
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.handle(vec![signal(Command::GracefulStop)]);
    b.later(Duration::from_secs(9));
    assert!(b.fx.signals_to(pid).is_empty(), "within drain_timeout");
    b.later(Duration::from_secs(2));
    assert_eq!(
        b.fx.signals_to(pid),
        vec![Signal::SIGKILL],
        "killed at the stop's deadline"
    );
    b.exit(
        pid,
        ExitReason::Signal {
            signal: Signal::SIGKILL,
            core_dumped: false,
        },
    );
    assert_eq!(b.m.finished(), Some(0));
}

#[test]
fn a_stop_during_an_upgrade_rolls_it_back_and_answers_its_waiter() {
    let mut b = Bench::running(1, "");
    let (child, mut u) = b.upgrade();
    b.handle(vec![signal(Command::FastStop)]);
    let got = u.answer().expect("the upgrade is answered");
    assert!(!got.ok && got.message.contains("stopping"), "{got:?}");
    assert!(
        b.fx.done()
            .contains(&Did::KillGroup(child, Signal::SIGKILL)),
        "the new master is killed"
    );
    assert_eq!(b.state(), "stopping (fast)");
}

#[test]
fn parking_is_refused_while_a_reload_runs() {
    let mut b = Bench::running(1, "");
    let old = b.pids(1, WorkerState::Ready)[0];
    b.handle(vec![signal(Command::Reload)]);
    let _ = b.fx.sent_to(old);
    b.handle(vec![signal(Command::StopWorkers)]);
    assert!(
        !told(&b, old, |m| matches!(m, ToWorker::Drain { .. })),
        "SIGWINCH is ignored while busy"
    );
    assert!(b.m.slots.iter().all(|s| !s.parked), "no slot parked");
}

#[test]
fn at_exit_every_client_still_waiting_is_answered() {
    let mut b = Bench::running(1, "");
    let (_never_handled, mut w) = b.ask(Request::Reload);
    let (quit, mut q) = b.ask(Request::Quit);
    b.handle(vec![quit]);
    let got = q.answer().expect("the quit is answered at once");
    assert!(
        got.ok && got.message.contains("graceful stop started"),
        "{got:?}"
    );
    let pid = b.m.workers[0].pid;
    b.exit(pid, ExitReason::Code(0));
    assert_eq!(b.m.finished(), Some(0));
    b.m.cleanup();
    let got = w.answer().expect("the waiting client is answered");
    assert!(
        !got.ok && got.message.contains("exited before this request was done"),
        "{got:?}"
    );
}

#[test]
fn shutting_down_at_once_kills_every_worker() {
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    b.m.shutdown_now();
    for pid in pids {
        assert_eq!(b.fx.signals_to(pid), vec![Signal::SIGKILL]);
    }
    assert!(b.m.workers.is_empty(), "the table is empty");
    assert!(matches!(b.m.state, State::Running));
}
