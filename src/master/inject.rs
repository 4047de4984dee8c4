//! `corral fault` in the master: checks that fault injection is allowed, logs who
//! asked, picks the victim and sends it the fault (the worker does it for real), or
//! arms the master-side faults; `faults.rs` records what happens next.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::os::master::Pid;
use tracing::warn;

use super::faults;
use super::table::WorkerState;
use super::{Master, State};
use crate::channel::ToWorker;
use crate::fault::kind::{FaultKind, FaultOutcome, FaultRequest, Victim};

/// Longest a request may wait for its outcome.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

impl Master {
    /// Handles the `corral fault` request of control client `ticket`.
    pub(super) fn inject(&mut self, ticket: u64) {
        let Some(i) = self
            .ctl
            .fault_requests
            .iter()
            .position(|(t, _, _)| *t == ticket)
        else {
            return;
        };
        let (_, req, uid) = self.ctl.fault_requests.swap_remove(i);
        warn!(
            uid,
            kind = %req.kind,
            victim = ?req.victim,
            allowed = self.config.master.fault_injection,
            "fault injection requested by uid {uid}"
        );
        match self.try_inject(ticket, &req) {
            Ok(()) => {
                let kind = req.kind.name().to_string();
                *self.metrics.own.faults.entry(kind).or_default() += 1;
            }
            Err(why) => {
                warn!("fault injection refused: {why}");
                self.answer(ticket, false, format!("fault injection refused: {why}"));
            }
        }
    }

    fn try_inject(&mut self, ticket: u64, req: &FaultRequest) -> Result<(), String> {
        if !self.config.master.fault_injection {
            return Err(format!(
                "it is off ([master] fault_injection = false in {}); set it to true and \
                 reload to allow `corral fault`",
                self.config.source.display()
            ));
        }
        req.kind.validate()?;
        if let FaultKind::Leak { mib } = req.kind {
            // Without a limit nothing supervises memory: the fault would only wait.
            if self.config.master.max_worker_rss.0 == 0 {
                return Err(format!(
                    "leak {mib} needs [master] max_worker_rss (off in {}): nothing would \
                     recycle the worker",
                    self.config.source.display()
                ));
            }
        }
        if !matches!(self.state, State::Running) {
            return Err("the master is busy (starting, reloading, upgrading or stopping)".into());
        }
        let now = self.fx.now();
        let timeout = Duration::from_millis(req.timeout_ms).min(MAX_TIMEOUT);
        if req.kind == FaultKind::BadUpgrade {
            self.faults.add(
                ticket,
                req.kind,
                0,
                Pid::from_raw(0),
                self.generation,
                timeout,
                now,
            );
            self.upgrade(None);
            if !matches!(self.state, State::Upgrading(_)) {
                // The upgrade did not even start: nothing will roll back.
                for (t, _) in self.faults.rolled_back(Pid::from_raw(0), now) {
                    self.answer(t, false, "the upgrade could not be started".into());
                }
            }
            return Ok(());
        }
        let i = self.pick_victim(req.victim)?;
        let w = &mut self.workers[i];
        let (slot, pid, generation) = (w.slot, w.pid, w.generation);
        // crash-on-start: the slot's next spawns fail; killing its worker makes
        // them happen now.
        let send = if req.kind.in_worker() {
            req.kind
        } else {
            FaultKind::Kill
        };
        w.handoff
            .send_or_queue(&w.channel, ToWorker::Fault { kind: send })
            .map_err(|e| format!("cannot reach worker {} (slot {slot}): {e}", pid.as_raw()))?;
        self.faults
            .add(ticket, req.kind, slot, pid, generation, timeout, now);
        Ok(())
    }

    /// The ready, current-generation (or the requested generation's) worker to hit.
    fn pick_victim(&self, victim: Victim) -> Result<usize, String> {
        // An older generation's workers are all draining: those are its live ones.
        let current = self.generation;
        let ready = |gen: u64| {
            self.workers
                .iter()
                .enumerate()
                .filter(move |(_, w)| {
                    let live = w.state == WorkerState::Ready
                        || gen < current && matches!(w.state, WorkerState::Draining { .. });
                    w.generation == gen && live && !w.recycling && w.kill.is_none()
                })
                .map(|(i, _)| i)
        };
        let random = |from: Vec<usize>, what: String| -> Result<usize, String> {
            if from.is_empty() {
                return Err(format!("no live worker in {what}"));
            }
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            Ok(from[h.finish() as usize % from.len()])
        };
        match victim {
            Victim::Slot(s) => ready(self.generation)
                .find(|&i| self.workers[i].slot == s)
                .ok_or_else(|| {
                    format!(
                        "no ready worker in slot {s} of generation {} (slots 0..{})",
                        self.generation,
                        self.slots.len()
                    )
                }),
            Victim::Generation(g) => random(ready(g).collect(), format!("generation {g}")),
            Victim::Random => random(
                ready(self.generation).collect(),
                format!("generation {}", self.generation),
            ),
        }
    }

    /// Answers a `corral fault` client with what was measured.
    pub(super) fn answer_fault(&mut self, ticket: u64, outcome: FaultOutcome) {
        let mut resp = self.response(
            outcome.outcome != faults::TIMEOUT,
            faults::summary(&outcome),
        );
        resp.fault = Some(outcome);
        if let Some((_, c)) = self.ctl.clients.iter_mut().find(|(t, _)| *t == ticket) {
            c.answer(&resp);
        }
    }
}
