//! Deadlines and progress: what moves the master's state forward once what it waits for
//! has happened (or has not, in time).

use super::effects::Notice;
use super::{drain, IdlePolicy, Master, State, WorkerState, PREDECESSOR_POLL, START_TIMEOUT};
use crate::master::sockets;
use crate::master::table::WorkerRecord;
use crate::os::process;
use std::time::Instant;
use tracing::{error, info};

impl Master {
    pub(super) fn sd_watchdog(&mut self, now: Instant) {
        if let Some((every, due)) = self.host.sd_watchdog {
            if due <= now {
                self.fx.notify(Notice::Watchdog);
                self.host.sd_watchdog = Some((every, now + every));
            }
        }
    }

    /// Moves state forward once what it waits for has happened.
    pub(super) fn progress(&mut self, now: Instant) {
        self.roll(now);
        match &self.state {
            State::Starting { deadline } => {
                let want = self.slots.iter().filter(|s| !s.fatal).count();
                if self.all_ready(self.generation, want) {
                    info!(
                        workers = self.workers.len(),
                        generation = self.generation,
                        pid = process::pid().as_raw(),
                        "corral is serving"
                    );
                    self.enter(State::Running);
                    sockets::adopt_paths(&mut self.listeners);
                    // Said before the report: the old master links its workers to
                    // ours at the commit, before anything moves.
                    self.xfer_tell_adopters();
                    if let Some(r) = self.host.reporter.take() {
                        r.ready();
                    }
                    self.fx.notify(Notice::MainPid(std::process::id()));
                    let status = self.status_line();
                    self.fx.notify(Notice::Ready(status));
                } else if *deadline <= now {
                    self.fail_startup(format!("workers were not ready within {START_TIMEOUT:?}"));
                }
            }
            State::Reloading(r) => {
                if self.all_ready(r.generation, r.config.master.workers.count()) {
                    self.commit_reload();
                } else if r.deadline <= now {
                    self.abort_reload(format!(
                        "generation {} was not ready within {START_TIMEOUT:?}",
                        r.generation
                    ));
                }
            }
            State::Running => {
                // Recycled workers drain once their replacement is ready.
                let gen = self.generation;
                let ready_slots: Vec<usize> = self
                    .workers
                    .iter()
                    .filter(|w| {
                        w.generation == gen && w.state == WorkerState::Ready && !w.recycling
                    })
                    .map(|w| w.slot)
                    .collect();
                let deadline = now + self.config.master.drain_timeout.0;
                let leaving = |w: &WorkerRecord| {
                    w.recycling && w.state == WorkerState::Ready && ready_slots.contains(&w.slot)
                };
                // Lanes before the drain (see `commit_reload`).
                let mut drained = false;
                for w in self.workers.iter_mut().filter(|w| leaving(w)) {
                    w.handoff.moves_out = true;
                    drained = true;
                }
                if drained {
                    self.wire_lanes();
                }
                for w in self.workers.iter_mut().filter(|w| leaving(w)) {
                    drain(&mut *self.fx, w, deadline, IdlePolicy::Handoff);
                }
                if self.waiting.reload.is_some() && !self.rolled_back_alive() {
                    let waiters = self.waiting.reload.take().unwrap_or_default();
                    self.start_reload(waiters);
                }
            }
            State::Upgrading(u) => {
                if u.deadline <= now {
                    let t = self.config.master.upgrade_timeout;
                    self.rollback_upgrade(format!(
                        "the new master was not ready within upgrade_timeout ({t})"
                    ));
                }
            }
            State::Stopping { .. } => {}
        }
        if !matches!(self.state, State::Reloading(_)) {
            let refused = std::mem::take(&mut self.waiting.upgrade);
            self.answer_all(
                refused,
                false,
                "a reload was in progress; upgrade not started, try again",
            );
        }
    }

    /// True when `want` workers of `generation` have reported ready.
    pub(super) fn all_ready(&self, generation: u64, want: usize) -> bool {
        self.workers.ready(generation) >= want && want > 0
    }

    pub(super) fn fail_startup(&mut self, why: String) {
        error!("startup failed: {why}");
        if let Some(r) = self.host.reporter.take() {
            r.failed(&why);
        }
        self.host.exit_code = 1;
        self.stop(false, IdlePolicy::Close);
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let mut d: Vec<Instant> = Vec::new();
        match &self.state {
            State::Starting { deadline } | State::Stopping { deadline, .. } => d.push(*deadline),
            State::Reloading(r) => d.push(r.deadline),
            State::Upgrading(u) => d.push(u.deadline),
            State::Running => {}
        }
        d.extend(self.host.sd_watchdog.map(|(_, due)| due));
        d.extend(self.old_generations_check);
        d.push(self.ticket_rotation_due);
        d.extend(self.host.log_roll_due);
        if self.up.predecessor.is_some() && matches!(self.state, State::Stopping { .. }) {
            // Waiting for the old master to exit (no fd to poll for it here).
            d.push(self.fx.now() + PREDECESSOR_POLL);
        }
        d.extend(self.ctl.paused_until);
        d.extend(self.stalls.next_check());
        d.extend(self.faults.next_deadline());
        d.extend(self.slots.iter().filter_map(|s| s.respawn_at));
        let wd = self.config.master.watchdog_timeout.0;
        for w in &self.workers {
            if let WorkerState::Draining { deadline } = w.state {
                d.push(deadline);
            }
            d.extend(w.kill_due(wd, self.fx.now()));
        }
        d.into_iter().min()
    }
}
