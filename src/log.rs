//! Logging: tracing to stderr or to a file that SIGUSR1 reopens.
//!
//! The master writes synchronously: it forks, so it must never own a writer thread.
//! A worker switches, right after fork, to a tracing-appender non-blocking writer so a
//! slow disk never stalls its event loop; lines dropped under pressure are counted and
//! reported rather than silently lost. Both go through one `MakeWriter` that consults a
//! process-wide sink, because tracing's global subscriber can only be installed once
//! and a forked worker inherits the master's.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open log file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("invalid log level `{level}`: {reason}")]
    Level { level: String, reason: String },
}

/// Where lines go: stderr, or a file that can be reopened by path.
struct Target {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl Target {
    fn open(path: Option<&Path>) -> Result<Target, LogError> {
        let file = match path {
            Some(p) => Some(open_append(p)?),
            None => None,
        };
        Ok(Target {
            path: path.map(Path::to_path_buf),
            file,
        })
    }

    fn reopen(&mut self) -> Result<(), LogError> {
        if let Some(p) = &self.path {
            self.file = Some(open_append(p)?);
        }
        Ok(())
    }
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

fn open_append(p: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|source| LogError::Open {
            path: p.to_path_buf(),
            source,
        })
}

/// A writer the non-blocking thread owns, which reopens the shared target on demand.
struct SharedTarget;

impl Write for SharedTarget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = sink();
        match &mut *s {
            Sink::Sync(t) | Sink::Async { target: t, .. } => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut s = sink();
        match &mut *s {
            Sink::Sync(t) | Sink::Async { target: t, .. } => t.flush(),
        }
    }
}

enum Sink {
    /// Master (and tools): write in the calling thread.
    Sync(Target),
    /// Worker: hand lines to a writer thread, which writes to `target`.
    Async {
        target: Target,
        writer: NonBlocking,
        guard: Option<WorkerGuard>,
    },
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static DROPPED_REPORTED: AtomicU64 = AtomicU64::new(0);

fn sink() -> MutexGuard<'static, Sink> {
    let m = SINK.get_or_init(|| {
        Mutex::new(Sink::Sync(Target {
            path: None,
            file: None,
        }))
    });
    // A panic while holding the lock leaves a perfectly usable sink behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `MakeWriter` installed in the subscriber.
#[derive(Clone, Copy)]
struct LogWriter;

/// One line's writer: either the sync target (behind the lock) or a non-blocking handle.
enum LineWriter {
    Sync,
    Async(NonBlocking),
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Sync => SharedTarget.write(buf),
            LineWriter::Async(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LineWriter::Sync => SharedTarget.flush(),
            LineWriter::Async(w) => w.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        match &*sink() {
            Sink::Sync(_) => LineWriter::Sync,
            Sink::Async { writer, .. } => LineWriter::Async(writer.clone()),
        }
    }
}

fn filter_for(level: &str) -> Result<EnvFilter, LogError> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| level.to_string());
    EnvFilter::try_new(&spec).map_err(|e| LogError::Level {
        level: spec.clone(),
        reason: e.to_string(),
    })
}

/// Installs the global subscriber, writing synchronously to `file` or stderr.
pub fn init(level: &str, file: Option<&Path>) -> Result<(), LogError> {
    let target = Target::open(file)?;
    *sink() = Sink::Sync(target);
    let (filter, handle) = reload::Layer::new(filter_for(level)?);
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(LogWriter)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests in one process) keeps the first subscriber; fine.
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
    Ok(())
}

/// Applies a reloaded config's level and file. A file that cannot be opened leaves the
/// current target in place and is reported.
pub fn reconfigure(level: &str, file: Option<&Path>) -> Result<(), LogError> {
    let filter = filter_for(level)?;
    let mut s = sink();
    if let Sink::Sync(t) = &mut *s {
        if t.path.as_deref() != file {
            *t = Target::open(file)?;
        }
    }
    drop(s);
    if let Some(h) = FILTER.get() {
        let _ = h.modify(|f| *f = filter);
    }
    Ok(())
}

/// Reopens the log file by its path (after logrotate moved it away).
pub fn reopen() -> Result<(), LogError> {
    match &mut *sink() {
        Sink::Sync(t) | Sink::Async { target: t, .. } => t.reopen(),
    }
}

/// In a freshly forked worker: move writing to a background thread. The thread is
/// started here, after fork, never in the master.
pub fn become_worker() {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("corral-log")
        .finish(SharedTarget);
    let mut s = sink();
    let target = match std::mem::replace(
        &mut *s,
        Sink::Sync(Target {
            path: None,
            file: None,
        }),
    ) {
        Sink::Sync(t) | Sink::Async { target: t, .. } => t,
    };
    *s = Sink::Async {
        target,
        writer,
        guard: Some(guard),
    };
}

/// Lines the worker's writer dropped since the last call (0 in the master).
pub fn take_dropped() -> u64 {
    let total = match &*sink() {
        Sink::Async { writer, .. } => writer.error_counter().dropped_lines() as u64,
        Sink::Sync(_) => 0,
    };
    let before = DROPPED_REPORTED.swap(total, Ordering::Relaxed);
    total.saturating_sub(before)
}

/// Flushes and stops the worker's writer thread; call before a worker exits.
pub fn shutdown() {
    let guard = match &mut *sink() {
        Sink::Async { guard, .. } => guard.take(),
        Sink::Sync(_) => None,
    };
    drop(guard);
}
