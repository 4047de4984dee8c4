//! What became of each generation's connections once it was told to drain: how many
//! moved to a newer generation (or a new master), how many it kept under its drain
//! rules, how many were closed, and how long it took to be gone. Shown by `corral
//! status` and logged once per generation when its last worker has exited.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use tracing::info;

use crate::channel::HandoffCounts;

/// Gone generations `corral status` still shows.
const HISTORY: usize = 8;

use crate::control::GenerationStatus;

#[derive(Debug, Default)]
struct Draining {
    since: Option<Instant>,
    /// Each worker's latest hand-over counts (they are running totals).
    counts: HashMap<i32, HandoffCounts>,
    /// Closed by the master or by a kill, beyond what workers reported.
    closed: u64,
    /// Handed over by a worker (so in its `handed`), then refused or given back and
    /// closed by the master: they did not move.
    bounced: u64,
}

impl Draining {
    fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0u64, 0, self.closed);
        for c in self.counts.values() {
            t.0 += c.handed;
            t.1 += c.kept;
            t.2 += c.closed;
        }
        t.0 = t.0.saturating_sub(self.bounced);
        t
    }
}

/// Per-generation tallies, kept by the master.
#[derive(Debug, Default)]
pub struct Generations {
    live: BTreeMap<u64, Draining>,
    gone: VecDeque<GenerationStatus>,
    /// Connections adopted from the old master of the upgrade that started us.
    pub from_predecessor: u64,
}

impl Generations {
    /// `generation` was told to drain at `now` (the first order counts).
    pub fn draining(&mut self, generation: u64, now: Instant) {
        self.live
            .entry(generation)
            .or_default()
            .since
            .get_or_insert(now);
    }

    /// When `generation` was told to drain, if it was.
    pub fn draining_since(&self, generation: u64) -> Option<Instant> {
        self.live.get(&generation).and_then(|d| d.since)
    }

    /// A worker's running hand-over totals.
    pub fn counts(&mut self, generation: u64, pid: i32, c: HandoffCounts) {
        self.live
            .entry(generation)
            .or_default()
            .counts
            .insert(pid, c);
    }

    /// Connections of `generation` closed outside a worker's own counts.
    pub fn closed(&mut self, generation: u64, n: u64) {
        if n > 0 {
            self.live.entry(generation).or_default().closed += n;
        }
    }

    pub fn adopted_from_predecessor(&mut self, n: u64) {
        self.from_predecessor += n;
    }

    /// Adopted from the old master, then refused and sent back to it.
    pub fn returned_to_predecessor(&mut self, n: u64) {
        self.from_predecessor = self.from_predecessor.saturating_sub(n);
    }

    /// `n` connections worker `pid` handed over came back (refused, or nobody could
    /// take them) and were closed by the master: closed, not moved, in its
    /// generation's counts (the oldest draining one if its counts are not known).
    pub fn bounced(&mut self, pid: i32, n: u64) {
        if n == 0 {
            return;
        }
        let d = match self.live.values_mut().find(|d| d.counts.contains_key(&pid)) {
            Some(d) => d,
            None => match self.live.values_mut().next() {
                Some(d) => d,
                None => return,
            },
        };
        d.bounced += n;
        d.closed += n;
    }

    /// `generation` has no worker left: if it was draining, it is gone now (logged
    /// once, at info).
    pub fn gone(&mut self, generation: u64, now: Instant) {
        let Some(d) = self.live.remove(&generation) else {
            return;
        };
        let Some(since) = d.since else {
            return;
        };
        let ms = now.saturating_duration_since(since).as_millis() as u64;
        let (moved, kept, closed) = d.totals();
        info!(
            generation,
            exit_ms = ms,
            moved,
            kept,
            closed,
            "generation {generation} gone after {ms} ms: moved {moved}, kept {kept}, closed {closed}"
        );
        if self.gone.len() == HISTORY {
            self.gone.pop_front();
        }
        self.gone.push_back(GenerationStatus {
            generation,
            state: "gone".into(),
            workers: 0,
            moved,
            kept,
            closed,
            exit_ms: Some(ms),
        });
    }

    /// Every generation with live workers (`workers`: generation → count), newest
    /// first, then the recently gone ones.
    pub fn status(&self, workers: &BTreeMap<u64, usize>, current: u64) -> Vec<GenerationStatus> {
        let mut out: Vec<GenerationStatus> = workers
            .iter()
            .rev()
            .map(|(&generation, &n)| {
                let d = self.live.get(&generation);
                let (moved, kept, closed) = d.map(Draining::totals).unwrap_or_default();
                let draining = d.is_some_and(|d| d.since.is_some()) || generation < current;
                GenerationStatus {
                    generation,
                    state: if draining { "draining" } else { "serving" }.into(),
                    workers: n,
                    moved,
                    kept,
                    closed,
                    exit_ms: None,
                }
            })
            .collect();
        out.extend(self.gone.iter().rev().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_is_reported_once_with_its_workers_totals() {
        let mut g = Generations::default();
        let t0 = Instant::now();
        g.draining(1, t0);
        let c = |handed, kept, closed| HandoffCounts {
            handed,
            kept,
            closed,
        };
        g.counts(1, 10, c(5, 0, 0));
        g.counts(1, 10, c(4, 1, 0)); // running totals: the later one stands
        g.counts(1, 11, c(7, 0, 2));
        g.closed(1, 3);
        let live = BTreeMap::from([(1, 2), (2, 2)]);
        let s = g.status(&live, 2);
        assert_eq!(s[0].state, "serving");
        assert_eq!(
            (s[1].state.as_str(), s[1].moved, s[1].kept, s[1].closed),
            ("draining", 11, 1, 5)
        );
        g.gone(1, t0 + std::time::Duration::from_millis(30));
        g.gone(1, t0 + std::time::Duration::from_millis(60));
        let s = g.status(&BTreeMap::from([(2, 2)]), 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].exit_ms, Some(30));
        assert_eq!(s[1].moved, 11);
    }

    /// Connections a worker handed over that the master then closed (refused, and
    /// nobody left to take them back) count as closed in that worker's generation,
    /// not as moved.
    #[test]
    fn bounced_connections_count_as_closed_not_moved() {
        let mut g = Generations::default();
        let t0 = Instant::now();
        g.draining(1, t0);
        g.draining(2, t0);
        let handed = |handed| HandoffCounts {
            handed,
            kept: 0,
            closed: 0,
        };
        g.counts(1, 10, handed(5));
        g.counts(2, 20, handed(4));
        g.bounced(20, 3);
        let s = g.status(&BTreeMap::from([(1, 1), (2, 1), (3, 1)]), 3);
        let gen2 = s.iter().find(|s| s.generation == 2).unwrap();
        assert_eq!((gen2.moved, gen2.kept, gen2.closed), (1, 0, 3));
        let gen1 = s.iter().find(|s| s.generation == 1).unwrap();
        assert_eq!((gen1.moved, gen1.closed), (5, 0));
    }
}
