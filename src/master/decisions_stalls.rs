//! Unit tests of stalled-slot lending over the fake (`fake.rs`) with real listening
//! sockets standing for two reuseport slots: a slot whose worker is silent while
//! connections wait in its queue is lent to a healthy worker and taken back once its
//! worker is heard from; a queue whose worker beats is its own; a stop ends lends.

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::fake::Bench;
use super::sockets::Listener;
use super::{Command, Job, WorkerState};
use crate::channel::{Stats, ToMaster, ToWorker};
use crate::os::addr::ListenAddr;
use crate::os::master::Pid;

/// Two workers (slots 0 and 1), each slot with a listening socket of its own; returns
/// the bench, the workers by slot, and slot 0's address.
fn slotted() -> (Bench, Vec<Pid>, std::net::SocketAddr) {
    let mut b = Bench::running(2, "watchdog_timeout = \"600s\"");
    let mut first = None;
    for slot in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        first.get_or_insert(addr);
        b.m.listeners.push(Listener {
            addr: ListenAddr::Tcp(addr),
            name: "echo".into(),
            slot: Some(slot),
            fd: OwnedFd::from(l),
            owns_path: false,
            adopt_path: false,
        });
    }
    let by_slot = (0..2)
        .map(|s| {
            b.m.workers
                .iter()
                .find(|w| w.slot == s && w.state == WorkerState::Ready)
                .expect("a worker per slot")
                .pid
        })
        .collect();
    (b, by_slot, first.expect("slot 0"))
}

fn beat(b: &mut Bench, pid: Pid) {
    b.m.record(vec![(pid, ToMaster::Heartbeat(Stats::default()))]);
}

fn lends(b: &Bench, pid: Pid) -> Vec<(ToWorker, usize)> {
    b.fx.sent_to(pid)
        .into_iter()
        .filter(|(m, _)| matches!(m, ToWorker::Lend { .. } | ToWorker::Unlend { .. }))
        .map(|(m, fds)| (m, fds.len()))
        .collect()
}

#[test]
fn a_silent_workers_waiting_queue_is_lent_to_a_healthy_worker_until_it_is_heard_from() {
    let (mut b, w, addr) = slotted();
    let _client = TcpStream::connect(addr).expect("connect");
    b.later(Duration::from_secs(2));
    beat(&mut b, w[1]);
    assert!(
        lends(&b, w[1]).is_empty(),
        "not before the queue waited long enough"
    );
    b.later(Duration::from_millis(100));
    let got = lends(&b, w[1]);
    assert_eq!(got.len(), 1, "lent once: {got:?}");
    assert_eq!(b.m.metrics.own.stall_lends, 1, "counted");
    assert!(
        matches!(&got[0], (ToWorker::Lend { slot: 0, listens }, 1) if listens.len() == 1),
        "slot 0's one socket, with its fd: {got:?}"
    );
    b.later(Duration::from_millis(100));
    assert!(lends(&b, w[1]).is_empty(), "not lent twice");
    assert!(lends(&b, w[0]).is_empty(), "nothing to the stalled worker");

    beat(&mut b, w[0]);
    b.later(Duration::from_millis(50));
    let got = lends(&b, w[1]);
    assert!(
        matches!(got.as_slice(), [(ToWorker::Unlend { slot: 0 }, 0)]),
        "taken back once its worker is heard from: {got:?}"
    );
}

#[test]
fn a_waiting_queue_whose_worker_beats_is_left_to_it() {
    let (mut b, w, addr) = slotted();
    let _client = TcpStream::connect(addr).expect("connect");
    for _ in 0..10 {
        beat(&mut b, w[0]);
        beat(&mut b, w[1]);
        b.later(Duration::from_millis(100));
    }
    assert!(lends(&b, w[1]).is_empty(), "a busy queue is no stall");
}

#[test]
fn an_empty_queue_is_never_lent_even_with_its_worker_silent() {
    let (mut b, w, _addr) = slotted();
    b.later(Duration::from_secs(2));
    beat(&mut b, w[1]);
    b.later(Duration::from_millis(200));
    assert!(lends(&b, w[1]).is_empty(), "nobody waits");
}

#[test]
fn a_stop_takes_back_every_lent_socket() {
    let (mut b, w, addr) = slotted();
    let _client = TcpStream::connect(addr).expect("connect");
    b.later(Duration::from_secs(2));
    beat(&mut b, w[1]);
    b.later(Duration::from_millis(100));
    assert_eq!(lends(&b, w[1]).len(), 1, "lent");
    b.handle(vec![Job {
        command: Command::GracefulStop,
        waiter: None,
    }]);
    let got = lends(&b, w[1]);
    assert!(
        matches!(got.as_slice(), [(ToWorker::Unlend { slot: 0 }, 0)]),
        "{got:?}"
    );
    assert_eq!(b.m.stalls.next_check(), None, "no more checks");
}
