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

mod accept;
mod accept_proxy;
mod borrowed;
pub mod bucket;
pub(crate) mod bus;
mod conn;
mod connlog;
mod deadlines;
mod drain;
mod drive;
mod events;
mod fault;
#[cfg(test)]
mod kit_tests;
#[cfg(test)]
mod kit_tls_tests;
mod master_link;
mod moves;
pub mod orphan;
mod pool;
mod proxy_connect;
mod push;
#[cfg(test)]
mod push_tests;
mod ratelog;
mod slab;
pub mod stats;
#[cfg(test)]
mod testkit;
pub mod timer;
mod tls;
mod token;
mod trim;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::channel::{Channel, IdlePolicy, Stats, ToMaster};
use crate::config::{Config, ListenFlow};
use crate::os::epoll::{Epoll, Event, Interest};
use crate::os::process;
use crate::os::signals::SignalReader;
use crate::service::Service;

use pool::Pool;
use slab::Slab;
use timer::Timers;
use token::{TOKEN_CHANNEL, TOKEN_LISTENER, TOKEN_POOL, TOKEN_SIGNALS, UPSTREAM_BIT};

// For the proxy's connection logic, which lives with the proxy service.
pub(crate) use conn::{Flags, Pipes, Upstream};
pub(crate) use connlog::End;
pub(crate) use deadlines::Timer;
pub(crate) use push::publisher_id;
pub(crate) use token::Token;

/// Exit code by which a worker tells the master "fatal configuration problem: do not
/// respawn me".
pub const EXIT_FATAL: i32 = 2;

/// Most events handled per epoll_wait.
const EVENTS: usize = 512;
/// Output buffers kept for reuse (each at most `conn::POOLED_CAPACITY`): a few MiB at
/// most stay cached after a burst.
const POOL_MAX: usize = 64;

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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    Draining,
}

pub(crate) struct Listener {
    /// None once draining: the socket is closed, the service stays for the
    /// connections still open (a proxy may still need to fail over).
    fd: Option<OwnedFd>,
    pub(crate) service: Box<dyn Service>,
    flow: ListenFlow,
    /// Its idle timeout; zero = none.
    idle: Duration,
}

pub(crate) struct Worker {
    pub(crate) config: Config,
    pub(crate) epoll: Epoll,
    events: Vec<Event>,
    pub(crate) listeners: Vec<Listener>,
    /// Other slots' reuseport sockets the master lent us while their workers stall.
    borrowed: borrowed::Borrowed,
    /// Whether and when it accepts, and its per-IP counts.
    admit: accept::Admission,
    /// The channel to the master.
    link: master_link::Link,
    signals: SignalReader,
    signals_ready: bool,
    pub(crate) conns: Slab,
    pub(crate) timers: Timers<Timer>,
    /// Connections whose read was cut short by the quantum: resumed in step 4.
    ready: Vec<Token>,
    scratch: Vec<u8>,
    /// Output buffers for reuse, so idle connections hold none.
    bufs: Vec<Vec<u8>>,
    /// What the heartbeat reports: worker-wide stats, per-listener counters.
    tally: stats::Tally,
    phase: Phase,
    exit: Option<i32>,
    /// What to do with idle connections while draining.
    idle_policy: IdlePolicy,
    /// Idle connections on their way to the next generation.
    handoff: moves::Handoff,
    /// Handlers' blocking jobs and the thread pool that runs them.
    blocking: pool::Blocking,
    /// Rate-limited log lines for events clients can repeat (rejections, failures).
    pub(crate) notices: events::Events,
    /// Faults injected by `corral fault` that are still in progress.
    injected: fault::Injected,
    /// When to give memory back after a peak of connections left.
    trim: trim::Trim,
    /// Writes to other connections, topics, the workers' bus (`push.rs`, `bus.rs`).
    push: push::Push,
    /// The loop's clock: read before the timers and again when epoll_wait returns,
    /// so that the events of one batch share one clock read.
    now: Instant,
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
            .map(|(fd, l)| {
                // Config checks refuse unknown names at every load: only a program
                // whose registry differs from its master's could get here.
                let service = crate::service::registry::make(l).ok_or_else(|| {
                    io::Error::other(format!("no service named `{}` in this program", l.service))
                })?;
                Ok(Listener {
                    fd: Some(fd),
                    service,
                    flow: l.flow(&init.config.flow),
                    idle: l.idle_timeout(&init.config.worker),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let scratch = vec![0u8; init.config.flow.read_quantum.0.min(1 << 20) as usize];
        let notices = events::Events::new(
            init.config
                .listen
                .iter()
                .map(|l| l.address.to_string())
                .collect(),
        );
        let counters = crate::channel::Counters::new(&init.config);
        let mut w = Worker {
            config: init.config,
            epoll,
            events: Vec::with_capacity(EVENTS),
            listeners,
            borrowed: borrowed::Borrowed::default(),
            admit: accept::Admission::default(),
            link: master_link::Link {
                channel: Some(init.channel),
                ready: false,
            },
            signals: init.signals,
            signals_ready: false,
            conns: Slab::default(),
            timers: Timers::default(),
            ready: Vec::new(),
            scratch,
            bufs: Vec::new(),
            tally: stats::Tally {
                stats: Stats::default(),
                counters,
            },
            phase: Phase::Running,
            exit: None,
            idle_policy: IdlePolicy::Close,
            handoff: moves::Handoff::default(),
            blocking: pool::Blocking {
                pool,
                ready: false,
                jobs: Vec::new(),
            },
            notices,
            injected: fault::Injected::default(),
            trim: trim::Trim::default(),
            push: push::Push::default(),
            now: Instant::now(),
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
            self.now = now;
            self.expire_timers(now);
            if let Some(code) = self.exit {
                return code;
            }
            if self.drained_out() {
                return 0;
            }
            // 2. epoll, bounded by the next timer; no wait while reads are left over
            let timeout = if self.ready.is_empty() && self.push.idle() {
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
            self.now = Instant::now();
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

    fn dispatch(&mut self, ev: Event) {
        // A client connection's event, nearly every event under load: one test.
        if ev.token & (TOKEN_CHANNEL | TOKEN_LISTENER | UPSTREAM_BIT) == 0 {
            return self.conn_event(Token(ev.token), ev);
        }
        match ev.token {
            TOKEN_CHANNEL => {
                self.link.ready = true;
                self.handoff.writable |= ev.writable;
            }
            TOKEN_SIGNALS => self.signals_ready = true,
            TOKEN_POOL => self.blocking.ready = true,
            t if t & bus::TOKEN_BUS == bus::TOKEN_BUS => self.bus_event(t, ev),
            t if t & moves::TOKEN_LANE == moves::TOKEN_LANE => self.lane_event(t, ev),
            t if t & TOKEN_LISTENER != 0 && t & TOKEN_CHANNEL == 0 => {
                if t & token::BORROWED_BIT != 0 {
                    self.accept_borrowed((t & !(TOKEN_LISTENER | token::BORROWED_BIT)) as usize)
                } else {
                    self.accept_on((t & !TOKEN_LISTENER) as usize)
                }
            }
            t if t & UPSTREAM_BIT != 0 => self.upstream_event(Token(t & !UPSTREAM_BIT), ev),
            t => self.conn_event(Token(t), ev),
        }
    }

    fn other_work(&mut self) {
        if std::mem::take(&mut self.signals_ready) {
            for sig in self.signals.drain() {
                use crate::os::types::Signal::*;
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
        if std::mem::take(&mut self.link.ready) {
            self.read_channel();
        }
        if self.handoff.lanes.ready {
            self.run_lanes();
        }
        for id in crate::service::metrics::take_requests() {
            self.send(ToMaster::MetricsRequest { id });
        }
        if std::mem::take(&mut self.blocking.ready) {
            for (token, result) in self.blocking.pool.completions() {
                let token = Token(token);
                let Some(c) = self.conns.get_mut(token) else {
                    continue;
                };
                c.job_done();
                if result.is::<pool::Panicked>() {
                    // No result to deliver, but a close waiting for it may proceed.
                    c.flags.set(Flags::MAY_READ, true);
                    self.drive(token);
                } else {
                    self.with_handler(token, |h, io| {
                        if !crate::service::complete(h.as_any_mut(), io, result) {
                            tracing::warn!(
                                "a blocking job's result was for another handler type: dropped"
                            );
                        }
                    });
                }
            }
        }
        // What handlers asked of other connections and topics, and what the bus brought.
        self.run_push();
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
}
