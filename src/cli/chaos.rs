//! `corral chaos`: a client-side schedule of random faults against a running
//! instance (each one a `corral fault` request on a random worker), sampling
//! `status` in between to tell whether the service was ever without a ready worker,
//! and ending with a report of detection and recovery per fault kind.

use crate::program::complain;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Dur;
use crate::control::{self, Request};
use crate::fault::kind::{FaultKind, FaultOutcome, FaultRequest, Victim};

/// How often `status` is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What `corral chaos` was asked to do.
pub struct Plan {
    pub duration: Dur,
    pub every: Dur,
    /// None: the defaults the config can run ([`faults_for`]).
    pub faults: Option<Vec<FaultKind>>,
    pub max_recovery: Dur,
    pub timeout: Dur,
}

/// Detection and recovery of one fault kind.
#[derive(Debug, Default, Serialize)]
pub struct KindReport {
    pub count: usize,
    pub detected_p50_ms: Option<u64>,
    pub detected_max_ms: Option<u64>,
    pub recovered_p50_ms: Option<u64>,
    pub recovered_max_ms: Option<u64>,
    pub lost_connections: u64,
}

/// The whole run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub duration_ms: u64,
    pub faults: usize,
    pub per_kind: BTreeMap<String, KindReport>,
    /// Every outcome, in order (each with its own `lost_connections`).
    pub results: Vec<FaultOutcome>,
    /// Requests that got no outcome, and why.
    pub failed: Vec<String>,
    pub lost_connections: u64,
    /// `status` samples taken, and how many found no ready worker of the current
    /// generation (or no answer at all).
    pub samples: usize,
    pub unavailable_samples: usize,
    pub unavailable: bool,
    pub max_recovery_ms: u64,
    /// Faults whose recovery took longer than `max_recovery` (or never came).
    pub exceeded: Vec<String>,
}

fn p50(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

fn random(n: usize) -> usize {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as usize % n.max(1)
}

/// One `status` sample: true when some worker of the current generation is ready.
fn available(config: &Path) -> bool {
    let Ok((t, masters)) = super::locate(config).and_then(|t| super::vet(&t).map(|m| (t, m)))
    else {
        return false;
    };
    control::request_from(&t.socket, Request::Status, Duration::from_secs(5), &masters)
        .map(|r| {
            r.workers
                .iter()
                .any(|w| w.generation == r.generation && w.state == "ready")
        })
        .unwrap_or(false)
}

/// The faults to pick from, checked against the config before anything is injected:
/// a run that the master would refuse fault after fault is refused at once instead.
/// Without `--faults`, every kind the config allows: `leak` only when
/// `max_worker_rss` is set (nothing would recycle the worker otherwise), sized past it. A config the
/// client cannot read leaves the checks to the master.
pub fn faults_for(
    config: Option<&crate::config::Config>,
    asked: Option<Vec<FaultKind>>,
) -> Result<Vec<FaultKind>, String> {
    let Some(c) = config else {
        return Ok(asked.unwrap_or_else(|| vec![FaultKind::Kill, FaultKind::Hang]));
    };
    let path = c.source.display();
    if !c.master.fault_injection {
        return Err(format!(
            "[master] fault_injection is off in {path}: the master would refuse every \
             fault; set it to true and reload"
        ));
    }
    let rss = c.master.max_worker_rss.0 > 0;
    match asked {
        None => {
            let mut kinds = vec![FaultKind::Kill, FaultKind::Hang];
            if rss {
                // Sized past the limit, whatever it is: a leak under it would never be
                // recycled and the run would report it as never recovered.
                let limit_mib = c.master.max_worker_rss.0.div_ceil(1 << 20);
                kinds.push(FaultKind::Leak {
                    mib: (limit_mib + 16).min(crate::fault::kind::MAX_LEAK_MIB),
                });
            }
            Ok(kinds)
        }
        Some(kinds) => {
            if !rss && kinds.iter().any(|k| matches!(k, FaultKind::Leak { .. })) {
                return Err(format!(
                    "`leak` needs [master] max_worker_rss (off in {path}): nothing would \
                     recycle the worker; set it, or leave leak out of --faults"
                ));
            }
            Ok(kinds)
        }
    }
}

/// Runs the plan and builds the report.
pub fn chaos(config: &Path, plan: &Plan, faults: &[FaultKind]) -> Report {
    let start = Instant::now();
    let mut report = Report {
        max_recovery_ms: plan.max_recovery.0.as_millis() as u64,
        ..Report::default()
    };
    let mut next = start;
    // Ctrl-C ends the schedule early: the fault in flight is waited for (its timeout
    // bounds it), and the report covers what ran.
    use super::interrupt::{Interrupt, SIGINT, SIGTERM};
    let stop = Interrupt::on(&[SIGINT, SIGTERM]);
    while next < start + plan.duration.0 && !stop.requested() {
        let kind = faults[random(faults.len())];
        let req = FaultRequest {
            kind,
            victim: Victim::Random,
            timeout_ms: plan.timeout.0.as_millis() as u64,
        };
        // The request blocks until the outcome; status is sampled meanwhile.
        let (tx, rx) = mpsc::channel();
        let path: PathBuf = config.to_path_buf();
        let asker = std::thread::spawn(move || {
            let _ = tx.send(super::fault::request(&path, req));
        });
        next += plan.every.0;
        let mut result = None;
        loop {
            report.samples += 1;
            if !available(config) {
                report.unavailable_samples += 1;
            }
            if result.is_none() {
                result = rx.recv_timeout(SAMPLE_EVERY).ok();
            } else if Instant::now() >= next || stop.requested() {
                break;
            } else {
                std::thread::sleep(
                    SAMPLE_EVERY.min(next.saturating_duration_since(Instant::now())),
                );
            }
        }
        let _ = asker.join();
        report.faults += 1;
        match result {
            Some(Ok(o)) => report.results.push(o),
            Some(Err(e)) => report.failed.push(format!("{kind}: {e}")),
            None => report.failed.push(format!("{kind}: no answer")),
        }
    }
    report.duration_ms = start.elapsed().as_millis() as u64;
    let max = report.max_recovery_ms;
    for o in &report.results {
        match o.recovered_ms {
            Some(r) if r <= max => {}
            Some(r) => report.exceeded.push(format!(
                "{} on pid {}: recovered after {r} ms",
                o.kind, o.pid
            )),
            None => report
                .exceeded
                .push(format!("{} on pid {}: never recovered", o.kind, o.pid)),
        }
    }
    let mut by_kind: BTreeMap<String, Vec<&FaultOutcome>> = BTreeMap::new();
    for o in &report.results {
        let name = o.kind.split(' ').next().unwrap_or(&o.kind).to_string();
        by_kind.entry(name).or_default().push(o);
    }
    for (k, os) in by_kind {
        let det: Vec<u64> = os.iter().filter_map(|o| o.detected_ms).collect();
        let rec: Vec<u64> = os.iter().filter_map(|o| o.recovered_ms).collect();
        report.per_kind.insert(
            k,
            KindReport {
                count: os.len(),
                detected_max_ms: det.iter().copied().max(),
                detected_p50_ms: p50(det),
                recovered_max_ms: rec.iter().copied().max(),
                recovered_p50_ms: p50(rec),
                lost_connections: os.iter().map(|o| o.lost_connections).sum(),
            },
        );
    }
    report.lost_connections = report.results.iter().map(|o| o.lost_connections).sum();
    report.unavailable = report.unavailable_samples > 0;
    report
}

/// `corral chaos`: returns the process exit code (1 when a recovery exceeded
/// `max_recovery` or a fault got no outcome).
pub fn run(config: &Path, plan: Plan, json: bool) -> i32 {
    if plan.faults.as_ref().is_some_and(Vec::is_empty) || plan.every.0.is_zero() {
        complain!("chaos needs at least one fault in --faults and a non-zero --every");
        return 2;
    }
    let loaded = match crate::config::Config::load(config) {
        Ok(c) => Some(c),
        Err(e) => {
            complain!("note: {e}; the master alone checks the faults");
            None
        }
    };
    let faults = match faults_for(loaded.as_ref(), plan.faults.clone()) {
        Ok(f) => f,
        Err(why) => {
            complain!("chaos refused: {why}; nothing was injected");
            return 2;
        }
    };
    let r = chaos(config, &plan, &faults);
    if json {
        match serde_json::to_string_pretty(&r) {
            Ok(s) => println!("{s}"),
            Err(e) => complain!("{e}"),
        }
    } else {
        print_text(&r);
    }
    i32::from(!r.exceeded.is_empty() || !r.failed.is_empty())
}

fn print_text(r: &Report) {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "chaos: {} faults in {:.1} s; {} connections lost; service {} ({} of {} status samples without a ready worker)",
        r.faults,
        r.duration_ms as f64 / 1000.0,
        r.lost_connections,
        if r.unavailable { "WAS UNAVAILABLE" } else { "always available" },
        r.unavailable_samples,
        r.samples
    );
    println!(
        "{:<15} {:>5} {:>12} {:>12} {:>13} {:>13} {:>6}",
        "KIND", "COUNT", "DETECT P50", "DETECT MAX", "RECOVER P50", "RECOVER MAX", "LOST"
    );
    for (k, v) in &r.per_kind {
        println!(
            "{:<15} {:>5} {:>10}ms {:>10}ms {:>11}ms {:>11}ms {:>6}",
            k,
            v.count,
            ms(v.detected_p50_ms),
            ms(v.detected_max_ms),
            ms(v.recovered_p50_ms),
            ms(v.recovered_max_ms),
            v.lost_connections
        );
    }
    for o in &r.results {
        println!("  {}", crate::master::faults::summary(o));
    }
    for f in &r.failed {
        println!("  FAILED {f}");
    }
    for e in &r.exceeded {
        println!("  over --max-recovery ({} ms): {e}", r.max_recovery_ms);
    }
}
