//! `proxy`: a TCP (layer 4) proxy to a list of upstreams.
//!
//! The service only decides *where* a connection goes — round robin or least
//! connections, skipping for a while an upstream that refused or timed out (passive
//! health) — and learns how each attempt went. Moving the bytes (both directions with
//! backpressure, half-close, connect timeouts, falling back to the next upstream) is
//! the worker loop's job, so a proxy connection gets the same budgets, water marks and
//! timers as any other.
//!
//! A proxied pair moves at reload (both sockets together) whenever neither direction
//! holds a byte in corral; the loop checks that. The upstream is found again by its
//! address in the new configuration, so each worker's connection counts stay right.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::ListenConfig;
use options::Balance;

pub mod options;

use super::{check_stateless, Handler, Io, ResumeError, Service, Suspended, Upstreams};

/// The only state format: none (the loop carries the upstream).
pub(crate) const VERSION: u32 = 1;

/// `connect_timeout` when not set.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `upstream_backoff` when not set.
pub const UPSTREAM_BACKOFF: Duration = Duration::from_secs(10);

/// The proxy service of one listener, in one worker.
pub struct Proxy {
    upstreams: Vec<Upstream>,
    balance: Balance,
    next: usize,
    connect_timeout: Duration,
    backoff: Duration,
}

struct Upstream {
    addr: SocketAddr,
    /// Open connections from this worker.
    active: usize,
    /// Skipped until then after a failure.
    down_until: Option<Instant>,
}

impl Proxy {
    /// Builds the proxy from a validated listener config, with the upstream
    /// addresses the master resolved (a worker never resolves: a lookup failing
    /// here would silently leave it with no upstream).
    pub fn new(l: &ListenConfig) -> Proxy {
        let l = options::of(l).cloned().unwrap_or_default();
        Proxy {
            upstreams: l
                .resolved
                .iter()
                .map(|&addr| Upstream {
                    addr,
                    active: 0,
                    down_until: None,
                })
                .collect(),
            balance: l.balance.unwrap_or_default(),
            next: 0,
            connect_timeout: l.connect_timeout.map(|d| d.0).unwrap_or(CONNECT_TIMEOUT),
            backoff: l.upstream_backoff.map(|d| d.0).unwrap_or(UPSTREAM_BACKOFF),
        }
    }
}

/// The client side's handler: a proxied connection's bytes never reach it.
pub(crate) struct Forwarded;

impl Handler for Forwarded {
    fn on_data(&mut self, _io: &mut Io<'_>, data: &[u8]) -> usize {
        data.len()
    }

    fn suspend(&mut self) -> Option<Suspended> {
        Some(Suspended::new(VERSION, Vec::new()))
    }
}

impl Service for Proxy {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(Forwarded)
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        check_stateless(VERSION, state, version)?;
        Ok(Box::new(Forwarded))
    }

    fn upstreams(&mut self, _: super::sealed::Forwarding) -> Option<&mut dyn Upstreams> {
        Some(self)
    }
}

impl Upstreams for Proxy {
    fn pick(&mut self, tried: &[usize], now: Instant) -> Option<(usize, SocketAddr)> {
        let n = self.upstreams.len();
        let candidates: Vec<usize> = (0..n).filter(|i| !tried.contains(i)).collect();
        let healthy: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.upstreams[i].down_until.is_none_or(|t| t <= now))
            .collect();
        // When every remaining upstream is marked down, try them anyway: one may have
        // come back, and refusing the client outright helps nobody.
        let pool = if healthy.is_empty() {
            candidates
        } else {
            healthy
        };
        let pick = match self.balance {
            Balance::RoundRobin => {
                let start = self.next;
                let pick = (0..n).map(|k| (start + k) % n).find(|i| pool.contains(i))?;
                self.next = (pick + 1) % n;
                pick
            }
            Balance::LeastConn => {
                let start = self.next;
                // Ties go round robin, so equal upstreams share the load.
                let pick = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| pool.contains(i))
                    .min_by_key(|&i| self.upstreams[i].active)?;
                self.next = (pick + 1) % n;
                pick
            }
        };
        Some((pick, self.upstreams[pick].addr))
    }

    fn connected(&mut self, index: usize) {
        if let Some(u) = self.upstreams.get_mut(index) {
            u.active += 1;
            u.down_until = None;
        }
    }

    fn failed(&mut self, index: usize, now: Instant) {
        if let Some(u) = self.upstreams.get_mut(index) {
            u.down_until = Some(now + self.backoff);
        }
    }

    fn released(&mut self, index: usize) {
        if let Some(u) = self.upstreams.get_mut(index) {
            u.active = u.active.saturating_sub(1);
        }
    }

    fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(balance: Balance, n: u16) -> Proxy {
        Proxy {
            upstreams: (0..n)
                .map(|i| Upstream {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                    active: 0,
                    down_until: None,
                })
                .collect(),
            balance,
            next: 0,
            connect_timeout: Duration::from_secs(1),
            backoff: Duration::from_secs(10),
        }
    }

    #[test]
    fn round_robin_skips_tried_and_failed() {
        let now = Instant::now();
        let mut p = proxy(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..4).map(|_| p.pick(&[], now).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        p.failed(1, now);
        let picks: Vec<usize> = (0..3).map(|_| p.pick(&[], now).unwrap().0).collect();
        assert_eq!(picks, [2, 0, 2]);
        assert_eq!(
            p.pick(&[0, 2], now).unwrap().0,
            1,
            "a down upstream is still tried last"
        );
        assert!(p.pick(&[0, 1, 2], now).is_none());
        // After the backoff it is healthy again.
        assert_eq!(p.pick(&[0, 2], now + Duration::from_secs(11)).unwrap().0, 1);
    }

    #[test]
    fn workers_use_the_masters_addresses_and_never_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[master]\nworkers = 1\n[[listen]]\naddress = \"127.0.0.1:1\"\n\
             service = \"proxy\"\nupstreams = [\"127.0.0.1:7\", \"localhost:9\"]\n",
        )
        .unwrap();
        let mut config = crate::config::Config::load(&path).unwrap();
        let l = &mut config.listen[0];
        assert_eq!(
            options::of(l).unwrap().resolved.len(),
            2,
            "resolved at load"
        );
        // Were the worker to resolve again, these names would leave it with nothing.
        let names = vec!["no-such-host.invalid:7", "also-not.invalid:9"];
        l.options.insert("upstreams".into(), names.into());
        let p = Proxy::new(l);
        let addrs: Vec<SocketAddr> = p.upstreams.iter().map(|u| u.addr).collect();
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[0], SocketAddr::from(([127, 0, 0, 1], 7)));
        assert_eq!(addrs[1].port(), 9);
    }

    #[test]
    fn least_conn_prefers_idle_upstreams() {
        let now = Instant::now();
        let mut p = proxy(Balance::LeastConn, 2);
        p.connected(0);
        p.connected(0);
        assert_eq!(p.pick(&[], now).unwrap().0, 1);
        p.connected(1);
        p.released(0);
        p.released(0);
        assert_eq!(p.pick(&[], now).unwrap().0, 0);
    }
}
