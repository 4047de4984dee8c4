//! What `corral fault` asks for and what the master answers: the fault kinds, the
//! victim selector and the measured outcome, shared by the CLI, the master and the
//! worker (they travel as JSON over the control socket and the worker channel).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How long `slow` adds latency to the worker loop.
pub const SLOW_FOR_MS: u64 = 10_000;
/// How long `emfile` holds every fd the worker could open.
pub const EMFILE_HOLD_MS: u64 = 5_000;

/// A fault to inject into a running instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The worker SIGKILLs itself.
    Kill,
    /// The worker makes an invalid memory access (SIGSEGV).
    Segv,
    /// The worker calls `abort()` (SIGABRT).
    Abort,
    /// The next service callback (or timer dispatch) panics.
    Panic,
    /// The event loop spins without heartbeating: the watchdog's case.
    Hang,
    /// The worker SIGSTOPs itself: also the watchdog's case.
    Stall,
    /// The worker allocates and touches this many MiB: `max_worker_rss` recycling.
    Leak { mib: u64 },
    /// Every loop iteration takes this many ms longer, for `SLOW_FOR_MS`.
    Slow { ms: u64 },
    /// The worker opens fds until EMFILE and holds them for `EMFILE_HOLD_MS`.
    Emfile,
    /// Master side: the next N spawns of the slot fail at start (backoff); the
    /// slot's worker is killed so that the respawns happen now.
    CrashOnStart { n: u32 },
    /// Master side: an upgrade is started whose new master exits at once (rollback).
    BadUpgrade,
    /// The worker tries what an attacker holding it would (exec, fork, files, the
    /// master, the network, root) and reports what was blocked; it survives.
    Escape,
}

impl FaultKind {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Segv => "segv",
            FaultKind::Abort => "abort",
            FaultKind::Panic => "panic",
            FaultKind::Hang => "hang",
            FaultKind::Stall => "stall",
            FaultKind::Leak { .. } => "leak",
            FaultKind::Slow { .. } => "slow",
            FaultKind::Emfile => "emfile",
            FaultKind::CrashOnStart { .. } => "crash-on-start",
            FaultKind::BadUpgrade => "bad-upgrade",
            FaultKind::Escape => "escape",
        }
    }

    /// Whether the worker does it (rather than the master).
    pub fn in_worker(self) -> bool {
        !matches!(self, FaultKind::CrashOnStart { .. } | FaultKind::BadUpgrade)
    }

    /// Parses a kind and its argument (`leak 64`, or `leak:64` in a chaos list).
    /// Arguments default where a bare name is useful: `leak` 256 MiB, `slow` 50 ms,
    /// `crash-on-start` 3.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<FaultKind, String> {
        let num = |default: u64, what: &str| -> Result<u64, String> {
            match arg {
                None => Ok(default),
                Some(a) => a.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("fault {name}: {what} must be a positive whole number, not {a:?}")
                }),
            }
        };
        let no_arg = |k: FaultKind| match arg {
            None => Ok(k),
            Some(a) => Err(format!("fault {name} takes no argument (got {a:?})")),
        };
        match name {
            "kill" => no_arg(FaultKind::Kill),
            "segv" => no_arg(FaultKind::Segv),
            "abort" => no_arg(FaultKind::Abort),
            "panic" => no_arg(FaultKind::Panic),
            "hang" => no_arg(FaultKind::Hang),
            "stall" => no_arg(FaultKind::Stall),
            "emfile" => no_arg(FaultKind::Emfile),
            "bad-upgrade" => no_arg(FaultKind::BadUpgrade),
            "escape" => no_arg(FaultKind::Escape),
            "leak" => Ok(FaultKind::Leak {
                mib: num(256, "MiB")?.min(MAX_LEAK_MIB),
            }),
            "slow" => Ok(FaultKind::Slow {
                ms: num(50, "MS")?.min(MAX_SLOW_MS),
            }),
            "crash-on-start" => Ok(FaultKind::CrashOnStart {
                n: num(3, "N")?.min(u64::from(MAX_CRASHES)) as u32,
            }),
            _ => Err(format!(
                "unknown fault {name:?}; known: kill, segv, abort, panic, hang, stall, \
                 leak MiB, slow MS, emfile, crash-on-start N, bad-upgrade, escape"
            )),
        }
    }
}

/// Largest `leak`, `slow` and `crash-on-start` arguments accepted.
pub const MAX_LEAK_MIB: u64 = 64 * 1024;
pub const MAX_SLOW_MS: u64 = 60_000;
pub const MAX_CRASHES: u32 = 100;

impl FaultKind {
    /// Refuses arguments out of range (a request need not come from our CLI).
    pub fn validate(self) -> Result<(), String> {
        match self {
            FaultKind::Leak { mib } if mib == 0 || mib > MAX_LEAK_MIB => {
                Err(format!("leak: MiB must be 1..={MAX_LEAK_MIB}, not {mib}"))
            }
            FaultKind::Slow { ms } if ms == 0 || ms > MAX_SLOW_MS => {
                Err(format!("slow: MS must be 1..={MAX_SLOW_MS}, not {ms}"))
            }
            FaultKind::CrashOnStart { n } if n == 0 || n > MAX_CRASHES => Err(format!(
                "crash-on-start: N must be 1..={MAX_CRASHES}, not {n}"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Leak { mib } => write!(f, "leak {mib}"),
            FaultKind::Slow { ms } => write!(f, "slow {ms}"),
            FaultKind::CrashOnStart { n } => write!(f, "crash-on-start {n}"),
            k => f.write_str(k.name()),
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    /// `name` or `name:arg` (the chaos `--faults` list form).
    fn from_str(s: &str) -> Result<FaultKind, String> {
        match s.split_once(':') {
            Some((n, a)) => FaultKind::parse(n.trim(), Some(a.trim())),
            None => FaultKind::parse(s.trim(), None),
        }
    }
}

/// Which worker gets the fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Victim {
    /// The ready worker of this slot in the current generation.
    Slot(usize),
    /// A ready worker of this generation, picked at random.
    Generation(u64),
    /// A ready worker of the current generation, picked at random.
    Random,
}

/// A `corral fault` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRequest {
    pub kind: FaultKind,
    pub victim: Victim,
    /// How long the master waits for the outcome before answering without one.
    pub timeout_ms: u64,
}

/// What the master measured about one injected fault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultOutcome {
    pub kind: String,
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
    /// Fault sent -> the master saw the exit, the missed heartbeats or the RSS over
    /// the limit; none when there was nothing to detect (the worker survived).
    pub detected_ms: Option<u64>,
    /// Fault sent -> a replacement was ready (or, when the worker survived, the
    /// fault was over and it still served).
    pub recovered_ms: Option<u64>,
    /// Connections the victim held at its last heartbeat when it died; 0 when it
    /// drained gracefully or survived.
    pub lost_connections: u64,
    /// Connections the victim handed over to other workers.
    pub handed_over: u64,
    /// Respawn delay the slot's crash backoff added, in total.
    pub backoff_ms: u64,
    /// "respawned", "watchdog", "recycled", "backoff", "rolled back", "survived",
    /// or "timeout" when nothing was seen within the request's timeout.
    pub outcome: String,
    /// How the victim ended ("killed by SIGSEGV"), if it did.
    pub exit: Option<String>,
    /// The worker that took its slot.
    pub replacement_pid: Option<i32>,
    /// `escape`: each attempt and whether it was blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<crate::os::escape::Attempt>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_with_their_arguments_and_bad_ones_are_named() {
        assert_eq!("kill".parse(), Ok(FaultKind::Kill));
        assert_eq!("leak:64".parse(), Ok(FaultKind::Leak { mib: 64 }));
        assert_eq!(
            FaultKind::parse("slow", Some("20")),
            Ok(FaultKind::Slow { ms: 20 })
        );
        assert_eq!(
            FaultKind::parse("crash-on-start", None),
            Ok(FaultKind::CrashOnStart { n: 3 })
        );
        let e = FaultKind::parse("leak", Some("lots")).unwrap_err();
        assert!(e.contains("leak") && e.contains("lots"), "{e}");
        assert!(FaultKind::parse("kill", Some("1")).is_err());
        assert!(FaultKind::parse("explode", None)
            .unwrap_err()
            .contains("known:"));
        assert!(FaultKind::CrashOnStart { n: 0 }.validate().is_err());
        assert!(FaultKind::Leak { mib: 1 << 40 }.validate().is_err());
        assert!(FaultKind::Slow { ms: 5 }.validate().is_ok());
    }

    #[test]
    fn requests_travel_as_tagged_json() {
        let req = FaultRequest {
            kind: FaultKind::Leak { mib: 8 },
            victim: Victim::Slot(1),
            timeout_ms: 500,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"kind":{"leak":{"mib":8}},"victim":{"slot":1},"timeout_ms":500}"#
        );
        assert_eq!(serde_json::from_str::<FaultRequest>(&json).unwrap(), req);
    }
}
