//! Step 3 of the loop for one connection: read within the quantum and the water
//! marks, let the handler work, write, update epoll interest; and the one place a
//! connection leaves the worker (`close`, `detach`).

use std::os::fd::AsFd;
use std::time::Instant;

use tracing::{debug, warn};

use crate::channel::IdlePolicy;
use crate::os::epoll::Event;

use super::conn::Flags;
use super::conn::{self, Conn, Env};
use super::token::Token;
use super::{connlog, Phase, Timer, Worker, POOL_MAX};

impl Worker {
    pub(super) fn conn_event(&mut self, token: Token, ev: Event) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if ev.readable || ev.hangup {
            c.flags.set(Flags::MAY_READ, true);
        }
        c.flags.or(Flags::PEER_HUP, ev.hangup);
        self.drive(token);
    }

    /// Reads (within the quantum and the water marks), lets the handler work, writes,
    /// and updates epoll interest; closes the connection when it is done.
    pub(crate) fn drive(&mut self, token: Token) {
        let flow = &self.config.flow;
        let draining = self.phase == Phase::Draining;
        let moving = self.idle_policy == IdlePolicy::Handoff;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.flags.has(Flags::AWAITING_HEADER) {
            return self.read_header(token);
        }
        let tell_draining = draining && !(moving && c.can_move());
        let before = (self.tally.stats.bytes_in, self.tally.stats.bytes_out);
        let mut env = Env {
            scratch: &mut self.scratch,
            budget: flow.read_quantum.0 as usize,
            high: flow.write_high_water.0 as usize,
            low: flow.write_low_water.0 as usize,
            inbuf_limit: (flow.read_quantum.0 as usize).max(64 << 10) * 4,
            pool: &mut self.bufs,
            stats: &mut self.tally.stats,
            draining: tell_draining,
            jobs: &mut self.blocking.jobs,
            push: &mut self.push.outbox,
            token: token.0,
        };
        let outcome = if c.upstream().is_some() {
            c.pump_proxy(&mut env)
        } else {
            c.pump(&mut env)
        };
        let budget = env.budget;
        if let Some(up) = c.upstream().filter(|u| u.flags.has(Flags::CONNECTED)) {
            let (i, o) = (
                self.tally.stats.bytes_in - before.0,
                self.tally.stats.bytes_out - before.1,
            );
            self.tally
                .counters
                .upstream_bytes(usize::from(c.listener), up.index, i, o);
        }
        // The loop's clock (read once per epoll batch), not a clock read per event:
        // `last_active` is then early by at most the batch's processing time, which
        // an idle timeout (seconds) does not notice. A rate-limited connection reads
        // the clock itself: its re-admission time is computed from it.
        let now = if c.bucket().is_some() {
            Instant::now()
        } else {
            self.now
        };
        c.log_progress(
            self.tally.stats.bytes_in - before.0,
            self.tally.stats.bytes_out - before.1,
        );
        match outcome {
            conn::Outcome::Close(reason) => {
                if let Some(reason) = reason {
                    debug!(peer = ?c.peer, "closing: {reason}");
                    c.log_end(connlog::End::Error(reason));
                }
                // Jobs of a connection closed by an error have no one to report to;
                // left here they would be submitted under the next connection's token.
                self.blocking.jobs.clear();
                self.close(token);
                return;
            }
            conn::Outcome::Open { active } => {
                if active {
                    c.last_active = now;
                }
            }
        }
        if !self.blocking.jobs.is_empty() {
            submit_jobs(&mut self.blocking.jobs, &mut self.blocking.pool, token);
        }
        if let Some(at) = c.timer_at() {
            if c.timer_queued().is_none_or(|q| at < q) {
                c.set_timer_queued(Some(at));
                self.timers.schedule(at, Timer::Handler(token));
            }
        }
        // Every exchange ends at a point where the connection may be able to move
        // (only while draining: otherwise `c` is still the connection, no new lookup).
        let c = if draining {
            if self.release_idle(token, true) {
                return;
            }
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            c
        } else {
            c
        };
        // Reads cut short (by the quantum, or a proxy's bounded passes) continue in
        // step 4: with edge-triggered epoll no new event would announce them.
        if (budget == 0 || c.upstream().is_some()) && c.more_to_read() {
            self.ready.push(token);
        }
        if c.flags.has(Flags::THROTTLED) && !c.flags.has(Flags::THROTTLE_ARMED) {
            c.flags.set(Flags::THROTTLE_ARMED, true);
            self.tally.counters.throttled(usize::from(c.listener));
            let at = c.readmit_at(now);
            self.timers.schedule(at, Timer::Throttle(token));
        }
        if let Some(up) = c.upstream_mut() {
            let want = up.interest();
            if want != up.registered {
                if let Err(e) = self.epoll.modify(up.fd.as_fd(), want, token.upstream()) {
                    debug!("epoll modify of an upstream failed: {e}");
                    self.close(token);
                    return;
                }
                up.registered = want;
            }
        }
        let want = c.interest();
        if want != c.registered() {
            if let Err(e) = self.epoll.modify(c.fd.as_fd(), want, token.0) {
                debug!("epoll modify failed: {e}");
                self.close(token);
                return;
            }
            c.set_registered(want);
        }
        if POOL_MAX < self.bufs.len() {
            self.bufs.truncate(POOL_MAX);
        }
    }

    /// Runs a handler callback outside of a read (timer, completion), then lets the
    /// connection move whatever it produced.
    pub(super) fn with_handler(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut dyn crate::service::Handler, &mut crate::service::Io<'_>),
    ) {
        if self.call_handler(token, f) {
            if let Some(c) = self.conns.get_mut(token) {
                c.flags.set(Flags::MAY_READ, true);
            }
            self.drive(token);
        }
    }

    /// `with_handler` for a write from elsewhere (a push, a greeting): the socket is
    /// not known to be readable, so it is not read unless it was already due.
    pub(super) fn with_handler_quiet(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut dyn crate::service::Handler, &mut crate::service::Io<'_>),
    ) {
        if self.call_handler(token, f) {
            self.drive(token);
        }
    }

    /// Calls `f` with the connection's handler and an `Io` outside of a read; false
    /// when the connection is gone.
    pub(super) fn call_handler(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut dyn crate::service::Handler, &mut crate::service::Io<'_>),
    ) -> bool {
        let moving = self.idle_policy == IdlePolicy::Handoff;
        let draining = self.phase == Phase::Draining;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let draining = draining && !(moving && c.can_move());
        let mut env = Env {
            scratch: &mut self.scratch,
            budget: 0,
            high: 0,
            low: 0,
            inbuf_limit: 0,
            pool: &mut self.bufs,
            stats: &mut self.tally.stats,
            draining,
            jobs: &mut self.blocking.jobs,
            push: &mut self.push.outbox,
            token: token.0,
        };
        c.with_io(&mut env, f);
        true
    }

    pub(crate) fn close(&mut self, token: Token) {
        if let Some(c) = self.detach(token) {
            c.recycle(&mut self.bufs);
        }
    }

    /// Takes a connection out of the worker (its upstream, per-IP count, timers) and
    /// returns it: to be closed, or its socket handed over.
    pub(super) fn detach(&mut self, token: Token) -> Option<Conn> {
        let mut conn = None;
        if let Some(mut c) = self.conns.remove(token) {
            self.push.forget(token.0);
            self.log_closed(&mut c);
            if let Some(up) = c.upstream().filter(|u| u.flags.has(Flags::CONNECTED)) {
                let index = up.index;
                let service = self.listeners.get_mut(usize::from(c.listener));
                if let Some(u) =
                    service.and_then(|l| l.service.upstreams(crate::service::sealed::FORWARDING))
                {
                    u.released(index);
                }
            }
            if let (true, Some(ip)) = (c.flags.has(Flags::COUNTED_IP), c.peer) {
                if let Some(n) = self.admit.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.admit.per_ip.remove(&ip);
                    }
                }
            }
            conn = Some(c);
            self.compact_timers();
        }
        if self.conns.len() * 10 <= self.config.worker.max_connections * 9 {
            if let Err(e) = self.resume_accept() {
                warn!("cannot resume accepting: {e}");
            }
        }
        conn
    }
}

/// Sends the blocking jobs a handler just submitted to the pool (rare: kept out of
/// `drive`'s per-event path).
#[cold]
fn submit_jobs(jobs: &mut Vec<crate::service::Job>, pool: &mut super::pool::Pool, token: Token) {
    for job in jobs.drain(..) {
        if let Err(e) = pool.submit(token.0, job) {
            warn!("cannot run a blocking job: {e}");
        }
    }
}
