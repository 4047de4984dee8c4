//! The old master, as the new master of a binary upgrade sees it.
//!
//! After an upgrade both masters live for a while: the old one drains its workers. If
//! the new master is told to stop in that window (`systemctl stop` sends SIGQUIT to the
//! main process only) and exits as soon as its own workers are gone, systemd's
//! `KillMode=mixed` SIGKILLs whatever is left in the unit, which is the old master and
//! the connections it is still serving. So the old master names itself in the new
//! master's environment, and the new master, once stopping, waits for it (within its
//! own stop deadline) before it exits; on a fast stop it passes the SIGTERM on.

use crate::os::master::Pid;
use crate::os::master::Signal;

use crate::os::pidfd::{self, PidFd};
use crate::os::process;

/// Environment variable naming the old master (`PID:START_TIME`) for the new one.
pub const PREDECESSOR_ENV: &str = "CORRAL_UPGRADE_PREDECESSOR";

/// The value the old master puts in `PREDECESSOR_ENV`: itself.
pub fn env_value() -> Option<(String, String)> {
    let me = process::pid();
    let start = pidfd::start_time(me)?;
    Some((PREDECESSOR_ENV.into(), format!("{}:{start}", me.as_raw())))
}

/// A live old master this master waits for before it exits.
pub struct Predecessor {
    pidfd: PidFd,
}

impl Predecessor {
    /// The old master that started us, if any and still alive. The variable is
    /// removed so our own upgrades and children never see it. A pid whose start time
    /// differs is not that master any more (reused), and PID 1 is an init shim (a
    /// container's old master stays as init for good): neither is waited for.
    pub fn from_env() -> Option<Predecessor> {
        let value = std::env::var(PREDECESSOR_ENV).ok()?;
        std::env::remove_var(PREDECESSOR_ENV);
        let (pid, start) = value.split_once(':')?;
        let pid = Pid::from_raw(pid.parse().ok()?);
        let start: u64 = start.parse().ok()?;
        if pid.as_raw() <= 1 {
            return None;
        }
        let pidfd = PidFd::open(pid).ok()?;
        // Checked after the pidfd is open, so the pid cannot be reused in between.
        if pidfd::start_time(pid) != Some(start) {
            return None;
        }
        Some(Predecessor { pidfd })
    }

    pub fn pid(&self) -> Pid {
        self.pidfd.pid()
    }

    /// True once the old master has exited.
    pub fn gone(&self) -> bool {
        self.pidfd.exited(0)
    }

    /// Passes a fast stop on: the old master closes what it still drains.
    pub fn stop_fast(&self) {
        let _ = self.pidfd.signal(Signal::SIGTERM);
    }
}
