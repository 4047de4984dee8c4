//! Stopping: graceful and fast stops, SIGWINCH parking, and the master's exit.

use super::{drain, IdlePolicy, Master, Signal, State, ToWorker, WorkerState};
use crate::master::effects::Notice;
use crate::master::sockets;
use crate::os::process;
use tracing::{info, warn};

/// The answer to a reload that a stop overtook.
pub(super) const STOPPING_RELOAD: &str = "the master is stopping; reload not done";

impl Master {
    /// The exit code, once the master is done.
    pub(super) fn finished(&mut self) -> Option<i32> {
        if self.up.predecessor.as_ref().is_some_and(|p| p.gone()) {
            self.up.predecessor = None;
        }
        match self.state {
            State::Stopping { deadline, .. } if self.workers.is_empty() => {
                // Connections on their way to the new master leave with it, not us.
                if self.up.xfer.sending_to_new() && self.fx.now() < deadline {
                    return None;
                }
                // Exiting would let systemd SIGKILL the old master's connections.
                if let Some(p) = &self.up.predecessor {
                    if self.fx.now() < deadline {
                        return None;
                    }
                    warn!(
                        pid = p.pid().as_raw(),
                        "exiting while the old master of the last upgrade still drains"
                    );
                }
                Some(self.host.exit_code)
            }
            _ => None,
        }
    }

    /// Stops: gracefully (drain, with `idle` for idle connections) or fast.
    pub(super) fn stop(&mut self, graceful: bool, idle: IdlePolicy) {
        let now = self.fx.now();
        if let State::Stopping { graceful: g, .. } = self.state {
            if graceful || !g {
                return; // already stopping at least this hard
            }
        }
        if let State::Reloading(_) = self.state {
            self.abort_reload("the master is stopping".into());
        }
        if let State::Upgrading(_) = self.state {
            self.rollback_upgrade("the master is stopping".into());
        }
        // Requests queued behind the reload or upgrade just cut short will not run.
        let queued = self.waiting.reload.take().unwrap_or_default();
        self.answer_all(queued, false, STOPPING_RELOAD);
        let refused = std::mem::take(&mut self.waiting.upgrade);
        self.answer_all(refused, false, "the master is stopping; upgrade not done");
        if !self.up.handed_over {
            self.fx.notify(Notice::Stopping);
        }
        let timeout = if graceful {
            self.config.master.drain_timeout.0
        } else {
            self.config.master.stop_timeout.0
        };
        if self.up.handed_over && graceful {
            // Not a shutdown of the service: the new master serves already, and an
            // operator reading "graceful stop" here would think otherwise.
            info!(
                workers = self.workers.len(),
                "handing over to the new master: {} within {:?}, then this master exits",
                match idle {
                    IdlePolicy::Handoff =>
                        "moving the connections that can move to it, draining the rest",
                    _ => "draining this master's connections",
                },
                timeout
            );
        } else {
            info!(
                workers = self.workers.len(),
                "{} stop: {} within {:?}",
                if graceful { "graceful" } else { "fast" },
                if graceful {
                    "draining connections"
                } else {
                    "closing everything"
                },
                timeout
            );
        }
        self.enter(State::Stopping {
            graceful,
            deadline: now + timeout,
        });
        if let Some(p) = &self.up.predecessor {
            // The old master of the last upgrade drains on its own deadline; a fast
            // stop is for it too.
            info!(
                pid = p.pid().as_raw(),
                "the old master of the last upgrade still drains; exiting after it"
            );
            if !graceful {
                p.stop_fast();
            }
        }
        // Closing our copies now makes new connections fail fast once the workers
        // close theirs, instead of piling up in a backlog nobody will accept from.
        // Our Unix socket files go with them (not after a hand-over: the new master
        // serves on them).
        if !self.up.handed_over {
            sockets::remove_paths(&self.listeners, &[]);
        }
        self.listeners.clear();
        for w in &mut self.workers {
            self.gens.draining(w.generation, now);
            if graceful {
                if !matches!(
                    w.state,
                    WorkerState::Draining { .. } | WorkerState::Stopping
                ) {
                    drain(&mut *self.fx, w, now + timeout, idle);
                }
            } else if !matches!(w.state, WorkerState::Stopping) {
                let _ = w.channel.send(&ToWorker::Stop);
                let _ = self.fx.kill(w.pid, Signal::SIGTERM);
                w.state = WorkerState::Stopping;
            }
        }
    }

    pub(super) fn park_workers(&mut self) {
        if !matches!(self.state, State::Running) {
            warn!("SIGWINCH ignored: the master is busy");
            return;
        }
        info!("SIGWINCH: draining all workers; the master keeps the listeners (send SIGHUP to start workers again)");
        for s in &mut self.slots {
            s.parked = true;
        }
        let deadline = self.fx.now() + self.config.master.drain_timeout.0;
        for w in &mut self.workers {
            if matches!(w.state, WorkerState::Starting | WorkerState::Ready) {
                drain(&mut *self.fx, w, deadline, IdlePolicy::Close);
            }
        }
    }

    /// Kills every worker at once (startup failure) and reaps them.
    pub(super) fn shutdown_now(&mut self) {
        for w in &self.workers {
            let _ = self.fx.kill(w.pid, Signal::SIGKILL);
        }
        for w in self.workers.drain(..) {
            process::wait_child(w.pid);
        }
        self.cleanup();
    }

    pub(super) fn cleanup(&mut self) {
        let stopped = std::mem::take(&mut self.waiting.stop);
        self.answer_all(stopped, true, "stopped");
        // Nobody leaves with EOF: whoever still waits hears that the master is gone.
        let waiting: Vec<u64> = self
            .ctl
            .clients
            .iter()
            .filter(|(_, c)| c.waiting())
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            self.answer(
                t,
                false,
                "the master exited before this request was done".into(),
            );
        }
        self.flush_clients();
        if let Some(c) = self.ctl.server.take() {
            c.remove();
        }
        if !self.up.handed_over {
            sockets::remove_paths(&self.listeners, &[]);
        }
        if let Some(p) = self.host.pid_file.take() {
            p.remove();
        }
        self.final_share();
        info!("master exiting");
    }
}
