//! A worker's per-listener and per-upstream counters for the metrics service: the
//! accounting on the channel's [`Counters`] message type.
//!
//! They travel to the master with every heartbeat (`ToMaster::Counters`), next to the
//! worker-wide [`crate::channel::Stats`]. Everything here is plain integer arithmetic
//! at the points where the loop already decides (accept, refuse, throttle, connect
//! upstream); gauges (active connections, upstreams in backoff) are computed once per
//! heartbeat by a pass over the connections, so the hot path pays nothing for them.

use std::time::{Duration, Instant};

use super::conn::Flags;
use super::slab::Slab;
use crate::channel::{Counters, ListenerCounters, UpstreamCounters};
use crate::config::Config;

/// What a worker's heartbeat reports: its worker-wide stats, and the per-listener and
/// per-upstream counters for the metrics service.
pub(crate) struct Tally {
    pub stats: crate::channel::Stats,
    pub counters: Counters,
}

/// What an upstream's backoff is when the listener does not set `upstream_backoff`
/// (the proxy service's own default).
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// Estimated JSON bytes per counters message (well under the channel's 32 KiB).
const PART_BYTES: usize = 12 * 1024;

impl Counters {
    /// Zeroed counters for the listeners (and upstreams) of `config`.
    pub fn new(config: &Config) -> Counters {
        let mut c = Counters::default();
        for l in &config.listen {
            let listen = l.address.to_string();
            let proxy = crate::service::proxy::options::of(l);
            c.listeners.push(ListenerCounters {
                listen: listen.clone(),
                ..Default::default()
            });
            c.upstreams.push(
                proxy
                    .map_or(&[][..], |p| &p.resolved)
                    .iter()
                    .map(|a| UpstreamCounters {
                        listen: listen.clone(),
                        upstream: a.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            );
            c.backoff.push(
                proxy
                    .and_then(|p| p.upstream_backoff)
                    .map_or(DEFAULT_BACKOFF, |d| d.0),
            );
        }
        c
    }

    fn listener(&mut self, i: usize) -> Option<&mut ListenerCounters> {
        self.listeners.get_mut(i)
    }

    fn upstream(&mut self, listener: usize, index: usize) -> Option<&mut UpstreamCounters> {
        self.upstreams.get_mut(listener)?.get_mut(index)
    }

    pub fn accepted(&mut self, listener: usize) {
        if let Some(l) = self.listener(listener) {
            l.accepted += 1;
        }
    }

    pub fn at_limit(&mut self, listener: usize) {
        if let Some(l) = self.listener(listener) {
            l.rejected_limit += 1;
        }
    }

    pub fn per_ip(&mut self, listener: usize) {
        if let Some(l) = self.listener(listener) {
            l.rejected_per_ip += 1;
        }
    }

    pub fn throttled(&mut self, listener: usize) {
        if let Some(l) = self.listener(listener) {
            l.rejected_rate += 1;
        }
    }

    pub fn upstream_connected(&mut self, listener: usize, index: usize) {
        if let Some(u) = self.upstream(listener, index) {
            u.connects += 1;
            u.down_until = None;
        }
    }

    /// Mirrors the proxy's own rule: a failed connect marks the upstream down for
    /// the listener's backoff.
    pub fn upstream_failed(&mut self, listener: usize, index: usize, now: Instant) {
        let backoff = self
            .backoff
            .get(listener)
            .copied()
            .unwrap_or(DEFAULT_BACKOFF);
        if let Some(u) = self.upstream(listener, index) {
            u.failures += 1;
            u.down_until = Some(now + backoff);
        }
    }

    /// Bytes a proxied connection moved in one pass: `from_client` went to the
    /// upstream, `to_client` came from it.
    pub fn upstream_bytes(
        &mut self,
        listener: usize,
        index: usize,
        from_client: u64,
        to_client: u64,
    ) {
        if let Some(u) = self.upstream(listener, index) {
            u.bytes_out += from_client;
            u.bytes_in += to_client;
        }
    }

    /// The counters as messages of at most about `PART_BYTES` of JSON each: a worker
    /// with many listeners and upstreams must not exceed the channel's message size.
    /// Each part names its entries, so the master merges parts in any grouping.
    pub fn parts(&self) -> Vec<Counters> {
        let mut parts = Vec::new();
        let mut cur = Counters::default();
        let mut bytes = 0;
        let mut push = |cur: &mut Counters, bytes: &mut usize, weight: usize| {
            if *bytes + weight > PART_BYTES && *bytes > 0 {
                parts.push(std::mem::take(cur));
                *bytes = 0;
            }
            *bytes += weight;
        };
        for l in &self.listeners {
            push(&mut cur, &mut bytes, l.listen.len() + 160);
            cur.listeners.push(l.clone());
        }
        for u in self.upstreams.iter().flatten() {
            push(
                &mut cur,
                &mut bytes,
                u.listen.len() + u.upstream.len() + 200,
            );
            match cur.upstreams.first_mut() {
                Some(v) => v.push(u.clone()),
                None => cur.upstreams.push(vec![u.clone()]),
            }
        }
        parts.push(cur);
        parts
    }

    /// Recomputes the gauges from the open connections (once per heartbeat).
    pub fn refresh(&mut self, conns: &Slab, now: Instant) {
        for l in &mut self.listeners {
            l.active = 0;
        }
        for u in self.upstreams.iter_mut().flatten() {
            u.active = 0;
            u.backoff = u.down_until.is_some_and(|t| t > now);
        }
        for token in conns.tokens() {
            let Some(c) = conns.get(token) else { continue };
            let listener = usize::from(c.listener);
            if let Some(l) = self.listeners.get_mut(listener) {
                l.active += 1;
            }
            if let Some(up) = c.upstream().filter(|u| u.flags.has(Flags::CONNECTED)) {
                if let Some(u) = self.upstream(listener, up.index) {
                    u.active += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_failures_and_connects() {
        let mut c = Counters {
            listeners: vec![ListenerCounters::default()],
            upstreams: vec![vec![UpstreamCounters::default()]],
            backoff: vec![Duration::from_secs(5)],
        };
        let now = Instant::now();
        c.upstream_failed(0, 0, now);
        c.refresh(&Slab::default(), now);
        assert!(c.upstreams[0][0].backoff);
        assert_eq!(c.upstreams[0][0].failures, 1);
        c.refresh(&Slab::default(), now + Duration::from_secs(6));
        assert!(!c.upstreams[0][0].backoff);
        c.upstream_failed(0, 0, now);
        c.upstream_connected(0, 0);
        c.refresh(&Slab::default(), now);
        assert!(!c.upstreams[0][0].backoff);
        // Out-of-range indices are ignored, never a panic.
        c.accepted(7);
        c.upstream_bytes(3, 9, 1, 1);
    }

    #[test]
    fn many_upstreams_travel_in_parts_that_fit_a_message() {
        let mut c = Counters::default();
        for l in 0..20 {
            let listen = format!("127.0.0.1:{}", 20000 + l);
            c.listeners.push(ListenerCounters {
                listen: listen.clone(),
                accepted: u64::MAX,
                ..Default::default()
            });
            c.upstreams.push(
                (0..40)
                    .map(|u| UpstreamCounters {
                        listen: listen.clone(),
                        upstream: format!("[2001:db8::{u}]:65535"),
                        connects: u64::MAX,
                        failures: u64::MAX,
                        bytes_in: u64::MAX,
                        bytes_out: u64::MAX,
                        ..Default::default()
                    })
                    .collect(),
            );
        }
        let parts = c.parts();
        assert!(parts.len() > 1);
        let mut listeners = 0;
        let mut upstreams = 0;
        for p in &parts {
            let msg = crate::channel::ToMaster::Counters(p.clone());
            let n = serde_json::to_vec(&msg).unwrap().len();
            assert!(n <= crate::channel::MAX_MESSAGE / 2, "{n}");
            listeners += p.listeners.len();
            upstreams += p.upstreams.iter().flatten().count();
        }
        assert_eq!((listeners, upstreams), (20, 800));
    }
}
