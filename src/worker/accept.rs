//! Accepting: listeners in and out of the epoll set, batches of `accept4`, back-off
//! on resource errors, and admitting a new (or handed-over) connection.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::channel::Handed;
use crate::os::epoll::Interest;
use crate::os::{net, stream};

use super::bucket::Bucket;
use super::conn::Conn;
use super::conn::Flags;
use super::token::{Token, TOKEN_LISTENER};
use super::{accept_proxy, connlog, Phase, Timer, Worker};

/// Whether the worker accepts now, and the per-IP connection counts it admits by.
#[derive(Debug, Default)]
pub(super) struct Admission {
    /// Listeners are in the epoll set.
    pub on: bool,
    /// Accepting is paused after a resource error until this instant.
    pub backoff_until: Option<Instant>,
    /// Connections per client IP, for listeners with `max_connections_per_ip`.
    pub per_ip: std::collections::HashMap<std::net::IpAddr, u32>,
}

/// Connections accepted per listener event before the loop moves on, so a flood of
/// new connections cannot starve the existing ones.
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS instead of spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Worker {
    pub(super) fn pause_accept(&mut self) {
        if !self.admit.on {
            return;
        }
        for fd in self.listeners.iter().filter_map(|l| l.fd.as_ref()) {
            let _ = self.epoll.delete(fd.as_fd());
        }
        self.watch_borrowed(false);
        self.admit.on = false;
    }

    pub(super) fn resume_accept(&mut self) -> io::Result<()> {
        if self.admit.on || self.phase != Phase::Running || self.admit.backoff_until.is_some() {
            return Ok(());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let Some(fd) = &l.fd else { continue };
            let interest = Interest {
                exclusive: true,
                ..Interest::READ
            };
            self.epoll
                .add(fd.as_fd(), interest, TOKEN_LISTENER | i as u64)?;
        }
        self.watch_borrowed(true);
        self.admit.on = true;
        Ok(())
    }

    pub(super) fn accept_on(&mut self, index: usize) {
        let max = self.config.worker.max_connections;
        let mut accepted = 0;
        for _ in 0..ACCEPT_BATCH {
            if !self.admit.on {
                return;
            }
            if self.conns.len() >= max {
                self.notices.max_connections(max);
                self.tally.counters.at_limit(index);
                self.pause_accept();
                return;
            }
            let Some(fd) = self.listeners.get(index).and_then(|l| l.fd.as_ref()) else {
                return;
            };
            match net::accept(fd.as_fd()) {
                Ok(a) => {
                    self.tally.counters.accepted(index);
                    self.tally.stats.accepted += 1;
                    let _ = self.add_conn(index, a, None);
                    accepted += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if stream::out_of_resources(&e) => {
                    self.accept_out_of_resources(&e);
                    return;
                }
                Err(e) => {
                    debug!("accept() failed: {e}");
                    break;
                }
            }
        }
        if accepted > 0 {
            self.rearm(index);
        }
    }

    /// Out of fds or memory: accepting pauses for `ACCEPT_BACKOFF` instead of spinning.
    pub(super) fn accept_out_of_resources(&mut self, e: &io::Error) {
        self.notices.accept_failed(e, ACCEPT_BACKOFF);
        self.pause_accept();
        let until = Instant::now() + ACCEPT_BACKOFF;
        self.admit.backoff_until = Some(until);
        self.timers.schedule(until, Timer::AcceptResume);
    }

    /// EPOLLEXCLUSIVE wakes the first waiter in the listener's queue, so the worker
    /// that registered first would take nearly every connection while load is light.
    /// Re-registering after a batch moves this worker to the back of the queue, which
    /// turns the wake-ups into a round robin over the idle workers.
    pub(super) fn rearm(&mut self, index: usize) {
        let Some(fd) = self.listeners.get(index).and_then(|l| l.fd.as_ref()) else {
            return;
        };
        let interest = Interest {
            exclusive: true,
            ..Interest::READ
        };
        let fd = fd.as_fd();
        if let Err(e) = self
            .epoll
            .delete(fd)
            .and_then(|_| self.epoll.add(fd, interest, TOKEN_LISTENER | index as u64))
        {
            warn!("cannot re-arm listener: {e}");
        }
    }

    /// A connection to serve: just accepted, or `handed` over from another worker
    /// (which read its PROXY header, if any: it is not expected again).
    pub(super) fn add_conn(
        &mut self,
        listener: usize,
        mut a: net::Accepted,
        handed: Option<&Handed>,
    ) -> Option<Token> {
        let flow = self.listeners[listener].flow;
        let listen = &self.config.listen[listener];
        let header = listen.accepts_proxy() && handed.is_none();
        let log = listen.logs_connections();
        let origin = handed.and_then(|h| h.peer);
        a.peer = origin.map(|o| o.ip()).or(a.peer);
        // With a PROXY header to come, the socket's peer is the balancer: the per-IP
        // limit applies once the header names the client.
        let counted_ip = match a.peer.filter(|_| !header) {
            Some(ip) if flow.max_connections_per_ip > 0 => {
                if !self.count_ip(listener, ip, flow.max_connections_per_ip) {
                    return None; // dropping the fd closes the connection
                }
                true
            }
            _ => false,
        };
        let handler = if header {
            accept_proxy::placeholder()
        } else {
            self.listeners[listener].service.connect(a.peer)
        };
        let now = Instant::now();
        let bucket = (flow.rate > 0).then(|| Box::new(Bucket::new(flow.rate, flow.burst, now)));
        let mut conn = Conn::new(a.fd, a.peer, handler, bucket, now);
        conn.flags.set(Flags::COUNTED_IP, counted_ip);
        conn.listener = listener as u16;
        conn.set_origin(origin);
        conn.peer_port = origin.or(a.addr).map_or(0, |o| o.port());
        let addr = a.addr;
        conn.set_log(log.then(|| connlog::Record::new(now, conn.fd.as_fd(), addr)));
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token)?;
        if let Err(e) = self.epoll.add(c.fd.as_fd(), c.registered(), token.0) {
            warn!("cannot watch a new connection: {e}");
            self.conns.remove(token);
            return None;
        }
        // A connection handed over continues as it began: on the record layer it
        // brought (TLS), or plain, whatever this listener is now.
        match handed {
            None if !self.attach_tls(token, listener, now) => return None,
            Some(Handed { tls: Some(t), .. }) if !self.attach_moved_tls(token, t) => return None,
            _ => {}
        }
        // idle_timeout = 0 means off: no idle timer at all.
        let idle = self.listeners[listener].idle;
        if !idle.is_zero() {
            self.timers.schedule(now + idle, Timer::Idle(token));
        }
        if header {
            self.await_header(token, listener, now);
            return Some(token);
        }
        if self.listeners[listener]
            .service
            .upstreams(crate::service::sealed::FORWARDING)
            .is_some()
        {
            let header = self.upstream_header(token);
            self.connect_upstream(token, Vec::new(), header);
        } else if handed.is_none() {
            self.open_conn(token);
        }
        Some(token)
    }

    /// `Handler::on_open` of a new connection. The loop drives the connection only if
    /// the handler did something (wrote, closed, asked for a job or a push op): a
    /// service with no greeting pays no extra read per accept.
    pub(super) fn open_conn(&mut self, token: Token) {
        let ops = self.push.outbox.ops.len();
        if !self.call_handler(token, |h, io| h.on_open(io)) {
            return;
        }
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let acted = c.owed() > 0
            || c.flags.has(Flags::CLOSE)
            || c.flags.has(Flags::SHUTDOWN_WRITE)
            || c.timer_at().is_some()
            || !self.blocking.jobs.is_empty()
            || self.push.outbox.ops.len() != ops;
        if acted {
            self.drive(token);
        }
    }
}

impl Worker {
    /// Counts one more connection from `ip` against `max` (`max_connections_per_ip`);
    /// false, counted as refused, when `ip` is at the limit already.
    pub(super) fn count_ip(&mut self, listener: usize, ip: std::net::IpAddr, max: usize) -> bool {
        let n = self.admit.per_ip.entry(ip).or_insert(0);
        if *n as usize >= max {
            self.notices.per_ip(listener as u16, ip, max);
            self.tally.stats.refused += 1;
            self.tally.counters.per_ip(listener);
            return false;
        }
        *n += 1;
        true
    }
}
