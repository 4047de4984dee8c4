//! The validated run: command-line values checked once (loopback only, sizes, the
//! fd limit) into a `Plan` that every thread reads and nothing re-checks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::ValueEnum;

use crate::Args;

/// Longest run allowed: the tool must always stop by itself.
pub(crate) const MAX_DURATION_SECS: u64 = 1800;
/// Largest message: keeps `conns * size` buffers within reason.
pub(crate) const MAX_SIZE: usize = 1 << 20;
/// File descriptors kept back for stdio, epoll instances and the allocator's needs.
pub(crate) const FD_RESERVE: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Echo,
    Idle,
    Churn,
    Stream,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    pub(crate) conns: usize,
    pub(crate) threads: usize,
    pub(crate) duration: Duration,
    pub(crate) mode: Mode,
    pub(crate) size: usize,
    /// Time between round-trip starts on one connection; `None` = flat out.
    pub(crate) pace: Option<Duration>,
    /// Local addresses to bind before connect; empty = let the kernel choose.
    pub(crate) sources: Vec<IpAddr>,
    /// New connections per second per thread.
    pub(crate) connect_rate: Option<f64>,
    pub(crate) timeout: Duration,
    /// Idle mode: the period of the check that every held connection is still open.
    pub(crate) alive_check: Duration,
    pub(crate) progress: bool,
    /// Requested connections when the fd limit forced fewer.
    pub(crate) capped_from: Option<usize>,
    pub(crate) nofile: u64,
}

/// Accepts only a numeric loopback socket address: the machines this runs on must never
/// be used to load anything else.
pub(crate) fn validate_addr(s: &str) -> Result<SocketAddr, String> {
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
pub(crate) fn source_ips(addr: &SocketAddr, k: u64) -> Result<Vec<IpAddr>, String> {
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
    pub(crate) fn from_args(a: &Args) -> Result<Plan, String> {
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
            alive_check: Duration::from_millis(a.alive_check_ms),
            progress: a.progress,
            capped_from: capped,
            nofile,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit when `needed` is more than the soft
/// one. Returns the limit now in force and the old soft limit if it was raised.
pub(crate) fn raise_nofile(needed: u64) -> Result<(u64, Option<u64>), String> {
    // corral's own raise (to the hard limit); a soft limit that already sufficed is
    // reported as the one in force, as before.
    let (soft, hard) =
        corral::os::privs::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if soft >= needed {
        return Ok((soft, None));
    }
    Ok((hard, Some(soft)))
}

/// Each source address has one ephemeral port range per destination; say so before
/// connects start failing with EADDRNOTAVAIL, rather than after.
pub(crate) fn warn_port_range(conns: usize, sources: usize) {
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
