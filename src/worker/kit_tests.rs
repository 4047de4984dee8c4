//! The worker loop in process, through the test kit: flow control, idle timers and a
//! hand-over burst, each with real sockets and the test as the master.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use crate::channel::{Channel, HandoffCounts, IdlePolicy, LaneMsg, ToMaster, ToWorker};

use super::testkit::{read_to_eof, round_trip, Kit, PATIENCE};

/// The lib tests share one process and its 20 000 fds: each test here holds three
/// fds per connection (client, worker side, handed copy), so the thousands-of-
/// connections tests take turns.
static MANY_FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A client sending flat out is read at its `rate`, not faster, and is re-admitted
/// each time its bucket refills: every byte comes back, in order, in about
/// (total - burst) / rate, never much less.
#[test]
fn a_client_over_its_rate_is_throttled_and_readmitted() {
    const RATE: usize = 128 << 10;
    const BURST: usize = 16 << 10;
    const TOTAL: usize = 384 << 10;
    let kit = Kit::start(
        "echo",
        &format!(
            "[flow]\nrate = \"{}KiB\"\nburst = \"{}KiB\"",
            RATE >> 10,
            BURST >> 10
        ),
        "",
    );
    let c = kit.connect();
    let mut writer = c.try_clone().unwrap();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let started = Instant::now();
    let w = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut reader = c;
    let mut got = vec![0u8; TOTAL];
    reader.read_exact(&mut got).expect("every byte echoed");
    let took = started.elapsed();
    w.join().unwrap();
    assert!(got == data, "the echo came back altered");
    // A lower bound only: a loaded box makes it slower, never faster.
    let floor = Duration::from_secs_f64((TOTAL - BURST) as f64 / RATE as f64 * 0.8);
    assert!(
        took >= floor,
        "{TOTAL} bytes at {RATE} B/s (burst {BURST}) took {took:?}: not throttled"
    );
}

/// A silent connection is closed once `idle_timeout` passed, not before; one that
/// keeps talking for longer than the timeout stays open, and is closed in turn once
/// it falls silent.
#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    const IDLE: Duration = Duration::from_secs(2);
    let kit = Kit::start("echo", "[worker]\nidle_timeout = \"2s\"", "");
    let started = Instant::now();
    let mut silent = kit.connect();
    let mut busy = kit.connect();
    round_trip(&mut busy, b"hello\n");
    let chatter = std::thread::spawn(move || {
        // Talks for longer than the timeout, in steps well inside it.
        let until = Instant::now() + IDLE * 2 + Duration::from_millis(500);
        let mut n = 0;
        let mut last = Instant::now();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            last = Instant::now();
            round_trip(&mut busy, format!("still here {n}\n").as_bytes());
            n += 1;
        }
        (busy, last)
    });
    assert!(read_to_eof(&mut silent).is_empty());
    let closed_after = started.elapsed();
    assert!(
        closed_after >= IDLE - Duration::from_millis(100),
        "closed after {closed_after:?}, before its idle timeout"
    );
    let (mut busy, last) = chatter.join().expect("the busy connection was cut");
    assert!(read_to_eof(&mut busy).is_empty());
    // Its last exchange started at `last`: the timeout counts from that activity.
    let quiet = last.elapsed();
    assert!(
        quiet >= IDLE - Duration::from_millis(100),
        "closed {quiet:?} after its last exchange"
    );
}

/// Thousands of idle connections leave a draining worker in batches, every one of
/// them: the sockets the master receives are exactly the clients' (no loss, no
/// duplicate), still connected both ways, and the worker counts them all as handed
/// and exits.
#[test]
fn a_burst_of_thousands_of_connections_is_handed_over_whole() {
    const CONNS: usize = 3000;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    let kit = Kit::start("echo", "", "");
    let mut clients: HashMap<SocketAddr, TcpStream> = HashMap::new();
    for i in 0..CONNS {
        let mut c = kit.connect();
        round_trip(&mut c, format!("{i}\n").as_bytes());
        clients.insert(c.local_addr().unwrap(), c);
    }
    kit.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    let mut handed: HashMap<SocketAddr, TcpStream> = HashMap::new();
    let mut messages = 0;
    while handed.len() < CONNS {
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { conns } = m else {
            unreachable!()
        };
        assert_eq!(conns.len(), fds.len());
        messages += 1;
        for fd in fds {
            let s = TcpStream::from(fd);
            let peer = s.peer_addr().expect("a handed socket is still connected");
            assert!(
                handed.insert(peer, s).is_none(),
                "{peer} was handed over twice"
            );
        }
    }
    assert!(
        messages < CONNS / 4,
        "{messages} messages for {CONNS}: not batched"
    );
    let (m, _) = kit.next(&|m| matches!(m, ToMaster::HandoffDone(_)));
    assert_eq!(
        m,
        ToMaster::HandoffDone(HandoffCounts {
            handed: CONNS as u64,
            kept: 0,
            closed: 0
        })
    );
    let mut missing: Vec<_> = clients.keys().filter(|a| !handed.contains_key(a)).collect();
    missing.truncate(5);
    assert!(missing.is_empty(), "never handed over: {missing:?}...");
    // Both directions still work on every socket the master now holds.
    for (addr, s) in &mut handed {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"moved\n").unwrap();
        let c = clients.get_mut(addr).unwrap();
        let mut got = [0u8; 6];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"moved\n");
        c.write_all(b"back\n").unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back\n");
    }
    // Taken for good (a master says so once new workers resumed them): none can come
    // back refused, and the worker may go.
    kit.master
        .send(&ToWorker::Settled { n: CONNS as u64 })
        .unwrap();
    assert_eq!(kit.exit_code(), 0);
}

/// A draining worker whose channel the master keeps nearly full (it stalls, then
/// reads slowly while the worker refills with hand-overs) keeps its heartbeats
/// coming among the hand-overs: without them the master's watchdog would take the
/// worker for hung, with every connection it still held. (A heartbeat that finds
/// the channel full waits in `Handoff::owed`; this run did not need that on the
/// old code, where heartbeats mostly fit beside the hand-overs.)
#[test]
fn heartbeats_get_through_a_channel_kept_full_of_hand_overs() {
    const CONNS: usize = 4000;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    let kit = Kit::start("echo", "[worker]\nheartbeat_interval = \"50ms\"", "");
    let mut clients = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut c = kit.connect();
        round_trip(&mut c, format!("{i}\n").as_bytes());
        clients.push(c);
    }
    while let Ok(Some(_)) = kit.master.recv_fds::<ToMaster>() {}
    kit.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    // A stalled master: the channel fills, heartbeats come due meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    // Then a slow one: a message every 10 ms, so the worker refills at once.
    let (mut beats, mut handoffs, mut handed) = (0, 0, 0);
    let deadline = Instant::now() + PATIENCE;
    while handed < CONNS {
        assert!(
            Instant::now() < deadline,
            "only {handed} of {CONNS} handed over"
        );
        match kit.master.recv_fds::<ToMaster>().unwrap() {
            Some((ToMaster::Heartbeat(_), _)) => beats += 1,
            Some((ToMaster::Handoff { conns }, _)) => {
                handoffs += 1;
                handed += conns.len();
            }
            Some(_) => {}
            None => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{handoffs} hand-over messages, {beats} heartbeats among them");
    assert!(
        beats >= 3,
        "{beats} heartbeats among {handoffs} hand-over messages read over {} ms",
        handoffs * 10
    );
    drop(clients);
    kit.master
        .send(&ToWorker::Settled { n: CONNS as u64 })
        .unwrap();
    assert_eq!(kit.exit_code(), 0);
}

/// Who moves first, and nobody waits on the queue: the connection whose client spoke
/// last leaves first, although it was accepted in the middle of thousands; and while
/// the master reads nothing (the channel fills, the rest wait their turn), the
/// connection last in line, whose client speaks now, is answered by this worker
/// instead of waiting for a hand-over that cannot come yet.
#[test]
fn the_last_active_move_first_and_those_waiting_are_still_served() {
    const CONNS: usize = 3000;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    // A channel that holds a few hand-over messages, not all 47 of them: with the
    // default buffer (wmem_default) whether the last in line is still here depended
    // on how many bytes each record took (pids, ports).
    let kit = Kit::start_with("echo", "", "", Some(16 << 10));
    let open = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|i| {
                let mut c = kit.connect();
                round_trip(&mut c, format!("{i}\n").as_bytes());
                c
            })
            .collect()
    };
    let mut early = open(CONNS / 2);
    let mut active = kit.connect();
    round_trip(&mut active, b"hello\n");
    let late = open(CONNS / 2);
    // The loop's clock must see a later instant than the last of the others.
    std::thread::sleep(Duration::from_millis(50));
    round_trip(&mut active, b"me again\n");
    while let Ok(Some(_)) = kit.master.recv_fds::<ToMaster>() {}

    kit.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
    let ToMaster::Handoff { conns } = m else {
        unreachable!()
    };
    assert_eq!(conns.len(), fds.len());
    let first = TcpStream::from(fds.into_iter().next().unwrap());
    assert_eq!(
        first.peer_addr().unwrap(),
        active.local_addr().unwrap(),
        "the last active connection did not move first"
    );
    // The master read one message and reads no more for now: the channel (a small
    // one) holds a few batches. The first accepted, least recently active, is last in
    // line, still here; its client speaks and is answered here, not made to wait for
    // the queue ahead of it. (Having spoken, it is first in line now: a second request
    // could find it taken out already, in the channel for a master not reading.)
    round_trip(&mut early[0], b"still served\n");
    // Every one leaves in the end, the one that spoke during the drain too.
    let mut handed = conns.len();
    while handed < CONNS + 1 {
        let (m, _) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { conns } = m else {
            unreachable!()
        };
        handed += conns.len();
    }
    assert_eq!(handed, CONNS + 1);
    kit.master
        .send(&ToWorker::Settled {
            n: CONNS as u64 + 1,
        })
        .unwrap();
    assert_eq!(kit.exit_code(), 0);
    drop((late, first));
}

/// Fair to the running service: a worker adopting a burst of connections serves its
/// own client between batches of `ADOPT_TURN`, not after all of them. Every loop turn
/// is made slow (the `slow` fault: 40 ms more per turn), so a turn that read the
/// whole burst at once would leave nothing unread when the client is answered; with
/// the budget most of it is still in the channel then.
#[test]
fn a_worker_serves_its_clients_between_batches_of_adoptions() {
    use crate::channel::Handed;
    use std::net::TcpListener;
    use std::os::fd::{AsFd, OwnedFd};
    const MESSAGES: usize = 30; // under CHANNEL_TURN: one unbounded turn reads them all
    const CONNS: usize = MESSAGES * 64;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    let kit = Kit::start("echo", "", "");
    crate::os::fd::set_send_buffer(kit.master.as_fd(), 4 << 20).unwrap();
    let mut active = kit.connect();
    round_trip(&mut active, b"hello\n");
    // The connections to adopt: plain idle ones, their server sides handed over.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::with_capacity(CONNS);
    let mut sides: Vec<OwnedFd> = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        sides.push(s.into());
    }
    kit.master
        .send(&ToWorker::Fault {
            kind: crate::fault::kind::FaultKind::Slow { ms: 40 },
        })
        .unwrap();
    let listen = kit.addr.to_string();
    for chunk in sides.chunks(64) {
        let conns = chunk
            .iter()
            .map(|_| Handed {
                listen: listen.clone(),
                peer: None,
                moved: None,
                tls: None,
            })
            .collect();
        let fds: Vec<_> = chunk.iter().map(|f| f.as_fd()).collect();
        kit.master
            .send_fds(&ToWorker::Adopt { conns }, &fds)
            .unwrap();
    }
    drop(sides);
    let total = kit.master.unread();
    assert!(total > 0, "the burst is not in the channel");
    // Once the worker has begun adopting, the client speaks.
    let deadline = Instant::now() + PATIENCE;
    while kit.master.unread() == total {
        assert!(
            Instant::now() < deadline,
            "the worker never read its channel"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    round_trip(&mut active, b"still served\n");
    let left = kit.master.unread();
    assert!(
        left > 0,
        "the client was answered only after all {CONNS} adoptions were read"
    );
    println!("answered with {left} of {total} bytes of adoptions still unread");
    // Every adopted connection is served in the end.
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        round_trip(c, format!("adopted {i}\n").as_bytes());
    }
    drop(clients);
}

/// Gives the kit's worker a lane to send over (to a made-up worker 1) and tells it to
/// drain: returns the test's end of the lane, where the test plays the new worker.
fn drain_over_a_lane(kit: &Kit) -> Channel {
    let (ours, theirs) = crate::os::fd::seqpacket_pair().unwrap();
    kit.master
        .send_fds(
            &ToWorker::Lane {
                pid: 1,
                send: true,
                foreign: false,
            },
            &[theirs.as_fd()],
        )
        .unwrap();
    drop(theirs);
    kit.master
        .send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
    Channel::from_fd(ours)
}

/// A lane's sender keeps every connection until the receiver answers for it: the test
/// plays a new worker that answers the first message on its lane and hangs up. What it
/// answered for is its own (the worker keeps no copy), the rest goes again, through
/// the master once no lane is left; each client is in exactly one place, and the
/// worker counts every one as handed.
#[test]
fn a_lane_that_hangs_up_sends_what_it_had_not_answered_again() {
    const CONNS: usize = 600;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    let kit = Kit::start("echo", "", "");
    let mut clients: HashMap<SocketAddr, TcpStream> = HashMap::new();
    for i in 0..CONNS {
        let mut c = kit.connect();
        round_trip(&mut c, format!("{i}\n").as_bytes());
        clients.insert(c.local_addr().unwrap(), c);
    }
    let lane = drain_over_a_lane(&kit);
    let deadline = Instant::now() + PATIENCE;
    // The first message: taken (we keep its sockets, as an adopter would).
    let (first, first_fds) = loop {
        assert!(Instant::now() < deadline, "nothing came over the lane");
        match lane.recv_fds::<LaneMsg>().unwrap() {
            Some((LaneMsg::Conns { conns }, fds)) => break (conns, fds),
            Some(other) => panic!("{other:?}"),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert_eq!(first.len(), first_fds.len());
    lane.send(&LaneMsg::Took {
        n: first.len() as u64,
        refused: Vec::new(),
        room: None,
    })
    .unwrap();
    // Hang up with the rest unread (a lane's window is less than CONNS): the worker
    // reads the answer queued before the hang-up, then sends the rest again.
    drop(lane);
    let mut taken: HashMap<SocketAddr, TcpStream> = first_fds
        .into_iter()
        .map(|fd| {
            let s = TcpStream::from(fd);
            (s.peer_addr().unwrap(), s)
        })
        .collect();
    let mut again: HashMap<SocketAddr, TcpStream> = HashMap::new();
    while taken.len() + again.len() < CONNS {
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { conns } = m else {
            unreachable!()
        };
        assert_eq!(conns.len(), fds.len());
        for fd in fds {
            let s = TcpStream::from(fd);
            let peer = s.peer_addr().unwrap();
            assert!(
                !taken.contains_key(&peer),
                "{peer} was taken and sent again"
            );
            assert!(again.insert(peer, s).is_none(), "{peer} sent again twice");
        }
    }
    assert!(!again.is_empty(), "nothing was left unanswered on the lane");
    let (m, _) = kit.next(&|m| matches!(m, ToMaster::HandoffDone(c) if c.handed == CONNS as u64));
    assert!(matches!(m, ToMaster::HandoffDone(c) if c.kept == 0 && c.closed == 0));
    // Every client, wherever it went, still talks to the socket there.
    for (addr, s) in taken.iter_mut().chain(again.iter_mut()) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"here\n").unwrap();
        let c = clients.get_mut(addr).unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"here\n");
    }
    // Those that went through the master wait for its word that they were taken (the
    // lane's answer settled the others).
    kit.master
        .send(&ToWorker::Settled {
            n: again.len() as u64,
        })
        .unwrap();
    assert_eq!(kit.exit_code(), 0);
}

/// The adopting end of a lane from the other master's worker (`foreign`): the test
/// plays that worker and sends two connections; the worker serves them, answers
/// `Took` for both, and tells its master what it adopted from that sender (running
/// totals), since no master saw them go by.
#[test]
fn connections_adopted_over_a_foreign_lane_are_answered_and_told_to_the_master() {
    let kit = Kit::start("echo", "", "");
    let (ours, theirs) = crate::os::fd::seqpacket_pair().unwrap();
    kit.master
        .send_fds(
            &ToWorker::Lane {
                pid: 777,
                send: false,
                foreign: true,
            },
            &[theirs.as_fd()],
        )
        .unwrap();
    drop(theirs);
    // Two connections accepted elsewhere (the old worker's), sent over the lane.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let c = TcpStream::connect(elsewhere.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        clients.push(c);
        accepted.push(std::os::fd::OwnedFd::from(elsewhere.accept().unwrap().0));
    }
    let lane = Channel::from_fd(ours);
    let conns = vec![crate::channel::Handed::idle(kit.addr.to_string()); 2];
    let fds: Vec<_> = accepted.iter().map(|f| f.as_fd()).collect();
    lane.send_fds(&LaneMsg::Conns { conns }, &fds).unwrap();
    drop(accepted);
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no answer on the lane");
        match lane.recv::<LaneMsg>().unwrap() {
            Some(LaneMsg::Took { n, refused, .. }) => {
                assert_eq!((n, refused.len()), (2, 0), "both taken: {refused:?}");
                break;
            }
            Some(other) => panic!("{other:?}"),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let (m, _) = kit.next(&|m| matches!(m, ToMaster::LaneAdopted { .. }));
    assert_eq!(
        m,
        ToMaster::LaneAdopted {
            totals: vec![(777, 2)]
        }
    );
    for c in &mut clients {
        round_trip(c, b"moved across masters\n");
    }
}

/// A worker whose connections all went over a lane exits once the lane answered for
/// them, without waiting for the master to read its channel (counts, heartbeats): the
/// master reads those when it reaps it. The test never reads the channel; before, the
/// worker waited for that until its drain deadline (a master starved of CPU kept 33
/// old workers 30 s past their last hand-over at a million push subscribers).
#[test]
fn a_worker_that_moved_everything_over_lanes_exits_without_waiting_for_the_master() {
    const CONNS: usize = 200;
    let _turn = MANY_FDS.lock().unwrap_or_else(|e| e.into_inner());
    let kit = Kit::start("echo", "", "");
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let mut c = kit.connect();
        round_trip(&mut c, format!("{i}\n").as_bytes());
        clients.push(c);
    }
    // Play the new worker: take every batch and answer for it.
    let lane = drain_over_a_lane(&kit);
    let mut taken = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while taken.len() < CONNS {
        assert!(
            Instant::now() < deadline,
            "only {} came over the lane",
            taken.len()
        );
        match lane.recv_fds::<LaneMsg>().unwrap() {
            Some((LaneMsg::Conns { conns }, fds)) => {
                assert_eq!(conns.len(), fds.len());
                lane.send(&LaneMsg::Took {
                    n: conns.len() as u64,
                    refused: Vec::new(),
                    room: Some(10_000),
                })
                .unwrap();
                taken.extend(fds);
            }
            Some(other) => panic!("{other:?}"),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    match kit.done.recv_timeout(PATIENCE) {
        Ok(code) => assert_eq!(code, 0),
        Err(_) => panic!("the worker did not exit while its channel was unread"),
    }
    // It left its messages for the master (read at the reap), none with an fd.
    // (The worker's end is closed by now: the messages are still there, then EOF.)
    let mut left = 0;
    while let Ok(Some((m, fds))) = kit.master.recv_fds::<ToMaster>() {
        assert!(fds.is_empty(), "an fd went to the master: {m:?}");
        left += 1;
    }
    assert!(left > 0, "nothing was left unread: nothing tested");
    drop(taken);
}
