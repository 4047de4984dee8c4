//! Checks of the recycling, rolling-reload and steering keys (`[worker] max_requests`,
//! `max_lifetime` and their jitters, `[master] reload_surge`, `[[listen]] steer`):
//! combinations that parse but could not do what the operator asked.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AcceptMode, Config, ListenAddr};

/// How the kernel picks a reuseport socket (hence a worker slot) for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Steer {
    /// A hash of the client's address: one client always reaches the same slot.
    ClientIp,
}

/// A worker younger than this is never recycled for its age: below it, recycling
/// would keep the box busy forking instead of serving.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The key at fault and why, or `Ok`.
pub fn check(c: &Config) -> Result<(), (String, String)> {
    let w = &c.worker;
    if w.max_requests_jitter > 0 && w.max_requests == 0 {
        return Err((
            "worker.max_requests_jitter".into(),
            "has no effect while worker.max_requests is 0 (off)".into(),
        ));
    }
    if !w.max_lifetime_jitter.0.is_zero() && w.max_lifetime.0.is_zero() {
        return Err((
            "worker.max_lifetime_jitter".into(),
            "has no effect while worker.max_lifetime is 0 (off)".into(),
        ));
    }
    if !w.max_lifetime.0.is_zero() && w.max_lifetime.0 < MIN_LIFETIME {
        return Err((
            "worker.max_lifetime".into(),
            format!(
                "{} is too short: workers would do little but restart (at least 1s, or \"0\" for off)",
                w.max_lifetime
            ),
        ));
    }
    let n = c.master.workers.count();
    if c.master.reload_surge > n {
        return Err((
            "master.reload_surge".into(),
            format!(
                "{} is more than master.workers ({n}); use 0 to replace all workers at once",
                c.master.reload_surge
            ),
        ));
    }
    for (i, l) in c.listen.iter().enumerate() {
        if l.steer.is_some() && l.accept != AcceptMode::Reuseport {
            return Err((
                format!("listen[{i}].steer"),
                "needs accept = \"reuseport\" (only a reuseport group has one socket per slot to steer to)".into(),
            ));
        }
        if l.steer.is_some() && matches!(l.address, ListenAddr::Unix(_)) {
            return Err((format!("listen[{i}].steer"), "needs a TCP address".into()));
        }
    }
    Ok(())
}
