//! Rolling reloads (`[master] reload_surge = N`): the new generation replaces the old
//! one N slots at a time, for boxes that cannot hold two full generations. A slot's
//! new worker is ready before its predecessor is told to drain, and the next slot
//! starts only once a predecessor has exited, so no more than
//! `max(old workers, new workers) + N` workers of the two generations are alive.
//!
//! To the operator the reload stays all-or-nothing: if a new worker dies or is not
//! ready in time, the reload fails and is rolled back. Slots already replaced get a
//! worker of the old generation again, and the new worker of such a slot keeps
//! serving until that one is ready, then drains (the `max_worker_rss` recycling
//! path), so rolling back costs no connection either. The reload answer and the log
//! say which slots were rolled back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::os::master::Signal;
use tracing::error;

use super::effects::Effects;
use super::table::{WorkerRecord, WorkerState};
use super::{Master, State, START_TIMEOUT};
use crate::channel::IdlePolicy;

/// A rolling reload's progress.
#[derive(Debug)]
pub struct Roll {
    /// Slots replaced at a time.
    pub surge: usize,
    /// Slots whose new worker has not been started yet, in order.
    pending: VecDeque<usize>,
    /// Slots whose old worker was told to drain (their new worker took over).
    replaced: Vec<usize>,
    /// Workers the old generation had (its config's count).
    old_count: usize,
    new_count: usize,
}

impl Roll {
    /// A roll over `new_count` slots, or `None` when `surge` asks for all at once.
    pub fn new(surge: usize, old_count: usize, new_count: usize) -> Option<Roll> {
        (surge > 0 && surge < new_count.max(old_count)).then(|| Roll {
            surge,
            pending: (0..new_count).collect(),
            replaced: Vec::new(),
            old_count,
            new_count,
        })
    }

    /// Drains the old worker of every slot whose new worker is ready, then returns
    /// the slots to start next: as many as keep the two generations within
    /// `max(old, new) + surge` live workers.
    pub fn step(
        &mut self,
        fx: &mut dyn Effects,
        workers: &mut [WorkerRecord],
        old: u64,
        new: u64,
        drain_deadline: Instant,
    ) -> Vec<usize> {
        let ready: Vec<usize> = workers
            .iter()
            .filter(|w| w.generation == new && w.state == WorkerState::Ready)
            .map(|w| w.slot)
            .collect();
        for w in workers.iter_mut() {
            if w.generation == old
                && ready.contains(&w.slot)
                && matches!(w.state, WorkerState::Starting | WorkerState::Ready)
            {
                super::drain(fx, w, drain_deadline, IdlePolicy::Handoff);
                if !self.replaced.contains(&w.slot) {
                    self.replaced.push(w.slot);
                }
            }
        }
        let alive = workers
            .iter()
            .filter(|w| w.generation == old || w.generation == new)
            .count();
        let room = (self.old_count.max(self.new_count) + self.surge).saturating_sub(alive);
        let take = room.min(self.pending.len());
        self.pending.drain(..take).collect()
    }

    /// The reload failed: kills the new workers that are not serving yet, marks the
    /// ready ones of replaced slots for recycling (they drain once an old-generation
    /// worker is ready in their slot), drains the ready ones of slots the old
    /// generation does not have, and returns the replaced slots, which need an
    /// old-generation worker again.
    pub fn roll_back(
        self,
        fx: &mut dyn Effects,
        workers: &mut [WorkerRecord],
        new: u64,
        drain_deadline: Instant,
    ) -> Vec<usize> {
        for w in workers.iter_mut().filter(|w| w.generation == new) {
            match w.state {
                WorkerState::Ready if self.replaced.contains(&w.slot) => w.recycling = true,
                WorkerState::Ready => super::drain(fx, w, drain_deadline, IdlePolicy::Handoff),
                WorkerState::Draining { .. } => {}
                _ => {
                    let _ = fx.kill(w.pid, Signal::SIGKILL);
                    w.state = WorkerState::Stopping;
                }
            }
        }
        self.replaced
    }
}

impl Master {
    /// A rolling reload's next step: drains the old workers of slots whose new
    /// worker is ready and starts the next slots. False when the reload in flight
    /// (if any) is not a rolling one.
    pub(super) fn roll(&mut self, now: Instant) -> bool {
        let drain_timeout = self.config.master.drain_timeout.0;
        let old = self.generation;
        let State::Reloading(r) = &mut self.state else {
            return false;
        };
        let new = r.generation;
        let Some(roll) = r.rolling.as_mut() else {
            return false;
        };
        let slots = roll.step(
            &mut *self.fx,
            &mut self.workers,
            old,
            new,
            now + drain_timeout,
        );
        if !slots.is_empty() {
            // Each step may wait for a predecessor's drain: the deadline is per step.
            r.deadline = now + START_TIMEOUT + drain_timeout;
        }
        for slot in slots {
            if let Err(e) = self.spawn(slot, new) {
                self.abort_reload(e.to_string());
                break;
            }
        }
        true
    }

    /// The rolling reload of generation `new` failed (the state is `Running`
    /// again): gives the replaced slots workers of the current generation again.
    /// Returns what the reload answer adds about it.
    pub(super) fn roll_back(&mut self, roll: Roll, new: u64) -> String {
        let deadline = self.fx.now() + self.config.master.drain_timeout.0;
        let slots = roll.roll_back(&mut *self.fx, &mut self.workers, new, deadline);
        for &slot in &slots {
            if let Err(e) = self.spawn(slot, self.generation) {
                error!("{e}; slot {slot} is refilled by the respawn path");
                if let Some(s) = self.slots.get_mut(slot) {
                    s.respawn_at = Some(self.fx.now() + Duration::from_secs(1));
                }
            }
        }
        if slots.is_empty() {
            return String::new();
        }
        format!(
            "; rolling back slot(s) {slots:?}, which had been replaced: they get generation {} \
             workers again, and their new workers drain once those are ready",
            self.generation
        )
    }

    /// Workers of a rolled-back reload serve until their slot's old-generation
    /// worker is ready; the next reload would reuse their generation number, so it
    /// waits for them (they are gone within a drain).
    pub(super) fn rolled_back_alive(&self) -> bool {
        self.workers.iter().any(|w| w.generation > self.generation)
    }
}
