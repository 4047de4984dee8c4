//! Short-lived `corral …` invocations: output captured to files, killed by pid
//! after a deadline; and `corral status --json` parsed.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{wait_until, Corral};

pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// Output of a short-lived `corral …` invocation.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `corral ARGS` with output to files in `dir`, killing it (by pid) if
/// it has not exited after `timeout`.
pub fn run_cli(dir: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    run_cli_with(dir, args, timeout, || {})
}

/// `run_cli`, calling `tick` at every poll (e.g. to reap a master that the
/// command waits for: an unreaped zombie still answers `kill(pid, 0)`).
pub fn run_cli_with(
    dir: &Path,
    args: &[&str],
    timeout: Duration,
    mut tick: impl FnMut(),
) -> CliOutput {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("cli-{n}.stdout"));
    let err_path = dir.join(format!("cli-{n}.stderr"));
    let mut child = Command::new(corral_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create cli stdout file"))
        .stderr(File::create(&err_path).expect("create cli stderr file"))
        .spawn()
        .expect("spawn corral cli");
    let mut status = None;
    wait_until(timeout, || {
        tick();
        status = child.try_wait().expect("try_wait corral cli");
        status.is_some()
    });
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`corral {}` did not exit within {timeout:?}; stdout: {}; stderr: {}",
                args.join(" "),
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    CliOutput {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// One worker as `corral status --json` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusWorker {
    pub pid: i32,
    pub slot: u64,
    pub generation: u64,
    pub state: String,
}

/// `corral status --json`: (master pid, generation, workers).
pub fn status(c: &Corral) -> (i32, u64, Vec<StatusWorker>) {
    let out = c.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "`corral status --json` failed: {:?}\n{}\n{}",
        out.status,
        out.all(),
        c.log_tail(40)
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`corral status --json` is not JSON ({e}): {}\n{}",
            out.stdout, out.stderr
        )
    });
    assert_eq!(v["ok"], serde_json::Value::Bool(true), "status: {v}");
    let master = v["master_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("status without master_pid: {v}")) as i32;
    let generation = v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("status without a generation: {v}"));
    let workers = v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status without workers: {v}"))
        .iter()
        .map(|w| StatusWorker {
            pid: w["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("worker pid: {w}")) as i32,
            slot: w["slot"]
                .as_u64()
                .unwrap_or_else(|| panic!("worker slot: {w}")),
            generation: w["generation"]
                .as_u64()
                .unwrap_or_else(|| panic!("worker generation: {w}")),
            state: w["state"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    (master, generation, workers)
}
