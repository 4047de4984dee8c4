//! The worker's side of its master channel: commands in, heartbeats and counters out.

use std::os::fd::AsFd;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::channel::{ChannelError, IdlePolicy, ToMaster, ToWorker};
use crate::os::process;

use super::{Timer, Worker};

/// The worker's end of the channel to the master.
pub(super) struct Link {
    /// None once the master is gone.
    pub channel: Option<crate::channel::Channel>,
    /// epoll reported it readable.
    pub ready: bool,
}

impl Worker {
    pub(super) fn read_channel(&mut self) {
        // A turn's worth, so that a worker adopting thousands of connections still
        // reaches its timers (and heartbeats) and serves its own clients between
        // batches (`ADOPT_TURN`); the channel is level-triggered.
        let mut adopted = 0;
        for _ in 0..super::moves::CHANNEL_TURN {
            if adopted >= super::moves::ADOPT_TURN {
                return; // this turn's share: our own clients are served first
            }
            let got = match &self.link.channel {
                Some(ch) => ch.recv_fds::<ToWorker>(),
                None => return,
            };
            match got {
                Ok(Some((msg, fds))) => match msg {
                    ToWorker::Drain { idle } => self.start_drain("master asked", idle),
                    ToWorker::Adopt { conns } => {
                        adopted += conns.len();
                        self.adopt(conns, fds)
                    }
                    ToWorker::Keep { conns, reason } => self.keep(conns, fds, &reason),
                    ToWorker::Settled { n } => self.settled(n),
                    ToWorker::Lend { slot, listens } => self.borrow(slot, &listens, fds),
                    ToWorker::Unlend { slot } => self.give_back(slot),
                    ToWorker::Stop => {
                        info!("master asked to stop now");
                        self.exit = Some(0);
                    }
                    ToWorker::ReopenLogs => match fds.into_iter().next() {
                        Some(fd) => crate::log::adopt(fd),
                        None => self.reopen_logs(),
                    },
                    ToWorker::TicketKey(k) => match k.key() {
                        Some(k) => crate::tls::tickets::rotate_to(k),
                        None => warn!("the master sent a ticket key that does not decode"),
                    },
                    ToWorker::Metrics { id, text, last } => {
                        crate::service::metrics::deliver(id, text, last)
                    }
                    ToWorker::Lane { pid, send, foreign } => match fds.into_iter().next() {
                        Some(fd) => self.add_lane(fd, pid, send, foreign),
                        None => warn!(peer = pid, "a lane came without its socket"),
                    },
                    ToWorker::BusPeer { pid } => match fds.into_iter().next() {
                        Some(fd) => self.add_bus_peer(fd, pid),
                        None => warn!(peer = pid, "a bus peer came without its socket"),
                    },
                    ToWorker::Publish {
                        publisher,
                        seq,
                        topic,
                        message,
                    } => self.deliver_forwarded(publisher, seq, &topic, &message),
                    ToWorker::ForwardPublishes => self.push.forward_to_master = true,
                    ToWorker::Fault {
                        kind: crate::fault::kind::FaultKind::Escape,
                    } => {
                        let attempts = super::fault::escape(&self.config);
                        self.send(ToMaster::Escaped { attempts });
                    }
                    ToWorker::Fault { kind } => {
                        if let Some(at) = self.injected.apply(kind) {
                            self.timers.schedule(at, Timer::FaultEnd);
                        }
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    if !matches!(e, ChannelError::Closed) {
                        warn!("master channel failed: {e}");
                    }
                    if let Some(ch) = self.link.channel.take() {
                        let _ = self.epoll.delete(ch.as_fd());
                    }
                    self.start_drain("master is gone", IdlePolicy::Close);
                    // What waits for the hand-over has nowhere to go now: keep it.
                    if !self.handoff.is_idle() {
                        self.flush_handoff();
                    }
                    return;
                }
            }
        }
    }

    pub(super) fn reopen_logs(&mut self) {
        if let Err(e) = crate::log::reopen() {
            warn!("cannot reopen the log: {e}");
        }
    }

    pub(super) fn send(&mut self, msg: ToMaster) {
        if let Some(ch) = &self.link.channel {
            if let Err(e) = ch.send(&msg) {
                debug!("cannot send {msg:?} to the master: {e}");
            }
        }
    }

    /// Sends `msg`, or keeps it for the next flush when the channel is full (or
    /// something owed is waiting, to keep the order). False when it was kept.
    pub(super) fn send_or_owe(&mut self, msg: ToMaster) -> bool {
        let Some(ch) = &self.link.channel else {
            return true;
        };
        if self.handoff.owed.is_empty() {
            match ch.send(&msg) {
                Ok(()) => return true,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    debug!("cannot send {msg:?} to the master: {e}");
                    return true;
                }
                Err(_) => {}
            }
        }
        self.handoff.owed.push(msg);
        self.handoff.dirty = true;
        false
    }

    /// Sends what `send_or_owe` kept, in order. True when nothing is owed any more.
    pub(super) fn send_owed(&mut self) -> bool {
        let Some(ch) = &self.link.channel else {
            self.handoff.owed.clear();
            return true;
        };
        let mut sent = 0;
        for msg in &self.handoff.owed {
            match ch.send(msg) {
                Ok(()) => sent += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("cannot send {msg:?} to the master: {e}");
                    sent += 1;
                }
            }
        }
        self.handoff.owed.drain(..sent);
        self.handoff.owed.is_empty()
    }

    pub(super) fn heartbeat(&mut self) {
        self.tally.stats.connections = self.conns.len() as u64;
        self.tally.stats.rss = process::self_rss();
        // The log writer thread reports drops itself, once it writes again.
        self.tally.stats.log_dropped = crate::log::dropped();
        self.tally.stats.push = self.push.totals();
        // An older heartbeat still owed is stale: this one replaces it.
        self.handoff
            .owed
            .retain(|m| !matches!(m, ToMaster::Heartbeat(_)));
        if !self.send_or_owe(ToMaster::Heartbeat(self.tally.stats)) {
            return;
        }
        self.tally.counters.refresh(&self.conns, Instant::now());
        for part in self.tally.counters.parts() {
            self.send(ToMaster::Counters(part));
        }
    }
}
