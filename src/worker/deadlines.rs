//! Step 1 of the loop: what each timer does when it comes due, and keeping the
//! heap free of the entries of closed connections.

use std::time::Instant;

use tracing::{debug, info, warn};

use crate::channel::ToMaster;

use super::conn::Flags;
use super::connlog;
use super::token::Token;
use super::Worker;

pub(crate) enum Timer {
    Idle(Token),
    /// Re-admit a client whose rate limit ran out.
    Throttle(Token),
    /// A proxied connection's upstream connect attempt (by number) timed out.
    Connect(Token, u32),
    /// A handler's `set_timer` came due (checked against the connection's own
    /// deadline: lazy cancellation).
    Handler(Token),
    AcceptResume,
    Heartbeat,
    DrainDeadline,
    /// Look again whether the master has read every hand-over sent to it.
    HandoffSettle,
    /// An injected fault (`slow`, `emfile`) may be over.
    FaultEnd,
    /// `accept_proxy_timeout` of a connection that may still lack its PROXY header.
    Header(Token),
}

impl Worker {
    pub(super) fn expire_timers(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            // `corral fault panic` with no client data coming: the next timer panics.
            crate::fault::panic_if_armed("a timer dispatch");
            match t {
                Timer::Idle(token) => self.check_idle(token, now),
                Timer::Handler(token) => {
                    let Some(c) = self.conns.get_mut(token) else {
                        continue;
                    };
                    c.set_timer_queued(None);
                    match c.timer_at() {
                        Some(at) if at <= now => {
                            c.set_timer_at(None);
                            self.with_handler(token, |h, io| h.on_timer(io));
                        }
                        Some(at) => {
                            c.set_timer_queued(Some(at));
                            self.timers.schedule(at, Timer::Handler(token));
                        }
                        None => {}
                    }
                }
                Timer::Connect(token, attempt) => {
                    let timed_out = self
                        .conns
                        .get(token)
                        .and_then(|c| c.upstream.as_ref())
                        .is_some_and(|u| !u.flags.has(Flags::CONNECTED) && u.attempt == attempt);
                    if timed_out {
                        self.upstream_failed(token, "connect timed out");
                    }
                }
                Timer::Throttle(token) => {
                    if let Some(c) = self.conns.get_mut(token) {
                        c.flags.set(Flags::THROTTLED, false);
                        c.flags.set(Flags::THROTTLE_ARMED, false);
                        c.flags.set(Flags::MAY_READ, true);
                        self.drive(token);
                    }
                }
                Timer::AcceptResume => {
                    self.accept_backoff_until = None;
                    if let Err(e) = self.resume_accept() {
                        warn!("cannot resume accepting: {e}");
                    }
                }
                Timer::Heartbeat => {
                    self.heartbeat();
                    self.notices.flush(now);
                    self.timers.schedule(
                        now + self.config.worker.heartbeat_interval.0,
                        Timer::Heartbeat,
                    );
                }
                // The loop checks again after this wake-up.
                Timer::HandoffSettle => self.handoff.settle_armed = false,
                Timer::Header(token) => self.header_timeout(token),
                Timer::FaultEnd => {
                    for note in self.injected.expire(now) {
                        info!("injected fault over: {note}");
                        self.send(ToMaster::FaultOver { note });
                    }
                }
                Timer::DrainDeadline => {
                    if !self.conns.is_empty() {
                        warn!(
                            connections = self.conns.len(),
                            "drain timeout: closing the remaining connections"
                        );
                    }
                    self.handoff_deadline();
                    self.exit = Some(0);
                }
            }
        }
    }

    pub(super) fn check_idle(&mut self, token: Token, now: Instant) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let Some(idle) = self.listeners.get(usize::from(c.listener)).map(|l| l.idle) else {
            return;
        };
        let due = c.last_active + idle;
        if due <= now {
            debug!(peer = ?c.peer, "idle timeout");
            self.close_as(token, connlog::End::IdleTimeout);
        } else {
            self.timers.schedule(due, Timer::Idle(token));
        }
    }

    /// Rebuilds the timer heap without the entries of closed connections once they
    /// outnumber the live ones (amortised O(1) per close).
    pub(super) fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.conns.len() + 4096 {
            return;
        }
        self.compact_timers_now();
    }

    pub(super) fn compact_timers_now(&mut self) {
        let conns = &self.conns;
        self.timers.retain(|t| match t {
            Timer::Idle(k) | Timer::Throttle(k) | Timer::Handler(k) | Timer::Connect(k, _) => {
                conns.get(*k).is_some()
            }
            Timer::AcceptResume
            | Timer::Heartbeat
            | Timer::DrainDeadline
            | Timer::HandoffSettle
            | Timer::FaultEnd => true,
            Timer::Header(k) => conns.get(*k).is_some(),
        });
    }
}
