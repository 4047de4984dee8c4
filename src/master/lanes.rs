//! The master's part in lanes (`worker::moves::lanes`): at a reload it links every
//! worker that moves its connections out with every worker that may adopt them, one
//! SOCK_SEQPACKET socketpair per pair, one end to each over their channels
//! (`ToWorker::Lane`, fd attached), as it wires the bus. The connections then go
//! straight from worker to worker: the master only routes (which lanes exist) and
//! counts (the workers' `HandoffDone`, as before).
//!
//! A worker that becomes ready later (a respawn after a new worker died mid-move) is
//! linked too. Where no lane can be made (the sockets could not be sent) the
//! connections go through the master as before (`moves.rs`). At a binary upgrade the
//! adopters are the other master's: `xlanes.rs` links them.

use std::os::fd::AsFd;

use tracing::{debug, warn};

use crate::channel::ToWorker;
use crate::os::fd;

use super::table::WorkerState;
use super::Master;

impl Master {
    /// The workers that move connections out and can still be told (lanes go to
    /// them), at a reload or, across masters, at an upgrade.
    pub(super) fn lane_senders(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&k| {
                let w = &self.workers[k];
                w.handoff.moves_out
                    && !w.channel_closed
                    && !matches!(w.state, WorkerState::Stopping)
            })
            .collect()
    }

    /// Makes the lanes missing between the workers that move connections out
    /// (`moves_out`, still reachable) and today's adopters.
    pub(super) fn wire_lanes(&mut self) {
        // The old master of our upgrade, still draining, links its workers to ours.
        self.xfer_tell_adopters();
        let senders = self.lane_senders();
        if senders.is_empty() {
            return;
        }
        let adopters = self.adopters(None);
        let mut made = 0;
        for &s in &senders {
            for &a in &adopters {
                if s == a {
                    continue;
                }
                let to = self.workers[a].pid.as_raw() as u32;
                if self.workers[s].handoff.lanes_to.contains(&to) {
                    continue;
                }
                // Tried once: a pair that could not be linked moves through the master.
                self.workers[s].handoff.lanes_to.push(to);
                let (mine, theirs) = match fd::seqpacket_pair() {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(
                            "cannot make a lane between workers: {e}; moves go through the master"
                        );
                        return;
                    }
                };
                let from = self.workers[s].pid.as_raw() as u32;
                // The adopter's end first: a sender never holds a lane whose other
                // end was not delivered (it would only see it hang up).
                let sent = self.workers[a]
                    .channel
                    .send_fds(
                        &ToWorker::Lane {
                            pid: from,
                            send: false,
                            foreign: false,
                        },
                        &[theirs.as_fd()],
                    )
                    .and_then(|()| {
                        self.workers[s].channel.send_fds(
                            &ToWorker::Lane {
                                pid: to,
                                send: true,
                                foreign: false,
                            },
                            &[mine.as_fd()],
                        )
                    });
                match sent {
                    Ok(()) => made += 1,
                    Err(e) => debug!(
                        from,
                        to, "cannot send a lane's ends ({e}); these two move through the master"
                    ),
                }
            }
        }
        if made > 0 {
            debug!(
                lanes = made,
                senders = senders.len(),
                adopters = adopters.len(),
                "lanes made"
            );
        }
    }
}
