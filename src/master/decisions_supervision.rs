//! Unit tests of supervision over the fake (`fake.rs`): what each reaped exit means
//! (respawn, a fatal slot left empty, a failed reload, an upgrade rolled back), the
//! drain and stop deadlines with their SIGKILL and its repeat after the kill grace,
//! the watchdog sparing what is already stopping, and recycling by memory.

use std::time::Duration;

use super::control::Request;
use super::fake::Bench;
use super::{Command, Job, WorkerState, EXIT_FATAL};
use crate::channel::{Stats, ToMaster, ToWorker};
use crate::os::master::{Pid, Signal};
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

const CRASH: ExitReason = ExitReason::Signal {
    signal: Signal::SIGSEGV,
    core_dumped: false,
};

fn draining(b: &Bench, generation: u64) -> Vec<Pid> {
    b.m.workers
        .iter()
        .filter(|w| w.generation == generation && matches!(w.state, WorkerState::Draining { .. }))
        .map(|w| w.pid)
        .collect()
}

fn kills(b: &Bench, pid: Pid) -> usize {
    b.fx.signals_to(pid)
        .iter()
        .filter(|s| **s == Signal::SIGKILL)
        .count()
}

#[test]
fn a_worker_that_exits_fatally_leaves_its_slot_empty_until_a_reload() {
    let mut b = Bench::running(2, "");
    let forks = b.fx.forks();
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.exit(pid, ExitReason::Code(EXIT_FATAL));
    b.later(Duration::from_secs(60));
    assert_eq!(b.fx.forks(), forks, "a fatal exit is not respawned");
    assert_eq!(b.m.workers.len(), 1, "the other worker serves on");
    b.handle(vec![signal(Command::Reload)]);
    assert_eq!(
        b.fx.forks(),
        forks + 2,
        "a reload starts every slot again, the fatal one too"
    );
}

#[test]
fn a_child_that_is_no_worker_is_reaped_without_effect() {
    let mut b = Bench::running(1, "");
    let before = b.fx.done();
    b.exit(Pid::from_raw(1 << 24), CRASH);
    assert_eq!(b.fx.done(), before, "nothing forked, nobody signalled");
    assert_eq!(b.pids(1, WorkerState::Ready).len(), 1);
}

#[test]
fn a_new_worker_that_dies_before_it_is_ready_fails_the_reload_and_its_waiter_hears_why() {
    let mut b = Bench::running(2, "");
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    let new = b.pids(2, WorkerState::Starting);
    assert_eq!(new.len(), 2);
    b.exit(new[0], ExitReason::Code(1));
    let got = r.answer().expect("the reload is answered");
    assert!(!got.ok, "{got:?}");
    assert!(
        got.message.contains("generation 1 keeps serving")
            && got.message.contains("before it was ready"),
        "{got:?}"
    );
    assert_eq!(b.state(), "running");
    assert_eq!(
        b.fx.signals_to(new[1]),
        vec![Signal::SIGKILL],
        "the rest of the failed generation is killed"
    );
    assert_eq!(
        b.pids(1, WorkerState::Ready).len(),
        2,
        "the old ones serve on"
    );
}

#[test]
fn an_old_generation_worker_that_crashes_is_not_respawned() {
    let mut b = Bench::running(1, "drain_timeout = \"60s\"");
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let old = draining(&b, 1);
    assert_eq!(old.len(), 1, "generation 1 drains");
    let forks = b.fx.forks();
    b.exit(old[0], CRASH);
    b.later(Duration::from_secs(5));
    assert_eq!(
        b.fx.forks(),
        forks,
        "a draining worker's slot is not refilled"
    );
}

#[test]
fn a_worker_of_the_current_generation_that_exits_cleanly_is_respawned() {
    let mut b = Bench::running(1, "");
    let forks = b.fx.forks();
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.exit(pid, ExitReason::Code(0));
    assert_eq!(
        b.fx.forks(),
        forks + 1,
        "an unexpected exit, even with 0, is refilled"
    );
    assert_eq!(b.m.metrics.own.restarts, 1, "and counted as a restart");
}

#[test]
fn nothing_is_respawned_once_the_master_stops() {
    let mut b = Bench::running(2, "");
    b.handle(vec![signal(Command::GracefulStop)]);
    let forks = b.fx.forks();
    let pid = b.m.workers[0].pid;
    b.exit(pid, CRASH);
    b.later(Duration::from_secs(5));
    assert_eq!(b.fx.forks(), forks, "a stopping master refills nothing");
}

#[test]
fn a_draining_worker_past_its_deadline_is_killed_after_the_backstop_once() {
    let mut b = Bench::running(1, "drain_timeout = \"10s\"");
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let old = draining(&b, 1)[0];
    assert!(
        b.fx.sent_to(old)
            .iter()
            .any(|(m, _)| matches!(m, ToWorker::Drain { .. })),
        "the old worker is told to drain"
    );
    b.later(Duration::from_secs(10));
    assert_eq!(kills(&b, old), 0, "its own drain timeout comes first");
    b.later(Duration::from_millis(600));
    assert_eq!(kills(&b, old), 1, "killed after the backstop");
    b.later(Duration::from_secs(5));
    assert_eq!(kills(&b, old), 1, "a drain deadline kills once");
}

#[test]
fn a_fast_stop_terminates_every_worker_and_kills_stragglers_again_after_the_grace() {
    let mut b = Bench::running(2, "stop_timeout = \"3s\"");
    let pids = b.pids(1, WorkerState::Ready);
    b.handle(vec![signal(Command::FastStop)]);
    assert_eq!(b.state(), "stopping (fast)");
    for &pid in &pids {
        assert_eq!(b.fx.signals_to(pid), vec![Signal::SIGTERM], "SIGTERM first");
        assert!(
            b.fx.sent_to(pid)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::Stop)),
            "and told to stop"
        );
    }
    b.later(Duration::from_millis(2900));
    assert_eq!(kills(&b, pids[0]), 0, "not before stop_timeout");
    b.later(Duration::from_millis(200));
    assert_eq!(kills(&b, pids[0]), 1, "SIGKILL at stop_timeout");
    b.exit(
        pids[1],
        ExitReason::Signal {
            signal: Signal::SIGKILL,
            core_dumped: false,
        },
    );
    b.later(Duration::from_millis(300));
    assert_eq!(kills(&b, pids[0]), 1, "within the kill grace");
    b.later(Duration::from_millis(300));
    assert_eq!(kills(&b, pids[0]), 2, "a survivor is killed again after it");
    assert_eq!(b.m.finished(), None, "not done while it lives");
    b.exit(pids[0], ExitReason::Code(0));
    assert_eq!(b.m.finished(), Some(0));
}

#[test]
fn the_watchdog_spares_a_worker_already_being_stopped() {
    let mut b = Bench::running(1, "watchdog_timeout = \"5s\"\nstop_timeout = \"60s\"");
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.handle(vec![signal(Command::FastStop)]);
    b.later(Duration::from_secs(20));
    assert_eq!(
        b.fx.signals_to(pid),
        vec![Signal::SIGTERM],
        "no SIGABRT for a silent worker that is stopping"
    );
    assert_eq!(b.m.metrics.own.watchdog_kills, 0);
}

#[test]
fn the_watchdog_counts_what_it_fires() {
    let mut b = Bench::running(2, "watchdog_timeout = \"5s\"");
    b.later(Duration::from_secs(5));
    assert_eq!(b.m.metrics.own.watchdog_kills, 2, "both silent workers");
}

#[test]
fn the_new_master_of_an_upgrade_that_exits_is_rolled_back() {
    let mut b = Bench::running(1, "");
    let (child, mut u) = b.upgrade();
    b.exit(child, ExitReason::Code(3));
    let got = u.answer().expect("answered");
    assert!(
        !got.ok && got.message.contains("the new master exited with"),
        "{got:?}"
    );
    assert_eq!(b.state(), "running");
    assert_eq!(
        b.pids(1, WorkerState::Ready).len(),
        1,
        "the old workers serve on"
    );
}

fn rss(b: &mut Bench, pid: Pid, rss: u64) {
    let stats = Stats {
        rss,
        ..Default::default()
    };
    b.m.record(vec![(pid, ToMaster::Heartbeat(stats))]);
}

#[test]
fn a_worker_over_max_worker_rss_is_replaced_once_it_has_lived_a_few_heartbeats() {
    let mut b = Bench::running(
        2,
        "max_worker_rss = \"100MiB\"\nwatchdog_timeout = \"600s\"",
    );
    let fat = b.pids(1, WorkerState::Ready)[0];
    let thin = b.pids(1, WorkerState::Ready)[1];
    let forks = b.fx.forks();
    rss(&mut b, fat, 200 << 20);
    rss(&mut b, thin, 50 << 20);
    b.handle(vec![signal(Command::Recycle)]);
    assert_eq!(b.fx.forks(), forks, "too young to be judged by its memory");

    b.later(Duration::from_secs(120));
    rss(&mut b, fat, 200 << 20);
    rss(&mut b, thin, 50 << 20);
    b.handle(vec![signal(Command::Recycle)]);
    assert_eq!(b.fx.forks(), forks + 1, "one replacement, for the fat one");
    b.handle(vec![signal(Command::Recycle)]);
    assert_eq!(
        b.fx.forks(),
        forks + 1,
        "not a second one while it is replaced"
    );
    b.ready(1);
    assert_eq!(
        draining(&b, 1),
        vec![fat],
        "the fat one drains once its successor is ready"
    );
    let forks = b.fx.forks();
    b.exit(fat, ExitReason::Code(0));
    assert_eq!(b.fx.forks(), forks, "its clean exit is no crash");
}

#[test]
fn a_reopen_asks_every_worker_and_is_answered() {
    let mut b = Bench::running(2, "");
    let (reopen, mut r) = b.ask(Request::Reopen);
    b.handle(vec![reopen]);
    assert!(r.answer().is_some(), "the reopen is answered");
    for pid in b.pids(1, WorkerState::Ready) {
        assert!(
            b.fx.sent_to(pid)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::ReopenLogs)),
            "worker {pid} is asked to reopen"
        );
    }
}
