//! Lanes across masters (`worker::moves::lanes`) at a binary upgrade: the old
//! master's draining workers send their connections straight to the new master's
//! workers, so neither master carries them. Until the commit nothing moves (a
//! rollback only drops the new master); from the commit the old master links every
//! worker that moves out with every adopter the new master named
//! (`ToPredecessor::Adopters`, sent at start and whenever its set of adopters
//! changes, e.g. on a respawn): one SOCK_SEQPACKET socketpair per pair, the sender's
//! end to its own worker, the adopter's end over the upgrade channel
//! (`ToSuccessor::Lane`, in the link's queue behind its write interest), which the
//! new master passes to that worker.
//!
//! Counting stays with the workers: the old generation's moved/kept/closed are its
//! workers' own counts, as at a reload; the new master, which sees none of it go by,
//! adds what its workers report they adopted over such lanes
//! (`ToMaster::LaneAdopted`) to what moved in from the old master. A lane end that
//! cannot be delivered is dropped: the sender sees the lane hang up and sends what it
//! had not had answered again, over another lane or through the masters as before.

use std::os::fd::OwnedFd;

use tracing::{debug, info};

use crate::channel::{ToPredecessor, ToSuccessor, ToWorker};
use crate::os::fd;

use super::table::WorkerState;
use super::xfer::Side;
use super::Master;

impl Master {
    /// New master: tells the old master which of our workers adopt now, if that
    /// changed since it was last told.
    pub(super) fn xfer_tell_adopters(&mut self) {
        let pids: Vec<u32> = self
            .adopters(None)
            .into_iter()
            .map(|k| self.workers[k].pid.as_raw() as u32)
            .collect();
        let Some(l) = self
            .up
            .xfer
            .to_old
            .as_mut()
            .filter(|l| !l.closed && l.tells_adopters)
        else {
            return;
        };
        if pids.is_empty() || l.told == pids {
            return;
        }
        l.told = pids.clone();
        l.queue_control(ToPredecessor::Adopters { pids });
        self.xfer_flush(Side::ToOld);
    }

    /// Old master: the new master's adopters now.
    pub(super) fn xfer_adopters(&mut self, pids: Vec<u32>) {
        if let Some(l) = self.up.xfer.to_new.as_mut() {
            l.adopters = pids;
        }
        self.wire_xlanes();
    }

    /// Old master, upgrade committed: makes the lanes missing between our workers
    /// that move out and the new master's adopters.
    pub(super) fn wire_xlanes(&mut self) {
        if !self.up.handed_over {
            return;
        }
        let Some(adopters) = self
            .up
            .xfer
            .to_new
            .as_ref()
            .filter(|l| !l.closed && l.confirmed())
            .map(|l| l.adopters.clone())
        else {
            return;
        };
        let senders = self.lane_senders();
        let mut made = 0;
        for &s in &senders {
            for &to in &adopters {
                if self.workers[s].handoff.lanes_to.contains(&to) {
                    continue;
                }
                // Tried once: a pair that could not be linked moves through the masters.
                self.workers[s].handoff.lanes_to.push(to);
                let (mine, theirs) = match fd::seqpacket_pair() {
                    Ok(p) => p,
                    Err(e) => {
                        debug!("cannot make a lane to the new master's worker {to}: {e}; moves go through the masters");
                        return self.xfer_flush(Side::ToNew);
                    }
                };
                let from = self.workers[s].pid.as_raw();
                let Some(l) = self.up.xfer.to_new.as_mut() else {
                    return;
                };
                l.queue_lane(ToSuccessor::Lane { from, to }, theirs);
                let w = &mut self.workers[s];
                let lane = ToWorker::Lane {
                    pid: to,
                    send: true,
                    foreign: true,
                };
                match w.handoff.send_with_fd(&w.channel, lane, mine) {
                    Ok(()) => made += 1,
                    // Its end goes with the channel; the other, delivered, hangs up.
                    Err(e) => debug!(from, to, "cannot send a lane's end ({e})"),
                }
            }
        }
        if made > 0 {
            // At info: a few lines an upgrade, and the way to tell the connections went
            // straight to the new master's workers.
            info!(
                lanes = made,
                senders = senders.len(),
                adopters = adopters.len(),
                "{made} lanes made to the new master's workers: connections go to them directly"
            );
        }
        self.xfer_flush(Side::ToNew);
        for s in senders {
            self.flush_handoff(s);
        }
    }

    /// New master: the adopter's end of a lane from the old master's worker `from`,
    /// for our worker `to`. Dropped (the sender then sees the lane hang up) when that
    /// worker is gone.
    pub(super) fn xfer_lane_end(&mut self, from: i32, to: u32, end: Option<OwnedFd>) {
        let Some(end) = end else {
            debug!(from, to, "a lane end came without its socket");
            return;
        };
        let Some(k) = self.workers.iter().position(|w| {
            w.pid.as_raw() as u32 == to
                && !w.channel_closed
                && !matches!(w.state, WorkerState::Stopping)
        }) else {
            debug!(from, to, "a lane end for a worker that is gone: dropped");
            return;
        };
        let w = &mut self.workers[k];
        let lane = ToWorker::Lane {
            pid: from as u32,
            send: false,
            foreign: true,
        };
        if let Err(e) = w.handoff.send_with_fd(&w.channel, lane, end) {
            debug!(from, to, "cannot pass a lane end to its worker: {e}");
        }
        self.flush_handoff(k);
    }

    /// New master: worker `i` adopted so far `totals` connections over lanes from the
    /// old master's workers (running totals per sender).
    pub(super) fn lane_adopted(&mut self, i: usize, totals: Vec<(u32, u64)>) {
        let mut more = 0;
        for (from, total) in totals {
            more += self.workers[i].handoff.lane_adopted(from, total);
        }
        if more == 0 {
            return;
        }
        if let Some(l) = self.up.xfer.to_old.as_mut() {
            l.moved += more;
        }
        self.gens.adopted_from_predecessor(more);
    }
}
