//! No worker outlives its master by more than its drain timeout plus a margin,
//! whatever state it is in.
//!
//! A healthy worker notices its master's death by EOF on the channel and drains by
//! itself. Two kinds of worker never would: a stopped one (SIGSTOP, a debugger that
//! went away) and one whose loop spins without looking at the channel. Both would
//! keep the listening port, so a restarted master could not bind it. Against the
//! first, `PR_SET_PDEATHSIG` sends SIGCONT when the master dies (the kernel delivers
//! it to a stopped process too, and SIGCONT resumes it). Against both, a small guard
//! thread watches `getppid()`: once the master is gone it waits the drain timeout
//! plus a margin, which a draining worker uses to finish, and then kills its own
//! process with SIGKILL, which no loop state can delay.
//!
//! After a binary upgrade the old master exits while its workers may still drain;
//! they are told to drain before it exits, so they end by their own drain deadline,
//! which is before the guard's.

use std::time::Duration;

use crate::os::types::{Pid, Signal};

use crate::os::process;

/// Added to the drain timeout before the guard kills: the worker's own drain
/// deadline (and the master's SIGKILL backstop, if it lived) come first.
pub const MARGIN: Duration = Duration::from_secs(1);
/// How often the guard looks at `getppid()`; it adds to the time an orphan lives.
const POLL: Duration = Duration::from_millis(200);

/// Arms both defences in a freshly forked worker whose master is `master` (its pid
/// as seen before the fork, so that a master dying during the fork is noticed).
pub fn guard(master: Pid, drain_timeout: Duration) {
    if let Err(e) = process::set_parent_death_signal(Signal::SIGCONT) {
        tracing::warn!("{e}; a stopped worker may outlive a dead master");
    }
    // PDEATHSIG only covers deaths after the prctl: a master that died earlier is
    // noticed by the thread's first getppid(), and it counts from then. The thread
    // inherits the master's signal mask, which blocks every signal the worker reads
    // from its signalfd, so none of them is ever delivered to it.
    let spawned = std::thread::Builder::new()
        .name("orphan-guard".into())
        .spawn(move || watch(master, drain_timeout));
    if let Err(e) = spawned {
        tracing::warn!("cannot start the orphan guard thread: {e}");
    }
}

fn watch(master: Pid, drain_timeout: Duration) {
    while process::parent_pid() == master {
        std::thread::sleep(POLL);
    }
    let limit = deadline_after_orphaned(drain_timeout);
    std::thread::sleep(limit);
    tracing::error!(
        "the master ({master}) died {limit:?} ago and this worker is still running: killing it"
    );
    crate::log::shutdown();
    let _ = process::kill(process::pid(), Signal::SIGKILL);
}

/// How long an orphaned worker may live after the guard noticed.
pub fn deadline_after_orphaned(drain_timeout: Duration) -> Duration {
    drain_timeout + MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_get_the_drain_timeout_and_a_margin() {
        assert_eq!(
            deadline_after_orphaned(Duration::from_secs(2)),
            Duration::from_secs(3)
        );
    }
}
