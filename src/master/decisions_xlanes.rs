//! Unit tests of lanes across masters (`xlanes.rs`) over the fake, the test playing
//! the other master on a real socketpair: the old master links its draining worker to
//! every adopter the new master names, once per pair, the two ends of one socketpair
//! going to its worker and over the link; the new master names its adopters once per
//! change, passes a lane end to the worker it names, and counts what its workers
//! adopted over such lanes once.

use std::os::fd::OwnedFd;

use super::fake::Bench;
use super::xfer::{Link, Side};
use super::WorkerState;
use crate::channel::{Channel, ToMaster, ToPredecessor, ToSuccessor, ToWorker};
use crate::os::master::Pid;

/// An old master whose upgrade committed, its one worker draining and moving out,
/// linked to a new master the test plays.
fn committed() -> (Bench, Pid, Channel) {
    let (mut b, pid, theirs) = super::decisions_xfer::committed();
    // (The commit marks the workers it drains; this bench committed without a link.)
    for w in &mut b.m.workers {
        w.handoff.moves_out = true;
    }
    let _ = b.fx.sent_to(pid);
    (b, pid, theirs)
}

/// Lane ends the master sent its worker: (peer, send, foreign, the socket).
fn lanes_sent(b: &Bench, pid: Pid) -> Vec<(u32, bool, bool, OwnedFd)> {
    b.fx.sent_to(pid)
        .into_iter()
        .filter_map(|(m, fds)| match m {
            ToWorker::Lane { pid, send, foreign } => {
                Some((pid, send, foreign, fds.into_iter().next()?))
            }
            _ => None,
        })
        .collect()
}

/// Lane ends that crossed to the new master: (from, to, the socket).
fn lanes_crossed(theirs: &Channel) -> Vec<(i32, u32, OwnedFd)> {
    let mut out = Vec::new();
    while let Ok(Some((msg, fds))) = theirs.recv_fds::<ToSuccessor>() {
        if let ToSuccessor::Lane { from, to } = msg {
            out.push((from, to, fds.into_iter().next().expect("the lane's socket")));
        }
    }
    out
}

/// The two ends are one socketpair: what one end sends, the other reads.
fn linked(a: OwnedFd, b: OwnedFd) -> bool {
    let (a, b) = (Channel::from_fd(a), Channel::from_fd(b));
    a.send(&ToPredecessor::Hello).is_ok()
        && matches!(b.recv::<ToPredecessor>(), Ok(Some(ToPredecessor::Hello)))
}

#[test]
fn the_old_master_links_its_worker_to_each_adopter_the_new_master_names_once() {
    let (mut b, pid, theirs) = committed();
    let named = ToPredecessor::Adopters {
        pids: vec![900, 901],
    };
    theirs.send(&named).expect("send");
    b.m.xfer_read(Side::ToNew);
    let mut mine = lanes_sent(&b, pid);
    let mut crossed = lanes_crossed(&theirs);
    assert_eq!(mine.len(), 2, "one lane end per adopter for our worker");
    assert_eq!(crossed.len(), 2, "and the other end of each over the link");
    mine.sort_by_key(|l| l.0);
    crossed.sort_by_key(|l| l.1);
    for ((to, send, foreign, ours), (from, to2, other)) in mine.into_iter().zip(crossed) {
        assert!(
            send && foreign,
            "our worker sends over it, to the other master's"
        );
        assert_eq!((from, to2), (pid.as_raw(), to), "naming both ends");
        assert!(linked(ours, other), "the ends of one socketpair");
    }

    // A respawn: only the new adopter gets a lane.
    let named = ToPredecessor::Adopters {
        pids: vec![900, 901, 902],
    };
    theirs.send(&named).expect("send");
    b.m.xfer_read(Side::ToNew);
    let mine = lanes_sent(&b, pid);
    let crossed = lanes_crossed(&theirs);
    assert_eq!(
        (mine.len(), crossed.len()),
        (1, 1),
        "only the pair that was missing"
    );
    assert_eq!((mine[0].0, crossed[0].1), (902, 902));
    assert_eq!(b.m.handoff_in_flight(), 0, "nothing held here");
}

/// A new master the test's old master started: `workers` ready workers.
fn successor(workers: usize) -> (Bench, Channel) {
    let mut b = Bench::running(workers, "");
    let (mut link, theirs) = Link::pair().expect("link");
    link.tells_adopters = true;
    b.m.up.xfer.to_old = Some(link);
    for p in b.pids(1, WorkerState::Ready) {
        let _ = b.fx.sent_to(p);
    }
    (b, Channel::from_fd(theirs))
}

#[test]
fn the_new_master_names_its_adopters_once_per_change() {
    let (mut b, theirs) = successor(2);
    let mut want: Vec<u32> = b
        .pids(1, WorkerState::Ready)
        .iter()
        .map(|p| p.as_raw() as u32)
        .collect();
    b.m.xfer_tell_adopters();
    b.m.xfer_tell_adopters();
    let mut said = Vec::new();
    while let Ok(Some(m)) = theirs.recv::<ToPredecessor>() {
        said.push(m);
    }
    assert_eq!(said.len(), 1, "said once: {said:?}");
    let ToPredecessor::Adopters { pids: mut got } = said.remove(0) else {
        panic!("adopters expected");
    };
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn the_new_master_passes_a_lane_end_to_the_worker_it_names_only() {
    let (mut b, theirs) = successor(2);
    let to = b.pids(1, WorkerState::Ready)[0];
    for target in [to.as_raw() as u32, 4_000_000] {
        let (end, _other) = crate::os::fd::seqpacket_pair().expect("pair");
        let lane = ToSuccessor::Lane {
            from: 777,
            to: target,
        };
        theirs
            .send_fds(&lane, &[std::os::fd::AsFd::as_fd(&end)])
            .expect("send");
    }
    b.m.xfer_read(Side::ToOld);
    let got: Vec<_> = b
        .pids(1, WorkerState::Ready)
        .into_iter()
        .map(|p| (p, lanes_sent(&b, p)))
        .collect();
    for (p, lanes) in got {
        if p == to {
            assert_eq!(lanes.len(), 1, "worker {p} got its end");
            assert_eq!((lanes[0].0, lanes[0].1, lanes[0].2), (777, false, true));
        } else {
            assert!(lanes.is_empty(), "worker {p} got none");
        }
    }
}

#[test]
fn what_workers_adopted_over_lanes_counts_once_as_moved_from_the_old_master() {
    let (mut b, _theirs) = successor(2);
    let pids = b.pids(1, WorkerState::Ready);
    let say = |b: &mut Bench, pid: Pid, totals: Vec<(u32, u64)>| {
        b.fx.say(pid, &ToMaster::LaneAdopted { totals }, &[]);
        b.hear(pid);
    };
    say(&mut b, pids[0], vec![(777, 10)]);
    say(&mut b, pids[0], vec![(777, 25), (778, 5)]);
    // Said again (a message that waited): nothing more.
    say(&mut b, pids[0], vec![(777, 25), (778, 5)]);
    say(&mut b, pids[1], vec![(777, 7)]);
    assert_eq!(b.m.gens.from_predecessor, 37);
}
