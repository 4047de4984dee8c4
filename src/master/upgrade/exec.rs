//! The exec half of a binary upgrade: in the forked child, place the listeners where
//! the socket-activation protocol wants them, the upgrade link above them, reset the
//! signal mask and exec the new master. Mechanism only: what to start and when is
//! `run.rs`'s policy.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::master::sockets::{Listener, LISTEN_FDS_START};
use crate::master::xfer;
use crate::os::{fd, signals};

/// Everything the new master's process needs to become the new binary.
pub(in crate::master) struct NewMaster<'a> {
    pub binary: &'a Path,
    pub path: &'a CString,
    pub args: &'a [CString],
    pub listeners: &'a [Listener],
    /// The readiness pipe's write end (it says whether it serves).
    pub report: &'a OwnedFd,
    /// The new master's end of the upgrade link, if there is one.
    pub link: Option<&'a OwnedFd>,
    /// What the new master inherits besides `LISTEN_*` and the link.
    pub env: Vec<(String, String)>,
}

impl NewMaster<'_> {
    /// In the forked child: places the fds and execs; returns only on failure, with
    /// the reason.
    pub fn exec(self) -> String {
        // Above where `hand_over` places the listeners and the readiness pipe, so
        // that neither overwrites it.
        let floor = LISTEN_FDS_START + self.listeners.len() as i32 + 2;
        // Copied above the floor first: `hand_over` dup2()s the listeners onto 3..,
        // and the link's own number may be among them (a master with few fds and
        // many reuseport sockets), which would hand the new master a listener under
        // the link's name.
        let link_fd = match self.link {
            Some(t) => match fd::dup_inheritable(t.as_fd(), floor) {
                Ok(raw) => Some(raw),
                Err(e) => return e.to_string(),
            },
            None => None,
        };
        let mut env = match hand_over(self.listeners, self.report) {
            Ok(env) => env,
            Err(e) => return e,
        };
        if let Err(e) = signals::reset_for_exec() {
            return e.to_string();
        }
        env.extend(self.env);
        if let Some(raw) = link_fd {
            env.push((xfer::XFER_FD_ENV.into(), raw.to_string()));
        }
        format!(
            "exec of {} failed: {}",
            self.binary.display(),
            exec(self.path, self.args, &env)
        )
    }
}

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
