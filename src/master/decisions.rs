//! Unit tests of the master's decisions, over the fake effects (`fake.rs`): no process
//! is forked and no signal sent; each test drives a real `Master` through the same
//! steps as its loop and checks what it did and what every waiter heard.

use std::time::Duration;

use super::control::Request;
use super::fake::{Bench, Did};
use super::{Command, Job, State, WorkerState};
use crate::os::master::Signal;
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

#[test]
fn reloads_during_a_reload_coalesce_into_one_more_and_every_waiter_hears() {
    let mut b = Bench::running(2, "");
    let (first, mut a) = b.ask(Request::Reload);
    b.handle(vec![first]);
    assert_eq!(b.state(), "reloading to generation 2");
    assert_eq!(b.fx.forks(), 4);
    // Three more while it starts: a client, a SIGHUP, another client.
    let (second, mut c) = b.ask(Request::Reload);
    b.handle(vec![second]);
    b.handle(vec![signal(Command::Reload)]);
    let (third, mut d) = b.ask(Request::Reload);
    b.handle(vec![third]);
    assert_eq!(
        b.fx.forks(),
        4,
        "nothing more starts while generation 2 does"
    );
    assert!(a.answer().is_none(), "not answered before it is done");

    b.ready(2);
    let got = a.answer().expect("the first reload is answered");
    assert!(got.ok && got.message.contains("generation 2"), "{got:?}");
    // The queued one runs once the first is done: one reload for the three.
    b.tick();
    assert_eq!(b.state(), "reloading to generation 3");
    assert_eq!(b.fx.forks(), 6);
    b.ready(3);
    for w in [&mut c, &mut d] {
        let got = w.answer().expect("every queued waiter is answered");
        assert!(got.ok && got.message.contains("generation 3"), "{got:?}");
    }
    b.tick();
    assert_eq!(b.state(), "running", "no fourth reload");
    assert_eq!(b.fx.forks(), 6);
}

#[test]
fn an_upgrade_during_a_reload_is_refused_once_the_reload_ends() {
    let mut b = Bench::running(1, "");
    let (reload, _r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    assert!(u.answer().is_none(), "held until the reload ends");
    b.ready(2);
    let got = u.answer().expect("answered when the reload ends");
    assert!(
        !got.ok && got.message.contains("reload was in progress"),
        "{got:?}"
    );
    assert!(
        !b.fx.done().iter().any(|d| matches!(d, Did::StartMaster(_))),
        "no new master was started"
    );
    assert_eq!(b.state(), "running");
}

#[test]
fn an_upgrade_that_does_not_report_in_time_is_rolled_back() {
    let mut b = Bench::running(1, "upgrade_timeout = \"5s\"");
    let (child, mut u) = b.upgrade();
    assert!(b.state().starts_with("upgrading"));
    b.later(Duration::from_secs(4));
    assert!(
        b.state().starts_with("upgrading"),
        "still within upgrade_timeout"
    );
    assert!(u.answer().is_none());
    b.later(Duration::from_secs(2));
    let got = u.answer().expect("the upgrade is answered");
    assert!(!got.ok && got.message.contains("rolled back"), "{got:?}");
    assert!(got.message.contains("upgrade_timeout"), "{got:?}");
    let done = b.fx.done();
    assert!(
        done.contains(&Did::KillGroup(child, Signal::SIGKILL)),
        "{done:?}"
    );
    assert!(
        done.contains(&Did::SignalPidfd(Signal::SIGKILL)),
        "{done:?}"
    );
    assert_eq!(b.state(), "running");
    assert_eq!(
        b.pids(1, WorkerState::Ready).len(),
        1,
        "the old workers serve on"
    );
}

#[test]
fn an_upgrade_whose_new_master_fails_is_rolled_back_with_its_reason() {
    let mut b = Bench::running(1, "");
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.report("error cannot bind: address in use\n");
    b.handle(vec![signal(Command::UpgradeReported)]);
    let got = u.answer().expect("answered");
    assert!(!got.ok, "{got:?}");
    assert!(
        got.message.contains("cannot bind: address in use"),
        "{got:?}"
    );
    assert_eq!(b.state(), "running");
}

#[test]
fn a_crashing_slot_is_respawned_at_once_then_with_a_growing_backoff() {
    let mut b = Bench::running(1, "");
    let crash = ExitReason::Signal {
        signal: Signal::SIGSEGV,
        core_dumped: false,
    };
    let forks = b.fx.forks();
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.exit(pid, crash);
    assert_eq!(
        b.fx.forks(),
        forks + 1,
        "an isolated crash is refilled at once"
    );

    let pid = b.pids(1, WorkerState::Starting)[0];
    b.exit(pid, crash);
    assert_eq!(b.fx.forks(), forks + 1, "a second crash in a row waits");
    b.later(Duration::from_millis(60));
    assert_eq!(b.fx.forks(), forks + 1, "not before 100 ms");
    b.later(Duration::from_millis(50));
    assert_eq!(b.fx.forks(), forks + 2, "refilled after 100 ms");

    let pid = b.pids(1, WorkerState::Starting)[0];
    b.exit(pid, crash);
    b.later(Duration::from_millis(150));
    assert_eq!(b.fx.forks(), forks + 2, "the third waits 200 ms");
    b.later(Duration::from_millis(60));
    assert_eq!(b.fx.forks(), forks + 3);
}

#[test]
fn a_hung_worker_gets_sigabrt_then_sigkill_once() {
    let mut b = Bench::running(2, "watchdog_timeout = \"10s\"");
    let hung = b.pids(1, WorkerState::Ready)[0];
    let alive = b.pids(1, WorkerState::Ready)[1];
    b.later(Duration::from_secs(6));
    let beat = vec![(
        alive,
        crate::channel::ToMaster::Heartbeat(Default::default()),
    )];
    b.m.record(beat);
    b.later(Duration::from_secs(5));
    assert_eq!(
        b.fx.signals_to(hung),
        vec![Signal::SIGABRT, Signal::SIGCONT],
        "no heartbeat for the timeout: SIGABRT (and SIGCONT, in case it is stopped)"
    );
    assert!(
        b.fx.signals_to(alive).is_empty(),
        "a worker that beats is left alone"
    );
    b.later(Duration::from_secs(1));
    assert_eq!(b.fx.signals_to(hung).len(), 2, "a grace for the core dump");
    b.later(Duration::from_millis(1100));
    assert_eq!(b.fx.signals_to(hung).last(), Some(&Signal::SIGKILL));
    b.later(Duration::from_secs(30));
    let kills =
        b.fx.signals_to(hung)
            .iter()
            .filter(|s| **s == Signal::SIGKILL)
            .count();
    assert_eq!(kills, 1, "SIGKILL is sent once");
}

#[test]
fn old_generations_beyond_the_cap_are_stopped_oldest_first() {
    let mut b = Bench::running(1, "max_old_generations = 1\ndrain_timeout = \"60s\"");
    for generation in [2, 3] {
        b.handle(vec![signal(Command::Reload)]);
        b.ready(generation);
    }
    let (first, second) = (b.pids(1, draining())[0], b.pids(2, draining())[0]);
    b.later(Duration::from_millis(500));
    assert!(
        !b.fx.signals_to(first).contains(&Signal::SIGTERM),
        "not within the grace"
    );
    b.later(Duration::from_millis(600));
    assert!(
        b.fx.signals_to(first).contains(&Signal::SIGTERM),
        "the oldest is cut short"
    );
    assert!(
        !b.fx.signals_to(second).contains(&Signal::SIGTERM),
        "the newest old generation drains on"
    );
}

fn draining() -> WorkerState {
    WorkerState::Draining {
        deadline: std::time::Instant::now(),
    }
}

#[test]
fn a_stop_answers_every_waiter_including_those_it_overtakes() {
    let mut b = Bench::running(2, "");
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    let (queued, mut q) = b.ask(Request::Reload);
    let (upgrade, mut u) = b.ask(Request::Upgrade);
    b.handle(vec![queued, upgrade]);
    // A stop and a reload in one batch: the stop wins.
    let (late, mut l) = b.ask(Request::Reload);
    let (stop, mut s) = b.ask(Request::Quit);
    b.handle(vec![late, stop]);
    for (who, w) in [
        ("in flight", &mut r),
        ("queued", &mut q),
        ("same batch", &mut l),
    ] {
        let got = w
            .answer()
            .unwrap_or_else(|| panic!("the {who} reload is answered"));
        assert!(
            !got.ok && got.message.contains("stopping"),
            "{who}: {got:?}"
        );
    }
    let got = u.answer().expect("the refused upgrade is answered");
    assert!(!got.ok && got.message.contains("stopping"), "{got:?}");
    let got = s.answer().expect("the stop is answered");
    assert!(
        got.ok && got.message.contains("graceful stop started"),
        "{got:?}"
    );
    assert_eq!(b.state(), "stopping (graceful)");
    assert_eq!(b.m.finished(), None, "workers are still draining");
    for pid in b.m.workers.iter().map(|w| w.pid).collect::<Vec<_>>() {
        b.exit(pid, ExitReason::Code(0));
    }
    assert!(matches!(b.m.state, State::Stopping { .. }));
    assert_eq!(b.m.finished(), Some(0), "stopped once every worker is gone");
}

/// Live workers of the two generations of a rolling reload (old 1, new 2).
fn alive(b: &Bench) -> usize {
    b.m.workers
        .iter()
        .filter(|w| w.generation == 1 || w.generation == 2)
        .count()
}

#[test]
fn a_rolling_reload_replaces_one_slot_at_a_time_within_the_surge() {
    let mut b = Bench::running(3, "reload_surge = 1");
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    assert_eq!(b.fx.forks(), 4, "one new worker to start with");
    let mut peak = alive(&b);
    for slot in 0..3 {
        b.ready(2);
        peak = peak.max(alive(&b));
        // The slot's old worker drains only once its successor is ready; the next
        // slot waits for it to exit (3 old + 1 new is the most allowed).
        let old: Vec<_> = b.pids(1, draining());
        assert_eq!(old.len(), 1, "slot {slot}: one old worker drains at a time");
        assert_eq!(
            b.fx.forks(),
            4 + slot,
            "slot {slot}: nothing more before it exits"
        );
        b.exit(old[0], ExitReason::Code(0));
        peak = peak.max(alive(&b));
    }
    assert_eq!(b.fx.forks(), 6, "three new workers in all");
    assert!(peak <= 4, "at most workers + surge alive: {peak}");
    assert_eq!(b.pids(2, WorkerState::Ready).len(), 3);
    assert!(b.pids(1, WorkerState::Ready).is_empty());
    let got = r.answer().expect("the reload is answered");
    assert!(got.ok && got.message.contains("generation 2"), "{got:?}");
    assert_eq!(b.state(), "running");
}

#[test]
fn a_rolling_reload_whose_new_worker_dies_gives_replaced_slots_their_old_generation_back() {
    let mut b = Bench::running(3, "reload_surge = 1");
    let (reload, mut r) = b.ask(Request::Reload);
    b.handle(vec![reload]);
    b.ready(2);
    let replaced = b.pids(2, WorkerState::Ready);
    let old0 = b.pids(1, draining());
    b.exit(old0[0], ExitReason::Code(0));
    // Slot 1's new worker starts, then crashes before it is ready.
    let crashing = b.pids(2, WorkerState::Starting);
    assert_eq!(crashing.len(), 1);
    let forks = b.fx.forks();
    b.exit(
        crashing[0],
        ExitReason::Signal {
            signal: Signal::SIGSEGV,
            core_dumped: false,
        },
    );
    let got = r.answer().expect("the failed reload is answered");
    assert!(!got.ok, "{got:?}");
    assert!(got.message.contains("rolling back slot(s) [0]"), "{got:?}");
    // Slot 0 gets a generation-1 worker again; its generation-2 worker keeps serving
    // (marked for recycling) until that one is ready, then drains.
    assert_eq!(
        b.fx.forks(),
        forks + 1,
        "one old-generation worker for slot 0"
    );
    let refill = b.pids(1, WorkerState::Starting);
    assert_eq!(refill.len(), 1);
    let rec = |b: &Bench, pid| {
        b.m.workers
            .iter()
            .find(|w| w.pid == pid)
            .map(|w| (w.slot, w.recycling, w.state.name()))
    };
    assert_eq!(rec(&b, refill[0]).map(|r| r.0), Some(0));
    assert_eq!(
        rec(&b, replaced[0]),
        Some((0, true, "ready")),
        "serves until its slot is refilled"
    );
    b.ready(1);
    assert_eq!(
        rec(&b, replaced[0]).map(|r| r.2),
        Some("draining"),
        "drains once the old generation serves its slot again"
    );
    assert_eq!(
        b.pids(1, WorkerState::Ready).len(),
        3,
        "generation 1 serves every slot"
    );
    assert_eq!(b.state(), "running");
}

/// A heartbeat from `pid` saying it has served `accepted` connections.
fn beat(b: &mut Bench, pid: crate::os::master::Pid, accepted: u64) {
    let stats = crate::channel::Stats {
        accepted,
        ..Default::default()
    };
    if b.m
        .record(vec![(pid, crate::channel::ToMaster::Heartbeat(stats))])
    {
        b.handle(vec![signal(Command::Recycle)]);
    }
}

#[test]
fn workers_past_max_requests_are_replaced_one_slot_at_a_time_successor_first() {
    let mut b = Bench::running(2, "[worker]\nmax_requests = 10\nmax_requests_jitter = 0");
    let (a, c) = {
        let ready = b.pids(1, WorkerState::Ready);
        (ready[0], ready[1])
    };
    beat(&mut b, a, 9);
    assert_eq!(b.fx.forks(), 2, "under its limit: nothing");
    beat(&mut b, a, 10);
    beat(&mut b, c, 50);
    assert_eq!(
        b.fx.forks(),
        3,
        "one replacement at a time, the oldest due first"
    );
    let successor = b.pids(1, WorkerState::Starting);
    assert_eq!(successor.len(), 1);
    assert!(
        b.fx.signals_to(a).is_empty() && b.pids(1, draining()).is_empty(),
        "the worker serves on until its successor is ready"
    );
    b.ready(1);
    assert_eq!(b.pids(1, draining()), vec![a], "then it drains");
    beat(&mut b, c, 51);
    assert_eq!(
        b.fx.forks(),
        3,
        "the next waits until the recycled one has exited"
    );
    b.exit(a, ExitReason::Code(0));
    beat(&mut b, c, 52);
    assert_eq!(b.fx.forks(), 4, "now the other slot");
    b.ready(1);
    assert_eq!(b.pids(1, draining()), vec![c]);
    assert_eq!(
        b.pids(1, WorkerState::Ready).len(),
        2,
        "capacity never dipped"
    );
}

#[test]
fn parked_workers_drain_and_are_not_respawned_until_a_reload() {
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    b.handle(vec![signal(Command::StopWorkers)]);
    assert_eq!(
        b.pids(1, draining()).len(),
        2,
        "SIGWINCH drains every worker"
    );
    for pid in pids {
        b.exit(pid, ExitReason::Code(0));
    }
    b.later(Duration::from_secs(30));
    assert_eq!(b.fx.forks(), 2, "parked slots are not respawned");
    assert!(b.m.workers.is_empty());
    b.handle(vec![signal(Command::Reload)]);
    assert_eq!(b.fx.forks(), 4, "a reload starts workers again");
    b.ready(2);
    assert_eq!(b.pids(2, WorkerState::Ready).len(), 2);
    b.later(Duration::from_secs(30));
    assert_eq!(b.fx.forks(), 4);
}

/// The value of the sample `line_start` (a metric name with its labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_exposition_is_well_formed_and_totals_outlive_their_workers() {
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    for &pid in &pids {
        beat(&mut b, pid, 5);
    }
    let text = b.m.prometheus();
    // Each family once, HELP then TYPE, then only its own samples; every sample a
    // name, optional labels and a number.
    let mut families = std::collections::HashSet::new();
    let mut current = String::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            current = rest.split(' ').next().unwrap_or_default().to_string();
            assert!(families.insert(current.clone()), "{current} twice");
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            assert!(
                rest.starts_with(&format!("{current} ")),
                "TYPE out of place: {l}"
            );
        } else {
            let (name, value) = l.rsplit_once(' ').expect("name and value");
            let bare = name.split('{').next().unwrap_or_default();
            assert!(
                bare == current
                    || bare
                        .strip_prefix(current.as_str())
                        .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count")),
                "sample {bare} under family {current}"
            );
            assert!(value.parse::<f64>().is_ok(), "not a number: {l}");
            if let Some(labels) = name.strip_prefix(bare) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{l}"
                );
            }
        }
    }
    assert!(families.len() > 20, "{} families", families.len());
    assert_eq!(sample(&text, "corral_accepted_total"), Some(10.0), "{text}");
    assert_eq!(sample(&text, "corral_generation"), Some(1.0));

    // A worker's counts stay in the totals after it exits; its respawn starts at 0.
    b.exit(
        pids[0],
        ExitReason::Signal {
            signal: Signal::SIGKILL,
            core_dumped: false,
        },
    );
    let text = b.m.prometheus();
    assert_eq!(sample(&text, "corral_accepted_total"), Some(10.0), "{text}");
    assert_eq!(
        sample(&text, "corral_worker_restarts_total"),
        Some(1.0),
        "{text}"
    );
}

/// `n` connections as a draining worker hands them over (socketpairs stand in for
/// the clients; the test keeps the other ends so the fds stay whole).
fn handed(
    n: usize,
) -> (
    Vec<(crate::channel::Handed, std::os::fd::OwnedFd)>,
    Vec<std::os::unix::net::UnixStream>,
) {
    let mut conns = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..n {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let h = crate::channel::Handed {
            listen: "127.0.0.1:1".into(),
            peer: None,
            moved: None,
            tls: None,
        };
        conns.push((h, std::os::fd::OwnedFd::from(a)));
        peers.push(b);
    }
    (conns, peers)
}

/// The connections in the `Adopt` (or `Keep`) messages among `msgs`, checking that
/// each message carries one fd per connection and at most a batch.
fn count(msgs: &[(crate::channel::ToWorker, Vec<std::os::fd::OwnedFd>)], keep: bool) -> usize {
    use crate::channel::ToWorker;
    msgs.iter()
        .filter_map(|(m, fds)| match m {
            ToWorker::Adopt { conns } if !keep => Some((conns.len(), fds.len())),
            ToWorker::Keep { conns, .. } if keep => Some((conns.len(), fds.len())),
            _ => None,
        })
        .map(|(c, f)| {
            assert_eq!(c, f, "one fd per connection");
            assert!(c <= 64, "a batch of {c}");
            c
        })
        .sum()
}

#[test]
fn handed_over_connections_are_spread_over_the_new_generation_none_lost() {
    let mut b = Bench::running(2, "");
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let old = b.pids(1, draining());
    let from =
        b.m.workers
            .iter()
            .position(|w| w.pid == old[0])
            .expect("old worker");
    let (conns, _peers) = handed(300);
    b.m.forward(Some(from), conns);
    let got: Vec<usize> = b
        .pids(2, WorkerState::Ready)
        .into_iter()
        .map(|p| count(&b.fx.sent_to(p), false))
        .collect();
    assert_eq!(
        got.iter().sum::<usize>(),
        300,
        "every connection placed: {got:?}"
    );
    assert!(got.iter().all(|&n| n >= 100), "spread over both: {got:?}");
    assert_eq!(
        b.m.handoff_in_flight(),
        0,
        "nothing left held by the master"
    );
    assert!(
        b.fx.sent_to(old[1])
            .iter()
            .all(|(m, _)| !matches!(m, crate::channel::ToWorker::Adopt { .. })),
        "nothing to a draining worker"
    );
}

#[test]
fn with_no_worker_to_adopt_them_connections_go_back_to_their_worker() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let _ = b.fx.sent_to(pid);
    let (conns, _peers) = handed(100);
    b.m.forward(Some(0), conns);
    let msgs = b.fx.sent_to(pid);
    assert_eq!(count(&msgs, true), 100, "all kept by their worker");
    assert_eq!(count(&msgs, false), 0);
    assert!(
        msgs.iter().any(|(m, _)| matches!(m, crate::channel::ToWorker::Keep { reason, .. } if reason.contains("no ready worker"))),
        "with the reason"
    );
}

#[test]
fn connections_for_a_worker_whose_channel_failed_go_to_another_one() {
    let mut b = Bench::running(2, "");
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let from =
        b.m.workers
            .iter()
            .position(|w| w.generation == 1)
            .expect("old worker");
    let new = b.pids(2, WorkerState::Ready);
    // One new worker exits: its end of the channel closes before the master knows.
    b.fx.close_channel(new[0]);
    let (conns, _peers) = handed(200);
    b.m.forward(Some(from), conns);
    assert_eq!(
        count(&b.fx.sent_to(new[1]), false),
        200,
        "every connection re-routed to the live one"
    );
    assert_eq!(b.m.handoff_in_flight(), 0);
}

#[test]
fn status_names_every_worker_and_each_generation_with_its_state() {
    let mut b = Bench::running(2, "");
    let (job, mut a) = b.ask(Request::Status);
    b.handle(vec![job]);
    let got = a.answer().expect("status is answered");
    assert!(got.ok, "{got:?}");
    assert_eq!((got.generation, got.workers.len()), (1, 2), "{got:?}");
    assert!(got
        .workers
        .iter()
        .all(|w| w.state == "ready" && w.generation == 1));
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let (job, mut a) = b.ask(Request::Status);
    b.handle(vec![job]);
    let got = a.answer().expect("status is answered");
    let state = |g: u64| {
        got.generations
            .iter()
            .find(|s| s.generation == g)
            .map(|s| (s.state.as_str(), s.workers))
    };
    assert_eq!(state(2), Some(("serving", 2)), "{:?}", got.generations);
    assert_eq!(state(1), Some(("draining", 2)), "{:?}", got.generations);
    assert_eq!(got.workers.len(), 4);
}

#[test]
fn corral_publish_goes_to_every_live_worker_in_order_and_is_answered() {
    use crate::channel::ToWorker;
    let mut b = Bench::running(2, "");
    let pids = b.pids(1, WorkerState::Ready);
    for &p in &pids {
        let _ = b.fx.sent_to(p);
    }
    for text in ["first", "second"] {
        let (job, mut a) = b.ask(Request::Publish {
            topic: "news".into(),
            message: text.into(),
        });
        b.handle(vec![job]);
        let got = a.answer().expect("publish is answered");
        assert!(got.ok && got.message.contains("2 worker"), "{got:?}");
    }
    for p in pids {
        let seen: Vec<(String, u64)> =
            b.fx.sent_to(p)
                .into_iter()
                .filter_map(|(m, _)| match m {
                    ToWorker::Publish {
                        topic,
                        message,
                        seq,
                        ..
                    } => {
                        assert_eq!(topic, "news");
                        Some((String::from_utf8(message).unwrap_or_default(), seq))
                    }
                    _ => None,
                })
                .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            (seen[0].0.as_str(), seen[1].0.as_str()),
            ("first", "second")
        );
        assert!(seen[0].1 < seen[1].1, "numbered in order: {seen:?}");
    }
}

#[test]
fn a_fault_is_refused_with_its_reason_unless_allowed_then_sent_to_its_victim() {
    use crate::channel::ToWorker;
    use crate::fault::kind::{FaultKind, FaultRequest, Victim};
    let kill = |victim| {
        Request::Fault(FaultRequest {
            kind: FaultKind::Kill,
            victim,
            timeout_ms: 5000,
        })
    };
    // Off by default: refused, naming the key.
    let mut b = Bench::running(2, "");
    let (job, mut a) = b.ask(kill(Victim::Slot(1)));
    b.handle(vec![job]);
    let got = a.answer().expect("refused at once");
    assert!(
        !got.ok && got.message.contains("fault_injection"),
        "{got:?}"
    );
    // A leak with no max_worker_rss would never be recycled: refused.
    let mut b = Bench::running(2, "fault_injection = true");
    let (job, mut a) = b.ask(Request::Fault(FaultRequest {
        kind: FaultKind::Leak { mib: 10 },
        victim: Victim::Random,
        timeout_ms: 5000,
    }));
    b.handle(vec![job]);
    let got = a.answer().expect("refused at once");
    assert!(!got.ok && got.message.contains("max_worker_rss"), "{got:?}");
    // Allowed: slot 1's worker is told, and the answer waits for the outcome.
    let victim =
        b.m.workers
            .iter()
            .find(|w| w.slot == 1)
            .map(|w| w.pid)
            .expect("slot 1");
    let _ = b.fx.sent_to(victim);
    let (job, mut a) = b.ask(kill(Victim::Slot(1)));
    b.handle(vec![job]);
    let told = b.fx.sent_to(victim);
    assert!(
        told.iter().any(|(m, _)| matches!(
            m,
            ToWorker::Fault {
                kind: FaultKind::Kill
            }
        )),
        "{told:?}"
    );
    assert!(
        a.answer().is_none(),
        "answered once the master saw what happened"
    );
    // A slot that does not exist: refused.
    let (job, mut a) = b.ask(kill(Victim::Slot(7)));
    b.handle(vec![job]);
    let got = a.answer().expect("refused at once");
    assert!(!got.ok, "{got:?}");
}
