//! The token bucket behind per-client rate limits (`rate`, `burst`).

use std::time::{Duration, Instant};

/// A token bucket for one client's reads: `rate` bytes per second, at most `burst`
/// saved up. Boxed in the connection only when a rate is configured, so unlimited
/// connections pay 8 bytes for it.
pub struct Bucket {
    tokens: u64,
    last: Instant,
    rate: u64,
    burst: u64,
}

impl Bucket {
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.burst);
            // Advance by exactly the time the added tokens represent, so fractions
            // of a byte are not lost at low rates.
            self.last += Duration::from_nanos(
                (u128::from(add) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64,
            );
            if self.tokens == self.burst {
                self.last = now;
            }
        }
    }

    /// Bytes that may be read now.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// When an exhausted bucket is worth reading from again: once 100 ms worth of
    /// tokens (or the whole burst, if smaller) have accumulated — the seeds' 100 ms
    /// re-admission timer, without polling in between.
    pub fn readmit_at(&self, now: Instant) -> Instant {
        // At most half the burst: a timer that fires a little late then finds the
        // bucket not yet full, so no token is lost to the cap (re-admitting at exactly
        // a full burst of 100 ms lost ~2.5 % of the rate to timer lateness).
        let want = (self.rate / 10).min(self.burst / 2).max(1);
        let missing = want.saturating_sub(self.tokens);
        let wait = Duration::from_nanos(
            (u128::from(missing) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64,
        );
        now + wait.max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_holds_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 200, t0);
        assert_eq!(b.available(t0), 200);
        b.take(200);
        assert_eq!(b.available(t0), 0);
        // 100 ms at 1000 B/s = 100 bytes.
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
        // Never more than the burst, however long it waits.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 200);
        b.take(200);
        let at = b.readmit_at(t0 + Duration::from_secs(60));
        assert_eq!(
            at,
            t0 + Duration::from_secs(60) + Duration::from_millis(100)
        );
    }

    #[test]
    fn bucket_keeps_fractions_at_low_rates() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 10, t0);
        b.take(10);
        let mut got = 0;
        for ms in (0..=3000).step_by(10) {
            let a = b.available(t0 + Duration::from_millis(ms));
            b.take(a);
            got += a;
        }
        assert_eq!(got, 9);
    }
}
