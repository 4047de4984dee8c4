//! `corral-load`: a closed-loop TCP load generator for long-lived connections.
//!
//! corral exists to hold many long-lived connections and to reload or upgrade without
//! dropping them, so the usual HTTP benchmarks (wrk, ab) measure the wrong thing: they
//! neither keep thousands of quiet connections open nor tell a reset caused by a reload
//! from a slow reply. This tool drives an echo server the way corral's users do and
//! counts exactly what they would feel: connections that could not be opened, echoes
//! cut short by the server, echoes that came back wrong, and echoes that never came.
//!
//! Design: `--threads` OS threads, each with its own epoll instance driving its share of
//! the connections as edge-triggered state machines (no async runtime, no locks on the
//! hot path). Each thread keeps its own counters and latency histograms; they are merged
//! at the end, and sent once per second over a channel for `--progress`.
//!
//! Safety rule of the machines this runs on: it only ever connects to loopback
//! addresses (127.0.0.0/8 or ::1) and refuses anything else.
//!
//! `--mode stream` (in `stream.rs`) is the one open-loop mode: each connection receives
//! a paced stream and the tool reports per-client rates and gaps.

mod stream;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Longest run allowed: the tool must always stop by itself.
const MAX_DURATION_SECS: u64 = 1800;
/// Largest message: keeps `conns * size` buffers within reason.
const MAX_SIZE: usize = 1 << 20;
/// File descriptors kept back for stdio, epoll instances and the allocator's needs.
const FD_RESERVE: u64 = 64;
/// Longest epoll wait, so a Ctrl-C or the end of the run is noticed quickly.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// First retry delay after a failed connect; doubles per consecutive failure.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Round trips one connection may complete in a row before the others get a turn.
const DRIVE_BUDGET: u32 = 8;

/// Set by SIGINT/SIGTERM: threads stop and the summary is still printed.
static STOP: AtomicBool = AtomicBool::new(false);

/// Closed-loop TCP load against an echo server, for long-lived connections.
#[derive(Debug, Parser)]
#[command(name = "corral-load", version, about, long_about = None)]
struct Args {
    /// Server address: 127.0.0.1:PORT (any 127.0.0.0/8 address) or `[::1]:PORT` only.
    #[arg(long)]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    conns: u64,
    /// Threads, each driving its share of the connections with one epoll instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Run time in seconds (at most 1800: establishing a million connections on a small box takes over 10 minutes).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_SECS))]
    duration: u64,
    /// echo: round trips on persistent connections; idle: hold connections open and
    /// silent; churn: one round trip per connection, then reconnect.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Message size in bytes (echo and churn).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips per second per connection in echo mode; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.K, so that more
    /// connections than one address's ephemeral port range can be opened.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=254))]
    source_ips: u64,
    /// Most new connections per second, over all threads (default: no limit).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// A connect or round trip taking longer than this is abandoned (counted, reopened).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Print one progress line per second on stderr.
    #[arg(long)]
    progress: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 if any error was counted.
    #[arg(long)]
    fail_on_error: bool,
    /// The config of the corral under test: near the end of the run (at 80 % of
    /// `--duration`, while the connections are open) `corral status --json -c FILE`
    /// is asked for each worker's connection count, which the summary reports.
    #[arg(long, value_name = "FILE")]
    corral_config: Option<std::path::PathBuf>,
    /// The corral binary for `--corral-config` (default: `corral` next to this tool).
    #[arg(long, value_name = "PATH")]
    corral_bin: Option<std::path::PathBuf>,
    /// Stream mode: the rate (bytes/s) each client should receive; clients below it by
    /// more than `--tolerance` are counted as starved.
    #[arg(long)]
    expect_rate: Option<f64>,
    /// Stream mode: the fraction below `--expect-rate` still counted as served.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Stream mode: seconds after the start before rates and gaps are measured (the
    /// connections are being opened).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
}

/// Connections per worker, as `corral status --json` reported them: (pid, count).
type WorkerCounts = Vec<(i64, u64)>;

/// Samples `corral status` on a thread at 80 % of the run.
fn sample_workers(args: &Args) -> Option<std::thread::JoinHandle<Result<WorkerCounts, String>>> {
    let cfg = args.corral_config.clone()?;
    let bin = args.corral_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("corral")))
            .unwrap_or_else(|| "corral".into())
    });
    let at = Duration::from_millis(args.duration * 800);
    Some(std::thread::spawn(move || {
        std::thread::sleep(at);
        let out = std::process::Command::new(&bin)
            .args(["status", "--json", "-c"])
            .arg(&cfg)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("corral status: {e}"))?;
        Ok(v["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .map(|w| {
                        (
                            w["pid"].as_i64().unwrap_or(0),
                            w["connections"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Echo,
    Idle,
    Churn,
    Stream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
            Mode::Stream => "stream",
        }
    }
}

/// The validated run: everything a worker thread needs, nothing it must re-check.
#[derive(Clone, Debug)]
struct Plan {
    addr: SocketAddr,
    conns: usize,
    threads: usize,
    duration: Duration,
    mode: Mode,
    size: usize,
    /// Time between round-trip starts on one connection; `None` = flat out.
    pace: Option<Duration>,
    /// Local addresses to bind before connect; empty = let the kernel choose.
    sources: Vec<IpAddr>,
    /// New connections per second per thread.
    connect_rate: Option<f64>,
    timeout: Duration,
    progress: bool,
    /// Requested connections when the fd limit forced fewer.
    capped_from: Option<usize>,
    nofile: u64,
}

/// Accepts only a numeric loopback socket address: the machines this runs on must never
/// be used to load anything else.
fn validate_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("--addr {s:?}: expected a numeric IP:PORT such as 127.0.0.1:7070 or [::1]:7070")
    })?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        // Only ::1 itself; an IPv4-mapped address would dodge the rule's wording.
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback {
        return Err(format!(
            "--addr {s}: refusing a non-loopback address; only 127.0.0.0/8 and ::1 are allowed"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("--addr {s}: port 0 is not a server port"));
    }
    Ok(addr)
}

/// 127.0.0.1 ..= 127.0.0.K, or nothing when the kernel may choose (K = 1).
fn source_ips(addr: &SocketAddr, k: u64) -> Result<Vec<IpAddr>, String> {
    if k <= 1 {
        return Ok(Vec::new());
    }
    if addr.is_ipv6() {
        return Err("--source-ips > 1 needs an IPv4 --addr (IPv6 loopback is only ::1)".into());
    }
    Ok((1..=k)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect())
}

impl Plan {
    fn from_args(a: &Args) -> Result<Plan, String> {
        let addr = validate_addr(&a.addr)?;
        if a.size == 0 || a.size > MAX_SIZE {
            return Err(format!("--size {}: must be 1 ..= {MAX_SIZE}", a.size));
        }
        if !a.rate.is_finite() || a.rate < 0.0 {
            return Err(format!("--rate {}: must be 0 or more", a.rate));
        }
        if let Some(r) = a.connect_rate {
            if !r.is_finite() || r <= 0.0 {
                return Err(format!("--connect-rate {r}: must be more than 0"));
            }
        }
        let mut conns = usize::try_from(a.conns).map_err(|_| "--conns: too large".to_string())?;
        // Two buffers per connection (what was sent, what came back).
        if (conns as u128) * (a.size as u128) * 2 > (4u128 << 30) {
            return Err(format!(
                "--conns {} x --size {} needs more than 4 GiB of buffers",
                a.conns, a.size
            ));
        }
        let sources = source_ips(&addr, a.source_ips)?;
        let threads = (a.threads as usize).min(conns);
        let (nofile, old_soft) = raise_nofile(conns as u64 + threads as u64 + FD_RESERVE)?;
        let mut capped = None;
        let usable = nofile.saturating_sub(threads as u64 + FD_RESERVE) as usize;
        if usable < conns {
            if usable == 0 {
                return Err(format!(
                    "RLIMIT_NOFILE is {nofile}: no file descriptors left for connections"
                ));
            }
            eprintln!(
                "corral-load: RLIMIT_NOFILE hard limit {nofile} allows only {usable} connections; \
                 capping --conns {conns} to {usable}{}",
                old_soft.map_or(String::new(), |s| format!(" (soft limit was {s})"))
            );
            capped = Some(conns);
            conns = usable;
        }
        warn_port_range(conns, sources.len().max(1));
        let threads = threads.min(conns);
        let pace = (a.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.rate));
        Ok(Plan {
            addr,
            conns,
            threads,
            duration: Duration::from_secs(a.duration),
            mode: a.mode,
            size: a.size,
            pace,
            sources,
            connect_rate: a.connect_rate.map(|r| r / threads as f64),
            timeout: Duration::from_millis(a.timeout_ms),
            progress: a.progress,
            capped_from: capped,
            nofile,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit when `needed` is more than the soft
/// one. Returns the limit now in force and the old soft limit if it was raised.
fn raise_nofile(needed: u64) -> Result<(u64, Option<u64>), String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("getrlimit(RLIMIT_NOFILE) failed: {e}"))?;
    if soft >= needed {
        return Ok((soft, None));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| format!("setrlimit(RLIMIT_NOFILE) to the hard limit {hard} failed: {e}"))?;
    Ok((hard, Some(soft)))
}

/// Each source address has one ephemeral port range per destination; say so before
/// connects start failing with EADDRNOTAVAIL, rather than after.
fn warn_port_range(conns: usize, sources: usize) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<usize>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else {
        return;
    };
    let ports = (hi.saturating_sub(lo) + 1) * sources;
    if conns > ports {
        eprintln!(
            "corral-load: {conns} connections but only {ports} ephemeral ports over {sources} \
             source address(es); use --source-ips to spread them"
        );
    }
}

// ----- latency histogram ------------------------------------------------------------

/// Linear sub-buckets per power of two: 2^5 = 32, so a value is known within ~3 %.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of u64 values (microseconds here): exact below 32, then 32
/// linear buckets per power of two. Fixed size, no allocation per sample, mergeable.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let top = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = top - SUB_BITS;
        let mantissa = (v >> shift) as usize; // in SUB ..< 2 * SUB
        (shift as usize + 1) * SUB + (mantissa - SUB)
    }

    /// Smallest value that lands in bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let group = i / SUB;
        ((i % SUB + SUB) as u64) << (group - 1)
    }

    /// Largest value that lands in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i + 1 >= BUCKETS {
            u64::MAX
        } else {
            Self::lower(i + 1) - 1
        }
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, clamped to the
    /// observed range so that a single sample reports itself exactly. 0 when empty.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = Self::lower(i);
                let mid = lo + (Self::upper(i) - lo) / 2;
                return mid.clamp(self.min, self.max);
            }
        }
        self.max
    }

    fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    fn max_or_zero(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.max
        }
    }
}

// ----- counters ---------------------------------------------------------------------

/// What one thread counted. Errors are split by what the user of the server would feel.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Connections established.
    opened: u64,
    /// connect() failed, or did not complete within the timeout.
    connect_failed: u64,
    /// Echoes received complete and correct.
    round_trips: u64,
    /// The server closed or reset the connection while an echo was expected.
    reset_eof: u64,
    /// The echo differed from what was sent, or data came when none was expected.
    mismatch: u64,
    /// A round trip took longer than the timeout.
    timeouts: u64,
    /// The server closed a connection that had no round trip outstanding (idle mode,
    /// or between paced round trips).
    closed_idle: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// Connection slots lost (any of the four above) at least once: unlike the events,
    /// this never exceeds the connections held, however often a slot reconnects.
    conns_lost: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.opened += o.opened;
        self.connect_failed += o.connect_failed;
        self.round_trips += o.round_trips;
        self.reset_eof += o.reset_eof;
        self.mismatch += o.mismatch;
        self.timeouts += o.timeouts;
        self.closed_idle += o.closed_idle;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.conns_lost += o.conns_lost;
    }

    fn since(&self, o: &Counters) -> Counters {
        Counters {
            opened: self.opened - o.opened,
            connect_failed: self.connect_failed - o.connect_failed,
            round_trips: self.round_trips - o.round_trips,
            reset_eof: self.reset_eof - o.reset_eof,
            mismatch: self.mismatch - o.mismatch,
            timeouts: self.timeouts - o.timeouts,
            closed_idle: self.closed_idle - o.closed_idle,
            bytes_sent: self.bytes_sent - o.bytes_sent,
            bytes_received: self.bytes_received - o.bytes_received,
            conns_lost: self.conns_lost - o.conns_lost,
        }
    }

    /// Round trips that were started and did not complete correctly.
    fn round_trips_failed(&self) -> u64 {
        self.reset_eof + self.mismatch + self.timeouts
    }

    fn errors(&self) -> u64 {
        self.connect_failed + self.round_trips_failed() + self.closed_idle
    }
}

// ----- one thread's connections -----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting in the connect queue (connect-rate admission).
    Queued,
    /// Waiting for a retry after a failed connect.
    Backoff,
    Connecting,
    /// Writing the message.
    Sending,
    /// Waiting for the whole echo.
    Receiving,
    /// Connected, waiting for the next paced round trip.
    Paced,
    /// Connected and silent (idle mode).
    Idle,
}

struct Conn {
    /// Index over all threads: picks the source address and seeds the message pattern.
    global: usize,
    sock: Option<Socket>,
    state: State,
    /// Bumped whenever the socket is closed, so that epoll events and timers that refer
    /// to an earlier socket of this slot are recognised and ignored.
    token: u32,
    established: bool,
    /// When the current connect or round trip gives up.
    deadline: Option<Instant>,
    /// When the current connect or round trip began.
    began: Instant,
    /// When the next paced round trip is due (echo with --rate).
    next_due: Instant,
    seq: u64,
    out: Vec<u8>,
    sent: usize,
    back: Vec<u8>,
    got: usize,
    failures: u32,
    /// Counted in `conns_lost` already.
    was_lost: bool,
}

/// Per-second progress sent from a thread to the main thread.
struct Report {
    tick: u64,
    delta: Counters,
    latency: Histogram,
    open: usize,
}

/// What a thread hands back when the run ends.
struct Outcome {
    counters: Counters,
    latency: Histogram,
    connect_latency: Histogram,
    open_at_end: usize,
    first_connect_error: Option<String>,
}

/// A token bucket for `--connect-rate`, with about 100 ms of burst.
struct Bucket {
    rate: f64,
    tokens: f64,
    cap: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        let cap = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            tokens: 1.0,
            cap,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn next_token(&self, now: Instant) -> Instant {
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

fn key(idx: usize, token: u32) -> u64 {
    ((idx as u64) << 32) | u64::from(token)
}

/// Fills a message that differs per connection and per round trip, so that an echo
/// delivered to the wrong connection or replayed from an earlier round trip is caught.
fn fill_message(buf: &mut [u8], global: usize, seq: u64) {
    let head = seq.to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = if i < head.len() {
            head[i]
        } else {
            (global as u64)
                .wrapping_mul(31)
                .wrapping_add(seq)
                .wrapping_add(i as u64) as u8
        };
    }
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn is_interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

struct Worker<'p> {
    plan: &'p Plan,
    epoll: Epoll,
    conns: Vec<Conn>,
    /// Timers (pacing and connect retries): (due, connection, token).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    queue: VecDeque<usize>,
    /// Connections to drive again without waiting for an event: (connection, token).
    again: Vec<(usize, u32)>,
    bucket: Option<Bucket>,
    counters: Counters,
    latency: Histogram,
    connect_latency: Histogram,
    /// Latencies since the last progress report.
    interval: Histogram,
    open: usize,
    first_connect_error: Option<String>,
}

impl<'p> Worker<'p> {
    fn new(plan: &'p Plan, thread: usize, now: Instant) -> Result<Self, String> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| format!("epoll_create1() failed in thread {thread}: {e}"))?;
        let conns: Vec<Conn> = (0..plan.conns)
            .filter(|g| g % plan.threads == thread)
            .map(|global| Conn {
                global,
                sock: None,
                state: State::Queued,
                token: 0,
                established: false,
                deadline: None,
                began: now,
                next_due: now,
                seq: 0,
                out: vec![0; plan.size],
                sent: 0,
                back: vec![0; plan.size],
                got: 0,
                failures: 0,
                was_lost: false,
            })
            .collect();
        let queue = (0..conns.len()).collect();
        Ok(Worker {
            plan,
            epoll,
            conns,
            timers: BinaryHeap::new(),
            queue,
            again: Vec::new(),
            bucket: plan.connect_rate.map(|r| Bucket::new(r, now)),
            counters: Counters::default(),
            latency: Histogram::new(),
            connect_latency: Histogram::new(),
            interval: Histogram::new(),
            open: 0,
            first_connect_error: None,
        })
    }

    /// The thread's loop, in corral's own order: timers, then epoll, then IO.
    fn run(
        mut self,
        start: Instant,
        tick_tx: Option<mpsc::Sender<Report>>,
    ) -> Result<Outcome, String> {
        let end = start + self.plan.duration;
        let sweep_every = (self.plan.timeout / 10).clamp(Duration::from_millis(1), MAX_WAIT);
        let mut next_sweep = start + sweep_every;
        let mut next_alive_check = start + Duration::from_secs(1);
        let mut tick = 0u64;
        let mut next_report = start + Duration::from_secs(1);
        let mut reported = Counters::default();
        let mut events = vec![EpollEvent::empty(); 1024];
        loop {
            let now = Instant::now();
            if now >= end || STOP.load(Ordering::Relaxed) {
                break;
            }
            // 1. timers
            self.fire_timers(now);
            if now >= next_sweep {
                self.sweep_timeouts(now);
                next_sweep = now + sweep_every;
            }
            if now >= next_alive_check {
                self.check_idle_alive();
                next_alive_check += Duration::from_secs(1);
            }
            if now >= next_report {
                tick += 1;
                next_report += Duration::from_secs(1);
                if let Some(tx) = &tick_tx {
                    let rep = Report {
                        tick,
                        delta: self.counters.since(&reported),
                        latency: std::mem::replace(&mut self.interval, Histogram::new()),
                        open: self.open,
                    };
                    reported = self.counters;
                    // The main thread only stops listening once every thread is done.
                    let _ = tx.send(rep);
                }
            }
            self.admit(now);
            // 2. epoll, until the nearest deadline
            let mut wake = end.min(next_sweep).min(next_report);
            if self.plan.mode == Mode::Idle {
                wake = wake.min(next_alive_check);
            }
            if let Some(Reverse((due, _, _))) = self.timers.peek() {
                wake = wake.min(*due);
            }
            if !self.again.is_empty() {
                wake = now;
            }
            if !self.queue.is_empty() {
                wake = match &self.bucket {
                    Some(b) => wake.min(b.next_token(now)),
                    None => now,
                };
            }
            let wait = wake.saturating_duration_since(Instant::now()).min(MAX_WAIT);
            // Round up to whole ms: never wake early for nothing. A timer may fire up to
            // 1 ms late; pacing keeps an ideal schedule, so the rate does not drift.
            let ms = wait.as_micros().div_ceil(1000) as u16;
            let n = match self.epoll.wait(&mut events, ms) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("epoll_wait() failed: {e}")),
            };
            // 3. IO
            for ev in &events[..n] {
                let data = ev.data();
                let idx = (data >> 32) as usize;
                let token = data as u32;
                if self.conns.get(idx).is_some_and(|c| c.token == token) {
                    self.on_event(idx, ev.events());
                }
            }
        }
        // Connections close when the thread ends; what was in flight is not an error.
        let open_at_end = self.open;
        Ok(Outcome {
            counters: self.counters,
            latency: self.latency,
            connect_latency: self.connect_latency,
            open_at_end,
            first_connect_error: self.first_connect_error,
        })
    }

    fn fire_timers(&mut self, now: Instant) {
        // Connections that used up their drive budget last round go first.
        for (idx, token) in std::mem::take(&mut self.again) {
            if self.conns[idx].token == token {
                self.drive(idx);
            }
        }
        while let Some(&Reverse((due, idx, token))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let c = &self.conns[idx];
            if c.token != token {
                continue;
            }
            match c.state {
                State::Paced => self.start_round_trip(idx),
                State::Backoff => {
                    self.conns[idx].state = State::Queued;
                    self.queue.push_back(idx);
                }
                _ => {}
            }
        }
    }

    fn admit(&mut self, now: Instant) {
        while let Some(&idx) = self.queue.front() {
            if let Some(b) = &mut self.bucket {
                if !b.take(now) {
                    break;
                }
            }
            self.queue.pop_front();
            self.start_connect(idx);
        }
    }

    fn sweep_timeouts(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            let Some(deadline) = c.deadline else { continue };
            if deadline > now {
                continue;
            }
            match c.state {
                State::Connecting => {
                    let why = format!("connect timed out after {:?}", self.plan.timeout);
                    self.connect_failed(idx, why);
                }
                State::Sending | State::Receiving => {
                    self.counters.timeouts += 1;
                    self.note_lost(idx);
                    self.reconnect(idx);
                }
                _ => {}
            }
        }
    }

    /// Idle mode's once-a-second check that every held connection is still open. epoll
    /// reports most closes at once; this also catches a peer that vanished without one
    /// being delivered in a way the state machine looked at.
    fn check_idle_alive(&mut self) {
        if self.plan.mode != Mode::Idle {
            return;
        }
        for idx in 0..self.conns.len() {
            if self.conns[idx].state == State::Idle {
                self.check_alive(idx);
            }
        }
    }

    fn start_connect(&mut self, idx: usize) {
        // Timestamps that feed latencies are taken fresh, never from the loop's `now`:
        // a batch of a thousand events takes long enough to skew them by milliseconds.
        let began = Instant::now();
        match self.open_socket(idx) {
            Ok(sock) => {
                let c = &mut self.conns[idx];
                c.sock = Some(sock);
                c.state = State::Connecting;
                c.began = began;
                c.deadline = Some(began + self.plan.timeout);
            }
            Err(e) => self.connect_failed(idx, e),
        }
    }

    /// Creates, binds, connects and registers a non-blocking socket.
    fn open_socket(&mut self, idx: usize) -> Result<Socket, String> {
        let addr = self.plan.addr;
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let sock = Socket::new(
            domain,
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )
        .map_err(|e| format!("socket() failed: {e}"))?;
        // A round trip is one small write; Nagle would only add delay.
        sock.set_nodelay(true)
            .map_err(|e| format!("setsockopt(TCP_NODELAY) failed: {e}"))?;
        if !self.plan.sources.is_empty() {
            let src = self.plan.sources[self.conns[idx].global % self.plan.sources.len()];
            // Defer the port choice to connect(), so a source port is shared by every
            // destination and the whole range is usable per source address.
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )
            .map_err(|e| format!("setsockopt(IP_BIND_ADDRESS_NO_PORT) failed: {e}"))?;
            sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .map_err(|e| format!("bind({src}) failed: {e}"))?;
        }
        match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(format!("connect({addr}) failed: {e}")),
        }
        // Registered after connect(): an unconnected socket polls as hung up, which
        // would look like a failed connect. Adding a socket that is already connected
        // still reports it writable, so completion always arrives as an event.
        let ev = EpollEvent::new(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET,
            key(idx, self.conns[idx].token),
        );
        self.epoll
            .add(&sock, ev)
            .map_err(|e| format!("epoll_ctl(ADD) failed: {e}"))?;
        Ok(sock)
    }

    fn connect_failed(&mut self, idx: usize, why: String) {
        self.counters.connect_failed += 1;
        if self.first_connect_error.is_none() {
            self.first_connect_error = Some(why);
        }
        self.close(idx);
        let c = &mut self.conns[idx];
        c.failures = c.failures.saturating_add(1);
        // Back off so that a refusing server does not turn the tool into a busy loop.
        let delay = RETRY_MIN
            .saturating_mul(1 << c.failures.min(10).saturating_sub(1))
            .min(RETRY_MAX);
        c.state = State::Backoff;
        self.timers
            .push(Reverse((Instant::now() + delay, idx, c.token)));
    }

    /// Drops the socket (which also removes it from epoll) and invalidates its events.
    fn close(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.sock = None;
        c.deadline = None;
        c.token = c.token.wrapping_add(1);
        if c.established {
            c.established = false;
            self.open -= 1;
        }
    }

    /// Counts slot `idx` in `conns_lost`, once.
    fn note_lost(&mut self, idx: usize) {
        if !std::mem::replace(&mut self.conns[idx].was_lost, true) {
            self.counters.conns_lost += 1;
        }
    }

    /// Closes and queues a new connection at once (the server was reachable).
    fn reconnect(&mut self, idx: usize) {
        self.close(idx);
        self.conns[idx].state = State::Queued;
        self.queue.push_back(idx);
    }

    fn on_event(&mut self, idx: usize, flags: EpollFlags) {
        if self.conns[idx].state == State::Connecting {
            if !flags.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
            {
                return;
            }
            self.finish_connect(idx);
            // The same edge may already carry the server's close (an accept-and-close
            // server, a draining worker): with edge triggering it will not come again,
            // so fall through and look at it in the new state.
        }
        match self.conns[idx].state {
            State::Connecting => {}
            State::Sending | State::Receiving => self.drive(idx),
            State::Paced | State::Idle => {
                if flags.intersects(
                    EpollFlags::EPOLLIN
                        | EpollFlags::EPOLLRDHUP
                        | EpollFlags::EPOLLHUP
                        | EpollFlags::EPOLLERR,
                ) {
                    self.check_alive(idx);
                }
            }
            State::Queued | State::Backoff => {}
        }
    }

    fn finish_connect(&mut self, idx: usize) {
        let now = Instant::now();
        let c = &mut self.conns[idx];
        let Some(sock) = &c.sock else { return };
        let err = match sock.take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = err {
            let why = format!("connect({}) failed: {e}", self.plan.addr);
            self.connect_failed(idx, why);
            return;
        }
        c.established = true;
        c.failures = 0;
        c.deadline = None;
        let took = now.saturating_duration_since(c.began);
        self.open += 1;
        self.counters.opened += 1;
        self.connect_latency.record(took.as_micros() as u64);
        match (self.plan.mode, self.plan.pace) {
            (Mode::Idle, _) => self.conns[idx].state = State::Idle,
            (Mode::Echo, Some(pace)) => {
                // Spread the first round trips over one period (golden-ratio steps), so
                // paced connections opened together do not fire together forever.
                let frac = (self.conns[idx].global as f64 * 0.618_033_988_75).fract();
                let c = &mut self.conns[idx];
                c.next_due = now + pace.mul_f64(frac);
                c.state = State::Paced;
                self.timers.push(Reverse((c.next_due, idx, c.token)));
            }
            _ => self.start_round_trip(idx),
        }
    }

    fn start_round_trip(&mut self, idx: usize) {
        self.prepare_round_trip(idx);
        self.drive(idx);
    }

    fn prepare_round_trip(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.seq += 1;
        fill_message(&mut c.out, c.global, c.seq);
        c.sent = 0;
        c.got = 0;
        c.began = Instant::now();
        c.deadline = Some(c.began + self.plan.timeout);
        c.state = State::Sending;
    }

    /// Advances round trips as far as the socket allows (edge-triggered: until EAGAIN).
    /// A server that answers at once would keep one connection here forever, so after
    /// a few round trips the connection yields and is driven again after the others.
    fn drive(&mut self, idx: usize) {
        let mut budget = DRIVE_BUDGET;
        loop {
            let c = &mut self.conns[idx];
            let Some(sock) = &c.sock else { return };
            match c.state {
                State::Sending => match (&*sock).write(&c.out[c.sent..]) {
                    Ok(0) => return self.lost(idx),
                    Ok(n) => {
                        c.sent += n;
                        self.counters.bytes_sent += n as u64;
                        if c.sent == c.out.len() {
                            c.state = State::Receiving;
                        }
                    }
                    Err(e) if is_would_block(&e) => return,
                    Err(e) if is_interrupted(&e) => {}
                    Err(_) => return self.lost(idx),
                },
                State::Receiving => {
                    let want = c.back.len();
                    match (&*sock).read(&mut c.back[c.got..want]) {
                        Ok(0) => return self.lost(idx),
                        Ok(n) => {
                            c.got += n;
                            self.counters.bytes_received += n as u64;
                            if c.got == want {
                                if !self.round_trip_done(idx) {
                                    return;
                                }
                                budget -= 1;
                                if budget == 0 {
                                    let token = self.conns[idx].token;
                                    self.again.push((idx, token));
                                    return;
                                }
                            }
                        }
                        Err(e) if is_would_block(&e) => return,
                        Err(e) if is_interrupted(&e) => {}
                        Err(_) => return self.lost(idx),
                    }
                }
                _ => return,
            }
        }
    }

    /// The server closed or reset while an echo was expected.
    fn lost(&mut self, idx: usize) {
        self.counters.reset_eof += 1;
        self.note_lost(idx);
        self.reconnect(idx);
    }

    /// Counts a complete echo and sets up what follows; true when the next round trip
    /// is ready to be driven at once.
    fn round_trip_done(&mut self, idx: usize) -> bool {
        let now = Instant::now();
        let c = &mut self.conns[idx];
        if c.back != c.out {
            self.counters.mismatch += 1;
            self.note_lost(idx);
            // The stream is out of step; only a new connection can resynchronise.
            self.reconnect(idx);
            return false;
        }
        let us = now.saturating_duration_since(c.began).as_micros() as u64;
        c.deadline = None;
        self.counters.round_trips += 1;
        self.latency.record(us);
        if self.plan.progress {
            self.interval.record(us);
        }
        match (self.plan.mode, self.plan.pace) {
            // A clean close by the client, then a fresh connection: that is the load.
            (Mode::Churn, _) => {
                self.reconnect(idx);
                false
            }
            (_, Some(pace)) => {
                let c = &mut self.conns[idx];
                // Keep to the ideal schedule (first + k * pace), so that timer lateness
                // does not add up into a lower rate; but a connection more than one
                // period behind starts afresh instead of bursting to catch up.
                c.next_due += pace;
                if c.next_due + pace < now {
                    c.next_due = now;
                }
                if c.next_due <= now {
                    self.prepare_round_trip(idx);
                    true
                } else {
                    c.state = State::Paced;
                    self.timers.push(Reverse((c.next_due, idx, c.token)));
                    false
                }
            }
            (_, None) => {
                self.prepare_round_trip(idx);
                true
            }
        }
    }

    /// For a connection with nothing outstanding: is it still open and silent?
    fn check_alive(&mut self, idx: usize) {
        let Some(sock) = &self.conns[idx].sock else {
            return;
        };
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut byte) {
            Err(e) if is_would_block(&e) || is_interrupted(&e) => {}
            Ok(0) | Err(_) => {
                self.counters.closed_idle += 1;
                self.note_lost(idx);
                self.reconnect(idx);
            }
            Ok(_) => {
                // An echo server never speaks first.
                self.counters.mismatch += 1;
                self.note_lost(idx);
                self.reconnect(idx);
            }
        }
    }
}

// ----- main -------------------------------------------------------------------------

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C ends the run early but still prints what was measured.
fn install_stop_handler() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // no other code in this process installs handlers for these signals.
        unsafe { sigaction(sig, &act) }
            .map_err(|e| format!("sigaction({}) failed: {e}", sig.as_str()))?;
    }
    Ok(())
}

struct Summary {
    elapsed: Duration,
    counters: Counters,
    latency: Histogram,
    connect_latency: Histogram,
    open_at_end: usize,
    first_connect_error: Option<String>,
}

fn run_load(plan: &Plan) -> Result<Summary, String> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Report>();
    let mut results = Vec::with_capacity(plan.threads);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(plan.threads);
        for t in 0..plan.threads {
            let tx = plan.progress.then(|| tx.clone());
            let h = std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn_scoped(s, move || Worker::new(plan, t, start)?.run(start, tx))
                .map_err(|e| format!("cannot start thread {t}: {e}"));
            handles.push(h);
        }
        drop(tx);
        if plan.progress {
            print_progress(&rx, plan.threads);
        }
        for h in handles {
            results.push(match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a load thread panicked (a bug)".into())),
                Err(e) => Err(e),
            });
        }
    });
    let elapsed = start.elapsed();
    let mut sum = Summary {
        elapsed,
        counters: Counters::default(),
        latency: Histogram::new(),
        connect_latency: Histogram::new(),
        open_at_end: 0,
        first_connect_error: None,
    };
    for r in results {
        let o = r?;
        sum.counters.add(&o.counters);
        sum.latency.merge(&o.latency);
        sum.connect_latency.merge(&o.connect_latency);
        sum.open_at_end += o.open_at_end;
        if sum.first_connect_error.is_none() {
            sum.first_connect_error = o.first_connect_error;
        }
    }
    Ok(sum)
}

/// Prints one line per second once every thread has reported that second.
fn print_progress(rx: &mpsc::Receiver<Report>, threads: usize) {
    let mut pending: BTreeMap<u64, (usize, Counters, Histogram, usize)> = BTreeMap::new();
    let mut total = Counters::default();
    for rep in rx {
        let e = pending
            .entry(rep.tick)
            .or_insert_with(|| (0, Counters::default(), Histogram::new(), 0));
        e.0 += 1;
        e.1.add(&rep.delta);
        e.2.merge(&rep.latency);
        e.3 += rep.open;
        if e.0 < threads {
            continue;
        }
        if let Some((_, d, h, open)) = pending.remove(&rep.tick) {
            total.add(&d);
            eprintln!(
                "[{:>3}s] open {open} new {} rt/s {} MB/s {:.2} p50 {}us p99 {}us p999 {}us | \
                 errors: connect {} eof {} mismatch {} timeout {} closed {}",
                rep.tick,
                d.opened,
                d.round_trips,
                d.bytes_received as f64 / 1e6,
                h.quantile(0.5),
                h.quantile(0.99),
                h.quantile(0.999),
                total.connect_failed,
                total.reset_eof,
                total.mismatch,
                total.timeouts,
                total.closed_idle,
            );
        }
    }
}

fn summary_json(plan: &Plan, s: &Summary) -> serde_json::Value {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let c = &s.counters;
    serde_json::json!({
        "mode": plan.mode.name(),
        "addr": plan.addr.to_string(),
        "conns": plan.conns,
        "conns_requested": plan.capped_from.unwrap_or(plan.conns),
        "threads": plan.threads,
        "size": plan.size,
        "nofile_limit": plan.nofile,
        "elapsed_s": secs,
        "conns_opened": c.opened,
        "connect_errors": c.connect_failed,
        "conns_open_at_end": s.open_at_end,
        "round_trips": c.round_trips,
        "round_trips_failed": c.round_trips_failed(),
        "round_trips_per_s": c.round_trips as f64 / secs,
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
        "throughput_mb_s": c.bytes_received as f64 / secs / 1e6,
        "latency_us": {
            "p50": s.latency.quantile(0.5),
            "p99": s.latency.quantile(0.99),
            "p999": s.latency.quantile(0.999),
            "max": s.latency.max_or_zero(),
            "mean": s.latency.mean(),
        },
        "connect_latency_us": {
            "p50": s.connect_latency.quantile(0.5),
            "p99": s.connect_latency.quantile(0.99),
            "max": s.connect_latency.max_or_zero(),
        },
        "errors": {
            "connect_failed": c.connect_failed,
            "reset_eof": c.reset_eof,
            "mismatch": c.mismatch,
            "timeouts": c.timeouts,
            "closed_idle": c.closed_idle,
            "total": c.errors(),
            "conns_lost": c.conns_lost,
        },
        "first_connect_error": s.first_connect_error,
    })
}

fn print_summary(plan: &Plan, s: &Summary) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let c = &s.counters;
    println!(
        "corral-load: {} mode, {} connections, {} thread(s), {} B messages -> {} for {:.1} s",
        plan.mode.name(),
        plan.conns,
        plan.threads,
        plan.size,
        plan.addr,
        secs
    );
    println!(
        "connections:   {} opened, {} connect errors, {} open at end",
        c.opened, c.connect_failed, s.open_at_end
    );
    println!(
        "round trips:   {} ({:.0}/s), {} failed, {:.2} MB/s echoed",
        c.round_trips,
        c.round_trips as f64 / secs,
        c.round_trips_failed(),
        c.bytes_received as f64 / secs / 1e6
    );
    println!(
        "latency (us):  p50 {} p99 {} p999 {} max {} mean {:.0}",
        s.latency.quantile(0.5),
        s.latency.quantile(0.99),
        s.latency.quantile(0.999),
        s.latency.max_or_zero(),
        s.latency.mean()
    );
    println!(
        "connect (us):  p50 {} p99 {} max {}",
        s.connect_latency.quantile(0.5),
        s.connect_latency.quantile(0.99),
        s.connect_latency.max_or_zero()
    );
    println!(
        "errors:        {} total: connect failed {}, reset/EOF mid-conversation {}, \
         mismatched echo {}, timeouts {}, closed while idle {}",
        c.errors(),
        c.connect_failed,
        c.reset_eof,
        c.mismatch,
        c.timeouts,
        c.closed_idle
    );
    if let Some(e) = &s.first_connect_error {
        println!("first connect error: {e}");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corral-load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_stop_handler() {
        eprintln!("corral-load: {e}");
        return ExitCode::from(2);
    }
    if plan.mode == Mode::Stream {
        return run_stream(&args, &plan);
    }
    let sampler = sample_workers(&args);
    let summary = match run_load(&plan) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corral-load: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = sampler.map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("status sampler panicked".into()))
    });
    if args.json {
        let mut j = summary_json(&plan, &summary);
        if let Some(w) = &workers {
            j["workers"] = match w {
                Ok(ws) => serde_json::json!(ws
                    .iter()
                    .map(|(pid, n)| serde_json::json!({"pid": pid, "connections": n}))
                    .collect::<Vec<_>>()),
                Err(e) => serde_json::json!({ "error": e }),
            };
        }
        println!("{j}");
    } else {
        print_summary(&plan, &summary);
        match &workers {
            Some(Ok(ws)) => {
                let list: Vec<String> = ws.iter().map(|(pid, n)| format!("{pid}:{n}")).collect();
                println!(
                    "connections per worker (pid:conns, at 80 % of the run): {}",
                    list.join(" ")
                );
            }
            Some(Err(e)) => println!("connections per worker: unavailable ({e})"),
            None => {}
        }
    }
    if args.fail_on_error && summary.counters.errors() > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `--mode stream`: its own loop and summary (see `stream.rs`).
fn run_stream(args: &Args, plan: &Plan) -> ExitCode {
    if args.warmup >= args.duration {
        eprintln!(
            "corral-load: --warmup {} must be less than --duration {}",
            args.warmup, args.duration
        );
        return ExitCode::from(2);
    }
    if !(0.0..1.0).contains(&args.tolerance) {
        eprintln!(
            "corral-load: --tolerance {}: must be in 0 ..< 1",
            args.tolerance
        );
        return ExitCode::from(2);
    }
    let opts = stream::StreamOpts {
        expect: args.expect_rate,
        tolerance: args.tolerance,
        warmup: Duration::from_secs(args.warmup),
    };
    match stream::run(plan, opts) {
        Ok(o) => {
            let j = stream::report(&o, opts, args.json);
            if args.json {
                println!("{j}");
            }
            let starved = j["starved"].as_u64().unwrap_or(0);
            if args.fail_on_error && starved > 0 {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral-load: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn histogram_buckets_are_contiguous() {
        for v in 0..100_000u64 {
            let i = Histogram::index(v);
            assert!(
                Histogram::lower(i) <= v && v <= Histogram::upper(i),
                "{v} in {i}"
            );
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        for i in 0..BUCKETS - 1 {
            assert_eq!(Histogram::upper(i) + 1, Histogram::lower(i + 1));
        }
    }

    #[test]
    fn histogram_percentiles_within_bucket_error() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.035, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.max_or_zero(), 100_000);
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn histogram_small_and_single_values_are_exact() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        h.record(1234);
        assert_eq!(h.quantile(0.5), 1234);
        assert_eq!(h.quantile(0.999), 1234);
        let mut h = Histogram::new();
        for v in [3, 3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.99), 7);
    }

    #[test]
    fn histogram_merge_adds_up() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 0..1000 {
            a.record(v);
            b.record(v + 1000);
        }
        a.merge(&b);
        assert_eq!(a.total, 2000);
        assert_eq!(a.min, 0);
        assert_eq!(a.max, 1999);
        let p50 = a.quantile(0.5) as f64;
        assert!((p50 - 1000.0).abs() / 1000.0 < 0.035, "{p50}");
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:7070", "127.255.255.254:1", "[::1]:80"] {
            assert!(validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:80",
            "0.0.0.0:80",
            "192.168.1.1:7070",
            "[::]:80",
            "[::ffff:127.0.0.1]:80",
            "[2001:db8::1]:80",
            "localhost:7070",
            "127.0.0.1",
            "127.0.0.1:0",
            "",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
        let e = validate_addr("8.8.8.8:53").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn source_addresses_spread_over_127_0_0_k() {
        let v4 = validate_addr("127.0.0.1:9").unwrap();
        assert!(source_ips(&v4, 1).unwrap().is_empty());
        let ips = source_ips(&v4, 3).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        let v6 = validate_addr("[::1]:9").unwrap();
        assert!(source_ips(&v6, 2).is_err());
    }

    #[test]
    fn messages_differ_per_round_trip_and_connection() {
        let mut a = vec![0; 32];
        let mut b = vec![0; 32];
        fill_message(&mut a, 1, 1);
        fill_message(&mut b, 1, 2);
        assert_ne!(a, b);
        fill_message(&mut b, 2, 1);
        assert_ne!(a, b);
        let mut tiny = vec![0; 1];
        fill_message(&mut tiny, 0, 5);
        assert_eq!(tiny, [5]);
    }

    /// A thread-per-connection echo server on an ephemeral loopback port; it lives
    /// until the test process ends (its threads block in accept/read).
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
        let addr = l.local_addr().expect("local_addr");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut r = match s.try_clone() {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        addr
    }

    fn plan(addr: SocketAddr, mode: Mode, conns: usize) -> Plan {
        Plan {
            addr,
            conns,
            threads: 2,
            duration: Duration::from_millis(400),
            mode,
            size: 100,
            pace: None,
            sources: Vec::new(),
            connect_rate: None,
            timeout: Duration::from_secs(5),
            progress: false,
            capped_from: None,
            nofile: 1024,
        }
    }

    #[test]
    fn echo_and_churn_against_a_real_server() {
        let addr = echo_server();
        let s = run_load(&plan(addr, Mode::Echo, 8)).expect("echo run");
        assert_eq!(s.counters.opened, 8);
        assert!(s.counters.round_trips > 8, "{:?}", s.counters);
        assert_eq!(s.counters.errors(), 0, "{:?}", s.counters);
        assert_eq!(s.open_at_end, 8);

        let s = run_load(&plan(addr, Mode::Churn, 4)).expect("churn run");
        assert!(s.counters.opened > 4, "{:?}", s.counters);
        assert!(s.counters.round_trips + 4 >= s.counters.opened);
        assert_eq!(s.counters.errors(), 0, "{:?}", s.counters);
    }

    #[test]
    fn idle_mode_notices_a_server_that_closes() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("local_addr");
        // Accept and close at once: every connection is seen as closed while idle.
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
        let s = run_load(&plan(addr, Mode::Idle, 2)).expect("idle run");
        assert!(s.counters.closed_idle >= 2, "{:?}", s.counters);
    }

    #[test]
    fn a_refused_connect_is_counted_and_retried() {
        // Bind then drop to get a loopback port with (almost certainly) no listener.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = run_load(&plan(addr, Mode::Echo, 2)).expect("refused run");
        assert_eq!(s.counters.opened, 0);
        assert!(s.counters.connect_failed >= 2, "{:?}", s.counters);
        assert!(s.first_connect_error.is_some());
    }
}
