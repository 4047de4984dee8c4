//! Binary upgrade and start-up reporting.
//!
//! A starting master reports "serving" (or why it failed) over a pipe to whoever waits
//! for it: the old master during a binary upgrade, or the launcher in daemon mode. The
//! old master commits the upgrade only on that report; if the pipe closes without it,
//! the new master exits, or `upgrade_timeout` passes, it kills the new master's whole
//! process group and keeps serving — rollback needs no operator.

use crate::os::posix::OsStrExt;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::os::master::Pid;

use crate::os::fd;
use crate::os::pidfd::{self, PidFd};
use crate::os::process::{self, ExitReason};

mod exec;
mod predecessor;
mod run;
pub mod shim;
mod spawn;
pub use predecessor::{env_value as predecessor_env, Predecessor, PREDECESSOR_ENV};
pub use shim::Successor;

/// The master's upgrade part: the binary it execs, and the other master of an
/// upgrade on either side of it.
pub struct Sides {
    /// The binary to exec on upgrade.
    pub binary: PathBuf,
    /// A new master took over: our pid file is `.oldbin` and the control socket path
    /// is no longer ours to remove.
    pub handed_over: bool,
    /// As PID 1 of a pid namespace, the master we handed over to: we stay as its init.
    pub successor: Option<Successor>,
    /// The old master of the upgrade that started us, while it still drains: a stop
    /// waits for it (see `Predecessor`).
    pub predecessor: Option<Predecessor>,
    /// The channel to the other master of a binary upgrade: the new one (made for the
    /// upgrade in flight, used once it is committed) or the old one (that started us,
    /// while it still drains).
    pub xfer: super::xfer::Links,
}
pub use spawn::{detached, SpawnError, Spawned};

/// Environment variable naming the fd on which a new master reports readiness.
pub const READY_FD_ENV: &str = "CORRAL_UPGRADE_READY_FD";

/// Environment variable carrying the old master's newest generation, so that the new
/// master's numbering continues from it instead of starting again at 1: status, logs
/// and `corral_generation` never go backwards across an upgrade.
pub const GENERATION_ENV: &str = "CORRAL_UPGRADE_GENERATION";

/// The first generation this master runs: one past the old master's newest when an
/// upgrade started us, else 1. The variable is removed so our own children and later
/// upgrades never see a stale value.
pub fn first_generation() -> u64 {
    let Some(value) = std::env::var_os(GENERATION_ENV) else {
        return 1;
    };
    std::env::remove_var(GENERATION_ENV);
    value
        .to_str()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(1, |g| g.saturating_add(1))
}

/// The writing end of a readiness report.
pub struct Reporter {
    fd: OwnedFd,
}

impl Reporter {
    pub fn new(fd: OwnedFd) -> Reporter {
        Reporter { fd }
    }

    /// The reporter an old master passed us, if we were started by an upgrade. The
    /// variable is removed so our own children never see it.
    pub fn from_env() -> Option<Reporter> {
        let raw = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        std::env::remove_var(READY_FD_ENV);
        let fd = fd::claim_inherited(raw).ok()?;
        let _ = fd::set_cloexec(fd.as_fd(), true);
        Some(Reporter { fd })
    }

    fn write(&self, line: &str) {
        let _ = fd::set_nonblocking(self.fd.as_fd(), false);
        let _ = fd::write(self.fd.as_fd(), line.as_bytes());
    }

    /// Serving: every worker reported ready.
    pub fn ready(self) {
        self.write(&format!("ready {}\n", std::process::id()));
    }

    /// Start-up failed.
    pub fn failed(self, why: &str) {
        self.write(&format!("error {}\n", why.replace('\n', " ")));
    }
}

/// What a report said.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    Ready(i32),
    Failed(String),
    /// The pipe closed with no report: the other side died.
    Closed,
}

/// Reads a report as it arrives on a non-blocking pipe; None until a line is complete.
pub fn read_report(pipe: &OwnedFd, buf: &mut Vec<u8>) -> Option<Report> {
    let mut chunk = [0u8; 512];
    loop {
        match fd::read(pipe.as_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return parse(buf),
            Err(_) => break,
        }
    }
    Some(parse(buf).unwrap_or(Report::Closed))
}

fn parse(buf: &[u8]) -> Option<Report> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8_lossy(&buf[..end]);
    Some(match line.split_once(' ') {
        Some(("ready", pid)) => Report::Ready(pid.trim().parse().unwrap_or(0)),
        Some(("error", why)) => Report::Failed(why.to_string()),
        _ => Report::Failed(format!("unintelligible report: {line}")),
    })
}

/// Blocks until a report arrives (the daemon launcher).
pub fn wait_report(pipe: &OwnedFd) -> Report {
    let mut buf = Vec::new();
    loop {
        if !fd::poll_readable(pipe.as_fd(), -1) {
            continue;
        }
        if let Some(r) = read_report(pipe, &mut buf) {
            return r;
        }
    }
}

/// An upgrade in flight, as the old master tracks it.
pub struct Upgrade {
    pub child: Pid,
    /// The new master is not our child (double fork): this tells when it exits.
    pub pidfd: PidFd,
    /// Its /proc start time, to read its zombie's exit status.
    pub child_start: u64,
    pub pipe: OwnedFd,
    pub buf: Vec<u8>,
    pub deadline: Instant,
    pub started: Instant,
    pub waiters: super::Waiters,
}

impl Upgrade {
    pub fn pipe_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// How the new master ended, as far as we can tell, if it has (waiting up to
    /// `wait_ms` for it): the pipe may close a moment before the exit is visible.
    /// Ours to reap only when we are PID 1 of a namespace (re-parenting ends here);
    /// otherwise its zombie's /proc entry says it until its parent reaps it.
    pub fn child_exit(&self, wait_ms: i32) -> Option<String> {
        if !self.pidfd.exited(wait_ms) {
            return None;
        }
        let reason: Option<ExitReason> = process::try_wait_child(self.child)
            .or_else(|| pidfd::zombie_exit(self.child, self.child_start));
        Some(match reason {
            Some(r) => format!("exited with {r}"),
            None => "exited, status unknown".into(),
        })
    }
}

/// True when we are PID 1 of our pid namespace (a container's init): the new master
/// of an upgrade is then re-parented to us, and we cannot exit without the kernel
/// killing it, so we stay as its init shim.
pub fn we_are_init() -> bool {
    process::pid().as_raw() == 1
}

/// The binary to exec on upgrade: the path we were started from, as typed (made
/// absolute), not `/proc/self/exe`, which keeps pointing at the replaced file.
pub fn binary_path() -> PathBuf {
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("corral"));
    let p = PathBuf::from(&argv0);
    if p.is_absolute() {
        return p;
    }
    if argv0.as_bytes().contains(&b'/') {
        return std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(&p);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    p
}

/// The command line for the new master: the binary and our config file (absolute, as
/// the daemon may have changed directory).
pub fn command_line(binary: &Path, config: &Path) -> Result<(CString, Vec<CString>), String> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", p.display()))
    };
    let bin = c(binary)?;
    let args = vec![bin.clone(), c(Path::new("-c"))?, c(config)?];
    Ok((bin, args))
}

/// Writes a failure straight to the raw readiness fd (in the child, after exec failed).
pub fn report_raw(fd: &OwnedFd, why: &str) {
    let _ = fd::write(fd.as_fd(), format!("error {why}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let (r, w) = fd::pipe().unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_report(&r, &mut buf), None);
        Reporter::new(w).failed("bad\nconfig");
        assert_eq!(
            read_report(&r, &mut buf),
            Some(Report::Failed("bad config".into()))
        );
        let (r, w) = fd::pipe().unwrap();
        drop(w);
        assert_eq!(read_report(&r, &mut Vec::new()), Some(Report::Closed));
        let (r, w) = fd::pipe().unwrap();
        Reporter::new(w).ready();
        assert_eq!(wait_report(&r), Report::Ready(std::process::id() as i32));
    }
}
