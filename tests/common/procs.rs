//! Processes: identities that survive pid reuse (pid + start time), /proc reads
//! (state, children, memory) and installing a binary to exec.

use std::fs;
use std::path::{Path, PathBuf};

use super::corral_bin;
use std::process::{Command, Stdio};

/// A process identity that survives pid reuse: pid plus start time (clock
/// ticks since boot, field 22 of /proc/PID/stat).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// What /proc/PID/stat says of a process.
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub start: u64,
}

/// Reads /proc/PID/stat.
pub fn read_stat(pid: i32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), f[1] field 4 (ppid), f[2] field 5 (pgrp), f[19] field
    // 22 (starttime).
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// The identity (pid and start time) of a running process.
pub fn proc_id(pid: i32) -> Option<ProcId> {
    read_stat(pid).map(|s| ProcId {
        pid,
        start: s.start,
    })
}

/// Whether this exact process still runs (not gone, not a zombie, not reused).
pub fn proc_alive(p: ProcId) -> bool {
    match read_stat(p.pid) {
        Some(st) => st.start == p.start && st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

/// The comm (process name) of a pid, if readable.
pub fn proc_comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Live (non-zombie) children of `parent`.
pub fn live_children(parent: i32) -> Vec<ProcId> {
    let mut pids: Vec<i32> = Vec::new();
    match fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        Ok(s) => pids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
        Err(_) => {
            // Kernel without CONFIG_PROC_CHILDREN: scan every process.
            if let Ok(rd) = fs::read_dir("/proc") {
                for e in rd.flatten() {
                    if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                        if read_stat(pid).map(|st| st.ppid) == Some(parent) {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
    }
    let mut out: Vec<ProcId> = pids
        .into_iter()
        .filter_map(|pid| {
            let st = read_stat(pid)?;
            (st.ppid == parent && st.state != 'Z' && st.state != 'X').then_some(ProcId {
                pid,
                start: st.start,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Resident memory of a process in KiB (0 if it is gone).
pub fn vm_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Copies `src` to `dst` as an executable, through a `cp` child: a file this
/// (multi-threaded) process had open for writing could leak into a child another test
/// thread is forking, making exec of it fail with "Text file busy" until that child
/// execs.
pub fn install_exec(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp {} {}: {st:?}",
        src.display(),
        dst.display()
    );
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// An example's binary (`target/…/examples/NAME`), built on its first use in this
/// test run: `cargo test --test suite X::` alone builds no examples, and a stale one
/// would test older code. One build at a time (cargo would wait on its lock anyway).
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = Path::new(corral_bin())
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_string());
    }
    path
}

/// Example `name` (built once per run) copied into a temp dir of its own, so that
/// an upgrade can exec it (and a rebuild cannot change it under a test).
pub fn example_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let built = example_bin(name);
    let dir = tempfile::Builder::new()
        .prefix(&format!("corral-example-{name}-"))
        .tempdir()
        .expect("temp dir");
    let bin = dir.path().join(name);
    install_exec(&built, &bin);
    (dir, bin)
}

/// A copy of the built corral in a temp dir of its own, for tests that upgrade to
/// (or replace) the binary: an upgrade execs the binary's path.
pub fn copy_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("corral-bin-")
        .tempdir()
        .expect("create temp dir for the binary");
    let path = dir.path().join("corral");
    install_exec(Path::new(corral_bin()), &path);
    (dir, path)
}
