//! Timers: a min-heap of deadlines with lazy cancellation, 16 bytes an entry.
//!
//! Cancelling or moving a timer costs nothing: the owner keeps the authoritative
//! deadline (e.g. a connection's last activity), and an expired entry is checked
//! against it when it fires, then dropped or rescheduled. So a busy connection does
//! not touch the heap on every read; it only moves when its timer actually comes due.
//!
//! Every idle connection has an entry here, so its size is paid per connection: one
//! u64 key (the deadline in whole milliseconds since the heap was made, and a
//! sequence number) and the item packed into a u64 ([`Packed`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What a timer carries, stored in 8 bytes.
pub trait Packed: Sized {
    fn pack(&self) -> u64;
    /// The item `pack` made these bits from; None only for bits it never makes.
    fn unpack(bits: u64) -> Option<Self>;
}

/// Low bits of the key: the sequence number that keeps timers with the same
/// millisecond in scheduling order. It wraps after 2^24 timers; the only cost is that
/// two timers due in the same millisecond and scheduled 2^24 timers apart may fire in
/// the other order (in the same wake-up: both are due).
const SEQ_BITS: u32 = 24;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// High bits: milliseconds since `base`, 2^40 of them (34 years). A later deadline is
/// clamped to that; the owners' lazy checks reschedule anything that comes due early.
const MAX_MS: u64 = (1 << (64 - SEQ_BITS)) - 1;

/// Pending timers carrying a `T` each.
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Where the keys' milliseconds count from.
    base: Instant,
    seq: u64,
    item: std::marker::PhantomData<T>,
}

/// One heap entry, ordered by its key (deadline, then sequence) only.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    key: u64,
    item: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            base: Instant::now(),
            seq: 0,
            item: std::marker::PhantomData,
        }
    }
}

impl<T: Packed> Timers<T> {
    /// Fires `item` at `at` or up to a millisecond later, never earlier. Timers with
    /// equal deadlines fire in scheduling order.
    pub fn schedule(&mut self, at: Instant, item: T) {
        // Rounded up: the entry is due only once its whole millisecond has passed.
        let ms = at
            .saturating_duration_since(self.base)
            .as_nanos()
            .div_ceil(1_000_000);
        let ms = u64::try_from(ms).unwrap_or(MAX_MS).min(MAX_MS);
        self.seq = self.seq.wrapping_add(1);
        let key = (ms << SEQ_BITS) | (self.seq & SEQ_MASK);
        self.heap.push(Reverse(Entry {
            key,
            item: item.pack(),
        }));
    }

    /// The earliest deadline, to bound the epoll wait (at or just after the one asked
    /// for: the millisecond it was rounded up to).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap
            .peek()
            .map(|Reverse(e)| self.base + Duration::from_millis(e.key >> SEQ_BITS))
    }

    /// How long until the earliest deadline (zero if already due).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Removes and returns the next timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        // Whole milliseconds passed, rounded down: with the deadline rounded up, an
        // entry popped here is never early.
        let now_ms = now.saturating_duration_since(self.base).as_millis();
        while let Some(Reverse(e)) = self.heap.peek() {
            if u128::from(e.key >> SEQ_BITS) > now_ms {
                return None;
            }
            let bits = self.heap.pop().map(|Reverse(e)| e.item)?;
            if let Some(t) = T::unpack(bits) {
                return Some(t);
            }
        }
        None
    }

    /// Drops the entries `keep` rejects (lazily cancelled ones whose owner is gone),
    /// in O(n). Called rarely, when stale entries outnumber live ones: with lazy
    /// cancellation, closed connections' timers would otherwise sit in the heap until
    /// they come due, and under heavy churn that is connections/s × idle timeout.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter(|Reverse(e)| T::unpack(e.item).is_some_and(|t| keep(&t)))
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

    impl Packed for u32 {
        fn pack(&self) -> u64 {
            u64::from(*self)
        }
        fn unpack(bits: u64) -> Option<u32> {
            u32::try_from(bits).ok()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fires_in_deadline_order_then_fifo() {
        let mut t = Timers::default();
        let t0 = t.base;
        t.schedule(t0 + 30 * MS, 3u32);
        t.schedule(t0 + 10 * MS, 1);
        t.schedule(t0 + 10 * MS, 2);
        assert_eq!(t.next_deadline(), Some(t0 + 10 * MS));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + 20 * MS;
        assert_eq!(t.pop_due(now), Some(1));
        assert_eq!(t.pop_due(now), Some(2));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.timeout(now), Some(10 * MS));
        assert_eq!(t.pop_due(t0 + 30 * MS), Some(3));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn retain_drops_cancelled_entries_and_keeps_order() {
        let mut t = Timers::default();
        let t0 = t.base;
        for i in 0..10u32 {
            t.schedule(t0 + (10 - i) * MS, i);
        }
        t.retain(|&i| i % 2 == 0);
        assert_eq!(t.len(), 5);
        let later = t0 + Duration::from_secs(1);
        let order: Vec<u32> = std::iter::from_fn(|| t.pop_due(later)).collect();
        assert_eq!(order, [8, 6, 4, 2, 0]);
    }

    /// A deadline between milliseconds is rounded up: the timer fires at the next
    /// whole millisecond, not a nanosecond before the deadline asked for.
    #[test]
    fn never_fires_early() {
        let mut t = Timers::default();
        let t0 = t.base;
        let at = t0 + 5 * MS + Duration::from_nanos(1);
        t.schedule(at, 7u32);
        assert!(t.next_deadline().is_some_and(|d| d >= at && d < at + MS));
        assert_eq!(t.pop_due(at - Duration::from_nanos(1)), None);
        assert_eq!(
            t.pop_due(at),
            None,
            "due only once its millisecond has passed"
        );
        assert_eq!(t.pop_due(t0 + 6 * MS - Duration::from_nanos(1)), None);
        assert_eq!(t.pop_due(t0 + 6 * MS), Some(7));
        // A deadline before the heap was made is due at once.
        t.schedule(t0.checked_sub(50 * MS).unwrap_or(t0), 8);
        assert_eq!(t.pop_due(t0), Some(8));
        // The wait never ends before the deadline either.
        t.schedule(at, 9);
        assert!(t.timeout(t0).is_some_and(|d| t0 + d >= at));
    }

    /// Each idle connection holds one entry: 16 bytes, the deadline key and the item.
    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Reverse<Entry>>(), 16);
    }
}
