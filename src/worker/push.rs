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
/// Deliveries (writes to connections) from the bus per loop iteration, beyond which
/// what waits on the bus is read in the next one: a message reaches every local
/// subscriber in one go, so a worker behind by hundreds of messages to 15k
/// subscribers must not spend seconds in one iteration (its timers and heartbeats
/// would starve: the 100k bench on a loaded box had the watchdog kill workers at
/// 64k deliveries per iteration).
const DELIVERY_TURN: usize = 4096;
/// Packets read from each peer at a time within that turn.
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
    /// This worker as a publisher: an id no other process has now, and its counter.
    me: u64,
    seq: u64,
    pub counts: PushCounts,
    /// Our master's upgrade committed: publishes go to it too, for the new master's
    /// workers (not on our bus).
    pub forward_to_master: bool,
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
            me: publisher_id(),
            seq: 0,
            counts: PushCounts::default(),
            forward_to_master: false,
        }
    }
}

impl Push {
    /// Nothing for the loop to do now (it may sleep in epoll_wait).
    pub fn idle(&self) -> bool {
        self.outbox.ops.is_empty() && !self.bus.any_readable()
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

    /// What a moving connection takes along (None: it subscribed to nothing).
    pub fn take_for_move(&mut self, token: u64) -> Option<PushMoved> {
        let topics = self.forget(token);
        if topics.is_empty() {
            return None;
        }
        Some(PushMoved {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            cursor: self.last_seen.iter().map(|(&p, &s)| (p, s)).collect(),
        })
    }

    /// Notes a message as received: history and cursor.
    fn record(&mut self, m: &Rc<Msg>) {
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

    /// Step 4: what the bus brought, then what handlers asked for (a few rounds).
    pub(super) fn run_push(&mut self) {
        let mut budget = DELIVERY_TURN;
        while budget > 0 && self.push.bus.any_readable() {
            let (msgs, gone) = self.push.bus.read(READ_BATCH);
            for pid in gone {
                debug!(peer = pid, "bus peer gone");
            }
            for m in msgs {
                budget = budget.saturating_sub(self.deliver(Rc::new(m)) + 1);
            }
        }
        for _ in 0..ROUNDS {
            let ops = std::mem::take(&mut self.push.outbox.ops);
            if ops.is_empty() {
                return;
            }
            for op in ops {
                self.run_op(op);
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
        self.deliver(m);
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
        self.deliver(Rc::new(Msg {
            publisher,
            seq,
            topic: topic.into(),
            payload: payload.into(),
        }));
    }

    /// Delivers a message to this worker's subscribers of its topic; returns to how
    /// many.
    fn deliver(&mut self, m: Rc<Msg>) -> usize {
        self.push.record(&m);
        let audience = self.push.audience(&m);
        for &t in &audience {
            let m = m.clone();
            self.write_to(Token(t), move |h, io| h.on_push(io, &m.topic, &m.payload));
        }
        audience.len()
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
