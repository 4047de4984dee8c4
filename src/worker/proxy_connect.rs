//! The proxy's connection logic in the worker loop (runtime machinery, so it lives in
//! the worker; the `proxy` service only chooses upstreams and learns outcomes): connecting a client's upstream
//! (non-blocking, with a timeout), falling back to the next upstream on failure, and
//! the upstream socket's events. Moving the bytes is `worker::conn`'s proxy pump.

use std::os::fd::AsFd;
use std::time::Instant;

use tracing::{debug, warn};

use super::{End, Flags, Pipes};
use super::{Timer, Token, Upstream, Worker};
use crate::os::epoll::Event;
use crate::os::stream;

impl Worker {
    /// Starts connecting a proxied client to the next upstream it has not tried,
    /// carrying over the bytes it already sent; closes it when none is left.
    pub(crate) fn connect_upstream(&mut self, token: Token, mut tried: Vec<usize>, carry: Vec<u8>) {
        let now = Instant::now();
        let Some(listener) = self.conns.get(token).map(|c| usize::from(c.listener)) else {
            return;
        };
        loop {
            let Some(u) = self
                .listeners
                .get_mut(listener)
                .and_then(|l| l.service.upstreams(crate::service::sealed::FORWARDING))
            else {
                return self.close(token);
            };
            let timeout = u.connect_timeout();
            let Some((index, addr)) = u.pick(&tried, now) else {
                self.notices.no_upstream(listener as u16, tried.len());
                return self.close_as(token, End::NoUpstream);
            };
            tried.push(index);
            let started = stream::connect_nonblocking(addr);
            let sock = match started {
                Ok(s) => s,
                Err(e) => {
                    u.failed(index, now);
                    self.tally.counters.upstream_failed(listener, index, now);
                    self.notices
                        .upstream_failed(listener as u16, index, addr, &e.to_string());
                    continue;
                }
            };
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            let mut up = Upstream::new(sock, index, addr, tried, now + timeout);
            up.set_pending(carry);
            if let Err(e) = self
                .epoll
                .add(up.fd.as_fd(), up.registered, token.upstream())
            {
                warn!("cannot watch an upstream socket: {e}");
                return self.close(token);
            }
            c.set_upstream(Some(Box::new(up)));
            self.timers.schedule(now + timeout, Timer::Connect(token));
            return;
        }
    }

    /// The current connect attempt failed: mark the upstream down for a while and try
    /// the next one.
    pub(crate) fn upstream_failed(&mut self, token: Token, why: &str) {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Some(mut up) = c.take_upstream() else {
            return;
        };
        let listener = usize::from(c.listener);
        self.notices
            .upstream_failed(c.listener, up.index, up.addr, why);
        let _ = self.epoll.delete(up.fd.as_fd());
        let carry = up.take_pending();
        let tried = std::mem::take(&mut up.tried);
        if let Some(u) = self
            .listeners
            .get_mut(listener)
            .and_then(|l| l.service.upstreams(crate::service::sealed::FORWARDING))
        {
            u.failed(up.index, now);
        }
        self.tally.counters.upstream_failed(listener, up.index, now);
        // The next attempt's deadline is later, so this one's connect timer, still in
        // the heap, finds it not yet due and does nothing.
        self.connect_upstream(token, tried, carry);
    }

    pub(crate) fn upstream_event(&mut self, token: Token, ev: Event) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let listener = usize::from(c.listener);
        // A TLS client's bytes must pass through its engine: no splice for it
        // (config refuses `splice` with `tls`; this keeps a hand-built listener safe).
        let copy_only = c.bucket().is_some() || c.tls().is_some();
        let Some(up) = c.upstream_mut() else {
            return;
        };
        if !up.flags.has(Flags::CONNECTED) {
            let error = match stream::take_error(&up.fd) {
                Ok(Some(e)) | Err(e) => Some(e.to_string()),
                Ok(None) if ev.writable => None,
                Ok(None) => Some("connection closed".into()),
            };
            if let Some(why) = error {
                return self.upstream_failed(token, &why);
            }
            up.flags.set(Flags::CONNECTED, true);
            up.flags.set(Flags::MAY_READ, true);
            let index = up.index;
            // What the client sent while we connected goes to this upstream now.
            let carried = up.pending() as u64;
            // Zero-copy forwarding where the listener asks for it and no rate limit
            // needs to see the bytes; without pipes (EMFILE) it copies as usual.
            let splice = self
                .config
                .listen
                .get(listener)
                .and_then(|l| crate::service::proxy::options::of(l)?.splice)
                .unwrap_or(false);
            if splice && !copy_only {
                match Pipes::new() {
                    Ok(p) => up.pipes = Some(Box::new(p)),
                    Err(e) => debug!("no pipes for splice ({e}); copying instead"),
                }
            }
            if let Some(u) = self
                .listeners
                .get_mut(listener)
                .and_then(|l| l.service.upstreams(crate::service::sealed::FORWARDING))
            {
                u.connected(index);
            }
            self.tally.counters.upstream_connected(listener, index);
            self.tally
                .counters
                .upstream_bytes(listener, index, carried, 0);
        }
        let Some(up) = self.conns.get_mut(token).and_then(|c| c.upstream_mut()) else {
            return;
        };
        if ev.readable || ev.hangup {
            up.flags.set(Flags::MAY_READ, true);
        }
        up.flags.or(Flags::PEER_HUP, ev.hangup);
        self.drive(token);
    }
}
