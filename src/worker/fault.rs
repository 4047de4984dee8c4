//! `corral fault` inside a worker: the master sends `ToWorker::Fault` and the worker
//! fails for real, so that what the master detects and how it recovers is what a real
//! crash, hang, leak or fd exhaustion would cause. Faults the worker survives (`slow`,
//! `emfile`) end by themselves, and the worker tells the master when.

use std::fs::File;
use std::time::{Duration, Instant};

use crate::os::types::Signal;
use tracing::{error, warn};

use crate::fault::kind::{FaultKind, EMFILE_HOLD_MS, SLOW_FOR_MS};
use crate::os::process;

/// Most fds `emfile` opens, in case the limit is far higher than a test box's.
const EMFILE_MAX: usize = 1 << 20;

/// Faults in progress in this worker.
#[derive(Default)]
pub struct Injected {
    /// `leak`: memory kept, touched, so it counts in the RSS.
    leaked: Vec<Vec<u8>>,
    /// `slow`: added to every loop iteration until the instant.
    slow: Option<(Duration, Instant)>,
    /// `emfile`: every fd the worker could open, released at the instant.
    held: Option<(Vec<File>, Instant)>,
}

impl Injected {
    /// Does `kind`; returns when the worker must look again (a fault that ends by
    /// itself). Crashes and hangs do not return.
    pub fn apply(&mut self, kind: FaultKind) -> Option<Instant> {
        error!("injected fault (corral fault {kind}): doing it now");
        let now = Instant::now();
        match kind {
            FaultKind::Kill => {
                let _ = process::kill(process::pid(), Signal::SIGKILL);
                None
            }
            FaultKind::Segv => segv(),
            FaultKind::Abort => std::process::abort(),
            FaultKind::Panic => {
                crate::fault::arm_panic();
                None
            }
            FaultKind::Hang => hang(),
            FaultKind::Stall => {
                // Stopped until the watchdog's SIGABRT and SIGCONT end it.
                let _ = process::kill(process::pid(), Signal::SIGSTOP);
                None
            }
            FaultKind::Leak { mib } => {
                let mib = mib.min(crate::fault::kind::MAX_LEAK_MIB) as usize;
                let mut block = vec![0u8; mib << 20];
                // Touch every page (calloc'd pages are not resident until written).
                for b in block.iter_mut().step_by(4096) {
                    *b = 1;
                }
                self.leaked.push(std::hint::black_box(block));
                None
            }
            FaultKind::Slow { ms } => {
                let until = now + Duration::from_millis(SLOW_FOR_MS);
                self.slow = Some((Duration::from_millis(ms), until));
                Some(until)
            }
            FaultKind::Emfile => {
                let mut files = Vec::new();
                let why = loop {
                    if files.len() >= EMFILE_MAX {
                        break "the cap".to_string();
                    }
                    match File::open("/dev/null") {
                        Ok(f) => files.push(f),
                        Err(e) => break e.to_string(),
                    }
                };
                warn!(
                    opened = files.len(),
                    "injected fault: holding every fd it could open ({why}) for {EMFILE_HOLD_MS} ms"
                );
                let until = now + Duration::from_millis(EMFILE_HOLD_MS);
                self.held = Some((files, until));
                Some(until)
            }
            FaultKind::CrashOnStart { .. } | FaultKind::BadUpgrade | FaultKind::Escape => None,
        }
    }

    /// The extra latency of `slow`, slept once per loop iteration. Asked every
    /// iteration, so without a `slow` fault it reads no clock.
    pub fn iteration_delay(&self) -> Option<Duration> {
        let (d, until) = self.slow?;
        (Instant::now() < until).then_some(d)
    }

    /// Ends the faults that are due; returns what ended, for the master.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut over = Vec::new();
        if let Some((d, until)) = self.slow {
            if until <= now {
                self.slow = None;
                over.push(format!(
                    "slow: {} ms per loop iteration for {SLOW_FOR_MS} ms, over",
                    d.as_millis()
                ));
            }
        }
        if self.held.as_ref().is_some_and(|(_, until)| *until <= now) {
            if let Some((files, _)) = self.held.take() {
                over.push(format!("emfile: held {} fds, released", files.len()));
            }
        }
        over
    }
}

/// A real invalid memory access: the kernel sends SIGSEGV, as for a service bug.
fn segv() -> ! {
    crate::os::process::segfault()
}

/// The event loop stops turning: no heartbeat, no IO, until the watchdog kills it.
/// It sleeps in short slices rather than burning a CPU the other workers need.
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `escape`: makes each attacker's attempt for real (see `os::escape`) and logs
/// what it met. The address to dial is a loopback port that no listener or
/// upstream of `config` uses; the file to write is in the system's temporary
/// directory, which no worker has any business writing to.
pub fn escape(config: &crate::config::Config) -> Vec<crate::os::escape::Attempt> {
    use std::net::{Ipv4Addr, SocketAddrV4};
    let used = format!("{config:?}");
    let port = [9u16, 7, 1, 13]
        .into_iter()
        .find(|p| !used.contains(&format!(":{p}\"")) && !used.contains(&format!(":{p},")))
        .unwrap_or(9);
    let elsewhere = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let outside = std::env::temp_dir().join(format!("corral-escape-{}", process::pid()));
    let master = process::parent_pid().as_raw();
    // A file every user may read: a worker off the filesystem (Landlock) cannot.
    let readable = config.source.to_string_lossy().into_owned();
    let attempts =
        crate::os::escape::attempt_all(master, elsewhere, &outside.to_string_lossy(), &readable);
    for a in &attempts {
        if a.blocked {
            warn!(attempt = %a.name, "injected fault (escape): blocked: {}", a.how);
        } else {
            error!(attempt = %a.name, "injected fault (escape): NOT blocked: {}", a.how);
        }
    }
    attempts
}
