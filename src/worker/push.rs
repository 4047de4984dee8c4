//! Push in one worker: carrying out what handlers asked through `Io` (writes to other
//! connections, subscriptions, publishes), delivering messages to this worker's
//! subscribers, and keeping subscriptions across moves.
//!
//! Delivery to a connection goes through its handler (`Handler::on_push`, which
//! frames the message) and its flow control: over `write_high_water` of unsent
//! output, the listener's service decides (`Service::overflow`): drop and count, or
//! close and count. Ops run after the callbacks of a loop iteration, never inside
//! another connection's callback, so a handler never re-enters.
//!
//! Moves: a moving connection takes its topics and this worker's *cursor* (the last
//! sequence number it received from each publisher) along. The adopting worker
//! replays from its history ([`HISTORY`] messages) what the connection's topics got
//! after the cursor (published while it was in flight), and skips, for that
//! connection, what it receives later at or below the cursor (the old worker
//! delivered it). So a message reaches a moving subscriber once: from the old worker
//! before the move, or from the new one after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::channel::{PushCounts, PushMoved};
use crate::os::epoll::Interest;
use crate::service::push::{
    Op, Outbox, Overflow, HISTORY, HISTORY_BYTES, MAX_MESSAGE, MAX_TOPIC, MAX_TOPICS_PER_CONN,
};

use super::bus::{Bus, Msg};
use super::conn::Flags;
use super::token::Token;
use super::Worker;

/// Rounds of ops run per loop iteration: handlers that answer each other's writes
/// forever cannot hold the loop; the rest runs in the next iteration.
const ROUNDS: usize = 16;
/// Deliveries (writes to connections) per loop iteration, and the time they may take
/// (checked every [`CLOCK_EVERY`] deliveries), beyond which the rest waits for the
/// next iteration: a worker behind by messages to 16k subscribers each on a starved
/// box must not stay seconds in one iteration (its timers and heartbeats would
/// starve, and the watchdog kill it with its connections). A message's delivery is
/// cut between turns, so the bound holds whatever the audience.
const DELIVERY_TURN: usize = 4096;
const DELIVERY_TIME: Duration = Duration::from_millis(20);
const CLOCK_EVERY: usize = 64;
/// Packets read from each peer at a time, when nothing is left to deliver.
const READ_BATCH: usize = 8;
/// Publishers whose last sequence number a worker remembers (workers and masters:
/// a few; the bound only matters against a bug).
const MAX_PUBLISHERS: usize = 1024;

/// This worker's push state.
pub struct Push {
    pub outbox: Outbox,
    topics: HashMap<Rc<str>, HashSet<u64>>,
    /// Topics per connection (by token), to forget them at close and carry them away.
    by_conn: HashMap<u64, Vec<Rc<str>>>,
    /// Per moved-in connection: (publisher, seq) at or below which the old worker
    /// delivered already.
    floors: HashMap<u64, Vec<(u64, u64)>>,
    pub bus: Bus,
    history: VecDeque<Rc<Msg>>,
    history_bytes: usize,
    /// Last sequence number received per publisher: the cursor a move carries.
    last_seen: HashMap<u64, u64>,
    /// First sequence number received per publisher: what came before never reached
    /// this worker, so a connection moved in on a cursor below it missed the gap.
    first_seen: HashMap<u64, u64>,
    /// This worker as a publisher: an id no other process has now, and its counter.
    me: u64,
    seq: u64,
    pub counts: PushCounts,
    /// Messages received or published here, not yet begun to be delivered (in order).
    pending: VecDeque<Rc<Msg>>,
    /// The message being delivered, cut between loop iterations.
    current: Option<Delivery>,
    /// Our master's upgrade committed: publishes go to it too, for the new master's
    /// workers (not on our bus).
    pub forward_to_master: bool,
}

/// A message's delivery under way: its audience (taken when it began, with the
/// cursor and history updated then) and how far it went.
struct Delivery {
    m: Rc<Msg>,
    audience: Vec<u64>,
    next: usize,
}

/// A publisher id for this process: its pid and the low bits of the time it started,
/// so a pid reused later is another publisher.
pub fn publisher_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    (u64::from(std::process::id()) << 32) | u64::from(nanos)
}

impl Default for Push {
    fn default() -> Push {
        Push {
            outbox: Outbox::default(),
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            floors: HashMap::new(),
            bus: Bus::default(),
            history: VecDeque::new(),
            history_bytes: 0,
            last_seen: HashMap::new(),
            first_seen: HashMap::new(),
            me: publisher_id(),
            seq: 0,
            counts: PushCounts::default(),
            pending: VecDeque::new(),
            current: None,
            forward_to_master: false,
        }
    }
}

impl Push {
    /// Nothing for the loop to do now (it may sleep in epoll_wait).
    pub fn idle(&self) -> bool {
        self.outbox.ops.is_empty()
            && self.current.is_none()
            && self.pending.is_empty()
            && !self.bus.any_readable()
    }

    /// The counters, with the bus's.
    pub fn totals(&self) -> PushCounts {
        PushCounts {
            dropped_peer_full: self.bus.counts.dropped_peer_full,
            ..self.counts
        }
    }

    fn subscribe(&mut self, token: u64, topic: &str) -> bool {
        if topic.len() > MAX_TOPIC {
            return false;
        }
        let mine = self.by_conn.entry(token).or_default();
        if mine.iter().any(|t| &**t == topic) {
            return true;
        }
        if mine.len() >= MAX_TOPICS_PER_CONN {
            return false;
        }
        let key: Rc<str> = match self.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => topic.into(),
        };
        mine.push(key.clone());
        self.topics.entry(key).or_default().insert(token);
        true
    }

    fn unsubscribe(&mut self, token: u64, topic: &str) {
        if let Some(mine) = self.by_conn.get_mut(&token) {
            mine.retain(|t| &**t != topic);
            if mine.is_empty() {
                self.by_conn.remove(&token);
            }
        }
        self.drop_from_topic(token, topic);
    }

    fn drop_from_topic(&mut self, token: u64, topic: &str) {
        if let Some(set) = self.topics.get_mut(topic) {
            set.remove(&token);
            if set.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// A connection left the worker: its subscriptions go; returns its topics.
    pub fn forget(&mut self, token: u64) -> Vec<Rc<str>> {
        self.floors.remove(&token);
        let Some(mine) = self.by_conn.remove(&token) else {
            return Vec::new();
        };
        for t in &mine {
            self.drop_from_topic(token, t);
        }
        mine
    }

    /// What a moving connection takes along (None: it subscribed to nothing). Its
    /// cursor counts the messages received here but not begun (`pending`) as
    /// delivered: `Worker::catch_up` wrote them to it before.
    pub fn take_for_move(&mut self, token: u64) -> Option<PushMoved> {
        let topics = self.forget(token);
        if topics.is_empty() {
            return None;
        }
        let mut cursor = self.last_seen.clone();
        for m in &self.pending {
            let s = cursor.entry(m.publisher).or_insert(0);
            *s = (*s).max(m.seq);
        }
        Some(PushMoved {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            cursor: cursor.into_iter().collect(),
        })
    }

    fn subscribed(&self, token: u64) -> bool {
        self.by_conn.contains_key(&token)
    }

    /// Notes a message as received: history and cursor.
    fn record(&mut self, m: &Rc<Msg>) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.first_seen.entry(m.publisher) {
            e.insert(m.seq);
            // Connections that moved in before this publisher was heard of here.
            for f in self.floors.values() {
                for &(p, s) in f {
                    if p == m.publisher && m.seq > s + 1 {
                        self.counts.missed_in_move += m.seq - s - 1;
                    }
                }
            }
            if self.first_seen.len() > MAX_PUBLISHERS {
                // As for `last_seen` below: the publishers the history still holds.
                let live: HashSet<u64> = self.history.iter().map(|m| m.publisher).collect();
                self.first_seen
                    .retain(|p, _| live.contains(p) || *p == m.publisher);
            }
        }
        let last = self.last_seen.entry(m.publisher).or_insert(0);
        *last = (*last).max(m.seq);
        if self.last_seen.len() > MAX_PUBLISHERS {
            // Keep the publishers the history still holds messages of.
            let live: HashSet<u64> = self.history.iter().map(|m| m.publisher).collect();
            self.last_seen.retain(|p, _| live.contains(p));
        }
        self.history_bytes += m.payload.len();
        self.history.push_back(m.clone());
        while self.history.len() > HISTORY || self.history_bytes > HISTORY_BYTES {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.payload.len(),
                None => break,
            }
        }
    }

    /// The subscribers of `topic` that should get `m` (a moved-in connection skips
    /// what its old worker delivered).
    fn audience(&mut self, m: &Msg) -> Vec<u64> {
        let Some(set) = self.topics.get(&m.topic) else {
            return Vec::new();
        };
        if self.floors.is_empty() {
            return set.iter().copied().collect();
        }
        let floors = &mut self.floors;
        set.iter()
            .copied()
            .filter(|t| match floors.get_mut(t) {
                None => true,
                Some(f) => {
                    let skip = f.iter().any(|&(p, s)| p == m.publisher && m.seq <= s);
                    // Past the floor for this publisher: it no longer needs one.
                    f.retain(|&(p, s)| !(p == m.publisher && m.seq >= s));
                    if f.is_empty() {
                        floors.remove(t);
                    }
                    !skip
                }
            })
            .collect()
    }
}

impl Worker {
    /// A bus peer from the master.
    pub(super) fn add_bus_peer(&mut self, fd: OwnedFd, pid: u32) {
        let interest = Interest {
            read: true,
            write: true,
            edge: true,
            exclusive: false,
        };
        let token = self.push.bus.add(fd, pid);
        let Some(fd) = self.push.bus.fd_of(token) else {
            return;
        };
        if let Err(e) = self.epoll.add(fd, interest, token) {
            warn!(peer = pid, "cannot watch a bus peer: {e}");
        }
        debug!(peer = pid, peers = self.push.bus.len(), "bus peer added");
    }

    pub(super) fn bus_event(&mut self, token: u64, ev: crate::os::epoll::Event) {
        if let Some(pid) = self
            .push
            .bus
            .event(token, ev.readable || ev.hangup, ev.writable)
        {
            debug!(peer = pid, "bus peer gone");
        }
    }

    /// Step 4: what handlers asked for (a few rounds), then deliveries of what was
    /// published here and what the bus brought, for at most a turn.
    pub(super) fn run_push(&mut self) {
        for _ in 0..ROUNDS {
            let ops = std::mem::take(&mut self.push.outbox.ops);
            if ops.is_empty() {
                break;
            }
            for op in ops {
                self.run_op(op);
            }
        }
        let start = Instant::now();
        let mut budget = DELIVERY_TURN;
        while budget > 0 {
            if self.push.current.is_some() {
                self.deliver_some(Some((&mut budget, start)));
            } else if let Some(m) = self.push.pending.pop_front() {
                // A message costs a write even with no subscriber here: a flood of
                // them is bounded too.
                budget -= 1;
                self.begin(m);
            } else if self.push.bus.any_readable() {
                let (msgs, gone) = self.push.bus.read(READ_BATCH);
                for pid in gone {
                    debug!(peer = pid, "bus peer gone");
                }
                self.push.pending.extend(msgs.into_iter().map(Rc::new));
            } else {
                break;
            }
        }
    }

    fn run_op(&mut self, op: Op) {
        match op {
            Op::Send(to, bytes) => {
                let token = Token(to);
                if self.conns.get(token).is_none() {
                    self.push.counts.refused += 1;
                    return;
                }
                self.write_to(token, |_, io| io.write(&bytes));
            }
            Op::Subscribe(token, topic) => {
                if !self.push.subscribe(token, &topic) {
                    self.push.counts.refused += 1;
                }
            }
            Op::Unsubscribe(token, topic) => self.push.unsubscribe(token, &topic),
            Op::Publish(topic, message) => self.publish(topic.into(), message.into()),
        }
    }

    /// Publishes as this worker: to the peers, then here.
    pub(super) fn publish(&mut self, topic: Rc<str>, payload: Box<[u8]>) {
        if topic.len() > MAX_TOPIC || payload.len() > MAX_MESSAGE {
            self.push.counts.refused += 1;
            return;
        }
        self.push.seq += 1;
        self.push.counts.published += 1;
        let m = Rc::new(Msg {
            publisher: self.push.me,
            seq: self.push.seq,
            topic,
            payload,
        });
        for pid in self.push.bus.broadcast(&m.encode()) {
            debug!(peer = pid, "bus peer gone");
        }
        if self.push.forward_to_master {
            // Owed rather than dropped when the channel is full of hand-overs, and in
            // order with them.
            self.send_or_owe(crate::channel::ToMaster::Publish {
                publisher: m.publisher,
                seq: m.seq,
                topic: m.topic.to_string(),
                message: m.payload.to_vec(),
            });
        }
        self.push.pending.push_back(m);
    }

    /// A message from elsewhere (the master's `corral publish`): here only; the
    /// master sends it to every worker itself.
    pub(super) fn deliver_forwarded(
        &mut self,
        publisher: u64,
        seq: u64,
        topic: &str,
        payload: &[u8],
    ) {
        self.push.pending.push_back(Rc::new(Msg {
            publisher,
            seq,
            topic: topic.into(),
            payload: payload.into(),
        }));
    }

    /// A message begins its delivery here: it is recorded (history, cursor: a
    /// connection that moves from now on does not get it here) and its audience
    /// taken.
    fn begin(&mut self, m: Rc<Msg>) {
        self.push.record(&m);
        let audience = self.push.audience(&m);
        self.push.current = Some(Delivery {
            m,
            audience,
            next: 0,
        });
    }

    /// Goes on with the current delivery, within `budget` writes and until
    /// `DELIVERY_TIME` after `start` (None: to its end).
    fn deliver_some(&mut self, mut turn: Option<(&mut usize, Instant)>) {
        let Some(mut d) = self.push.current.take() else {
            return;
        };
        while d.next < d.audience.len() {
            if let Some((budget, start)) = turn.as_mut() {
                if **budget == 0 {
                    break;
                }
                **budget -= 1;
                if d.next % CLOCK_EVERY == CLOCK_EVERY - 1 && start.elapsed() >= DELIVERY_TIME {
                    **budget = 0;
                }
            }
            let t = Token(d.audience[d.next]);
            d.next += 1;
            let m = d.m.clone();
            self.write_to(t, move |h, io| h.on_push(io, &m.topic, &m.payload));
            // Unbounded only to finish a message before subscribers leave (`catch_up`):
            // 16 000 writes can outlast the watchdog on a starved box.
            if turn.is_none() && d.next % CLOCK_EVERY == 0 {
                self.beat_if_due();
            }
        }
        if d.next < d.audience.len() {
            self.push.current = Some(d);
        }
    }

    /// Before a subscriber moves: it gets here everything this worker received and
    /// has not delivered to it yet (the rest of the delivery under way, what waits in
    /// `pending`, and what waits unread on the bus), because the worker that adopts
    /// it may not have those: it joined the bus after they were published (a reload
    /// forks it while this one is behind). Moving on a cursor without them lost every
    /// such message for the subscriber (the loss seen at 1M subscribers, and at 100k
    /// on a starved box: hundreds of thousands). What a peer has not yet written to
    /// this worker's socket (its own queue, full only when this worker is hundreds of
    /// messages behind) is not covered.
    pub(super) fn catch_up(&mut self, token: Token) {
        if !self.push.subscribed(token.0) {
            return;
        }
        self.deliver_some(None);
        if self.push.bus.any_readable() {
            let (msgs, gone) = self.push.bus.read(usize::MAX);
            for pid in gone {
                debug!(peer = pid, "bus peer gone");
            }
            self.push.pending.extend(msgs.into_iter().map(Rc::new));
        }
        let floors = self.push.floors.get(&token.0).cloned().unwrap_or_default();
        let mine = self.push.by_conn.get(&token.0).cloned().unwrap_or_default();
        let owed: Vec<Rc<Msg>> = self
            .push
            .pending
            .iter()
            .filter(|m| mine.iter().any(|t| **t == *m.topic))
            .filter(|m| !floors.iter().any(|&(p, s)| p == m.publisher && m.seq <= s))
            .cloned()
            .collect();
        // What it got here is skipped when this worker begins it, should the
        // connection not be able to leave now (not at a quiescent point).
        let mut floors = floors;
        for m in &self.push.pending {
            match floors.iter_mut().find(|(p, _)| *p == m.publisher) {
                Some((_, s)) => *s = (*s).max(m.seq),
                None => floors.push((m.publisher, m.seq)),
            }
        }
        if !floors.is_empty() {
            self.push.floors.insert(token.0, floors);
        }
        let writes = owed.len();
        for m in owed {
            self.write_to(token, move |h, io| h.on_push(io, &m.topic, &m.payload));
        }
        // A worker hundreds of messages behind writes that many to each leaving
        // subscriber, a batch of them per call: the watchdog must still hear from it.
        if writes >= CLOCK_EVERY {
            self.beat_if_due();
        }
    }

    /// Writes to a connection from outside its own callbacks, under its flow control.
    fn write_to(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut dyn crate::service::Handler, &mut crate::service::Io<'_>),
    ) {
        let high = self.config.flow.write_high_water.0 as usize;
        let Some(c) = self.conns.get(token) else {
            return;
        };
        if c.flags.has(Flags::CLOSE) {
            return;
        }
        if c.owed() >= high {
            let listener = usize::from(c.listener);
            let policy = self
                .listeners
                .get(listener)
                .map_or(Overflow::Drop, |l| l.service.overflow());
            match policy {
                Overflow::Drop => self.push.counts.dropped_slow += 1,
                Overflow::Disconnect => {
                    self.push.counts.disconnected_slow += 1;
                    self.close(token);
                }
            }
            return;
        }
        self.push.counts.delivered += 1;
        self.with_handler_quiet(token, f);
    }

    /// A connection arrived by a move with subscriptions: they are its again here,
    /// and what was published while it travelled is replayed.
    pub(super) fn restore_push(&mut self, token: Token, moved: &PushMoved) {
        for t in &moved.topics {
            self.push.subscribe(token.0, t);
        }
        let cursor: HashMap<u64, u64> = moved.cursor.iter().copied().collect();
        // What its old worker had not received and this one never did: counted
        // (see `PushCounts::missed_in_move`); a publisher not heard of here yet is
        // checked when its first message comes (`record`).
        for (&p, &c) in &cursor {
            if let Some(&f) = self.push.first_seen.get(&p) {
                if f > c + 1 && self.push.last_seen.get(&p).is_some_and(|&l| l >= f) {
                    self.push.counts.missed_in_move += f - c - 1;
                }
            }
        }
        // Later arrivals at or below the cursor were delivered by the old worker.
        let floors: Vec<(u64, u64)> = moved
            .cursor
            .iter()
            .copied()
            .filter(|&(p, s)| self.push.last_seen.get(&p).is_none_or(|&mine| mine < s))
            .collect();
        if !floors.is_empty() {
            self.push.floors.insert(token.0, floors);
        }
        let replay: Vec<Rc<Msg>> = self
            .push
            .history
            .iter()
            .filter(|m| moved.topics.iter().any(|t| **t == *m.topic))
            .filter(|m| cursor.get(&m.publisher).is_none_or(|&s| m.seq > s))
            .cloned()
            .collect();
        for m in replay {
            self.push.counts.replayed += 1;
            self.write_to(token, move |h, io| h.on_push(io, &m.topic, &m.payload));
        }
    }
}
