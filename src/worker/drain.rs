//! Draining: stop accepting, let each connection leave (closed when idle, handed to
//! the next generation, or finished), and decide when the worker is done.

use std::time::Instant;

use tracing::info;

use crate::channel::IdlePolicy;

use super::conn::Conn;
use super::token::Token;
use super::{connlog, Phase, Timer, Worker};

impl Worker {
    /// A draining worker with nothing left exits now. Checked after the timers too:
    /// the settle timer that waits for the master to read the last hand-overs must
    /// not leave the loop asleep in epoll until the next heartbeat (up to 1 s).
    pub(super) fn drained_out(&mut self) -> bool {
        if self.phase != Phase::Draining
            || !self.conns.is_empty()
            || !self.handoff.is_idle()
            || self.handoff_in_transit(Instant::now())
            || self.awaiting_refusals()
            // Adoptions still unread (a turn reads at most `ADOPT_TURN` of them): they
            // would close with the channel.
            || self.link.channel.as_ref().is_some_and(|c| c.has_input())
        {
            return false;
        }
        let c = self.handoff.counts();
        info!(
            handed = c.handed,
            tls_handed = self.tally.stats.tls.moved_out,
            kept = c.kept,
            closed = c.closed,
            over_lanes = self.handoff.lanes.took_total(),
            "drained, exiting"
        );
        true
    }

    /// Stops accepting, closes what can be closed without loss, and lets the rest
    /// finish until `drain_timeout`.
    pub(super) fn start_drain(&mut self, why: &str, idle: IdlePolicy) {
        if self.phase == Phase::Draining {
            return;
        }
        self.idle_policy = idle;
        if idle == IdlePolicy::Close {
            crate::service::metrics::set_stopping();
        }
        info!(connections = self.conns.len(), "draining ({why})");
        self.phase = Phase::Draining;
        self.pause_accept();
        self.give_all_back();
        // Our copies of the listeners go now: an orphaned worker must not keep the
        // port from a master that restarts, and the master holds its own copies.
        for l in &mut self.listeners {
            l.fd = None;
        }
        self.timers.schedule(
            Instant::now() + self.config.master.drain_timeout.0,
            Timer::DrainDeadline,
        );
        let mut tokens = self.conns.tokens();
        if idle == IdlePolicy::Handoff {
            // Most recently active first (see `move_order`).
            tokens.sort_by_key(|&t| std::cmp::Reverse(self.conns.get(t).map(|c| c.last_active)));
        }
        for (k, token) in tokens.into_iter().enumerate() {
            self.release_idle(token, false);
            // Suspending 18k connections is one long turn.
            if k % super::moves::BEAT_EVERY == super::moves::BEAT_EVERY - 1 {
                self.beat_if_due();
            }
        }
    }

    /// A draining worker's connection, if it can go now: closed when idle, or queued
    /// for the hand-over to the new generation (taken out when its turn comes; `hot`:
    /// it just finished an exchange), as the drain's policy says; otherwise left to
    /// finish its next exchange. True if it left.
    pub(super) fn release_idle(&mut self, token: Token, hot: bool) -> bool {
        match self.idle_policy {
            IdlePolicy::Linger => false,
            IdlePolicy::Close => {
                if !self.conns.get(token).is_some_and(Conn::idle_closable) {
                    return false;
                }
                self.close_as(token, connlog::End::Drain);
                true
            }
            IdlePolicy::Handoff => {
                if self.conns.get(token).is_some_and(Conn::may_move) {
                    self.handoff.order.push(token, hot);
                    self.handoff.dirty = true;
                }
                false
            }
        }
    }
}
