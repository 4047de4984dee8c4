//! Timers: a min-heap of deadlines with lazy cancellation.
//!
//! Cancelling or moving a timer costs nothing: the owner keeps the authoritative
//! deadline (e.g. a connection's last activity), and an expired entry is checked
//! against it when it fires, then dropped or rescheduled. So a busy connection does
//! not touch the heap on every read; it only moves when its timer actually comes due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Pending timers carrying a `T` each.
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u64, Entry<T>)>>,
    seq: u64,
}

/// Wrapper so `T` need not be ordered: entries compare by (deadline, seq) only.
struct Entry<T>(T);

impl<T> PartialEq for Entry<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Fires `item` at `at`. Timers with equal deadlines fire in scheduling order.
    pub fn schedule(&mut self, at: Instant, item: T) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, Entry(item))));
    }

    /// The earliest deadline, to bound the epoll wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// How long until the earliest deadline (zero if already due).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Removes and returns the next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, _, Entry(t)))| t)
            }
            _ => None,
        }
    }

    /// Drops the entries `keep` rejects (lazily cancelled ones whose owner is gone),
    /// in O(n). Called rarely, when stale entries outnumber live ones: with lazy
    /// cancellation, closed connections' timers would otherwise sit in the heap until
    /// they come due, and under heavy churn that is connections/s × idle timeout.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter(|Reverse((_, _, Entry(t)))| keep(t))
            .collect();
    }

    /// Gives back the heap's spare capacity (after a peak of connections left).
    pub fn shrink(&mut self) {
        self.heap.shrink_to_fit();
    }

    /// Number of scheduled entries (including lazily cancelled ones).
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_then_fifo() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(t0 + Duration::from_millis(30), "c");
        t.schedule(t0 + Duration::from_millis(10), "a");
        t.schedule(t0 + Duration::from_millis(10), "b");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_millis(20);
        assert_eq!(t.pop_due(now), Some("a"));
        assert_eq!(t.pop_due(now), Some("b"));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(30)), Some("c"));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn retain_drops_cancelled_entries_and_keeps_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..10u32 {
            t.schedule(t0 + Duration::from_millis(u64::from(10 - i)), i);
        }
        t.retain(|&i| i % 2 == 0);
        assert_eq!(t.len(), 5);
        let later = t0 + Duration::from_secs(1);
        let order: Vec<u32> = std::iter::from_fn(|| t.pop_due(later)).collect();
        assert_eq!(order, [8, 6, 4, 2, 0]);
    }
}
