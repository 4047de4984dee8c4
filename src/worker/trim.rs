//! Giving memory back after a peak of connections has left.
//!
//! A worker's connection table, timer heap and free lists grow to its peak and, left
//! alone, stay there: a worker that once held 100k idle connections kept ~58 MB after
//! they were gone. When the connection count has fallen to half of its high point
//! since the last trim, the worker shrinks those structures and asks malloc to return
//! free pages (`os::memory::trim`). Halving bounds the work: a worker that drains from
//! N connections trims about log2(N) times, and a steady worker never does.

/// Tables smaller than this are not worth a trim (a few hundred KiB at most).
const MIN_SLOTS: usize = 1024;

/// The high-water mark since the last trim.
#[derive(Default)]
pub struct Trim {
    high: usize,
    /// Trims done, for the log.
    pub count: u64,
}

impl Trim {
    /// Notes the current connection count; true when it is time to trim (`slots` is the
    /// connection table's allocated size).
    pub fn due(&mut self, live: usize, slots: usize) -> bool {
        if live > self.high {
            self.high = live;
            return false;
        }
        if live <= self.high / 2 && slots >= MIN_SLOTS {
            self.high = live;
            self.count += 1;
            return true;
        }
        false
    }
}

use tracing::debug;

use crate::os::process;

use super::{Worker, POOL_MAX};

impl Worker {
    /// Shrinks what grew with the connection count and returns free heap pages.
    pub(super) fn trim_memory(&mut self) {
        let before = process::self_rss();
        self.compact_timers_now();
        self.timers.shrink();
        self.conns.shrink();
        self.ready.shrink_to_fit();
        self.admit.per_ip.shrink_to_fit();
        self.bufs.truncate(POOL_MAX / 4);
        self.bufs.shrink_to_fit();
        crate::os::memory::trim();
        debug!(
            connections = self.conns.len(),
            trims = self.trim.count,
            rss_before = before,
            rss_after = process::self_rss(),
            "gave memory back"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_each_time_the_count_halves_and_never_when_steady() {
        let mut t = Trim::default();
        assert!(!t.due(10_000, 10_000));
        assert!(!t.due(6_000, 10_000));
        assert!(t.due(5_000, 10_000));
        assert!(!t.due(5_000, 10_000));
        assert!(!t.due(3_000, 8_000));
        assert!(t.due(2_000, 8_000));
        // A small table is left alone.
        assert!(!t.due(0, 512));
        assert_eq!(t.count, 2);
    }
}
