//! Running the threads and reporting: the stop signal, the per-second progress
//! lines, the summary (text or JSON) and the `corral status` sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};
use std::time::{Duration, Instant};

use crate::conn::Report;
use crate::counters::Counters;
use crate::histogram::Histogram;
use crate::plan::Plan;
use crate::thread::ClientThread;
use crate::Args;

/// Connections per worker, as `corral status --json` reported them: (pid, count).
pub(crate) type WorkerCounts = Vec<(i64, u64)>;

/// Samples `corral status` on a thread at 80 % of the run.
pub(crate) fn sample_workers(
    args: &Args,
) -> Option<std::thread::JoinHandle<Result<WorkerCounts, String>>> {
    let cfg = args.corral_config.clone()?;
    let bin = args.corral_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("corral")))
            .unwrap_or_else(|| "corral".into())
    });
    let at = Duration::from_millis(args.duration * 800);
    Some(std::thread::spawn(move || {
        std::thread::sleep(at);
        let out = std::process::Command::new(&bin)
            .args(["status", "--json", "-c"])
            .arg(&cfg)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("corral status: {e}"))?;
        Ok(v["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .map(|w| {
                        (
                            w["pid"].as_i64().unwrap_or(0),
                            w["connections"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }))
}

/// Set by SIGINT or SIGTERM (signal-hook's flag: the handler only stores to it).
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Ctrl-C (or SIGTERM) ends the run early but still prints what was measured; a
/// second one ends the tool at once (exit status 1), should a thread be stuck.
pub(crate) fn install_stop_handler() -> Result<(), String> {
    let flag = STOP.get_or_init(Arc::default);
    for sig in [SIGINT, SIGTERM] {
        // In this order: the shutdown looks at the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(flag)))
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived (after [`install_stop_handler`]).
pub(crate) fn stop_requested() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

pub(crate) struct Summary {
    pub(crate) elapsed: Duration,
    pub(crate) counters: Counters,
    pub(crate) latency: Histogram,
    pub(crate) connect_latency: Histogram,
    pub(crate) open_at_end: usize,
    pub(crate) first_connect_error: Option<String>,
}

pub(crate) fn run_load(plan: &Plan) -> Result<Summary, String> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Report>();
    let mut results = Vec::with_capacity(plan.threads);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(plan.threads);
        for t in 0..plan.threads {
            let tx = plan.progress.then(|| tx.clone());
            let h = std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn_scoped(s, move || ClientThread::new(plan, t, start)?.run(start, tx))
                .map_err(|e| format!("cannot start thread {t}: {e}"));
            handles.push(h);
        }
        drop(tx);
        if plan.progress {
            print_progress(&rx, plan.threads);
        }
        for h in handles {
            results.push(match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a load thread panicked (a bug)".into())),
                Err(e) => Err(e),
            });
        }
    });
    let elapsed = start.elapsed();
    let mut sum = Summary {
        elapsed,
        counters: Counters::default(),
        latency: Histogram::new(),
        connect_latency: Histogram::new(),
        open_at_end: 0,
        first_connect_error: None,
    };
    for r in results {
        let o = r?;
        sum.counters.add(&o.counters);
        sum.latency.merge(&o.latency);
        sum.connect_latency.merge(&o.connect_latency);
        sum.open_at_end += o.open_at_end;
        if sum.first_connect_error.is_none() {
            sum.first_connect_error = o.first_connect_error;
        }
    }
    Ok(sum)
}

/// Prints one line per second once every thread has reported that second.
pub(crate) fn print_progress(rx: &mpsc::Receiver<Report>, threads: usize) {
    let mut pending: BTreeMap<u64, (usize, Counters, Histogram, usize)> = BTreeMap::new();
    let mut total = Counters::default();
    for rep in rx {
        let e = pending
            .entry(rep.tick)
            .or_insert_with(|| (0, Counters::default(), Histogram::new(), 0));
        e.0 += 1;
        e.1.add(&rep.delta);
        e.2.merge(&rep.latency);
        e.3 += rep.open;
        if e.0 < threads {
            continue;
        }
        if let Some((_, d, h, open)) = pending.remove(&rep.tick) {
            total.add(&d);
            eprintln!(
                "[{:>3}s] open {open} new {} rt/s {} MB/s {:.2} p50 {}us p99 {}us p999 {}us | \
                 errors: connect {} eof {} mismatch {} timeout {} closed {}",
                rep.tick,
                d.opened,
                d.round_trips,
                d.bytes_received as f64 / 1e6,
                h.quantile(0.5),
                h.quantile(0.99),
                h.quantile(0.999),
                total.connect_failed,
                total.reset_eof,
                total.mismatch,
                total.timeouts,
                total.closed_idle,
            );
        }
    }
}

pub(crate) fn summary_json(plan: &Plan, s: &Summary) -> serde_json::Value {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let c = &s.counters;
    serde_json::json!({
        "mode": plan.mode.name(),
        "addr": plan.addr.to_string(),
        "conns": plan.conns,
        "conns_requested": plan.capped_from.unwrap_or(plan.conns),
        "threads": plan.threads,
        "size": plan.size,
        "nofile_limit": plan.nofile,
        "elapsed_s": secs,
        "conns_opened": c.opened,
        "connect_errors": c.connect_failed,
        "conns_open_at_end": s.open_at_end,
        "round_trips": c.round_trips,
        "round_trips_failed": c.round_trips_failed(),
        "round_trips_per_s": c.round_trips as f64 / secs,
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
        "throughput_mb_s": c.bytes_received as f64 / secs / 1e6,
        "latency_us": {
            "p50": s.latency.quantile(0.5),
            "p99": s.latency.quantile(0.99),
            "p999": s.latency.quantile(0.999),
            "max": s.latency.max_or_zero(),
            "mean": s.latency.mean(),
        },
        "connect_latency_us": {
            "p50": s.connect_latency.quantile(0.5),
            "p99": s.connect_latency.quantile(0.99),
            "max": s.connect_latency.max_or_zero(),
        },
        "errors": {
            "connect_failed": c.connect_failed,
            "reset_eof": c.reset_eof,
            "mismatch": c.mismatch,
            "timeouts": c.timeouts,
            "closed_idle": c.closed_idle,
            "total": c.errors(),
            "conns_lost": c.conns_lost,
        },
        "first_connect_error": s.first_connect_error,
    })
}

pub(crate) fn print_summary(plan: &Plan, s: &Summary) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let c = &s.counters;
    println!(
        "corral-load: {} mode, {} connections, {} thread(s), {} B messages -> {} for {:.1} s",
        plan.mode.name(),
        plan.conns,
        plan.threads,
        plan.size,
        plan.addr,
        secs
    );
    println!(
        "connections:   {} opened, {} connect errors, {} open at end",
        c.opened, c.connect_failed, s.open_at_end
    );
    println!(
        "round trips:   {} ({:.0}/s), {} failed, {:.2} MB/s echoed",
        c.round_trips,
        c.round_trips as f64 / secs,
        c.round_trips_failed(),
        c.bytes_received as f64 / secs / 1e6
    );
    println!(
        "latency (us):  p50 {} p99 {} p999 {} max {} mean {:.0}",
        s.latency.quantile(0.5),
        s.latency.quantile(0.99),
        s.latency.quantile(0.999),
        s.latency.max_or_zero(),
        s.latency.mean()
    );
    println!(
        "connect (us):  p50 {} p99 {} max {}",
        s.connect_latency.quantile(0.5),
        s.connect_latency.quantile(0.99),
        s.connect_latency.max_or_zero()
    );
    println!(
        "errors:        {} total: connect failed {}, reset/EOF mid-conversation {}, \
         mismatched echo {}, timeouts {}, closed while idle {}",
        c.errors(),
        c.connect_failed,
        c.reset_eof,
        c.mismatch,
        c.timeouts,
        c.closed_idle
    );
    if let Some(e) = &s.first_connect_error {
        println!("first connect error: {e}");
    }
}
