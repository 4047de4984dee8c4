//! The `Service` API: what runs on a connection inside a worker's event loop.
//!
//! A service makes one [`Handler`] per accepted connection. The loop owns the socket,
//! the buffers and the flow control; a handler only sees bytes that arrived and writes
//! bytes to send, through [`Io`]. Handlers never block and never touch the fd, so the
//! loop can enforce budgets, water marks and timeouts uniformly for every service.

use std::net::IpAddr;

use crate::config::{ListenConfig, ServiceKind};

pub mod echo;

/// What a handler may do to its connection while handling an event.
pub struct Io<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut bool,
    pub(crate) peer: Option<IpAddr>,
}

impl Io<'_> {
    /// Queues bytes for the client. The loop writes them as the socket allows and stops
    /// reading from a client whose queued output passes the high water mark.
    pub fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Closes the connection once everything queued has been sent.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// The client's IP address (None for Unix-socket clients).
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len()
    }
}

/// One connection's protocol logic.
pub trait Handler {
    /// Bytes arrived. `data` holds what earlier calls left unconsumed followed by the
    /// new bytes; return how many were consumed (the rest is kept for the next call).
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize;

    /// The client half-closed (sent FIN). By default the connection closes once queued
    /// output is flushed.
    fn on_eof(&mut self, io: &mut Io<'_>) {
        io.close();
    }

    /// True when closing the connection now loses nothing (e.g. HTTP keep-alive
    /// between requests). Draining workers close such connections at once and wait
    /// for the others. By default a connection is never idle-closable.
    fn is_idle(&self) -> bool {
        false
    }
}

/// A protocol: makes handlers for the connections of one listener.
pub trait Service {
    /// A client connected.
    fn connect(&mut self, peer: Option<IpAddr>) -> Box<dyn Handler>;
}

/// The built-in service configured for a listener.
pub fn builtin(listen: &ListenConfig) -> Box<dyn Service> {
    match listen.service {
        ServiceKind::Echo => Box::new(echo::Echo),
    }
}
