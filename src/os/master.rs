//! The few system calls the master's loop makes directly: waiting on its fds (poll)
//! and signalling a process group, plus the process types it speaks in.

use std::os::fd::BorrowedFd;
use std::time::Duration;

pub use nix::poll::PollFlags;
pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;

use super::{Ctx, SysError};

/// Sends `sig` to the process group led by `leader`.
pub fn kill_group(leader: Pid, sig: Signal) -> Result<(), SysError> {
    nix::sys::signal::killpg(leader, sig).ctx("killpg", || {
        format!("sending {sig} to process group {leader}")
    })
}

/// Waits until one of `fds` (each with the events it waits for) is ready or `timeout`
/// passes (`None`: no timeout; capped at a minute), and returns each fd's events, in
/// order. An interrupted wait returns no events, which the loop takes as "look again".
pub fn poll(
    fds: &[(BorrowedFd<'_>, PollFlags)],
    timeout: Option<Duration>,
) -> Result<Vec<PollFlags>, SysError> {
    use nix::poll::{PollFd, PollTimeout};
    let timeout = timeout
        .map(|d| PollTimeout::from(d.as_micros().div_ceil(1000).min(60_000) as u16))
        .unwrap_or(PollTimeout::NONE);
    let mut set: Vec<PollFd<'_>> = fds.iter().map(|(fd, f)| PollFd::new(*fd, *f)).collect();
    match nix::poll::poll(&mut set, timeout) {
        Ok(_) => Ok(set
            .iter()
            .map(|p| p.revents().unwrap_or(PollFlags::empty()))
            .collect()),
        Err(nix::errno::Errno::EINTR) => Ok(vec![PollFlags::empty(); fds.len()]),
        Err(e) => Err(SysError::new("poll", "waiting in the master loop", e)),
    }
}

/// Out of fds or kernel memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`).
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
