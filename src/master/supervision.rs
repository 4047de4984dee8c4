//! Supervision: reaping, respawn backoff, the heartbeat watchdog, memory recycling and
//! drain deadlines.

use super::{
    Effects, ExitReason, IdlePolicy, Kill, Master, Pid, Signal, State, ToWorker, WorkerRecord,
    WorkerState, DRAIN_BACKSTOP, EXIT_FATAL, KILL_GRACE, RECYCLE_MIN_HEARTBEATS, WATCHDOG_GRACE,
};
use crate::master::privs;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Tells a worker to drain; it exits by itself by `deadline` (its own drain timeout)
/// and is killed shortly after if it has not.
pub(super) fn drain(
    fx: &mut dyn Effects,
    w: &mut WorkerRecord,
    deadline: Instant,
    idle: IdlePolicy,
) {
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
        let _ = fx.kill(w.pid, Signal::SIGQUIT);
    }
    w.state = WorkerState::Draining { deadline };
}

impl Master {
    pub(super) fn worker_index(&self, pid: Pid) -> Option<usize> {
        self.workers.index(pid)
    }

    /// Reaps every exited child and decides what each exit means.
    pub(super) fn reap(&mut self) {
        for (pid, reason) in self.fx.reap() {
            self.child_exited(pid, reason);
        }
    }

    /// What one reaped child's exit means.
    pub(super) fn child_exited(&mut self, pid: Pid, reason: ExitReason) {
        {
            // PID 1 reaps its successor too: keep the status for the init shim.
            if let Some(s) = self.up.successor.as_mut().filter(|s| s.pid == pid) {
                s.exit = Some(reason);
                return;
            }
            if let State::Upgrading(u) = &self.state {
                if u.child == pid {
                    self.rollback_upgrade(format!("the new master exited with {reason}"));
                    return;
                }
            }
            let Some(i) = self.worker_index(pid) else {
                debug!(pid = pid.as_raw(), %reason, "reaped a child that is not a worker");
                return;
            };
            // What it sent before it exited is still in its channel (a turn reads only
            // part of a channel): its last hand-overs and its `HandoffDone`, whose
            // counts the generation's summary needs.
            if !self.workers[i].channel_closed {
                let left = self.read_worker(pid, super::collect::Reading::All);
                self.record(left.into_iter().map(|m| (pid, m)).collect());
            }
            let Some(i) = self.worker_index(pid) else {
                return;
            };
            let w = self.workers.swap_remove(i);
            let generation = w.generation;
            // Killed, or ended at its drain deadline: what it still served is closed.
            let cut = match w.state {
                WorkerState::Draining { deadline } => {
                    reason != ExitReason::Code(0) || self.fx.now() + DRAIN_BACKSTOP >= deadline
                }
                WorkerState::Stopping => true,
                _ => false,
            };
            if cut {
                self.gens.closed(generation, w.stats.connections);
            }
            self.worker_exited(w, reason);
            if !self.workers.any_of(generation) {
                self.gens.gone(generation, self.fx.now());
            }
        }
    }

    pub(super) fn worker_exited(&mut self, w: WorkerRecord, reason: ExitReason) {
        self.retire_worker(&w);
        let now = self.fx.now();
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
        if self.slots.get(slot).is_some_and(|s| s.parked) {
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

    pub(super) fn respawn_due(&mut self, now: Instant) {
        if matches!(self.state, State::Stopping { .. }) {
            return;
        }
        for slot in 0..self.slots.len() {
            let due = self.slots[slot].respawn_at.is_some_and(|t| t <= now);
            if due && !self.slots[slot].fatal && !self.slots[slot].parked {
                if let Err(e) = self.spawn(slot, self.generation) {
                    error!("{e}; retrying in 1s");
                    self.slots[slot].respawn_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Kills workers that stopped sending heartbeats: SIGABRT first, for a core dump
    /// that shows where it hung, then SIGKILL.
    pub(super) fn watchdog(&mut self, now: Instant) {
        let limit = self.config.master.watchdog_timeout.0;
        // Heartbeats the master has not read yet are no hang.
        self.excuse_unread_heartbeats(now, limit);
        let mut fired = Vec::new();
        for w in &mut self.workers {
            if matches!(w.state, WorkerState::Stopping) {
                continue;
            }
            match w.kill {
                None if now.saturating_duration_since(w.last_heartbeat) >= limit => {
                    error!(
                        slot = w.slot,
                        pid = w.pid.as_raw(),
                        generation = w.generation,
                        "worker sent no heartbeat for {:?}: hung; sending SIGABRT",
                        limit
                    );
                    let _ = self.fx.kill(w.pid, Signal::SIGABRT);
                    // SIGABRT on a stopped process waits until it is continued.
                    let _ = self.fx.kill(w.pid, Signal::SIGCONT);
                    w.kill = Some(Kill::Aborted(now));
                    fired.push(w.pid);
                }
                Some(Kill::Aborted(t)) if now.saturating_duration_since(t) >= WATCHDOG_GRACE => {
                    warn!(
                        pid = w.pid.as_raw(),
                        "hung worker survived SIGABRT; sending SIGKILL"
                    );
                    let _ = self.fx.kill(w.pid, Signal::SIGKILL);
                    w.kill = Some(Kill::Killed { again_after: None });
                }
                _ => {}
            }
        }
        self.metrics.own.watchdog_kills += fired.len() as u64;
        for pid in fired {
            self.faults.watchdog_fired(pid, now);
        }
    }

    /// `Command::Recycle`: each worker over a limit gets its replacement started.
    pub(super) fn recycle(&mut self) {
        for i in 0..self.workers.len() {
            self.check_rss(i);
        }
        self.check_recycle();
    }

    /// A worker above `max_worker_rss` is replaced gracefully: the new one starts
    /// first, and the old one drains once it is ready.
    pub(super) fn check_rss(&mut self, i: usize) {
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
        if self.fx.now().saturating_duration_since(w.started_at) < min_age {
            return;
        }
        let (slot, pid, rss) = (w.slot, w.pid.as_raw(), w.stats.rss);
        warn!(
            slot,
            pid, rss, max, "worker outgrew max_worker_rss; replacing it"
        );
        self.workers[i].recycling = true;
        self.faults.recycling(self.workers[i].pid, self.fx.now());
        if let Err(e) = self.spawn(slot, self.generation) {
            error!("{e}");
            self.workers[i].recycling = false;
        }
    }

    pub(super) fn enforce_deadlines(&mut self, now: Instant) {
        let stop_deadline = match self.state {
            State::Stopping { deadline, .. } if deadline <= now => Some(deadline),
            _ => None,
        };
        for w in &mut self.workers {
            let overdue = match w.state {
                WorkerState::Draining { deadline } => deadline <= now,
                _ => stop_deadline.is_some(),
            };
            if overdue && w.may_kill(now) {
                warn!(
                    slot = w.slot,
                    pid = w.pid.as_raw(),
                    generation = w.generation,
                    "worker still running at its deadline; sending SIGKILL"
                );
                let _ = self.fx.kill(w.pid, Signal::SIGKILL);
                w.state = WorkerState::Stopping;
                w.kill = Some(Kill::Killed {
                    again_after: Some(now + KILL_GRACE),
                });
            }
        }
    }

    /// Reopens the master's log file and asks every worker to do the same. The
    /// master's outcome is the answer: workers open the same path with the same
    /// credentials, and one that fails logs why and keeps its old file.
    pub(super) fn reopen_logs(&mut self) -> Result<String, String> {
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
        self.hand_log_file();
        outcome
    }

    /// Has every worker switch to the master's current log file. The file travels
    /// with the request, so that a worker reopens without opening anything by path
    /// (it may not be allowed to: see os::seccomp).
    fn hand_log_file(&self) {
        let file = crate::log::file_handle();
        for w in &self.workers {
            let _ = match &file {
                Some(fd) => w.channel.send_fds(&ToWorker::ReopenLogs, &[fd.as_fd()]),
                None => w.channel.send(&ToWorker::ReopenLogs),
            };
        }
    }

    /// With `[log] rotation`, at a period's end: the master rolls to the next file
    /// (tracing-appender's appender) and hands it to every worker, as on a reopen.
    pub(super) fn roll_logs(&mut self, now: Instant) {
        if self.host.log_roll_due.is_none_or(|t| t > now) {
            return;
        }
        match crate::log::roll() {
            Ok(true) => {
                privs::give_log_file(&self.config);
                self.hand_log_file();
                info!("log file rolled over");
            }
            Ok(false) => {}
            Err(e) => error!("{e}; still writing to the previous log file"),
        }
        self.host.log_roll_due = next_log_roll(now);
    }
}

/// When the master's log rolls next, on the master's clock (None: it does not roll).
/// A little after the boundary: rolling early would find the same period.
pub(super) fn next_log_roll(now: Instant) -> Option<Instant> {
    let at = crate::log::next_roll()?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(now + left + Duration::from_millis(50))
}
