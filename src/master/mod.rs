//! The master: a single-threaded supervisor that owns the listeners, forks workers,
//! and turns signals and control requests into one `Command` handled in one place.
//!
//! Its state is one enum (`State`): the transitions it may make are listed in this
//! file (`State::may_become`) and every change goes through `Master::enter` or
//! `Master::leave`, wherever the decision that makes it lives. It never
//! runs service code, never touches a client socket and never starts a thread (it
//! forks). Every step that can fail is logged with what failed and what the master did
//! about it; nothing in here panics on a runtime path, because the master's crash is
//! everyone's crash.

mod bus;
mod collect;
mod control_clients;
#[cfg(test)]
mod decisions;
#[cfg(test)]
mod decisions_collect;
#[cfg(test)]
mod decisions_messages;
#[cfg(test)]
mod decisions_reload;
#[cfg(test)]
mod decisions_stalls;
#[cfg(test)]
mod decisions_stop;
#[cfg(test)]
mod decisions_supervision;
#[cfg(test)]
mod decisions_upgrade;
#[cfg(test)]
mod decisions_xfer;
#[cfg(test)]
mod decisions_xlanes;
mod effects;
#[cfg(test)]
mod fake;
pub mod faults;
pub mod generations;
mod host;
mod inject;
mod lanes;
mod metrics;
mod moves;
pub mod pidfile;
mod pressure;
mod privs;
mod progress;
mod recycle;
mod reload;
mod rolling;
pub mod sockets;
mod spawn;
mod stalls;
mod start;
mod status;
mod stop;
mod supervision;
pub mod table;
mod ticket_keys;
pub mod upgrade;
mod waiters;
mod xfer;
mod xlanes;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::channel::{Channel, ChannelError, IdlePolicy, ToMaster, ToWorker};
use crate::config::Config;
use crate::os::master::{Pid, Signal};
use crate::os::process::{ExitReason, Forked};
use crate::os::signals::{SignalReader, MASTER_SIGNALS};
use crate::os::{net, SysError};
use crate::worker::{WorkerInit, EXIT_FATAL};

use crate::control::{self, Client, Request, Response, WorkerStatus};
use effects::Effects;
use pidfile::PidFile;
use pressure::{FdReserve, LogOnce};
use reload::Reload;
use sockets::Listener;
use stop::STOPPING_RELOAD;
use supervision::drain;
use table::{Kill, Slot, WorkerRecord, WorkerState, WorkerTable};
use upgrade::{Report, Reporter, Upgrade};
use waiters::{Pending, Ticket, Waiters};

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
    #[error("cannot make TLS session-ticket keys: the system's random source failed")]
    TicketKeys,
    #[error("cannot resolve the config path {path}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// `corral publish` (the message waits in `Master::publish_requests`).
    Publish,
    /// The new master of an upgrade exited (its pidfd fired).
    UpgradeExited,
    /// The new master of an upgrade wrote on its readiness pipe.
    UpgradeReported,
    /// Heartbeats came in: replace workers over `max_worker_rss`, `max_requests` or
    /// `max_lifetime`.
    Recycle,
}

/// A command and the control client waiting for its outcome (none for a signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub command: Command,
    pub waiter: Option<Ticket>,
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
            Request::Publish { .. } => Command::Publish,
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
    /// drastic request, so a stop is never delayed behind a reload. Before the reap,
    /// the news of an upgrade: its exit first (a "ready" from a new master that is
    /// already dead must not commit), and what it wrote says more about a failure
    /// than an exit status would. The rest comes after the state changes, so that
    /// what it reports shows them.
    fn priority(self) -> u8 {
        match self {
            Command::UpgradeExited => 0,
            Command::UpgradeReported => 1,
            Command::Reap => 2,
            Command::FastStop => 3,
            Command::GracefulStop => 4,
            Command::Reload => 5,
            Command::Upgrade => 6,
            Command::StopWorkers => 7,
            Command::ReopenLogs => 8,
            Command::Recycle => 9,
            Command::Status => 10,
            Command::Metrics => 10,
            Command::Fault => 11,
            Command::Publish => 12,
        }
    }
}

/// The master's state; the transitions it may make are `State::may_become`.
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

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Starting { .. } => "starting",
            State::Running => "running",
            State::Reloading(_) => "reloading",
            State::Upgrading(_) => "upgrading",
            State::Stopping { .. } => "stopping",
        }
    }

    /// Every transition the master makes: the first generation serves or fails; a
    /// running master reloads, upgrades or stops; a reload commits or aborts and an
    /// upgrade commits (then stops) or rolls back, back to running; a stop may follow
    /// anything, and a fast stop may overtake a graceful one.
    fn may_become(&self, next: &State) -> bool {
        use State::*;
        matches!(
            (self, next),
            (Starting { .. }, Running)
                | (Running, Reloading(_) | Upgrading(_))
                | (Reloading(_) | Upgrading(_), Running)
                | (_, Stopping { .. })
        )
    }
}

impl Master {
    /// Moves to `next`. A transition `may_become` does not list is a bug: logged (and
    /// a test failure), never a crash of the master.
    fn enter(&mut self, next: State) -> State {
        if !self.state.may_become(&next) {
            tracing::error!(
                from = self.state.name(),
                to = next.name(),
                "bug: a master state transition that is not in State::may_become"
            );
            debug_assert!(false, "{} -> {}", self.state.name(), next.name());
        }
        std::mem::replace(&mut self.state, next)
    }

    /// Moves to `next` if the state is one `from` accepts, and returns the state it
    /// left; otherwise changes nothing.
    fn leave(&mut self, from: fn(&State) -> bool, next: State) -> Option<State> {
        from(&self.state).then(|| self.enter(next))
    }
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

/// The running master. Its state comes in parts, each with its own file: the
/// workers it supervises (`table.rs`: `workers`, `slots`), the control clients
/// (`control_clients.rs`: `ctl`), the other master of an upgrade (`upgrade.rs`: `up`),
/// what it owns in the host (`host.rs`: `host`), and the reload, metrics, faults and
/// generation records below.
pub struct Master {
    config: Config,
    generation: u64,
    listeners: Vec<Listener>,
    workers: WorkerTable,
    slots: Vec<Slot>,
    /// None only inside a freshly forked child, which drops it at once.
    signals: Option<SignalReader>,
    /// The control socket and its clients.
    ctl: control_clients::Desk,
    /// The other master of a binary upgrade, either side.
    up: upgrade::Sides,
    /// The pid file, readiness, systemd's watchdog, the fd reserve, the exit code.
    host: host::Host,
    state: State,
    /// Requests waiting behind a reload, an upgrade or a stop.
    waiting: Pending,
    /// Round-robin position for handing over connections.
    handoff_rr: usize,
    /// When to enforce `max_old_generations` after the last reload.
    old_generations_check: Option<Instant>,
    /// `corral publish` requests of this batch: (ticket, topic, message).
    publish_requests: Vec<(u64, String, String)>,
    /// The master as a publisher (`corral publish`): its id and last sequence number.
    publisher: u64,
    publish_seq: u64,
    /// Injected faults in flight and master-side faults armed.
    faults: faults::Faults,
    /// Counters for the metrics service and `status --prometheus`.
    metrics: metrics::Metrics,
    /// What became of each draining generation's connections.
    gens: generations::Generations,
    /// The reuseport queues' watch, and the slots lent while their workers stall.
    stalls: stalls::Stalls,
    /// When the TLS session-ticket keys rotate next.
    ticket_rotation_due: Instant,
    /// Forks, signals, the new master of an upgrade and the clock (faked in tests).
    fx: Box<dyn Effects>,
}

impl Master {
    /// Runs until the master is told to stop and every worker is gone. Returns the
    /// process exit code.
    pub fn run(&mut self) -> i32 {
        // Children that exited before our signalfd existed sent a SIGCHLD nobody
        // read: as a container's PID 1 we inherit such zombies from whatever ran
        // before the exec.
        self.reap();
        let code = loop {
            // 1. Collect: wait, then read signals, requests, reports; nothing acts.
            let collect::Collected { mut jobs, heard } = self.collect();
            // 2. What the workers said becomes the master's view of them.
            if self.record(heard) {
                jobs.push(Job::signal(Command::Recycle));
            }
            // 3. The batch, in one priority order, each command with its waiters.
            self.handle(jobs);
            // 4. Deadlines, then what waited on them or on the batch moves forward.
            let now = self.fx.now();
            self.deadlines(now);
            self.progress(now);
            self.flush_clients();
            // 5. Exit once stopped and every worker is gone.
            if let Some(code) = self.finished() {
                break code;
            }
        };
        self.cleanup();
        code
    }

    /// Step 3: act on the batch in one priority order (reap, fast stop, graceful
    /// stop, reload, upgrade, …), each kind once, with all of its waiters: a stop
    /// in the same batch as a reload wins, and the reload's waiters hear why.
    fn handle(&mut self, jobs: Vec<Job>) {
        for (cmd, waiters) in batch(jobs) {
            match cmd {
                Command::UpgradeExited => self.upgrade_child_gone(),
                Command::UpgradeReported => self.read_upgrade_report(),
                Command::Recycle => self.recycle(),
                Command::Reap => self.reap(),
                Command::FastStop | Command::GracefulStop => {
                    let graceful = cmd == Command::GracefulStop;
                    for &t in waiters.tickets() {
                        let how = if graceful { "graceful" } else { "fast" };
                        self.answer(t, true, format!("{how} stop started"));
                    }
                    self.waiting.stop.join(waiters);
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
                    self.answer_all(waiters, ok, &message);
                }
                Command::Fault => {
                    for t in waiters {
                        self.inject(t);
                    }
                }
                Command::Publish => {
                    for t in waiters {
                        self.publish(t);
                    }
                }
                Command::Metrics => {
                    let text = self.prometheus();
                    self.answer_all(waiters, true, &text);
                }
                Command::Status => {
                    let resp = self.status();
                    for t in waiters {
                        if let Some((_, c)) = self.ctl.clients.iter_mut().find(|(k, _)| *k == t) {
                            c.answer(&resp);
                        }
                    }
                }
            }
        }
    }

    /// Deadlines: respawns due, drain and stop deadlines, the watchdog, the
    /// generation cap, timers of systemd, metrics and faults.
    fn deadlines(&mut self, now: Instant) {
        if self.ctl.paused_until.is_some_and(|t| t <= now) {
            self.ctl.paused_until = None;
        }
        self.respawn_due(now);
        self.check_stalls(now);
        self.watchdog(now);
        self.enforce_deadlines(now);
        if self.old_generations_check.is_some_and(|t| t <= now) {
            self.old_generations_check = None;
            self.limit_old_generations();
        }
        self.sd_watchdog(now);
        self.rotate_ticket_keys(now);
        self.roll_logs(now);
        self.metrics_tick(now);
        for (t, outcome) in self.faults.expired(now) {
            self.answer_fault(t, outcome);
        }
    }
}

/// Groups a batch of jobs by command in priority order, each command once with the
/// waiters of all its requests (in arrival order).
fn batch(jobs: Vec<Job>) -> Vec<(Command, Waiters)> {
    let mut out: Vec<(Command, Waiters)> = Vec::new();
    for job in jobs {
        match out.iter_mut().find(|(c, _)| *c == job.command) {
            Some((_, w)) => w.join(job.waiter.into()),
            None => out.push((job.command, job.waiter.into())),
        }
    }
    out.sort_by_key(|(c, _)| c.priority());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(command: Command, waiter: Option<u64>) -> Job {
        Job { command, waiter }
    }

    #[test]
    fn a_running_master_cannot_jump_back_to_starting_nor_a_stop_be_undone() {
        let now = Instant::now();
        let stopping = State::Stopping {
            graceful: true,
            deadline: now,
        };
        let starting = State::Starting { deadline: now };
        assert!(starting.may_become(&State::Running));
        assert!(State::Running.may_become(&stopping));
        assert!(stopping.may_become(&State::Stopping {
            graceful: false,
            deadline: now,
        }));
        assert!(!State::Running.may_become(&starting));
        assert!(!stopping.may_become(&State::Running));
        assert!(!State::Running.may_become(&State::Running));
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
                (Command::Reap, Waiters::none()),
                (Command::FastStop, Waiters::none()),
                (Command::GracefulStop, Waiters::from_iter([3])),
                (Command::Reload, Waiters::from_iter([1, 2])),
                (Command::Upgrade, Waiters::from_iter([4])),
                (Command::Status, Waiters::from_iter([5])),
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
