//! `corral-load`: a closed-loop TCP load generator for long-lived connections.
//!
//! corral exists to hold many long-lived connections and to reload or upgrade without
//! dropping them, so the usual HTTP benchmarks (wrk, ab) measure the wrong thing: they
//! neither keep thousands of quiet connections open nor tell a reset caused by a reload
//! from a slow reply. This tool drives an echo server the way corral's users do and
//! counts exactly what they would feel: connections that could not be opened, echoes
//! cut short by the server, echoes that came back wrong, and echoes that never came.
//!
//! Design: `--threads` OS threads, each with its own epoll instance driving its share of
//! the connections as edge-triggered state machines (no async runtime, no locks on the
//! hot path). Each thread keeps its own counters and latency histograms; they are merged
//! at the end, and sent once per second over a channel for `--progress`.
//!
//! Safety rule of the machines this runs on: it only ever connects to loopback
//! addresses (127.0.0.0/8 or ::1) and refuses anything else.
//!
//! `--mode stream` (in `stream.rs`) is the one open-loop mode: each connection receives
//! a paced stream and the tool reports per-client rates and gaps.

mod bucket;
mod conn;
mod counters;
mod histogram;
mod plan;
mod run;
mod stream;
#[cfg(test)]
mod tests;
mod thread;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plan::{Mode, Plan, MAX_DURATION_SECS};
use run::{install_stop_handler, print_summary, run_load, sample_workers, summary_json};

/// Closed-loop TCP load against an echo server, for long-lived connections.
#[derive(Debug, Parser)]
#[command(name = "corral-load", version, about, long_about = None)]
struct Args {
    /// Server address: 127.0.0.1:PORT (any 127.0.0.0/8 address) or `[::1]:PORT` only.
    #[arg(long)]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    conns: u64,
    /// Threads, each driving its share of the connections with one epoll instance.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Run time in seconds (at most 1800: establishing a million connections on a small box takes over 10 minutes).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_SECS))]
    duration: u64,
    /// echo: round trips on persistent connections; idle: hold connections open and
    /// silent; churn: one round trip per connection, then reconnect.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Message size in bytes (echo and churn).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Round trips per second per connection in echo mode; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.K, so that more
    /// connections than one address's ephemeral port range can be opened.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=254))]
    source_ips: u64,
    /// Most new connections per second, over all threads (default: no limit).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// A connect or round trip taking longer than this is abandoned (counted, reopened).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Idle mode: how often every held connection is checked (a `MSG_PEEK` each) besides
    /// what epoll reports. At a million connections a 1 s check costs the clients a
    /// core, which they take from the server being measured.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    alive_check_ms: u64,
    /// Print one progress line per second on stderr.
    #[arg(long)]
    progress: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 if any error was counted.
    #[arg(long)]
    fail_on_error: bool,
    /// The config of the corral under test: near the end of the run (at 80 % of
    /// `--duration`, while the connections are open) `corral status --json -c FILE`
    /// is asked for each worker's connection count, which the summary reports.
    #[arg(long, value_name = "FILE")]
    corral_config: Option<std::path::PathBuf>,
    /// The corral binary for `--corral-config` (default: `corral` next to this tool).
    #[arg(long, value_name = "PATH")]
    corral_bin: Option<std::path::PathBuf>,
    /// Stream mode: the rate (bytes/s) each client should receive; clients below it by
    /// more than `--tolerance` are counted as starved.
    #[arg(long)]
    expect_rate: Option<f64>,
    /// Stream mode: the fraction below `--expect-rate` still counted as served.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Stream mode: seconds after the start before rates and gaps are measured (the
    /// connections are being opened).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
}
fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corral-load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_stop_handler() {
        eprintln!("corral-load: {e}");
        return ExitCode::from(2);
    }
    if plan.mode == Mode::Stream {
        return run_stream(&args, &plan);
    }
    let sampler = sample_workers(&args);
    let summary = match run_load(&plan) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corral-load: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = sampler.map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("status sampler panicked".into()))
    });
    if args.json {
        let mut j = summary_json(&plan, &summary);
        if let Some(w) = &workers {
            j["workers"] = match w {
                Ok(ws) => serde_json::json!(ws
                    .iter()
                    .map(|(pid, n)| serde_json::json!({"pid": pid, "connections": n}))
                    .collect::<Vec<_>>()),
                Err(e) => serde_json::json!({ "error": e }),
            };
        }
        println!("{j}");
    } else {
        print_summary(&plan, &summary);
        match &workers {
            Some(Ok(ws)) => {
                let list: Vec<String> = ws.iter().map(|(pid, n)| format!("{pid}:{n}")).collect();
                println!(
                    "connections per worker (pid:conns, at 80 % of the run): {}",
                    list.join(" ")
                );
            }
            Some(Err(e)) => println!("connections per worker: unavailable ({e})"),
            None => {}
        }
    }
    if args.fail_on_error && summary.counters.errors() > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `--mode stream`: its own loop and summary (see `stream.rs`).
fn run_stream(args: &Args, plan: &Plan) -> ExitCode {
    if args.warmup >= args.duration {
        eprintln!(
            "corral-load: --warmup {} must be less than --duration {}",
            args.warmup, args.duration
        );
        return ExitCode::from(2);
    }
    if !(0.0..1.0).contains(&args.tolerance) {
        eprintln!(
            "corral-load: --tolerance {}: must be in 0 ..< 1",
            args.tolerance
        );
        return ExitCode::from(2);
    }
    let opts = stream::StreamOpts {
        expect: args.expect_rate,
        tolerance: args.tolerance,
        warmup: Duration::from_secs(args.warmup),
    };
    match stream::run(plan, opts) {
        Ok(o) => {
            let j = stream::report(&o, opts, args.json);
            if args.json {
                println!("{j}");
            }
            let starved = j["starved"].as_u64().unwrap_or(0);
            if args.fail_on_error && starved > 0 {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral-load: {e}");
            ExitCode::from(2)
        }
    }
}
