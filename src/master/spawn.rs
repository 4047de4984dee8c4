//! Forking a worker, and the child's side of the fork: shed the master, run the loop.

use super::{recycle, xfer};
use super::{
    Channel, Config, FdReserve, Forked, Master, State, SysError, WorkerInit, WorkerRecord,
    WorkerState, EXIT_FATAL,
};
use crate::master::privs;
use crate::master::sockets;
use crate::os::process;
use crate::os::signals;
use crate::worker;
use std::os::fd::OwnedFd;
use std::time::Duration;
use tracing::{debug, error, warn};

impl Master {
    /// Forks a worker into `slot` of `generation`, with that generation's listeners.
    pub(super) fn spawn(&mut self, slot: usize, generation: u64) -> Result<(), SysError> {
        // At the fd limit the channel's socketpair would fail: the reserve makes
        // room for it, and is taken back once the child holds its end.
        self.host.reserve.release();
        let result = self.fork_worker(slot, generation);
        if !self.host.reserve.refill() {
            if let Some(n) = self.host.log_reserve.hit(self.fx.now()) {
                warn!(
                    held = self.host.reserve.held(),
                    "cannot refill the master's fd reserve: the fd limit is reached \
                     ({n} more times since last said)"
                );
            }
        }
        result
    }

    pub(super) fn fork_worker(&mut self, slot: usize, generation: u64) -> Result<(), SysError> {
        let (master_end, worker_end) = Channel::pair()?;
        let crash = generation == self.generation && self.faults.take_crash_on_start(slot);
        let master = process::pid();
        let forked = self
            .fx
            .fork(&|| format!("spawning worker {slot} of generation {generation}"))?;
        match forked {
            Forked::Parent(pid) => {
                self.fx.forked_channel(pid, worker_end);
                let now = self.fx.now();
                let limits = recycle::Limits::draw(&self.worker_config(generation).worker);
                self.workers.push(WorkerRecord {
                    slot,
                    generation,
                    pid,
                    channel: master_end,
                    state: WorkerState::Starting,
                    started_at: now,
                    last_heartbeat: now,
                    stats: Default::default(),
                    kill: None,
                    recycling: false,
                    channel_closed: false,
                    handoff: Default::default(),
                    limits,
                });
                if let Some(s) = self.slots.get_mut(slot) {
                    s.respawn_at = None;
                }
                self.wire_bus();
                debug!(slot, generation, pid = pid.as_raw(), "worker forked");
                Ok(())
            }
            Forked::Child => {
                crate::log::leave_master();
                drop(master_end);
                if crash {
                    error!("injected fault (corral fault crash-on-start): worker {slot} aborting at start");
                    std::process::abort();
                }
                self.host.reserve = FdReserve::none();
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
    pub(super) fn become_worker(&mut self, slot: usize, generation: u64, channel: Channel) -> i32 {
        process::set_name("corral-worker");
        if self.config.master.cpu_affinity {
            if let Err(e) = process::pin_to_cpu(slot) {
                warn!("worker {slot}: {e}");
            }
        }
        // Other workers' channels must close here, or a sibling would keep this
        // worker's master end open and it would never see EOF when the master dies.
        self.workers.clear();
        self.ctl.clients.clear();
        self.ctl.server = None;
        self.signals = None;
        self.host.pid_file = None;
        self.host.reporter = None;
        self.up.xfer = xfer::Links::default();
        // The old master's pidfd (after an upgrade) is the master's to wait on.
        self.up.predecessor = None;
        // (The child's copy of the master: its upgrade's pidfd and pipe go with it.)
        self.leave(|s| matches!(s, State::Upgrading(_)), State::Running);
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
        // After the set-up above (and the threads it started, which TSYNC covers),
        // before the first byte of service code: the services are made in
        // `worker::run`.
        if let Err(e) = install_filter(&config) {
            error!("worker {slot}: {e}");
            return EXIT_FATAL;
        }
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
    pub(super) fn worker_config(&self, generation: u64) -> &Config {
        match &self.state {
            State::Reloading(r) if r.generation == generation => &r.config,
            _ => &self.config,
        }
    }

    /// The drain timeout that `generation`'s workers run with.
    pub(super) fn worker_drain_timeout(&self, generation: u64) -> Duration {
        match &self.state {
            State::Reloading(r) if r.generation == generation => r.config.master.drain_timeout.0,
            _ => self.config.master.drain_timeout.0,
        }
    }
}

/// Installs the worker's seccomp filter as `[worker] seccomp` says.
fn install_filter(config: &Config) -> Result<(), crate::os::seccomp::SeccompError> {
    use crate::config::SeccompMode;
    use crate::os::seccomp::{self, Action, Policy};
    let action = match config.worker.seccomp {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Log => Action::Log,
        SeccompMode::Enforce => Action::Enforce,
    };
    let policy = Policy {
        action,
        network: config.listen.iter().any(|l| l.service == "proxy"),
        extra: seccomp::extra(),
    };
    seccomp::install(&policy)
}
