//! Step 1 of the loop: what each timer does when it comes due, and keeping the
//! heap free of the entries of closed connections.

use std::time::Instant;

use tracing::{debug, info, warn};

use crate::channel::ToMaster;

use super::conn::Flags;
use super::connlog;
use super::timer::Packed;
use super::token::Token;
use super::Worker;

/// What a timer does when it comes due. Packed into 8 bytes in the heap (one entry
/// per idle connection): a kind in the top 3 bits, a connection's token (61 bits, see
/// `token.rs`) or which worker-wide timer in the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    Idle(Token),
    /// Re-admit a client whose rate limit ran out.
    Throttle(Token),
    /// A proxied connection's upstream connect attempt may have timed out (checked
    /// against the attempt's own deadline, `Upstream::connect_by`: a timer of an
    /// earlier, failed attempt finds a later deadline and does nothing).
    Connect(Token),
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
    /// `handshake_timeout` of a TLS connection that may still be in its handshake.
    Handshake(Token),
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
                        Some(at) if at <= now && c.lingering() => {
                            // The client kept the connection open past `LINGER`.
                            self.close(token);
                        }
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
                Timer::Connect(token) => {
                    let timed_out = self
                        .conns
                        .get(token)
                        .and_then(|c| c.upstream())
                        .is_some_and(|u| !u.flags.has(Flags::CONNECTED) && u.connect_by <= now);
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
                    self.admit.backoff_until = None;
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
                Timer::HandoffSettle => {
                    self.handoff.settle_armed = false;
                    self.lanes_retry();
                }
                Timer::Header(token) => self.header_timeout(token),
                Timer::Handshake(token) => self.handshake_timeout(token),
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
            Timer::Idle(k) | Timer::Throttle(k) | Timer::Handler(k) | Timer::Connect(k) => {
                conns.get(*k).is_some()
            }
            Timer::AcceptResume
            | Timer::Heartbeat
            | Timer::DrainDeadline
            | Timer::HandoffSettle
            | Timer::FaultEnd => true,
            Timer::Header(k) | Timer::Handshake(k) => conns.get(*k).is_some(),
        });
    }
}

/// The top 3 bits of a packed timer; 0 is a worker-wide timer, the rest say
/// what to do with the connection whose token fills the low 61 bits.
const KIND_SHIFT: u32 = 61;
const LOW_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl Packed for Timer {
    fn pack(&self) -> u64 {
        let (kind, low) = match *self {
            Timer::AcceptResume => (0, 0),
            Timer::Heartbeat => (0, 1),
            Timer::DrainDeadline => (0, 2),
            Timer::HandoffSettle => (0, 3),
            Timer::FaultEnd => (0, 4),
            Timer::Idle(t) => (1, t.0),
            Timer::Throttle(t) => (2, t.0),
            Timer::Connect(t) => (3, t.0),
            Timer::Handler(t) => (4, t.0),
            Timer::Header(t) => (5, t.0),
            Timer::Handshake(t) => (6, t.0),
        };
        // A connection's token uses bits 0-60 only (the higher ones mark epoll
        // tokens that are not connections, which never get a timer).
        debug_assert_eq!(low & !LOW_MASK, 0);
        (kind << KIND_SHIFT) | (low & LOW_MASK)
    }

    fn unpack(bits: u64) -> Option<Timer> {
        let low = bits & LOW_MASK;
        let token = Token(low);
        Some(match bits >> KIND_SHIFT {
            0 => match low {
                0 => Timer::AcceptResume,
                1 => Timer::Heartbeat,
                2 => Timer::DrainDeadline,
                3 => Timer::HandoffSettle,
                4 => Timer::FaultEnd,
                _ => return None,
            },
            1 => Timer::Idle(token),
            2 => Timer::Throttle(token),
            3 => Timer::Connect(token),
            4 => Timer::Handler(token),
            5 => Timer::Header(token),
            6 => Timer::Handshake(token),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::token::GEN_MASK;
    use super::*;

    /// Every timer comes back as it went in, with the largest token there is.
    #[test]
    fn timers_pack_into_8_bytes_and_back() {
        let big = Token::new(u32::MAX as usize, GEN_MASK);
        let small = Token::new(0, 0);
        let all = [
            Timer::AcceptResume,
            Timer::Heartbeat,
            Timer::DrainDeadline,
            Timer::HandoffSettle,
            Timer::FaultEnd,
            Timer::Idle(big),
            Timer::Throttle(big),
            Timer::Connect(big),
            Timer::Handler(big),
            Timer::Header(big),
            Timer::Handshake(big),
            Timer::Idle(small),
            Timer::Header(small),
            Timer::Handshake(small),
        ];
        for t in all {
            assert_eq!(Timer::unpack(t.pack()), Some(t), "{t:?}");
        }
        assert_eq!(Timer::unpack(7 << KIND_SHIFT), None);
        assert_eq!(Timer::unpack(5), None);
    }
}
