//! Step 1 of the loop: wait on signals, worker channels, control clients and the
//! upgrade's pipe and pidfd, and collect what happened, without acting on it.
//!
//! What is collected becomes jobs (signals, control requests, the upgrade's news) and
//! worker reports; the loop orders and handles them after. The one thing pumped here
//! is connection hand-over traffic (fds passing through the master between workers
//! and masters): it is data, not a decision, and it must keep flowing while the
//! master holds few enough fds.

use super::{ChannelError, Command, Job, Master, Pid, Signal, State, ToMaster, WorkerState};
use crate::os::master::{poll, PollFlags};
use crate::os::signals;
use std::os::fd::AsFd;
use tracing::{error, info, warn};

/// Messages read from one worker's channel in one turn: with 56 workers streaming
/// hand-overs, reading each until it is empty made one turn last seconds, and
/// exits, control requests and the watchdog all waited for it. The channel is
/// polled level-triggered, so what is left is read next turn.
pub(super) const MASTER_CHANNEL_TURN: usize = 64;

/// How much of a worker's channel to read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reading {
    /// One turn's share: bounded, and no hand-overs while the master holds enough fds.
    Turn,
    /// Everything, regardless of the bound: the worker has exited, and what it left
    /// in its channel (its last hand-overs, its `HandoffDone`) must not be dropped
    /// with the channel.
    All,
}

/// One loop iteration's harvest.
#[derive(Default)]
pub(super) struct Collected {
    /// What to do: signals, control requests and the upgrade's news, unordered.
    pub(super) jobs: Vec<Job>,
    /// What the workers reported (ready, heartbeats, counters...), by pid.
    pub(super) heard: Vec<(Pid, ToMaster)>,
}

impl Master {
    /// Waits until something happens or the nearest deadline, then reads it all.
    /// Control requests are only collected here, never acted on: `handle` orders them
    /// with the signals of the same batch.
    pub(super) fn collect(&mut self) -> Collected {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(self.fx.now()));
        let mut out = Collected::default();
        let mut ready_workers = Vec::new();
        let mut ready_clients = Vec::new();
        let mut xfer_ready = Vec::new();
        let (sig_ready, ctl_ready, upgrade_ready, upgrade_gone) = {
            let mut fds = Vec::with_capacity(2 + self.workers.len() + self.ctl.clients.len());
            if let Some(s) = &self.signals {
                fds.push((s.as_fd(), PollFlags::POLLIN));
            }
            let ctl_index = fds.len();
            let accepting = self.ctl.paused_until.is_none();
            if let Some(c) = self.ctl.server.as_ref().filter(|_| accepting) {
                fds.push((c.fd(), PollFlags::POLLIN));
            }
            let workers_at = fds.len();
            let in_flight = self.handoff_in_flight();
            for w in &self.workers {
                // A closed channel would report POLLHUP forever until the exit is
                // reaped; SIGCHLD will tell us about that worker instead.
                let mut flags = if w.channel_closed || self.handoff_paused(w, in_flight) {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLIN
                };
                if !w.channel_closed && w.handoff.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push((w.channel.as_fd(), flags));
            }
            let upgrade_at = fds.len();
            if let State::Upgrading(u) = &self.state {
                fds.push((u.pipe_fd(), PollFlags::POLLIN));
                fds.push((u.pidfd.as_fd(), PollFlags::POLLIN));
            }
            let xfer_at = fds.len();
            let links = self.up.xfer.pollable();
            for (_, fd, write) in &links {
                let mut flags = PollFlags::POLLIN;
                if *write {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push((*fd, flags));
            }
            let clients_at = fds.len();
            for (_, c) in &self.ctl.clients {
                let mut flags = PollFlags::empty();
                if c.wants_read() {
                    flags |= PollFlags::POLLIN;
                }
                if c.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push((c.fd(), flags));
            }
            let revents = match poll(&fds, timeout) {
                Ok(r) => r,
                Err(e) => {
                    error!("{e}");
                    return out;
                }
            };
            let fired = |k: usize| !revents[k].is_empty();
            for (k, (side, _, _)) in links.iter().enumerate() {
                if fired(xfer_at + k) {
                    xfer_ready.push(*side);
                }
            }
            for (i, k) in (workers_at..upgrade_at).enumerate() {
                if fired(k) {
                    ready_workers.push(self.workers[i].pid);
                }
            }
            for (i, r) in revents[clients_at..].iter().enumerate() {
                if !r.is_empty() {
                    let hup = r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
                    ready_clients.push((self.ctl.clients[i].0, hup));
                }
            }
            (
                self.signals.is_some() && fired(0),
                self.ctl.server.is_some() && accepting && fired(ctl_index),
                upgrade_at < xfer_at && fired(upgrade_at),
                upgrade_at + 1 < xfer_at && fired(upgrade_at + 1),
            )
        };
        if sig_ready {
            if let Some(s) = &self.signals {
                for sig in s.drain() {
                    if sig != Signal::SIGCHLD {
                        info!("received {}", signals::name(sig));
                    }
                    let cmd = match Command::from_signal(sig) {
                        // Orchestrators send SIGTERM and wait: let them drain.
                        Some(Command::FastStop)
                            if sig == Signal::SIGTERM && self.config.master.graceful_sigterm =>
                        {
                            Some(Command::GracefulStop)
                        }
                        other => other,
                    };
                    out.jobs.extend(cmd.map(Job::signal));
                }
            }
        }
        for side in xfer_ready {
            self.xfer_read(side);
        }
        for pid in ready_workers {
            out.heard.extend(
                self.read_worker(pid, Reading::Turn)
                    .into_iter()
                    .map(|m| (pid, m)),
            );
        }
        for (ticket, hup) in ready_clients {
            out.jobs.extend(self.serve_client(ticket, hup));
        }
        if ctl_ready {
            out.jobs.extend(self.accept_clients());
        }
        if upgrade_gone {
            out.jobs.push(Job::signal(Command::UpgradeExited));
        }
        if upgrade_ready {
            out.jobs.push(Job::signal(Command::UpgradeReported));
        }
        out
    }

    /// Reads what a worker has sent (hand-overs only while the master holds few enough
    /// fds, and in a turn at most `MASTER_CHANNEL_TURN` messages), and sends what is
    /// queued for it. Returns its reports.
    ///
    /// Any message counts as hearing from the worker: a draining worker's heartbeat can
    /// find its channel full of hand-overs and be dropped, but a worker whose
    /// hand-overs keep arriving is running its loop, not hung.
    #[must_use = "what the worker said must be recorded"]
    pub(super) fn read_worker(&mut self, pid: Pid, how: Reading) -> Vec<ToMaster> {
        let mut heard = Vec::new();
        let Some(i) = self.worker_index(pid) else {
            return heard;
        };
        self.flush_handoff(i);
        let mut budget = match how {
            Reading::Turn => MASTER_CHANNEL_TURN,
            Reading::All => usize::MAX,
        };
        loop {
            if how == Reading::Turn
                && self.handoff_paused(&self.workers[i], self.handoff_in_flight())
            {
                break;
            }
            if budget == 0 {
                break;
            }
            budget -= 1;
            let got = self.workers[i].channel.recv_fds::<ToMaster>();
            if let Ok(Some(_)) = got {
                self.workers[i].last_heartbeat = self.fx.now();
            }
            match got {
                Ok(Some((ToMaster::Handoff { conns }, fds))) => {
                    if conns.len() != fds.len() {
                        warn!(
                            pid = pid.as_raw(),
                            described = conns.len(),
                            fds = fds.len(),
                            "hand-over message with mismatched fds; closing the unmatched"
                        );
                    }
                    self.forward(Some(i), conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::Refused { conns }, fds))) => {
                    self.refused(conns.into_iter().zip(fds).collect());
                }
                Ok(Some((ToMaster::Settled { origins }, _))) => self.settle(origins),
                Ok(Some((ToMaster::HandoffDone(counts), _))) => {
                    let w = &self.workers[i];
                    self.gens.counts(w.generation, w.pid.as_raw(), counts);
                    self.handoff_done(i, counts);
                    self.metrics.handoff_done(pid.as_raw(), counts);
                    for (t, o) in self.faults.handed_over(pid, counts.handed) {
                        self.answer_fault(t, o);
                    }
                }
                Ok(Some((msg, _))) => heard.push(msg),
                Ok(None) => break,
                // EOF: the worker is exiting; SIGCHLD tells the rest.
                Err(ChannelError::Closed) => {
                    self.handoff_channel_closed(i);
                    return heard;
                }
                Err(e) => {
                    warn!(pid = pid.as_raw(), "bad message from worker: {e}");
                    break;
                }
            }
        }
        self.flush_handoff(i);
        heard
    }

    /// Step 2: what the workers reported becomes the master's view of them. True when
    /// a heartbeat came (its memory and limits are looked at by `Command::Recycle`).
    pub(super) fn record(&mut self, heard: Vec<(Pid, ToMaster)>) -> bool {
        let mut heartbeat = false;
        for (pid, msg) in heard {
            heartbeat |= matches!(msg, ToMaster::Heartbeat(_));
            if let Some(i) = self.worker_index(pid) {
                self.worker_message(i, msg);
            }
        }
        heartbeat
    }

    fn worker_message(&mut self, i: usize, msg: ToMaster) {
        let w = &mut self.workers[i];
        match msg {
            ToMaster::Ready => {
                let now = self.fx.now();
                w.last_heartbeat = now;
                if w.state == WorkerState::Starting {
                    w.state = WorkerState::Ready;
                    info!(
                        slot = w.slot,
                        pid = w.pid.as_raw(),
                        generation = w.generation,
                        "worker ready"
                    );
                    let (slot, generation, pid) = (w.slot, w.generation, w.pid);
                    if generation == self.generation {
                        // Workers still moving connections out get a lane to it (a
                        // respawn after a new worker died mid-move).
                        self.wire_lanes();
                        for (t, o) in self.faults.ready(slot, generation, pid, now) {
                            self.answer_fault(t, o);
                        }
                    }
                }
            }
            ToMaster::FaultOver { note } => {
                let pid = w.pid;
                info!(
                    pid = pid.as_raw(),
                    "worker survived an injected fault: {note}"
                );
                for (t, o) in self.faults.survived(pid, self.fx.now()) {
                    self.answer_fault(t, o);
                }
            }
            ToMaster::Escaped { attempts } => {
                let pid = w.pid;
                let open = attempts.iter().filter(|a| !a.blocked).count();
                info!(
                    pid = pid.as_raw(),
                    "worker tried {} escapes: {open} not blocked",
                    attempts.len()
                );
                for (t, mut o) in self.faults.survived(pid, self.fx.now()) {
                    o.attempts = Some(attempts.clone());
                    self.answer_fault(t, o);
                }
            }
            ToMaster::Heartbeat(stats) => {
                w.last_heartbeat = self.fx.now();
                w.stats = stats;
            }
            ToMaster::Counters(c) => self.metrics.counters(w.pid.as_raw(), c),
            ToMaster::MetricsRequest { id } => self.answer_metrics(i, id),
            ToMaster::Publish {
                publisher,
                seq,
                topic,
                message,
            } => self.publish_to_successor(publisher, seq, topic, message),
            ToMaster::LaneAdopted { totals } => self.lane_adopted(i, totals),
            ToMaster::Handoff { .. }
            | ToMaster::Refused { .. }
            | ToMaster::Settled { .. }
            | ToMaster::HandoffDone(_) => {}
        }
    }
}
