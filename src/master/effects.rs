//! The master's effects on the world, behind one small trait: fork a worker, signal a
//! process or a process group, start the new master of an upgrade, read the clock.
//!
//! Everything the master decides goes out through `Effects`, so its decisions can be
//! unit-tested without processes: the tests drive a master over a fake that records
//! each effect and a clock they move by hand (`fake.rs`). `System` is the real thing,
//! over `src/os/`.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::os::master::{Pid, Signal};
use crate::os::pidfd::PidFd;
use crate::os::process::{self, Forked};
use crate::os::SysError;

use super::upgrade::{SpawnError, Spawned};

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
}
