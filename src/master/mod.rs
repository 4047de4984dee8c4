//! The master: a single-threaded supervisor that owns the listeners, forks workers,
//! and turns signals and control requests into one `Command` handled in one place.
//!
//! Its state is one enum (`State`) whose transitions all live in this file. It never
//! runs service code, never touches a client socket and never starts a thread (it
//! forks). Every step that can fail is logged with what failed and what the master did
//! about it; nothing in here panics on a runtime path, because the master's crash is
//! everyone's crash.

pub mod control;
pub mod faults;
pub mod generations;
mod handoff;
mod inject;
mod metrics;
pub mod pidfile;
mod pressure;
mod privs;
mod recycle;
mod rolling;
pub mod sockets;
pub mod table;
pub mod upgrade;
mod xfer;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::channel::{Channel, ChannelError, IdlePolicy, ToMaster, ToWorker};
use crate::config::Config;
use crate::os::process::{self, ExitReason, Forked};
use crate::os::signals::{self, SignalReader, MASTER_SIGNALS};
use crate::os::{fd, net, SysError};
use crate::worker::{self, WorkerInit, EXIT_FATAL};

use control::{Client, Request, Response};
use pidfile::PidFile;
use pressure::{FdReserve, LogOnce};
use sockets::Listener;
use table::{Slot, Worker, WorkerState, WorkerStatus};
use upgrade::{Report, Reporter, Upgrade};

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    PidFile(#[from] pidfile::PidFileError),
    #[error("cannot resolve the config path {path}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workers failed to start: {0}")]
    Startup(String),
}

/// Everything that makes the master act, from signals or the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// SIGHUP / `-s reload`: re-read the config, start a new generation, drain the old.
    Reload,
    /// SIGQUIT / `-s quit`: drain everything, then exit.
    GracefulStop,
    /// SIGTERM, SIGINT / `-s stop`: close now, kill stragglers after `stop_timeout`.
    FastStop,
    /// SIGUSR1 / `-s reopen`: reopen log files in the master and every worker.
    ReopenLogs,
    /// SIGWINCH: drain all workers but keep the master (and the listeners).
    StopWorkers,
    /// SIGUSR2: binary upgrade.
    Upgrade,
    /// SIGCHLD: reap.
    Reap,
    /// `corral status`: report (after the rest of the batch, so it shows its effect).
    Status,
    /// `corral status --prometheus`: the metrics text (after the rest of the batch).
    Metrics,
    /// `corral fault`: inject a fault (each waiter's request is in
    /// `Master::fault_requests`, so that commands stay plain values).
    Fault,
}

/// A command and the control client waiting for its outcome (none for a signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub command: Command,
    pub waiter: Option<u64>,
}

impl Job {
    fn signal(command: Command) -> Job {
        Job {
            command,
            waiter: None,
        }
    }

    /// What a control request asks for.
    fn request(req: Request, ticket: u64) -> Job {
        let command = match req {
            Request::Reload => Command::Reload,
            Request::Quit => Command::GracefulStop,
            Request::Stop => Command::FastStop,
            Request::Reopen => Command::ReopenLogs,
            Request::Status => Command::Status,
            Request::Prometheus => Command::Metrics,
            Request::Upgrade => Command::Upgrade,
            Request::Fault(_) => Command::Fault,
        };
        Job {
            command,
            waiter: Some(ticket),
        }
    }
}

impl Command {
    fn from_signal(sig: Signal) -> Option<Command> {
        Some(match sig {
            Signal::SIGHUP => Command::Reload,
            Signal::SIGQUIT => Command::GracefulStop,
            Signal::SIGTERM | Signal::SIGINT => Command::FastStop,
            Signal::SIGUSR1 => Command::ReopenLogs,
            Signal::SIGWINCH => Command::StopWorkers,
            Signal::SIGUSR2 => Command::Upgrade,
            Signal::SIGCHLD => Command::Reap,
            _ => return None,
        })
    }

    /// Handling order within one loop iteration, nginx's: reap first, then the most
    /// drastic request, so a stop is never delayed behind a reload.
    fn priority(self) -> u8 {
        match self {
            Command::Reap => 0,
            Command::FastStop => 1,
            Command::GracefulStop => 2,
            Command::Reload => 3,
            Command::Upgrade => 4,
            Command::StopWorkers => 5,
            Command::ReopenLogs => 6,
            Command::Status => 7,
            Command::Metrics => 7,
            Command::Fault => 8,
        }
    }
}

/// A reload in flight: the new generation is starting.
struct Reload {
    generation: u64,
    config: Config,
    listeners: Vec<Listener>,
    deadline: Instant,
    started: Instant,
    /// Control clients waiting for the outcome (indices into `Master::clients` are not
    /// stable, so clients are marked by a ticket instead).
    waiters: Vec<u64>,
    /// `reload_surge`: slots are replaced a few at a time.
    rolling: Option<rolling::Roll>,
}

/// The master's state; all transitions are in this file.
enum State {
    /// The first generation is starting; a failure here is fatal.
    Starting { deadline: Instant },
    /// Serving; nothing in flight.
    Running,
    /// A new generation is starting; the current one keeps serving.
    Reloading(Box<Reload>),
    /// A new master (binary upgrade) is starting; we keep serving until it reports
    /// ready, and roll back if it does not.
    Upgrading(Box<Upgrade>),
    /// Shutting down; exit once no worker is left, kill what remains at the deadline.
    Stopping { graceful: bool, deadline: Instant },
}

/// How the master was launched.
pub struct StartOptions {
    /// The binary to exec on upgrade (the path we were started from).
    pub binary: PathBuf,
    /// Who waits to hear that we serve: an old master (upgrade) or the daemon launcher.
    pub reporter: Option<Reporter>,
    /// Started by an old master's upgrade: take over its control socket.
    pub upgraded: bool,
}

/// How long a new generation may take to report ready before the reload is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker is recycled for its memory only after this many heartbeats of life.
const RECYCLE_MIN_HEARTBEATS: u32 = 5;
/// Grace between the watchdog's SIGABRT (for a core dump) and its SIGKILL.
const WATCHDOG_GRACE: Duration = Duration::from_secs(2);
/// How long after a reload `max_old_generations` is enforced: time for old workers
/// with no connection left to exit, so they are not counted.
const OLD_GENERATIONS_GRACE: Duration = Duration::from_secs(1);
/// How often a stopping master looks whether the old master of an upgrade is gone.
const PREDECESSOR_POLL: Duration = Duration::from_millis(50);
/// Grace between a drain/stop deadline's SIGKILL and giving up on a worker.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// A draining worker ends itself at `drain_timeout`; the master's SIGKILL is the
/// backstop, this much later, so a worker that is exiting on time is not shot.
const DRAIN_BACKSTOP: Duration = Duration::from_millis(500);

/// The running master.
pub struct Master {
    config: Config,
    generation: u64,
    listeners: Vec<Listener>,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    /// None only inside a freshly forked child, which drops it at once.
    signals: Option<SignalReader>,
    control: Option<control::Server>,
    clients: Vec<(u64, Client)>,
    next_ticket: u64,
    pid_file: Option<PidFile>,
    state: State,
    /// A reload asked for while another was in flight runs when it ends (reload
    /// storms coalesce into at most one queued reload).
    reload_queued: Vec<u64>,
    queued_reload: bool,
    /// SIGWINCH: workers were stopped on purpose; do not refill their slots.
    workers_parked: bool,
    /// Control clients waiting for a stop to finish.
    stop_waiters: Vec<u64>,
    /// Exit code once stopped: non-zero when the master gave up (startup failed).
    exit_code: i32,
    /// Round-robin position for handing over connections.
    handoff_rr: usize,
    /// The binary to exec on upgrade.
    binary: PathBuf,
    /// Told once we serve (or fail to).
    reporter: Option<Reporter>,
    /// A new master took over: our pid file is `.oldbin` and the control socket path
    /// is no longer ours to remove.
    handed_over: bool,
    /// As PID 1 of a pid namespace, the master we handed over to: we stay as its init.
    successor: Option<upgrade::Successor>,
    /// The old master of the upgrade that started us, while it still drains: a stop
    /// waits for it (see `upgrade::Predecessor`).
    predecessor: Option<upgrade::Predecessor>,
    /// When to enforce `max_old_generations` after the last reload.
    old_generations_check: Option<Instant>,
    /// Upgrade requests waiting behind a reload, answered when it ends.
    upgrade_refused_waiters: Vec<u64>,
    /// `WATCHDOG=1` period when systemd's watchdog is on, and the next one due.
    sd_watchdog: Option<(Duration, Instant)>,
    /// Fds given back right before a fork, so a respawn works at the fd limit.
    reserve: FdReserve,
    /// Most control clients at once, from `RLIMIT_NOFILE`.
    client_cap: usize,
    /// The control socket stays out of the poll set until then (flood or EMFILE).
    accept_paused_until: Option<Instant>,
    log_flood: LogOnce,
    log_exhausted: LogOnce,
    log_reserve: LogOnce,
    /// `corral fault` requests of this batch, by ticket, with the requester's uid.
    fault_requests: Vec<(u64, crate::fault::kind::FaultRequest, u32)>,
    /// Injected faults in flight and master-side faults armed.
    faults: faults::Faults,
    /// Counters for the metrics service and `status --prometheus`.
    metrics: metrics::Metrics,
    /// The channel to the other master of a binary upgrade: the new one (made for
    /// the upgrade in flight, used once it is committed) or the old one (that
    /// started us, while it still drains).
    xfer: xfer::Links,
    /// What became of each draining generation's connections.
    gens: generations::Generations,
}

impl Master {
    /// Binds the listeners, writes the pid file, opens the control socket and forks
    /// the first generation.
    pub fn start(config: Config, mut opts: StartOptions) -> Result<Master, MasterError> {
        let reporter = opts.reporter.take();
        match Master::try_start(config, opts, reporter) {
            Ok(m) => Ok(m),
            Err((e, reporter)) => {
                if let Some(r) = reporter {
                    r.failed(&e.to_string());
                }
                Err(e)
            }
        }
    }

    /// `start`, handing the reporter back on failure so the caller can tell whoever
    /// waits for it why.
    fn try_start(
        mut config: Config,
        opts: StartOptions,
        reporter: Option<Reporter>,
    ) -> Result<Master, (MasterError, Option<Reporter>)> {
        match Master::open(&mut config, &opts) {
            Ok((signals, listeners, pid_file, control)) => {
                let mut master = Master::new(
                    config, opts, reporter, signals, listeners, pid_file, control,
                );
                let n = master.slots.len();
                for slot in 0..n {
                    if let Err(e) = master.spawn(slot, 1) {
                        let reporter = master.reporter.take();
                        master.shutdown_now();
                        return Err((e.into(), reporter));
                    }
                }
                Ok(master)
            }
            Err(e) => Err((e, reporter)),
        }
    }

    /// Everything the master needs from the system before it forks anything.
    #[allow(clippy::type_complexity)]
    fn open(
        config: &mut Config,
        opts: &StartOptions,
    ) -> Result<(SignalReader, Vec<Listener>, PidFile, control::Server), MasterError> {
        // Absolute, so that a daemon's chdir or a new master's exec keep finding it.
        config.source =
            std::path::absolute(&config.source).map_err(|source| MasterError::ConfigPath {
                path: config.source.clone(),
                source,
            })?;
        let signals = SignalReader::new(MASTER_SIGNALS)?;
        match crate::os::privs::raise_nofile() {
            Ok((soft, hard)) if soft < hard => {
                info!("RLIMIT_NOFILE: soft limit raised from {soft} to the hard limit {hard}")
            }
            Ok((_, hard)) => info!("RLIMIT_NOFILE: soft limit already at the hard limit {hard}"),
            Err(e) => warn!("{e}"),
        }
        privs::give_log_file(config);
        let mut inherited = sockets::take_inherited();
        for s in &mut inherited {
            s.from_corral = opts.upgraded;
        }
        let listeners = sockets::open_all(config, &[], &mut inherited)?;
        sockets::steer(config, &listeners)?;
        let pid_file = PidFile::create(&config.master.pid_file, &config.source)?;
        let control = control::Server::bind(&config.master.control_socket_path(), opts.upgraded)?;
        for l in listeners.iter().filter(|l| l.slot.unwrap_or(0) == 0) {
            let sockets = listeners.iter().filter(|o| o.addr == l.addr).count();
            info!(address = %l.addr, sockets, "listening");
        }
        Ok((signals, listeners, pid_file, control))
    }

    fn new(
        config: Config,
        opts: StartOptions,
        reporter: Option<Reporter>,
        signals: SignalReader,
        listeners: Vec<Listener>,
        pid_file: PidFile,
        control: control::Server,
    ) -> Master {
        let n = config.master.workers.count();
        let links = xfer::Links::inherited();
        let predecessor = upgrade::Predecessor::from_env();
        Master {
            config,
            generation: 1,
            listeners,
            workers: Vec::new(),
            slots: vec![Slot::default(); n],
            signals: Some(signals),
            control: Some(control),
            clients: Vec::new(),
            next_ticket: 0,
            pid_file: Some(pid_file),
            state: State::Starting {
                deadline: Instant::now() + START_TIMEOUT,
            },
            reload_queued: Vec::new(),
            queued_reload: false,
            workers_parked: false,
            stop_waiters: Vec::new(),
            exit_code: 0,
            handoff_rr: 0,
            binary: opts.binary,
            reporter,
            handed_over: false,
            successor: None,
            predecessor,
            old_generations_check: None,
            upgrade_refused_waiters: Vec::new(),
            sd_watchdog: crate::notify::watchdog_interval().map(|d| (d, Instant::now())),
            reserve: FdReserve::new(pressure::RESERVE_FDS),
            client_cap: pressure::client_cap(process::nofile_limit().unwrap_or(1024)),
            accept_paused_until: None,
            log_flood: LogOnce::new(pressure::LOG_EVERY),
            log_exhausted: LogOnce::new(pressure::LOG_EVERY),
            log_reserve: LogOnce::new(pressure::LOG_EVERY),
            fault_requests: Vec::new(),
            faults: faults::Faults::default(),
            metrics: metrics::Metrics::from_env(),
            xfer: links,
            gens: generations::Generations::default(),
        }
    }

    /// Runs until the master is told to stop and every worker is gone. Returns the
    /// process exit code.
    pub fn run(&mut self) -> i32 {
        // Children that exited before our signalfd existed sent a SIGCHLD nobody
        // read: as a container's PID 1 we inherit such zombies from whatever ran
        // before the exec.
        self.reap();
        let code = loop {
            let commands = self.wait();
            self.handle(commands);
            self.tick(Instant::now());
            if let Some(code) = self.finished() {
                break code;
            }
        };
        self.cleanup();
        code
    }

    /// Step 1 of the loop: poll signals, worker channels and control clients until
    /// something happens or the nearest deadline; returns what to do. Control
    /// requests are only collected here, never acted on: `handle` orders them with
    /// the signals of the same batch.
    fn wait(&mut self) -> Vec<Job> {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .map(|d| {
                let ms = d.as_micros().div_ceil(1000).min(60_000) as u16;
                PollTimeout::from(ms)
            })
            .unwrap_or(PollTimeout::NONE);
        let mut ready_workers = Vec::new();
        let mut ready_clients = Vec::new();
        let upgrade_ready;
        let upgrade_gone;
        let mut xfer_ready = Vec::new();
        let (sig_ready, ctl_ready) = {
            let mut fds: Vec<PollFd<'_>> =
                Vec::with_capacity(2 + self.workers.len() + self.clients.len());
            if let Some(s) = &self.signals {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            let ctl_index = fds.len();
            let accepting = self.accept_paused_until.is_none();
            if let Some(c) = self.control.as_ref().filter(|_| accepting) {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            let workers_at = fds.len();
            let in_flight = self.handoff_in_flight();
            for w in &self.workers {
                // A closed channel would report POLLHUP forever until the exit is
                // reaped; SIGCHLD will tell us about that worker instead.
                let mut flags = if w.channel_closed || self.handoff_paused(w, in_flight) {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLIN
                };
                if !w.channel_closed && w.handoff.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(w.channel.as_fd(), flags));
            }
            let upgrade_at = fds.len();
            if let State::Upgrading(u) = &self.state {
                fds.push(PollFd::new(u.pipe_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(u.pidfd.as_fd(), PollFlags::POLLIN));
            }
            let xfer_at = fds.len();
            let links = self.xfer.pollable();
            for (_, fd, write) in &links {
                let mut flags = PollFlags::POLLIN;
                if *write {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(*fd, flags));
            }
            let clients_at = fds.len();
            for (_, c) in &self.clients {
                let mut flags = PollFlags::empty();
                if c.wants_read() {
                    flags |= PollFlags::POLLIN;
                }
                if c.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.fd(), flags));
            }
            if let Err(e) = nix::poll::poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    error!("poll() failed in the master loop: {e}");
                }
                return Vec::new();
            }
            let fired = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            for (k, (side, _, _)) in links.iter().enumerate() {
                if fired(&fds[xfer_at + k]) {
                    xfer_ready.push(*side);
                }
            }
            for (i, p) in fds[workers_at..upgrade_at].iter().enumerate() {
                if fired(p) {
                    ready_workers.push(self.workers[i].pid);
                }
            }
            for (i, p) in fds[clients_at..].iter().enumerate() {
                if fired(p) {
                    let hup = p
                        .revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
                    ready_clients.push((self.clients[i].0, hup));
                }
            }
            let sig = self.signals.is_some() && fired(&fds[0]);
            let ctl = self.control.is_some() && accepting && fired(&fds[ctl_index]);
            upgrade_ready = upgrade_at < xfer_at && fired(&fds[upgrade_at]);
            upgrade_gone = upgrade_at + 1 < xfer_at && fired(&fds[upgrade_at + 1]);
            (sig, ctl)
        };
        let mut commands = Vec::new();
        if sig_ready {
            if let Some(s) = &self.signals {
                for sig in s.drain() {
                    if sig != Signal::SIGCHLD {
                        info!("received {}", signals::name(sig));
                    }
                    let cmd = match Command::from_signal(sig) {
                        // Orchestrators send SIGTERM and wait: let them drain.
                        Some(Command::FastStop)
                            if sig == Signal::SIGTERM && self.config.master.graceful_sigterm =>
                        {
                            Some(Command::GracefulStop)
                        }
                        other => other,
                    };
                    commands.extend(cmd.map(Job::signal));
                }
            }
        }
        for side in xfer_ready {
            self.xfer_read(side);
        }
        for pid in ready_workers {
            self.read_worker(pid);
        }
        for (ticket, hup) in ready_clients {
            commands.extend(self.serve_client(ticket, hup));
        }
        if ctl_ready {
            commands.extend(self.accept_clients());
        }
        // Exit first: a "ready" from a new master that is already dead must not commit.
        if upgrade_gone {
            self.upgrade_child_gone();
        }
        if upgrade_ready {
            self.read_upgrade_report();
        }
        commands
    }

    /// Step 2: act on the batch in one priority order (reap, fast stop, graceful
    /// stop, reload, upgrade, …), each kind once, with all of its waiters: a stop
    /// in the same batch as a reload wins, and the reload's waiters hear why.
    fn handle(&mut self, jobs: Vec<Job>) {
        for (cmd, waiters) in batch(jobs) {
            match cmd {
                Command::Reap => self.reap(),
                Command::FastStop | Command::GracefulStop => {
                    let graceful = cmd == Command::GracefulStop;
                    for &t in &waiters {
                        let how = if graceful { "graceful" } else { "fast" };
                        self.answer(t, true, format!("{how} stop started"));
                    }
                    self.stop_waiters.extend(waiters);
                    self.stop(graceful, IdlePolicy::Close);
                }
                Command::Reload => self.reload(waiters),
                Command::Upgrade => {
                    // One upgrade per batch; a second request finds it in progress.
                    let mut waiters = waiters.into_iter();
                    self.upgrade(waiters.next());
                    for t in waiters {
                        self.upgrade(Some(t));
                    }
                }
                Command::StopWorkers => self.park_workers(),
                Command::ReopenLogs => {
                    let (ok, message) = self
                        .reopen_logs()
                        .map_or_else(|e| (false, e), |m| (true, m));
                    for t in waiters {
                        self.answer(t, ok, message.clone());
                    }
                }
                Command::Fault => {
                    for t in waiters {
                        self.inject(t);
                    }
                }
                Command::Metrics => {
                    let text = self.prometheus();
                    for t in waiters {
                        self.answer(t, true, text.clone());
                    }
                }
                Command::Status => {
                    let resp = self.status();
                    for t in waiters {
                        if let Some((_, c)) = self.clients.iter_mut().find(|(k, _)| *k == t) {
                            c.answer(&resp);
                        }
                    }
                }
            }
        }
    }

    /// Step 3: deadlines — respawns due, drain and stop deadlines, the watchdog, a
    /// reload that takes too long.
    fn tick(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
        self.respawn_due(now);
        self.watchdog(now);
        self.enforce_deadlines(now);
        self.check_progress(now);
        if self.old_generations_check.is_some_and(|t| t <= now) {
            self.old_generations_check = None;
            self.limit_old_generations();
        }
        self.sd_watchdog(now);
        self.metrics_tick(now);
        for (t, outcome) in self.faults.expired(now) {
            self.answer_fault(t, outcome);
        }
        self.flush_clients();
    }

    fn sd_watchdog(&mut self, now: Instant) {
        if let Some((every, due)) = self.sd_watchdog {
            if due <= now {
                crate::notify::watchdog();
                self.sd_watchdog = Some((every, now + every));
            }
        }
    }

    /// The exit code, once the master is done.
    fn finished(&mut self) -> Option<i32> {
        if self.predecessor.as_ref().is_some_and(|p| p.gone()) {
            self.predecessor = None;
        }
        match self.state {
            State::Stopping { deadline, .. } if self.workers.is_empty() => {
                // Connections on their way to the new master leave with it, not us.
                if self.xfer.sending_to_new() && Instant::now() < deadline {
                    return None;
                }
                // Exiting would let systemd SIGKILL the old master's connections.
                if let Some(p) = &self.predecessor {
                    if Instant::now() < deadline {
                        return None;
                    }
                    warn!(
                        pid = p.pid().as_raw(),
                        "exiting while the old master of the last upgrade still drains"
                    );
                }
                Some(self.exit_code)
            }
            _ => None,
        }
    }

    // ----- workers ------------------------------------------------------------------

    /// Forks a worker into `slot` of `generation`, with that generation's listeners.
    fn spawn(&mut self, slot: usize, generation: u64) -> Result<(), SysError> {
        // At the fd limit the channel's socketpair would fail: the reserve makes
        // room for it, and is taken back once the child holds its end.
        self.reserve.release();
        let result = self.fork_worker(slot, generation);
        if !self.reserve.refill() {
            if let Some(n) = self.log_reserve.hit(Instant::now()) {
                warn!(
                    held = self.reserve.held(),
                    "cannot refill the master's fd reserve: the fd limit is reached \
                     ({n} more times since last said)"
                );
            }
        }
        result
    }

    fn fork_worker(&mut self, slot: usize, generation: u64) -> Result<(), SysError> {
        let (master_end, worker_end) = Channel::pair()?;
        let crash = generation == self.generation && self.faults.take_crash_on_start(slot);
        let master = process::pid();
        let forked =
            process::fork(|| format!("spawning worker {slot} of generation {generation}"))?;
        match forked {
            Forked::Parent(pid) => {
                drop(worker_end);
                let now = Instant::now();
                self.workers.push(Worker {
                    slot,
                    generation,
                    pid,
                    channel: master_end,
                    state: WorkerState::Starting,
                    started_at: now,
                    last_heartbeat: now,
                    stats: Default::default(),
                    watchdog_kill: None,
                    recycling: false,
                    channel_closed: false,
                    handoff: Default::default(),
                    limits: recycle::Limits::draw(&self.worker_config(generation).worker),
                });
                if let Some(s) = self.slots.get_mut(slot) {
                    s.respawn_at = None;
                }
                debug!(slot, generation, pid = pid.as_raw(), "worker forked");
                Ok(())
            }
            Forked::Child => {
                drop(master_end);
                if crash {
                    error!("injected fault (corral fault crash-on-start): worker {slot} aborting at start");
                    std::process::abort();
                }
                self.reserve = FdReserve::none();
                // Before any thread exists and before any service code runs; a worker
                // that cannot drop is not run as root instead.
                if let Err(e) = privs::enter_worker(self.worker_config(generation)) {
                    error!("worker {slot}: {e}; not running it with the master's privileges");
                    crate::log::shutdown();
                    process::exit_now(EXIT_FATAL)
                }
                // First after the drop (a uid change clears PR_SET_PDEATHSIG), so that
                // not even a hang during start-up outlives the master.
                worker::orphan::guard(master, self.worker_drain_timeout(generation));
                let code = self.become_worker(slot, generation, worker_end);
                crate::log::shutdown();
                process::exit_now(code)
            }
        }
    }

    /// In the forked child: shed everything that belongs to the master and run the
    /// worker loop. Never returns to the master's code, not even by panic.
    fn become_worker(&mut self, slot: usize, generation: u64, channel: Channel) -> i32 {
        process::set_name("corral-worker");
        if self.config.master.cpu_affinity {
            if let Err(e) = process::pin_to_cpu(slot) {
                warn!("worker {slot}: {e}");
            }
        }
        // Other workers' channels must close here, or a sibling would keep this
        // worker's master end open and it would never see EOF when the master dies.
        self.workers.clear();
        self.clients.clear();
        self.control = None;
        self.signals = None;
        self.pid_file = None;
        self.reporter = None;
        self.xfer = xfer::Links::default();
        if let State::Upgrading(_) = self.state {
            self.state = State::Running;
        }
        let (config, listeners) = match &self.state {
            State::Reloading(r) if r.generation == generation => (r.config.clone(), &r.listeners),
            _ => (self.config.clone(), &self.listeners),
        };
        let fds: Result<Vec<OwnedFd>, _> = sockets::for_slot(listeners, slot)
            .map(|l| l.fd.try_clone())
            .collect();
        self.listeners.clear();
        if let State::Reloading(r) = &mut self.state {
            r.listeners.clear();
        }
        let signals = match signals::become_worker() {
            Ok(s) => s,
            Err(e) => {
                error!("worker {slot}: {e}");
                return EXIT_FATAL;
            }
        };
        let listeners = match fds {
            Ok(fds) => fds,
            Err(e) => {
                error!("worker {slot}: cannot duplicate listeners: {e}");
                return EXIT_FATAL;
            }
        };
        crate::log::become_worker();
        // A panic in service code is logged through tracing (so it reaches the log
        // file), then the worker exits; the master respawns it.
        std::panic::set_hook(Box::new(|info| error!("worker panicked: {info}")));
        let init = WorkerInit {
            slot,
            generation,
            config,
            listeners,
            channel,
            signals,
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(init))).unwrap_or(101)
    }

    /// The config that `generation`'s workers run with.
    fn worker_config(&self, generation: u64) -> &Config {
        match &self.state {
            State::Reloading(r) if r.generation == generation => &r.config,
            _ => &self.config,
        }
    }

    /// The drain timeout that `generation`'s workers run with.
    fn worker_drain_timeout(&self, generation: u64) -> Duration {
        match &self.state {
            State::Reloading(r) if r.generation == generation => r.config.master.drain_timeout.0,
            _ => self.config.master.drain_timeout.0,
        }
    }

    fn worker_index(&self, pid: Pid) -> Option<usize> {
        self.workers.iter().position(|w| w.pid == pid)
    }

    /// Reads every message a worker has sent (hand-overs only while the master holds
    /// few enough fds), and sends what is queued for it.
    fn read_worker(&mut self, pid: Pid) {
        let Some(i) = self.worker_index(pid) else {
            return;
        };
        self.flush_handoff(i);
        loop {
            if self.handoff_paused(&self.workers[i], self.handoff_in_flight()) {
                break;
            }
            match self.workers[i].channel.recv_fds::<ToMaster>() {
                Ok(Some((ToMaster::Handoff { conns }, fds))) => {
                    if conns.len() != fds.len() {
                        warn!(
                            pid = pid.as_raw(),
                            described = conns.len(),
                            fds = fds.len(),
                            "hand-over message with mismatched fds; closing the unmatched"
                        );
                    }
                    self.forward(Some(i), conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::Refused { conns }, fds))) => {
                    self.refused(conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::HandoffDone(counts), _))) => {
                    let w = &self.workers[i];
                    self.gens.counts(w.generation, w.pid.as_raw(), counts);
                    self.handoff_done(i, counts);
                    self.metrics.handoff_done(pid.as_raw(), counts);
                    for (t, o) in self.faults.handed_over(pid, counts.handed) {
                        self.answer_fault(t, o);
                    }
                }
                Ok(Some((msg, _))) => self.worker_message(i, msg),
                Ok(None) => break,
                // EOF: the worker is exiting; SIGCHLD tells the rest.
                Err(ChannelError::Closed) => {
                    self.handoff_channel_closed(i);
                    return;
                }
                Err(e) => {
                    warn!(pid = pid.as_raw(), "bad message from worker: {e}");
                    break;
                }
            }
        }
        self.flush_handoff(i);
    }

    fn worker_message(&mut self, i: usize, msg: ToMaster) {
        let w = &mut self.workers[i];
        match msg {
            ToMaster::Ready => {
                let now = Instant::now();
                w.last_heartbeat = now;
                if w.state == WorkerState::Starting {
                    w.state = WorkerState::Ready;
                    info!(
                        slot = w.slot,
                        pid = w.pid.as_raw(),
                        generation = w.generation,
                        "worker ready"
                    );
                    let (slot, generation, pid) = (w.slot, w.generation, w.pid);
                    if generation == self.generation {
                        for (t, o) in self.faults.ready(slot, generation, pid, now) {
                            self.answer_fault(t, o);
                        }
                    }
                }
            }
            ToMaster::FaultOver { note } => {
                let pid = w.pid;
                info!(
                    pid = pid.as_raw(),
                    "worker survived an injected fault: {note}"
                );
                for (t, o) in self.faults.survived(pid, Instant::now()) {
                    self.answer_fault(t, o);
                }
            }
            ToMaster::Heartbeat(stats) => {
                w.last_heartbeat = Instant::now();
                w.stats = stats;
                self.check_rss(i);
                self.check_recycle();
            }
            ToMaster::Counters(c) => self.metrics.counters(w.pid.as_raw(), c),
            ToMaster::MetricsRequest { id } => self.answer_metrics(i, id),
            ToMaster::Handoff { .. } | ToMaster::Refused { .. } | ToMaster::HandoffDone(_) => {}
        }
    }

    /// Reaps every exited child and decides what each exit means.
    fn reap(&mut self) {
        for (pid, reason) in process::reap_all() {
            // PID 1 reaps its successor too: keep the status for the init shim.
            if let Some(s) = self.successor.as_mut().filter(|s| s.pid == pid) {
                s.exit = Some(reason);
                continue;
            }
            if let State::Upgrading(u) = &self.state {
                if u.child == pid {
                    self.rollback_upgrade(format!("the new master exited with {reason}"));
                    continue;
                }
            }
            let Some(i) = self.worker_index(pid) else {
                debug!(pid = pid.as_raw(), %reason, "reaped a child that is not a worker");
                continue;
            };
            let w = self.workers.swap_remove(i);
            let generation = w.generation;
            // Killed, or ended at its drain deadline: what it still served is closed.
            let cut = match w.state {
                WorkerState::Draining { deadline } => {
                    reason != ExitReason::Code(0) || Instant::now() + DRAIN_BACKSTOP >= deadline
                }
                WorkerState::Stopping => true,
                _ => false,
            };
            if cut {
                self.gens.closed(generation, w.stats.connections);
            }
            self.worker_exited(w, reason);
            if !self.workers.iter().any(|o| o.generation == generation) {
                self.gens.gone(generation, Instant::now());
            }
        }
    }

    fn worker_exited(&mut self, w: Worker, reason: ExitReason) {
        self.retire_worker(&w);
        let now = Instant::now();
        // Killed while draining, its clients are as lost as in any crash.
        let drained =
            matches!(w.state, WorkerState::Draining { .. }) && reason == ExitReason::Code(0);
        for (t, o) in self.faults.exited(
            w.pid,
            reason,
            w.stats.connections,
            drained,
            self.generation,
            now,
        ) {
            self.answer_fault(t, o);
        }
        let (slot, generation, pid) = (w.slot, w.generation, w.pid.as_raw());
        let expected = matches!(
            w.state,
            WorkerState::Draining { .. } | WorkerState::Stopping
        ) || matches!(self.state, State::Stopping { .. });
        if expected {
            info!(slot, generation, pid, %reason, "worker exited");
            return;
        }
        // A worker of a reload in flight: the reload fails.
        if let State::Reloading(r) = &self.state {
            if r.generation == generation {
                error!(slot, generation, pid, %reason, "worker of the new generation died before it was ready");
                self.abort_reload(format!("worker {slot} of generation {generation} (pid {pid}) exited with {reason} before it was ready"));
                return;
            }
        }
        if generation != self.generation || w.recycling && reason == ExitReason::Code(0) {
            info!(slot, generation, pid, %reason, "worker exited");
            return;
        }
        if self.workers_parked {
            info!(slot, generation, pid, %reason, "worker exited");
            return;
        }
        let fatal = reason == ExitReason::Code(EXIT_FATAL);
        let lived = now.saturating_duration_since(w.started_at);
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if fatal {
            s.fatal = true;
            s.last_exit = Some((reason, now));
            error!(slot, generation, pid, %reason, "worker hit a fatal error; its slot stays empty (fix the cause, then reload)");
            if let State::Starting { .. } = self.state {
                self.fail_startup(format!("worker {slot} exited with {reason}"));
            }
            return;
        }
        if self
            .workers
            .iter()
            .any(|o| o.slot == slot && o.is_serving(generation))
        {
            // A recycled worker's replacement already holds the slot.
            info!(slot, generation, pid, %reason, "worker exited; its replacement is serving");
            return;
        }
        let delay = s.crashed(reason, lived, now);
        self.metrics.own.restarts += 1;
        self.faults.slot_crashed(slot, delay);
        if let State::Starting { .. } = self.state {
            error!(slot, generation, pid, %reason, "worker died during startup");
        }
        if delay.is_zero() {
            warn!(slot, generation, pid, %reason, "worker died unexpectedly; respawning it now");
        } else {
            warn!(slot, generation, pid, %reason, "worker keeps dying; respawning it in {delay:?}");
        }
        self.respawn_due(now);
    }

    fn respawn_due(&mut self, now: Instant) {
        if matches!(self.state, State::Stopping { .. }) || self.workers_parked {
            return;
        }
        for slot in 0..self.slots.len() {
            let due = self.slots[slot].respawn_at.is_some_and(|t| t <= now);
            if due && !self.slots[slot].fatal {
                if let Err(e) = self.spawn(slot, self.generation) {
                    error!("{e}; retrying in 1s");
                    self.slots[slot].respawn_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Kills workers that stopped sending heartbeats: SIGABRT first, for a core dump
    /// that shows where it hung, then SIGKILL.
    fn watchdog(&mut self, now: Instant) {
        let limit = self.config.master.watchdog_timeout.0;
        // million: heartbeats the master has not read yet are no hang.
        self.excuse_unread_heartbeats(now, limit);
        let mut fired = Vec::new();
        for w in &mut self.workers {
            if matches!(w.state, WorkerState::Stopping) {
                continue;
            }
            match w.watchdog_kill {
                None if now.saturating_duration_since(w.last_heartbeat) >= limit => {
                    error!(
                        slot = w.slot,
                        pid = w.pid.as_raw(),
                        generation = w.generation,
                        "worker sent no heartbeat for {:?}: hung; sending SIGABRT",
                        limit
                    );
                    let _ = process::kill(w.pid, Signal::SIGABRT);
                    // SIGABRT on a stopped process waits until it is continued.
                    let _ = process::kill(w.pid, Signal::SIGCONT);
                    w.watchdog_kill = Some(now);
                    fired.push(w.pid);
                }
                Some(t) if now.saturating_duration_since(t) >= WATCHDOG_GRACE => {
                    warn!(
                        pid = w.pid.as_raw(),
                        "hung worker survived SIGABRT; sending SIGKILL"
                    );
                    let _ = process::kill(w.pid, Signal::SIGKILL);
                    w.watchdog_kill = Some(now + Duration::from_secs(3600));
                }
                _ => {}
            }
        }
        self.metrics.own.watchdog_kills += fired.len() as u64;
        for pid in fired {
            self.faults.watchdog_fired(pid, now);
        }
    }

    /// A worker above `max_worker_rss` is replaced gracefully: the new one starts
    /// first, and the old one drains once it is ready.
    fn check_rss(&mut self, i: usize) {
        let max = self.config.master.max_worker_rss.0;
        let w = &self.workers[i];
        if max == 0
            || w.recycling
            || w.stats.rss <= max
            || !w.is_serving(self.generation)
            || w.state != WorkerState::Ready
        {
            return;
        }
        if !matches!(self.state, State::Running) {
            return;
        }
        // A limit below what a fresh worker needs would replace workers in a loop: a
        // worker gets a few heartbeats of life first, which bounds that churn.
        let min_age = self.config.worker.heartbeat_interval.0 * RECYCLE_MIN_HEARTBEATS;
        if w.started_at.elapsed() < min_age {
            return;
        }
        let (slot, pid, rss) = (w.slot, w.pid.as_raw(), w.stats.rss);
        warn!(
            slot,
            pid, rss, max, "worker outgrew max_worker_rss; replacing it"
        );
        self.workers[i].recycling = true;
        self.faults.recycling(self.workers[i].pid, Instant::now());
        if let Err(e) = self.spawn(slot, self.generation) {
            error!("{e}");
            self.workers[i].recycling = false;
        }
    }

    fn enforce_deadlines(&mut self, now: Instant) {
        let stop_deadline = match self.state {
            State::Stopping { deadline, .. } if deadline <= now => Some(deadline),
            _ => None,
        };
        for w in &mut self.workers {
            let overdue = match w.state {
                WorkerState::Draining { deadline } => deadline <= now,
                _ => stop_deadline.is_some(),
            };
            if overdue && w.watchdog_kill.is_none_or(|t| t <= now) {
                warn!(
                    slot = w.slot,
                    pid = w.pid.as_raw(),
                    generation = w.generation,
                    "worker still running at its deadline; sending SIGKILL"
                );
                let _ = process::kill(w.pid, Signal::SIGKILL);
                w.state = WorkerState::Stopping;
                w.watchdog_kill = Some(now + KILL_GRACE);
            }
        }
    }

    /// Moves state forward once what it waits for has happened.
    fn check_progress(&mut self, now: Instant) {
        self.roll(now);
        match &self.state {
            State::Starting { deadline } => {
                let want = self.slots.iter().filter(|s| !s.fatal).count();
                if self.all_ready(self.generation, want) {
                    info!(
                        workers = self.workers.len(),
                        generation = self.generation,
                        pid = process::pid().as_raw(),
                        "corral is serving"
                    );
                    self.state = State::Running;
                    sockets::adopt_paths(&mut self.listeners);
                    if let Some(r) = self.reporter.take() {
                        r.ready();
                    }
                    crate::notify::main_pid(std::process::id());
                    crate::notify::ready(&self.status_line());
                } else if *deadline <= now {
                    self.fail_startup(format!("workers were not ready within {START_TIMEOUT:?}"));
                }
            }
            State::Reloading(r) => {
                if self.all_ready(r.generation, r.config.master.workers.count()) {
                    self.commit_reload();
                } else if r.deadline <= now {
                    self.abort_reload(format!(
                        "generation {} was not ready within {START_TIMEOUT:?}",
                        r.generation
                    ));
                }
            }
            State::Running => {
                // Recycled workers drain once their replacement is ready.
                let gen = self.generation;
                let ready_slots: Vec<usize> = self
                    .workers
                    .iter()
                    .filter(|w| {
                        w.generation == gen && w.state == WorkerState::Ready && !w.recycling
                    })
                    .map(|w| w.slot)
                    .collect();
                let deadline = now + self.config.master.drain_timeout.0;
                for w in &mut self.workers {
                    if w.recycling && w.state == WorkerState::Ready && ready_slots.contains(&w.slot)
                    {
                        drain(w, deadline, IdlePolicy::Handoff);
                    }
                }
                if self.queued_reload && !self.rolled_back_alive() {
                    self.queued_reload = false;
                    let waiters = std::mem::take(&mut self.reload_queued);
                    self.start_reload(waiters);
                }
            }
            State::Upgrading(u) => {
                if u.deadline <= now {
                    let t = self.config.master.upgrade_timeout;
                    self.rollback_upgrade(format!(
                        "the new master was not ready within upgrade_timeout ({t})"
                    ));
                }
            }
            State::Stopping { .. } => {}
        }
        if !matches!(self.state, State::Reloading(_)) {
            for t in std::mem::take(&mut self.upgrade_refused_waiters) {
                self.answer(
                    t,
                    false,
                    "a reload was in progress; upgrade not started, try again".into(),
                );
            }
        }
    }

    /// True when `want` workers of `generation` have reported ready.
    fn all_ready(&self, generation: u64, want: usize) -> bool {
        let ready = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.state == WorkerState::Ready)
            .count();
        ready >= want && want > 0
    }

    fn fail_startup(&mut self, why: String) {
        error!("startup failed: {why}");
        if let Some(r) = self.reporter.take() {
            r.failed(&why);
        }
        self.exit_code = 1;
        self.stop(false, IdlePolicy::Close);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Vec<Instant> = Vec::new();
        match &self.state {
            State::Starting { deadline } | State::Stopping { deadline, .. } => d.push(*deadline),
            State::Reloading(r) => d.push(r.deadline),
            State::Upgrading(u) => d.push(u.deadline),
            State::Running => {}
        }
        d.extend(self.sd_watchdog.map(|(_, due)| due));
        d.extend(self.old_generations_check);
        if self.predecessor.is_some() && matches!(self.state, State::Stopping { .. }) {
            // Waiting for the old master to exit (no fd to poll for it here).
            d.push(Instant::now() + PREDECESSOR_POLL);
        }
        d.extend(self.accept_paused_until);
        d.extend(self.faults.next_deadline());
        d.extend(self.slots.iter().filter_map(|s| s.respawn_at));
        let wd = self.config.master.watchdog_timeout.0;
        for w in &self.workers {
            if let WorkerState::Draining { deadline } = w.state {
                d.push(deadline);
            }
            match w.watchdog_kill {
                Some(t) => {
                    d.push(t.max(Instant::now()) + WATCHDOG_GRACE.min(Duration::from_millis(100)))
                }
                None => d.push(w.last_heartbeat + wd),
            }
        }
        d.into_iter().min()
    }

    // ----- commands -----------------------------------------------------------------

    /// Stops: gracefully (drain, with `idle` for idle connections) or fast.
    fn stop(&mut self, graceful: bool, idle: IdlePolicy) {
        let now = Instant::now();
        if let State::Stopping { graceful: g, .. } = self.state {
            if graceful || !g {
                return; // already stopping at least this hard
            }
        }
        if let State::Reloading(_) = self.state {
            self.abort_reload("the master is stopping".into());
        }
        if let State::Upgrading(_) = self.state {
            self.rollback_upgrade("the master is stopping".into());
        }
        // Requests queued behind the reload or upgrade just cut short will not run.
        self.queued_reload = false;
        for t in std::mem::take(&mut self.reload_queued) {
            self.answer(t, false, STOPPING_RELOAD.into());
        }
        for t in std::mem::take(&mut self.upgrade_refused_waiters) {
            self.answer(t, false, "the master is stopping; upgrade not done".into());
        }
        if !self.handed_over {
            crate::notify::stopping();
        }
        let timeout = if graceful {
            self.config.master.drain_timeout.0
        } else {
            self.config.master.stop_timeout.0
        };
        info!(
            workers = self.workers.len(),
            "{} stop: {} within {:?}",
            if graceful { "graceful" } else { "fast" },
            if graceful {
                "draining connections"
            } else {
                "closing everything"
            },
            timeout
        );
        self.state = State::Stopping {
            graceful,
            deadline: now + timeout,
        };
        if let Some(p) = &self.predecessor {
            // The old master of the last upgrade drains on its own deadline; a fast
            // stop is for it too.
            info!(
                pid = p.pid().as_raw(),
                "the old master of the last upgrade still drains; exiting after it"
            );
            if !graceful {
                p.stop_fast();
            }
        }
        // Closing our copies now makes new connections fail fast once the workers
        // close theirs, instead of piling up in a backlog nobody will accept from.
        // Our Unix socket files go with them (not after a hand-over: the new master
        // serves on them).
        if !self.handed_over {
            sockets::remove_paths(&self.listeners, &[]);
        }
        self.listeners.clear();
        for w in &mut self.workers {
            self.gens.draining(w.generation, now);
            if graceful {
                if !matches!(
                    w.state,
                    WorkerState::Draining { .. } | WorkerState::Stopping
                ) {
                    drain(w, now + timeout, idle);
                }
            } else if !matches!(w.state, WorkerState::Stopping) {
                let _ = w.channel.send(&ToWorker::Stop);
                let _ = process::kill(w.pid, Signal::SIGTERM);
                w.state = WorkerState::Stopping;
            }
        }
    }

    fn park_workers(&mut self) {
        if !matches!(self.state, State::Running) {
            warn!("SIGWINCH ignored: the master is busy");
            return;
        }
        info!("SIGWINCH: draining all workers; the master keeps the listeners (send SIGHUP to start workers again)");
        self.workers_parked = true;
        let deadline = Instant::now() + self.config.master.drain_timeout.0;
        for w in &mut self.workers {
            if matches!(w.state, WorkerState::Starting | WorkerState::Ready) {
                drain(w, deadline, IdlePolicy::Close);
            }
        }
    }

    /// Reopens the master's log file and asks every worker to do the same. The
    /// master's outcome is the answer: workers open the same path with the same
    /// credentials, and one that fails logs why and keeps its old file.
    fn reopen_logs(&mut self) -> Result<String, String> {
        let outcome = match crate::log::reopen() {
            Ok(()) => {
                privs::give_log_file(&self.config);
                info!("log file reopened");
                Ok(format!(
                    "logs reopened ({} workers asked)",
                    self.workers.len()
                ))
            }
            Err(e) => {
                error!("{e}; still writing to the old log file");
                Err(format!(
                    "reopen failed: {e}; the master and its workers keep writing to the old log file"
                ))
            }
        };
        for w in &self.workers {
            let _ = w.channel.send(&ToWorker::ReopenLogs);
        }
        outcome
    }

    /// Starts a reload, or queues it behind the one in flight. `waiters` are
    /// control clients to answer when it is done (all requests of one batch share
    /// one reload).
    fn reload(&mut self, waiters: Vec<u64>) {
        match self.state {
            State::Running if !self.rolled_back_alive() => self.start_reload(waiters),
            State::Upgrading(_) => {
                warn!("reload refused: a binary upgrade is in progress");
                for t in waiters {
                    self.answer(
                        t,
                        false,
                        "a binary upgrade is in progress; reload refused".into(),
                    );
                }
            }
            State::Running => {
                info!("reload queued until the workers of the rolled-back reload are gone");
                self.queued_reload = true;
                self.reload_queued.extend(waiters);
            }
            State::Reloading(_) | State::Starting { .. } => {
                info!("reload queued behind the one in progress");
                self.queued_reload = true;
                self.reload_queued.extend(waiters);
            }
            State::Stopping { .. } => {
                info!("reload ignored: the master is stopping");
                for t in waiters {
                    self.answer(t, false, STOPPING_RELOAD.into());
                }
            }
        }
    }

    fn start_reload(&mut self, waiters: Vec<u64>) {
        let started = Instant::now();
        let path = self.config.source.clone();
        info!(config = %path.display(), "reloading");
        crate::notify::reloading();
        // Reading the file and binding new listeners need fds even at the limit;
        // the first spawn takes the reserve back.
        self.reserve.release();
        let loaded = self.load_for_reload(&path);
        self.reserve.refill();
        let (new, listeners) = match loaded {
            Ok(x) => x,
            Err(msg) => {
                self.reload_failed(&msg, waiters);
                return;
            }
        };
        if let Err(e) = crate::log::reconfigure(&new.log.level, new.log.file.as_deref()) {
            warn!("logging settings not applied: {e}");
        }
        privs::give_log_file(&new);
        let generation = self.generation + 1;
        let n = new.master.workers.count();
        let roll = rolling::Roll::new(
            new.master.reload_surge,
            self.config.master.workers.count(),
            n,
        );
        if let Some(r) = &roll {
            info!("rolling reload: replacing {} slot(s) at a time", r.surge);
        }
        self.state = State::Reloading(Box::new(Reload {
            generation,
            config: new,
            listeners,
            deadline: started + START_TIMEOUT,
            started,
            waiters,
            rolling: roll,
        }));
        if self.roll(started) {
            return;
        }
        for slot in 0..n {
            if let Err(e) = self.spawn(slot, generation) {
                self.abort_reload(e.to_string());
                return;
            }
        }
    }

    /// Reads, validates and resolves the new config and opens its listeners; an
    /// error is the whole message for the operator.
    fn load_for_reload(&self, path: &std::path::Path) -> Result<(Config, Vec<Listener>), String> {
        let new = Config::load(path)
            .map_err(|e| format!("reload failed, configuration unchanged: {e}"))?;
        for note in restart_only_changes(&self.config, &new)
            .into_iter()
            .chain(new.warnings())
        {
            warn!("{note}");
        }
        let listeners = sockets::open_all(&new, &self.listeners, &mut Vec::new())
            .map_err(|e| format!("reload failed, configuration unchanged: {e}"))?;
        Ok((new, listeners))
    }

    /// The new generation is ready: it becomes current and the old ones drain.
    fn commit_reload(&mut self) {
        let State::Reloading(r) = std::mem::replace(&mut self.state, State::Running) else {
            return;
        };
        let Reload {
            generation,
            config,
            listeners,
            started,
            waiters,
            ..
        } = *r;
        let now = Instant::now();
        let deadline = now + config.master.drain_timeout.0;
        let mut drained = 0;
        for w in &mut self.workers {
            if w.generation < generation
                && matches!(w.state, WorkerState::Starting | WorkerState::Ready)
            {
                drain(w, deadline, IdlePolicy::Handoff);
                self.gens.draining(w.generation, now);
                drained += 1;
            }
        }
        let n = config.master.workers.count();
        self.slots = vec![Slot::default(); n];
        self.config = config;
        // Listeners the new config dropped close here (the draining workers closed
        // their copies when told to drain).
        sockets::log_changes(&self.listeners, &listeners);
        sockets::remove_paths(&self.listeners, &listeners);
        self.listeners = listeners;
        if let Err(e) = sockets::steer(&self.config, &self.listeners) {
            warn!("{e}; connections are spread by the kernel's hash meanwhile");
        }
        self.generation = generation;
        self.workers_parked = false;
        // Old workers with nothing left exit within milliseconds of their drain
        // message; counting them right now (on a loaded box, before they were even
        // scheduled) would cut a generation that still serves clients.
        // In a reload storm the first pending check stands, so the cap still holds.
        self.old_generations_check
            .get_or_insert(now + OLD_GENERATIONS_GRACE);
        let took = now.saturating_duration_since(started);
        self.metrics.own.reloads.record(true, Some(took));
        let msg = format!(
            "reloaded: generation {generation} serving with {n} workers (ready in {} ms), {drained} old workers draining",
            took.as_millis()
        );
        info!("{msg}");
        crate::notify::ready(&self.status_line());
        for t in waiters {
            self.answer(t, true, msg.clone());
        }
    }

    fn reload_failed(&mut self, msg: &str, waiters: Vec<u64>) {
        error!("{msg}");
        self.metrics.own.reloads.record(false, None);
        crate::notify::ready(&format!(
            "{}; last reload failed: {msg}",
            self.status_line()
        ));
        for t in waiters {
            self.answer(t, false, msg.to_string());
        }
    }

    /// One line for `systemctl status`.
    fn status_line(&self) -> String {
        let serving = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && w.state == WorkerState::Ready)
            .count();
        let draining = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Draining { .. }))
            .count();
        format!(
            "generation {}: {serving} workers serving, {draining} draining",
            self.generation
        )
    }

    /// Keeps at most `max_old_generations` draining generations; older ones are cut
    /// short (SIGTERM: the worker closes its connections and exits).
    fn limit_old_generations(&mut self) {
        // Only generations that have drained for the grace count: in a reload storm
        // the younger ones are still handing their connections over, and cutting one
        // would close connections that were about to move. Those are looked at again
        // once they are old enough.
        let now = Instant::now();
        let mut young = None;
        let mut old: Vec<u64> = Vec::new();
        for w in &self.workers {
            if w.generation >= self.generation || !matches!(w.state, WorkerState::Draining { .. }) {
                continue;
            }
            match self.gens.draining_since(w.generation) {
                Some(t) if now.saturating_duration_since(t) < OLD_GENERATIONS_GRACE => {
                    let due = t + OLD_GENERATIONS_GRACE;
                    young = Some(young.map_or(due, |y: Instant| y.min(due)));
                }
                _ => old.push(w.generation),
            }
        }
        if let Some(due) = young {
            self.old_generations_check = Some(due);
        }
        old.sort_unstable();
        old.dedup();
        let max = self.config.master.max_old_generations;
        if old.len() <= max {
            return;
        }
        let cut: Vec<u64> = old[..old.len() - max].to_vec();
        for w in &mut self.workers {
            if cut.contains(&w.generation) && matches!(w.state, WorkerState::Draining { .. }) {
                warn!(
                    pid = w.pid.as_raw(),
                    generation = w.generation,
                    "too many old generations (max_old_generations = {max}): stopping this worker now"
                );
                let _ = process::kill(w.pid, Signal::SIGTERM);
                w.state = WorkerState::Draining {
                    deadline: Instant::now() + self.config.master.stop_timeout.0,
                };
            }
        }
    }

    fn abort_reload(&mut self, why: String) {
        let State::Reloading(mut r) = std::mem::replace(&mut self.state, State::Running) else {
            return;
        };
        let mut rolled_back = String::new();
        if let Some(roll) = r.rolling.take() {
            rolled_back = self.roll_back(roll, r.generation);
        } else {
            for w in &mut self.workers {
                if w.generation == r.generation {
                    let _ = process::kill(w.pid, Signal::SIGKILL);
                    w.state = WorkerState::Stopping;
                }
            }
        }
        let msg = format!(
            "reload failed, generation {} keeps serving: {why}{rolled_back}",
            self.generation
        );
        self.reload_failed(&msg, r.waiters);
    }

    // ----- binary upgrade -----------------------------------------------------------

    /// Forks and execs the binary on disk as a new master that inherits our
    /// listeners; we keep serving until it reports ready.
    fn upgrade(&mut self, waiter: Option<u64>) {
        match self.state {
            State::Running => {}
            State::Reloading(_) => {
                info!("upgrade requested during a reload: refused until the reload ends");
                self.upgrade_refused_waiters.extend(waiter);
                return;
            }
            _ => {
                let why = "the master is busy (starting, upgrading or stopping); upgrade refused";
                warn!("{why}");
                if let Some(t) = waiter {
                    self.answer(t, false, why.into());
                }
                return;
            }
        }
        let started = Instant::now();
        info!(binary = %self.binary.display(), "binary upgrade: starting a new master");
        let prepared = upgrade::command_line(&self.binary, &self.config.source)
            .and_then(|cmd| fd::pipe().map(|p| (cmd, p)).map_err(|e| e.to_string()));
        let ((path, args), (pipe_r, pipe_w)) = match prepared {
            Ok(x) => x,
            Err(e) => {
                return self.upgrade_failed(
                    waiter.into_iter().collect(),
                    format!("cannot prepare the new master: {e}"),
                )
            }
        };
        if let Some(p) = &mut self.pid_file {
            if let Err(e) = p.rename_to_oldbin() {
                warn!("{e}");
            }
        }
        // Detached (double fork), so that under systemd the new master is systemd's
        // child when it is named MAINPID=, not an "alien" one systemd would SIGKILL
        // at the next stop instead of letting it drain.
        let me = upgrade::predecessor_env();
        let totals = self.share_totals();
        let bad = self.faults.take_bad_upgrade();
        // The channel the idle connections move over once the upgrade is committed.
        let (link, theirs) = match xfer::Link::pair() {
            Ok((l, t)) => (Some(l), Some(t)),
            Err(e) => {
                warn!("{e}; idle connections will stay with this master's workers");
                (None, None)
            }
        };
        // Above where `hand_over` places the listeners and the readiness pipe, so
        // that neither overwrites it.
        let floor = sockets::LISTEN_FDS_START + self.listeners.len() as i32 + 2;
        let exec = || {
            // Copied above the floor first: `hand_over` dup2()s the listeners onto
            // 3.., and the link's own number may be among them (a master with few
            // fds and many reuseport sockets), which would hand the new master a
            // listener under the link's name.
            let link_fd = match &theirs {
                Some(t) => match fd::dup_inheritable(t.as_fd(), floor) {
                    Ok(raw) => Some(raw),
                    Err(e) => return e.to_string(),
                },
                None => None,
            };
            match sockets::hand_over(&self.listeners, &pipe_w) {
                Ok(mut env) => match signals::reset_for_exec() {
                    Ok(()) => {
                        env.extend(me);
                        env.extend(totals);
                        if let Some(raw) = link_fd {
                            env.push((xfer::XFER_FD_ENV.into(), raw.to_string()));
                        }
                        if bad {
                            env.push((crate::fault::ENV.into(), "bad-upgrade".into()));
                        }
                        format!(
                            "exec of {} failed: {}",
                            self.binary.display(),
                            sockets::exec(&path, &args, &env)
                        )
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e,
            }
        };
        let spawned = upgrade::detached(exec, &pipe_w);
        drop(theirs);
        match spawned {
            Err(e) => {
                self.restore_pid_file();
                self.upgrade_failed(waiter.into_iter().collect(), e.to_string());
            }
            Ok(spawned) => {
                drop(pipe_w);
                if let Err(e) = fd::set_nonblocking(pipe_r.as_fd(), true) {
                    warn!("{e}");
                }
                let child = spawned.pid;
                self.xfer.to_new = link;
                info!(
                    pid = child.as_raw(),
                    "new master started; waiting for it to report ready"
                );
                self.state = State::Upgrading(Box::new(Upgrade {
                    child,
                    pidfd: spawned.pidfd,
                    child_start: spawned.start,
                    pipe: pipe_r,
                    buf: Vec::new(),
                    deadline: started + self.config.master.upgrade_timeout.0,
                    started,
                    waiters: waiter.into_iter().collect(),
                }));
            }
        }
    }

    fn read_upgrade_report(&mut self) {
        let report = match &mut self.state {
            State::Upgrading(u) => upgrade::read_report(&u.pipe, &mut u.buf),
            _ => return,
        };
        match report {
            None => {}
            Some(Report::Ready(pid)) => self.commit_upgrade(pid),
            Some(Report::Failed(why)) => {
                self.rollback_upgrade(format!("the new master failed: {why}"))
            }
            Some(Report::Closed) => {
                // Usually the process is gone by now; its exit status says why.
                let why = match self.upgrade_child_exit(100) {
                    Some(how) => format!("the new master {how} before it was ready"),
                    None => "the new master closed its readiness pipe before it was ready".into(),
                };
                self.rollback_upgrade(why);
            }
        }
    }

    /// The new master's pidfd fired: it exited. Whatever it managed to write on the
    /// readiness pipe says more than its exit status, so that comes first.
    fn upgrade_child_gone(&mut self) {
        let report = match &mut self.state {
            State::Upgrading(u) => upgrade::read_report(&u.pipe, &mut u.buf),
            _ => return,
        };
        let how = self
            .upgrade_child_exit(0)
            .unwrap_or_else(|| "exited".into());
        let why = match report {
            Some(Report::Failed(why)) => format!("the new master failed: {why}"),
            Some(Report::Ready(_)) => format!("the new master {how} right after reporting ready"),
            None | Some(Report::Closed) => format!("the new master {how} before it was ready"),
        };
        self.rollback_upgrade(why);
    }

    /// The new master serves: hand it the service and drain ourselves.
    fn commit_upgrade(&mut self, pid: i32) {
        let State::Upgrading(u) = std::mem::replace(&mut self.state, State::Running) else {
            return;
        };
        let took = u.started.elapsed();
        self.metrics.own.upgrades.record(true, Some(took));
        self.final_share();
        let msg = format!(
            "upgraded: new master {pid} is serving (ready in {} ms); this master ({}) drains its workers and exits",
            took.as_millis(),
            process::pid()
        );
        info!("{msg}");
        // systemd must follow the new main process before we exit, or it would take
        // our exit for the service's and kill the new master.
        crate::notify::main_pid(pid as u32);
        self.handed_over = true;
        if upgrade::we_are_init() {
            self.successor = Some(upgrade::Successor {
                pid: u.child,
                exit: None,
                binary: self.binary.clone(),
            });
        }
        for t in u.waiters {
            self.answer(t, true, msg.clone());
        }
        // The new master owns the control socket path now; ours stops listening.
        if let Some(c) = self.control.take() {
            c.forget();
        }
        // Idle connections move to the new master over the link (master/xfer.rs);
        // without one they linger here as before.
        let idle = if self.xfer.confirm() {
            IdlePolicy::Handoff
        } else {
            IdlePolicy::Linger
        };
        self.stop(true, idle);
    }

    /// The new master failed: kill it and everything it started, and keep serving.
    fn rollback_upgrade(&mut self, why: String) {
        let State::Upgrading(u) = std::mem::replace(&mut self.state, State::Running) else {
            return;
        };
        // The new master leads its own process group: its workers go with it. The
        // pidfd reaches it even before it has made that group.
        let _ = nix::sys::signal::killpg(u.child, Signal::SIGKILL);
        // Nothing moved over it (moves begin only at the commit).
        self.xfer.to_new = None;
        if let Err(e) = u.pidfd.signal(Signal::SIGKILL) {
            warn!("{e}");
        }
        // In case it had already named itself the main process (ready just as the
        // deadline passed), systemd must follow us again.
        crate::notify::main_pid(std::process::id());
        self.restore_pid_file();
        if let Err(e) = self.rebind_control() {
            error!("{e}");
        }
        self.upgrade_failed(u.waiters, why);
        for (t, o) in self.faults.rolled_back(u.child, Instant::now()) {
            self.answer_fault(t, o);
        }
    }

    /// How the new master ended ("exited with exit code 1"), if it has, waiting up to
    /// `wait_ms` for it (the pipe closes a moment before the exit is visible).
    fn upgrade_child_exit(&self, wait_ms: i32) -> Option<String> {
        let State::Upgrading(u) = &self.state else {
            return None;
        };
        u.child_exit(wait_ms)
    }

    fn upgrade_failed(&mut self, waiters: Vec<u64>, why: String) {
        self.metrics.own.upgrades.record(false, None);
        self.stop_sharing();
        let msg = format!(
            "upgrade rolled back, this master ({}) keeps serving: {why}",
            process::pid()
        );
        error!("{msg}");
        crate::notify::status(&format!(
            "{}; last upgrade failed: {why}",
            self.status_line()
        ));
        for t in waiters {
            self.answer(t, false, msg.clone());
        }
    }

    fn restore_pid_file(&mut self) {
        if let Some(p) = &mut self.pid_file {
            if let Err(e) = p.restore_from_oldbin() {
                error!("{e}");
            }
        }
    }

    /// The master we handed over to, if we must stay as its init (PID 1) once done.
    pub fn take_successor(&mut self) -> Option<upgrade::Successor> {
        self.successor.take()
    }

    /// A failed new master may have taken the control socket's path: take it back.
    fn rebind_control(&mut self) -> Result<(), control::ControlError> {
        let path = self.config.master.control_socket_path();
        if let Some(c) = self.control.take() {
            c.forget();
        }
        self.control = Some(control::Server::bind(&path, true)?);
        Ok(())
    }

    // ----- control socket -----------------------------------------------------------

    /// Accepts a round of control clients and reads what each has sent already
    /// (the CLI writes its request right after connecting). Past the cap the oldest
    /// silent client makes room; with none silent the newcomer is turned away with
    /// an answer. Turning clients away, or running out of fds, pauses accepting for
    /// a moment so a flood cannot keep the master busy.
    fn accept_clients(&mut self) -> Vec<Job> {
        let Some(server) = &self.control else {
            return Vec::new();
        };
        let accepted = server.accept(pressure::ACCEPT_BATCH);
        let now = Instant::now();
        let mut jobs = Vec::new();
        let mut turned_away = 0usize;
        let full_round = accepted.clients.len() == pressure::ACCEPT_BATCH;
        for mut c in accepted.clients {
            let req = match c.read() {
                Ok(r) => r,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        c.reject(&self.response(false, format!("malformed control request: {e}")));
                    }
                    continue;
                }
            };
            if self.clients.len() >= self.client_cap {
                let oldest_silent = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, c))| c.silent())
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(i, _)| i);
                turned_away += 1;
                match oldest_silent {
                    Some(i) => drop(self.clients.remove(i)),
                    None => {
                        let why = format!(
                            "too many control clients ({}) are waiting for answers; try again",
                            self.client_cap
                        );
                        c.reject(&self.response(false, why));
                        continue;
                    }
                }
            }
            self.next_ticket += 1;
            let ticket = self.next_ticket;
            if let Some(req) = req {
                debug!(?req, "control request");
                jobs.push(self.job_for(req, ticket, c.uid));
            }
            self.clients.push((ticket, c));
        }
        if let Some(e) = accepted.exhausted {
            self.accept_paused_until = Some(now + pressure::EXHAUSTED_PAUSE);
            if let Some(n) = self.log_exhausted.hit(now) {
                error!(
                    "control socket: accept() failed: {e}; not accepting for {:?} \
                     ({n} more times since last said)",
                    pressure::EXHAUSTED_PAUSE
                );
            }
        } else if turned_away > 0 || full_round {
            self.accept_paused_until = Some(now + pressure::FLOOD_PAUSE);
            if let Some(n) = self.log_flood.hit(now) {
                warn!(
                    cap = self.client_cap,
                    "control socket flooded: {turned_away} clients dropped or turned away \
                     ({n} more floods since last said); accepting in pauses of {:?}",
                    pressure::FLOOD_PAUSE
                );
            }
        }
        jobs
    }

    /// Reads a client's request and turns it into a job; nothing is acted on here.
    /// `hup`: poll saw the client hang up (or fail).
    fn serve_client(&mut self, ticket: u64, hup: bool) -> Option<Job> {
        let i = self.clients.iter().position(|(t, _)| *t == ticket)?;
        let c = &mut self.clients[i].1;
        if !c.wants_read() {
            // Half-closed earlier; now fully gone, nobody is left to answer.
            if hup && !c.wants_write() {
                self.clients.swap_remove(i);
            }
            return None;
        }
        let req = match c.read() {
            Ok(Some(req)) => req,
            Ok(None) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let resp = self.response(false, format!("malformed control request: {e}"));
                self.clients[i].1.answer(&resp);
                return None;
            }
            Err(_) => {
                if !c.wants_write() {
                    self.clients.swap_remove(i);
                }
                return None;
            }
        };
        debug!(?req, "control request");
        let uid = self.clients[i].1.uid;
        Some(self.job_for(req, ticket, uid))
    }

    /// The job for a request; a fault request's details wait in `fault_requests`.
    fn job_for(&mut self, req: Request, ticket: u64, uid: u32) -> Job {
        if let Request::Fault(f) = &req {
            self.fault_requests.push((ticket, f.clone(), uid));
        }
        Job::request(req, ticket)
    }

    fn response(&self, ok: bool, message: String) -> Response {
        Response {
            ok,
            message,
            master_pid: process::pid().as_raw(),
            generation: self.generation,
            workers: Vec::new(),
            fault: None,
            ..Default::default()
        }
    }

    fn answer(&mut self, ticket: u64, ok: bool, message: String) {
        let resp = self.response(ok, message);
        if let Some((_, c)) = self.clients.iter_mut().find(|(t, _)| *t == ticket) {
            c.answer(&resp);
        }
    }

    fn flush_clients(&mut self) {
        let now = Instant::now();
        self.clients
            .retain_mut(|(_, c)| !c.flush() && !c.stale(now));
    }

    fn status(&self) -> Response {
        let now = Instant::now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| {
                let slot = self
                    .slots
                    .get(w.slot)
                    .filter(|_| w.generation == self.generation);
                WorkerStatus {
                    pid: w.pid.as_raw(),
                    slot: w.slot,
                    generation: w.generation,
                    state: w.state.name().into(),
                    uptime_secs: now.saturating_duration_since(w.started_at).as_secs_f64(),
                    connections: w.stats.connections,
                    accepted: w.stats.accepted,
                    bytes_in: w.stats.bytes_in,
                    bytes_out: w.stats.bytes_out,
                    rss: w.stats.rss,
                    log_dropped: w.stats.log_dropped,
                    proxy_header_failed: w.stats.proxy_header_failed,
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: slot.and_then(|s| s.last_exit).map(|(r, t)| {
                        format!(
                            "{r}, {:.0}s ago",
                            now.saturating_duration_since(t).as_secs_f64()
                        )
                    }),
                }
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        let mut per_gen = std::collections::BTreeMap::new();
        for w in &self.workers {
            *per_gen.entry(w.generation).or_insert(0) += 1;
        }
        let generations = self.gens.status(&per_gen, self.generation);
        let state = match &self.state {
            State::Starting { .. } => "starting".to_string(),
            State::Running => "running".to_string(),
            State::Reloading(r) => format!("reloading to generation {}", r.generation),
            State::Upgrading(u) => format!("upgrading (new master {})", u.child),
            State::Stopping { graceful: true, .. } => "stopping (graceful)".to_string(),
            State::Stopping {
                graceful: false, ..
            } => "stopping (fast)".to_string(),
        };
        Response {
            ok: true,
            message: state,
            master_pid: process::pid().as_raw(),
            generation: self.generation,
            workers,
            fault: None,
            generations,
            moved_from_old_master: self.gens.from_predecessor,
        }
    }

    // ----- exit ---------------------------------------------------------------------

    /// Kills every worker at once (startup failure) and reaps them.
    fn shutdown_now(&mut self) {
        for w in &self.workers {
            let _ = process::kill(w.pid, Signal::SIGKILL);
        }
        for w in self.workers.drain(..) {
            process::wait_child(w.pid);
        }
        self.cleanup();
    }

    fn cleanup(&mut self) {
        for ticket in std::mem::take(&mut self.stop_waiters) {
            self.answer(ticket, true, "stopped".into());
        }
        // Nobody leaves with EOF: whoever still waits hears that the master is gone.
        let waiting: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.waiting())
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            self.answer(
                t,
                false,
                "the master exited before this request was done".into(),
            );
        }
        self.flush_clients();
        if let Some(c) = self.control.take() {
            c.remove();
        }
        if !self.handed_over {
            sockets::remove_paths(&self.listeners, &[]);
        }
        if let Some(p) = self.pid_file.take() {
            p.remove();
        }
        self.final_share();
        info!("master exiting");
    }
}

/// The answer to a reload that a stop overtook.
const STOPPING_RELOAD: &str = "the master is stopping; reload not done";

/// Groups a batch of jobs by command in priority order, each command once with the
/// waiters of all its requests (in arrival order).
fn batch(jobs: Vec<Job>) -> Vec<(Command, Vec<u64>)> {
    let mut out: Vec<(Command, Vec<u64>)> = Vec::new();
    for job in jobs {
        match out.iter_mut().find(|(c, _)| *c == job.command) {
            Some((_, w)) => w.extend(job.waiter),
            None => out.push((job.command, job.waiter.into_iter().collect())),
        }
    }
    out.sort_by_key(|(c, _)| c.priority());
    out
}

/// Tells a worker to drain; it exits by itself by `deadline` (its own drain timeout)
/// and is killed shortly after if it has not.
fn drain(w: &mut Worker, deadline: Instant, idle: IdlePolicy) {
    let deadline = deadline + DRAIN_BACKSTOP;
    if let Err(e) = w
        .handoff
        .send_or_queue(&w.channel, ToWorker::Drain { idle })
    {
        // A worker that cannot hear us is told by signal instead.
        debug!(
            pid = w.pid.as_raw(),
            "drain message not delivered ({e}); sending SIGQUIT"
        );
        let _ = process::kill(w.pid, Signal::SIGQUIT);
    }
    w.state = WorkerState::Draining { deadline };
}

/// Settings a reload cannot change, each with what the operator should know.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.master.pid_file != new.master.pid_file {
        out.push(format!(
            "master.pid_file changed to {}: takes effect after a restart; still using {}",
            new.master.pid_file.display(),
            old.master.pid_file.display()
        ));
    }
    if old.master.control_socket_path() != new.master.control_socket_path() {
        out.push(format!(
            "master.control_socket changed: takes effect after a restart; still using {}",
            old.master.control_socket_path().display()
        ));
    }
    out
}

/// Reads the pid in a pid file.
pub fn pidfile_read(path: &std::path::Path) -> Result<Pid, pidfile::PidFileError> {
    pidfile::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(command: Command, waiter: Option<u64>) -> Job {
        Job { command, waiter }
    }

    #[test]
    fn a_batch_runs_in_one_priority_order_with_every_waiter() {
        let jobs = vec![
            job(Command::Status, Some(5)),
            job(Command::Reload, Some(1)),
            job(Command::Upgrade, Some(4)),
            job(Command::FastStop, None),
            job(Command::Reload, None),
            job(Command::Reload, Some(2)),
            job(Command::Reap, None),
            job(Command::GracefulStop, Some(3)),
        ];
        assert_eq!(
            batch(jobs),
            vec![
                (Command::Reap, vec![]),
                (Command::FastStop, vec![]),
                (Command::GracefulStop, vec![3]),
                (Command::Reload, vec![1, 2]),
                (Command::Upgrade, vec![4]),
                (Command::Status, vec![5]),
            ]
        );
    }

    #[test]
    fn requests_map_to_the_signals_commands() {
        assert_eq!(
            Job::request(Request::Stop, 7),
            job(Command::FastStop, Some(7))
        );
        assert_eq!(
            Job::request(Request::Quit, 7),
            job(Command::GracefulStop, Some(7))
        );
        assert_eq!(
            Job::request(Request::Reopen, 7),
            job(Command::ReopenLogs, Some(7))
        );
    }
}
