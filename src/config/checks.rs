//! Checks of values that parse but would break the service once it runs: a log file
//! that cannot be created, a proxy that forwards to itself, a memory limit below what
//! any worker needs. Each returns the reason in words an operator can act on.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Config, ListenAddr, Size};

/// Below this, `max_worker_rss` would replace workers that are merely alive: a fresh
/// worker (a fork of the master, with its runtime, log thread and buffers) was measured
/// at 3.2 MiB of RSS in a release build and 7.3 MiB in a debug build, before its first
/// connection; 16 MiB leaves room for the buffers of a worker that serves anything.
pub const RSS_FLOOR: u64 = 16 << 20;

/// `[log] file` must be creatable: its directory must exist and it must not be a
/// directory itself. Checked up front so that `-t`, start and reload refuse it instead
/// of a running master discovering it later.
pub fn log_file(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "cannot create {}: {} is not a directory",
            path.display(),
            dir.display()
        )),
        Err(e) => Err(format!(
            "cannot create {}: directory {}: {e}",
            path.display(),
            dir.display()
        )),
    }
}

/// A warning (not an error) for a `max_worker_rss` below [`RSS_FLOOR`]: the master
/// would replace every worker every few heartbeats. Kept a warning because a tiny
/// limit is how one exercises recycling on purpose.
pub fn rss_warning(max: Size) -> Option<String> {
    (max.0 > 0 && max.0 < RSS_FLOOR).then(|| {
        format!(
            "master.max_worker_rss = {max} is below {}: a fresh worker already uses a few MiB, \
             so every worker would be replaced every few heartbeats, forever",
            Size(RSS_FLOOR)
        )
    })
}

/// Does a listener bound to `listen` accept connections made to `to`?
fn covers(listen: SocketAddr, to: SocketAddr) -> bool {
    if listen.port() != to.port() {
        return false;
    }
    let (l, t) = (listen.ip(), to.ip());
    if l == t {
        return true;
    }
    match (l, t) {
        // 0.0.0.0 takes every local IPv4 address; a connect to 0.0.0.0 goes to the
        // local host, and all of 127/8 is local.
        (IpAddr::V4(l), IpAddr::V4(t)) => {
            (l.is_unspecified() && (t.is_loopback() || t.is_unspecified() || is_local(to)))
                || (t.is_unspecified() && l.is_loopback())
        }
        // [::] listeners are IPv6-only (IPV6_V6ONLY is set), so they cover IPv6 only.
        (IpAddr::V6(l), IpAddr::V6(t)) => {
            (l.is_unspecified() && (t.is_loopback() || t.is_unspecified() || is_local(to)))
                || (t.is_unspecified() && l.is_loopback())
        }
        _ => false,
    }
}

/// Whether `addr`'s IP belongs to this host: binding it succeeds only then.
fn is_local(addr: SocketAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// The first of corral's own TCP listeners that a connection to `to` would reach.
fn own_listener(config: &Config, to: SocketAddr) -> Option<usize> {
    config
        .listen
        .iter()
        .position(|l| matches!(l.address, ListenAddr::Tcp(a) if covers(a, to)))
}

/// The own listeners that listener `i` forwards to: (upstream, address, index).
fn forwards_to(config: &Config, i: usize) -> Vec<(String, SocketAddr, usize)> {
    // Parsed (and resolved) by the service, before this check runs.
    let Some(parsed) = &config.listen[i].parsed.0 else {
        return Vec::new();
    };
    parsed
        .forwards_to()
        .into_iter()
        .filter_map(|(u, to)| own_listener(config, to).map(|j| (u, to, j)))
        .collect()
}

/// Whether connections entering listener `from` can be forwarded, through corral's
/// own proxy listeners, to listener `target`.
fn leads_to(config: &Config, from: usize, target: usize) -> bool {
    let mut seen = vec![false; config.listen.len()];
    let mut stack = vec![from];
    while let Some(k) = stack.pop() {
        if std::mem::replace(&mut seen[k], true) {
            continue;
        }
        for (_, _, j) in forwards_to(config, k) {
            if j == target {
                return true;
            }
            stack.push(j);
        }
    }
    false
}

/// Why forwarding listener `i` would forward connections to itself, if it would.
pub fn proxy_loop(config: &Config, i: usize) -> Option<String> {
    for (u, to, j) in forwards_to(config, i) {
        if j == i {
            return Some(format!(
                "upstream `{u}` ({to}) is this listener itself: every connection would be \
                 forwarded to itself"
            ));
        }
        if leads_to(config, j, i) {
            return Some(format!(
                "upstream `{u}` ({to}) is listen[{j}], a proxy whose upstreams lead back to \
                 listen[{i}]: connections would go round in a loop"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn covers_same_address_and_wildcards() {
        assert!(covers(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(!covers(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!covers(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(covers(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(covers(a("0.0.0.0:80"), a("127.9.9.9:80")));
        assert!(covers(a("0.0.0.0:80"), a("0.0.0.0:80")));
        assert!(covers(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(covers(a("[::]:80"), a("[::1]:80")));
        assert!(!covers(a("[::]:80"), a("127.0.0.1:80")));
        assert!(!covers(a("0.0.0.0:80"), a("[::1]:80")));
        // Not an address of this host (TEST-NET-3).
        assert!(!covers(a("0.0.0.0:80"), a("203.0.113.7:80")));
    }

    #[test]
    fn log_file_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(log_file(&dir.path().join("x.log")).is_ok());
        let e = log_file(&dir.path().join("missing/x.log")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = log_file(dir.path()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let e = log_file(&dir.path().join("f/x.log")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn rss_below_the_floor_warns() {
        assert!(rss_warning(Size(0)).is_none());
        assert!(rss_warning(Size(RSS_FLOOR)).is_none());
        let w = rss_warning(Size(1 << 20)).unwrap();
        assert!(w.contains("max_worker_rss") && w.contains("1MiB"), "{w}");
    }
}
