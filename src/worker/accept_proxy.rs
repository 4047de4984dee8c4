//! `accept_proxy = true`: a connection's first bytes are a PROXY header, read before
//! the service hears of the connection.
//!
//! The header is peeked (MSG_PEEK), not read, until it is complete: only then is it
//! consumed, exactly, so whatever the client sent after it stays in the socket for the
//! service, in copy and splice mode alike. Until then the connection has a placeholder
//! handler, is not counted against `max_connections_per_ip` (its socket peer is the
//! balancer) and has `accept_proxy_timeout` to finish. A malformed header, a client
//! that leaves or one too slow is closed and counted; nothing reaches the service.
//! `proxy_protocol` is here too: the header this worker's proxy sends upstream.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Instant;

use tracing::debug;

use crate::os::{fd, net};
use crate::proxy_protocol::{self as pp, Parsed};
use crate::service::proxy::options::{self as proxy_options, ProxyProtocol};
use crate::service::{Handler, Io};

use super::conn::Flags;
use super::connlog::End;
use super::token::Token;
use super::{Timer, Worker};

/// The handler of a connection whose PROXY header is still on its way: the loop reads
/// the header itself and never calls it.
struct AwaitingHeader;

impl Handler for AwaitingHeader {
    fn on_data(&mut self, _io: &mut Io<'_>, _data: &[u8]) -> usize {
        0
    }
}

/// The placeholder, for `add_conn`.
pub(super) fn placeholder() -> Box<dyn Handler> {
    Box::new(AwaitingHeader)
}

impl Worker {
    /// A new connection on an `accept_proxy` listener: wait for its header.
    pub(super) fn await_header(&mut self, token: Token, listener: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.flags.set(Flags::AWAITING_HEADER, true);
        let timeout = self
            .config
            .listen
            .get(listener)
            .map_or(crate::config::DEFAULT_ACCEPT_PROXY_TIMEOUT, |l| {
                l.accept_proxy_timeout()
            });
        self.timers.schedule(now + timeout, Timer::Header(token));
    }

    /// `accept_proxy_timeout` is over: a connection still without its header closes.
    pub(super) fn header_timeout(&mut self, token: Token) {
        if self
            .conns
            .get(token)
            .is_some_and(|c| c.flags.has(Flags::AWAITING_HEADER))
        {
            debug!("no PROXY header in time; closing");
            self.tally.stats.proxy_header_failed += 1;
            self.close_as(token, End::HeaderTimeout);
        }
    }

    /// Looks at what the client sent so far: closes it on a bad header, waits on a
    /// partial one, and on a complete one consumes it, admits the connection as coming
    /// from the client it names and hands it to its service.
    pub(super) fn read_header(&mut self, token: Token) {
        let limit = self.scratch.len().min(pp::V2_MAX);
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let got = match net::peek(c.fd.as_fd(), &mut self.scratch[..limit]) {
            Ok(0) => Err("the client closed before its PROXY header".to_string()),
            Ok(n) => pp::parse(&self.scratch[..n], limit).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                c.flags.set(Flags::MAY_READ, false);
                return;
            }
            Err(e) => Err(format!("read failed: {e}")),
        };
        let header = match got {
            Ok(Parsed::Partial) => {
                // Peeking left the bytes queued: only new ones raise a new edge.
                c.flags.set(Flags::MAY_READ, false);
                return;
            }
            Ok(Parsed::Done(h)) => h,
            Err(why) => {
                debug!(peer = ?c.peer, "closing: {why}");
                self.tally.stats.proxy_header_failed += 1;
                return self.close_as(token, End::BadHeader(why));
            }
        };
        // The bytes were peeked, so they are all there and this read takes them whole.
        match fd::read(c.fd.as_fd(), &mut self.scratch[..header.len]) {
            Ok(n) if n == header.len => {}
            Ok(n) => {
                let why = format!("short read of the PROXY header ({n} of {})", header.len);
                return self.close_as(token, End::Error(why));
            }
            Err(e) => return self.close_as(token, End::Error(format!("read failed: {e}"))),
        }
        c.flags.set(Flags::AWAITING_HEADER, false);
        if let Some((src, _)) = header.addrs {
            c.set_origin(Some(src));
            c.peer = Some(src.ip());
            c.peer_port = src.port();
        }
        let (listener, peer) = (usize::from(c.listener), c.peer);
        if !self.admit_ip(token, listener) {
            return self.close_as(token, End::PerIpLimit);
        }
        let handler = self.listeners[listener].service.connect(peer);
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.set_handler(handler);
        c.flags.set(Flags::MAY_READ, true);
        self.open_conn(token);
        if self.listeners[listener]
            .service
            .upstreams(crate::service::sealed::FORWARDING)
            .is_some()
        {
            let header = self.upstream_header(token);
            self.connect_upstream(token, Vec::new(), header);
        }
        // Bytes that came with the header are still in the socket: serve them now.
        self.drive(token);
    }

    /// Counts the connection against `max_connections_per_ip` under the address its
    /// header gave; false when that address is over the limit.
    fn admit_ip(&mut self, token: Token, listener: usize) -> bool {
        let flow = self.listeners[listener].flow;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let Some(ip) = c.peer.filter(|_| flow.max_connections_per_ip > 0) else {
            return true;
        };
        if !self.count_ip(listener, ip, flow.max_connections_per_ip) {
            return false;
        }
        if let Some(c) = self.conns.get_mut(token) {
            c.flags.set(Flags::COUNTED_IP, true);
        }
        true
    }

    /// What a proxy sends its upstream before the client's bytes: the PROXY header
    /// (`proxy_protocol`), naming the real client and the address it connected to.
    pub(super) fn upstream_header(&self, token: Token) -> Vec<u8> {
        let Some(c) = self.conns.get(token) else {
            return Vec::new();
        };
        let version = self
            .config
            .listen
            .get(usize::from(c.listener))
            .and_then(|l| proxy_options::of(l)?.proxy_protocol);
        let Some(version) = version else {
            return Vec::new();
        };
        let addrs: Option<(SocketAddr, SocketAddr)> =
            net::tcp_addrs(c.fd.as_fd()).map(|(peer, local)| (c.origin().unwrap_or(peer), local));
        let version = match version {
            ProxyProtocol::V1 => pp::Version::V1,
            ProxyProtocol::V2 => pp::Version::V2,
        };
        pp::encode(version, addrs)
    }
}
