//! Rate limiting for log lines about events a client can repeat at will (rejected
//! connections, failed upstream connects, accept errors). Those events matter to an
//! operator, so they are logged at info/warn, but a flood of them must not become a
//! flood of log lines: per key, at most one line per window is let through; the
//! events held back in between are counted, and the count rides on the next line
//! ("(N more suppressed)") or, if no further event comes, on a summary line from
//! [`RateLog::flush`] once the window is over, so no count is ever lost.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The window of the worker's rate-limited lines: one line per key per second.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Most keys remembered; beyond that, quiet keys are forgotten first, and a key that
/// cannot be remembered is logged unlimited rather than dropped (keys are per event
/// kind or per configured upstream, so this is a safety bound, not a limit in use).
const MAX_KEYS: usize = 4096;

struct Slot {
    /// When the last line for this key was let through.
    last: Instant,
    /// Events held back since then.
    suppressed: u64,
}

/// Per-key "one line per window" bookkeeping.
pub struct RateLog<K> {
    window: Duration,
    keys: HashMap<K, Slot>,
}

impl<K: Hash + Eq + Clone> RateLog<K> {
    pub fn new(window: Duration) -> RateLog<K> {
        RateLog {
            window,
            keys: HashMap::new(),
        }
    }

    /// An event for `key` happened. `Some(n)`: log it now, mentioning the `n` events
    /// held back since the previous line; `None`: it was counted, log nothing.
    pub fn admit(&mut self, key: K, now: Instant) -> Option<u64> {
        if let Some(slot) = self.keys.get_mut(&key) {
            if now.saturating_duration_since(slot.last) < self.window {
                slot.suppressed += 1;
                return None;
            }
            let n = std::mem::take(&mut slot.suppressed);
            slot.last = now;
            return Some(n);
        }
        if self.keys.len() >= MAX_KEYS {
            self.forget_quiet(now);
        }
        if self.keys.len() < MAX_KEYS {
            self.keys.insert(
                key,
                Slot {
                    last: now,
                    suppressed: 0,
                },
            );
        }
        Some(0)
    }

    /// Keys whose window is over with events still held back, and how many: the
    /// caller logs one summary line each. Quiet keys are forgotten meanwhile.
    pub fn flush(&mut self, now: Instant) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        for (k, slot) in &mut self.keys {
            if slot.suppressed > 0 && now.saturating_duration_since(slot.last) >= self.window {
                out.push((k.clone(), std::mem::take(&mut slot.suppressed)));
                // The summary is a line too: the next event waits a window after it.
                slot.last = now;
            }
        }
        self.forget_quiet(now);
        out
    }

    /// Drops keys with nothing held back whose window is over: they would let the
    /// next event through anyway.
    fn forget_quiet(&mut self, now: Instant) {
        let window = self.window;
        self.keys
            .retain(|_, s| s.suppressed > 0 || now.saturating_duration_since(s.last) < window);
    }
}

/// The text appended to a let-through line: empty, or " (N more suppressed)".
pub fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_then_the_count() {
        let t0 = Instant::now();
        let mut r = RateLog::new(Duration::from_secs(1));
        assert_eq!(r.admit("a", t0), Some(0));
        for i in 1..=499 {
            assert_eq!(r.admit("a", t0 + Duration::from_millis(i)), None);
        }
        // Another key is independent.
        assert_eq!(r.admit("b", t0), Some(0));
        assert_eq!(r.admit("a", t0 + Duration::from_secs(1)), Some(499));
        assert_eq!(r.admit("a", t0 + Duration::from_millis(1500)), None);
        assert_eq!(suppressed(0), "");
        assert_eq!(suppressed(3), " (3 more suppressed)");
    }

    #[test]
    fn flush_reports_counts_nobody_else_would() {
        let t0 = Instant::now();
        let mut r = RateLog::new(Duration::from_secs(1));
        r.admit(1u8, t0);
        r.admit(1u8, t0);
        r.admit(1u8, t0);
        r.admit(2u8, t0);
        assert!(r.flush(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(r.flush(t0 + Duration::from_secs(1)), vec![(1u8, 2)]);
        assert!(r.flush(t0 + Duration::from_secs(3)).is_empty());
        // Quiet keys are forgotten: the map does not grow without bound.
        assert!(r.keys.is_empty());
    }
}
