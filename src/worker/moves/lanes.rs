//! Lanes: a draining worker sends its connections straight to the new generation's
//! workers, without the master in the data path.
//!
//! At a reload the master makes one SOCK_SEQPACKET socketpair per (draining worker,
//! ready new worker) and sends one end to each over their channels (`ToWorker::Lane`),
//! as it wires the bus; then it only counts (the workers' `HandoffDone`). The
//! draining worker spreads its batches (64 fds a message, as on the channel) over its
//! lanes, a batch per lane in turn, each lane with its own queue flushed on EPOLLOUT.
//!
//! Nothing is lost when a receiver dies: the sender keeps its copy of every connection
//! it sent (the record, and the fd in its own table, where it was already) until the
//! receiver answers `Took`, which it sends
//! right after resuming the batch, before its loop touches any of those sockets. When
//! the lane hangs up, the sender first reads every answer still queued (they come
//! before the EOF), then sends what is left unanswered again over another lane (or to
//! the master, or keeps it). A refused state needs no fd back either: the sender
//! resumes it from its own copy, pinned, and counts it as kept. Proxied pairs (a
//! bundle, whose fds the receiver takes out of it) still go through the master.
//!
//! Each lane holds at most `LANE_WINDOW` unanswered connections, so the fds in flight
//! stay bounded (the kernel refuses more than the user's RLIMIT_NOFILE in flight,
//! ETOOMANYREFS, which is then a reason to wait, not a failure). The copies are not
//! parked in a socket of their own (as an earlier version did, to take them out of
//! the table): a parked fd is in flight too, and 63 senders' copies used up the
//! budget that 20 000 fds in flight (per user: every worker is `nobody`) leave them.
//!
//! Where a batch goes: to the lane whose receiver has the most room (`Took` says how
//! many more connections it can hold) less what this sender has on the way to it.
//! Every sender sees the same receivers' room, so the new generation fills evenly
//! whatever each sender's share: spreading only its own batches evenly, each of 63
//! senders kept one receiver a window ahead, one worker got 19 891 connections
//! against 7 887 for another, and its fd table overflowed (the kernel drops what
//! does not fit, which is then sent again, elsewhere).
//!
//! At a binary upgrade the lanes cross masters: the old master makes them between its
//! draining workers and the new master's adopters and passes the adopter's end over
//! the upgrade channel (`master::xlanes`). Nothing changes here but the count: an
//! adopter tells its master what it took over such a *foreign* lane
//! (`ToMaster::LaneAdopted`), since that master saw none of it go by.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::channel::{
    Channel, ChannelError, ConnQueue, Handed, IdlePolicy, LaneMsg, ToMaster, BATCH_CONNS,
};
use crate::os::epoll::{Event, Interest};

use super::super::{Phase, Timer, Worker};
use super::SETTLE_CHECK;

/// Marks a lane's epoll token (with the lane's key in the low 32 bits).
pub const TOKEN_LANE: u64 = (1 << 63) | (1 << 62) | (1 << 41);

/// The refusal of a connection whose fd the receiver could not take (its fd table was
/// full): the sender sends it again rather than keeping it.
const NO_SOCKET: &str = "it arrived without its socket";

/// The refusal of a receiver that is closing its connections: the sender keeps them.
const CLOSING: &str = "the new worker is closing its connections (its master is gone or stopping)";

/// Most connections sent on one lane and not yet answered.
pub const LANE_WINDOW: usize = 512;

/// The fds in flight every sender shares (the kernel's per-user bound is the
/// sender's RLIMIT_NOFILE, 20 000 at most here, and all workers are one user): a
/// sender keeps at most its share of it unanswered over all its lanes, counting one
/// sender per lane (a reload links as many old workers as new ones), and never less
/// than one lane's window. Without it 56 senders, each allowed 56 windows, ran into
/// the bound hundreds of times each per move of a million, 10 ms a time.
const SHARED_IN_FLIGHT: usize = 16_384;

/// One message sent on a lane and not yet answered: the records, and our copies of
/// the fds.
#[derive(Debug)]
struct Sent {
    records: Vec<Handed>,
    fds: Vec<OwnedFd>,
}

/// One lane, from either end.
#[derive(Debug)]
struct Lane {
    peer: u32,
    key: u32,
    ch: Channel,
    /// This end sends connections (the master said so); the other adopts.
    sends: bool,
    /// The peer is the other master's worker (a binary upgrade).
    foreign: bool,
    /// Queued for this lane, not sent yet (about a batch).
    out: ConnQueue,
    /// Sent, not yet taken: our copies, a message at a time, in the order sent (the
    /// receiver answers each message once, in order).
    unacked: VecDeque<Sent>,
    /// Connections in `unacked`.
    unacked_conns: usize,
    /// Answers we owe the peer, in order; while one is owed we read no more of its
    /// connections (a connection is served here only once its answer is sent).
    owed: VecDeque<LaneMsg>,
    /// Connections the peer took from us (served there now).
    took: u64,
    /// How many more connections the receiver can hold, as of its last answer
    /// (None before the first: as much as any).
    room: Option<u64>,
    want_write: bool,
    readable: bool,
    /// The last send found it full (EAGAIN): no more until it is writable.
    full: bool,
    /// A send failed: the peer is gone or going. What it sent us is still read (to
    /// its EOF) before the lane is closed.
    broken: bool,
}

impl Lane {
    fn in_flight(&self) -> usize {
        self.out.len() + self.unacked_conns
    }

    /// Keeps our copies of a message just sent.
    fn hold(&mut self, batch: Vec<(Handed, OwnedFd)>) {
        let (records, fds): (Vec<Handed>, Vec<OwnedFd>) = batch.into_iter().unzip();
        self.unacked_conns += records.len();
        self.unacked.push_back(Sent { records, fds });
    }

    /// Our copies of the oldest message not yet answered (None when every one is).
    fn release(&mut self) -> Option<Vec<(Handed, OwnedFd)>> {
        let sent = self.unacked.pop_front()?;
        self.unacked_conns -= sent.records.len();
        Some(sent.records.into_iter().zip(sent.fds).collect())
    }

    /// Whether another batch may go on this lane: its socket takes it, and this
    /// sender's unanswered connections on it stay within the window, which is the
    /// receiver's room shared by the `senders` (this worker's lane count: a reload
    /// links as many old workers as new ones), between one batch and `LANE_WINDOW`.
    /// Every sender sees the same room, so together they do not send a receiver much
    /// more than it has room for before it answers again.
    fn has_room(&self, senders: usize, assumed: u64) -> bool {
        let room = usize::try_from(self.room.unwrap_or(assumed)).unwrap_or(usize::MAX);
        let window = (room / senders.max(1)).clamp(BATCH_CONNS, LANE_WINDOW);
        !self.full && !self.broken && self.in_flight() + BATCH_CONNS <= window
    }

    /// What the receiver can still take once what we have on the way arrives: the
    /// next batch goes to the lane with the most. Before its first answer its room is
    /// taken to be `assumed` (a new worker's: `max_connections`), not unbounded: a
    /// receiver too busy to answer looked the roomiest to every sender, got a window
    /// from each, and its fd table overflowed (19 894 connections against 14 181 on
    /// another new worker, at a million).
    fn spare(&self, assumed: u64) -> u64 {
        self.room
            .unwrap_or(assumed)
            .saturating_sub(self.in_flight() as u64)
    }
}

/// This worker's lanes.
#[derive(Debug, Default)]
pub(in crate::worker) struct Lanes {
    lanes: Vec<Lane>,
    next_key: u32,
    /// Where the search for the next batch's lane starts (ties go in turn).
    rr: usize,
    /// Taken out for a lane, waiting for one with room (at most a batch).
    waiting: ConnQueue,
    /// An event came on a lane.
    pub(in crate::worker) ready: bool,
    /// A send met the user's limit of fds in flight: retried on a timer.
    starved: bool,
    /// The room of a receiver that has not answered yet (see `Lane::spare`).
    assumed_room: u64,
    /// Connections the peers took from us over all lanes, gone ones too (the log).
    took_total: u64,
    /// Connections adopted over foreign lanes, per sender (pid, total): kept when a
    /// lane goes, so that the last adoptions before its EOF are told too.
    adopted: Vec<(u32, u64)>,
    /// `adopted` changed since the master was last told.
    adopted_news: bool,
}

impl Lanes {
    /// Connections the lanes' peers took from us, over all lanes so far.
    pub(in crate::worker) fn took_total(&self) -> u64 {
        self.took_total
    }

    /// Whether this worker has lanes to send connections over.
    pub(in crate::worker) fn sending(&self) -> bool {
        self.lanes.iter().any(|l| l.sends)
    }

    /// Nothing of ours is queued for, or unanswered on, a lane, and no answer is owed.
    pub(in crate::worker) fn is_idle(&self) -> bool {
        self.waiting.is_empty()
            && self
                .lanes
                .iter()
                .all(|l| l.out.is_empty() && l.unacked.is_empty() && l.owed.is_empty())
    }

    /// What was taken out for a lane and waits for one with room.
    pub(in crate::worker) fn take_waiting(&mut self) -> Vec<(Handed, OwnedFd)> {
        self.waiting.take_all()
    }

    /// Connections taken out for lanes and not sent yet.
    pub(in crate::worker) fn unsent(&self) -> usize {
        self.waiting.len() + self.lanes.iter().map(|l| l.out.len()).sum::<usize>()
    }

    /// The lane for the next batch: of those with room in their window, the one
    /// whose receiver has the most room left (see the module's note); among equals
    /// (before any answer: all), in turn from the last one used. None as well while
    /// this sender holds its share of `SHARED_IN_FLIGHT` unanswered.
    fn pick(&self) -> Option<usize> {
        let count = self.lanes.len();
        let sending = self.lanes.iter().filter(|l| l.sends);
        let total: usize = sending.clone().map(Lane::in_flight).sum();
        let senders = sending.count().max(1);
        let cap = (SHARED_IN_FLIGHT / senders).max(LANE_WINDOW);
        if total + BATCH_CONNS > cap {
            return None;
        }
        (0..count)
            .map(|k| (self.rr + k) % count)
            .filter(|&i| {
                let l = &self.lanes[i];
                l.sends && l.has_room(senders, self.assumed_room)
            })
            .min_by_key(|&i| std::cmp::Reverse(self.lanes[i].spare(self.assumed_room)))
    }

    fn index(&self, token: u64) -> Option<usize> {
        let key = (token & 0xffff_ffff) as u32;
        self.lanes.iter().position(|l| l.key == key)
    }
}

/// Whether a connection may travel over a lane: a proxied pair is a bundle, whose fds
/// the receiver takes out of it, so the sender's copy could not serve it again.
fn lane_able(h: &Handed) -> bool {
    h.moved.as_ref().is_none_or(|m| m.upstream.is_none())
}

impl Worker {
    /// `ToWorker::Lane`: a lane to worker `peer`.
    pub(in crate::worker) fn add_lane(
        &mut self,
        fd: OwnedFd,
        peer: u32,
        sends: bool,
        foreign: bool,
    ) {
        let l = &mut self.handoff.lanes;
        let key = l.next_key;
        l.next_key = l.next_key.wrapping_add(1);
        l.assumed_room = self.config.worker.max_connections as u64;
        if l.lanes.is_empty() {
            // Senders start their round at different receivers: all starting at the
            // first, 4 senders of 30 connections each sent them all to one new worker
            // before any answer, past its fd table.
            l.rr = crate::os::process::pid().as_raw().unsigned_abs() as usize;
        }
        let ch = Channel::from_fd(fd);
        if let Err(e) = self
            .epoll
            .add(ch.as_fd(), Interest::READ, TOKEN_LANE | u64::from(key))
        {
            warn!(peer, "cannot watch a lane: {e}");
            return;
        }
        l.lanes.push(Lane {
            peer,
            key,
            ch,
            sends,
            foreign,
            out: ConnQueue::default(),
            unacked: VecDeque::new(),
            unacked_conns: 0,
            owed: VecDeque::new(),
            took: 0,
            room: None,
            want_write: false,
            readable: false,
            full: false,
            broken: false,
        });
        debug!(peer, sends, foreign, lanes = l.lanes.len(), "lane added");
        if sends {
            // Connections waiting for the master may take it now.
            self.handoff.writable = true;
        }
    }

    /// An epoll event on a lane.
    pub(in crate::worker) fn lane_event(&mut self, token: u64, ev: Event) {
        let l = &mut self.handoff.lanes;
        let Some(i) = l.index(token) else {
            return;
        };
        let lane = &mut l.lanes[i];
        lane.readable |= ev.readable || ev.hangup || ev.is_error();
        if ev.writable {
            lane.full = false;
            self.handoff.writable = true;
        }
        l.ready = true;
    }

    /// Step 4: answers owed and connections queued go out; what the lanes brought is
    /// read (adoptions within `ADOPT_TURN` a turn); lanes whose peer is gone are closed.
    pub(in crate::worker) fn run_lanes(&mut self) {
        self.handoff.lanes.ready = false;
        let mut budget = super::ADOPT_TURN;
        let mut i = 0;
        while i < self.handoff.lanes.lanes.len() {
            self.flush_lane(i);
            let gone = self.handoff.lanes.lanes[i].readable && self.read_lane(i, &mut budget);
            if gone {
                self.lane_gone(i);
                continue;
            }
            self.lane_interest(i);
            i += 1;
        }
        self.tell_lane_adoptions();
    }

    /// Tells the master what the foreign lanes brought so far (running totals per
    /// sender: a message that waits, or one sent twice, counts nothing twice).
    fn tell_lane_adoptions(&mut self) {
        let l = &mut self.handoff.lanes;
        if !std::mem::take(&mut l.adopted_news) {
            return;
        }
        let totals = l.adopted.clone();
        self.send_or_owe(ToMaster::LaneAdopted { totals });
    }

    /// Sends what lane `i` owes and what is queued for it, as far as it takes them.
    /// A lane that fails is marked broken: the peer is gone, and the lane is closed
    /// once what it sent has been read (`read_lane`).
    fn flush_lane(&mut self, i: usize) {
        if let Err(e) = self.try_flush_lane(i) {
            let l = &mut self.handoff.lanes;
            let lane = &mut l.lanes[i];
            if !lane.broken {
                debug!(peer = lane.peer, "a lane failed: {e}");
            }
            lane.broken = true;
            // Answers for a peer that is gone: nobody waits for them.
            lane.owed.clear();
            lane.readable = true;
            l.ready = true;
        }
    }

    fn try_flush_lane(&mut self, i: usize) -> io::Result<()> {
        let lane = &mut self.handoff.lanes.lanes[i];
        if lane.broken {
            return Ok(());
        }
        while let Some(m) = lane.owed.front() {
            match lane.ch.send(m) {
                Ok(()) => {
                    lane.owed.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    lane.full = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if lane.out.is_empty() {
            return Ok(());
        }
        let mut sent = Vec::new();
        let done = lane
            .out
            .flush_into(&lane.ch, |conns| LaneMsg::Conns { conns }, Some(&mut sent));
        for batch in sent {
            lane.hold(batch);
        }
        self.handoff.counts.handed += done.conns as u64;
        if let Some(e) = done.error {
            return Err(e);
        }
        if !lane.out.is_empty() {
            lane.full = !done.starved;
        }
        if done.starved {
            self.lanes_starved();
        }
        Ok(())
    }

    /// The user has too many fds in flight: look again shortly (no event will say).
    pub(in crate::worker) fn lanes_starved(&mut self) {
        self.handoff.deferred += 1;
        self.handoff.lanes.starved = true;
        if !self.handoff.settle_armed {
            self.handoff.settle_armed = true;
            self.timers
                .schedule(Instant::now() + SETTLE_CHECK, Timer::HandoffSettle);
        }
    }

    /// The settle timer fired: a starved send may go again.
    pub(in crate::worker) fn lanes_retry(&mut self) {
        if std::mem::take(&mut self.handoff.lanes.starved) {
            self.handoff.writable = true;
        }
    }

    /// EPOLLOUT on lane `i` only while it has something to send.
    fn lane_interest(&mut self, i: usize) {
        let lane = &mut self.handoff.lanes.lanes[i];
        let want = !lane.owed.is_empty() || !lane.out.is_empty();
        if want == lane.want_write {
            return;
        }
        let interest = Interest {
            write: want,
            ..Interest::READ
        };
        match self
            .epoll
            .modify(lane.ch.as_fd(), interest, TOKEN_LANE | u64::from(lane.key))
        {
            Ok(()) => lane.want_write = want,
            Err(e) => warn!(
                peer = lane.peer,
                "cannot change a lane's epoll interest: {e}"
            ),
        }
    }

    /// Reads lane `i`: answers to what we sent, connections to adopt (while nothing
    /// is owed to it and `budget` lasts). True when the peer is gone (everything it
    /// sent before it went has been read).
    fn read_lane(&mut self, i: usize, budget: &mut usize) -> bool {
        let mut closed = false;
        loop {
            let lane = &mut self.handoff.lanes.lanes[i];
            if !lane.owed.is_empty() || *budget == 0 {
                // Level-triggered: the rest is reported again.
                return false;
            }
            let got = lane.ch.recv_fds::<LaneMsg>();
            match got {
                Ok(Some((LaneMsg::Took { n, refused, room }, _))) => self.took(i, n, refused, room),
                Ok(Some((LaneMsg::Conns { conns }, fds))) => {
                    *budget = budget.saturating_sub(conns.len());
                    let answer = self.adopt_from_lane(conns, fds);
                    let l = &mut self.handoff.lanes;
                    let lane = &mut l.lanes[i];
                    if let (true, LaneMsg::Took { n, refused, .. }) = (lane.foreign, &answer) {
                        let more = n.saturating_sub(refused.len() as u64);
                        let peer = lane.peer;
                        match l.adopted.iter_mut().find(|(p, _)| *p == peer) {
                            Some((_, t)) => *t += more,
                            None => l.adopted.push((peer, more)),
                        }
                        l.adopted_news = true;
                    }
                    let lane = &mut l.lanes[i];
                    if !lane.broken {
                        lane.owed.push_back(answer);
                    }
                    self.flush_lane(i);
                }
                Ok(None) => {
                    self.handoff.lanes.lanes[i].readable = false;
                    return false;
                }
                // A reset (the peer exited with our messages unread) comes before
                // what it sent us: read on until the EOF.
                Err(ChannelError::Closed) if !closed => closed = true,
                Err(ChannelError::Closed) => return true,
                Err(e) => {
                    warn!(
                        peer = self.handoff.lanes.lanes[i].peer,
                        "bad message on a lane: {e}"
                    );
                    return true;
                }
            }
        }
    }

    /// Connections a lane brought: resumed here (or, draining, passed on, kept or
    /// closed as the drain says), and the answer for the sender.
    fn adopt_from_lane(&mut self, conns: Vec<Handed>, fds: Vec<OwnedFd>) -> LaneMsg {
        self.beat_if_due();
        let n = conns.len() as u64;
        let mut refused = Vec::new();
        let mut fds = fds.into_iter();
        for (k, h) in conns.into_iter().enumerate() {
            let Some(fd) = fds.next() else {
                // This worker's fd table is full (the kernel dropped it in transit):
                // its sender still holds it and sends it again elsewhere.
                refused.push((k as u32, NO_SOCKET.to_string()));
                continue;
            };
            match (self.phase, self.idle_policy) {
                (Phase::Running, _) => {
                    if let Err((back, _ours)) = self.restore(h, fd, false) {
                        let why = back
                            .moved
                            .and_then(|m| m.refused)
                            .unwrap_or_else(|| "refused by the new generation".into());
                        refused.push((k as u32, why));
                    }
                }
                (Phase::Draining, IdlePolicy::Handoff) => {
                    let mut h = h;
                    // Passed on: a refusal must come back here.
                    if let Some(m) = h.moved.as_mut() {
                        m.origin = crate::os::process::pid().as_raw() as u32;
                        self.handoff.unsettled += 1;
                    }
                    self.handoff.queue.push(h, fd);
                    self.handoff.dirty = true;
                }
                (Phase::Draining, IdlePolicy::Linger) => {
                    self.handoff.counts.kept += 1;
                    let _ = self.restore(h, fd, true);
                }
                // Closing everything (its master is gone, e.g. a new master that died
                // after the commit, or stopping): the sender still has the connection
                // and keeps it, rather than this worker closing a client that moved.
                (Phase::Draining, IdlePolicy::Close) => {
                    refused.push((k as u32, CLOSING.to_string()));
                }
            }
        }
        // Full is `max_connections` (a worker adopts past it, up to its fd table: the
        // senders only prefer the emptiest).
        let room = self
            .config
            .worker
            .max_connections
            .saturating_sub(self.conns.len()) as u64;
        LaneMsg::Took {
            n,
            refused,
            room: Some(room),
        }
    }

    /// Lane `i`'s peer took the next `n` connections we sent: our copies close, but
    /// those it refused are served here from them. `room`: how many more it can hold.
    fn took(&mut self, i: usize, n: u64, refused: Vec<(u32, String)>, room: Option<u64>) {
        let lane = &mut self.handoff.lanes.lanes[i];
        if room.is_some() {
            lane.room = room;
        }
        let Some(batch) = lane.release() else {
            warn!(
                peer = lane.peer,
                n, "a lane answered for connections never sent"
            );
            return;
        };
        if batch.len() as u64 != n {
            warn!(
                peer = lane.peer,
                n,
                sent = batch.len(),
                "a lane answered for a message of another size"
            );
        }
        let me = crate::os::process::pid().as_raw() as u32;
        let (mut back, mut back_fds, mut settled) = (Vec::new(), Vec::new(), 0);
        let took_before = lane.took;
        let mut again = 0;
        for (k, (mut h, fd)) in batch.into_iter().enumerate() {
            match refused.iter().find(|(at, _)| *at as usize == k) {
                Some((_, why)) if why == NO_SOCKET => {
                    again += 1;
                    self.handoff.queue.push(h, fd);
                }
                Some((_, why)) => {
                    if let Some(m) = h.moved.as_mut() {
                        m.refused = Some(why.clone());
                    }
                    back.push(h);
                    back_fds.push(fd);
                }
                None => {
                    lane.took += 1;
                    if h.moved.as_ref().is_some_and(|m| m.origin == me) {
                        settled += 1;
                    }
                }
            }
        }
        let took_now = lane.took - took_before;
        self.handoff.lanes.took_total += took_now;
        self.settled(settled);
        if again > 0 {
            // Counted again when they go.
            self.handoff.counts.handed = self.handoff.counts.handed.saturating_sub(again);
            self.handoff.dirty = true;
            debug!(
                connections = again,
                "a new worker could not receive connections; they go again"
            );
        }
        if let Some((_, why)) = refused.iter().find(|(_, w)| w != NO_SOCKET) {
            // Their origin: what the master's route would have sent back (`Keep`).
            self.keep(back, back_fds, why);
        }
        // The window opened.
        self.handoff.writable = true;
    }

    /// Lane `i`'s peer is gone: what it had not taken is sent again (another lane, or
    /// the master) or, when nothing moves any more, kept here.
    fn lane_gone(&mut self, i: usize) {
        let mut lane = self.handoff.lanes.lanes.swap_remove(i);
        let _ = self.epoll.delete(lane.ch.as_fd());
        let mut unacked = Vec::new();
        while let Some(batch) = lane.release() {
            unacked.extend(batch);
        }
        let sent_again = unacked.len() as u64;
        let unsent = lane.out.take_all();
        // Counted as handed when sent; they are counted again when they go.
        self.handoff.counts.handed = self.handoff.counts.handed.saturating_sub(sent_again);
        let n = unacked.len() + unsent.len();
        if lane.sends {
            info!(
                peer = lane.peer,
                took = lane.took,
                resent = n,
                "lane to worker {} closed: it took {} connections, {} go again",
                lane.peer,
                lane.took,
                n
            );
        } else {
            debug!(peer = lane.peer, "lane from worker closed");
        }
        for (h, fd) in unacked.into_iter().chain(unsent).rev() {
            self.handoff.queue.push_front(h, fd);
        }
        if n > 0 {
            self.handoff.dirty = true;
            if self.idle_policy != IdlePolicy::Handoff {
                // Nothing moves any more: they stay here.
                self.keep_all("a new worker is gone");
            }
        }
    }

    /// Step 4, the sending side: puts what waits for a lane, then the queue's lane-able
    /// connections, on lanes with room, a batch per lane in turn. True when nothing
    /// is left waiting for a lane.
    pub(in crate::worker) fn feed_lanes(&mut self) -> bool {
        let h = &mut self.handoff;
        // The queue's lane-able connections join those already waiting; a proxied
        // pair stays for the master.
        let mut keep_for_master = Vec::new();
        for (c, fd) in h.queue.take_all() {
            if lane_able(&c) {
                h.lanes.waiting.push(c, fd);
            } else {
                keep_for_master.push((c, fd));
            }
        }
        for (c, fd) in keep_for_master {
            h.queue.push(c, fd);
        }
        while !self.handoff.lanes.waiting.is_empty() {
            let l = &mut self.handoff.lanes;
            let Some(i) = l.pick() else {
                return false;
            };
            l.rr = i + 1;
            let batch = l.waiting.take_all();
            for (c, fd) in batch {
                l.lanes[i].out.push(c, fd);
            }
            self.flush_lane(i);
            self.lane_interest(i);
        }
        true
    }

    /// Everything taken out for lanes and not sent yet (to keep it here).
    pub(in crate::worker) fn take_lane_queues(&mut self) -> Vec<(Handed, OwnedFd)> {
        let l = &mut self.handoff.lanes;
        let mut all = l.waiting.take_all();
        for lane in &mut l.lanes {
            all.extend(lane.out.take_all());
        }
        all
    }

    /// At the drain deadline: what waits for a lane closes with the worker; returns
    /// how many.
    pub(in crate::worker) fn drop_lane_queues(&mut self) -> usize {
        self.take_lane_queues().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(key: u32, room: Option<u64>, unacked: usize) -> Lane {
        let (ours, _theirs) = Channel::pair().unwrap();
        Lane {
            peer: key,
            key,
            ch: ours,
            sends: true,
            foreign: false,
            out: ConnQueue::default(),
            unacked: VecDeque::new(),
            unacked_conns: unacked,
            owed: VecDeque::new(),
            took: 0,
            room,
            want_write: false,
            readable: false,
            full: false,
            broken: false,
        }
    }

    fn lanes(l: Vec<Lane>, rr: usize) -> Lanes {
        Lanes {
            lanes: l,
            rr,
            assumed_room: 19_000,
            ..Lanes::default()
        }
    }

    /// Every sender sees the receivers' own count, so the emptiest receiver gets the
    /// batch whoever sends it; what this sender has on the way counts against it.
    #[test]
    fn a_batch_goes_to_the_receiver_with_the_most_room() {
        let l = lanes(vec![lane(0, Some(100), 0), lane(1, Some(5000), 0)], 0);
        assert_eq!(l.pick(), Some(1));
        // 5000 less 448 on the way is still more than 4 600.
        let l = lanes(vec![lane(0, Some(4600), 0), lane(1, Some(5000), 448)], 0);
        assert_eq!(l.pick(), Some(0));
    }

    /// Before any answer, or among equals, batches go round in turn (an even spread),
    /// less what is on the way.
    #[test]
    fn among_equals_in_turn_and_unanswered_receivers_first() {
        let three = |rr| {
            lanes(
                vec![lane(0, None, 0), lane(1, None, 0), lane(2, None, 0)],
                rr,
            )
        };
        assert_eq!(three(0).pick(), Some(0));
        assert_eq!(three(1).pick(), Some(1));
        assert_eq!(three(2).pick(), Some(2));
        let l = lanes(vec![lane(0, None, 64), lane(1, None, 0)], 0);
        assert_eq!(l.pick(), Some(1));
        // A receiver not heard from yet is taken to have a new worker's room
        // (`max_connections`), not more: one that answered with as much is its equal.
        let l = lanes(vec![lane(0, Some(5_000), 0), lane(1, None, 0)], 0);
        assert_eq!(l.pick(), Some(1));
        let l = lanes(vec![lane(0, Some(19_000), 0), lane(1, None, 64)], 0);
        assert_eq!(l.pick(), Some(0));
    }

    /// Many senders share the kernel's bound on fds in flight: with 56 lanes a sender
    /// stops at one window unanswered over all of them; with 3, each lane's own
    /// window is the limit.
    #[test]
    fn a_sender_keeps_to_its_share_of_the_fds_in_flight() {
        let many = |each| lanes((0..56).map(|k| lane(k, None, each)).collect(), 0);
        assert!(many(7).pick().is_some(), "7 x 56 + 64 is within 512");
        assert_eq!(many(9).pick(), None, "9 x 56 + 64 is past 512");
        let few = lanes((0..3).map(|k| lane(k, None, LANE_WINDOW - 64)).collect(), 0);
        assert!(few.pick().is_some(), "3 lanes: each window is the limit");
    }

    /// A lane's window is its receiver's room shared by the senders (one per lane
    /// here), at least a batch: 63 senders each a full window ahead on one receiver
    /// overflowed its fd table.
    #[test]
    fn a_lane_holds_its_share_of_the_receivers_room() {
        let only = |room, unacked| {
            // 62 others whose sockets are full: not candidates, nothing in flight.
            let mut all: Vec<Lane> = (1..63)
                .map(|k| {
                    let mut l = lane(k, Some(0), 0);
                    l.full = true;
                    l
                })
                .collect();
            all.insert(0, lane(0, room, unacked));
            lanes(all, 0).pick()
        };
        // 19 000 / 63 = 301: 192 + 64 fit, 256 + 64 do not.
        assert_eq!(only(Some(19_000), 192), Some(0));
        assert_eq!(only(Some(19_000), 256), None);
        // Nearly full: one batch at a time.
        assert_eq!(only(Some(3_000), 0), Some(0));
        assert_eq!(only(Some(3_000), 64), None);
        // Not heard from yet: a new worker's room (19 000 in these tests).
        assert_eq!(only(None, 256), None);
    }

    /// Room is a preference, not a stop: a full receiver still takes a batch when no
    /// other lane has room in its window (a worker adopts past `max_connections`, up
    /// to its fd table); a full window, a full socket or a broken lane takes none.
    #[test]
    fn a_full_window_is_skipped_and_a_full_receiver_is_only_last() {
        let l = lanes(
            vec![lane(0, Some(0), 0), lane(1, Some(9000), LANE_WINDOW)],
            0,
        );
        assert_eq!(l.pick(), Some(0));
        let mut full = lane(1, Some(9000), 0);
        full.full = true;
        let mut broken = lane(2, Some(9000), 0);
        broken.broken = true;
        let l = lanes(vec![lane(0, Some(0), LANE_WINDOW), full, broken], 0);
        assert_eq!(l.pick(), None);
    }
}
