//! Configuration: built-in defaults ← TOML file ← `CORRAL_SECTION__KEY` environment
//! variables, layered with figment and checked in full before anything acts on it.
//!
//! Every error names where the bad value came from (file or environment variable), the
//! key, and why, because a config error is read by an operator in a hurry. Values take
//! human units (`"30s"`, `"64KiB"`). A config is an immutable value: a reload builds a
//! new one and either swaps it in whole or leaves the running one untouched.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

mod checks;
pub mod effective;
pub mod privs;
pub use checks::RSS_FLOOR;
mod pp;
pub use pp::{ProxyProtocol, DEFAULT_ACCEPT_PROXY_TIMEOUT};
mod recycle;
pub use recycle::Steer;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Where the config file is read from when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/corral/corral.toml";

/// Prefix of environment variables that override config keys:
/// `CORRAL_MASTER__WORKERS=4` sets `[master] workers`.
pub const ENV_PREFIX: &str = "CORRAL_";

/// Config sections that environment variables may address. Other `CORRAL_*` variables
/// (say `CORRAL_BIN` in a test harness) are none of our business and are ignored, so
/// that they cannot trip the unknown-key check.
const ENV_SECTIONS: &[&str] = &["master", "worker", "log", "flow"];

/// Why a configuration was refused. The message is complete: it is printed as is by
/// `corral -t`, `corral -s reload` and the master's log.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable; figment would silently skip it otherwise.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, type errors and unknown keys, as reported by figment (which names
    /// the key and the file or environment variable).
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but makes no sense.
    #[error("invalid value for key `{key}` in {origin}: {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
}

/// A duration written with a unit: `"500ms"`, `"30s"`, `"2m"`, `"1h"`, `"1d"`; a bare
/// integer means seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Dur(pub Duration);

/// A byte size written with a unit: `"512"`, `"64KiB"`, `"1MiB"`, `"2GiB"` (also `KB`,
/// `MB`, `GB` as powers of ten, and `K`, `M`, `G` as powers of two, as nginx reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Size(pub u64);

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        d.to_string()
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        s.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &[(u64, &str)] = &[(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for &(n, unit) in UNITS {
            if self.0 >= n && self.0 % n == 0 {
                return write!(f, "{}{unit}", self.0 / n);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Splits `"64KiB"` into `(64, "KiB")`.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a duration (write e.g. \"500ms\", \"30s\", \"2m\", \"1h\")");
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let ms: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        n.checked_mul(ms)
            .map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(bad)
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a size (write e.g. \"4096\", \"64KiB\", \"1MiB\")");
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mul: u64 = match unit {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" | "m" => 1 << 20,
            "GiB" | "G" | "g" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mul).map(Size).ok_or_else(bad)
    }
}

/// Accepts either a string with a unit or a bare non-negative integer.
fn de_number_or_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| de::Error::custom("expected a number or a string with a unit"))?
    {
        Raw::N(n) => n.to_string().parse().map_err(de::Error::custom),
        Raw::S(s) => s.parse().map_err(de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_number_or_str(d)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_number_or_str(d)
    }
}

/// `workers = 4` or `workers = "auto"` (one per CPU the process may run on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "WorkersRepr")]
pub enum Workers {
    Auto,
    Count(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WorkersRepr {
    N(usize),
    S(String),
}

impl From<Workers> for WorkersRepr {
    fn from(w: Workers) -> Self {
        match w {
            Workers::Auto => WorkersRepr::S("auto".into()),
            Workers::Count(n) => WorkersRepr::N(n),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WorkersRepr::deserialize(d)
            .map_err(|_| de::Error::custom("expected a number of workers or \"auto\""))?
        {
            WorkersRepr::N(n) => Ok(Workers::Count(n)),
            WorkersRepr::S(s) if s == "auto" => Ok(Workers::Auto),
            WorkersRepr::S(s) => s.parse().map(Workers::Count).map_err(|_| {
                de::Error::custom(format!("`{s}` is not a number of workers or \"auto\""))
            }),
        }
    }
}

impl Workers {
    /// The number of workers to run.
    pub fn count(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// `[master]`: the supervisor's knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Number of worker processes, or "auto".
    pub workers: Workers,
    /// Holds the master's pid; `corral -s` finds the master through it.
    pub pid_file: PathBuf,
    /// Control socket; default: the pid file's path with `.sock` instead of `.pid`.
    pub control_socket: Option<PathBuf>,
    /// How long draining workers may keep connections open before they are killed.
    pub drain_timeout: Dur,
    /// How long a fast stop waits before it kills what is left.
    pub stop_timeout: Dur,
    /// A worker that sends no heartbeat for this long is killed and replaced.
    pub watchdog_timeout: Dur,
    /// How many older generations may be draining at once; the oldest is cut short.
    pub max_old_generations: usize,
    /// A worker whose RSS exceeds this is replaced gracefully; 0 = off.
    pub max_worker_rss: Size,
    /// How long a new master may take to report ready on a binary upgrade.
    pub upgrade_timeout: Dur,
    /// Detach from the terminal and run in the background.
    pub daemon: bool,
    /// Pin worker slot i to the i-th CPU the master may run on (modulo their number).
    pub cpu_affinity: bool,
    /// Allow `corral fault` and `corral chaos` to make workers fail on request.
    pub fault_injection: bool,
    /// Workers drop to this user (name or uid) right after fork; the master stays root.
    #[serde(deserialize_with = "privs::de_id")]
    pub user: Option<String>,
    /// Workers' group (name or gid); default: `user`'s primary group.
    #[serde(deserialize_with = "privs::de_id")]
    pub group: Option<String>,
    /// SIGTERM drains like SIGQUIT instead of stopping fast (for orchestrators).
    pub graceful_sigterm: bool,
    /// `user`/`group` resolved at load (not a config key).
    #[serde(skip)]
    pub credentials: Option<crate::os::privs::Credentials>,
    /// Reload replaces this many slots at a time, each new worker ready before its
    /// predecessor drains; 0 = the whole generation at once.
    pub reload_surge: usize,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            workers: Workers::Auto,
            pid_file: PathBuf::from("/run/corral/corral.pid"),
            control_socket: None,
            drain_timeout: Dur(Duration::from_secs(30)),
            stop_timeout: Dur(Duration::from_secs(5)),
            watchdog_timeout: Dur(Duration::from_secs(10)),
            max_old_generations: 2,
            max_worker_rss: Size(0),
            upgrade_timeout: Dur(Duration::from_secs(30)),
            daemon: false,
            cpu_affinity: false,
            fault_injection: false,
            user: None,
            group: None,
            graceful_sigterm: false,
            credentials: None,
            reload_surge: 0,
        }
    }
}

impl MasterConfig {
    /// The control socket's path: configured, or derived from the pid file.
    pub fn control_socket_path(&self) -> PathBuf {
        match &self.control_socket {
            Some(p) => p.clone(),
            None => self.pid_file.with_extension("sock"),
        }
    }
}

/// `[worker]`: per-worker limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// A worker stops accepting at this many connections and resumes at 90 % of it.
    pub max_connections: usize,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Dur,
    /// How often a worker reports to the master (heartbeat with stats).
    pub heartbeat_interval: Dur,
    /// Threads of the per-worker blocking pool (started on first use).
    pub blocking_threads: usize,
    /// Soft RLIMIT_NOFILE of each worker (at most the hard limit); default: the hard limit.
    pub rlimit_nofile: Option<u64>,
    /// RLIMIT_CORE of each worker: a size or "unlimited"; default: inherited.
    pub rlimit_core: Option<privs::CoreLimit>,
    /// A worker is replaced gracefully after serving this many connections; 0 = off.
    pub max_requests: u64,
    /// Up to this many connections are added to each worker's `max_requests`, drawn
    /// at random per worker, so workers do not all restart together.
    pub max_requests_jitter: u64,
    /// A worker is replaced gracefully after living this long; "0" = off.
    pub max_lifetime: Dur,
    /// Up to this much is added to each worker's `max_lifetime`, drawn per worker.
    pub max_lifetime_jitter: Dur,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_connections: 10_000,
            idle_timeout: Dur(Duration::from_secs(60)),
            heartbeat_interval: Dur(Duration::from_secs(1)),
            blocking_threads: 4,
            rlimit_nofile: None,
            rlimit_core: None,
            max_requests: 0,
            max_requests_jitter: 0,
            max_lifetime: Dur(Duration::ZERO),
            max_lifetime_jitter: Dur(Duration::ZERO),
        }
    }
}

/// `[flow]`: per-client flow control in the worker loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Bytes per second one client may send; 0 = unlimited.
    pub rate: Size,
    /// Bytes a client may send at once before `rate` applies; 0 = 100 ms of `rate`
    /// (at least 4 KiB).
    pub burst: Size,
    /// Most bytes read from one client per loop iteration, so that one busy client
    /// cannot starve the others in the same batch.
    pub read_quantum: Size,
    /// Stop reading from a client whose unsent output exceeds this.
    pub write_high_water: Size,
    /// Resume reading once its unsent output is back under this.
    pub write_low_water: Size,
    /// Connections one client IP may hold in one worker; 0 = unlimited.
    pub max_connections_per_ip: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            rate: Size(0),
            burst: Size(0),
            read_quantum: Size(64 << 10),
            write_high_water: Size(256 << 10),
            write_low_water: Size(64 << 10),
            max_connections_per_ip: 0,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
    /// Log file (reopened on SIGUSR1); stderr when unset.
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            file: None,
        }
    }
}

/// How a proxy listener picks an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each new connection goes to the next upstream in turn.
    #[default]
    RoundRobin,
    /// Each new connection goes to the upstream with the fewest open connections
    /// (from this worker).
    LeastConn,
}

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

/// What a listener binds: a TCP address or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "`{s}` is not an address (write \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/corral.sock\")"
            )
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// One `[[listen]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// http: the status code of every response.
    #[serde(default)]
    pub status: Option<u16>,
    /// http: the body of every response.
    #[serde(default)]
    pub body: Option<String>,
    /// http: extra response headers.
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// http: a request's headers must arrive within this (slowloris).
    #[serde(default)]
    pub header_timeout: Option<Dur>,
    /// http: largest request head (request line and headers) accepted.
    #[serde(default)]
    pub max_header_size: Option<Size>,
    /// http: largest request body (`Content-Length` or chunked) accepted, 413 above;
    /// `"0"` (the default) = no limit: bodies are discarded as they arrive.
    #[serde(default)]
    pub max_body_size: Option<Size>,
    /// proxy: where connections are forwarded (`"host:port"`).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// proxy: how an upstream is picked.
    #[serde(default)]
    pub balance: Option<Balance>,
    /// proxy: how long connecting to an upstream may take before the next is tried.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// proxy: how long an upstream that refused or timed out is skipped.
    #[serde(default)]
    pub upstream_backoff: Option<Dur>,
    /// proxy: move bytes with splice(2) through kernel pipes instead of copying them
    /// through user space (costs 4 fds and up to 128 KiB of pipe memory per
    /// connection; pays for bulk transfers). Ignored while a `rate` limit applies.
    #[serde(default)]
    pub splice: Option<bool>,
    /// Overrides `[worker] idle_timeout` for this listener (`"0"` = never), for
    /// database pools, pub/sub and other connections that are quiet by design.
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// proxy: `upstreams` resolved by the master at config load (not a config key).
    /// Workers use these and never resolve names themselves.
    #[serde(skip)]
    pub resolved_upstreams: Vec<SocketAddr>,
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
    /// proxy: send a PROXY protocol header (`"v1"` or `"v2"`) to the upstream before
    /// any client byte, naming the real client and this listener's address.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
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
}

/// Keys that only make sense for one service, for the "wrong service" check.
const HTTP_KEYS: &[&str] = &[
    "status",
    "body",
    "headers",
    "header_timeout",
    "max_header_size",
    "max_body_size",
];
const PROXY_KEYS: &[&str] = &[
    "upstreams",
    "balance",
    "connect_timeout",
    "upstream_backoff",
    "splice",
];

impl ListenConfig {
    fn set_keys(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let set = [
            ("status", self.status.is_some()),
            ("body", self.body.is_some()),
            ("headers", self.headers.is_some()),
            ("header_timeout", self.header_timeout.is_some()),
            ("max_header_size", self.max_header_size.is_some()),
            ("max_body_size", self.max_body_size.is_some()),
            ("upstreams", !self.upstreams.is_empty()),
            ("balance", self.balance.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("upstream_backoff", self.upstream_backoff.is_some()),
            ("splice", self.splice.is_some()),
        ];
        for (k, on) in set {
            if on {
                out.push(k);
            }
        }
        out
    }

    /// The proxy's upstream addresses, resolved now. A literal `ip:port` costs no
    /// lookup; a name goes through the system resolver (/etc/hosts, then DNS),
    /// which blocks the caller for as long as the resolver takes.
    pub fn upstream_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        use std::net::ToSocketAddrs;
        let mut out = Vec::new();
        for u in &self.upstreams {
            if let Ok(a) = u.parse::<SocketAddr>() {
                out.push(a);
                continue;
            }
            let mut addrs = u.to_socket_addrs().map_err(|e| {
                format!("upstream `{u}` does not resolve: {e} (write \"host:port\")")
            })?;
            match addrs.next() {
                Some(a) => out.push(a),
                None => return Err(format!("upstream `{u}` resolves to no address")),
            }
        }
        Ok(out)
    }
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

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub master: MasterConfig,
    pub worker: WorkerConfig,
    pub flow: FlowConfig,
    pub log: LogConfig,
    pub listen: Vec<ListenConfig>,
    /// The file this config was read from (not a config key).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Config {
    /// Reads, layers and validates the config at `path`. A missing file is an error:
    /// running on silent defaults would surprise an operator who mistyped `-c`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // The file's text was read above so that an unreadable file is reported as
        // such; figment re-reads it with file_exact to keep the path in its messages.
        drop(text);
        let figment = layered(path);
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(render_figment_error(e)))?;
        config.source = path.to_path_buf();
        config.resolve_paths().map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate().map_err(|e| blame(e, &figment))?;
        config.resolve_upstreams()?;
        privs::resolve(&mut config).map_err(|e| blame(e, &figment))?;
        for i in 0..config.listen.len() {
            config.check_proxy_loop(i)?;
        }
        Ok(config)
    }

    /// Values that are accepted but probably not what the operator wants; `-t`, start
    /// and reload print them.
    pub fn warnings(&self) -> Vec<String> {
        checks::rss_warning(self.master.max_worker_rss)
            .into_iter()
            .chain(privs::warnings(self))
            .collect()
    }

    /// Resolves every proxy listener's upstreams, once, here in the master (at
    /// start, `-t` and every reload, so a reload picks up changed DNS): a name that
    /// does not resolve is an error naming the listener and the name, and workers
    /// receive addresses, so they never resolve, nor end up with no upstream.
    fn resolve_upstreams(&mut self) -> Result<(), ConfigError> {
        for i in 0..self.listen.len() {
            let l = &self.listen[i];
            if l.service != "proxy" || l.upstreams.is_empty() {
                continue;
            }
            match l.upstream_addrs() {
                Ok(addrs) => self.listen[i].resolved_upstreams = addrs,
                Err(e) => return Err(self.invalid(&format!("listen[{i}].upstreams"), e)),
            }
        }
        Ok(())
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            origin: self.source.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Checks what types cannot: ranges and relations between keys.
    fn validate(&self) -> Result<(), ConfigError> {
        let n = self.master.workers.count();
        if n == 0 || n > 1024 {
            return Err(self.invalid("master.workers", format!("{n} is out of range (1 to 1024)")));
        }
        if self.master.pid_file.as_os_str().is_empty() {
            return Err(self.invalid("master.pid_file", "must not be empty"));
        }
        // Timeouts: 0 means "off" only for worker.idle_timeout (a connection may stay
        // idle forever); every other one is a deadline the runtime relies on, where 0
        // would kill, reset or give up at once, so 0 is refused.
        for (key, d) in [
            ("master.drain_timeout", self.master.drain_timeout),
            ("master.stop_timeout", self.master.stop_timeout),
            ("master.upgrade_timeout", self.master.upgrade_timeout),
        ] {
            if d.0.is_zero() {
                return Err(self.invalid(key, "must be more than 0"));
            }
        }
        if self.master.watchdog_timeout.0 <= self.worker.heartbeat_interval.0 {
            return Err(self.invalid(
                "master.watchdog_timeout",
                format!(
                    "{} must be longer than worker.heartbeat_interval ({})",
                    self.master.watchdog_timeout, self.worker.heartbeat_interval
                ),
            ));
        }
        if self.master.max_old_generations == 0 {
            return Err(self.invalid("master.max_old_generations", "must be at least 1"));
        }
        if self.worker.max_connections == 0 {
            return Err(self.invalid("worker.max_connections", "must be at least 1"));
        }
        if self.worker.heartbeat_interval.0 < Duration::from_millis(10) {
            return Err(self.invalid("worker.heartbeat_interval", "must be at least 10ms"));
        }
        if self.flow.read_quantum.0 < 512 {
            return Err(self.invalid("flow.read_quantum", "must be at least 512 bytes"));
        }
        if self.flow.write_low_water >= self.flow.write_high_water {
            return Err(self.invalid(
                "flow.write_low_water",
                format!(
                    "{} must be below flow.write_high_water ({})",
                    self.flow.write_low_water, self.flow.write_high_water
                ),
            ));
        }
        if let Err(e) = crate::log::check_level(&self.log.level) {
            return Err(self.invalid("log.level", e));
        }
        if let Some(file) = &self.log.file {
            if let Err(e) = checks::log_file(file) {
                return Err(self.invalid("log.file", e));
            }
        }
        if self.listen.is_empty() {
            return Err(self.invalid("listen", "at least one [[listen]] entry is needed"));
        }
        if let Err((key, reason)) = recycle::check(self) {
            return Err(self.invalid(&key, reason));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = |k: &str| format!("listen[{i}].{k}");
            if !crate::service::is_known(&l.service) {
                return Err(self.invalid(
                    &key("service"),
                    format!(
                        "unknown service `{}` (known: {})",
                        l.service,
                        crate::service::known().join(", ")
                    ),
                ));
            }
            let own: &[&str] = match l.service.as_str() {
                "http" => HTTP_KEYS,
                "proxy" => PROXY_KEYS,
                _ => &[],
            };
            if let Some(k) = l
                .set_keys()
                .into_iter()
                .find(|k| !own.contains(k) && (HTTP_KEYS.contains(k) || PROXY_KEYS.contains(k)))
            {
                return Err(self.invalid(
                    &key(k),
                    format!("does not apply to service `{}`", l.service),
                ));
            }
            if l.service == "proxy" && l.upstreams.is_empty() {
                return Err(self.invalid(&key("upstreams"), "a proxy needs at least one upstream"));
            }
            if l.header_timeout.is_some_and(|d| d.0.is_zero()) {
                return Err(self.invalid(
                    &key("header_timeout"),
                    "must be more than 0 (0 would answer 408 to every request)",
                ));
            }
            if l.connect_timeout.is_some_and(|d| d.0.is_zero()) {
                return Err(self.invalid(
                    &key("connect_timeout"),
                    "must be more than 0 (0 would fail every upstream connect)",
                ));
            }
            if let Some(size) = l.max_header_size {
                if size.0 < MIN_HEADER_SIZE {
                    return Err(self.invalid(
                        &key("max_header_size"),
                        format!(
                            "{size} is too small: no request head fits (at least {MIN_HEADER_SIZE} bytes)"
                        ),
                    ));
                }
            }
            if let Some(st) = l.status {
                if !(200..=599).contains(&st) {
                    return Err(self.invalid(
                        &key("status"),
                        format!("{st} is not a status code (200-599)"),
                    ));
                }
            }
            if let Some(h) = &l.headers {
                for (k, v) in h {
                    let bad = |c: char| c.is_control() || c == ':' || c.is_whitespace();
                    if k.is_empty() || k.contains(bad) || v.contains(['\r', '\n']) {
                        return Err(self.invalid(
                            &key("headers"),
                            format!("`{k}: {v}` is not a valid header"),
                        ));
                    }
                }
            }
            if l.accept == AcceptMode::Reuseport && matches!(l.address, ListenAddr::Unix(_)) {
                return Err(self.invalid(
                    &format!("listen[{i}].accept"),
                    "\"reuseport\" needs a TCP address; Unix sockets can only be \"shared\"",
                ));
            }
            if l.backlog < 1 {
                return Err(self.invalid(&format!("listen[{i}].backlog"), "must be at least 1"));
            }
            if let Some((k, why)) = pp::check(l) {
                return Err(self.invalid(&key(k), why));
            }
            for (j, other) in self.listen.iter().enumerate().take(i) {
                if other.address == l.address {
                    return Err(self.invalid(
                        &format!("listen[{i}].address"),
                        format!("{} is already used by listen[{j}]", l.address),
                    ));
                }
                if l.name.is_some() && other.name == l.name {
                    return Err(self.invalid(
                        &format!("listen[{i}].name"),
                        format!(
                            "`{}` is already used by listen[{j}]",
                            l.name.as_deref().unwrap_or("")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The smallest `max_header_size`: a request line and a Host header.
const MIN_HEADER_SIZE: u64 = 64;

impl Config {
    /// A proxy whose upstreams lead back to itself (directly, or through corral's
    /// other proxy listeners) would forward connections round in a loop until fds run
    /// out. Forwarding to one of corral's own echo or http listeners is fine.
    fn check_proxy_loop(&self, i: usize) -> Result<(), ConfigError> {
        match checks::proxy_loop(self, i) {
            Some(why) => Err(self.invalid(&format!("listen[{i}].upstreams"), why)),
            None => Ok(()),
        }
    }
}

/// Defaults, then the file, then `CORRAL_*` variables of the sections they may set:
/// the layering every reader of a config uses, and whose metadata tells `-T` where
/// each value came from.
fn layered(path: &Path) -> Figment {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            ENV_SECTIONS
                .iter()
                .any(|s| k.len() > s.len() && k.starts_with(s) && k[s.len()..].starts_with('.'))
        }))
}

/// Names the environment variable instead of the file when the refused value came
/// from one: figment remembers which provider gave each value.
fn blame(e: ConfigError, figment: &Figment) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            origin,
            reason,
        } => {
            let origin = env_var_of(figment, &key).unwrap_or(origin);
            ConfigError::Invalid {
                key,
                origin,
                reason,
            }
        }
        other => other,
    }
}

/// `environment variable CORRAL_MASTER__WORKERS` if that is where `key` was set.
fn env_var_of(figment: &Figment, key: &str) -> Option<String> {
    // Keys inside [[listen]] (`listen[0].…`) come from the file only.
    if key.contains('[') {
        return None;
    }
    let md = figment.find_metadata(key)?;
    let from_env = md.source.is_none() && md.name.contains("environment variable");
    from_env.then(|| format!("environment variable {}", env_var_name(key)))
}

/// The variable that sets `key`: `master.workers` → `CORRAL_MASTER__WORKERS`.
fn env_var_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(|p| p.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// Figment's own message names the key and, in most cases, the file or variable; it
/// may report several errors, each of which an operator wants to see.
fn render_figment_error(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let mut line = String::new();
        if !err.path.is_empty() {
            line.push_str(&format!("key `{}`: ", err.path.join(".")));
        }
        line.push_str(&err.kind.to_string());
        if let Some(md) = &err.metadata {
            match &md.source {
                Some(src) => line.push_str(&format!(" (in {src})")),
                None if md.name.contains("environment variable") && !err.path.is_empty() => line
                    .push_str(&format!(
                        " (in environment variable {})",
                        env_var_name(&err.path.join("."))
                    )),
                None => line.push_str(&format!(" (in {})", md.name)),
            }
        }
        out.push(line);
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(body: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        Config::load(f.path())
    }

    const MIN: &str = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"echo\"\n";

    #[test]
    fn units_parse() {
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("30s".parse::<Dur>().unwrap().0, Duration::from_secs(30));
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert_eq!("7".parse::<Dur>().unwrap().0, Duration::from_secs(7));
        assert!("3 parsecs".parse::<Dur>().is_err());
        assert!("s".parse::<Dur>().is_err());
        assert_eq!("64KiB".parse::<Size>().unwrap().0, 65536);
        assert_eq!("1MiB".parse::<Size>().unwrap().0, 1 << 20);
        assert_eq!("1MB".parse::<Size>().unwrap().0, 1_000_000);
        assert_eq!("12".parse::<Size>().unwrap().0, 12);
        assert!("12 furlongs".parse::<Size>().is_err());
        assert_eq!(Size(65536).to_string(), "64KiB");
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
    }

    #[test]
    fn defaults_and_file_layer() {
        let c = load_str(&format!(
            "[master]\nworkers = 3\ndrain_timeout = \"5s\"\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.master.workers, Workers::Count(3));
        assert_eq!(c.master.drain_timeout.0, Duration::from_secs(5));
        assert_eq!(c.worker, WorkerConfig::default());
        assert_eq!(
            c.listen[0].address,
            ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = load_str(&format!("[master]\nwrokers = 2\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrokers"), "{err}");
        assert!(err.contains(".toml") || err.contains("/tmp"), "{err}");
    }

    #[test]
    fn bad_value_names_key() {
        let err = load_str(&format!("[master]\ndrain_timeout = \"soon\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("drain_timeout"), "{err}");
        assert!(err.contains("soon"), "{err}");
        let err = load_str(&format!("[master]\nworkers = \"many\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("workers"), "{err}");
        let err = load_str("[[listen]]\naddress = \"nowhere\"\nservice = \"echo\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("address") && err.contains("nowhere"), "{err}");
    }

    #[test]
    fn relations_are_checked() {
        let err = load_str(&format!("[flow]\nwrite_low_water = \"1MiB\"\n{MIN}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("flow.write_low_water"), "{err}");
        let err = load_str("[master]\nworkers = 1\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = load_str(&format!("{MIN}{MIN}")).unwrap_err().to_string();
        assert!(err.contains("listen[1].address"), "{err}");
    }

    #[test]
    fn values_that_break_the_service_are_refused() {
        let cases = [
            ("[log]\nlevel = \"warning\"\n", "log.level", "not a level"),
            ("[log]\nlevel = \"loud\"\n", "log.level", "not a level"),
            (
                "[log]\nfile = \"/nonexistent/dir/x.log\"\n",
                "log.file",
                "/nonexistent/dir",
            ),
            ("[log]\nfile = \"/tmp\"\n", "log.file", "is a directory"),
            (
                "[master]\nstop_timeout = \"0\"\n",
                "master.stop_timeout",
                "more than 0",
            ),
            (
                "[master]\nupgrade_timeout = \"0s\"\n",
                "master.upgrade_timeout",
                "more than 0",
            ),
            (
                "[master]\ndrain_timeout = \"0\"\n",
                "master.drain_timeout",
                "more than 0",
            ),
            (
                "[master]\nwatchdog_timeout = \"0\"\n",
                "master.watchdog_timeout",
                "longer than",
            ),
            (
                "[worker]\nheartbeat_interval = \"0\"\n",
                "worker.heartbeat_interval",
                "at least",
            ),
        ];
        for (body, key, why) in cases {
            let err = load_str(&format!("{body}{MIN}")).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{body}: {err}");
            assert!(err.contains(why), "{body}: {err}");
            assert!(
                err.contains("/tmp") || err.contains(".tmp"),
                "names the file: {err}"
            );
        }
        let http = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"http\"\n";
        for (extra, key) in [
            ("max_header_size = \"0\"\n", "listen[0].max_header_size"),
            ("max_header_size = \"10\"\n", "listen[0].max_header_size"),
            ("header_timeout = \"0\"\n", "listen[0].header_timeout"),
        ] {
            let err = load_str(&format!("{http}{extra}")).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{extra}: {err}");
        }
        let ok = load_str(&format!(
            "[worker]\nidle_timeout = \"0\"\n{http}max_header_size = \"1KiB\"\n"
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn proxy_loops_are_refused() {
        let proxy = |listen: &str, up: &str| {
            format!(
                "[[listen]]\naddress = \"{listen}\"\nservice = \"proxy\"\nupstreams = [\"{up}\"]\n"
            )
        };
        for (listen, up) in [
            ("127.0.0.1:7001", "127.0.0.1:7001"),
            ("0.0.0.0:7001", "127.0.0.1:7001"),
            ("0.0.0.0:7001", "localhost:7001"),
        ] {
            let err = load_str(&proxy(listen, up)).unwrap_err().to_string();
            assert!(err.contains("`listen[0].upstreams`"), "{err}");
            assert!(err.contains("this listener itself"), "{err}");
        }
        // Two proxies that forward to each other.
        let err = load_str(&format!(
            "{}{}",
            proxy("127.0.0.1:7003", "127.0.0.1:7004"),
            proxy("127.0.0.1:7004", "127.0.0.1:7003")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`listen[0].upstreams`"), "{err}");
        assert!(err.contains("lead back to listen[0]"), "{err}");
        // Forwarding to corral's own echo listener, or along a chain that ends there,
        // is no loop.
        let echo = "[[listen]]\naddress = \"127.0.0.1:7005\"\nservice = \"echo\"\n";
        let chain = format!(
            "{echo}{}{}",
            proxy("127.0.0.1:7006", "127.0.0.1:7005"),
            proxy("127.0.0.1:7007", "127.0.0.1:7006")
        );
        assert!(load_str(&chain).is_ok(), "{:?}", load_str(&chain));
        assert!(load_str(&proxy("127.0.0.1:7001", "127.0.0.1:7002")).is_ok());
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("master.workers"), "CORRAL_MASTER__WORKERS");
        assert_eq!(env_var_name("log.level"), "CORRAL_LOG__LEVEL");
    }

    #[test]
    fn small_rss_limit_is_a_warning() {
        let c = load_str(&format!("[master]\nmax_worker_rss = \"1MiB\"\n{MIN}")).unwrap();
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
        let c = load_str(&format!("[master]\nmax_worker_rss = \"64MiB\"\n{MIN}")).unwrap();
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Path::new("/nonexistent/corral.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/corral.toml"), "{err}");
    }

    #[test]
    fn unix_addresses() {
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert!("[::1]:80".parse::<ListenAddr>().is_ok());
    }
}
