//! Waiting: the one polling loop every test uses instead of a bare sleep.

use std::time::{Duration, Instant};

/// Polling period of `wait_until`.
pub const POLL: Duration = Duration::from_millis(15);

/// Polls `cond` every ~15 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}
