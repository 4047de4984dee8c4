//! The command line: run the master, check a config, signal or query a running master.

use crate::program::{complain, say};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::config::{Config, DEFAULT_CONFIG_PATH, ENV_PREFIX};
use crate::config_paths::resolve;
use crate::control::{self, Request, Response};
use crate::master::pidfile;

pub mod chaos;
pub mod fault;
pub mod follow;
pub mod interrupt;
pub mod packaging;
pub mod poll;
pub mod publish;
pub mod top;

/// corral: a supervised worker runtime in the style of nginx.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Check the configuration and exit (0 if it is valid). Not with `-s`: a check
    /// that also signalled the master would act on a config it had not checked.
    #[arg(short = 't', long = "test", conflicts_with = "signal")]
    pub test: bool,
    /// Check the configuration, then print the effective one (defaults, then the
    /// file, then `CORRAL_*` environment variables), each value with where it came
    /// from, and exit.
    #[arg(short = 'T', long = "print-config", conflicts_with_all = ["signal", "test"])]
    pub print_config: bool,
    /// Send a command to the running master and wait for its outcome.
    #[arg(short = 's', long = "signal", value_enum)]
    pub signal: Option<SignalArg>,
    /// With `-s reload` or `-s upgrade`: return as soon as the new generation (or
    /// master) serves, without following the old one's connections until it is gone.
    #[arg(long = "no-wait", requires = "signal")]
    pub no_wait: bool,
    /// Run in the background (same as `[master] daemon = true`); returns once the
    /// master serves, or with its error.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    #[command(subcommand)]
    pub command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Show every worker of the running master.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the metrics in the Prometheus text format (as `GET /metrics` on a
        /// `service = "metrics"` listener), e.g. for node_exporter's textfile collector.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
    },
    /// Make a worker of the running master fail for real (needs `[master]
    /// fault_injection = true`) and print how the master coped.
    Fault {
        /// kill, segv, abort, panic, hang, stall, leak, slow, emfile,
        /// crash-on-start, bad-upgrade, or escape (the worker tries what an attacker
        /// would and reports what was blocked; exit 1 if anything was not).
        kind: String,
        /// leak: MiB to allocate; slow: ms per loop iteration; crash-on-start: N.
        arg: Option<String>,
        /// The ready worker of this slot (current generation).
        #[arg(long, conflicts_with_all = ["generation", "random"])]
        slot: Option<usize>,
        /// A random ready worker of this generation.
        #[arg(long, conflicts_with = "random")]
        generation: Option<u64>,
        /// A random ready worker of the current generation (the default).
        #[arg(long)]
        random: bool,
        /// How long to wait for the outcome.
        #[arg(long, default_value = "60s")]
        timeout: crate::config::Dur,
        /// Print the outcome as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the running master: workers with their rates, generations
    /// with their moves, TLS, and recent events (q quits, 1-9 sort, r reverses).
    Top {
        /// Time between polls of the master.
        #[arg(long, default_value = "1s")]
        interval: crate::config::Dur,
        /// Print one frame as plain text and exit (it samples twice, one interval
        /// apart, so that the rates are real).
        #[arg(long)]
        once: bool,
    },
    /// Publish MESSAGE to every connection subscribed to TOPIC, in every worker
    /// (services subscribe connections with `Io::subscribe`); exits 0 once the master
    /// handed it to every worker.
    Publish {
        /// The topic (1 to 255 bytes).
        topic: String,
        /// The message (at most 3072 bytes); the service frames it for its clients.
        message: String,
    },
    /// Print a shell completion script (e.g. `corral completions bash >
    /// /etc/bash_completion.d/corral`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man page (roff) to standard output, or to a file.
    Man {
        /// Write it here instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Inject random faults on a schedule and report detection and recovery.
    Chaos {
        /// How long to keep injecting.
        #[arg(long, default_value = "60s")]
        duration: crate::config::Dur,
        /// Time between faults.
        #[arg(long, default_value = "5s")]
        every: crate::config::Dur,
        /// Comma-separated kinds to pick from (`leak:64`, `slow:20` give arguments).
        /// Default: kill,hang, and leak when [master] max_worker_rss is set.
        #[arg(long, value_delimiter = ',')]
        faults: Option<Vec<crate::fault::kind::FaultKind>>,
        /// Exit non-zero if any recovery took longer.
        #[arg(long, default_value = "10s")]
        max_recovery: crate::config::Dur,
        /// How long each fault may take to resolve.
        #[arg(long, default_value = "60s")]
        timeout: crate::config::Dur,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Printed after `--help` and in the man page: what an operator otherwise has to look
/// up in the README at 3 a.m.
const AFTER_HELP: &str = "\
Environment:
  CORRAL_<SECTION>__<KEY>=value overrides a key of [master], [worker], [flow] or
  [log] in the file, e.g. CORRAL_MASTER__WORKERS=4 or CORRAL_LOG__LEVEL=debug.
  `corral -T` shows which value won and where it came from.

Signals to the master (or `corral -s ...`, which waits for the outcome):
  SIGHUP   reload    re-read the config, start a new generation, drain the old one
  SIGQUIT  quit      graceful stop: drain connections, then exit
  SIGTERM  stop      fast stop (SIGINT too)
  SIGUSR1  reopen    reopen log files
  SIGUSR2  upgrade   start the binary on disk as a new master; roll back if it fails
  SIGWINCH           drain every worker, keep the listeners (SIGHUP starts them again)";

/// What `-s` can ask of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SignalArg {
    /// Re-read the config; start a new generation; drain the old one.
    Reload,
    /// Graceful stop: drain connections, then exit.
    Quit,
    /// Fast stop: close everything, exit.
    Stop,
    /// Reopen log files.
    Reopen,
    /// Binary upgrade: start the binary on disk as a new master; roll back if it fails.
    Upgrade,
}

/// Only the keys needed to find a running master, read leniently: `corral -s reload`
/// must reach the master even when the file now holds an error (the master then
/// refuses the reload and the error is reported through it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Locator {
    #[serde(default)]
    master: LocatorMaster,
    /// Only counted: a file without a listener configures no master at all, and its
    /// default paths could belong to another instance.
    #[serde(default)]
    listen: Vec<figment::value::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LocatorMaster {
    pid_file: PathBuf,
    control_socket: Option<PathBuf>,
}

impl Default for LocatorMaster {
    fn default() -> Self {
        let m = crate::config::MasterConfig::default();
        LocatorMaster {
            pid_file: m.pid_file,
            control_socket: None,
        }
    }
}

/// Where the master that a config file configures can be reached.
struct Target {
    pid_file: PathBuf,
    socket: PathBuf,
    /// How long a stop may take, when the config could be read in full.
    wait: Option<Duration>,
}

/// Finds the master that `path` configures. A config that fails validation still
/// names its paths (so that `-s reload` can reach the master, which then reports the
/// error); one whose paths cannot be read at all is an error, never a guess.
fn locate(path: &Path) -> Result<Target, String> {
    let full = match Config::load(path) {
        Ok(c) => {
            let wait = c.master.drain_timeout.0.max(c.master.stop_timeout.0);
            return Ok(Target {
                pid_file: c.master.pid_file.clone(),
                socket: c.master.control_socket_path(),
                wait: Some(wait),
            });
        }
        Err(e) => e,
    };
    let refuse = |detail: String| {
        format!(
            "{detail}\n{}: cannot tell from {} which master it configures; nothing was sent",
            crate::program::name(),
            path.display()
        )
    };
    let loc: Locator = Figment::from(Serialized::defaults(Locator::default()))
        .merge(Toml::file_exact(path))
        .merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|k| matches!(k.as_str(), "master.pid_file" | "master.control_socket")),
        )
        .extract()
        .map_err(|_| refuse(full.to_string()))?;
    if loc.listen.is_empty() {
        return Err(refuse(full.to_string()));
    }
    let base = crate::config_paths::base_of(path).map_err(|e| refuse(e.to_string()))?;
    let m = crate::config::MasterConfig {
        pid_file: resolve(&base, &loc.master.pid_file),
        control_socket: loc.master.control_socket.map(|s| resolve(&base, &s)),
        ..Default::default()
    };
    Ok(Target {
        pid_file: m.pid_file.clone(),
        socket: m.control_socket_path(),
        wait: None,
    })
}

/// Refuses runtime directories another user could have planted things in, and
/// returns the pids that the pid file (or its `.oldbin`, mid-upgrade) proves to be
/// masters: the only servers whose answers are believed.
fn vet(t: &Target) -> Result<Vec<i32>, String> {
    for p in [&t.pid_file, &t.socket] {
        let dir = std::path::absolute(pidfile::runtime_dir(p)).map_err(|e| e.to_string())?;
        if dir.is_dir() {
            crate::os::cred::check_runtime_dir(&dir)
                .map_err(|e| format!("{e}; refusing to use it"))?;
        }
    }
    Ok([t.pid_file.clone(), pidfile::oldbin(&t.pid_file)]
        .iter()
        .filter_map(|p| pidfile::proven_master(p).ok())
        .map(|p| p.as_raw())
        .collect())
}

/// "Is corral running?" helps only when nothing answered the connect: a master that
/// took the request and is slow to answer is running.
fn running_hint(e: &control::ControlError) -> &'static str {
    match e {
        control::ControlError::Connect { .. } => " (is corral running?)",
        _ => "",
    }
}

/// `corral -s …`: returns the process exit code. A reload or an upgrade is then
/// followed until the old generation (or master) is gone, unless `no_wait`.
pub fn send(path: &Path, what: SignalArg, no_wait: bool) -> i32 {
    let (t, masters) = match locate(path).and_then(|t| vet(&t).map(|m| (t, m))) {
        Ok(x) => x,
        Err(e) => {
            complain!("{e}");
            return 1;
        }
    };
    let req = match what {
        SignalArg::Reload => Request::Reload,
        SignalArg::Quit => Request::Quit,
        SignalArg::Stop => Request::Stop,
        SignalArg::Reopen => Request::Reopen,
        SignalArg::Upgrade => Request::Upgrade,
    };
    // What to follow afterwards, from the status just before the request.
    let watch = if no_wait || !matches!(what, SignalArg::Reload | SignalArg::Upgrade) {
        None
    } else {
        control::request_from(&t.socket, Request::Status, Duration::from_secs(5), &masters)
            .ok()
            .and_then(|r| follow::Watch::before(what, &r))
    };
    // A reload waits for the new generation (up to 30 s); leave room for that.
    let timeout = Duration::from_secs(90);
    match control::request_from(&t.socket, req, timeout, &masters) {
        Ok(resp) => {
            report(&resp);
            if !resp.ok {
                return 1;
            }
            if let Some(w) = watch {
                let limit = t.wait.unwrap_or(Duration::from_secs(60)) + Duration::from_secs(10);
                follow::follow(path, w, limit);
            }
            if matches!(what, SignalArg::Quit | SignalArg::Stop) {
                return wait_gone(
                    resp.master_pid,
                    t.wait.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(5),
                );
            }
            0
        }
        Err(e @ control::ControlError::Connect { .. }) => {
            signal_fallback(&t.pid_file, what, &e.to_string())
        }
        Err(e) => {
            complain!("{e}");
            1
        }
    }
}

/// Without a control socket (an older master, a deleted socket file), fall back to the
/// pid file and a plain signal, saying that the outcome is unknown. Only a pid that
/// /proc proves to be the master that wrote the pid file is signalled.
fn signal_fallback(pid_file: &Path, what: SignalArg, why: &str) -> i32 {
    use crate::os::process::Signal;
    let sig = match what {
        SignalArg::Reload => Signal::SIGHUP,
        SignalArg::Quit => Signal::SIGQUIT,
        SignalArg::Stop => Signal::SIGTERM,
        SignalArg::Reopen => Signal::SIGUSR1,
        SignalArg::Upgrade => Signal::SIGUSR2,
    };
    let pid = match pidfile::proven_master(pid_file) {
        Ok(p) => p,
        Err(e) => {
            complain!("{why}; {e}");
            return 1;
        }
    };
    if let Err(e) = crate::os::process::signal(pid, sig) {
        complain!("cannot send {} to pid {pid}: {e}", sig.as_str());
        return 1;
    }
    complain!(
        "{why}; sent {} to pid {pid} instead (outcome unknown)",
        sig.as_str()
    );
    0
}

fn wait_gone(pid: i32, limit: Duration) -> i32 {
    let pid = crate::os::process::Pid::from_raw(pid);
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if !crate::os::process::alive(pid) || is_zombie(pid) {
            say!("master {pid} has exited");
            return 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    complain!("master {pid} is still running after {limit:?}");
    1
}

/// An exited process its parent has not reaped yet still answers kill(pid, 0).
fn is_zombie(pid: crate::os::process::Pid) -> bool {
    crate::os::procfs::stat(pid.as_raw()).is_ok_and(|s| s.state == 'Z')
}

fn report(resp: &Response) {
    if resp.ok {
        say!("{}", resp.message);
    } else {
        complain!("{}", resp.message);
    }
}

/// `corral status --prometheus`: returns the process exit code.
pub fn status_prometheus(path: &Path) -> i32 {
    let (t, masters) = match locate(path).and_then(|t| vet(&t).map(|m| (t, m))) {
        Ok(x) => x,
        Err(e) => {
            complain!("{e}");
            return 1;
        }
    };
    match control::request_from(
        &t.socket,
        Request::Prometheus,
        Duration::from_secs(10),
        &masters,
    ) {
        Ok(r) if r.ok => {
            print!("{}", r.message);
            0
        }
        Ok(r) => {
            complain!("{}", r.message);
            1
        }
        Err(e) => {
            complain!("{e}{}", running_hint(&e));
            1
        }
    }
}

/// `corral status`: returns the process exit code.
pub fn status(path: &Path, json: bool) -> i32 {
    let (t, masters) = match locate(path).and_then(|t| vet(&t).map(|m| (t, m))) {
        Ok(x) => x,
        Err(e) => {
            complain!("{e}");
            return 1;
        }
    };
    let resp = match control::request_from(
        &t.socket,
        Request::Status,
        Duration::from_secs(10),
        &masters,
    ) {
        Ok(r) => r,
        Err(e) => {
            complain!("{e}{}", running_hint(&e));
            return 1;
        }
    };
    if json {
        match serde_json::to_string_pretty(&resp) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                complain!("{e}");
                return 1;
            }
        }
        return 0;
    }
    println!(
        "master {}: {}, generation {}",
        resp.master_pid, resp.message, resp.generation
    );
    println!(
        "{:>8} {:>4} {:>4} {:<9} {:>9} {:>6} {:>9} {:>8} {:>11} {:>11} {:>9} {:>8}  last exit",
        "PID",
        "SLOT",
        "GEN",
        "STATE",
        "UPTIME",
        "CONNS",
        "ACCEPTED",
        "ADOPTED",
        "BYTES IN",
        "BYTES OUT",
        "RSS",
        "RESTARTS"
    );
    for w in &resp.workers {
        println!(
            "{:>8} {:>4} {:>4} {:<9} {:>8.0}s {:>6} {:>9} {:>8} {:>11} {:>11} {:>9} {:>8}  {}",
            w.pid,
            w.slot,
            w.generation,
            w.state,
            w.uptime_secs,
            w.connections,
            w.accepted,
            w.adopted,
            w.bytes_in,
            w.bytes_out,
            crate::config::Size(w.rss / 1024 * 1024),
            w.restarts,
            w.last_exit.as_deref().unwrap_or("-")
        );
    }
    print_generations(&resp);
    print_tls(&resp);
    print_push(&resp);
    0
}

/// The push line of `corral status` (live workers; only once anything was pushed).
fn print_push(resp: &Response) {
    let mut p = crate::channel::PushCounts::default();
    for w in &resp.workers {
        p.add(&w.push);
    }
    if p == crate::channel::PushCounts::default() {
        return;
    }
    println!();
    println!(
        "push: published {}, delivered {}, replayed after moves {}; dropped: slow clients {}, \
         peer queues full {}; disconnected slow clients {}; refused {}; \
         missed by moved subscribers (at most) {}",
        p.published,
        p.delivered,
        p.replayed,
        p.dropped_slow,
        p.dropped_peer_full,
        p.disconnected_slow,
        p.refused,
        p.missed_in_move
    );
}

/// The per-generation lines of `corral status`: what each draining (or recently
/// gone) generation did with its connections. One sentence per generation, after a
/// blank line, so that a script reading the worker rows (first field a pid) is not
/// misled by them.
fn print_generations(resp: &Response) {
    if resp.generations.is_empty() {
        return;
    }
    println!();
    for g in &resp.generations {
        let exit = g
            .exit_ms
            .map_or(String::new(), |ms| format!(", gone after {ms} ms"));
        println!(
            "generation {}: {}, {} worker(s); connections moved {}, kept {}, closed {}{exit}",
            g.generation, g.state, g.workers, g.moved, g.kept, g.closed
        );
    }
    if resp.moved_from_old_master > 0 {
        println!(
            "connections moved in from the old master at the last upgrade: {}",
            resp.moved_from_old_master
        );
    }
}

/// The TLS lines of `corral status`: handshakes and failures over the live workers,
/// and each certificate with its expiry.
fn print_tls(resp: &Response) {
    if resp.certificates.is_empty() {
        return;
    }
    let mut t = crate::tls::TlsCounts::default();
    for w in &resp.workers {
        t.add(&w.tls);
    }
    println!();
    let failed: Vec<String> = crate::tls::Failure::ALL
        .iter()
        .filter(|f| t.failures(**f) > 0)
        .map(|f| format!("{} {}", f.label(), t.failures(*f)))
        .collect();
    println!(
        "tls: handshakes {} full, {} resumed (TLSv1.3 {}, TLSv1.2 {}); moved in {}, out {}; failed: {}",
        t.full,
        t.resumed,
        t.tls13,
        t.tls12,
        t.moved_in,
        t.moved_out,
        if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join(", ")
        }
    );
    for c in &resp.certificates {
        println!(
            "certificate {} on {}: {} [{}], expires {} ({} days)",
            c.file,
            c.listen,
            c.subject,
            c.names.join(" "),
            c.expires,
            c.days_left
        );
    }
}
