//! The master's side of running workers as another user: what each new worker does
//! to itself right after fork (limits, then the drop), and keeping the log file
//! writable for it.
//!
//! The log file is opened by the master (as root) and inherited, so writing works
//! after the drop; but a worker reopens it by path on SIGUSR1 (logrotate), which a
//! non-root worker could not do on a root-owned file. So, as nginx does on reopen,
//! the master chowns the file to the workers' user each time it opens it (start,
//! reload, reopen), before it tells the workers to reopen. Passing a fresh fd over
//! the channel instead would touch every worker's channel protocol for the same
//! outcome: the worker can write that file either way.

use tracing::{info, warn};

use crate::config::Config;
use crate::os::privs::{self, PrivsError};

/// In a freshly forked worker: applies `[worker] rlimit_*`, then drops to
/// `[master] user`/`group` if set.
pub fn enter_worker(config: &Config) -> Result<(), PrivsError> {
    if let Some(n) = config.worker.rlimit_nofile {
        let set = privs::set_nofile(n)?;
        if set < n {
            warn!("worker.rlimit_nofile = {n} is above the hard limit: this worker gets {set}");
        }
    }
    if let Some(core) = config.worker.rlimit_core {
        privs::set_core(core.0)?;
    }
    if let Some(creds) = &config.master.credentials {
        // The kernel makes a process that changed uid non-dumpable; re-allow cores
        // only when rlimit_core asks for them, since dumpable also lets that user
        // ptrace the worker.
        let cores = config.worker.rlimit_core.is_some_and(|c| c.0 > 0);
        privs::drop_to(creds, cores)?;
        tracing::info!(user = %creds.user, uid = creds.uid, gid = creds.gid, "worker dropped privileges");
    }
    limit_connects(config);
    limit_files(config);
    Ok(())
}

/// Takes the worker off the filesystem (Landlock): it needs no path after set-up but
/// its own `/proc/<pid>` and `/dev/null` (see `os::landlock`), and paths a custom
/// service declared. Only under `enforce`.
fn limit_files(config: &Config) {
    if config.worker.seccomp != crate::config::SeccompMode::Enforce {
        return;
    }
    match crate::os::landlock::restrict_fs() {
        Ok(crate::os::landlock::Applied::Restricted) => {}
        Ok(crate::os::landlock::Applied::Unsupported(abi)) => tracing::debug!(
            abi,
            "no Landlock on this kernel: workers rely on seccomp and their user for files"
        ),
        Err(e) => warn!("cannot take this worker off the filesystem with Landlock: {e}"),
    }
}

/// A proxy worker may connect over TCP to its upstreams' ports only (Landlock, where
/// the kernel has network rules): seccomp must allow it `connect`, but cannot see
/// where to. Set here, before the worker starts any thread, because Landlock binds
/// the calling thread and the threads it starts later. Only under `enforce` (`log`
/// refuses nothing), and not when a custom service declared `connect` (it dials
/// where it likes).
fn limit_connects(config: &Config) {
    if config.worker.seccomp != crate::config::SeccompMode::Enforce
        || crate::os::seccomp::extra().contains(&libc::SYS_connect)
    {
        return;
    }
    let proxies: Vec<_> = config
        .listen
        .iter()
        .filter_map(crate::service::proxy::options::of)
        .collect();
    if proxies.is_empty() {
        // No sockets at all: seccomp refuses socket(2).
        return;
    }
    let ports: Vec<u16> = proxies
        .iter()
        .flat_map(|p| p.resolved.iter().map(|a| a.port()))
        .collect();
    match crate::os::landlock::restrict_tcp(&ports) {
        Ok(crate::os::landlock::Applied::Restricted) => {}
        Ok(crate::os::landlock::Applied::Unsupported(abi)) => tracing::debug!(
            abi,
            "no Landlock network rules on this kernel: proxy workers may connect anywhere"
        ),
        Err(e) => warn!("cannot restrict this worker's connects with Landlock: {e}"),
    }
}

/// Gives the log file (the current period's, when it rolls) to the workers' user, so
/// that they can reopen it.
pub fn give_log_file(config: &Config) {
    let file = config.log.file.as_ref().and(crate::log::current_file());
    let (Some(creds), Some(file)) = (&config.master.credentials, file) else {
        return;
    };
    // The implicit `nobody` gets the reopened file over its channel instead: the
    // operator's file keeps its owner.
    if creds.implicit {
        return;
    }
    if creds.uid == privs::euid() {
        return;
    }
    match privs::chown(&file, Some(creds.uid), Some(creds.gid)) {
        Ok(()) => {
            info!(file = %file.display(), user = %creds.user, "log file given to the workers' user")
        }
        Err(e) => warn!(
            "{e}; workers running as {} may not reopen the log",
            creds.user
        ),
    }
}
