//! Unit tests of what the master does with its workers' messages, read off their
//! channels as the loop reads them (`Fake::say` plays the worker, `Bench::hear` the
//! loop's turn): readiness, heartbeats, hand-overs with their fds, refusals sent back
//! to their origin, settlements, the end of a hand-over, metrics scrapes; the bound
//! on one turn's reading; a worker whose channel closes; the back-pressure rules.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::collect::{Reading, MASTER_CHANNEL_TURN};
use super::fake::Bench;
use super::moves::MAX_IN_FLIGHT;
use super::{Command, Job, WorkerState};
use crate::channel::{Handed, HandoffCounts, Moved, Stats, ToMaster, ToWorker};
use crate::os::master::{Pid, Signal};
use crate::os::process::ExitReason;

fn signal(command: Command) -> Job {
    Job {
        command,
        waiter: None,
    }
}

/// `n` sockets standing for clients (the test keeps the peers so the fds stay whole).
fn sockets(n: usize) -> (Vec<OwnedFd>, Vec<std::os::unix::net::UnixStream>) {
    (0..n)
        .map(|_| {
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            (OwnedFd::from(a), b)
        })
        .unzip()
}

/// A suspended connection from worker `origin`, refused by the receiver for `why`.
fn suspended(origin: Pid, why: Option<&str>) -> Handed {
    Handed {
        listen: "127.0.0.1:1".into(),
        peer: None,
        moved: Some(Box::new(Moved {
            service: "echo".into(),
            version: 1,
            state: vec![1, 2, 3],
            input: Vec::new(),
            idle_ms: 0,
            timer_ms: None,
            origin: origin.as_raw() as u32,
            upstream: None,
            refused: why.map(str::to_string),
            idle: false,
            push: None,
        })),
        tls: None,
    }
}

fn draining(b: &Bench, generation: u64) -> Vec<Pid> {
    b.m.workers
        .iter()
        .filter(|w| w.generation == generation && matches!(w.state, WorkerState::Draining { .. }))
        .map(|w| w.pid)
        .collect()
}

/// A master that reloaded: generation 1 drains (`old`), generation 2 serves (`new`).
fn reloaded(workers: usize) -> (Bench, Vec<Pid>, Vec<Pid>) {
    let mut b = Bench::running(
        workers,
        "drain_timeout = \"600s\"\nwatchdog_timeout = \"600s\"",
    );
    b.handle(vec![signal(Command::Reload)]);
    b.ready(2);
    let (old, new) = (draining(&b, 1), b.pids(2, WorkerState::Ready));
    for &p in old.iter().chain(&new) {
        let _ = b.fx.sent_to(p);
    }
    (b, old, new)
}

fn adopted(msgs: &[(ToWorker, Vec<OwnedFd>)]) -> usize {
    msgs.iter()
        .map(|(m, fds)| match m {
            ToWorker::Adopt { conns } => {
                assert_eq!(conns.len(), fds.len(), "one fd per connection");
                conns.len()
            }
            _ => 0,
        })
        .sum()
}

#[test]
fn ready_read_off_the_channel_completes_the_startup() {
    let mut b = Bench::starting(1, "");
    let pid = b.pids(1, WorkerState::Starting)[0];
    b.fx.say(pid, &ToMaster::Ready, &[]);
    assert_eq!(b.state(), "starting", "not before the master reads it");
    b.hear(pid);
    assert_eq!(b.state(), "running");
}

#[test]
fn a_heartbeat_read_off_the_channel_updates_the_workers_stats() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let stats = Stats {
        connections: 7,
        accepted: 40,
        ..Default::default()
    };
    b.fx.say(pid, &ToMaster::Heartbeat(stats), &[]);
    b.hear(pid);
    assert_eq!(b.m.workers[0].stats.connections, 7);
    assert_eq!(b.m.workers[0].stats.accepted, 40);
}

#[test]
fn a_turn_reads_a_bounded_share_of_a_channel_and_an_exit_reads_the_rest() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let n = MASTER_CHANNEL_TURN + 10;
    for _ in 0..n {
        b.fx.say(pid, &ToMaster::Heartbeat(Stats::default()), &[]);
    }
    let first = b.m.read_worker(pid, Reading::Turn);
    assert_eq!(first.len(), MASTER_CHANNEL_TURN, "one turn's share");
    let rest = b.m.read_worker(pid, Reading::All);
    assert_eq!(rest.len(), 10, "the rest, all at once");
}

#[test]
fn hand_overs_read_off_a_draining_workers_channel_go_to_the_new_generation() {
    let (mut b, old, new) = reloaded(2);
    let (fds, _peers) = sockets(40);
    let conns = vec![Handed::idle("127.0.0.1:1".into()); 40];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(old[0], &ToMaster::Handoff { conns }, &borrowed);
    b.hear(old[0]);
    let got: usize = new.iter().map(|&p| adopted(&b.fx.sent_to(p))).sum();
    assert_eq!(got, 40, "every connection adopted");
    assert_eq!(b.m.handoff_in_flight(), 0);
}

#[test]
fn a_hand_over_with_fewer_fds_than_connections_forwards_only_the_matched() {
    let (mut b, old, new) = reloaded(1);
    let (fds, _peers) = sockets(3);
    let conns = vec![Handed::idle("127.0.0.1:1".into()); 5];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(old[0], &ToMaster::Handoff { conns }, &borrowed);
    b.hear(old[0]);
    assert_eq!(
        adopted(&b.fx.sent_to(new[0])),
        3,
        "the unmatched are dropped"
    );
}

#[test]
fn refused_connections_go_back_to_their_origin_with_the_reason() {
    let (mut b, old, new) = reloaded(1);
    let (fds, _peers) = sockets(2);
    let conns = vec![
        suspended(old[0], Some("state version 9 unknown")),
        suspended(old[0], None),
    ];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(new[0], &ToMaster::Refused { conns }, &borrowed);
    b.hear(new[0]);
    let back = b.fx.sent_to(old[0]);
    let kept: Vec<(usize, usize, String)> = back
        .iter()
        .filter_map(|(m, fds)| match m {
            ToWorker::Keep { conns, reason } => Some((conns.len(), fds.len(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        kept.iter().map(|k| k.0).sum::<usize>(),
        2,
        "both back to their origin: {kept:?}"
    );
    assert!(
        kept.iter().all(|k| k.0 == k.1),
        "each with its fd: {kept:?}"
    );
    assert!(
        kept.iter().any(|k| k.2.contains("state version 9 unknown")
            || k.2.contains("refused by the new generation")),
        "with a reason: {kept:?}"
    );
}

#[test]
fn a_refused_connection_whose_origin_is_gone_is_closed() {
    let (mut b, old, new) = reloaded(1);
    b.exit(old[0], ExitReason::Code(0));
    let (fds, mut peers) = sockets(1);
    let conns = vec![suspended(old[0], Some("no"))];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(new[0], &ToMaster::Refused { conns }, &borrowed);
    drop(fds);
    b.hear(new[0]);
    assert!(b.m.workers.iter().all(|w| w.pid != old[0]));
    // The master held the only copy left: closing it ends the client's connection.
    peers[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut peers[0], &mut buf).expect("EOF, not a timeout");
    assert_eq!(n, 0, "the client sees its connection closed");
}

#[test]
fn settled_connections_are_reported_to_their_origin() {
    let (mut b, old, new) = reloaded(1);
    let origins = vec![(old[0].as_raw() as u32, 4), (999_999_999, 1)];
    b.fx.say(new[0], &ToMaster::Settled { origins }, &[]);
    b.hear(new[0]);
    let told: Vec<u64> =
        b.fx.sent_to(old[0])
            .iter()
            .filter_map(|(m, _)| match m {
                ToWorker::Settled { n } => Some(*n),
                _ => None,
            })
            .collect();
    assert_eq!(told, vec![4], "the origin hears how many settled");
}

#[test]
fn the_end_of_a_hand_over_counts_in_the_metrics_once_the_worker_is_gone() {
    let (mut b, old, _new) = reloaded(1);
    let counts = HandoffCounts {
        handed: 5,
        kept: 2,
        closed: 1,
    };
    b.fx.say(old[0], &ToMaster::HandoffDone(counts), &[]);
    b.hear(old[0]);
    b.exit(old[0], ExitReason::Code(0));
    let text = b.m.prometheus();
    for (outcome, n) in [("moved", 5), ("kept", 2), ("closed", 1)] {
        let line = format!("corral_handoff_connections_total{{outcome=\"{outcome}\"}} {n}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

#[test]
fn what_an_exiting_worker_left_in_its_channel_is_still_read() {
    let (mut b, old, _new) = reloaded(1);
    let counts = HandoffCounts {
        handed: 3,
        kept: 0,
        closed: 0,
    };
    b.fx.say(old[0], &ToMaster::HandoffDone(counts), &[]);
    b.exit(old[0], ExitReason::Code(0));
    let text = b.m.prometheus();
    let line = "corral_handoff_connections_total{outcome=\"moved\"} 3";
    assert!(text.contains(line), "{line} in\n{text}");
}

#[test]
fn a_metrics_request_from_a_worker_is_answered_with_the_text() {
    let mut b = Bench::running(1, "");
    let pid = b.pids(1, WorkerState::Ready)[0];
    b.fx.say(pid, &ToMaster::MetricsRequest { id: 42 }, &[]);
    b.hear(pid);
    let parts: Vec<(String, bool)> =
        b.fx.sent_to(pid)
            .into_iter()
            .filter_map(|(m, _)| match m {
                ToWorker::Metrics { id: 42, text, last } => Some((text, last)),
                _ => None,
            })
            .collect();
    assert!(!parts.is_empty(), "answered");
    assert!(parts.last().is_some_and(|p| p.1), "the last part says so");
    let text: String = parts.into_iter().map(|p| p.0).collect();
    assert!(text.contains("corral_workers"), "{text}");
}

#[test]
fn a_worker_whose_channel_closes_is_marked_and_gets_nothing_more() {
    let (mut b, old, new) = reloaded(2);
    b.fx.close_channel(new[0]);
    b.hear(new[0]);
    let i =
        b.m.worker_index(new[0])
            .expect("still in the table until reaped");
    assert!(b.m.workers[i].channel_closed, "its channel is known closed");
    let (fds, _peers) = sockets(20);
    let conns = vec![Handed::idle("127.0.0.1:1".into()); 20];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(old[0], &ToMaster::Handoff { conns }, &borrowed);
    b.hear(old[0]);
    assert_eq!(
        adopted(&b.fx.sent_to(new[1])),
        20,
        "all to the worker that can still hear"
    );
}

#[test]
fn reading_a_draining_worker_pauses_only_when_the_master_holds_enough_fds() {
    let (b, old, new) = reloaded(1);
    let (o, n) = (
        b.m.worker_index(old[0]).expect("old"),
        b.m.worker_index(new[0]).expect("new"),
    );
    assert!(b.m.handoff_paused(&b.m.workers[o], MAX_IN_FLIGHT));
    assert!(!b.m.handoff_paused(&b.m.workers[o], MAX_IN_FLIGHT - 1));
    assert!(
        !b.m.handoff_paused(&b.m.workers[n], MAX_IN_FLIGHT),
        "a serving worker is always read"
    );
}

#[test]
fn a_silent_worker_with_a_heartbeat_waiting_unread_is_not_judged_hung() {
    let mut b = Bench::running(2, "watchdog_timeout = \"10s\"");
    let (waiting, silent) = (
        b.pids(1, WorkerState::Ready)[0],
        b.pids(1, WorkerState::Ready)[1],
    );
    b.later(Duration::from_secs(9));
    // Sent in time, but the master was busy and did not read it.
    b.fx.say(waiting, &ToMaster::Heartbeat(Stats::default()), &[]);
    b.later(Duration::from_secs(1));
    assert!(
        b.fx.signals_to(waiting).is_empty(),
        "its heartbeat is read before the watchdog judges"
    );
    assert_eq!(
        b.fx.signals_to(silent).first(),
        Some(&Signal::SIGABRT),
        "one with nothing waiting is hung"
    );
}
