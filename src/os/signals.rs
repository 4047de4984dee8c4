//! Signals through `signalfd(2)` instead of handlers.
//!
//! The master blocks the signals it acts on and reads them from a signalfd in its poll
//! loop. This is a deliberate departure from a signal-hook self-pipe: a process that
//! forks must not carry async signal handlers into its children (a worker that inherits
//! the master's handler silently swallows SIGTERM). With signalfd there is no handler
//! anywhere, nothing to unregister after fork, and the "which signal was it" question is
//! answered by the kernel, one record per signal. A child only has to close the
//! master's signalfd, open its own for the signals it wants, and fix its mask; a child
//! about to exec clears its mask entirely.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::{Ctx, SysError};

/// The signals the master acts on (see the signals table in the README).
pub const MASTER_SIGNALS: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
];

/// The signals a worker acts on when sent to it directly (by an operator or a process
/// group): stop, drain, reopen logs.
pub const WORKER_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
];

/// Master signals a worker must survive (they are the master's business): a terminal
/// hangup or a `kill -HUP` to the process group must not kill workers.
const WORKER_IGNORED: &[Signal] = &[Signal::SIGHUP, Signal::SIGUSR2, Signal::SIGWINCH];

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    set
}

/// A non-blocking signalfd for a set of signals, which stay blocked while it lives.
#[derive(Debug)]
pub struct SignalReader {
    fd: SignalFd,
}

impl SignalReader {
    /// Blocks `signals` and opens a signalfd for them.
    pub fn new(signals: &[Signal]) -> Result<SignalReader, SysError> {
        let set = set_of(signals);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .ctx("sigprocmask()", || {
                "blocking signals for the signalfd".into()
            })?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .ctx("signalfd()", || "creating the signal fd".into())?;
        Ok(SignalReader { fd })
    }

    /// The pending signals, in arrival order; empty when none are pending.
    pub fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }
}

impl AsFd for SignalReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// In a freshly forked worker, after the master's signalfd was closed: set up the
/// worker's signals. They stay blocked throughout, so nothing is lost or mishandled
/// between fork and this call.
pub fn become_worker() -> Result<SignalReader, SysError> {
    for &sig in WORKER_IGNORED {
        // SAFETY: installing SIG_IGN runs no code of ours in signal context.
        unsafe {
            sigaction(
                sig,
                &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
            )
        }
        .ctx("sigaction()", || format!("ignoring {sig} in a worker"))?;
    }
    // Rust's runtime catches SIGSEGV and SIGBUS to report stack overflows, and a
    // SIGSEGV sent with kill(2) (not a fault) then vanishes. An operator or a test that
    // sends one to a worker means it: let the default action run.
    for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe {
            sigaction(
                sig,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        }
        .ctx("sigaction()", || format!("resetting {sig} in a worker"))?;
    }
    let reader = SignalReader::new(WORKER_SIGNALS)?;
    let mut unblock = set_of(MASTER_SIGNALS);
    for &s in WORKER_SIGNALS {
        unblock.remove(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&unblock), None)
        .ctx("sigprocmask()", || "unblocking signals in a worker".into())?;
    Ok(reader)
}

/// In a child about to exec another program: default dispositions for everything we
/// touched and an empty mask, so the new program starts as if launched afresh (a blocked
/// signal mask survives exec and would leave the new master deaf).
pub fn reset_for_exec() -> Result<(), SysError> {
    for &sig in MASTER_SIGNALS.iter().chain(WORKER_IGNORED) {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe {
            sigaction(
                sig,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        }
        .ctx("sigaction()", || format!("resetting {sig} before exec"))?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .ctx("sigprocmask()", || {
            "clearing the signal mask before exec".into()
        })
}

/// Restores SIGPIPE's default action (Rust ignores it), for short-lived client
/// commands whose output may go to a pipe that closes early.
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    let _ = unsafe {
        sigaction(
            Signal::SIGPIPE,
            &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
        )
    };
}

/// A signal's conventional name, e.g. `SIGSEGV`, for logs and exit reports.
pub fn name(sig: Signal) -> &'static str {
    sig.as_str()
}
