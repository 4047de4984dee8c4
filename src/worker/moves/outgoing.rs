//! The draining worker's side of a move: the turn order's next connections are
//! suspended, taken out of the loop, queued and sent to the master in batches, and
//! the generation's counts reported (see the folder's `mod.rs`).

use std::os::fd::AsFd;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::channel::{Handed, IdlePolicy, Moved, ToMaster};
use crate::os::epoll::Interest;
use crate::os::{process, scm};

use super::super::conn::Flags;
use super::super::conn::Leaving;
use super::super::token::Token;
use super::super::{Timer, Worker, TOKEN_CHANNEL};
use super::{millis, suspended_by_me, BEAT_EVERY, SETTLE_CHECK};

impl Worker {
    /// Suspending every connection at a drain, or adopting a few thousand, is one
    /// loop turn that can outlast `watchdog_timeout` on a busy box with tens of
    /// thousands of connections: the heartbeat timer would not run until it ends, and
    /// the master would kill this worker as hung, with the connections it holds. So
    /// such a turn sends a heartbeat itself when one is due.
    pub(in crate::worker) fn beat_if_due(&mut self) {
        let now = Instant::now();
        if self.handoff.next_beat.is_some_and(|t| now < t) {
            return;
        }
        self.handoff.next_beat = Some(now + self.config.worker.heartbeat_interval.0);
        self.heartbeat();
    }

    /// Step 4: sends what is queued, as far as the channel takes it.
    pub(in crate::worker) fn flush_handoff(&mut self) {
        let h = &mut self.handoff;
        h.dirty = false;
        h.writable = false;
        if !self.send_owed() {
            // Still full: the hand-overs wait behind what is owed.
            return self.set_channel_write(true);
        }
        if self.link.channel.is_none() {
            return self.keep_all("the channel to the master is gone");
        }
        // Taken out a batch at a time, only while the channel (or a lane) takes them:
        // the rest are still served here meanwhile.
        let (mut conns, mut messages) = (0, 0);
        loop {
            // With lanes, the lanes carry all but proxied pairs: nothing else waits
            // for the master.
            let lanes = self.handoff.lanes.sending() && self.idle_policy == IdlePolicy::Handoff;
            if !lanes {
                // The last lane went: what waited for one goes to the master.
                for (c, fd) in self.handoff.lanes.take_waiting() {
                    self.handoff.queue.push(c, fd);
                }
            }
            if lanes && !self.feed_lanes() {
                break;
            }
            self.take_out_next_batch();
            if lanes && !self.feed_lanes() && self.handoff.queue.is_empty() {
                break;
            }
            let h = &mut self.handoff;
            let Some(ch) = &self.link.channel else {
                return self.keep_all("the channel to the master is gone");
            };
            let done = h.queue.flush(ch, |conns| ToMaster::Handoff { conns });
            h.counts.handed += done.conns as u64;
            h.via_master += done.conns as u64;
            conns += done.conns;
            messages += done.messages;
            if let Some(e) = done.error {
                warn!("cannot hand over connections to the master: {e}");
                return self.keep_all("the channel to the master failed");
            }
            if done.starved {
                self.lanes_starved();
                break;
            }
            if !h.queue.is_empty() || h.order.is_empty() {
                break;
            }
        }
        let h = &self.handoff;
        if conns > 0 {
            debug!(
                conns,
                messages,
                queued = h.queue.len(),
                waiting = !h.order.is_empty(),
                "handed over idle connections"
            );
        }
        // With lanes, the order waits for their room, not the channel's: EPOLLOUT on a
        // writable channel would only spin the loop.
        let want_write = if h.lanes.sending() {
            !h.queue.is_empty()
        } else {
            h.sending()
        };
        let all_sent = !h.sending() && h.lanes.unsent() == 0;
        self.set_channel_write(want_write);
        if all_sent {
            self.report_handoff();
        }
    }

    /// Suspends the connections whose turn it is, up to a batch in the queue. Only
    /// while handing over: once the worker keeps its connections, those waiting stay.
    pub(super) fn take_out_next_batch(&mut self) {
        if self.idle_policy != IdlePolicy::Handoff {
            self.handoff.order.clear();
            return;
        }
        let mut asked = 0;
        while self.handoff.queue.len() < crate::channel::BATCH_CONNS {
            let Some(token) = self.handoff.order.pop() else {
                break;
            };
            // Not at a quiescent point now: it comes back after its next exchange.
            self.try_move(token);
            asked += 1;
            if asked % BEAT_EVERY == 0 {
                self.beat_if_due();
            }
        }
        // A batch is at most 64 leaving connections, so the count above rarely
        // reaches BEAT_EVERY within one call; but a turn takes batches until the
        // channel is full, and each leaving subscriber of a worker behind on the bus is
        // written what it is owed first (`catch_up`): at 1M subscribers that turn
        // outlasted the watchdog (about 17 old workers killed at a reload, 309 374
        // connections closed). The clock is cheap next to a batch.
        if asked > 0 {
            self.beat_if_due();
        }
    }

    /// Draining for a reload: if the connection is at a quiescent point and its
    /// handler agrees, takes it out of this worker and queues it for the next
    /// generation. True if it left.
    pub(in crate::worker) fn try_move(&mut self, token: Token) -> bool {
        let now = Instant::now();
        // A subscriber leaves with what this worker received delivered (see
        // `catch_up`), written before its handler is asked to suspend.
        self.catch_up(token);
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let l = self.config.listen.get(usize::from(c.listener));
        let Some((leaving, tls)) = c.suspend(l.and_then(|l| l.suspend).unwrap_or(true)) else {
            return false;
        };
        let listen = l.map(|l| l.address.to_string()).unwrap_or_default();
        // Bundled before anything is taken apart: if that fails, the pair is served
        // here as if it had never been asked.
        let bundle = match c.upstream() {
            Some(up) => match scm::bundle(&[c.fd.as_fd(), up.fd.as_fd()]) {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!("cannot bundle a proxied pair for the hand-over ({e}); it stays here");
                    if let Leaving::Suspended(_, input) = leaving {
                        c.carry_input(input);
                    }
                    // Its TLS engine gave up its secrets: it goes on from them here.
                    if let Some(t) = tls.as_deref().and_then(crate::tls::TlsSession::continued) {
                        c.set_tls(Box::new(t));
                    }
                    c.flags.set(Flags::PINNED, true);
                    return false;
                }
            },
            None => None,
        };
        // What a connection with no service state carries; a suspended one adds its own.
        let idle = Moved {
            service: l.map(|l| l.service.clone()).unwrap_or_default(),
            version: 0,
            state: Vec::new(),
            input: Vec::new(),
            idle_ms: millis(now.saturating_duration_since(c.last_active)),
            timer_ms: None,
            origin: process::pid().as_raw() as u32,
            upstream: None,
            refused: None,
            idle: true,
            push: None,
        };
        // Subscriptions travel in the moved record, so a subscriber moves as moved,
        // with a cursor that counts as delivered here everything this worker holds
        // (`catch_up` above delivered it).
        let push = self.push.take_for_move(token.0);
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let idle = Moved { push, ..idle };
        let moved = match leaving {
            Leaving::Idle if tls.is_none() && idle.push.is_none() => None,
            // An idle TLS connection travels as moved, so that a receiver that
            // cannot continue its record layer can send it back here.
            Leaving::Idle => Some(idle),
            Leaving::Suspended(s, input) => Some(Moved {
                version: s.version,
                state: s.state,
                input,
                timer_ms: c
                    .timer_at()
                    .map(|t| millis(t.saturating_duration_since(now))),
                upstream: c.upstream().map(|u| u.addr),
                idle: false,
                ..idle
            }),
        };
        let handed = Handed {
            listen,
            peer: c.origin(),
            moved: moved.map(Box::new),
            tls,
        };
        if handed.tls.is_some() {
            self.tally.stats.tls.moved_out += 1;
        }
        // The fds stay open (queued, then in flight): without an explicit delete this
        // epoll set would keep reporting their events under a token that is reused.
        let _ = self.epoll.delete(c.fd.as_fd());
        if let Some(up) = c.upstream() {
            let _ = self.epoll.delete(up.fd.as_fd());
        }
        self.end_as(token, super::super::connlog::End::HandedOver);
        let Some(c) = self.detach(token) else {
            return false;
        };
        // Detaching released the upstream in this worker's balancer counts; the
        // receiver counts it as connected there.
        let (fd, _upstream) = c.into_fds(&mut self.bufs);
        if handed.moved.is_some() {
            // The new generation may refuse its state and send it back here.
            self.handoff.unsettled += 1;
        }
        self.handoff.queue.push(handed, bundle.unwrap_or(fd));
        self.handoff.dirty = true;
        true
    }

    /// Logs (at info) and tells the master the counts, once per finished burst.
    pub(super) fn report_handoff(&mut self) {
        let c = self.handoff.counts;
        if c == self.handoff.reported {
            return;
        }
        self.handoff.reported = c;
        info!(
            handed = c.handed,
            kept = c.kept,
            closed = c.closed,
            left = self.conns.len(),
            deferred = self.handoff.deferred,
            "hand-over done"
        );
        self.send_or_owe(ToMaster::HandoffDone(c));
    }

    pub(super) fn set_channel_write(&mut self, on: bool) {
        if self.handoff.want_write == on {
            return;
        }
        let Some(ch) = &self.link.channel else {
            self.handoff.want_write = false;
            return;
        };
        let interest = Interest {
            write: on,
            ..Interest::READ
        };
        match self.epoll.modify(ch.as_fd(), interest, TOKEN_CHANNEL) {
            Ok(()) => self.handoff.want_write = on,
            Err(e) => warn!("cannot change the channel's epoll interest: {e}"),
        }
    }

    /// Hand-overs sent but not yet read by the master: a worker that exited now would
    /// take their fds with it (the master may be holding off reading while it has many
    /// fds in flight). While there are some, a timer looks again shortly. A worker
    /// that sent no fd to the master (everything went over lanes) does not wait: what
    /// is left in its channel (counts, a heartbeat) the master reads when it reaps it.
    /// (Waiting for a master starved of CPU kept 33 old workers 30 s past their last
    /// hand-over at a million push subscribers.)
    pub(in crate::worker) fn handoff_in_transit(&mut self, now: Instant) -> bool {
        if self.handoff.via_master == 0 {
            return false;
        }
        let Some(ch) = &self.link.channel else {
            return false;
        };
        if ch.unread() == 0 {
            return false;
        }
        if !self.handoff.settle_armed {
            self.handoff.settle_armed = true;
            self.timers
                .schedule(now + SETTLE_CHECK, Timer::HandoffSettle);
        }
        true
    }

    /// At the drain deadline: what is still queued closes with the worker.
    pub(in crate::worker) fn handoff_deadline(&mut self) {
        // Those still waiting their turn are open connections of this worker: the
        // master counts them as closed from its last heartbeat, with the rest.
        self.handoff.order.clear();
        let n = self.handoff.queue.take_all().len() + self.drop_lane_queues();
        if n > 0 {
            warn!(
                connections = n,
                "drain timeout: closing connections still waiting for the hand-over"
            );
            self.handoff.counts.closed += n as u64;
            // Told now: a worker still waiting for the master to read its last
            // hand-overs may be killed at the backstop before it reports otherwise,
            // and the generation's summary would say "closed 0".
            self.set_channel_write(false);
            self.report_handoff();
        }
    }

    /// Everything queued stays here after all.
    pub(super) fn keep_all(&mut self, why: &str) {
        self.handoff.order.clear();
        let mut queued = self.handoff.queue.take_all();
        queued.extend(self.take_lane_queues());
        self.set_channel_write(false);
        if queued.is_empty() {
            return;
        }
        self.linger_from_now(why);
        let mine = queued.iter().filter(|(h, _)| suspended_by_me(h)).count() as u64;
        self.settled(mine);
        for (h, fd) in queued {
            self.handoff.counts.kept += 1;
            let _ = self.restore(h, fd, true);
        }
        self.report_handoff();
    }

    pub(super) fn linger_from_now(&mut self, why: &str) {
        if self.idle_policy == IdlePolicy::Handoff {
            // Those still waiting for their turn stay too.
            self.handoff.order.clear();
            info!("{why}: keeping idle connections here until they finish");
            self.idle_policy = IdlePolicy::Linger;
        }
    }
}
