//! The master's part in push (`service::push`): it wires the workers' bus and
//! forwards `corral publish`, and is never on the path of a worker's publish.
//!
//! Wiring: when it forks a worker, the master makes one SOCK_SEQPACKET socketpair per
//! other live worker (of any generation) and sends one end to each of the two
//! (`ToWorker::BusPeer`, fd attached; queued behind a full channel, never refused),
//! then closes its copies once sent. The workers then talk
//! directly: a publish in a worker is one packet per peer, read by the peer's loop.
//! The master never reads or writes the bus, and never starts a thread for it.
//!
//! `corral publish` comes in over the control socket (mode 0600, `SO_PEERCRED`
//! checked), so the master forwards it to every live worker's channel itself
//! (`ToWorker::Publish`): an operator's publish is rare, costs the master one channel
//! message per worker whatever the number of subscribers, and needs no second way
//! into the workers that would have to be authenticated. Busy backends publish
//! through a service's own endpoint (the push example's `POST /publish/<topic>`),
//! inside the workers.

use tracing::{debug, warn};

use crate::channel::ToWorker;
use crate::os::fd;

use super::table::WorkerState;
use super::Master;

/// Longest message `corral publish` forwards (the control request is one line of at
/// most 4 KiB, JSON-escaped).
pub const MAX_CLI_MESSAGE: usize = 3072;

impl Master {
    /// Sends a message to every live worker (`corral publish`, or a publish of the old
    /// master's workers during an upgrade); returns to how many it went and failed.
    pub(super) fn forward_publish(
        &mut self,
        publisher: u64,
        seq: u64,
        topic: &str,
        message: Vec<u8>,
    ) -> (usize, usize) {
        let msg = ToWorker::Publish {
            publisher,
            seq,
            topic: topic.to_string(),
            message,
        };
        let (mut sent, mut failed) = (0, 0);
        for w in self.workers.iter_mut() {
            if w.channel_closed || matches!(w.state, WorkerState::Stopping) {
                continue;
            }
            match w.handoff.send_or_queue(&w.channel, msg.clone()) {
                Ok(()) => sent += 1,
                Err(e) => {
                    failed += 1;
                    debug!(pid = w.pid.as_raw(), "cannot forward a publish: {e}");
                }
            }
        }
        (sent, failed)
    }

    /// A publish of one of our workers while our upgrade drains: to the new master.
    pub(super) fn publish_to_successor(
        &mut self,
        publisher: u64,
        seq: u64,
        topic: String,
        message: Vec<u8>,
    ) {
        let Some(l) = self.up.xfer.to_new.as_mut() else {
            return;
        };
        let msg = crate::channel::ToSuccessor::Publish {
            publisher,
            seq,
            topic,
            message,
        };
        match l.queue_publish(msg) {
            Ok(()) => self.xfer_flush(super::xfer::Side::ToNew),
            Err(e) => {
                warn!("cannot pass a publish to the new master ({e}); its subscribers miss it")
            }
        }
    }

    /// Tells our workers to pass their publishes on (`ToWorker::ForwardPublishes`), at
    /// the commit of an upgrade whose link works.
    pub(super) fn forward_publishes_to_successor(&mut self) {
        for w in self.workers.iter_mut() {
            if w.channel_closed {
                continue;
            }
            if let Err(e) = w
                .handoff
                .send_or_queue(&w.channel, ToWorker::ForwardPublishes)
            {
                debug!(
                    pid = w.pid.as_raw(),
                    "cannot ask a worker to forward publishes: {e}"
                );
            }
        }
    }

    /// Links the worker just forked (the last in the table) with every other live one.
    pub(super) fn wire_bus(&mut self) {
        let Some(new) = self.workers.len().checked_sub(1) else {
            return;
        };
        let new_pid = self.workers[new].pid.as_raw() as u32;
        for i in 0..new {
            let w = &self.workers[i];
            if w.channel_closed || matches!(w.state, WorkerState::Stopping) {
                continue;
            }
            let (a, b) = match fd::seqpacket_pair() {
                Ok(p) => p,
                Err(e) => {
                    warn!(
                        "cannot make a bus link between workers: {e}; publishes will not cross it"
                    );
                    return;
                }
            };
            let old_pid = w.pid.as_raw() as u32;
            // Queued behind a full channel rather than refused (see `send_link`).
            let w = &mut self.workers[i];
            let sent = w.handoff.send_link(&w.channel, new_pid, a).and_then(|()| {
                let n = &mut self.workers[new];
                n.handoff.send_link(&n.channel, old_pid, b)
            });
            if let Err(e) = sent {
                warn!(
                    a = old_pid,
                    b = new_pid,
                    "cannot link two workers on the bus ({e}); publishes will not cross between them"
                );
            }
        }
        debug!(pid = new_pid, peers = new, "worker wired to the bus");
    }

    /// `corral publish`: forwards the message to every live worker; the answer says
    /// to how many.
    pub(super) fn publish(&mut self, ticket: u64) {
        let Some(i) = self
            .publish_requests
            .iter()
            .position(|(t, ..)| *t == ticket)
        else {
            return;
        };
        let (_, topic, message) = self.publish_requests.swap_remove(i);
        if topic.is_empty() || topic.len() > crate::service::push::MAX_TOPIC {
            let why = format!(
                "a topic is 1 to {} bytes, not {}",
                crate::service::push::MAX_TOPIC,
                topic.len()
            );
            return self.answer(ticket, false, why);
        }
        if message.len() > MAX_CLI_MESSAGE {
            let why = format!(
                "a message is at most {MAX_CLI_MESSAGE} bytes here, not {}",
                message.len()
            );
            return self.answer(ticket, false, why);
        }
        self.publish_seq += 1;
        let (sent, failed) = self.forward_publish(
            self.publisher,
            self.publish_seq,
            &topic,
            message.into_bytes(),
        );
        if sent == 0 {
            return self.answer(ticket, false, "no worker is running".into());
        }
        let note = if failed > 0 {
            format!(" ({failed} exiting worker(s) could not take it)")
        } else {
            String::new()
        };
        self.answer(
            ticket,
            true,
            format!("published to {topic:?}: handed to {sent} worker(s){note}"),
        );
    }
}
