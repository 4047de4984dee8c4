//! Recycling workers by use and by age (`[worker] max_requests`, `max_lifetime`, as
//! gunicorn and uWSGI operators know them), without their capacity dip: the master
//! starts the replacement first and the old worker drains once its successor is
//! ready (the path `max_worker_rss` takes), and only one slot is recycled at a time,
//! so the box never holds more than one extra worker for it.
//!
//! Each worker draws its own limits at fork, the configured value plus a random
//! jitter, so workers started together (at start or after a reload) do not all
//! reach their limit in the same heartbeat. The worker only reports its counts of
//! connections (in its heartbeat `Stats`); the master decides. A connection it served
//! counts whether it accepted it or adopted it from an older generation.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::table::{WorkerRecord, WorkerState};
use super::{Master, State};
use crate::config::WorkerConfig;

/// One worker's limits, drawn when it is forked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Connections it serves before it is replaced.
    pub requests: Option<u64>,
    /// How long it lives before it is replaced.
    pub lifetime: Option<Duration>,
}

/// Why a worker is being replaced, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Requests { served: u64, limit: u64 },
    Lifetime { lived: Duration, limit: Duration },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Requests { served, limit } => write!(
                f,
                "served {served} connections, its max_requests (with jitter) is {limit}"
            ),
            Reason::Lifetime { lived, limit } => write!(
                f,
                "lived {:.1}s, its max_lifetime (with jitter) is {:.1}s",
                lived.as_secs_f64(),
                limit.as_secs_f64()
            ),
        }
    }
}

/// A random number in `0..=max` (not for cryptography: it only spreads restarts).
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % (max.saturating_add(1)).max(1)
}

impl Limits {
    /// Draws a new worker's limits from the config.
    pub fn draw(c: &WorkerConfig) -> Limits {
        let requests = (c.max_requests > 0)
            .then(|| c.max_requests.saturating_add(jitter(c.max_requests_jitter)));
        let lifetime = (!c.max_lifetime.0.is_zero()).then(|| {
            let extra = jitter(c.max_lifetime_jitter.0.as_millis().min(u64::MAX as u128) as u64);
            c.max_lifetime.0 + Duration::from_millis(extra)
        });
        Limits { requests, lifetime }
    }

    /// Whether a worker with these limits, `served` connections and started at
    /// `started` is due for replacement at `now`, and why.
    pub fn due(&self, served: u64, started: Instant, now: Instant) -> Option<Reason> {
        if let Some(limit) = self.requests {
            if served >= limit {
                return Some(Reason::Requests { served, limit });
            }
        }
        let lived = now.saturating_duration_since(started);
        match self.lifetime {
            Some(limit) if lived >= limit => Some(Reason::Lifetime { lived, limit }),
            _ => None,
        }
    }
}

/// The worker to recycle now, if any: a ready worker of `generation` over one of its
/// limits, unless a recycling (by any reason, `max_worker_rss` too) is still under
/// way, that is until the recycled worker has exited.
pub fn pick(
    workers: &mut [WorkerRecord],
    generation: u64,
    now: Instant,
) -> Option<(usize, Reason)> {
    // A replacement that died before it was ready leaves its predecessor marked: it
    // serves on and may be tried again, instead of blocking recycling for good.
    for i in 0..workers.len() {
        let w = &workers[i];
        if w.recycling && w.state == WorkerState::Ready {
            let successor = workers.iter().any(|o| {
                o.slot == w.slot
                    && !o.recycling
                    && matches!(o.state, WorkerState::Starting | WorkerState::Ready)
            });
            if !successor {
                workers[i].recycling = false;
            }
        }
    }
    if workers.iter().any(|w| w.recycling) {
        return None;
    }
    // The oldest due worker first: under a steady load the young replacements reach
    // their limits too, and picking in table order could pass over one slot forever.
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.generation == generation && w.state == WorkerState::Ready)
        .filter_map(|(i, w)| {
            w.limits
                .due(w.stats.accepted + w.stats.adopted, w.started_at, now)
                .map(|r| (i, r, w.started_at))
        })
        .min_by_key(|&(_, _, started)| started)
        .map(|(i, r, _)| (i, r))
}

impl Master {
    /// A worker over `max_requests` or `max_lifetime` is replaced like one over
    /// `max_worker_rss`: its replacement starts now, and the master drains it once
    /// the replacement is ready. Called at each heartbeat.
    pub(super) fn check_recycle(&mut self) {
        if !matches!(self.state, State::Running) {
            return;
        }
        let Some((i, reason)) = pick(&mut self.workers, self.generation, self.fx.now()) else {
            return;
        };
        let w = &mut self.workers[i];
        let (slot, pid) = (w.slot, w.pid.as_raw());
        info!(
            slot,
            pid, "recycling worker: {reason}; its replacement starts first"
        );
        w.recycling = true;
        if let Err(e) = self.spawn(slot, self.generation) {
            error!("{e}");
            self.workers[i].recycling = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    #[test]
    fn limits_are_off_by_default_and_jitter_stays_in_range() {
        let off = Limits::draw(&WorkerConfig::default());
        assert_eq!(off, Limits::default());
        let now = Instant::now();
        assert_eq!(
            off.due(u64::MAX, now, now + Duration::from_secs(1 << 30)),
            None
        );

        let c = WorkerConfig {
            max_requests: 200,
            max_requests_jitter: 50,
            max_lifetime: Dur(Duration::from_secs(3)),
            max_lifetime_jitter: Dur(Duration::from_secs(2)),
            ..WorkerConfig::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let l = Limits::draw(&c);
            let r = l.requests.unwrap();
            assert!((200..=250).contains(&r), "{r}");
            let t = l.lifetime.unwrap();
            assert!(
                t >= Duration::from_secs(3) && t <= Duration::from_secs(5),
                "{t:?}"
            );
            seen.insert(r);
        }
        assert!(seen.len() > 10, "jitter does not vary: {seen:?}");
    }

    #[test]
    fn due_by_requests_then_by_age() {
        let l = Limits {
            requests: Some(10),
            lifetime: Some(Duration::from_secs(5)),
        };
        let t0 = Instant::now();
        assert_eq!(l.due(9, t0, t0 + Duration::from_secs(1)), None);
        assert!(matches!(
            l.due(10, t0, t0),
            Some(Reason::Requests {
                served: 10,
                limit: 10
            })
        ));
        assert!(matches!(
            l.due(0, t0, t0 + Duration::from_secs(5)),
            Some(Reason::Lifetime { .. })
        ));
    }
}
