//! Unit tests of the upgrade channel between two masters over the fake (`fake.rs`),
//! the test playing the other master on a real socketpair: after a committed upgrade
//! the old master's hand-overs cross to the new one, what it gives back returns to
//! their worker, its settlements reach their origin, its disappearance keeps the rest
//! here; on the new master's side, connections and publishes from the old one reach
//! our workers.

use std::os::fd::{AsFd, OwnedFd};

use super::control::Request;
use super::fake::Bench;
use super::xfer::{Link, Side};
use super::{Command, Job, WorkerState};
use crate::channel::{Channel, Handed, ToMaster, ToPredecessor, ToSuccessor, ToWorker};
use crate::os::master::Pid;

fn sockets(n: usize) -> (Vec<OwnedFd>, Vec<std::os::unix::net::UnixStream>) {
    (0..n)
        .map(|_| {
            let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            (OwnedFd::from(a), b)
        })
        .unzip()
}

fn idle(n: usize) -> Vec<Handed> {
    vec![Handed::idle("127.0.0.1:1".into()); n]
}

/// An old master whose upgrade committed, its one worker draining, linked to a new
/// master the test plays (`theirs`). (Also the cross-master lanes' bench.)
pub(super) fn committed() -> (Bench, Pid, Channel) {
    let mut b = Bench::running(1, "watchdog_timeout = \"600s\"\ndrain_timeout = \"600s\"");
    let pid = b.pids(1, WorkerState::Ready)[0];
    let (upgrade, _u) = b.ask(Request::Upgrade);
    b.handle(vec![upgrade]);
    b.fx.report("ready 4242\n");
    b.handle(vec![Job {
        command: Command::UpgradeReported,
        waiter: None,
    }]);
    assert!(b.m.up.handed_over, "committed");
    let (link, theirs) = Link::pair().expect("link");
    b.m.up.xfer.to_new = Some(link);
    let theirs = Channel::from_fd(theirs);
    theirs.send(&ToPredecessor::Hello).expect("hello");
    assert!(b.m.up.xfer.confirm(), "the new master greeted us");
    let _ = b.fx.sent_to(pid);
    (b, pid, theirs)
}

#[test]
fn after_a_committed_upgrade_hand_overs_cross_to_the_new_master() {
    let (mut b, pid, theirs) = committed();
    let (fds, _peers) = sockets(5);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(pid, &ToMaster::Handoff { conns: idle(5) }, &borrowed);
    b.hear(pid);
    let (msg, got) = theirs
        .recv_fds::<ToSuccessor>()
        .expect("readable")
        .expect("a message to the new master");
    match msg {
        ToSuccessor::Conns { from, conns } => {
            assert_eq!(from, pid.as_raw(), "naming their worker");
            assert_eq!((conns.len(), got.len()), (5, 5), "each with its fd");
        }
        other => panic!("connections expected: {other:?}"),
    }
    assert_eq!(b.m.handoff_in_flight(), 0, "nothing held here");
}

#[test]
fn what_the_new_master_gives_back_returns_to_its_worker_with_the_reason() {
    let (mut b, pid, theirs) = committed();
    let (fds, _peers) = sockets(2);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let back = ToPredecessor::Back {
        to: pid.as_raw(),
        conns: idle(2),
        reason: "no ready worker".into(),
    };
    theirs.send_fds(&back, &borrowed).expect("send");
    theirs
        .send(&ToPredecessor::Settled {
            to: pid.as_raw(),
            n: 3,
        })
        .expect("send");
    b.m.xfer_read(Side::ToNew);
    let msgs = b.fx.sent_to(pid);
    let kept: Vec<_> = msgs
        .iter()
        .filter_map(|(m, fds)| match m {
            ToWorker::Keep { conns, reason } => Some((conns.len(), fds.len(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        kept,
        vec![(2, 2, "no ready worker".to_string())],
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|(m, _)| matches!(m, ToWorker::Settled { n: 3 })),
        "the settlement reaches the origin: {msgs:?}"
    );
}

#[test]
fn once_the_new_master_is_gone_hand_overs_stay_with_their_worker() {
    let (mut b, pid, theirs) = committed();
    drop(theirs);
    b.m.xfer_read(Side::ToNew);
    let (fds, _peers) = sockets(3);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    b.fx.say(pid, &ToMaster::Handoff { conns: idle(3) }, &borrowed);
    b.hear(pid);
    let kept: usize =
        b.fx.sent_to(pid)
            .iter()
            .map(|(m, _)| match m {
                ToWorker::Keep { conns, .. } => conns.len(),
                _ => 0,
            })
            .sum();
    assert_eq!(kept, 3, "back to their worker, none lost");
}

#[test]
fn a_publish_of_an_old_worker_goes_to_the_new_master() {
    let (mut b, pid, theirs) = committed();
    let publish = ToMaster::Publish {
        publisher: 9,
        seq: 1,
        topic: "news".into(),
        message: b"hi".to_vec(),
    };
    b.m.record(vec![(pid, publish)]);
    match theirs.recv::<ToSuccessor>() {
        Ok(Some(ToSuccessor::Publish { topic, message, .. })) => {
            assert_eq!((topic.as_str(), message.as_slice()), ("news", &b"hi"[..]));
        }
        other => panic!("the publish expected: {other:?}"),
    }
}

/// A new master (the bench) started by an old one the test plays (`theirs`).
fn successor(workers: usize) -> (Bench, Channel) {
    let mut b = Bench::running(workers, "");
    let (link, theirs) = Link::pair().expect("link");
    b.m.up.xfer.to_old = Some(link);
    for p in b.pids(1, WorkerState::Ready) {
        let _ = b.fx.sent_to(p);
    }
    (b, Channel::from_fd(theirs))
}

#[test]
fn connections_from_the_old_master_are_spread_over_our_workers() {
    let (mut b, theirs) = successor(2);
    let (fds, _peers) = sockets(40);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let conns = ToSuccessor::Conns {
        from: 777,
        conns: idle(40),
    };
    theirs.send_fds(&conns, &borrowed).expect("send");
    b.m.xfer_read(Side::ToOld);
    let got: Vec<usize> = b
        .pids(1, WorkerState::Ready)
        .into_iter()
        .map(|p| {
            b.fx.sent_to(p)
                .iter()
                .map(|(m, fds)| match m {
                    ToWorker::Adopt { conns } => {
                        assert_eq!(conns.len(), fds.len());
                        conns.len()
                    }
                    _ => 0,
                })
                .sum()
        })
        .collect();
    assert_eq!(got.iter().sum::<usize>(), 40, "all adopted: {got:?}");
    assert!(got.iter().all(|&n| n > 0), "spread: {got:?}");
}

#[test]
fn a_publish_from_the_old_master_reaches_every_worker() {
    let (mut b, theirs) = successor(2);
    let publish = ToSuccessor::Publish {
        publisher: 5,
        seq: 2,
        topic: "t".into(),
        message: b"m".to_vec(),
    };
    theirs.send(&publish).expect("send");
    b.m.xfer_read(Side::ToOld);
    for p in b.pids(1, WorkerState::Ready) {
        assert!(
            b.fx.sent_to(p)
                .iter()
                .any(|(m, _)| matches!(m, ToWorker::Publish { seq: 2, .. })),
            "worker {p} has it"
        );
    }
}

#[test]
fn with_no_worker_to_adopt_them_connections_go_back_to_the_old_master() {
    let (mut b, theirs) = successor(1);
    let pid = b.pids(1, WorkerState::Ready)[0];
    let i = b.m.worker_index(pid).expect("worker");
    b.m.workers[i].state = WorkerState::Stopping;
    let (fds, _peers) = sockets(3);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let conns = ToSuccessor::Conns {
        from: 777,
        conns: idle(3),
    };
    theirs.send_fds(&conns, &borrowed).expect("send");
    b.m.xfer_read(Side::ToOld);
    match theirs.recv_fds::<ToPredecessor>() {
        Ok(Some((ToPredecessor::Back { to, conns, reason }, fds))) => {
            assert_eq!(to, 777, "to the worker that handed them over");
            assert_eq!((conns.len(), fds.len()), (3, 3));
            assert!(reason.contains("no ready worker"), "{reason}");
        }
        other => panic!("given back expected: {other:?}"),
    }
}
