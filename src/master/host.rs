//! The master's part that lives in the host around it: the pid file, the readiness
//! report to whoever started it (systemd or `corral` in daemon mode), systemd's
//! watchdog, the fds held back so a fork works at the fd limit, and the exit code.

use std::time::{Duration, Instant};

use super::pidfile::PidFile;
use super::pressure::{FdReserve, LogOnce};
use super::upgrade::Reporter;

pub(super) struct Host {
    pub pid_file: Option<PidFile>,
    /// Told once we serve (or fail to).
    pub reporter: Option<Reporter>,
    /// `WATCHDOG=1` period when systemd's watchdog is on, and the next one due.
    pub sd_watchdog: Option<(Duration, Instant)>,
    /// Fds given back right before a fork, so a respawn works at the fd limit.
    pub reserve: FdReserve,
    pub log_reserve: LogOnce,
    /// When the log file rolls over next (`[log] rotation`).
    pub log_roll_due: Option<Instant>,
    /// Exit code once stopped: non-zero when the master gave up (startup failed).
    pub exit_code: i32,
}
