//! `corral fault KIND [ARG]`: asks the running master to inject one fault and prints
//! the outcome it measured (its victim, detection and recovery times, the
//! connections lost).

use crate::program::{complain, say};
use std::path::Path;
use std::time::Duration;

use crate::config::Dur;
use crate::control::{self, Request};
use crate::fault::kind::{FaultKind, FaultOutcome, FaultRequest, Victim};
use crate::master::faults::TIMEOUT;

/// Extra time the client waits beyond the master's own timeout for the outcome.
const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// One fault request to the master that `config` configures: the outcome (maybe
/// "timeout": nothing seen in time), or why there is none (refused, unreachable).
pub fn request(config: &Path, req: FaultRequest) -> Result<FaultOutcome, String> {
    let (t, masters) = super::locate(config).and_then(|t| super::vet(&t).map(|m| (t, m)))?;
    let wait = Duration::from_millis(req.timeout_ms) + ANSWER_SLACK;
    let resp = control::request_from(&t.socket, Request::Fault(req), wait, &masters)
        .map_err(|e| format!("{e}{}", super::running_hint(&e)))?;
    resp.fault.ok_or(resp.message)
}

/// Builds the victim selector from the command line's flags.
pub fn victim(slot: Option<usize>, generation: Option<u64>) -> Victim {
    match (slot, generation) {
        (Some(s), _) => Victim::Slot(s),
        (None, Some(g)) => Victim::Generation(g),
        (None, None) => Victim::Random,
    }
}

/// `corral fault`: returns the process exit code.
pub fn run(
    config: &Path,
    kind: &str,
    arg: Option<&str>,
    victim: Victim,
    timeout: Dur,
    json: bool,
) -> i32 {
    let kind = match FaultKind::parse(kind, arg) {
        Ok(k) => k,
        Err(e) => {
            complain!("{e}");
            return 2;
        }
    };
    let req = FaultRequest {
        kind,
        victim,
        timeout_ms: timeout.0.as_millis() as u64,
    };
    match request(config, req) {
        Ok(o) => {
            if json {
                match serde_json::to_string(&o) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        complain!("{e}");
                        return 1;
                    }
                }
            } else {
                say!("{}", crate::master::faults::summary(&o));
            }
            if let Some(a) = o.attempts.as_ref().filter(|a| a.iter().any(|a| !a.blocked)) {
                let open: Vec<&str> = a
                    .iter()
                    .filter(|a| !a.blocked)
                    .map(|a| a.name.as_str())
                    .collect();
                complain!("not blocked: {}", open.join(", "));
                return 1;
            }
            if o.outcome == TIMEOUT {
                complain!(
                    "no outcome within {timeout}: the master saw no exit, silence or \
                     recovery of the victim"
                );
                return 1;
            }
            0
        }
        Err(e) => {
            complain!("{e}");
            1
        }
    }
}
