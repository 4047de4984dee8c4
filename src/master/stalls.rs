//! Nobody waits on a stalled worker: the master watches each reuseport slot's listen
//! queue, and when connections have waited in one for `STALLED_AFTER` it lends that
//! slot's sockets to a healthy worker (`ToWorker::Lend`), which accepts on them too,
//! until the slot's own worker is heard from again (`ToWorker::Unlend`).
//!
//! A queue that held connections at every check for `STALLED_AFTER` is a symptom,
//! not yet a stall: a flood of connects on a loaded box keeps healthy workers' queues
//! non-empty too (measured: lends churned during `bench/move_latency.sh`'s 40 000
//! connects/s). So its worker must also be unable to take it: none ready (a respawn
//! waiting out its backoff), stopped (state `T` in /proc, seen at once), or silent past
//! one and a half heartbeats (stuck in a long turn). Heartbeats alone come once a
//! second (more often would cost every worker a message per beat all the time), too
//! late for a stopped worker's clients; the queue and /proc see that within ~100 ms.
//!
//! Why lend rather than steer around it (a reuseport BPF program without the stalled
//! socket): the connections already queued on the stalled socket would still wait,
//! and only a process holding that socket can take them out; a helper accepting on it
//! serves both the queued ones and those still arriving, through the normal accept
//! path (TLS, PROXY headers, limits and counts all apply), and needs no program that
//! must agree with `steer`'s. The check is one `poll` over the reuseport sockets every
//! `CHECK_EVERY`, only while there are any.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::channel::ToWorker;
use crate::os::master::{poll, Pid, PollFlags};

use super::table::WorkerState;
use super::{Master, State};

/// How often the listen queues are looked at.
pub const CHECK_EVERY: Duration = Duration::from_millis(40);
/// How long connections may wait in a slot's queue before its sockets are lent.
pub const STALLED_AFTER: Duration = Duration::from_millis(80);

/// What the master knows of one slot's queue.
#[derive(Clone, Copy, Default)]
struct Watch {
    /// Since when every check found connections waiting.
    waiting_since: Option<Instant>,
    /// Lent to this worker, at this instant.
    lent: Option<(Pid, Instant)>,
}

/// The watch over every reuseport slot.
#[derive(Default)]
pub struct Stalls {
    next: Option<Instant>,
    slots: Vec<Watch>,
}

impl Stalls {
    /// When the queues are looked at next (None: no reuseport listener).
    pub fn next_check(&self) -> Option<Instant> {
        self.next
    }
}

impl Master {
    /// Looks at the reuseport queues when due; lends and takes back slots' sockets.
    pub(super) fn check_stalls(&mut self, now: Instant) {
        let n = self.config.master.workers.count();
        let watched = self.listeners.iter().any(|l| l.slot.is_some_and(|s| s < n));
        if !watched || matches!(self.state, State::Stopping { .. }) {
            self.stalls.next = None;
            self.end_lends(|_| true);
            return;
        }
        if self.stalls.next.is_some_and(|t| t > now) {
            return;
        }
        self.stalls.next = Some(now + CHECK_EVERY);
        self.stalls.slots.resize(n, Watch::default());
        let waiting = self.waiting_slots(n);
        for (slot, &waiting) in waiting.iter().enumerate() {
            let w = &mut self.stalls.slots[slot];
            if !waiting {
                w.waiting_since = None;
            } else if w.waiting_since.is_none() {
                w.waiting_since = Some(now);
            }
        }
        // A lend ends once the slot's worker is heard from after it began (or its
        // helper is no longer a serving worker of this generation).
        let generation = self.generation;
        let owner_back = |m: &Master, slot: usize, at: Instant| {
            m.workers.iter().any(|w| {
                w.slot == slot
                    && w.generation == generation
                    && w.state == WorkerState::Ready
                    && w.last_heartbeat > at
            })
        };
        let ending: Vec<usize> = (0..n)
            .filter(|&s| match self.stalls.slots[s].lent {
                Some((helper, at)) => owner_back(self, s, at) || !self.serving(helper),
                None => false,
            })
            .collect();
        self.end_lends(|s| ending.contains(&s));
        for slot in 0..n {
            let w = self.stalls.slots[slot];
            let stalled = w
                .waiting_since
                .is_some_and(|t| now.saturating_duration_since(t) >= STALLED_AFTER);
            if stalled && w.lent.is_none() && self.unresponsive(slot, now) {
                self.lend(slot, &waiting, now);
            }
        }
    }

    /// Which slots have connections waiting in any of their sockets.
    fn waiting_slots(&self, n: usize) -> Vec<bool> {
        let mine: Vec<(usize, BorrowedFd<'_>)> = self
            .listeners
            .iter()
            .filter_map(|l| l.slot.filter(|&s| s < n).map(|s| (s, l.fd.as_fd())))
            .collect();
        let fds: Vec<(BorrowedFd<'_>, PollFlags)> = mine
            .iter()
            .map(|(_, fd)| (*fd, PollFlags::POLLIN))
            .collect();
        let mut waiting = vec![false; n];
        if let Ok(revents) = poll(&fds, Some(Duration::ZERO)) {
            for ((slot, _), ev) in mine.iter().zip(revents) {
                waiting[*slot] |= ev.contains(PollFlags::POLLIN);
            }
        }
        waiting
    }

    /// Whether slot `slot`'s queue waits because its worker cannot take it: there is
    /// no ready one (a respawn waiting out its backoff), or it is stopped (SIGSTOP,
    /// a debugger: state `T` in /proc, seen at once), or it missed a heartbeat (stuck
    /// in a long turn: seen after `heartbeat_interval` and a half). A queue that is
    /// merely busy (a connection flood faster than the worker accepts, or a worker
    /// at `max_connections` leaving it alone on purpose) is its own worker's.
    fn unresponsive(&self, slot: usize, now: Instant) -> bool {
        let beat = self.config.worker.heartbeat_interval.0;
        let max = self.config.worker.max_connections as u64;
        let owner = self.workers.iter().find(|w| {
            w.slot == slot && w.generation == self.generation && w.state == WorkerState::Ready
        });
        let Some(w) = owner else {
            return true;
        };
        let stopped =
            crate::os::procfs::stat(w.pid.as_raw()).is_ok_and(|s| matches!(s.state, 'T' | 't'));
        let silent = now.saturating_duration_since(w.last_heartbeat) > beat + beat / 2;
        stopped || (silent && w.stats.connections < max)
    }

    /// A ready worker of the current generation.
    fn serving(&self, pid: Pid) -> bool {
        self.workers.iter().any(|w| {
            w.pid == pid && w.generation == self.generation && w.state == WorkerState::Ready
        })
    }

    /// Lends `slot`'s sockets to the least loaded ready worker of another slot whose
    /// own queue is empty, recently heard from, and whose channel has nothing queued.
    fn lend(&mut self, slot: usize, waiting: &[bool], now: Instant) {
        let generation = self.generation;
        // Not a worker that may be stalled itself (all stopped, say): one heard from
        // within two heartbeats.
        let heard_within = self.config.worker.heartbeat_interval.0 * 2;
        let helper = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w.generation == generation
                    && w.state == WorkerState::Ready
                    && w.slot != slot
                    && !waiting.get(w.slot).copied().unwrap_or(true)
                    && self
                        .stalls
                        .slots
                        .get(w.slot)
                        .is_some_and(|s| s.lent.is_none())
                    && now.saturating_duration_since(w.last_heartbeat) <= heard_within
                    && !w.handoff.wants_write()
            })
            .min_by_key(|(_, w)| w.stats.connections)
            .map(|(i, _)| i);
        let Some(i) = helper else {
            return;
        };
        let sockets: Vec<_> = self
            .listeners
            .iter()
            .filter(|l| l.slot == Some(slot))
            .collect();
        let listens = sockets.iter().map(|l| l.addr.to_string()).collect();
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|l| l.fd.as_fd()).collect();
        let w = &self.workers[i];
        if let Err(e) = w.channel.send_fds(&ToWorker::Lend { slot, listens }, &fds) {
            // A full channel: the next check tries again.
            tracing::debug!(slot, "could not lend a stalled slot's sockets: {e}");
            return;
        }
        let waited = self.stalls.slots[slot]
            .waiting_since
            .map_or(0, |t| now.saturating_duration_since(t).as_millis());
        let owner = self
            .workers
            .iter()
            .find(|o| o.slot == slot && o.generation == generation)
            .map(|o| o.pid.as_raw());
        warn!(
            slot,
            owner,
            helper = w.pid.as_raw(),
            "slot {slot}'s worker has left connections waiting for {waited} ms or more (stopped, \
             stuck or gone): worker {} accepts on its sockets until it is heard from",
            w.pid.as_raw()
        );
        self.stalls.slots[slot].lent = Some((w.pid, now));
        self.metrics.own.stall_lends += 1;
    }

    /// Takes back the lent sockets of the slots `which` picks.
    fn end_lends(&mut self, which: impl Fn(usize) -> bool) {
        for slot in 0..self.stalls.slots.len() {
            if !which(slot) {
                continue;
            }
            let Some((helper, _)) = self.stalls.slots[slot].lent.take() else {
                continue;
            };
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == helper) {
                if !w.channel_closed {
                    let _ = w
                        .handoff
                        .send_or_queue(&w.channel, ToWorker::Unlend { slot });
                }
            }
            info!(
                slot,
                "slot {slot}'s worker is serving again: its sockets are taken back"
            );
        }
    }
}
