//! Connections that move: a draining worker's connections go to a worker of the next
//! generation (through the master, or to the new master at a binary upgrade) with
//! their socket and, when the service can suspend them, their state. One subsystem,
//! two sides, in this folder:
//!
//! - `outgoing.rs`, the draining worker's side. A reload can leave thousands of idle
//!   or between-request connections on an old worker. They wait their turn
//!   (`order.rs`), still served here; in step 4 of the loop each in turn is suspended
//!   at a quiescent point (`try_move`: the loop asks after every exchange, so a busy
//!   connection moves at its next quiescent point), taken out of this worker's epoll
//!   set and queued, a batch at a time, and the queue is flushed, 64 fds per message,
//!   until the channel is full, and again when epoll reports it writable (EPOLLOUT
//!   interest only while something waits).
//! - `incoming.rs`, the adopting worker's side: `adopt` resumes each connection with
//!   its service's `resume` (`restore`); a state the new service refuses goes back to
//!   the worker that suspended it (`ToMaster::Refused`, then a `Keep`), which resumes it
//!   with its own code and serves it to the end (pinned: never offered again). What
//!   the master cannot place comes back the same way (`keep`) and stays under the
//!   drain rules: served until the client leaves or `drain_timeout` ends it; so does
//!   what is queued when the channel to the master fails.
//!
//! What travels: the client socket, a proxy's upstream socket (both in one *bundle*: a
//! Unix socket whose receive queue holds the two fds, so the master, which moves one fd
//! per record, moves the pair as one), the handler's state and version, the input it
//! had not consumed, its timer and its idle clock. Output never travels: the loop only
//! asks once it has all been sent. The words (move, suspend, adopt, keep, refuse,
//! settle, pinned) are the lexicon of `docs/architecture.md`.

mod incoming;
mod lanes;
mod order;
mod outgoing;
#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::channel::{ConnQueue, Handed, HandoffCounts, ToMaster};

pub(in crate::worker) use lanes::TOKEN_LANE;
pub(in crate::worker) use order::MoveOrder;

/// How often a drained worker looks whether the master has read its last hand-overs.
pub(super) const SETTLE_CHECK: Duration = Duration::from_millis(10);

/// Most channel messages one loop turn reads (at most 64 connections each). Without a
/// bound, a worker adopting from a master that keeps its channel full reads for as
/// long as the master sends: on a busy box with a million connections moving, long
/// enough to miss its heartbeats and be killed by the watchdog as hung.
pub(in crate::worker) const CHANNEL_TURN: usize = 32;

/// Most connections one loop turn adopts (`ToWorker::Adopt`, read in the turn's
/// "other work" step); the rest wait in the channel (level-triggered) for the next
/// turn. A turn of 32 full messages restored 2 048 connections while this worker's
/// own clients waited for the next epoll; 256 (~4 messages, a few ms) keeps their
/// round trips short during a move and costs the move one epoll_wait per 256.
pub(in crate::worker) const ADOPT_TURN: usize = 256;

/// Connections suspended at a drain between two looks at the heartbeat's due time
/// (see `beat_if_due`).
pub(in crate::worker) const BEAT_EVERY: usize = 256;

/// A worker's hand-over in progress.
#[derive(Debug, Default)]
pub(in crate::worker) struct Handoff {
    /// Connections waiting for their turn, still served here (see `move_order`).
    pub(in crate::worker) order: MoveOrder,
    /// Connections taken out for the hand-over, not yet sent (at most about a batch
    /// beyond what the channel takes).
    pub(in crate::worker) queue: ConnQueue,
    /// Connections were queued since the last flush.
    pub(in crate::worker) dirty: bool,
    /// EPOLLOUT interest on the channel is on (only while the queue is not empty).
    want_write: bool,
    /// The channel reported writable.
    pub(in crate::worker) writable: bool,
    pub(in crate::worker) counts: HandoffCounts,
    /// The counts last told to the master and the log.
    reported: HandoffCounts,
    /// A `HandoffSettle` timer is pending.
    pub(in crate::worker) settle_armed: bool,
    /// Sends the kernel deferred (too many fds in flight), for the log.
    pub(in crate::worker) deferred: u64,
    /// Connections sent to the master (hand-overs, refusals) with their fds: only
    /// then must the worker see its channel read before it exits.
    pub(in crate::worker) via_master: u64,
    /// Suspended connections handed over that the new generation may still refuse:
    /// neither a refusal (`Keep`) nor word that they were taken (`Settled`) came back
    /// yet. A draining worker does not exit while some are out (until
    /// `drain_timeout`): a refusal must find it alive to serve the connection.
    pub(in crate::worker) unsettled: u64,
    /// When a heartbeat sent from inside a long turn (`beat_if_due`) is next due.
    next_beat: Option<Instant>,
    /// Lanes to (or from) other workers, over which connections move without the
    /// master (`lanes.rs`).
    pub(in crate::worker) lanes: lanes::Lanes,
    /// Messages that found the channel full (of hand-overs) and must not be dropped: a
    /// heartbeat (without it the watchdog takes a busy worker for hung) and
    /// `HandoffDone` (the generation's moved/kept/closed counts). Sent before the next
    /// hand-over.
    pub(in crate::worker) owed: Vec<ToMaster>,
}

impl Handoff {
    /// Nothing is waiting to be sent: a draining worker may exit.
    pub(in crate::worker) fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.owed.is_empty()
            && self.order.is_empty()
            && self.lanes.is_idle()
    }

    /// Whether step 4 has sending to do.
    pub(in crate::worker) fn wants_flush(&self) -> bool {
        !self.is_idle() && (self.dirty || self.writable)
    }

    /// Connections wait to be sent (EPOLLOUT wanted while the channel is full).
    fn sending(&self) -> bool {
        !self.queue.is_empty() || !self.order.is_empty()
    }

    pub(in crate::worker) fn counts(&self) -> HandoffCounts {
        self.counts
    }
}

/// A suspended connection whose origin is this worker (a refusal would come here).
pub(super) fn suspended_by_me(h: &Handed) -> bool {
    let me = crate::os::process::pid().as_raw() as u32;
    h.moved.as_ref().is_some_and(|m| m.origin == me)
}

/// Adopted suspended connections per origin worker (few origins per batch).
#[derive(Default)]
pub(super) struct Origins(Vec<(u32, u64)>);

impl Origins {
    pub(super) fn add(&mut self, origin: u32) {
        match self.0.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, n)) => *n += 1,
            None => self.0.push((origin, 1)),
        }
    }
}

/// The client's IP address (None for a Unix-socket client).
pub(in crate::worker) fn peer_ip(fd: &OwnedFd) -> Option<std::net::IpAddr> {
    crate::os::net::peer_ip(fd.as_fd())
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
