//! Ctrl-C for the commands that run until interrupted (`corral top`, the reload and
//! upgrade follower, `corral chaos`): signal-hook's flag, which the command's loop
//! reads between two steps, so that it ends cleanly (the terminal restored, the bar
//! finished, the report printed) instead of being killed mid-line. A second signal of
//! the same kind ends the command at once, should a step be stuck.
//!
//! The master and workers read their signals from a signalfd instead (see
//! `os::signals`): they wait on many fds in one poll, and a flag would need a wake-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

/// Set once one of the registered signals arrived.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Registers `signals` (e.g. [`SIGINT`], [`SIGTERM`]). A signal that cannot be
    /// registered keeps its default action (it ends the command as before), so this
    /// never fails.
    pub fn on(signals: &[i32]) -> Interrupt {
        let flag = Arc::new(AtomicBool::new(false));
        for &sig in signals {
            // In this order: the shutdown looks at the flag before this signal sets it.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)));
        }
        Interrupt(flag)
    }

    /// True once a registered signal arrived.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_the_flag_instead_of_ending_the_process() {
        // SIGUSR2: nothing sends it to a test process (a terminal sends SIGHUP and
        // SIGWINCH), and raise() directs it at this thread only.
        use signal_hook::consts::SIGUSR2;
        let i = Interrupt::on(&[SIGUSR2]);
        assert!(!i.requested());
        signal_hook::low_level::raise(SIGUSR2).unwrap();
        assert!(i.requested());
    }
}
