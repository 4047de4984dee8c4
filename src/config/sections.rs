//! The plain sections of the config: `[master]`, `[worker]`, `[flow]` and `[log]`,
//! with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::{privs, Dur, Size};

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
    /// How often the master makes a new TLS session-ticket key (every worker gets it;
    /// a ticket resumes for between one and two of these).
    pub tls_ticket_rotation: Dur,
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
            tls_ticket_rotation: Dur(Duration::from_secs(6 * 3600)),
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
    /// The worker's system-call filter: enforce (default), log or off.
    pub seccomp: SeccompMode,
}

/// `[worker] seccomp`: what a worker's seccomp filter does with a system call outside
/// its allowlist (see `os::seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the worker (SIGSYS); the attacker's calls fail with EPERM.
    #[default]
    Enforce,
    /// Allow it, and have the kernel log it (audit log, `dmesg`): for bringing up a
    /// custom service.
    Log,
    /// No filter at all.
    Off,
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
            seccomp: SeccompMode::Enforce,
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
    /// When the log file rolls over to a new one; needs `file`.
    pub rotation: Rotation,
}

/// `[log] rotation`: `never` (one file, for logrotate and SIGUSR1), or a new file
/// each hour or day (UTC), named `<file>.YYYY-MM-DD-HH` or `<file>.YYYY-MM-DD` as
/// tracing-appender's rolling files are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    #[default]
    Never,
    Hourly,
    Daily,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            file: None,
            rotation: Rotation::Never,
        }
    }
}
