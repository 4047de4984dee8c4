//! The `--connect-rate` token bucket: it paces connection opens (one fractional token
//! per connect, about 100 ms of burst). Not the worker's `Bucket`, which meters bytes
//! against a configured rate and burst and answers when a throttled client may read
//! again; the two share the idea, not the job, so each keeps its own.

use std::time::{Duration, Instant};

/// A token bucket for `--connect-rate`, with about 100 ms of burst.
pub(crate) struct Bucket {
    pub(crate) rate: f64,
    pub(crate) tokens: f64,
    pub(crate) cap: f64,
    pub(crate) last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, now: Instant) -> Self {
        let cap = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            tokens: 1.0,
            cap,
            last: now,
        }
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
    }

    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn next_token(&self, now: Instant) -> Instant {
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}
