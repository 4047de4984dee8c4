//! What an old master that is PID 1 of its pid namespace (a container's init) becomes
//! after a binary upgrade: a minimal init for its successor.
//!
//! PID 1 cannot exit without the kernel killing the whole namespace, new master
//! included, and the double-forked new master is re-parented to PID 1 anyway. So once
//! its own workers have drained, the old master drops everything it had (listeners,
//! control socket, pid file) and only: forwards the signals an operator or the
//! container runtime sends (TERM, QUIT, INT, HUP, USR1, USR2, WINCH) to the master of
//! the day, reaps every orphan, and exits with that master's exit status. A later
//! upgrade from that master is followed too: its new master is re-parented here as
//! well, and once the old one has exited it is the one corral process left among our
//! children.

use crate::os::posix::OsStrExt;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os::master::Pid;
use crate::os::master::Signal;
use tracing::{error, info, warn};

use crate::os::fd::poll_readable;
use crate::os::process::{self, ExitReason};
use crate::os::procfs;
use crate::os::signals::SignalReader;

/// Signals passed on to the master we stand in for.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The master that took over from a PID-1 master, as the shim follows it.
#[derive(Debug)]
pub struct Successor {
    pub pid: Pid,
    /// Its exit, if it was reaped while we were still draining.
    pub exit: Option<ExitReason>,
    /// The binary it was started from: the next master of a later upgrade runs it too.
    pub binary: PathBuf,
}

/// Runs the shim until the followed master is gone for good; returns its exit code.
pub fn run(mut s: Successor) -> i32 {
    process::set_name("corral-init");
    let mut all = FORWARDED.to_vec();
    all.push(Signal::SIGCHLD);
    let signals = match SignalReader::new(&all) {
        Ok(r) => Some(r),
        Err(e) => {
            // Without it we can still reap and follow, by polling.
            error!("init shim: {e}; signals will not be forwarded");
            None
        }
    };
    info!(
        pid = s.pid.as_raw(),
        "init shim: PID 1 stays for the new master; forwarding signals to it"
    );
    loop {
        if let Some(exit) = s.exit.take() {
            match next_master(&s.binary) {
                Next::One(pid) => {
                    info!(
                        old = s.pid.as_raw(),
                        new = pid.as_raw(),
                        "init shim: master {} exited with {exit}; following its successor",
                        s.pid
                    );
                    s.pid = pid;
                }
                Next::None => {
                    info!("init shim: master {} exited with {exit}; exiting", s.pid);
                    return exit_code(exit);
                }
                Next::Ambiguous(pids) => {
                    // Not sure which one is the master: forward nothing until it is clear.
                    warn!(
                        "init shim: master {} exited; candidates {pids:?}, waiting",
                        s.pid
                    );
                    s.exit = Some(exit);
                }
            }
        }
        let ready = match &signals {
            Some(r) => poll_readable(r.as_fd(), 1000),
            None => {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        };
        if ready {
            for sig in signals.iter().flat_map(|r| r.drain()) {
                if sig == Signal::SIGCHLD || s.exit.is_some() {
                    continue;
                }
                info!("init shim: forwarding {} to master {}", sig.as_str(), s.pid);
                if let Err(e) = process::kill(s.pid, sig) {
                    warn!("init shim: {e}");
                }
            }
        }
        // SIGCHLD coalesces and may have come before we opened the signalfd: always reap.
        for (pid, reason) in process::reap_all() {
            if pid == s.pid {
                s.exit = Some(reason);
            }
        }
    }
}

enum Next {
    None,
    One(Pid),
    Ambiguous(Vec<Pid>),
}

/// Our children that run `binary` and are not workers: the masters.
fn next_master(binary: &Path) -> Next {
    let me = process::pid().as_raw();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Next::None;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.ppid != me || stat.state == 'Z' {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = argv0.split(|&b| b == 0).next().unwrap_or_default();
        if comm.trim() != "corral-worker" && Path::new(OsStr::from_bytes(argv0)) == binary {
            found.push(Pid::from_raw(pid));
        }
    }
    match found.len() {
        0 => Next::None,
        1 => Next::One(found[0]),
        _ => Next::Ambiguous(found),
    }
}

/// The exit code a shell would report for `reason`.
fn exit_code(reason: ExitReason) -> i32 {
    match reason {
        ExitReason::Code(c) => c,
        ExitReason::Signal { signal, .. } => 128 + signal as i32,
    }
}
