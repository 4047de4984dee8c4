//! The connection log (`log_connections = true`): one info line per connection as it
//! closes, like HAProxy's tcplog: who connected, on which listener, to which upstream,
//! how many bytes went each way, how long it lasted and how it ended.
//!
//! A listener without the key pays nothing: its connections carry no record (a `None`
//! box). The line goes through the worker's log path (the non-blocking queue), so a
//! slow log never stalls the loop; under pressure lines are dropped and counted there.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use tracing::info;

use super::conn::Conn;
use super::conn::Flags;
use super::token::Token;
use super::Worker;

/// How a connection ended, in the words of the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed first (or the service closed after the client's FIN).
    ClientClosed,
    /// The upstream closed first.
    UpstreamClosed,
    /// The service ended it (an HTTP `Connection: close`, a refused request).
    ServiceClosed,
    IdleTimeout,
    /// No (complete) PROXY header within `accept_proxy_timeout`.
    HeaderTimeout,
    /// No finished TLS handshake within `handshake_timeout`.
    HandshakeTimeout,
    /// A malformed PROXY header, or the client left before sending one.
    BadHeader(String),
    /// The client's IP was over `max_connections_per_ip`.
    PerIpLimit,
    /// Every upstream refused or timed out.
    NoUpstream,
    /// Closed as idle by a draining (stopping) worker.
    Drain,
    /// Still open at the drain deadline, or when the worker was told to stop now.
    Stopped,
    /// Handed over to a worker of the new generation (which logs its own line later).
    HandedOver,
    Error(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::UpstreamClosed => f.write_str("upstream closed"),
            End::ServiceClosed => f.write_str("service closed"),
            End::IdleTimeout => f.write_str("idle timeout"),
            End::HeaderTimeout => f.write_str("proxy header timeout"),
            End::HandshakeTimeout => f.write_str("tls handshake timeout"),
            End::BadHeader(why) => write!(f, "bad proxy header: {why}"),
            End::PerIpLimit => f.write_str("per-ip limit"),
            End::NoUpstream => f.write_str("no upstream"),
            End::Drain => f.write_str("drain"),
            End::Stopped => f.write_str("stopped"),
            End::HandedOver => f.write_str("handed over"),
            End::Error(why) => write!(f, "error: {why}"),
        }
    }
}

/// Which side half-closed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

/// What is known of a logged connection while it is open.
#[derive(Debug)]
pub struct Record {
    start: Instant,
    /// The socket's peer, read at accept: a socket shut down both ways may no longer
    /// say who it was connected to.
    client: Option<SocketAddr>,
    /// Bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    /// Set by whoever decides to close it; otherwise derived at close.
    pub end: Option<End>,
    first_eof: Option<Side>,
}

impl Record {
    /// `accepted`: the peer accept() named, if known; else the socket is asked.
    pub fn new(now: Instant, fd: BorrowedFd<'_>, accepted: Option<SocketAddr>) -> Box<Record> {
        Box::new(Record {
            start: now,
            client: accepted.or_else(|| crate::os::net::tcp_addrs(fd).map(|(peer, _)| peer)),
            bytes_in: 0,
            bytes_out: 0,
            end: None,
            first_eof: None,
        })
    }
}

impl Conn {
    /// After each pump: bytes that moved, and which side's FIN came first.
    pub fn log_progress(&mut self, bytes_in: u64, bytes_out: u64) {
        if self.log_mut().is_none() {
            return;
        }
        let (client, upstream) = (self.client_eof(), self.upstream_eof());
        let Some(r) = self.log_mut() else {
            return;
        };
        r.bytes_in += bytes_in;
        r.bytes_out += bytes_out;
        if r.first_eof.is_none() {
            r.first_eof = match (client, upstream) {
                (true, _) => Some(Side::Client),
                (false, true) => Some(Side::Upstream),
                _ => None,
            };
        }
    }

    /// Records why the connection is about to close, unless a reason is known already
    /// (the first one is the cause, what follows is consequence).
    pub fn log_end(&mut self, end: End) {
        if let Some(r) = self.log_mut() {
            r.end.get_or_insert(end);
        }
    }
}

impl Worker {
    /// Marks the reason a connection is closing, for its log line.
    pub(super) fn end_as(&mut self, token: Token, end: End) {
        if let Some(c) = self.conns.get_mut(token) {
            c.log_end(end);
        }
    }

    /// `close`, with the reason for the log line.
    pub(crate) fn close_as(&mut self, token: Token, end: End) {
        self.end_as(token, end);
        self.close(token);
    }

    /// Writes the line of a connection leaving this worker.
    pub(super) fn log_closed(&self, c: &mut Conn) {
        let Some(r) = c.take_log() else {
            return;
        };
        let end = r.end.clone().unwrap_or(match r.first_eof {
            Some(Side::Client) => End::ClientClosed,
            Some(Side::Upstream) => End::UpstreamClosed,
            None => End::ServiceClosed,
        });
        let l = self.config.listen.get(usize::from(c.listener));
        // A TCP socket reset before accept returned no longer has a peer to read:
        // that is not a unix client, and saying so would mislead.
        let client = c.origin().or(r.client).map_or_else(
            || match l.map(|l| &l.address) {
                Some(crate::os::addr::ListenAddr::Unix(_)) => "unix".to_string(),
                _ => "unknown".to_string(),
            },
            |a| a.to_string(),
        );
        let listener = l
            .map(|l| l.name.clone().unwrap_or_else(|| l.address.to_string()))
            .unwrap_or_default();
        let upstream = c.upstream().map_or_else(
            || "-".to_string(),
            |u| upstream_text(u.addr, u.flags.has(Flags::CONNECTED)),
        );
        info!(
            target: "corral::connlog",
            "conn client={client} listener={listener} upstream={upstream} bytes_in={} \
             bytes_out={} duration_ms={} end=\"{end}\"",
            r.bytes_in,
            r.bytes_out,
            r.start.elapsed().as_millis()
        );
    }

    /// The worker exits with connections still open: each gets its line.
    pub(super) fn log_remaining(&mut self) {
        for token in self.conns.tokens() {
            if let Some(mut c) = self.conns.remove(token) {
                c.log_end(End::Stopped);
                self.log_closed(&mut c);
                c.recycle(&mut self.bufs);
            }
        }
    }
}

/// An upstream that never answered is still worth naming, marked as such.
fn upstream_text(addr: SocketAddr, connected: bool) -> String {
    if connected {
        addr.to_string()
    } else {
        format!("{addr}(not connected)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_read_as_words() {
        assert_eq!(End::ClientClosed.to_string(), "client closed");
        assert_eq!(
            End::BadHeader("not a PROXY protocol header".into()).to_string(),
            "bad proxy header: not a PROXY protocol header"
        );
        assert_eq!(
            upstream_text("127.0.0.1:9".parse().unwrap(), false),
            "127.0.0.1:9(not connected)"
        );
    }
}
