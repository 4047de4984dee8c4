//! Unit tests of the binary upgrade's policy over the fake (`fake.rs`, whose
//! `start_master` forks nothing): a new master that reports ready takes over and
//! this one drains and exits; one that fails, closes its pipe or exits first is
//! rolled back with its reason; an upgrade is refused while one runs or the master
//! stops.

use super::control::Request;
use super::fake::{Bench, Did};
use super::{Command, Job, WorkerState};
use crate::channel::ToWorker;
use crate::os::master::Signal;
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

fn started(b: &Bench) -> usize {
    b.fx.done()
        .iter()
        .filter(|d| matches!(d, Did::StartMaster(_)))
        .count()
}

#[test]
fn a_new_master_that_reports_ready_takes_over_and_this_one_drains_and_exits() {
    let mut b = Bench::running(2, "watchdog_timeout = \"600s\"");
    let pids = b.pids(1, WorkerState::Ready);
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    assert!(u.answer().is_none(), "not before the report");
    b.fx.report("ready 4242\n");
    b.handle(vec![signal(Command::UpgradeReported)]);
    let got = u.answer().expect("the upgrade is answered");
    assert!(
        got.ok && got.message.contains("new master 4242 is serving"),
        "{got:?}"
    );
    assert_eq!(b.state(), "stopping (graceful)", "this master drains");
    assert!(b.m.up.handed_over, "and knows it handed over");
    for &pid in &pids {
        assert!(
            b.fx.sent_to(pid)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::Drain { .. })),
            "worker {pid} drains"
        );
    }
    let forks = b.fx.forks();
    for pid in pids {
        b.exit(pid, ExitReason::Code(0));
    }
    assert_eq!(b.fx.forks(), forks, "nothing is respawned");
    assert_eq!(b.m.finished(), Some(0), "then it exits");
    assert!(
        !b.fx.done().iter().any(|d| matches!(d, Did::KillGroup(..))),
        "the new master is left alone"
    );
}

#[test]
fn a_new_master_that_closes_its_pipe_without_a_report_is_rolled_back() {
    let mut b = Bench::running(1, "");
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.close_report();
    b.handle(vec![signal(Command::UpgradeReported)]);
    let got = u.answer().expect("answered");
    assert!(
        !got.ok && got.message.contains("before it was ready"),
        "{got:?}"
    );
    assert_eq!(b.state(), "running");
}

#[test]
fn a_new_master_that_exits_first_is_rolled_back_with_its_failure_if_it_said_one() {
    let mut b = Bench::running(1, "");
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.report("error no such service\n");
    b.handle(vec![signal(Command::UpgradeExited)]);
    let got = u.answer().expect("answered");
    assert!(
        !got.ok
            && got
                .message
                .contains("the new master failed: no such service"),
        "{got:?}"
    );
    assert!(b.fx.done().contains(&Did::SignalPidfd(Signal::SIGKILL)));

    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.handle(vec![signal(Command::UpgradeExited)]);
    let got = u.answer().expect("answered");
    assert!(
        !got.ok && got.message.contains("before it was ready"),
        "{got:?}"
    );
    assert_eq!(b.state(), "running");
    assert_eq!(b.pids(1, WorkerState::Ready).len(), 1);
}

#[test]
fn an_unintelligible_report_fails_the_upgrade() {
    let mut b = Bench::running(1, "");
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.report("hello\n");
    b.handle(vec![signal(Command::UpgradeReported)]);
    let got = u.answer().expect("answered");
    assert!(
        !got.ok && got.message.contains("unintelligible report: hello"),
        "{got:?}"
    );
}

#[test]
fn a_partial_report_waits_for_the_rest_of_its_line() {
    let mut b = Bench::running(1, "");
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.report("rea");
    b.handle(vec![signal(Command::UpgradeReported)]);
    assert!(u.answer().is_none(), "half a line decides nothing");
    assert!(b.state().starts_with("upgrading"));
    b.fx.report("dy 77\n");
    b.handle(vec![signal(Command::UpgradeReported)]);
    let got = u.answer().expect("answered");
    assert!(got.ok, "{got:?}");
}

#[test]
fn an_upgrade_is_refused_while_one_runs_or_the_master_stops() {
    let mut b = Bench::running(1, "");
    let (first, _f) = b.ask(Request::Upgrade);
    b.handle(vec![first]);
    let (second, mut s) = b.ask(Request::Upgrade);
    b.handle(vec![second]);
    let got = s.answer().expect("the second is answered at once");
    assert!(!got.ok && got.message.contains("busy"), "{got:?}");
    assert_eq!(started(&b), 1, "one new master only");

    let mut b = Bench::running(1, "");
    b.handle(vec![signal(Command::GracefulStop)]);
    let (late, mut l) = b.ask(Request::Upgrade);
    b.handle(vec![late]);
    let got = l.answer().expect("answered");
    assert!(!got.ok && got.message.contains("busy"), "{got:?}");
    assert_eq!(started(&b), 0);
}

#[test]
fn two_upgrades_in_one_batch_start_one_new_master() {
    let mut b = Bench::running(1, "");
    let (a, mut x) = b.ask(Request::Upgrade);
    let (c, mut y) = b.ask(Request::Upgrade);
    b.handle(vec![a, c]);
    assert_eq!(started(&b), 1);
    let got = y.answer().expect("the second is answered");
    assert!(!got.ok, "{got:?}");
    assert!(x.answer().is_none(), "the first waits for its outcome");
}

#[test]
fn upgrade_outcomes_are_counted_in_the_metrics() {
    let mut b = Bench::running(1, "");
    b.handle(vec![signal(Command::Upgrade)]);
    b.fx.report("error nope\n");
    b.handle(vec![signal(Command::UpgradeReported)]);
    let text = b.m.prometheus();
    assert!(text.contains("corral_upgrades_total"), "{text}");
    let failed = text
        .lines()
        .find(|l| l.starts_with("corral_upgrades_total") && l.contains("fail"))
        .unwrap_or_else(|| panic!("a failed upgrade sample in\n{text}"));
    assert!(failed.ends_with(" 1"), "{failed}");
}
