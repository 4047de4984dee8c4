//! The master's record of faults injected with `corral fault`: which worker got
//! each, when the master noticed (exit, silence, RSS), when a replacement was ready,
//! what the victim's clients lost and what backoff the slot paid. The supervision
//! code calls the hooks here as it does its usual work, so what is measured is what
//! the supervisor really did, not a simulation of it.

use std::time::{Duration, Instant};

use crate::os::master::Pid;

use crate::fault::kind::{FaultKind, FaultOutcome};
use crate::os::process::ExitReason;

/// How long a recycled victim's hand-over may take to be counted before the
/// outcome is reported anyway (a worker with nothing idle to hand over says nothing).
const SETTLE: Duration = Duration::from_secs(2);

/// A recycled victim's replacement is ready; its hand-over is being counted.
#[derive(Clone, Copy)]
struct Settling {
    recovered: Instant,
    replacement: Pid,
    until: Instant,
}

/// One fault in flight, and the client waiting for its outcome.
struct Injection {
    waiter: u64,
    kind: FaultKind,
    slot: usize,
    /// The victim worker (for `bad-upgrade`, the new master once started).
    pid: Pid,
    generation: u64,
    sent: Instant,
    deadline: Instant,
    detected: Option<Instant>,
    outcome: Option<&'static str>,
    lost: u64,
    backoff: Duration,
    exit: Option<String>,
    /// Connections the victim handed over (from its hand-over report).
    handed: u64,
    settling: Option<Settling>,
}

impl Injection {
    fn settled(&self) -> Option<FaultOutcome> {
        self.settling
            .map(|s| self.finish("recycled", Some(s.recovered), Some(s.replacement)))
    }

    /// Moves a settled outcome to `done`; true while the injection stays active
    /// (the shape `retain_mut` wants).
    fn keep_unless_settled(&self, done: &mut Vec<Finished>) -> bool {
        match self.settled() {
            Some(o) => {
                done.push((self.waiter, o));
                false
            }
            None => true,
        }
    }

    fn finish(
        &self,
        outcome: &str,
        recovered: Option<Instant>,
        replacement: Option<Pid>,
    ) -> FaultOutcome {
        let ms = |t: Instant| t.saturating_duration_since(self.sent).as_millis() as u64;
        FaultOutcome {
            kind: self.kind.to_string(),
            slot: self.slot,
            pid: self.pid.as_raw(),
            generation: self.generation,
            detected_ms: self.detected.map(ms),
            recovered_ms: recovered.map(ms),
            lost_connections: self.lost,
            handed_over: self.handed,
            backoff_ms: self.backoff.as_millis() as u64,
            outcome: outcome.to_string(),
            exit: self.exit.clone(),
            replacement_pid: replacement.map(Pid::as_raw),
            attempts: None,
        }
    }
}

/// The outcome of a fault whose effect was not seen within its timeout.
pub const TIMEOUT: &str = "timeout";

/// A finished injection: the control client to answer, and what happened.
pub type Finished = (u64, FaultOutcome);

/// Every fault in flight, plus the master-side faults armed for later.
#[derive(Default)]
pub struct Faults {
    active: Vec<Injection>,
    /// `crash-on-start`: spawns left to fail, per slot.
    crash_on_start: Vec<(usize, u32)>,
    /// `bad-upgrade`: the next upgrade's new master must fail.
    bad_upgrade: bool,
}

impl Faults {
    /// Starts recording a fault just sent to `pid`.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        waiter: u64,
        kind: FaultKind,
        slot: usize,
        pid: Pid,
        generation: u64,
        timeout: Duration,
        now: Instant,
    ) {
        match kind {
            FaultKind::CrashOnStart { n } => self.crash_on_start.push((slot, n)),
            FaultKind::BadUpgrade => self.bad_upgrade = true,
            _ => {}
        }
        self.active.push(Injection {
            waiter,
            kind,
            slot,
            pid,
            generation,
            sent: now,
            deadline: now + timeout,
            detected: None,
            outcome: None,
            lost: 0,
            backoff: Duration::ZERO,
            exit: None,
            handed: 0,
            settling: None,
        });
    }

    /// Whether the spawn about to happen in `slot` must fail at start (and counts it).
    pub fn take_crash_on_start(&mut self, slot: usize) -> bool {
        let Some(i) = self.crash_on_start.iter().position(|(s, _)| *s == slot) else {
            return false;
        };
        self.crash_on_start[i].1 -= 1;
        if self.crash_on_start[i].1 == 0 {
            self.crash_on_start.swap_remove(i);
        }
        true
    }

    /// Whether the upgrade about to start must get a failing new master (and
    /// disarms it). `pid` is filled in when the new master exists.
    pub fn take_bad_upgrade(&mut self) -> bool {
        std::mem::take(&mut self.bad_upgrade)
    }

    /// The watchdog gave up on `pid` (no heartbeat).
    pub fn watchdog_fired(&mut self, pid: Pid, now: Instant) {
        for f in self.active.iter_mut().filter(|f| f.pid == pid) {
            f.detected.get_or_insert(now);
            f.outcome = Some("watchdog");
            f.lost = 0;
        }
    }

    /// `pid` outgrew `max_worker_rss`: a replacement starts, `pid` will drain.
    pub fn recycling(&mut self, pid: Pid, now: Instant) {
        for f in self.active.iter_mut().filter(|f| f.pid == pid) {
            f.detected.get_or_insert(now);
            f.outcome = Some("recycled");
        }
    }

    /// `pid` exited; `connections` is what its last heartbeat said it held, lost
    /// unless it drained gracefully (`drained`). A victim of an older generation than
    /// `current` is not replaced: its exit is the outcome.
    pub fn exited(
        &mut self,
        pid: Pid,
        reason: ExitReason,
        connections: u64,
        drained: bool,
        current: u64,
        now: Instant,
    ) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain_mut(|f| {
            if f.pid != pid {
                return true;
            }
            f.detected.get_or_insert(now);
            f.exit = Some(reason.to_string());
            if !drained {
                f.lost = connections;
            }
            f.outcome.get_or_insert("respawned");
            if f.generation < current {
                done.push((f.waiter, f.finish("exited (old generation)", None, None)));
                return false;
            }
            // A recycled victim that finished draining: nothing more to count.
            f.keep_unless_settled(&mut done)
        });
        done
    }

    /// `pid` reported its hand-over counts (`handed` so far).
    pub fn handed_over(&mut self, pid: Pid, handed: u64) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain_mut(|f| {
            if f.pid != pid {
                return true;
            }
            f.handed = handed;
            f.keep_unless_settled(&mut done)
        });
        done
    }

    /// A current worker of `slot` crashed and the slot waits `delay` to be refilled.
    pub fn slot_crashed(&mut self, slot: usize, delay: Duration) {
        for f in self
            .active
            .iter_mut()
            .filter(|f| f.slot == slot && f.detected.is_some() && f.kind.in_worker_or_slot())
        {
            f.backoff += delay;
            if !delay.is_zero() && f.outcome != Some("watchdog") {
                f.outcome = Some("backoff");
            }
        }
    }

    /// A worker of `slot` in `generation` is ready: the injections it replaces
    /// are done.
    pub fn ready(&mut self, slot: usize, generation: u64, pid: Pid, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain_mut(|f| {
            let replaced = f.slot == slot
                && f.generation == generation
                && f.pid != pid
                && f.detected.is_some()
                && f.settling.is_none()
                && f.kind != FaultKind::BadUpgrade;
            if !replaced {
                return true;
            }
            if f.outcome == Some("recycled") {
                // Recovered; the victim drains now, and what it hands over counts.
                f.settling = Some(Settling {
                    recovered: now,
                    replacement: pid,
                    until: now + SETTLE,
                });
                return true;
            }
            let outcome = f.outcome.unwrap_or("respawned");
            done.push((f.waiter, f.finish(outcome, Some(now), Some(pid))));
            false
        });
        done
    }

    /// `pid` reported that a fault it survives is over.
    pub fn survived(&mut self, pid: Pid, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain(|f| {
            let over = f.pid == pid && f.detected.is_none();
            if over {
                done.push((f.waiter, f.finish("survived", Some(now), None)));
            }
            !over
        });
        done
    }

    /// The upgrade with new master `child` was rolled back.
    pub fn rolled_back(&mut self, child: Pid, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain_mut(|f| {
            let ours = f.kind == FaultKind::BadUpgrade;
            if ours {
                f.pid = child;
                f.detected = Some(now);
                done.push((f.waiter, f.finish("rolled back", Some(now), None)));
            }
            !ours
        });
        done
    }

    /// Injections whose timeout passed without an outcome.
    pub fn expired(&mut self, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.active.retain(|f| {
            if let Some(s) = f.settling.filter(|s| s.until <= now) {
                done.push((
                    f.waiter,
                    f.finish("recycled", Some(s.recovered), Some(s.replacement)),
                ));
                return false;
            }
            let late = f.deadline <= now;
            if late {
                done.push((f.waiter, f.finish(TIMEOUT, None, None)));
            }
            !late
        });
        done
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.active
            .iter()
            .map(|f| f.settling.map_or(f.deadline, |s| s.until.min(f.deadline)))
            .min()
    }
}

impl FaultKind {
    /// Faults whose slot pays a crash backoff (everything but `bad-upgrade`).
    fn in_worker_or_slot(self) -> bool {
        self != FaultKind::BadUpgrade
    }
}

/// The one-line report `corral fault` prints.
pub fn summary(o: &FaultOutcome) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let replacement = o
        .replacement_pid
        .map_or(String::new(), |p| format!(", replacement {p}"));
    let exit = o
        .exit
        .as_deref()
        .map_or(String::new(), |e| format!(" ({e})"));
    let attempts: String = o
        .attempts
        .iter()
        .flatten()
        .map(|a| {
            let verdict = if a.blocked { "blocked" } else { "NOT BLOCKED" };
            format!("\n  {:<18} {verdict}: {}", a.name, a.how)
        })
        .collect();
    format!(
        "fault {} on pid {} (slot {}, generation {}): {}{exit}; detected after {}, \
         recovered after {}{replacement}; {} connections lost, {} handed over, backoff {} ms\
         {attempts}",
        o.kind,
        o.pid,
        o.slot,
        o.generation,
        o.outcome,
        ms(o.detected_ms),
        ms(o.recovered_ms),
        o.lost_connections,
        o.handed_over,
        o.backoff_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_detected_at_exit_and_recovered_at_the_replacements_ready() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        let victim = Pid::from_raw(100);
        f.add(
            7,
            FaultKind::Kill,
            1,
            victim,
            3,
            Duration::from_secs(60),
            t0,
        );
        assert!(f.ready(1, 3, victim, t0).is_empty(), "not before it died");
        let gone = t0 + Duration::from_millis(5);
        assert!(f
            .exited(victim, ExitReason::Code(1), 12, false, 3, gone)
            .is_empty());
        f.slot_crashed(1, Duration::ZERO);
        assert!(
            f.ready(0, 3, Pid::from_raw(101), t0).is_empty(),
            "other slot"
        );
        let done = f.ready(1, 3, Pid::from_raw(102), t0 + Duration::from_millis(40));
        assert_eq!(done.len(), 1);
        let (waiter, o) = &done[0];
        assert_eq!(*waiter, 7);
        assert_eq!(o.outcome, "respawned");
        assert_eq!(o.detected_ms, Some(5));
        assert_eq!(o.recovered_ms, Some(40));
        assert_eq!(o.lost_connections, 12);
        assert_eq!(o.replacement_pid, Some(102));
        assert!(f.next_deadline().is_none());
    }

    #[test]
    fn crash_on_start_counts_down_and_reports_backoff() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        let victim = Pid::from_raw(100);
        f.add(
            1,
            FaultKind::CrashOnStart { n: 2 },
            0,
            victim,
            1,
            Duration::from_secs(60),
            t0,
        );
        assert!(f
            .exited(victim, ExitReason::Code(1), 0, false, 1, t0)
            .is_empty());
        assert!(f.take_crash_on_start(0));
        f.slot_crashed(0, Duration::from_millis(100));
        assert!(f.take_crash_on_start(0));
        f.slot_crashed(0, Duration::from_millis(200));
        assert!(!f.take_crash_on_start(0), "only N spawns fail");
        let done = f.ready(0, 1, Pid::from_raw(105), t0);
        assert_eq!(done[0].1.outcome, "backoff");
        assert_eq!(done[0].1.backoff_ms, 300);
    }

    #[test]
    fn a_recycle_reports_after_the_victims_hand_over() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(60);
        let (victim, next) = (Pid::from_raw(100), Pid::from_raw(101));
        f.add(3, FaultKind::Leak { mib: 64 }, 0, victim, 1, long, t0);
        f.recycling(victim, t0 + Duration::from_millis(900));
        let ready = t0 + Duration::from_millis(950);
        assert!(
            f.ready(0, 1, next, ready).is_empty(),
            "waits for the hand-over"
        );
        assert_eq!(f.next_deadline(), Some(ready + SETTLE));
        let done = f.handed_over(victim, 42);
        let o = &done[0].1;
        assert_eq!(
            (o.outcome.as_str(), o.handed_over, o.lost_connections),
            ("recycled", 42, 0)
        );
        assert_eq!(o.recovered_ms, Some(950));
        // Nothing handed over at all: reported once the settle time is over.
        f.add(4, FaultKind::Leak { mib: 64 }, 0, next, 1, long, t0);
        f.recycling(next, t0);
        assert!(f.ready(0, 1, Pid::from_raw(102), t0).is_empty());
        assert!(f.expired(t0 + SETTLE / 2).is_empty());
        assert_eq!(f.expired(t0 + SETTLE)[0].1.handed_over, 0);
    }

    #[test]
    fn unanswered_faults_time_out() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        f.add(
            2,
            FaultKind::Hang,
            0,
            Pid::from_raw(9),
            1,
            Duration::from_secs(1),
            t0,
        );
        assert!(f.expired(t0).is_empty());
        let done = f.expired(t0 + Duration::from_secs(1));
        assert_eq!(done[0].1.outcome, "timeout");
        assert_eq!(done[0].1.recovered_ms, None);
    }
}
