//! The worker's operator-visible events: connections refused by a limit, accept
//! errors, failed upstream connects, clients for whom no upstream was left. Each is
//! logged at info or warn (an operator must see them at the default level), through
//! one [`RateLog`] so that a client repeating the event cannot flood the log: one line
//! per kind (per upstream, for connect failures) per second, with the count of the
//! lines held back on the next one, and a summary from [`Events::flush`] (called by the
//! heartbeat) when nothing came after the flood.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::ratelog::{suppressed, RateLog, WINDOW};

/// What a rate-limited line is about: the key of its one-line-per-second budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    PerIp,
    MaxConnections,
    AcceptFailed,
    /// A connect to upstream `index` of listener `listener` failed.
    UpstreamFailed {
        listener: u16,
        index: usize,
    },
    /// A client of `listener` was closed because no upstream could be reached.
    NoUpstream {
        listener: u16,
    },
}

impl Kind {
    /// The summary line for events held back after the last line of this kind.
    fn summary(self, n: u64, listen: &[String]) {
        let at = |l: u16| listen.get(usize::from(l)).map_or("?", String::as_str);
        match self {
            Kind::PerIp => info!("per-IP connection limit: {n} more suppressed"),
            Kind::MaxConnections => info!("connection limit: {n} more suppressed"),
            Kind::AcceptFailed => warn!("accept() failed: {n} more suppressed"),
            Kind::UpstreamFailed { listener, index } => warn!(
                listen = %at(listener),
                upstream = index,
                "upstream connect failed: {n} more suppressed"
            ),
            Kind::NoUpstream { listener } => warn!(
                listen = %at(listener),
                "no upstream could be reached: {n} more suppressed"
            ),
        }
    }
}

pub struct Events {
    log: RateLog<Kind>,
    /// Listener addresses by index, to name them in lines.
    listen: Vec<String>,
}

impl Events {
    pub fn new(listen: Vec<String>) -> Events {
        Events {
            log: RateLog::new(WINDOW),
            listen,
        }
    }

    fn listen(&self, listener: u16) -> &str {
        self.listen
            .get(usize::from(listener))
            .map_or("?", String::as_str)
    }

    fn admit(&mut self, kind: Kind) -> Option<String> {
        self.log.admit(kind, Instant::now()).map(suppressed)
    }

    /// A client went over `max_connections_per_ip` and was closed at once.
    pub fn per_ip(&mut self, listener: u16, ip: IpAddr, limit: usize) {
        if let Some(more) = self.admit(Kind::PerIp) {
            let listen = self.listen(listener);
            info!(%listen, %ip, limit, "per-IP connection limit: connection closed{more}");
        }
    }

    /// The worker holds `max_connections` and stops accepting (new clients wait in
    /// the listen queue until it is back under 90 %).
    pub fn max_connections(&mut self, max: usize) {
        if let Some(more) = self.admit(Kind::MaxConnections) {
            info!(
                max,
                "connection limit reached: not accepting until below 90%{more}"
            );
        }
    }

    /// accept() ran out of a resource; accepting pauses for `backoff`.
    pub fn accept_failed(&mut self, e: &std::io::Error, backoff: Duration) {
        if let Some(more) = self.admit(Kind::AcceptFailed) {
            warn!("accept() failed: {e}; pausing accepts for {backoff:?}{more}");
        }
    }

    /// A connect to upstream `index` (at `addr`) failed; the next one is tried.
    pub fn upstream_failed(&mut self, listener: u16, index: usize, addr: SocketAddr, why: &str) {
        if let Some(more) = self.admit(Kind::UpstreamFailed { listener, index }) {
            let listen = self.listen(listener);
            warn!(%listen, upstream = index, %addr, "upstream connect failed: {why}{more}");
        }
    }

    /// Every upstream was tried (or is marked down) for a client, which is closed.
    pub fn no_upstream(&mut self, listener: u16, tried: usize) {
        if let Some(more) = self.admit(Kind::NoUpstream { listener }) {
            let listen = self.listen(listener);
            warn!(
                %listen,
                tried, "no upstream could be reached (all down); closing the client{more}"
            );
        }
    }

    /// Logs the counts of lines held back whose window is over.
    pub fn flush(&mut self, now: Instant) {
        for (kind, n) in self.log.flush(now) {
            kind.summary(n, &self.listen);
        }
    }
}
