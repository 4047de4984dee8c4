//! TLS listeners in the worker: a new connection gets its TLS engine (the listener's
//! `rustls::ServerConfig`, loaded by the master before fork) and `handshake_timeout`
//! to finish its handshake; the rest of the connection's life is the ordinary pump,
//! which reads and writes through the engine (`conn.rs`).

use std::time::Instant;

use tracing::{debug, warn};

use crate::tls::{Failure, TlsMoved, TlsSession};

use super::connlog::End;
use super::token::Token;
use super::{Timer, Worker};

impl Worker {
    /// Gives a connection of a TLS listener its engine; false (and the connection
    /// closed) if rustls could not make one.
    pub(super) fn attach_tls(&mut self, token: Token, listener: usize, now: Instant) -> bool {
        let Some(tls) = self
            .config
            .listen
            .get(listener)
            .and_then(|l| l.tls.as_ref())
        else {
            return true;
        };
        let Some(server) = tls.loaded.server.clone() else {
            // Loaded configs always carry it; a listener built without a load is a bug.
            warn!(
                listener,
                "TLS listener without a loaded configuration; closing"
            );
            self.close(token);
            return false;
        };
        let timeout = tls.handshake_timeout();
        match TlsSession::new(server, tls.compact_idle) {
            Ok(s) => {
                if let Some(c) = self.conns.get_mut(token) {
                    c.set_tls(Box::new(s));
                }
                self.timers.schedule(now + timeout, Timer::Handshake(token));
                true
            }
            Err(e) => {
                warn!("cannot start a TLS session: {e}");
                self.tally.stats.tls.failed(Failure::Other);
                self.close(token);
                false
            }
        }
    }

    /// Gives a connection that moved here its TLS engine, continued from the record
    /// layer it brought; false (and the connection closed, counted) if this binary
    /// cannot continue that state.
    pub(super) fn attach_moved_tls(&mut self, token: Token, t: &TlsMoved) -> bool {
        match TlsSession::continued(t) {
            Some(s) => {
                if let Some(c) = self.conns.get_mut(token) {
                    c.set_tls(Box::new(s));
                }
                self.tally.stats.tls.moved_in += 1;
                true
            }
            None => {
                warn!(
                    version = t.version,
                    suite = t.suite,
                    "cannot continue a moved TLS connection's state; closing it"
                );
                self.handoff.counts.closed += 1;
                self.close(token);
                false
            }
        }
    }

    /// `handshake_timeout` is over: a connection still in its handshake closes.
    pub(super) fn handshake_timeout(&mut self, token: Token) {
        if self
            .conns
            .get(token)
            .and_then(|c| c.tls())
            .is_some_and(TlsSession::handshaking)
        {
            debug!("no TLS handshake in time; closing");
            self.tally.stats.tls.failed(Failure::Timeout);
            self.close_as(token, End::HandshakeTimeout);
        }
    }
}
