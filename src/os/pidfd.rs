//! Following a process that is not our child: a pidfd (`pidfd_open(2)`) turns readable
//! when the process exits and signals exactly that process even if its pid is reused,
//! and `/proc/PID/stat` may still tell how a not-yet-reaped process ended.
//!
//! A binary upgrade detaches the new master (double fork) so that the service manager,
//! not the old master, is its parent; the old master can then no longer `waitpid` it,
//! and this is what it has instead.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::fd::poll_readable;
use super::process::ExitReason;
use super::procfs;
use super::syscall::cvt;
use super::{Ctx, SysError};

/// A pidfd: a handle on one process that outlives its pid.
pub struct PidFd {
    fd: OwnedFd,
    pid: Pid,
}

impl PidFd {
    /// `pidfd_open(pid)`; the process must exist (it may be a zombie).
    pub fn open(pid: Pid) -> Result<PidFd, SysError> {
        // SAFETY: pidfd_open takes a pid and flags, no memory; it returns a new fd
        // (CLOEXEC by definition) or -1.
        let raw = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })
            .ctx("pidfd_open()", || format!("following pid {pid}"))?;
        // SAFETY: the kernel just gave us this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// True once the process has exited (zombie or reaped), waiting up to `timeout_ms`.
    pub fn exited(&self, timeout_ms: i32) -> bool {
        poll_readable(self.fd.as_fd(), timeout_ms)
    }

    /// Sends `sig` to this very process; one that is gone is not an error.
    pub fn signal(&self, sig: Signal) -> Result<(), SysError> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags reads no memory.
        let r = cvt(unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        });
        match r {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(SysError::from_io(
                "pidfd_send_signal()",
                format!("sending {} to pid {}", sig.as_str(), self.pid),
                &e,
            )),
            _ => Ok(()),
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Start time of `pid` (field 22, clock ticks since boot): with the pid, it names one
/// process for good, whereas a pid alone may be reused.
pub fn start_time(pid: Pid) -> Option<u64> {
    procfs::stat(pid.as_raw()).ok().map(|s| s.start_time)
}

/// How a process that is not our child ended, read from its zombie's `exit_code`
/// (field 52, a wait status). None if it was already reaped by its parent, is not a
/// zombie yet, or the pid now names another process (`start` differs).
pub fn zombie_exit(pid: Pid, start: u64) -> Option<ExitReason> {
    let s = procfs::stat(pid.as_raw()).ok()?;
    if s.state != 'Z' || s.start_time != start {
        return None;
    }
    Some(decode_wait_status(s.exit_code?))
}

fn decode_wait_status(status: i32) -> ExitReason {
    let sig = status & 0x7f;
    if sig == 0 {
        return ExitReason::Code((status >> 8) & 0xff);
    }
    match Signal::try_from(sig) {
        Ok(signal) => ExitReason::Signal {
            signal,
            core_dumped: status & 0x80 != 0,
        },
        // Not a signal nix knows (a real-time one): say what we can.
        Err(_) => ExitReason::Code(128 + sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode_wait_status(0), ExitReason::Code(0));
        assert_eq!(decode_wait_status(1 << 8), ExitReason::Code(1));
        assert_eq!(
            decode_wait_status(11 | 0x80),
            ExitReason::Signal {
                signal: Signal::SIGSEGV,
                core_dumped: true
            }
        );
        assert_eq!(
            decode_wait_status(9),
            ExitReason::Signal {
                signal: Signal::SIGKILL,
                core_dumped: false
            }
        );
    }

    #[test]
    fn follows_a_process_to_its_exit() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exit 3"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let p = PidFd::open(pid).unwrap();
        let start = start_time(pid).unwrap();
        assert!(!p.exited(0));
        assert_eq!(zombie_exit(pid, start), None, "alive is not a zombie");
        drop(child.stdin.take());
        assert!(p.exited(10_000));
        assert_eq!(zombie_exit(pid, start), Some(ExitReason::Code(3)));
        assert_eq!(zombie_exit(pid, start + 1), None, "another process");
        child.wait().unwrap();
        assert_eq!(zombie_exit(pid, start), None, "reaped");
        p.signal(Signal::SIGKILL).unwrap();
    }
}
