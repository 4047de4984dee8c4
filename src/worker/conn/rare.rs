//! The part of a connection that few connections need (a proxy's upstream, a rate
//! limit, a PROXY-header origin, a handler timer, a connection log line, a TLS engine), allocated
//! only once one of them is set, so an idle connection pays one pointer for all.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::bucket::Bucket;
use super::super::connlog::Record;
use super::{Conn, Upstream};
use crate::tls::TlsSession;

/// What few connections carry.
#[derive(Default)]
pub(super) struct Rare {
    /// The real client when it is not the socket's peer (a PROXY header named it).
    origin: Option<SocketAddr>,
    /// The handler asked for `on_timer` at this instant.
    timer_at: Option<Instant>,
    /// The earliest handler-timer entry already in the worker's heap.
    timer_queued: Option<Instant>,
    /// Per-client rate limit, if one is configured.
    bucket: Option<Box<Bucket>>,
    /// `log_connections`: what the line at close will say.
    log: Option<Box<Record>>,
    /// For a proxied connection: the upstream side.
    upstream: Option<Box<Upstream>>,
    /// On a TLS listener: the connection's TLS engine.
    tls: Option<Box<TlsSession>>,
    /// Closing: FIN sent, reading until the client's (see `Conn::lingering`).
    lingering: bool,
}

impl Rare {
    /// The TLS engine (borrowed beside the connection's other fields).
    pub(super) fn tls_mut(&mut self) -> Option<&mut TlsSession> {
        self.tls.as_deref_mut()
    }

    /// What the TLS handshake settled, for a handler's `Io`.
    pub(super) fn tls_info(&self) -> Option<&crate::tls::TlsInfo> {
        self.tls.as_deref().and_then(TlsSession::info)
    }

    /// The box of a connection that starts with a rate limit.
    pub(super) fn with_bucket(bucket: Box<Bucket>) -> Box<Rare> {
        Box::new(Rare {
            bucket: Some(bucket),
            ..Rare::default()
        })
    }
}

impl Conn {
    /// The per-client rate limit, if one is configured.
    pub fn bucket(&self) -> Option<&Bucket> {
        self.rare.as_ref().and_then(|r| r.bucket.as_deref())
    }

    pub(super) fn bucket_mut(&mut self) -> Option<&mut Bucket> {
        self.rare.as_mut().and_then(|r| r.bucket.as_deref_mut())
    }

    /// `log_connections`: the line this connection will log at close.
    pub fn log_mut(&mut self) -> Option<&mut Record> {
        self.rare.as_mut().and_then(|r| r.log.as_deref_mut())
    }

    pub fn set_log(&mut self, log: Option<Box<Record>>) {
        if log.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).log = log;
        }
    }

    pub fn take_log(&mut self) -> Option<Box<Record>> {
        self.rare.as_mut().and_then(|r| r.log.take())
    }

    /// For a proxied connection: the upstream side.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.rare.as_ref().and_then(|r| r.upstream.as_deref())
    }

    pub fn upstream_mut(&mut self) -> Option<&mut Upstream> {
        self.rare.as_mut().and_then(|r| r.upstream.as_deref_mut())
    }

    pub fn set_upstream(&mut self, up: Option<Box<Upstream>>) {
        if up.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).upstream = up;
        }
    }

    pub fn take_upstream(&mut self) -> Option<Box<Upstream>> {
        self.rare.as_mut().and_then(|r| r.upstream.take())
    }

    /// On a TLS listener: the connection's TLS engine.
    pub fn tls(&self) -> Option<&TlsSession> {
        self.rare.as_ref().and_then(|r| r.tls.as_deref())
    }

    /// The TLS engine with the socket it runs on (two fields of the connection
    /// borrowed at once).
    pub(super) fn tls_on_fd(&mut self) -> Option<(&mut TlsSession, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        let tls = self.rare.as_deref_mut().and_then(Rare::tls_mut)?;
        Some((tls, self.fd.as_fd()))
    }

    pub fn set_tls(&mut self, tls: Box<TlsSession>) {
        self.rare.get_or_insert_with(Box::default).tls = Some(tls);
    }

    /// The real client when it is not the socket's peer (a PROXY header named it).
    pub fn origin(&self) -> Option<SocketAddr> {
        self.rare.as_ref().and_then(|r| r.origin)
    }

    pub fn set_origin(&mut self, origin: Option<SocketAddr>) {
        if origin.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).origin = origin;
        }
    }

    /// The handler asked for `on_timer` at this instant.
    /// Closing: FIN sent after everything owed, reading (and throwing away) what the
    /// client still sends until it closes too or `service::LINGER` passes: closing
    /// a socket with unread input sends a reset, which can destroy the last reply
    /// before the client reads it (see `Io::close`).
    pub fn lingering(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.lingering)
    }

    /// Starts lingering: the deadline takes the handler's timer slot (the handler,
    /// closed, is not called again).
    pub(super) fn set_lingering(&mut self, until: Instant) {
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.lingering = true;
        rare.timer_at = Some(until);
    }

    pub fn timer_at(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.timer_at)
    }

    pub fn set_timer_at(&mut self, at: Option<Instant>) {
        if at.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).timer_at = at;
        }
    }

    /// The earliest handler-timer entry already in the worker's heap.
    pub fn timer_queued(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.timer_queued)
    }

    pub fn set_timer_queued(&mut self, at: Option<Instant>) {
        if at.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).timer_queued = at;
        }
    }
}
