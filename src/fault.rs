//! Fault injection for black-box tests: `CORRAL_FAULT` in the master's environment
//! makes its workers misbehave on purpose, so the supervision paths (crash loops, a
//! panicking service) can be exercised against the real binary.
//!
//! - `crash-on-start`: every worker aborts (SIGABRT) while initialising.
//! - `panic-on:TEXT`: the echo service panics when a read contains TEXT.
//! - `hang-on:TEXT`: the echo service hangs for good (never returns to its loop)
//!   when a read contains TEXT.
//! - `ready-delay:MS`: every worker waits MS milliseconds before reporting ready
//!   (keeps a reload in flight long enough to queue requests behind it).
//!
//! Unset, it costs one load of an initialised `OnceLock` where it is consulted.

use std::sync::OnceLock;

/// The environment variable read.
pub const ENV: &str = "CORRAL_FAULT";

/// An injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    CrashOnStart,
    PanicOn(Vec<u8>),
    ReadyDelay(std::time::Duration),
    HangOn(Vec<u8>),
}

fn parse(s: &str) -> Option<Fault> {
    if s == "crash-on-start" {
        return Some(Fault::CrashOnStart);
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
pub fn get() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var(ENV).ok().and_then(|s| parse(&s)))
        .as_ref()
}

/// Sleeps for the configured `ready-delay`, if any.
pub fn delay_ready() {
    if let Some(Fault::ReadyDelay(d)) = get() {
        std::thread::sleep(*d);
    }
}

/// Panics (`panic-on`) or hangs for good (`hang-on`) if `data` holds the
/// configured trigger.
pub fn maybe_panic(data: &[u8]) {
    match get() {
        Some(Fault::PanicOn(t)) if data.windows(t.len()).any(|w| w == t.as_slice()) => {
            panic!("injected fault: {} seen", String::from_utf8_lossy(t));
        }
        Some(Fault::HangOn(t)) if data.windows(t.len()).any(|w| w == t.as_slice()) => {
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
        assert_eq!(parse("nonsense"), None);
    }
}
