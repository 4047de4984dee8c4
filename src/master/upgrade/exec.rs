//! The exec half of a binary upgrade: in the forked child, place the listeners where
//! the socket-activation protocol wants them and exec the new master.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::master::sockets::{Listener, LISTEN_FDS_START};

/// In a forked child about to exec a new master: places the listeners at fds 3.. and
/// `extra` right after them, clearing CLOEXEC on exactly those, and returns the
/// environment the new master needs (`LISTEN_*`, and where `extra` is).
///
/// Runs between fork and exec; it only calls async-signal-safe functions plus
/// allocation, which is fine in a child of a single-threaded parent. The one place
/// outside `os/` allowed `unsafe`: only this caller knows it is that child.
#[allow(unsafe_code)]
pub fn hand_over(listeners: &[Listener], extra: &OwnedFd) -> Result<Vec<(String, String)>, String> {
    let n = listeners.len() as RawFd;
    let sources: Vec<RawFd> = listeners
        .iter()
        .map(|l| l.fd.as_raw_fd())
        .chain([extra.as_raw_fd()])
        .collect();
    // SAFETY: we are the forked child about to exec (see above).
    unsafe { crate::os::exec::place_fds(&sources, LISTEN_FDS_START) }?;
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let pid = std::process::id();
    Ok(vec![
        ("LISTEN_PID".into(), pid.to_string()),
        ("LISTEN_FDS".into(), n.to_string()),
        ("LISTEN_FDNAMES".into(), names.join(":")),
        (
            super::READY_FD_ENV.into(),
            (LISTEN_FDS_START + n).to_string(),
        ),
    ])
}

/// `execv` of `path` with `args`, the current environment plus `env`.
pub fn exec(path: &CString, args: &[CString], env: &[(String, String)]) -> std::io::Error {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    if std::env::var_os("WATCHDOG_USEC").is_some() {
        // The watchdog follows the main process; tell the new one it is meant.
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    }
    crate::os::exec::execv(path, args)
}
