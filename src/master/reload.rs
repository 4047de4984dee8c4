//! Reload: start a new generation, commit it once ready or abort it, and cap the old
//! generations that still drain.

use super::{
    drain, Config, IdlePolicy, Listener, Master, Signal, Slot, State, Waiters, WorkerState,
    OLD_GENERATIONS_GRACE, START_TIMEOUT, STOPPING_RELOAD,
};
use crate::master::effects::Notice;
use crate::master::privs;
use crate::master::rolling;
use crate::master::sockets;
use crate::master::table::WorkerRecord;
use std::time::Instant;
use tracing::{error, info, warn};

/// A reload in flight: the new generation is starting.
pub(super) struct Reload {
    pub(super) generation: u64,
    pub(super) config: Config,
    pub(super) listeners: Vec<Listener>,
    pub(super) deadline: Instant,
    pub(super) started: Instant,
    /// Control clients waiting for the outcome (indices into `Master::clients` are not
    /// stable, so clients are marked by a ticket instead).
    pub(super) waiters: Waiters,
    /// `reload_surge`: slots are replaced a few at a time.
    pub(super) rolling: Option<rolling::Roll>,
}

/// Settings a reload cannot change, each with what the operator should know.
pub(super) fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.master.pid_file != new.master.pid_file {
        out.push(format!(
            "master.pid_file changed to {}: takes effect after a restart; still using {}",
            new.master.pid_file.display(),
            old.master.pid_file.display()
        ));
    }
    if old.master.control_socket_path() != new.master.control_socket_path() {
        out.push(format!(
            "master.control_socket changed: takes effect after a restart; still using {}",
            old.master.control_socket_path().display()
        ));
    }
    out
}

impl Master {
    /// Starts a reload, or queues it behind the one in flight. `waiters` are
    /// control clients to answer when it is done (all requests of one batch share
    /// one reload).
    pub(super) fn reload(&mut self, waiters: Waiters) {
        match self.state {
            State::Running if !self.rolled_back_alive() => self.start_reload(waiters),
            State::Upgrading(_) => {
                warn!("reload refused: a binary upgrade is in progress");
                self.answer_all(
                    waiters,
                    false,
                    "a binary upgrade is in progress; reload refused",
                );
            }
            State::Running => {
                info!("reload queued until the workers of the rolled-back reload are gone");
                self.waiting.queue_reload(waiters);
            }
            State::Reloading(_) | State::Starting { .. } => {
                info!("reload queued behind the one in progress");
                self.waiting.queue_reload(waiters);
            }
            State::Stopping { .. } => {
                info!("reload ignored: the master is stopping");
                self.answer_all(waiters, false, STOPPING_RELOAD);
            }
        }
    }

    pub(super) fn start_reload(&mut self, waiters: Waiters) {
        let started = self.fx.now();
        let path = self.config.source.clone();
        info!(config = %path.display(), "reloading");
        self.fx.notify(Notice::Reloading);
        // Reading the file and binding new listeners need fds even at the limit;
        // the first spawn takes the reserve back.
        self.host.reserve.release();
        let loaded = self.load_for_reload(&path);
        self.host.reserve.refill();
        let (new, listeners) = match loaded {
            Ok(x) => x,
            Err(msg) => {
                self.reload_failed(&msg, waiters);
                return;
            }
        };
        if let Err(e) =
            crate::log::reconfigure(&new.log.level, new.log.file.as_deref(), new.log.rotation)
        {
            warn!("logging settings not applied: {e}");
        }
        privs::give_log_file(&new);
        self.host.log_roll_due = super::supervision::next_log_roll(self.fx.now());
        let generation = self.generation + 1;
        let n = new.master.workers.count();
        let roll = rolling::Roll::new(
            new.master.reload_surge,
            self.config.master.workers.count(),
            n,
        );
        if let Some(r) = &roll {
            info!("rolling reload: replacing {} slot(s) at a time", r.surge);
        }
        self.enter(State::Reloading(Box::new(Reload {
            generation,
            config: new,
            listeners,
            deadline: started + START_TIMEOUT,
            started,
            waiters,
            rolling: roll,
        })));
        if self.roll(started) {
            return;
        }
        for slot in 0..n {
            if let Err(e) = self.spawn(slot, generation) {
                self.abort_reload(e.to_string());
                return;
            }
        }
    }

    /// Reads, validates and resolves the new config and opens its listeners; an
    /// error is the whole message for the operator.
    pub(super) fn load_for_reload(
        &mut self,
        path: &std::path::Path,
    ) -> Result<(Config, Vec<Listener>), String> {
        let new = self
            .fx
            .load_config(path)
            .map_err(|e| format!("reload failed, configuration unchanged: {e}"))?;
        for note in restart_only_changes(&self.config, &new)
            .into_iter()
            .chain(new.warnings())
        {
            warn!("{note}");
        }
        let listeners = self
            .fx
            .open_listeners(&new, &self.listeners)
            .map_err(|e| format!("reload failed, configuration unchanged: {e}"))?;
        Ok((new, listeners))
    }

    /// The new generation is ready: it becomes current and the old ones drain.
    pub(super) fn commit_reload(&mut self) {
        let Some(State::Reloading(r)) =
            self.leave(|s| matches!(s, State::Reloading(_)), State::Running)
        else {
            return;
        };
        let Reload {
            generation,
            config,
            listeners,
            started,
            waiters,
            ..
        } = *r;
        let now = self.fx.now();
        let deadline = now + config.master.drain_timeout.0;
        let leaving = |w: &WorkerRecord| {
            w.generation < generation
                && matches!(w.state, WorkerState::Starting | WorkerState::Ready)
        };
        // Old workers send their connections straight to the new ones: the lanes go
        // out before the drain, on the same channel, so that a worker has them when it
        // starts handing over (after the drain, a worker that emptied itself at once
        // sent everything through the master, as if there were no lanes).
        for w in self.workers.iter_mut().filter(|w| leaving(w)) {
            w.handoff.moves_out = true;
        }
        self.generation = generation;
        self.wire_lanes();
        let mut drained = 0;
        for w in self.workers.iter_mut().filter(|w| leaving(w)) {
            drain(&mut *self.fx, w, deadline, IdlePolicy::Handoff);
            self.gens.draining(w.generation, now);
            drained += 1;
        }
        let n = config.master.workers.count();
        self.slots = vec![Slot::default(); n];
        self.config = config;
        // Listeners the new config dropped close here (the draining workers closed
        // their copies when told to drain).
        sockets::log_changes(&self.listeners, &listeners);
        sockets::remove_paths(&self.listeners, &listeners);
        self.listeners = listeners;
        if let Err(e) = self.fx.steer(&self.config, &self.listeners) {
            warn!("{e}; connections are spread by the kernel's hash meanwhile");
        }
        // Old workers with nothing left exit within milliseconds of their drain
        // message; counting them right now (on a loaded box, before they were even
        // scheduled) would cut a generation that still serves clients.
        // In a reload storm the first pending check stands, so the cap still holds.
        self.old_generations_check
            .get_or_insert(now + OLD_GENERATIONS_GRACE);
        let took = now.saturating_duration_since(started);
        self.metrics.own.reloads.record(true, Some(took));
        let msg = format!(
            "reloaded: generation {generation} serving with {n} workers (ready in {} ms), {drained} old workers draining",
            took.as_millis()
        );
        info!("{msg}");
        let status = self.status_line();
        self.fx.notify(Notice::Ready(status));
        self.answer_all(waiters, true, &msg);
    }

    pub(super) fn reload_failed(&mut self, msg: &str, waiters: Waiters) {
        error!("{msg}");
        self.metrics.own.reloads.record(false, None);
        let status = format!("{}; last reload failed: {msg}", self.status_line());
        self.fx.notify(Notice::Ready(status));
        self.answer_all(waiters, false, msg);
    }

    /// Keeps at most `max_old_generations` draining generations; older ones are cut
    /// short (SIGTERM: the worker closes its connections and exits).
    pub(super) fn limit_old_generations(&mut self) {
        // Only generations that have drained for the grace count: in a reload storm
        // the younger ones are still handing their connections over, and cutting one
        // would close connections that were about to move. Those are looked at again
        // once they are old enough.
        let now = self.fx.now();
        let mut young = None;
        let mut old: Vec<u64> = Vec::new();
        for w in &self.workers {
            if w.generation >= self.generation || !matches!(w.state, WorkerState::Draining { .. }) {
                continue;
            }
            match self.gens.draining_since(w.generation) {
                Some(t) if now.saturating_duration_since(t) < OLD_GENERATIONS_GRACE => {
                    let due = t + OLD_GENERATIONS_GRACE;
                    young = Some(young.map_or(due, |y: Instant| y.min(due)));
                }
                _ => old.push(w.generation),
            }
        }
        if let Some(due) = young {
            self.old_generations_check = Some(due);
        }
        old.sort_unstable();
        old.dedup();
        let max = self.config.master.max_old_generations;
        if old.len() <= max {
            return;
        }
        let cut: Vec<u64> = old[..old.len() - max].to_vec();
        for w in &mut self.workers {
            if cut.contains(&w.generation) && matches!(w.state, WorkerState::Draining { .. }) {
                warn!(
                    pid = w.pid.as_raw(),
                    generation = w.generation,
                    "too many old generations (max_old_generations = {max}): stopping this worker now"
                );
                let _ = self.fx.kill(w.pid, Signal::SIGTERM);
                w.state = WorkerState::Draining {
                    deadline: self.fx.now() + self.config.master.stop_timeout.0,
                };
            }
        }
    }

    pub(super) fn abort_reload(&mut self, why: String) {
        let Some(State::Reloading(mut r)) =
            self.leave(|s| matches!(s, State::Reloading(_)), State::Running)
        else {
            return;
        };
        let mut rolled_back = String::new();
        if let Some(roll) = r.rolling.take() {
            rolled_back = self.roll_back(roll, r.generation);
        } else {
            for w in &mut self.workers {
                if w.generation == r.generation {
                    let _ = self.fx.kill(w.pid, Signal::SIGKILL);
                    w.state = WorkerState::Stopping;
                }
            }
        }
        let msg = format!(
            "reload failed, generation {} keeps serving: {why}{rolled_back}",
            self.generation
        );
        self.reload_failed(&msg, r.waiters);
    }
}
