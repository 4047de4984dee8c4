//! The master's effects on the world, behind one small trait: fork a worker, signal a
//! process or a process group, reap children, start the new master of an upgrade,
//! read a config file, open and steer listeners, tell systemd, read the clock.
//!
//! Everything the master decides goes out through `Effects`, so its decisions can be
//! unit-tested without processes, ports or files: the tests drive a master over a fake
//! that records each effect, reads configs from memory, opens no socket and keeps a
//! clock they move by hand (`fake.rs`). `System` is the real thing, over `src/os/`.
//! What stays outside on purpose: the start (`start.rs`: the shell opens what the
//! master is built from), the pid file (created at start; at an upgrade it is renamed
//! through `host`, which a master over the fake does not have), and the channels to
//! workers, which are socketpairs in both worlds (the fake keeps the worker's end so
//! that a test can play the worker).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Instant;

use crate::config::{Config, ConfigError};
use crate::os::master::{Pid, Signal};
use crate::os::net::NetError;
use crate::os::pidfd::PidFd;
use crate::os::process::{self, ExitReason, Forked};
use crate::os::SysError;

use super::sockets::{self, Listener};
use super::upgrade::{SpawnError, Spawned};

/// What the master tells its supervisor (systemd's `sd_notify`; nothing outside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Serving, with a status line.
    Ready(String),
    /// A reload started.
    Reloading,
    /// Shutting down.
    Stopping,
    /// A status line only.
    Status(String),
    /// The service's main process is now this one (binary upgrade).
    MainPid(u32),
    /// Keep-alive for `WatchdogSec=`.
    Watchdog,
}

/// The new master's side of an upgrade: runs in it and returns only on failure, with
/// the reason.
pub type Exec<'a> = Box<dyn FnOnce() -> String + 'a>;

/// What the master does to the world.
pub trait Effects {
    /// The clock every deadline is measured on.
    fn now(&self) -> Instant;
    /// Forks a worker; `Forked::Child` only ever in the real child.
    fn fork(&mut self, context: &dyn Fn() -> String) -> Result<Forked, SysError>;
    /// The worker's end of its channel, in the parent after the fork: the real master
    /// closes it (the child has its own copy); the fake keeps it, so that a test can
    /// play the worker (read what the master sent it, answer).
    fn forked_channel(&mut self, pid: Pid, end: crate::channel::Channel) {
        let _ = (pid, end);
    }
    /// Sends `sig` to one process.
    fn kill(&mut self, pid: Pid, sig: Signal) -> Result<(), SysError>;
    /// Sends `sig` to the process group `leader` leads (a new master and its workers).
    fn kill_group(&mut self, leader: Pid, sig: Signal) -> Result<(), SysError>;
    /// Sends `sig` through a pidfd (the new master, before it has made its group).
    fn signal_pidfd(&mut self, pidfd: &PidFd, sig: Signal) -> Result<(), SysError>;
    /// Starts the new master of a binary upgrade, detached; `exec` runs in it and
    /// `report` is where it says whether it serves.
    fn start_master(&mut self, exec: Exec<'_>, report: &OwnedFd) -> Result<Spawned, SpawnError>;
    /// Every child that has exited since the last call, with how it ended.
    fn reap(&mut self) -> Vec<(Pid, ExitReason)>;
    /// Reads, layers and validates the config at `path` (a reload).
    fn load_config(&mut self, path: &Path) -> Result<Config, ConfigError>;
    /// The listeners `config` asks for, reusing those in `current` (a reload).
    fn open_listeners(
        &mut self,
        config: &Config,
        current: &[Listener],
    ) -> Result<Vec<Listener>, NetError>;
    /// Attaches (or detaches) the steering program of `config`'s reuseport groups.
    fn steer(&mut self, config: &Config, listeners: &[Listener]) -> Result<(), NetError>;
    /// Tells the supervisor.
    fn notify(&mut self, notice: Notice);
}

/// The real effects, over `src/os/`.
pub struct System;

impl Effects for System {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn fork(&mut self, context: &dyn Fn() -> String) -> Result<Forked, SysError> {
        process::fork(context)
    }

    fn kill(&mut self, pid: Pid, sig: Signal) -> Result<(), SysError> {
        process::kill(pid, sig)
    }

    fn kill_group(&mut self, leader: Pid, sig: Signal) -> Result<(), SysError> {
        crate::os::master::kill_group(leader, sig)
    }

    fn signal_pidfd(&mut self, pidfd: &PidFd, sig: Signal) -> Result<(), SysError> {
        pidfd.signal(sig)
    }

    fn start_master(&mut self, exec: Exec<'_>, report: &OwnedFd) -> Result<Spawned, SpawnError> {
        super::upgrade::detached(exec, report)
    }

    fn reap(&mut self) -> Vec<(Pid, ExitReason)> {
        process::reap_all()
    }

    fn load_config(&mut self, path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    fn open_listeners(
        &mut self,
        config: &Config,
        current: &[Listener],
    ) -> Result<Vec<Listener>, NetError> {
        sockets::open_all(config, current, &mut Vec::new())
    }

    fn steer(&mut self, config: &Config, listeners: &[Listener]) -> Result<(), NetError> {
        sockets::steer(config, listeners)
    }

    fn notify(&mut self, notice: Notice) {
        use crate::notify;
        match notice {
            Notice::Ready(status) => notify::ready(&status),
            Notice::Reloading => notify::reloading(),
            Notice::Stopping => notify::stopping(),
            Notice::Status(text) => notify::status(&text),
            Notice::MainPid(pid) => notify::main_pid(pid),
            Notice::Watchdog => notify::watchdog(),
        }
    }
}
