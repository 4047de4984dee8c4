//! Fault injection: `corral fault` asks a running master (with `[master]
//! fault_injection = true`) to make one worker fail for real, and `CORRAL_FAULT` in
//! the master's environment makes every worker misbehave from the start, so the
//! supervision paths (crash loops, a panicking service) can be rehearsed against the
//! real binary. `kind` holds the request and outcome types; this file the
//! environment's faults and the flag that arms a panic in the next service callback.
//!
//! - `crash-on-start`: every worker aborts (SIGABRT) while initialising.
//! - `panic-on:TEXT`: the echo service panics when a read contains TEXT.
//! - `hang-on:TEXT`: the echo service hangs for good (never returns to its loop)
//!   when a read contains TEXT.
//! - `ready-delay:MS`: every worker waits MS milliseconds before reporting ready
//!   (keeps a reload in flight long enough to queue requests behind it).
//! - `bad-upgrade`: a master started by a binary upgrade exits at once (set by
//!   `corral fault bad-upgrade` for the new master only).
//!
//! Unset, it costs one load of an initialised `OnceLock` where it is consulted.

pub mod kind;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// `corral fault panic`: the next service callback (or timer dispatch) panics.
static PANIC_ARMED: AtomicBool = AtomicBool::new(false);

/// Arms the injected panic (in a worker).
pub fn arm_panic() {
    PANIC_ARMED.store(true, Ordering::Relaxed);
}

/// Panics if `corral fault panic` armed it; called where service code runs.
#[inline]
pub fn panic_if_armed(site: &str) {
    // Called for every read and timer: a plain load first, the write only when armed.
    if PANIC_ARMED.load(Ordering::Relaxed) && PANIC_ARMED.swap(false, Ordering::Relaxed) {
        panic!("injected fault (corral fault panic) in {site}");
    }
}

/// The environment variable read.
pub const ENV: &str = "CORRAL_FAULT";

/// An injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    CrashOnStart,
    PanicOn(Vec<u8>),
    ReadyDelay(std::time::Duration),
    HangOn(Vec<u8>),
    BadUpgrade,
}

fn parse(s: &str) -> Option<Fault> {
    if s == "crash-on-start" {
        return Some(Fault::CrashOnStart);
    }
    if s == "bad-upgrade" {
        return Some(Fault::BadUpgrade);
    }
    if let Some(t) = s.strip_prefix("hang-on:").filter(|t| !t.is_empty()) {
        return Some(Fault::HangOn(t.as_bytes().to_vec()));
    }
    if let Some(ms) = s.strip_prefix("ready-delay:") {
        return ms
            .parse()
            .ok()
            .map(|ms| Fault::ReadyDelay(std::time::Duration::from_millis(ms)));
    }
    s.strip_prefix("panic-on:")
        .filter(|t| !t.is_empty())
        .map(|t| Fault::PanicOn(t.as_bytes().to_vec()))
}

/// The configured fault, if any.
#[inline]
pub fn get() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var(ENV).ok().and_then(|s| parse(&s)))
        .as_ref()
}

/// A master started by an upgrade that must fail (`corral fault bad-upgrade`).
pub fn bad_upgrade() -> bool {
    get() == Some(&Fault::BadUpgrade)
}

/// Sleeps for the configured `ready-delay`, if any.
pub fn delay_ready() {
    if let Some(Fault::ReadyDelay(d)) = get() {
        std::thread::sleep(*d);
    }
}

/// Panics (`panic-on`) or hangs for good (`hang-on`) if `data` holds the
/// configured trigger. Inlined into the echo service's per-read path, where the
/// common case is two loads and no call: the search itself is out of line.
#[inline]
pub fn maybe_panic(data: &[u8]) {
    panic_if_armed("on_data");
    if let Some(f @ (Fault::PanicOn(_) | Fault::HangOn(_))) = get() {
        data_fault(f, data);
    }
}

#[cold]
#[inline(never)]
fn data_fault(fault: &Fault, data: &[u8]) {
    match fault {
        Fault::PanicOn(t) if data.windows(t.len()).any(|w| w == t.as_slice()) => {
            panic!("injected fault: {} seen", String::from_utf8_lossy(t));
        }
        Fault::HangOn(t) if data.windows(t.len()).any(|w| w == t.as_slice()) => {
            tracing::error!(
                "injected fault: {} seen; hanging",
                String::from_utf8_lossy(t)
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("crash-on-start"), Some(Fault::CrashOnStart));
        assert_eq!(
            parse("panic-on:BOOM"),
            Some(Fault::PanicOn(b"BOOM".to_vec()))
        );
        assert_eq!(parse("panic-on:"), None);
        assert_eq!(parse("hang-on:X"), Some(Fault::HangOn(b"X".to_vec())));
        assert_eq!(
            parse("ready-delay:250"),
            Some(Fault::ReadyDelay(std::time::Duration::from_millis(250)))
        );
        assert_eq!(parse("bad-upgrade"), Some(Fault::BadUpgrade));
        assert_eq!(parse("nonsense"), None);
    }
}
