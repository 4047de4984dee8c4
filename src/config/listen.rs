//! One `[[listen]]` entry: its address, its service and the keys common to every
//! listener (socket options, flow limits, timeouts, how connections move). The other
//! keys of the table belong to its service: they are kept raw and parsed by it.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

pub use crate::os::net::ListenAddr;

use super::options::{ParsedOptions, RawOptions};
use super::{privs, Dur, FlowConfig, Size, Steer, WorkerConfig};

/// How workers share a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptMode {
    /// One socket in every worker's epoll with EPOLLEXCLUSIVE.
    #[default]
    Shared,
    /// One SO_REUSEPORT socket per worker slot, kept across generations, so the
    /// kernel spreads connections evenly and a reload resets no queued connection.
    Reuseport,
}

/// Written back as the string it was read from (for `corral -T`).
impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// One `[[listen]]` entry. A key that is none of these is not refused here but by the
/// service, which declares its own (serde's `deny_unknown_fields` cannot be combined
/// with the `flatten` that collects them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenConfig {
    /// `"127.0.0.1:8080"`, `"[::1]:8080"` or `"unix:/path"`.
    pub address: ListenAddr,
    /// Which service answers on it: `echo`, `http`, `proxy`, or one registered by a
    /// program built on the library.
    pub service: String,
    /// Name used to match sockets passed in by systemd (`LISTEN_FDNAMES`).
    #[serde(default)]
    pub name: Option<String>,
    /// Listen backlog.
    #[serde(default = "default_backlog")]
    pub backlog: i32,
    /// How workers share this listener.
    #[serde(default)]
    pub accept: AcceptMode,
    /// Overrides `[flow] rate` for this listener's clients.
    #[serde(default)]
    pub rate: Option<Size>,
    /// Overrides `[flow] burst` for this listener's clients.
    #[serde(default)]
    pub burst: Option<Size>,
    /// Overrides `[flow] max_connections_per_ip` for this listener.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Overrides `[worker] idle_timeout` for this listener (`"0"` = never), for
    /// database pools, pub/sub and other connections that are quiet by design.
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// TCP: TCP_DEFER_ACCEPT, `true` (1 s) or how long to wait for the first bytes.
    #[serde(default)]
    pub defer_accept: Option<privs::DeferAccept>,
    /// TCP: TCP_NODELAY on accepted connections (default true).
    #[serde(default)]
    pub nodelay: Option<bool>,
    /// TCP: SO_KEEPALIVE on accepted connections.
    #[serde(default)]
    pub keepalive: Option<bool>,
    /// TCP: idle time before the first keep-alive probe (TCP_KEEPIDLE).
    #[serde(default)]
    pub keepalive_idle: Option<Dur>,
    /// TCP: time between keep-alive probes (TCP_KEEPINTVL).
    #[serde(default)]
    pub keepalive_interval: Option<Dur>,
    /// TCP: unanswered probes before the connection is dropped (TCP_KEEPCNT).
    #[serde(default)]
    pub keepalive_count: Option<u32>,
    /// Unix: the socket file's mode, an octal string (`"0660"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Unix: the socket file's owner, `"user[:group]"`.
    #[serde(default)]
    pub owner: Option<String>,
    /// `owner` resolved at load (not a config key).
    #[serde(skip)]
    pub resolved_owner: Option<(u32, Option<u32>)>,
    /// Read a PROXY protocol header (v1 or v2) from every client before the service
    /// sees a byte: the address in it is the client's, for limits, logs and
    /// `proxy_protocol`. Only for listeners that a balancer alone can reach.
    #[serde(default)]
    pub accept_proxy: Option<bool>,
    /// How long a client has to send its PROXY header (default 3s).
    #[serde(default)]
    pub accept_proxy_timeout: Option<Dur>,
    /// One info line per connection at close (client, listener, upstream, bytes
    /// each way, duration, how it ended), like HAProxy's tcplog.
    #[serde(default)]
    pub log_connections: Option<bool>,
    /// reuseport: which slot's socket the kernel gives a new connection to
    /// (`"client-ip"`: a hash of the client address, so a client sticks to a slot).
    #[serde(default)]
    pub steer: Option<Steer>,
    /// `false`: this listener's connections are never suspended at reload; only idle
    /// ones (HTTP keep-alive between requests) move, the others stay in the old worker
    /// until they end or `drain_timeout` cuts them (the behaviour before suspend).
    #[serde(default)]
    pub suspend: Option<bool>,
    /// `[listen.tls]`: terminate TLS on this listener (certificates, SNI, ALPN,
    /// client certificates); the service sees plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::TlsConfig>,
    /// Every other key: the service's own, kept as written for the service to parse
    /// and check (see [`super::options`]).
    #[serde(flatten)]
    pub options: RawOptions,
    /// `options` as the service parsed them at load (not a config key).
    #[serde(skip)]
    pub parsed: ParsedOptions,
}

/// The flow-control limits in force on one listener (its overrides, else `[flow]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenFlow {
    /// Bytes per second per client; 0 = unlimited.
    pub rate: u64,
    /// Bucket size in bytes.
    pub burst: u64,
    /// Connections per client IP per worker; 0 = unlimited.
    pub max_connections_per_ip: usize,
}

impl ListenConfig {
    /// This listener's effective flow-control limits.
    /// The idle timeout in force on this listener: its own, else `[worker]`'s; zero
    /// means none.
    pub fn idle_timeout(&self, worker: &WorkerConfig) -> Duration {
        self.idle_timeout.unwrap_or(worker.idle_timeout).0
    }

    pub fn flow(&self, flow: &FlowConfig) -> ListenFlow {
        let rate = self.rate.unwrap_or(flow.rate).0;
        let burst = self.burst.unwrap_or(flow.burst).0;
        ListenFlow {
            rate,
            // Default burst: 100 ms worth of rate (at least 4 KiB), the same horizon
            // as the throttle timer, so a throttled client moves in smooth steps.
            burst: if burst > 0 {
                burst
            } else {
                (rate / 10).max(4096)
            },
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(flow.max_connections_per_ip),
        }
    }
}

fn default_backlog() -> i32 {
    511
}
