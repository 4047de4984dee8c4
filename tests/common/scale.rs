//! Helpers for the scale tests: `corral-load` client processes (each within the
//! 20000-fd limit, killed by pid when dropped), the workers' proportional memory
//! (Pss, /proc/PID/smaps_rollup) and connection counts from `corral status --json`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{wait_until, Conf, Corral};

pub fn load_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral-load")
}

/// One running `corral-load`; SIGKILLed (by pid) if still running when dropped.
pub struct Load {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Load {
    /// Starts `corral-load --json ARGS`, output in files under `dir` named `name`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Load {
        let out = dir.join(format!("{name}.json"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(load_bin())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create load stdout"))
            .stderr(File::create(&err).expect("create load stderr"))
            .spawn()
            .expect("spawn corral-load");
        Load { child, out, err }
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Asks it to stop (SIGTERM: it still prints its summary) without waiting.
    pub fn stop(&self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Waits (bounded) for its exit and returns its JSON summary.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let mut done = None;
        wait_until(timeout, || {
            done = self.child.try_wait().ok().flatten();
            done.is_some()
        });
        let status = done.unwrap_or_else(|| {
            panic!(
                "corral-load did not finish within {timeout:?}: {}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            )
        });
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "corral-load ({status}) printed no JSON summary ({e}): {text}\n{}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            )
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A worker's anonymous memory (heap, stacks, its tables) in KiB, proportional over
/// the processes that share it copy-on-write (its master and siblings only). Not the
/// whole `Pss`: that divides the binary's pages among every process mapping it, so it
/// moves whenever another test's corral starts or exits beside this one (a suite run
/// saw a worker's Pss at 5 MiB that alone measured 8.6 MiB).
pub fn anon_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss_Anon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Each worker's (pid, generation, state, connections) from `corral status --json`.
pub fn status_workers(c: &Corral) -> Vec<(i64, u64, String, u64)> {
    let out = c.cli(&["status", "--json"]);
    let Ok(j) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    j["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["pid"].as_i64().unwrap_or(0),
                        w["generation"].as_u64().unwrap_or(0),
                        w["state"].as_str().unwrap_or("").to_string(),
                        w["connections"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Connections corral's workers report in total.
pub fn total_connections(c: &Corral) -> u64 {
    status_workers(c).iter().map(|w| w.3).sum()
}

/// An echo config for many connections: `accept = "reuseport"`, `extra` lines in
/// `[flow]`.
pub fn echo_conf(workers: usize, max_conns: usize, drain: &str, flow: &str) -> String {
    Conf::new(workers)
        .drain(drain)
        .stop("5s")
        .max_conns(max_conns)
        .idle("10m")
        .worker("heartbeat_interval = \"500ms\"")
        .table("flow", flow)
        .level("warn")
        .echo("accept = \"reuseport\"\nbacklog = 4096")
        .render()
}

/// Starts `procs` idle-mode clients holding `total` connections between them over
/// `source_ips` source addresses, for at most `secs`.
pub fn hold(c: &Corral, name: &str, total: usize, procs: usize, secs: u64) -> Vec<Load> {
    (0..procs)
        .map(|i| {
            let n = total / procs + usize::from(i < total % procs);
            let args: Vec<String> = [
                "--addr",
                &c.addr().to_string(),
                "--mode",
                "idle",
                "--conns",
                &n.to_string(),
                "--threads",
                "1",
                "--source-ips",
                "8",
                "--connect-rate",
                "8000",
                "--duration",
                &secs.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            Load::spawn(c.dir.path(), &format!("{name}-{i}"), &args)
        })
        .collect()
}
