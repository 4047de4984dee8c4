//! Fault injection for black-box tests: `CORRAL_FAULT` in the master's environment
//! makes its workers misbehave on purpose, so the supervision paths (crash loops, a
//! panicking service) can be exercised against the real binary.
//!
//! - `crash-on-start`: every worker aborts (SIGABRT) while initialising.
//! - `panic-on:TEXT`: the echo service panics when a read contains TEXT.
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
}

fn parse(s: &str) -> Option<Fault> {
    if s == "crash-on-start" {
        return Some(Fault::CrashOnStart);
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

/// Panics if `data` holds the configured trigger.
pub fn maybe_panic(data: &[u8]) {
    if let Some(Fault::PanicOn(t)) = get() {
        if data.windows(t.len()).any(|w| w == t.as_slice()) {
            panic!("injected fault: {} seen", String::from_utf8_lossy(t));
        }
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
        assert_eq!(parse("nonsense"), None);
    }
}
