//! One load thread: its share of the connections as edge-triggered state machines
//! on one epoll instance, in corral's own loop order (timers, epoll, IO).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral::os::client::Socket;
use corral::os::epoll::{Epoll, Event};

use crate::bucket::Bucket;
use crate::conn::{
    fill_message, is_interrupted, is_would_block, key, open_connection, wait_events, Conn, Outcome,
    Report, State,
};
use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::plan::{Mode, Plan};

/// Most readiness events taken from one epoll wait.
const EVENTS: usize = 1024;
/// Longest epoll wait, so a Ctrl-C or the end of the run is noticed quickly.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(100);
/// First retry delay after a failed connect; doubles per consecutive failure.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(50);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(1);
/// Round trips one connection may complete in a row before the others get a turn.
pub(crate) const DRIVE_BUDGET: u32 = 8;

pub(crate) struct ClientThread<'p> {
    pub(crate) plan: &'p Plan,
    pub(crate) epoll: Epoll,
    pub(crate) conns: Vec<Conn>,
    /// Timers (pacing and connect retries): (due, connection, token).
    pub(crate) timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    pub(crate) queue: VecDeque<usize>,
    /// Connections to drive again without waiting for an event: (connection, token).
    pub(crate) again: Vec<(usize, u32)>,
    pub(crate) bucket: Option<Bucket>,
    pub(crate) counters: Counters,
    pub(crate) latency: Histogram,
    pub(crate) connect_latency: Histogram,
    /// Latencies since the last progress report.
    pub(crate) interval: Histogram,
    pub(crate) open: usize,
    pub(crate) first_connect_error: Option<String>,
}

impl<'p> ClientThread<'p> {
    pub(crate) fn new(plan: &'p Plan, thread: usize, now: Instant) -> Result<Self, String> {
        let epoll = Epoll::new(EVENTS)
            .map_err(|e| format!("epoll_create1() failed in thread {thread}: {e}"))?;
        let conns: Vec<Conn> = (0..plan.conns)
            .filter(|g| g % plan.threads == thread)
            .map(|global| Conn {
                global,
                sock: None,
                state: State::Queued,
                token: 0,
                established: false,
                deadline: None,
                began: now,
                next_due: now,
                seq: 0,
                out: vec![0; plan.size],
                sent: 0,
                back: vec![0; plan.size],
                got: 0,
                failures: 0,
                was_lost: false,
            })
            .collect();
        let queue = (0..conns.len()).collect();
        Ok(ClientThread {
            plan,
            epoll,
            conns,
            timers: BinaryHeap::new(),
            queue,
            again: Vec::new(),
            bucket: plan.connect_rate.map(|r| Bucket::new(r, now)),
            counters: Counters::default(),
            latency: Histogram::new(),
            connect_latency: Histogram::new(),
            interval: Histogram::new(),
            open: 0,
            first_connect_error: None,
        })
    }

    /// The thread's loop, in corral's own order: timers, then epoll, then IO.
    pub(crate) fn run(
        mut self,
        start: Instant,
        tick_tx: Option<mpsc::Sender<Report>>,
    ) -> Result<Outcome, String> {
        let end = start + self.plan.duration;
        let sweep_every = (self.plan.timeout / 10).clamp(Duration::from_millis(1), MAX_WAIT);
        let mut next_sweep = start + sweep_every;
        let mut next_alive_check = start + self.plan.alive_check;
        let mut tick = 0u64;
        let mut next_report = start + Duration::from_secs(1);
        let mut reported = Counters::default();
        let mut events = Vec::with_capacity(EVENTS);
        loop {
            let now = Instant::now();
            if now >= end || crate::run::stop_requested() {
                break;
            }
            // 1. timers
            self.fire_timers(now);
            if now >= next_sweep {
                self.sweep_timeouts(now);
                next_sweep = now + sweep_every;
            }
            if now >= next_alive_check {
                self.check_idle_alive();
                next_alive_check += self.plan.alive_check;
            }
            if now >= next_report {
                tick += 1;
                next_report += Duration::from_secs(1);
                if let Some(tx) = &tick_tx {
                    let rep = Report {
                        tick,
                        delta: self.counters.since(&reported),
                        latency: std::mem::replace(&mut self.interval, Histogram::new()),
                        open: self.open,
                    };
                    reported = self.counters;
                    // The main thread only stops listening once every thread is done.
                    let _ = tx.send(rep);
                }
            }
            self.admit(now);
            // 2. epoll, until the nearest deadline
            let mut wake = end.min(next_sweep).min(next_report);
            if self.plan.mode == Mode::Idle {
                wake = wake.min(next_alive_check);
            }
            if let Some(Reverse((due, _, _))) = self.timers.peek() {
                wake = wake.min(*due);
            }
            if !self.again.is_empty() {
                wake = now;
            }
            if !self.queue.is_empty() {
                wake = match &self.bucket {
                    Some(b) => wake.min(b.next_token(now)),
                    None => now,
                };
            }
            let wait = wake.saturating_duration_since(Instant::now()).min(MAX_WAIT);
            // A timer may fire up to 1 ms late; pacing keeps an ideal schedule, so the
            // rate does not drift.
            wait_events(&mut self.epoll, wait, &mut events)?;
            // 3. IO
            for &(idx, token, ev) in &events {
                if self.conns.get(idx).is_some_and(|c| c.token == token) {
                    self.on_event(idx, ev);
                }
            }
        }
        // Connections close when the thread ends; what was in flight is not an error.
        let open_at_end = self.open;
        Ok(Outcome {
            counters: self.counters,
            latency: self.latency,
            connect_latency: self.connect_latency,
            open_at_end,
            first_connect_error: self.first_connect_error,
        })
    }

    pub(crate) fn fire_timers(&mut self, now: Instant) {
        // Connections that used up their drive budget last round go first.
        for (idx, token) in std::mem::take(&mut self.again) {
            if self.conns[idx].token == token {
                self.drive(idx);
            }
        }
        while let Some(&Reverse((due, idx, token))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let c = &self.conns[idx];
            if c.token != token {
                continue;
            }
            match c.state {
                State::Paced => self.start_round_trip(idx),
                State::Backoff => {
                    self.conns[idx].state = State::Queued;
                    self.queue.push_back(idx);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn admit(&mut self, now: Instant) {
        while let Some(&idx) = self.queue.front() {
            if let Some(b) = &mut self.bucket {
                if !b.take(now) {
                    break;
                }
            }
            self.queue.pop_front();
            self.start_connect(idx);
        }
    }

    pub(crate) fn sweep_timeouts(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            let Some(deadline) = c.deadline else { continue };
            if deadline > now {
                continue;
            }
            match c.state {
                State::Connecting => {
                    let why = format!("connect timed out after {:?}", self.plan.timeout);
                    self.connect_failed(idx, why);
                }
                State::Sending | State::Receiving => {
                    self.counters.timeouts += 1;
                    self.note_lost(idx);
                    self.reconnect(idx);
                }
                _ => {}
            }
        }
    }

    /// Idle mode's periodic (`--alive-check-ms`, 1 s by default) check that every held connection is still open. epoll
    /// reports most closes at once; this also catches a peer that vanished without one
    /// being delivered in a way the state machine looked at.
    pub(crate) fn check_idle_alive(&mut self) {
        if self.plan.mode != Mode::Idle {
            return;
        }
        for idx in 0..self.conns.len() {
            if self.conns[idx].state == State::Idle {
                self.check_alive(idx);
            }
        }
    }

    pub(crate) fn start_connect(&mut self, idx: usize) {
        // Timestamps that feed latencies are taken fresh, never from the loop's `now`:
        // a batch of a thousand events takes long enough to skew them by milliseconds.
        let began = Instant::now();
        match self.open_socket(idx) {
            Ok(sock) => {
                let c = &mut self.conns[idx];
                c.sock = Some(sock);
                c.state = State::Connecting;
                c.began = began;
                c.deadline = Some(began + self.plan.timeout);
            }
            Err(e) => self.connect_failed(idx, e),
        }
    }

    /// Creates, binds, connects and registers a non-blocking socket.
    pub(crate) fn open_socket(&mut self, idx: usize) -> Result<Socket, String> {
        let source = (!self.plan.sources.is_empty())
            .then(|| self.plan.sources[self.conns[idx].global % self.plan.sources.len()]);
        let token = key(idx, self.conns[idx].token);
        open_connection(&self.epoll, self.plan.addr, source, true, token)
    }

    pub(crate) fn connect_failed(&mut self, idx: usize, why: String) {
        self.counters.connect_failed += 1;
        if self.first_connect_error.is_none() {
            self.first_connect_error = Some(why);
        }
        self.close(idx);
        let c = &mut self.conns[idx];
        c.failures = c.failures.saturating_add(1);
        // Back off so that a refusing server does not turn the tool into a busy loop.
        let delay = RETRY_MIN
            .saturating_mul(1 << c.failures.min(10).saturating_sub(1))
            .min(RETRY_MAX);
        c.state = State::Backoff;
        self.timers
            .push(Reverse((Instant::now() + delay, idx, c.token)));
    }

    /// Drops the socket (which also removes it from epoll) and invalidates its events.
    pub(crate) fn close(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.sock = None;
        c.deadline = None;
        c.token = c.token.wrapping_add(1);
        if c.established {
            c.established = false;
            self.open -= 1;
        }
    }

    /// Counts slot `idx` in `conns_lost`, once.
    fn note_lost(&mut self, idx: usize) {
        if !std::mem::replace(&mut self.conns[idx].was_lost, true) {
            self.counters.conns_lost += 1;
        }
    }

    /// Closes and queues a new connection at once (the server was reachable).
    pub(crate) fn reconnect(&mut self, idx: usize) {
        self.close(idx);
        self.conns[idx].state = State::Queued;
        self.queue.push_back(idx);
    }

    pub(crate) fn on_event(&mut self, idx: usize, ev: Event) {
        if self.conns[idx].state == State::Connecting {
            if !(ev.writable || ev.hangup) {
                return;
            }
            self.finish_connect(idx);
            // The same edge may already carry the server's close (an accept-and-close
            // server, a draining worker): with edge triggering it will not come again,
            // so fall through and look at it in the new state.
        }
        match self.conns[idx].state {
            State::Connecting => {}
            State::Sending | State::Receiving => self.drive(idx),
            State::Paced | State::Idle => {
                if ev.readable || ev.hangup {
                    self.check_alive(idx);
                }
            }
            State::Queued | State::Backoff => {}
        }
    }

    pub(crate) fn finish_connect(&mut self, idx: usize) {
        let now = Instant::now();
        let c = &mut self.conns[idx];
        let Some(sock) = &c.sock else { return };
        let err = match sock.take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = err {
            let why = format!("connect({}) failed: {e}", self.plan.addr);
            self.connect_failed(idx, why);
            return;
        }
        c.established = true;
        c.failures = 0;
        c.deadline = None;
        let took = now.saturating_duration_since(c.began);
        self.open += 1;
        self.counters.opened += 1;
        self.connect_latency.record(took.as_micros() as u64);
        match (self.plan.mode, self.plan.pace) {
            (Mode::Idle, _) => self.conns[idx].state = State::Idle,
            (Mode::Echo, Some(pace)) => {
                // Spread the first round trips over one period (golden-ratio steps), so
                // paced connections opened together do not fire together forever.
                let frac = (self.conns[idx].global as f64 * 0.618_033_988_75).fract();
                let c = &mut self.conns[idx];
                c.next_due = now + pace.mul_f64(frac);
                c.state = State::Paced;
                self.timers.push(Reverse((c.next_due, idx, c.token)));
            }
            _ => self.start_round_trip(idx),
        }
    }

    pub(crate) fn start_round_trip(&mut self, idx: usize) {
        self.prepare_round_trip(idx);
        self.drive(idx);
    }

    pub(crate) fn prepare_round_trip(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.seq += 1;
        fill_message(&mut c.out, c.global, c.seq);
        c.sent = 0;
        c.got = 0;
        c.began = Instant::now();
        c.deadline = Some(c.began + self.plan.timeout);
        c.state = State::Sending;
    }

    /// Advances round trips as far as the socket allows (edge-triggered: until EAGAIN).
    /// A server that answers at once would keep one connection here forever, so after
    /// a few round trips the connection yields and is driven again after the others.
    pub(crate) fn drive(&mut self, idx: usize) {
        let mut budget = DRIVE_BUDGET;
        loop {
            let c = &mut self.conns[idx];
            let Some(sock) = &c.sock else { return };
            match c.state {
                State::Sending => match (&*sock).write(&c.out[c.sent..]) {
                    Ok(0) => return self.lost(idx),
                    Ok(n) => {
                        c.sent += n;
                        self.counters.bytes_sent += n as u64;
                        if c.sent == c.out.len() {
                            c.state = State::Receiving;
                        }
                    }
                    Err(e) if is_would_block(&e) => return,
                    Err(e) if is_interrupted(&e) => {}
                    Err(_) => return self.lost(idx),
                },
                State::Receiving => {
                    let want = c.back.len();
                    match (&*sock).read(&mut c.back[c.got..want]) {
                        Ok(0) => return self.lost(idx),
                        Ok(n) => {
                            c.got += n;
                            self.counters.bytes_received += n as u64;
                            if c.got == want {
                                if !self.round_trip_done(idx) {
                                    return;
                                }
                                budget -= 1;
                                if budget == 0 {
                                    let token = self.conns[idx].token;
                                    self.again.push((idx, token));
                                    return;
                                }
                            }
                        }
                        Err(e) if is_would_block(&e) => return,
                        Err(e) if is_interrupted(&e) => {}
                        Err(_) => return self.lost(idx),
                    }
                }
                _ => return,
            }
        }
    }

    /// The server closed or reset while an echo was expected.
    pub(crate) fn lost(&mut self, idx: usize) {
        self.counters.reset_eof += 1;
        self.note_lost(idx);
        self.reconnect(idx);
    }

    /// Counts a complete echo and sets up what follows; true when the next round trip
    /// is ready to be driven at once.
    pub(crate) fn round_trip_done(&mut self, idx: usize) -> bool {
        let now = Instant::now();
        let c = &mut self.conns[idx];
        if c.back != c.out {
            self.counters.mismatch += 1;
            self.note_lost(idx);
            // The stream is out of step; only a new connection can resynchronise.
            self.reconnect(idx);
            return false;
        }
        let us = now.saturating_duration_since(c.began).as_micros() as u64;
        c.deadline = None;
        self.counters.round_trips += 1;
        self.latency.record(us);
        if self.plan.progress {
            self.interval.record(us);
        }
        match (self.plan.mode, self.plan.pace) {
            // A clean close by the client, then a fresh connection: that is the load.
            (Mode::Churn, _) => {
                self.reconnect(idx);
                false
            }
            (_, Some(pace)) => {
                let c = &mut self.conns[idx];
                // Keep to the ideal schedule (first + k * pace), so that timer lateness
                // does not add up into a lower rate; but a connection more than one
                // period behind starts afresh instead of bursting to catch up.
                c.next_due += pace;
                if c.next_due + pace < now {
                    c.next_due = now;
                }
                if c.next_due <= now {
                    self.prepare_round_trip(idx);
                    true
                } else {
                    c.state = State::Paced;
                    self.timers.push(Reverse((c.next_due, idx, c.token)));
                    false
                }
            }
            (_, None) => {
                self.prepare_round_trip(idx);
                true
            }
        }
    }

    /// For a connection with nothing outstanding: is it still open and silent?
    pub(crate) fn check_alive(&mut self, idx: usize) {
        let Some(sock) = &self.conns[idx].sock else {
            return;
        };
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut byte) {
            Err(e) if is_would_block(&e) || is_interrupted(&e) => {}
            Ok(0) | Err(_) => {
                self.counters.closed_idle += 1;
                self.note_lost(idx);
                self.reconnect(idx);
            }
            Ok(_) => {
                // An echo server never speaks first.
                self.counters.mismatch += 1;
                self.note_lost(idx);
                self.reconnect(idx);
            }
        }
    }
}
