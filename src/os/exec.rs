//! Starting another program from a forked child: placing inherited fds at fixed
//! numbers, a process group of its own, and `execv`.

use std::ffi::CString;
use std::os::fd::RawFd;

use super::syscall::cvt;

/// Places `sources` at fds `first`, `first + 1`, … with CLOEXEC cleared on exactly
/// those, as the socket-activation protocol wants them.
///
/// Every source is first moved above the target range, so placing one can never
/// overwrite another still to be placed.
///
/// # Safety
///
/// Only in a forked child about to exec: whatever this process holds at the target
/// numbers is replaced under its owner (an `OwnedFd` there would later close a
/// listener, or the listener be mistaken for it), and the copies above the range are
/// left open for the exec to close (they are CLOEXEC).
pub unsafe fn place_fds(sources: &[RawFd], first: RawFd) -> Result<(), String> {
    let floor = first + sources.len() as RawFd + 1;
    let mut temps = Vec::with_capacity(sources.len());
    for &src in sources {
        // SAFETY: F_DUPFD_CLOEXEC only makes a new fd; a source that is not open
        // fails with EBADF. No memory is involved.
        let t = cvt(unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor) })
            .map_err(|e| format!("fcntl(F_DUPFD_CLOEXEC) failed: {e}"))?;
        temps.push(t);
    }
    for (i, &t) in temps.iter().enumerate() {
        let target = first + i as RawFd;
        // SAFETY: dup2 onto a number we deliberately take over, which the caller
        // vouched for (see `# Safety`). The new fd is not CLOEXEC.
        cvt(unsafe { libc::dup2(t, target) })
            .map_err(|e| format!("dup2() to fd {target} failed: {e}"))?;
    }
    Ok(())
}

/// Puts the calling process in a process group of its own, so that everything it
/// forks can be signalled at once with `kill(-pgid)`.
pub fn own_process_group() {
    // SAFETY: setpgid has no memory arguments.
    unsafe {
        libc::setpgid(0, 0);
    }
}

/// `execv(path, args)`; returns only on failure, with the reason.
pub fn execv(path: &CString, args: &[CString]) -> std::io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: path and argv are NUL-terminated C strings kept alive by the caller for
    // the duration of the call, and argv ends with a null pointer. execv only returns
    // on failure.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    std::io::Error::last_os_error()
}
