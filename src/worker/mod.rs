//! A worker: one single-threaded event loop serving many connections.
//!
//! The loop has four steps, always in this order (the seeds' design):
//! 1. timers: idle timeouts, accept resumption, heartbeat, drain deadline;
//! 2. epoll_wait, bounded by the next timer (zero while work is left over);
//! 3. IO: accept in batches, read and write within per-client budgets;
//! 4. other work: the master channel, signals, reads cut short by their quantum.
//!
//! Connections are edge-triggered; only the loop closes them. Per connection it
//! enforces a read quantum per iteration (one busy client cannot starve the rest), a
//! bounded input buffer, write water marks (a client that does not read its replies is
//! not read from), and EPOLLOUT interest only while output is pending. Idle
//! connections own no buffers: output buffers come from a per-worker pool on demand.

mod accept_proxy;
mod conn;
mod connlog;
mod events;
mod fault;
mod handoff;
pub mod orphan;
mod pool;
mod ratelog;
pub mod stats;
mod suspend;
pub mod timer;
mod trim;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::channel::{Channel, ChannelError, Handed, IdlePolicy, Stats, ToMaster, ToWorker};
use crate::config::{Config, ListenFlow};
use crate::os::epoll::{Epoll, Event, Interest};
use crate::os::signals::SignalReader;
use crate::os::{net, process};
use crate::service::Service;

use conn::{Bucket, Conn, Env, Slab, Token, Upstream, UPSTREAM_BIT};
use pool::Pool;
use timer::Timers;

/// Exit code by which a worker tells the master "fatal configuration problem: do not
/// respawn me".
pub const EXIT_FATAL: i32 = 2;

/// Connections accepted per listener event before the loop moves on, so a flood of
/// new connections cannot starve the existing ones.
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS instead of spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most events handled per epoll_wait.
const EVENTS: usize = 512;
/// Output buffers kept for reuse (each at most `conn::POOLED_CAPACITY`): a few MiB at
/// most stay cached after a burst.
const POOL_MAX: usize = 64;

const TOKEN_CHANNEL: u64 = 1 << 63;
const TOKEN_SIGNALS: u64 = (1 << 63) | 1;
const TOKEN_POOL: u64 = (1 << 63) | 2;
const TOKEN_LISTENER: u64 = 1 << 62;

/// Everything a freshly forked worker is handed by the master.
pub struct WorkerInit {
    pub slot: usize,
    pub generation: u64,
    pub config: Config,
    /// The listening sockets, one per `[[listen]]` entry, in config order.
    pub listeners: Vec<OwnedFd>,
    pub channel: Channel,
    pub signals: SignalReader,
}

enum Timer {
    Idle(Token),
    /// Re-admit a client whose rate limit ran out.
    Throttle(Token),
    /// A proxied connection's upstream connect attempt (by number) timed out.
    Connect(Token, u32),
    /// A handler's `set_timer` came due (checked against the connection's own
    /// deadline: lazy cancellation).
    Handler(Token),
    AcceptResume,
    Heartbeat,
    DrainDeadline,
    /// Look again whether the master has read every hand-over sent to it.
    HandoffSettle,
    /// An injected fault (`slow`, `emfile`) may be over.
    FaultEnd,
    /// `accept_proxy_timeout` of a connection that may still lack its PROXY header.
    Header(Token),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    Draining,
}

struct Listener {
    /// None once draining: the socket is closed, the service stays for the
    /// connections still open (a proxy may still need to fail over).
    fd: Option<OwnedFd>,
    service: Box<dyn Service>,
    flow: ListenFlow,
    /// Its idle timeout; zero = none.
    idle: Duration,
}

struct Worker {
    config: Config,
    epoll: Epoll,
    events: Vec<Event>,
    listeners: Vec<Listener>,
    /// Listeners are in the epoll set.
    accepting: bool,
    /// Accepting is paused after a resource error until this instant.
    accept_backoff_until: Option<Instant>,
    /// None once the master is gone.
    channel: Option<Channel>,
    channel_ready: bool,
    signals: SignalReader,
    signals_ready: bool,
    conns: Slab,
    timers: Timers<Timer>,
    /// Connections whose read was cut short by the quantum: resumed in step 4.
    ready: Vec<Token>,
    scratch: Vec<u8>,
    /// Output buffers for reuse, so idle connections hold none.
    bufs: Vec<Vec<u8>>,
    stats: Stats,
    phase: Phase,
    exit: Option<i32>,
    /// Connections per client IP, for listeners with `max_connections_per_ip`.
    per_ip: HashMap<IpAddr, u32>,
    /// What to do with idle connections while draining.
    idle_policy: IdlePolicy,
    /// Idle connections on their way to the next generation.
    handoff: handoff::Handoff,
    pool: Pool,
    pool_ready: bool,
    /// Blocking jobs submitted by handlers, sent to the pool after each callback.
    jobs: Vec<crate::service::Job>,
    /// Rate-limited log lines for events clients can repeat (rejections, failures).
    notices: events::Events,
    /// Faults injected by `corral fault` that are still in progress.
    injected: fault::Injected,
    /// Per-listener and per-upstream counters for the metrics service.
    counters: stats::Counters,
    /// When to give memory back after a peak of connections left.
    trim: trim::Trim,
}

/// Runs a worker until it is told to stop, drains, or loses its master; returns the
/// process exit code.
pub fn run(init: WorkerInit) -> i32 {
    let span = tracing::info_span!(
        "worker",
        pid = process::pid().as_raw(),
        slot = init.slot,
        gen = init.generation
    );
    let _entered = span.enter();
    match Worker::new(init) {
        Ok(mut w) => {
            let code = w.run();
            // What was counted since the last heartbeat, so the master's totals miss
            // nothing of a worker that exits.
            w.heartbeat();
            w.log_remaining();
            code
        }
        Err(e) => {
            tracing::error!("cannot initialise: {e}");
            EXIT_FATAL
        }
    }
}

impl Worker {
    fn new(init: WorkerInit) -> io::Result<Worker> {
        if crate::fault::get() == Some(&crate::fault::Fault::CrashOnStart) {
            tracing::error!(
                "injected fault ({}=crash-on-start): aborting",
                crate::fault::ENV
            );
            std::process::abort();
        }
        let epoll = Epoll::new(EVENTS).map_err(|e| e.io())?;
        epoll.add(init.channel.as_fd(), Interest::READ, TOKEN_CHANNEL)?;
        epoll.add(init.signals.as_fd(), Interest::READ, TOKEN_SIGNALS)?;
        let pool = Pool::new(init.config.worker.blocking_threads).map_err(|e| e.io())?;
        epoll.add(pool.wake_fd(), Interest::READ, TOKEN_POOL)?;
        let listeners = init
            .listeners
            .into_iter()
            .zip(&init.config.listen)
            .map(|(fd, l)| Listener {
                fd: Some(fd),
                service: crate::service::make(l),
                flow: l.flow(&init.config.flow),
                idle: l.idle_timeout(&init.config.worker),
            })
            .collect();
        let scratch = vec![0u8; init.config.flow.read_quantum.0.min(1 << 20) as usize];
        let notices = events::Events::new(
            init.config
                .listen
                .iter()
                .map(|l| l.address.to_string())
                .collect(),
        );
        let counters = stats::Counters::new(&init.config);
        let mut w = Worker {
            config: init.config,
            epoll,
            events: Vec::with_capacity(EVENTS),
            listeners,
            accepting: false,
            accept_backoff_until: None,
            channel: Some(init.channel),
            channel_ready: false,
            signals: init.signals,
            signals_ready: false,
            conns: Slab::default(),
            timers: Timers::default(),
            ready: Vec::new(),
            scratch,
            bufs: Vec::new(),
            stats: Stats::default(),
            phase: Phase::Running,
            exit: None,
            per_ip: HashMap::new(),
            idle_policy: IdlePolicy::Close,
            handoff: handoff::Handoff::default(),
            pool,
            pool_ready: false,
            jobs: Vec::new(),
            notices,
            injected: fault::Injected::default(),
            counters,
            trim: trim::Trim::default(),
        };
        w.resume_accept()?;
        crate::fault::delay_ready();
        w.send(ToMaster::Ready);
        w.timers.schedule(Instant::now(), Timer::Heartbeat);
        debug!("accepting connections");
        Ok(w)
    }

    fn run(&mut self) -> i32 {
        loop {
            // 1. timers
            let now = Instant::now();
            self.expire_timers(now);
            if let Some(code) = self.exit {
                return code;
            }
            if self.drained_out() {
                return 0;
            }
            // 2. epoll, bounded by the next timer; no wait while reads are left over
            let timeout = if self.ready.is_empty() {
                self.timers.timeout(now)
            } else {
                Some(Duration::ZERO)
            };
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            match self.epoll.wait(timeout) {
                Ok(evs) => events.extend(evs),
                Err(e) => {
                    tracing::error!("epoll_wait() failed: {e}");
                    return 1;
                }
            }
            // `corral fault slow`: whatever woke the loop waits this much longer.
            if let Some(d) = self.injected.iteration_delay() {
                std::thread::sleep(d);
            }
            // 3. IO
            for ev in &events {
                self.dispatch(*ev);
            }
            self.events = events;
            // 4. other work
            self.other_work();
            if let Some(code) = self.exit {
                return code;
            }
            if self.drained_out() {
                return 0;
            }
        }
    }

    /// A draining worker with nothing left exits now. Checked after the timers too:
    /// the settle timer that waits for the master to read the last hand-overs must
    /// not leave the loop asleep in epoll until the next heartbeat (up to 1 s).
    fn drained_out(&mut self) -> bool {
        if self.phase != Phase::Draining
            || !self.conns.is_empty()
            || !self.handoff.is_idle()
            || self.handoff_in_transit(Instant::now())
        {
            return false;
        }
        let c = self.handoff.counts();
        info!(
            handed = c.handed,
            kept = c.kept,
            closed = c.closed,
            "drained, exiting"
        );
        true
    }

    fn expire_timers(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            // `corral fault panic` with no client data coming: the next timer panics.
            crate::fault::panic_if_armed("a timer dispatch");
            match t {
                Timer::Idle(token) => self.check_idle(token, now),
                Timer::Handler(token) => {
                    let Some(c) = self.conns.get_mut(token) else {
                        continue;
                    };
                    c.timer_queued = None;
                    match c.timer_at {
                        Some(at) if at <= now => {
                            c.timer_at = None;
                            self.with_handler(token, |h, io| h.on_timer(io));
                        }
                        Some(at) => {
                            c.timer_queued = Some(at);
                            self.timers.schedule(at, Timer::Handler(token));
                        }
                        None => {}
                    }
                }
                Timer::Connect(token, attempt) => {
                    let timed_out = self
                        .conns
                        .get(token)
                        .and_then(|c| c.upstream.as_ref())
                        .is_some_and(|u| !u.connected && u.attempt == attempt);
                    if timed_out {
                        self.upstream_failed(token, "connect timed out");
                    }
                }
                Timer::Throttle(token) => {
                    if let Some(c) = self.conns.get_mut(token) {
                        c.throttled = false;
                        c.throttle_armed = false;
                        c.may_read = true;
                        self.drive(token);
                    }
                }
                Timer::AcceptResume => {
                    self.accept_backoff_until = None;
                    if let Err(e) = self.resume_accept() {
                        warn!("cannot resume accepting: {e}");
                    }
                }
                Timer::Heartbeat => {
                    self.heartbeat();
                    self.notices.flush(now);
                    self.timers.schedule(
                        now + self.config.worker.heartbeat_interval.0,
                        Timer::Heartbeat,
                    );
                }
                // The loop checks again after this wake-up.
                Timer::HandoffSettle => self.handoff.settle_armed = false,
                Timer::Header(token) => self.header_timeout(token),
                Timer::FaultEnd => {
                    for note in self.injected.expire(now) {
                        info!("injected fault over: {note}");
                        self.send(ToMaster::FaultOver { note });
                    }
                }
                Timer::DrainDeadline => {
                    if !self.conns.is_empty() {
                        warn!(
                            connections = self.conns.len(),
                            "drain timeout: closing the remaining connections"
                        );
                    }
                    self.handoff_deadline();
                    self.exit = Some(0);
                }
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        match ev.token {
            TOKEN_CHANNEL => {
                self.channel_ready = true;
                self.handoff.writable |= ev.writable;
            }
            TOKEN_SIGNALS => self.signals_ready = true,
            TOKEN_POOL => self.pool_ready = true,
            t if t & TOKEN_LISTENER != 0 && t & TOKEN_CHANNEL == 0 => {
                self.accept_on((t & !TOKEN_LISTENER) as usize)
            }
            t if t & UPSTREAM_BIT != 0 => self.upstream_event(Token(t & !UPSTREAM_BIT), ev),
            t => self.conn_event(Token(t), ev),
        }
    }

    fn other_work(&mut self) {
        if std::mem::take(&mut self.signals_ready) {
            for sig in self.signals.drain() {
                use nix::sys::signal::Signal::*;
                match sig {
                    SIGTERM | SIGINT => {
                        info!("{sig}: stopping now");
                        self.exit = Some(0);
                    }
                    SIGQUIT => self.start_drain("SIGQUIT", IdlePolicy::Close),
                    SIGUSR1 => self.reopen_logs(),
                    _ => {}
                }
            }
        }
        if std::mem::take(&mut self.channel_ready) {
            self.read_channel();
        }
        for id in crate::service::metrics::take_requests() {
            self.send(ToMaster::MetricsRequest { id });
        }
        if std::mem::take(&mut self.pool_ready) {
            for (token, result) in self.pool.completions() {
                let token = Token(token);
                let Some(c) = self.conns.get_mut(token) else {
                    continue;
                };
                c.job_done();
                if result.is::<pool::Panicked>() {
                    // No result to deliver, but a close waiting for it may proceed.
                    c.may_read = true;
                    self.drive(token);
                } else {
                    self.with_handler(token, |h, io| h.on_complete(io, result));
                }
            }
        }
        // Reads cut short by their quantum continue here, after everyone else had a turn.
        for token in std::mem::take(&mut self.ready) {
            self.drive(token);
        }
        // Last, so that every connection that went idle in this iteration travels in
        // the same batches.
        if self.handoff.wants_flush() {
            self.flush_handoff();
        }
        if self.trim.due(self.conns.len(), self.conns.capacity()) {
            self.trim_memory();
        }
    }

    /// Shrinks what grew with the connection count and returns free heap pages.
    fn trim_memory(&mut self) {
        let before = process::self_rss();
        self.compact_timers_now();
        self.timers.shrink();
        self.conns.shrink();
        self.ready.shrink_to_fit();
        self.per_ip.shrink_to_fit();
        self.bufs.truncate(POOL_MAX / 4);
        self.bufs.shrink_to_fit();
        crate::os::memory::trim();
        debug!(
            connections = self.conns.len(),
            trims = self.trim.count,
            rss_before = before,
            rss_after = process::self_rss(),
            "gave memory back"
        );
    }

    fn read_channel(&mut self) {
        // million: a turn's worth, so that a worker adopting thousands of connections
        // still reaches its timers (and heartbeats); the channel is level-triggered.
        for _ in 0..handoff::CHANNEL_TURN {
            let got = match &self.channel {
                Some(ch) => ch.recv_fds::<ToWorker>(),
                None => return,
            };
            match got {
                Ok(Some((msg, fds))) => match msg {
                    ToWorker::Drain { idle } => self.start_drain("master asked", idle),
                    ToWorker::Adopt { conns } => self.adopt(conns, fds),
                    ToWorker::Keep { conns, reason } => self.keep(conns, fds, &reason),
                    ToWorker::Stop => {
                        info!("master asked to stop now");
                        self.exit = Some(0);
                    }
                    ToWorker::ReopenLogs => self.reopen_logs(),
                    ToWorker::Metrics { id, text, last } => {
                        crate::service::metrics::deliver(id, text, last)
                    }
                    ToWorker::Fault { kind } => {
                        if let Some(at) = self.injected.apply(kind) {
                            self.timers.schedule(at, Timer::FaultEnd);
                        }
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    if !matches!(e, ChannelError::Closed) {
                        warn!("master channel failed: {e}");
                    }
                    if let Some(ch) = self.channel.take() {
                        let _ = self.epoll.delete(ch.as_fd());
                    }
                    self.start_drain("master is gone", IdlePolicy::Close);
                    // What waits for the hand-over has nowhere to go now: keep it.
                    if !self.handoff.is_idle() {
                        self.flush_handoff();
                    }
                    return;
                }
            }
        }
    }

    fn reopen_logs(&mut self) {
        if let Err(e) = crate::log::reopen() {
            warn!("cannot reopen the log: {e}");
        }
    }

    fn send(&mut self, msg: ToMaster) {
        if let Some(ch) = &self.channel {
            if let Err(e) = ch.send(&msg) {
                debug!("cannot send {msg:?} to the master: {e}");
            }
        }
    }

    fn heartbeat(&mut self) {
        self.stats.connections = self.conns.len() as u64;
        self.stats.rss = process::self_rss();
        // The log writer thread reports drops itself, once it writes again.
        self.stats.log_dropped = crate::log::dropped();
        self.send(ToMaster::Heartbeat(self.stats));
        self.counters.refresh(&self.conns, Instant::now());
        for part in self.counters.parts() {
            self.send(ToMaster::Counters(part));
        }
    }

    /// Stops accepting, closes what can be closed without loss, and lets the rest
    /// finish until `drain_timeout`.
    fn start_drain(&mut self, why: &str, idle: IdlePolicy) {
        if self.phase == Phase::Draining {
            return;
        }
        self.idle_policy = idle;
        if idle == IdlePolicy::Close {
            crate::service::metrics::set_stopping();
        }
        info!(connections = self.conns.len(), "draining ({why})");
        self.phase = Phase::Draining;
        self.pause_accept();
        // Our copies of the listeners go now: an orphaned worker must not keep the
        // port from a master that restarts, and the master holds its own copies.
        for l in &mut self.listeners {
            l.fd = None;
        }
        self.timers.schedule(
            Instant::now() + self.config.master.drain_timeout.0,
            Timer::DrainDeadline,
        );
        for (k, token) in self.conns.tokens().into_iter().enumerate() {
            self.release_idle(token);
            // million: suspending 18k connections is one long turn.
            if k % handoff::BEAT_EVERY == handoff::BEAT_EVERY - 1 {
                self.beat_if_due();
            }
        }
    }

    /// A draining worker's connection, if it can go now: handed to the new generation
    /// (idle, or suspended by its service), or closed when idle, as the drain's policy
    /// says; otherwise left to finish its next exchange. True if it left.
    fn release_idle(&mut self, token: Token) -> bool {
        match self.idle_policy {
            IdlePolicy::Linger => false,
            IdlePolicy::Close => {
                if !self.conns.get(token).is_some_and(Conn::idle_closable) {
                    return false;
                }
                self.close_as(token, connlog::End::Drain);
                true
            }
            IdlePolicy::Handoff => self.try_move(token),
        }
    }

    /// Runs a handler callback outside of a read (timer, completion), then lets the
    /// connection move whatever it produced.
    fn with_handler(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut dyn crate::service::Handler, &mut crate::service::Io<'_>),
    ) {
        let draining = self.phase == Phase::Draining;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let mut env = Env {
            scratch: &mut self.scratch,
            budget: 0,
            high: 0,
            low: 0,
            inbuf_limit: 0,
            pool: &mut self.bufs,
            stats: &mut self.stats,
            draining,
            jobs: &mut self.jobs,
        };
        c.with_io(&mut env, f);
        c.may_read = true;
        self.drive(token);
    }

    fn pause_accept(&mut self) {
        if !self.accepting {
            return;
        }
        for fd in self.listeners.iter().filter_map(|l| l.fd.as_ref()) {
            let _ = self.epoll.delete(fd.as_fd());
        }
        self.accepting = false;
    }

    fn resume_accept(&mut self) -> io::Result<()> {
        if self.accepting || self.phase != Phase::Running || self.accept_backoff_until.is_some() {
            return Ok(());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let Some(fd) = &l.fd else { continue };
            let interest = Interest {
                exclusive: true,
                ..Interest::READ
            };
            self.epoll
                .add(fd.as_fd(), interest, TOKEN_LISTENER | i as u64)?;
        }
        self.accepting = true;
        Ok(())
    }

    fn accept_on(&mut self, index: usize) {
        let max = self.config.worker.max_connections;
        let mut accepted = 0;
        for _ in 0..ACCEPT_BATCH {
            if !self.accepting {
                return;
            }
            if self.conns.len() >= max {
                self.notices.max_connections(max);
                self.counters.at_limit(index);
                self.pause_accept();
                return;
            }
            let Some(fd) = self.listeners.get(index).and_then(|l| l.fd.as_ref()) else {
                return;
            };
            match net::accept(fd.as_fd()) {
                Ok(a) => {
                    self.counters.accepted(index);
                    let _ = self.add_conn(index, a, None);
                    accepted += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    self.notices.accept_failed(&e, ACCEPT_BACKOFF);
                    self.pause_accept();
                    let until = Instant::now() + ACCEPT_BACKOFF;
                    self.accept_backoff_until = Some(until);
                    self.timers.schedule(until, Timer::AcceptResume);
                    return;
                }
                Err(e) => {
                    debug!("accept() failed: {e}");
                    break;
                }
            }
        }
        if accepted > 0 {
            self.rearm(index);
        }
    }

    /// EPOLLEXCLUSIVE wakes the first waiter in the listener's queue, so the worker
    /// that registered first would take nearly every connection while load is light.
    /// Re-registering after a batch moves this worker to the back of the queue, which
    /// turns the wake-ups into a round robin over the idle workers.
    fn rearm(&mut self, index: usize) {
        let Some(fd) = self.listeners.get(index).and_then(|l| l.fd.as_ref()) else {
            return;
        };
        let interest = Interest {
            exclusive: true,
            ..Interest::READ
        };
        let fd = fd.as_fd();
        if let Err(e) = self
            .epoll
            .delete(fd)
            .and_then(|_| self.epoll.add(fd, interest, TOKEN_LISTENER | index as u64))
        {
            warn!("cannot re-arm listener: {e}");
        }
    }

    /// A connection to serve: just accepted, or `handed` over from another worker
    /// (which read its PROXY header, if any: it is not expected again).
    fn add_conn(
        &mut self,
        listener: usize,
        mut a: net::Accepted,
        handed: Option<&Handed>,
    ) -> Option<Token> {
        let flow = self.listeners[listener].flow;
        let listen = &self.config.listen[listener];
        let header = listen.accepts_proxy() && handed.is_none();
        let log = listen.logs_connections();
        let origin = handed.and_then(|h| h.peer);
        a.peer = origin.map(|o| o.ip()).or(a.peer);
        // With a PROXY header to come, the socket's peer is the balancer: the per-IP
        // limit applies once the header names the client.
        let counted_ip = match a.peer.filter(|_| !header) {
            Some(ip) if flow.max_connections_per_ip > 0 => {
                let n = self.per_ip.entry(ip).or_insert(0);
                if *n as usize >= flow.max_connections_per_ip {
                    self.notices
                        .per_ip(listener as u16, ip, flow.max_connections_per_ip);
                    self.stats.refused += 1;
                    self.counters.per_ip(listener);
                    return None; // dropping the fd closes the connection
                }
                *n += 1;
                true
            }
            _ => false,
        };
        let handler = if header {
            accept_proxy::placeholder()
        } else {
            self.listeners[listener].service.connect(a.peer)
        };
        let now = Instant::now();
        let bucket = (flow.rate > 0).then(|| Box::new(Bucket::new(flow.rate, flow.burst, now)));
        let mut conn = Conn::new(a.fd, a.peer, handler, bucket, now);
        conn.counted_ip = counted_ip;
        conn.listener = listener as u16;
        conn.origin = origin;
        conn.log = log.then(|| connlog::Record::new(now, conn.fd.as_fd()));
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token)?;
        if let Err(e) = self.epoll.add(c.fd.as_fd(), c.registered, token.0) {
            warn!("cannot watch a new connection: {e}");
            self.conns.remove(token);
            return None;
        }
        self.stats.accepted += 1;
        // idle_timeout = 0 means off: no idle timer at all.
        let idle = self.listeners[listener].idle;
        if !idle.is_zero() {
            self.timers.schedule(now + idle, Timer::Idle(token));
        }
        if header {
            self.await_header(token, listener, now);
            return Some(token);
        }
        if self.listeners[listener].service.upstreams().is_some() {
            let header = self.upstream_header(token);
            self.connect_upstream(token, Vec::new(), header, 1);
        }
        Some(token)
    }

    /// Starts connecting a proxied client to the next upstream it has not tried,
    /// carrying over the bytes it already sent; closes it when none is left.
    fn connect_upstream(
        &mut self,
        token: Token,
        mut tried: Vec<usize>,
        carry: Vec<u8>,
        attempt: u32,
    ) {
        let now = Instant::now();
        let Some(listener) = self.conns.get(token).map(|c| usize::from(c.listener)) else {
            return;
        };
        loop {
            let Some(u) = self
                .listeners
                .get_mut(listener)
                .and_then(|l| l.service.upstreams())
            else {
                return self.close(token);
            };
            let timeout = u.connect_timeout();
            let Some((index, addr)) = u.pick(&tried, now) else {
                self.notices.no_upstream(listener as u16, tried.len());
                return self.close_as(token, connlog::End::NoUpstream);
            };
            tried.push(index);
            let started = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM.nonblocking().cloexec(),
                None,
            )
            .and_then(|s| {
                let _ = s.set_nodelay(true);
                match s.connect(&addr.into()) {
                    Ok(()) => Ok(s),
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
                    Err(e) => Err(e),
                }
            });
            let sock = match started {
                Ok(s) => OwnedFd::from(s),
                Err(e) => {
                    u.failed(index, now);
                    self.counters.upstream_failed(listener, index, now);
                    self.notices
                        .upstream_failed(listener as u16, index, addr, &e.to_string());
                    continue;
                }
            };
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            let mut up = Upstream::new(sock, index, addr, tried, attempt);
            up.set_pending(carry);
            if let Err(e) = self
                .epoll
                .add(up.fd.as_fd(), up.registered, token.upstream())
            {
                warn!("cannot watch an upstream socket: {e}");
                return self.close(token);
            }
            c.upstream = Some(Box::new(up));
            self.timers
                .schedule(now + timeout, Timer::Connect(token, attempt));
            return;
        }
    }

    /// The current connect attempt failed: mark the upstream down for a while and try
    /// the next one.
    fn upstream_failed(&mut self, token: Token, why: &str) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Some(mut up) = c.upstream.take() else {
            return;
        };
        let listener = usize::from(c.listener);
        self.notices
            .upstream_failed(c.listener, up.index, up.addr, why);
        let _ = self.epoll.delete(up.fd.as_fd());
        let carry = up.take_pending();
        let tried = std::mem::take(&mut up.tried);
        if let Some(u) = self
            .listeners
            .get_mut(listener)
            .and_then(|l| l.service.upstreams())
        {
            u.failed(up.index, now);
        }
        self.counters.upstream_failed(listener, up.index, now);
        // A new attempt number, so the old attempt's connect timer finds a mismatch.
        self.connect_upstream(token, tried, carry, up.attempt + 1);
    }

    fn upstream_event(&mut self, token: Token, ev: Event) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let listener = usize::from(c.listener);
        let Some(up) = c.upstream.as_mut() else {
            return;
        };
        if !up.connected {
            let error = match socket2::SockRef::from(&up.fd).take_error() {
                Ok(Some(e)) | Err(e) => Some(e.to_string()),
                Ok(None) if ev.writable => None,
                Ok(None) => Some("connection closed".into()),
            };
            if let Some(why) = error {
                return self.upstream_failed(token, &why);
            }
            up.connected = true;
            up.may_read = true;
            let index = up.index;
            // What the client sent while we connected goes to this upstream now.
            let carried = up.pending() as u64;
            // Zero-copy forwarding where the listener asks for it and no rate limit
            // needs to see the bytes; without pipes (EMFILE) it copies as usual.
            let splice = self
                .config
                .listen
                .get(listener)
                .and_then(|l| l.splice)
                .unwrap_or(false);
            if splice && c.bucket.is_none() {
                match conn::Pipes::new() {
                    Ok(p) => up.pipes = Some(Box::new(p)),
                    Err(e) => debug!("no pipes for splice ({e}); copying instead"),
                }
            }
            if let Some(u) = self
                .listeners
                .get_mut(listener)
                .and_then(|l| l.service.upstreams())
            {
                u.connected(index);
            }
            self.counters.upstream_connected(listener, index);
            self.counters.upstream_bytes(listener, index, carried, 0);
        }
        let Some(up) = self.conns.get_mut(token).and_then(|c| c.upstream.as_mut()) else {
            return;
        };
        if ev.readable || ev.hangup {
            up.may_read = true;
        }
        up.peer_hup |= ev.hangup;
        self.drive(token);
    }

    fn check_idle(&mut self, token: Token, now: Instant) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let Some(idle) = self.listeners.get(usize::from(c.listener)).map(|l| l.idle) else {
            return;
        };
        let due = c.last_active + idle;
        if due <= now {
            debug!(peer = ?c.peer, "idle timeout");
            self.close_as(token, connlog::End::IdleTimeout);
        } else {
            self.timers.schedule(due, Timer::Idle(token));
        }
    }

    fn conn_event(&mut self, token: Token, ev: Event) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if ev.readable || ev.hangup {
            c.may_read = true;
        }
        c.peer_hup |= ev.hangup;
        self.drive(token);
    }

    /// Reads (within the quantum and the water marks), lets the handler work, writes,
    /// and updates epoll interest; closes the connection when it is done.
    fn drive(&mut self, token: Token) {
        let flow = &self.config.flow;
        let draining = self.phase == Phase::Draining;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.awaiting_header {
            return self.read_header(token);
        }
        let before = (self.stats.bytes_in, self.stats.bytes_out);
        let mut env = Env {
            scratch: &mut self.scratch,
            budget: flow.read_quantum.0 as usize,
            high: flow.write_high_water.0 as usize,
            low: flow.write_low_water.0 as usize,
            inbuf_limit: (flow.read_quantum.0 as usize).max(64 << 10) * 4,
            pool: &mut self.bufs,
            stats: &mut self.stats,
            draining,
            jobs: &mut self.jobs,
        };
        let outcome = if c.upstream.is_some() {
            c.pump_proxy(&mut env)
        } else {
            c.pump(&mut env)
        };
        let budget = env.budget;
        if let Some(up) = c.upstream.as_ref().filter(|u| u.connected) {
            let (i, o) = (
                self.stats.bytes_in - before.0,
                self.stats.bytes_out - before.1,
            );
            self.counters
                .upstream_bytes(usize::from(c.listener), up.index, i, o);
        }
        let now = Instant::now();
        c.log_progress(
            self.stats.bytes_in - before.0,
            self.stats.bytes_out - before.1,
        );
        match outcome {
            conn::Outcome::Close(reason) => {
                if let Some(reason) = reason {
                    debug!(peer = ?c.peer, "closing: {reason}");
                    c.log_end(connlog::End::Error(reason));
                }
                // Jobs of a connection closed by an error have no one to report to;
                // left here they would be submitted under the next connection's token.
                self.jobs.clear();
                self.close(token);
                return;
            }
            conn::Outcome::Open { active } => {
                if active {
                    c.last_active = now;
                }
            }
        }
        for job in self.jobs.drain(..) {
            if let Err(e) = self.pool.submit(token.0, job) {
                warn!("cannot run a blocking job: {e}");
            }
        }
        if let Some(at) = c.timer_at {
            if c.timer_queued.is_none_or(|q| at < q) {
                c.timer_queued = Some(at);
                self.timers.schedule(at, Timer::Handler(token));
            }
        }
        // Every exchange ends at a point where the connection may be able to move.
        if draining && self.release_idle(token) {
            return;
        }
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        // Reads cut short (by the quantum, or a proxy's bounded passes) continue in
        // step 4: with edge-triggered epoll no new event would announce them.
        if c.more_to_read() && (budget == 0 || c.upstream.is_some()) {
            self.ready.push(token);
        }
        if c.throttled && !c.throttle_armed {
            c.throttle_armed = true;
            self.counters.throttled(usize::from(c.listener));
            let at = c.readmit_at(now);
            self.timers.schedule(at, Timer::Throttle(token));
        }
        if let Some(up) = &mut c.upstream {
            let want = up.interest();
            if want != up.registered {
                if let Err(e) = self.epoll.modify(up.fd.as_fd(), want, token.upstream()) {
                    debug!("epoll modify of an upstream failed: {e}");
                    self.close(token);
                    return;
                }
                up.registered = want;
            }
        }
        let want = c.interest();
        if want != c.registered {
            if let Err(e) = self.epoll.modify(c.fd.as_fd(), want, token.0) {
                debug!("epoll modify failed: {e}");
                self.close(token);
                return;
            }
            c.registered = want;
        }
        if POOL_MAX < self.bufs.len() {
            self.bufs.truncate(POOL_MAX);
        }
    }

    /// Rebuilds the timer heap without the entries of closed connections once they
    /// outnumber the live ones (amortised O(1) per close).
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.conns.len() + 4096 {
            return;
        }
        self.compact_timers_now();
    }

    fn compact_timers_now(&mut self) {
        let conns = &self.conns;
        self.timers.retain(|t| match t {
            Timer::Idle(k) | Timer::Throttle(k) | Timer::Handler(k) | Timer::Connect(k, _) => {
                conns.get(*k).is_some()
            }
            Timer::AcceptResume
            | Timer::Heartbeat
            | Timer::DrainDeadline
            | Timer::HandoffSettle
            | Timer::FaultEnd => true,
            Timer::Header(k) => conns.get(*k).is_some(),
        });
    }

    fn close(&mut self, token: Token) {
        if let Some(c) = self.detach(token) {
            c.recycle(&mut self.bufs);
        }
    }

    /// Takes a connection out of the worker (its upstream, per-IP count, timers) and
    /// returns it: to be closed, or its socket handed over.
    fn detach(&mut self, token: Token) -> Option<Conn> {
        let mut conn = None;
        if let Some(mut c) = self.conns.remove(token) {
            self.log_closed(&mut c);
            if let Some(up) = c.upstream.as_ref().filter(|u| u.connected) {
                let index = up.index;
                let service = self.listeners.get_mut(usize::from(c.listener));
                if let Some(u) = service.and_then(|l| l.service.upstreams()) {
                    u.released(index);
                }
            }
            if let (true, Some(ip)) = (c.counted_ip, c.peer) {
                if let Some(n) = self.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
            conn = Some(c);
            self.compact_timers();
        }
        if self.conns.len() * 10 <= self.config.worker.max_connections * 9 {
            if let Err(e) = self.resume_accept() {
                warn!("cannot resume accepting: {e}");
            }
        }
        conn
    }
}
