//! The worker table: every live worker process and every slot's history, with the
//! questions the master asks of them.

use std::time::{Duration, Instant};

use crate::os::master::Pid;
use serde::Serialize;

use crate::channel::{Channel, Stats};
use crate::os::process::ExitReason;

/// A worker's life as the master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked, has not reported `Ready` yet.
    Starting,
    /// Serving.
    Ready,
    /// Told to drain; killed at the deadline if still alive.
    Draining { deadline: Instant },
    /// Told to stop now (fast stop) or killed; only reaping is left.
    Stopping,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining { .. } => "draining",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// How far the master went to end a worker that would not end by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// The watchdog sent SIGABRT at this time (for a core dump that shows where it
    /// hung); SIGKILL follows after a grace period.
    Aborted(Instant),
    /// SIGKILL was sent. A deadline sends it again no sooner than `again_after`
    /// (never, once the watchdog sent it).
    Killed { again_after: Option<Instant> },
}

/// What the master knows of one live worker process (the process itself runs
/// `crate::worker::Worker`).
pub struct WorkerRecord {
    pub slot: usize,
    pub generation: u64,
    pub pid: Pid,
    pub channel: Channel,
    pub state: WorkerState,
    pub started_at: Instant,
    pub last_heartbeat: Instant,
    pub stats: Stats,
    /// What the master did to end it when it would not end by itself.
    pub kill: Option<Kill>,
    /// A replacement was started because this worker outgrew `max_worker_rss`.
    pub recycling: bool,
    /// The worker closed its end of the channel (it is exiting).
    pub channel_closed: bool,
    /// Connections the master holds for it (hand-overs in flight) and its counts.
    pub handoff: super::handoff::WorkerHandoff,
    /// When it is due for recycling (`max_requests`, `max_lifetime`).
    pub limits: super::recycle::Limits,
}

impl WorkerRecord {
    /// Whether a deadline may (again) SIGKILL this worker at `now`.
    pub fn may_kill(&self, now: Instant) -> bool {
        match self.kill {
            None => true,
            Some(Kill::Aborted(at)) => at <= now,
            Some(Kill::Killed { again_after }) => again_after.is_some_and(|t| t <= now),
        }
    }

    /// When the watchdog or a deadline looks at this worker next.
    pub fn kill_due(&self, watchdog_timeout: Duration, now: Instant) -> Option<Instant> {
        // A short step while an escalation is in flight, as the watchdog's grace and a
        // repeated deadline kill are measured from then.
        let step = Duration::from_millis(100);
        match self.kill {
            None => Some(self.last_heartbeat + watchdog_timeout),
            Some(Kill::Aborted(at)) => Some(at.max(now) + step),
            Some(Kill::Killed { again_after }) => again_after.map(|t| t.max(now) + step),
        }
    }
    /// Current-generation workers that count towards serving capacity.
    pub fn is_serving(&self, generation: u64) -> bool {
        self.generation == generation
            && matches!(self.state, WorkerState::Starting | WorkerState::Ready)
    }
}

/// Every live worker process, in no particular order.
///
/// It derefs to the list for the code that walks or edits workers directly (the
/// hand-over pump, metrics); the questions asked in more than one place live here.
#[derive(Default)]
pub struct WorkerTable(Vec<WorkerRecord>);

impl std::ops::Deref for WorkerTable {
    type Target = Vec<WorkerRecord>;
    fn deref(&self) -> &Vec<WorkerRecord> {
        &self.0
    }
}

impl std::ops::DerefMut for WorkerTable {
    fn deref_mut(&mut self) -> &mut Vec<WorkerRecord> {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a WorkerTable {
    type Item = &'a WorkerRecord;
    type IntoIter = std::slice::Iter<'a, WorkerRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut WorkerTable {
    type Item = &'a mut WorkerRecord;
    type IntoIter = std::slice::IterMut<'a, WorkerRecord>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl WorkerTable {
    /// Where the worker with `pid` is.
    pub fn index(&self, pid: Pid) -> Option<usize> {
        self.0.iter().position(|w| w.pid == pid)
    }

    /// How many workers of `generation` have reported ready.
    pub fn ready(&self, generation: u64) -> usize {
        self.0
            .iter()
            .filter(|w| w.generation == generation && w.state == WorkerState::Ready)
            .count()
    }

    /// How many workers are draining.
    pub fn draining(&self) -> usize {
        self.0
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Draining { .. }))
            .count()
    }

    /// Whether any worker of `generation` is left.
    pub fn any_of(&self, generation: u64) -> bool {
        self.0.iter().any(|w| w.generation == generation)
    }
}

/// A slot's history, kept across the workers that fill it.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    /// Respawns after unexpected exits.
    pub restarts: u64,
    /// How the last worker in this slot ended, and when.
    pub last_exit: Option<(ExitReason, Instant)>,
    /// Consecutive crashes without a stable period in between.
    pub crash_streak: u32,
    /// When the slot is due to be refilled (crash backoff).
    pub respawn_at: Option<Instant>,
    /// A worker of this slot exited with the fatal code: do not refill it.
    pub fatal: bool,
    /// SIGWINCH stopped its worker on purpose: do not refill it until a reload.
    pub parked: bool,
}

/// A worker that lived this long before crashing resets its slot's backoff.
pub const STABLE_PERIOD: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Slot {
    /// Records a crash and returns how long to wait before refilling the slot: at once
    /// for an isolated crash, then 100 ms doubling up to 10 s while it keeps crashing.
    pub fn crashed(&mut self, reason: ExitReason, lived: Duration, now: Instant) -> Duration {
        self.restarts += 1;
        self.last_exit = Some((reason, now));
        if lived >= STABLE_PERIOD {
            self.crash_streak = 0;
        }
        let delay = match self.crash_streak {
            0 => Duration::ZERO,
            n => BACKOFF_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(BACKOFF_MAX),
        };
        self.crash_streak = self.crash_streak.saturating_add(1);
        self.respawn_at = Some(now + delay);
        delay
    }
}

/// One worker's line in `corral status`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub state: String,
    pub uptime_secs: f64,
    pub connections: u64,
    pub accepted: u64,
    /// Connections taken over from another worker or the old master.
    #[serde(default)]
    pub adopted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rss: u64,
    pub restarts: u64,
    pub last_exit: Option<String>,
    /// Log lines the worker dropped because its log writer could not keep up.
    #[serde(default)]
    pub log_dropped: u64,
    /// `accept_proxy` connections closed for a bad, missing or late PROXY header.
    #[serde(default)]
    pub proxy_header_failed: u64,
    /// TLS handshakes (full, resumed, by version) and failures by reason.
    #[serde(default)]
    pub tls: crate::tls::TlsCounts,
    /// Push: deliveries, and what was dropped and why.
    #[serde(default)]
    pub push: crate::channel::PushCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let now = Instant::now();
        let mut s = Slot::default();
        let short = Duration::from_millis(50);
        let crash = ExitReason::Code(1);
        assert_eq!(s.crashed(crash, short, now), Duration::ZERO);
        assert_eq!(s.crashed(crash, short, now), Duration::from_millis(100));
        assert_eq!(s.crashed(crash, short, now), Duration::from_millis(200));
        for _ in 0..20 {
            s.crashed(crash, short, now);
        }
        assert_eq!(s.crashed(crash, short, now), BACKOFF_MAX);
        assert_eq!(s.crashed(crash, STABLE_PERIOD, now), Duration::ZERO);
        assert_eq!(s.restarts, 25);
    }
}
