//! Starting the new master of a binary upgrade as a *detached* process: a double fork.
//!
//! The old master forks an intermediate, which forks the new master and exits at once,
//! so the new master is re-parented to the nearest subreaper, i.e. PID 1 or the service
//! manager. systemd follows `MAINPID=` properly only for its own children: a main pid
//! whose parent is someone else is "alien", and on `systemctl stop` systemd does not
//! wait for an alien main process but SIGKILLs the whole unit at once (no drain).
//!
//! The old master follows the new one with a pidfd instead of `waitpid`. The pidfd is
//! opened while the intermediate still lives (so the new master, exited or not, cannot
//! have been reaped and its pid reused yet), then the intermediate is released and
//! reaped here, synchronously: it does nothing but fork and wait for that release.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::os::master::Pid;

use crate::os::pidfd::{self, PidFd};
use crate::os::process::{self, Forked};
use crate::os::{fd, SysError};

/// How long the intermediate may take to report the new master's pid (it only forks).
const INTERMEDIATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new master waits to be re-parented before it execs anyway.
const REPARENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the new master could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    Sys(#[from] SysError),
    #[error("the intermediate process failed to start the new master: {0}")]
    Intermediate(String),
}

/// The detached new master, as the old master follows it.
pub struct Spawned {
    pub pid: Pid,
    pub pidfd: PidFd,
    /// Its start time in /proc, to recognise its zombie (and not a pid reused since).
    pub start: u64,
}

/// Double-forks; `exec` runs in the new master (already re-parented, in a process
/// group of its own) and returns only on failure, with the reason, which is then
/// written to `report` before the child exits 127.
pub fn detached(exec: impl FnOnce() -> String, report: &OwnedFd) -> Result<Spawned, SpawnError> {
    let (pid_r, pid_w) = fd::pipe()?;
    let (go_r, go_w) = fd::pipe()?;
    match process::fork(|| "starting the intermediate of a binary upgrade".into())? {
        Forked::Child => {
            // The intermediate. Only the old master may hold the release pipe's
            // writing end, or its closing would never reach us.
            drop(go_w);
            drop(pid_r);
            intermediate(exec, report, pid_w, go_r)
        }
        Forked::Parent(mid) => {
            drop(pid_w);
            drop(go_r);
            let spawned = read_pid(&pid_r).and_then(|pid| match PidFd::open(pid) {
                Ok(pidfd) => {
                    let start = pidfd::start_time(pid).unwrap_or(0);
                    Ok(Spawned { pid, pidfd, start })
                }
                Err(e) => {
                    // Unfollowable, so it must not run: its pid is still safe to use,
                    // as the intermediate has not exited and cannot have reaped it.
                    let _ = process::kill(pid, crate::os::master::Signal::SIGKILL);
                    Err(e.into())
                }
            });
            // Release the intermediate and reap it: it exits as soon as it sees EOF.
            drop(go_w);
            if process::wait_child(mid).is_none() {
                tracing::warn!(
                    pid = mid.as_raw(),
                    "could not reap the upgrade's intermediate"
                );
            }
            spawned
        }
    }
}

/// The intermediate's whole life: fork the new master, tell its pid, wait for the
/// release, exit.
fn intermediate(
    exec: impl FnOnce() -> String,
    report: &OwnedFd,
    pid_w: OwnedFd,
    go_r: OwnedFd,
) -> ! {
    let me = process::pid();
    match process::fork(|| "starting the new master".into()) {
        Ok(Forked::Child) => {
            drop(pid_w);
            drop(go_r);
            // Its own process group: a rollback kills the new master and all it forked.
            crate::os::exec::own_process_group();
            // Exec only once systemd (or init) is our parent, so that the MAINPID= we
            // send when ready names one of systemd's children.
            process::wait_reparented(me, REPARENT_TIMEOUT);
            let why = exec();
            super::report_raw(report, &why);
            process::exit_now(127)
        }
        Ok(Forked::Parent(child)) => {
            let _ = fd::write(pid_w.as_fd(), format!("{child}\n").as_bytes());
            fd::poll_readable(go_r.as_fd(), INTERMEDIATE_TIMEOUT.as_millis() as i32 * 2);
            process::exit_now(0)
        }
        Err(e) => {
            let _ = fd::write(pid_w.as_fd(), format!("error {e}\n").as_bytes());
            process::exit_now(1)
        }
    }
}

/// Reads "PID\n" or "error WHY\n" from the intermediate, within a deadline.
fn read_pid(pipe: &OwnedFd) -> Result<Pid, SpawnError> {
    let deadline = Instant::now() + INTERMEDIATE_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SpawnError::Intermediate(format!(
                "no pid within {INTERMEDIATE_TIMEOUT:?}"
            )));
        }
        if !fd::poll_readable(pipe.as_fd(), left.as_millis().max(1) as i32) {
            continue;
        }
        match fd::read(pipe.as_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(SpawnError::Intermediate(format!("reading its pid: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("").trim();
    if let Some(why) = line.strip_prefix("error ") {
        return Err(SpawnError::Intermediate(why.to_string()));
    }
    match line.parse::<i32>() {
        Ok(p) if p > 0 => Ok(Pid::from_raw(p)),
        _ => Err(SpawnError::Intermediate(format!(
            "it exited without naming the new master (said {line:?})"
        ))),
    }
}
