//! The master's side of a move: connections a draining worker gives up are
//! forwarded, in batches and with backpressure, to ready workers of the current
//! generation, spread over all of them.
//!
//! The master holds a handed-over fd only while it is in flight: it is queued on the
//! target worker's record and sent as soon as that worker's channel takes it
//! (POLLOUT while a queue is not empty). The fds in flight are bounded: above
//! `MAX_IN_FLIGHT` the master stops reading draining workers' channels, so the
//! pressure travels back to them (their sends block and they queue) instead of
//! filling the master's fd table. With no ready worker to give a connection to, the
//! master returns it to the worker that handed it over (`ToWorker::Keep`), where it
//! stays under the drain rules; only a connection whose both ends are gone is closed.
//!
//! Two things matter at scale (a million connections over 56 workers). Connections
//! are spread in runs of at least `SPREAD_RUN`, not one by one, so that a target's
//! messages carry many fds each (one fd per message would cost the master a `sendmsg`
//! per connection, and fill a worker's channel after ~280 of them). And a draining
//! worker whose channel the master leaves unread has its heartbeats waiting unread
//! there: that silence is the master's own doing, and must not make the watchdog kill
//! the worker (with every connection it still holds) as hung.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::channel::{ConnQueue, Handed, HandoffCounts, ToWorker};

use super::table::{WorkerRecord, WorkerState};
use super::Master;

/// Most handed-over fds the master holds at once (its soft limit is ~20000, and a
/// single worker may hand over 10000).
pub const MAX_IN_FLIGHT: usize = 2048;

/// Fewest connections given to one target in a row when a batch is spread (unless
/// the batch is smaller).
pub const SPREAD_RUN: usize = 16;

/// A worker record's hand-over queues and counts.
#[derive(Debug)]
pub struct WorkerHandoff {
    /// The master that made it: a forked worker drops its inherited copy of the
    /// table, and must not report the master's queues as lost.
    owner: u32,
    /// Control messages (a drain) that found the channel full of hand-overs; they go
    /// first when it drains.
    control: VecDeque<ToWorker>,
    /// Bus links (`ToWorker::BusPeer`) and lane ends of an upgrade
    /// (`ToWorker::Lane`), each with its socket, that found the channel full; they
    /// go first when it drains.
    links: VecDeque<(ToWorker, OwnedFd)>,
    /// Connections for this worker to adopt.
    adopt: ConnQueue,
    /// Connections going back to this (draining) worker, and why.
    keep: ConnQueue,
    keep_reason: String,
    /// What became of the connections this worker handed over.
    forwarded: u64,
    returned: u64,
    closed: u64,
    /// Why the last ones could not be forwarded.
    last_problem: Option<String>,
    /// This worker moves its connections out at a reload: it gets lanes to the
    /// adopters (`lanes.rs`).
    pub moves_out: bool,
    /// The workers (pids) it has been given lanes to (ours, or at an upgrade the
    /// new master's).
    pub lanes_to: Vec<u32>,
    /// What it adopted over lanes from the old master's workers: the running totals
    /// it last reported (`ToMaster::LaneAdopted`), per sender pid.
    pub lane_adopted: Vec<(u32, u64)>,
}

impl Default for WorkerHandoff {
    fn default() -> WorkerHandoff {
        WorkerHandoff {
            owner: std::process::id(),
            control: VecDeque::new(),
            links: VecDeque::new(),
            adopt: ConnQueue::default(),
            keep: ConnQueue::default(),
            keep_reason: String::new(),
            forwarded: 0,
            returned: 0,
            closed: 0,
            last_problem: None,
            moves_out: false,
            lanes_to: Vec::new(),
            lane_adopted: Vec::new(),
        }
    }
}

impl WorkerHandoff {
    /// Connections the master holds for this worker.
    pub fn queued(&self) -> usize {
        self.adopt.len() + self.keep.len()
    }

    /// POLLOUT is needed on this worker's channel.
    pub fn wants_write(&self) -> bool {
        self.queued() > 0 || !self.control.is_empty() || !self.links.is_empty()
    }

    /// Sends a bus link now, or once what is queued ahead of it has gone: a link
    /// refused because the channel was full (a worker busy adopting a reload's
    /// connections, a starved one) would leave two workers deaf to each other's
    /// publishes for good. `Err` when the channel failed (the worker is exiting).
    pub fn send_link(
        &mut self,
        ch: &crate::channel::Channel,
        pid: u32,
        end: OwnedFd,
    ) -> io::Result<()> {
        self.send_with_fd(ch, ToWorker::BusPeer { pid }, end)
    }

    /// Sends `msg` with its socket now, or once what is queued ahead of it has gone
    /// (as `send_link`). `Err` when the channel failed.
    pub fn send_with_fd(
        &mut self,
        ch: &crate::channel::Channel,
        msg: ToWorker,
        end: OwnedFd,
    ) -> io::Result<()> {
        if self.links.is_empty() {
            match ch.send_fds(&msg, &[end.as_fd()]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
        self.links.push_back((msg, end));
        Ok(())
    }

    /// A new running total of what this worker adopted over a lane from `from`:
    /// what it adds to the last one.
    pub fn lane_adopted(&mut self, from: u32, total: u64) -> u64 {
        match self.lane_adopted.iter_mut().find(|(p, _)| *p == from) {
            Some((_, last)) => {
                let more = total.saturating_sub(*last);
                *last = (*last).max(total);
                more
            }
            None => {
                self.lane_adopted.push((from, total));
                total
            }
        }
    }

    /// Sends `msg` now, or, when the channel is full while the master is passing
    /// connections to this worker, right after what is ahead of it drains (a full
    /// channel must not turn a drain into the harsher SIGQUIT). `Err` otherwise.
    pub fn send_or_queue(&mut self, ch: &crate::channel::Channel, msg: ToWorker) -> io::Result<()> {
        if self.control.is_empty() {
            match ch.send(&msg) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.queued() > 0 => {}
                other => return other,
            }
        }
        self.control.push_back(msg);
        Ok(())
    }
}

impl WorkerHandoff {
    /// Queues a control message that must not be lost, to go out before the next
    /// connections (the caller flushes).
    pub fn owe(&mut self, msg: ToWorker) {
        self.control.push_back(msg);
    }

    /// `n` of this worker's connections went on (to the new master of an upgrade).
    pub fn note_forwarded(&mut self, n: u64) {
        self.forwarded += n;
    }

    /// Connections that come back to this worker to keep, and why.
    pub fn take_back(&mut self, conns: Vec<(Handed, OwnedFd)>, why: &str, n: u64) {
        self.returned += n;
        self.last_problem = Some(why.to_string());
        self.keep_reason = why.to_string();
        for (c, fd) in conns {
            self.keep.push(c, fd);
        }
    }
}

impl Drop for WorkerHandoff {
    fn drop(&mut self) {
        let n = self.queued();
        if n > 0 && self.owner == std::process::id() {
            warn!(
                connections = n,
                "a worker is gone with handed-over connections not yet delivered to it; they are closed"
            );
        }
    }
}

impl Master {
    /// Fds held for hand-overs, over all workers.
    pub(super) fn handoff_in_flight(&self) -> usize {
        let link = self.up.xfer.queued();
        self.workers
            .iter()
            .map(|w| w.handoff.queued())
            .sum::<usize>()
            + link
    }

    /// Whether to leave a worker's channel unread for now: it is draining (so it may
    /// send more hand-overs) and the master holds enough fds already.
    pub(super) fn handoff_paused(&self, w: &WorkerRecord, in_flight: usize) -> bool {
        in_flight >= MAX_IN_FLIGHT && matches!(w.state, WorkerState::Draining { .. })
    }

    /// Workers whose channel is left unread (`handoff_paused`) count as heard from
    /// now: their heartbeats wait behind hand-overs the master chose not to read yet.
    /// Called before the watchdog looks; once reading resumes, the usual limit runs
    /// from the last of these.
    ///
    /// And a worker that looks silent may only be unread: one master turn spent
    /// forwarding a draining worker's stream of hand-overs can outlast the watchdog's
    /// limit, with the other workers' heartbeats waiting on their channels. Those are
    /// read first, so that only a worker with nothing waiting is judged.
    pub(super) fn excuse_unread_heartbeats(&mut self, now: Instant, limit: Duration) {
        let in_flight = self.handoff_in_flight();
        let mut overdue = Vec::new();
        for k in 0..self.workers.len() {
            let w = &self.workers[k];
            if self.handoff_paused(w, in_flight) {
                self.workers[k].last_heartbeat = now;
            } else if !w.channel_closed
                && w.kill.is_none()
                && now.saturating_duration_since(w.last_heartbeat) >= limit
            {
                overdue.push(w.pid);
            }
        }
        // What they said is recorded now, before the watchdog judges them: a
        // heartbeat read here and left for the next turn's record step would not count.
        let mut heard = Vec::new();
        for pid in overdue {
            heard.extend(
                self.read_worker(pid, super::collect::Reading::Turn)
                    .into_iter()
                    .map(|m| (pid, m)),
            );
        }
        self.record(heard);
    }

    /// Workers that may adopt connections: ready, current generation, not on their way
    /// out, reachable.
    pub(super) fn adopters(&self, except: Option<usize>) -> Vec<usize> {
        let gen = self.generation;
        (0..self.workers.len())
            .filter(|&k| Some(k) != except)
            .filter(|&k| {
                let w = &self.workers[k];
                w.generation == gen
                    && w.state == WorkerState::Ready
                    && !w.recycling
                    && !w.channel_closed
            })
            .collect()
    }

    /// Connections handed over by worker `from` (or re-routed, `None`): spread over
    /// the adopters in turn; with none, back to `from`; with neither, closed.
    pub(super) fn forward(&mut self, from: Option<usize>, mut conns: Vec<(Handed, OwnedFd)>) {
        if conns.is_empty() {
            return;
        }
        // After a committed upgrade they go to the new master instead.
        if let Some(f) = from {
            if self.xfer_send(f, &mut conns) {
                return;
            }
        }
        let n = conns.len() as u64;
        let targets = self.adopters(from);
        if targets.is_empty() {
            let why = format!(
                "no ready worker of generation {} to adopt them",
                self.generation
            );
            match from.filter(|&f| !self.workers[f].channel_closed) {
                Some(f) => {
                    let h = &mut self.workers[f].handoff;
                    h.returned += n;
                    h.last_problem = Some(why.clone());
                    h.keep_reason = why;
                    for (c, fd) in conns {
                        h.keep.push(c, fd);
                    }
                    self.flush_handoff(f);
                }
                None => {
                    warn!(
                        connections = n,
                        "closing handed-over connections: {why}, and the worker that handed them over is gone"
                    );
                    if let Some(f) = from {
                        self.workers[f].handoff.closed += n;
                        let g = self.workers[f].generation;
                        self.gens.closed(g, n);
                    }
                }
            }
            return;
        }
        if let Some(f) = from {
            self.workers[f].handoff.forwarded += n;
        }
        self.spread(&targets, conns);
    }

    /// Queues `conns` on the `targets` in turn, in runs of at least `SPREAD_RUN` (the
    /// turn goes on from batch to batch, so the runs even out), and sends.
    fn spread(&mut self, targets: &[usize], conns: Vec<(Handed, OwnedFd)>) {
        let run = conns.len().div_ceil(targets.len()).max(SPREAD_RUN);
        for (k, (c, fd)) in conns.into_iter().enumerate() {
            if k % run == 0 {
                self.handoff_rr = self.handoff_rr.wrapping_add(1);
            }
            let t = targets[self.handoff_rr % targets.len()];
            self.workers[t].handoff.adopt.push(c, fd);
        }
        for &t in targets {
            self.flush_handoff(t);
        }
    }

    /// Connections from the old master of an upgrade, spread over our adopters; with
    /// none, handed back with the reason.
    #[allow(clippy::type_complexity)]
    pub(super) fn place(
        &mut self,
        conns: Vec<(Handed, OwnedFd)>,
    ) -> Result<(), (String, Vec<(Handed, OwnedFd)>)> {
        let targets = self.adopters(None);
        if targets.is_empty() {
            let why = format!(
                "the new master has no ready worker of generation {} to adopt them",
                self.generation
            );
            return Err((why, conns));
        }
        self.spread(&targets, conns);
        Ok(())
    }

    /// Sends what is queued for worker `i` as far as its channel takes it. A channel
    /// that fails (the worker is exiting) gets its connections re-routed.
    pub(super) fn flush_handoff(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if !w.handoff.wants_write() {
            return;
        }
        while let Some((link, end)) = w.handoff.links.front() {
            match w.channel.send_fds(link, &[end.as_fd()]) {
                Ok(()) => {
                    w.handoff.links.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(pid = w.pid.as_raw(), "cannot send {link:?}: {e}");
                    w.handoff.links.clear();
                    w.handoff.control.clear();
                    return self.handoff_channel_closed(i);
                }
            }
        }
        while let Some(msg) = w.handoff.control.front() {
            match w.channel.send(msg) {
                Ok(()) => {
                    w.handoff.control.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(pid = w.pid.as_raw(), "cannot send {msg:?}: {e}");
                    w.handoff.control.clear();
                    return self.handoff_channel_closed(i);
                }
            }
        }
        let done = w
            .handoff
            .adopt
            .flush(&w.channel, |conns| ToWorker::Adopt { conns });
        let mut failed = done.error;
        if failed.is_none() && w.handoff.adopt.is_empty() {
            let reason = w.handoff.keep_reason.clone();
            let kept = w.handoff.keep.flush(&w.channel, |conns| ToWorker::Keep {
                conns,
                reason: reason.clone(),
            });
            failed = kept.error;
        }
        if let Some(e) = failed {
            let pid = w.pid.as_raw();
            debug!(pid, "cannot pass connections to worker: {e}");
            self.handoff_channel_closed(i);
        }
    }

    /// Worker `i` can no longer be reached: what was queued for it to adopt goes to
    /// another adopter; what was going back to it is closed (it handed those over and
    /// is exiting, so nobody is left to serve them).
    pub(super) fn handoff_channel_closed(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.channel_closed = true;
        let adopt = w.handoff.adopt.take_all();
        let keep = w.handoff.keep.take_all();
        if !keep.is_empty() {
            w.handoff.closed += keep.len() as u64;
            self.gens.closed(w.generation, keep.len() as u64);
            warn!(
                pid = w.pid.as_raw(),
                connections = keep.len(),
                "closing connections the master could not forward: {}, and the worker that handed them over is gone",
                w.handoff.keep_reason
            );
        }
        self.forward(None, adopt);
    }

    /// Suspended connections the new generation's service could not resume: each goes
    /// back to the worker that suspended it (a `Keep`): one of ours, or, after an
    /// upgrade, one of the old master's (over the upgrade channel). Closed only when
    /// that worker is gone.
    pub(super) fn refused(&mut self, conns: Vec<(Handed, OwnedFd)>) {
        for (c, fd) in conns {
            let origin = c.moved.as_ref().map_or(0, |m| m.origin);
            let why = c
                .moved
                .as_ref()
                .and_then(|m| m.refused.clone())
                .unwrap_or_else(|| "refused by the new generation".into());
            let ours = self
                .workers
                .iter()
                .position(|w| w.pid.as_raw() as u32 == origin);
            let (c, fd) = match ours {
                Some(f) if !self.workers[f].channel_closed => {
                    let h = &mut self.workers[f].handoff;
                    h.returned += 1;
                    h.keep_reason = why;
                    h.keep.push(c, fd);
                    self.flush_handoff(f);
                    continue;
                }
                Some(_) => (c, fd),
                // Not one of ours: a worker of the old master we adopted it from.
                None => match self.xfer_refused(origin, &why, (c, fd)) {
                    Ok(()) => continue,
                    Err(back) => back,
                },
            };
            drop((c, fd));
            warn!(
                origin,
                "closing a refused connection: the worker that suspended it is gone"
            );
            self.gens.bounced(origin as i32, 1);
        }
    }

    /// Workers took suspended connections from these origins for good: an origin
    /// waits for that word (or the refusal) before it exits. Ours are told directly;
    /// the old master's through it.
    pub(super) fn settle(&mut self, origins: Vec<(u32, u64)>) {
        for (origin, n) in origins {
            let ours = self
                .workers
                .iter()
                .position(|w| w.pid.as_raw() as u32 == origin);
            match ours {
                Some(f) if !self.workers[f].channel_closed => {
                    self.workers[f].handoff.owe(ToWorker::Settled { n });
                    self.flush_handoff(f);
                }
                Some(_) => {}
                None => self.xfer_settled(origin as i32, n),
            }
        }
    }

    /// A draining worker finished a burst of hand-overs: both sides' counts, at info.
    pub(super) fn handoff_done(&mut self, i: usize, c: HandoffCounts) {
        let w = &self.workers[i];
        let h = &w.handoff;
        info!(
            pid = w.pid.as_raw(),
            generation = w.generation,
            handed = c.handed,
            kept = c.kept,
            closed = c.closed,
            forwarded = h.forwarded,
            returned = h.returned,
            not_forwarded_closed = h.closed,
            in_flight = self.handoff_in_flight(),
            "hand-over from worker done{}",
            h.last_problem
                .as_deref()
                .map(|p| format!("; could not forward some: {p}"))
                .unwrap_or_default()
        );
    }
}
