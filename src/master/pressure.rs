//! Keeping the master in control when fds run short: a cap on control clients
//! derived from `RLIMIT_NOFILE`, a few fds held in reserve for forking workers, a
//! pause in accepting after the control socket was flooded or accept ran out of fds,
//! and logging such conditions once per interval rather than once per event.
//!
//! The failure this prevents: a local process reconnecting silent control clients in
//! a loop used to fill the master's fd table, after which every `accept` failed at
//! once (100 % CPU polling a socket it could not accept from) and `socketpair` for a
//! respawn failed with EMFILE, so a crashed worker stayed dead for as long as the
//! flood lasted.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Most control clients served at once; `corral -s`/`status` are short-lived, so this
/// is plenty for operators and scripts.
pub const MAX_CLIENTS: usize = 64;
/// Clients accepted in one round at most, so one flood cannot keep the master in its
/// accept loop.
pub const ACCEPT_BATCH: usize = 128;
/// Fds kept open on /dev/null and given back right before a fork needs them
/// (a socketpair for the worker's channel, a pipe for an upgrade).
pub const RESERVE_FDS: usize = 8;
/// How long the control socket is left out of the poll set after a flood (clients
/// had to be turned away): connections wait in the listen backlog meanwhile, which
/// slows a flooding client down to the master's pace.
pub const FLOOD_PAUSE: Duration = Duration::from_millis(50);
/// How long accepting pauses after it failed for lack of fds or memory.
pub const EXHAUSTED_PAUSE: Duration = Duration::from_millis(200);
/// A condition is logged at most once per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// How many control clients fit under a soft fd limit of `nofile`: a quarter of it,
/// so clients can never take the fds that workers' channels, listeners and the
/// reserve need (`MAX_CLIENTS` at most, 4 at least so `status` still works).
pub fn client_cap(nofile: u64) -> usize {
    let quarter = usize::try_from(nofile / 4).unwrap_or(usize::MAX);
    quarter.clamp(4, MAX_CLIENTS)
}

/// Fds held open (on /dev/null) so that the master can still fork a worker when
/// something else has used up its fd limit.
pub struct FdReserve {
    fds: Vec<OwnedFd>,
    want: usize,
}

impl FdReserve {
    /// Opens up to `want` fds; fewer is not an error (the reserve is a cushion).
    pub fn new(want: usize) -> FdReserve {
        let mut r = FdReserve {
            fds: Vec::with_capacity(want),
            want,
        };
        r.refill();
        r
    }

    /// An empty reserve that never refills (a forked worker's: not its concern).
    pub fn none() -> FdReserve {
        FdReserve {
            fds: Vec::new(),
            want: 0,
        }
    }

    /// Gives the fds back so that the next few calls can use their numbers.
    pub fn release(&mut self) {
        self.fds.clear();
    }

    /// Reopens what was released, as far as the limit allows; true when full.
    pub fn refill(&mut self) -> bool {
        while self.fds.len() < self.want {
            match File::open("/dev/null") {
                Ok(f) => self.fds.push(OwnedFd::from(f)),
                Err(_) => return false,
            }
        }
        true
    }

    pub fn held(&self) -> usize {
        self.fds.len()
    }
}

/// Logs a recurring condition at most once per interval, counting what it did not
/// log, so that a flood costs one log line per interval instead of one per event.
#[derive(Debug)]
pub struct LogOnce {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogOnce {
    pub const fn new(every: Duration) -> LogOnce {
        LogOnce {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence; `Some(n)` means "log it now", `n` being how many
    /// occurrences since the last log line were not logged.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_follows_the_fd_limit() {
        assert_eq!(client_cap(20000), MAX_CLIENTS);
        assert_eq!(client_cap(256), 64);
        assert_eq!(client_cap(64), 16);
        assert_eq!(client_cap(8), 4);
    }

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let mut l = LogOnce::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.hit(t0), Some(0));
        for i in 1..=10 {
            assert_eq!(l.hit(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(l.hit(t0 + Duration::from_secs(5)), Some(10));
        assert_eq!(l.hit(t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn reserve_gives_fds_back_and_refills() {
        let mut r = FdReserve::new(3);
        assert_eq!(r.held(), 3);
        r.release();
        assert_eq!(r.held(), 0);
        assert!(r.refill());
        assert_eq!(r.held(), 3);
        assert_eq!(FdReserve::none().held(), 0);
    }
}
