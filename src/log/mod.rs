//! Logging: tracing to stderr or to a file that SIGUSR1 reopens, or to rolling files.
//!
//! The master writes synchronously: it forks, so it must never own a writer thread, and
//! a blocked stderr therefore stalls the master (its workers keep serving). With
//! `[log] rotation`, its writer is tracing-appender's rolling appender, which writes in
//! the calling thread too ([`rolling`]). A worker switches, right after fork, to
//! tracing-appender's non-blocking writer, lossy, whose thread is started in the
//! worker ([`nonblocking`]), so neither a slow disk nor a full pipe ever stalls its
//! event loop; lines dropped under pressure are counted and reported, not silently
//! lost. Both go through one `MakeWriter` that consults a process-wide sink, because
//! tracing's global subscriber can only be installed once and a forked worker inherits
//! the master's.

mod filter;
mod nonblocking;
mod rolling;
mod target;

use crate::program::complain;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::Rotation;
pub use filter::check as check_level;
use nonblocking::Writer;
use target::Target;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open log file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("invalid log level: {0}")]
    Level(String),
    #[error("cannot set up the log writer thread: {0}")]
    Thread(io::Error),
}

enum Sink {
    /// Master (and tools): write in the calling thread.
    Sync(Target),
    /// Worker: hand lines to the writer thread, which owns the target. `writer` is
    /// `None` once the worker shut logging down.
    Async {
        path: Option<PathBuf>,
        rotation: Rotation,
        writer: Option<Writer>,
    },
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The sink's lock. A worker's loop holds it only to clone a queue handle or swap a
/// target, never while a line is written to the disk or pipe.
fn sink() -> MutexGuard<'static, Sink> {
    let m = SINK.get_or_init(|| Mutex::new(Sink::Sync(Target::stderr())));
    // A panic while holding the lock leaves a perfectly usable sink behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `MakeWriter` installed in the subscriber.
#[derive(Clone, Copy)]
struct LogWriter;

/// One line's writer.
enum LineWriter {
    /// The master's target, written under the sink's lock.
    Sync,
    /// A worker's non-blocking writer.
    Async(NonBlocking),
    /// After shutdown.
    Discard,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Sync => match &mut *sink() {
                Sink::Sync(t) => t.write(buf),
                Sink::Async { .. } => Ok(buf.len()),
            },
            LineWriter::Async(w) => w.write(buf),
            LineWriter::Discard => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LineWriter::Sync => match &mut *sink() {
                Sink::Sync(t) => t.flush(),
                Sink::Async { .. } => Ok(()),
            },
            LineWriter::Async(w) => w.flush(),
            LineWriter::Discard => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        match &*sink() {
            Sink::Sync(_) => LineWriter::Sync,
            Sink::Async {
                writer: Some(w), ..
            } => LineWriter::Async(w.line_writer()),
            Sink::Async { writer: None, .. } => LineWriter::Discard,
        }
    }
}

/// Installs the global subscriber, writing synchronously to `file` (rolling with
/// `rotation`) or stderr.
pub fn init(level: &str, file: Option<&Path>, rotation: Rotation) -> Result<(), LogError> {
    let target = Target::open(file, rotation)?;
    let (filter, note) = filter::effective(level).map_err(LogError::Level)?;
    *sink() = Sink::Sync(target);
    let (filter, handle) = reload::Layer::new(filter);
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
    if let Some(note) = note {
        if file.is_some() {
            // The operator at the terminal would not see it in the file.
            complain!("{note}");
        }
        tracing::warn!("{note}");
    }
    Ok(())
}

/// Applies a reloaded config's level, file and rotation. A file that cannot be opened
/// leaves the current target in place and is reported.
pub fn reconfigure(level: &str, file: Option<&Path>, rotation: Rotation) -> Result<(), LogError> {
    let (filter, note) = filter::effective(level).map_err(LogError::Level)?;
    let mut s = sink();
    if let Sink::Sync(t) = &mut *s {
        if t.path.as_deref() != file || t.rotation != rotation {
            *t = Target::open(file, rotation)?;
        }
    }
    drop(s);
    if let Some(h) = FILTER.get() {
        let _ = h.modify(|f| *f = filter);
    }
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    Ok(())
}

/// Reopens the log file by its path (after logrotate moved it away). On failure the
/// current file stays in use, so no line is lost.
pub fn reopen() -> Result<(), LogError> {
    let (path, rotation, rolls) = match &*sink() {
        Sink::Sync(t) => (t.path.clone(), t.rotation, t.rolls()),
        Sink::Async { path, rotation, .. } => (path.clone(), *rotation, false),
    };
    // Opened outside the lock: a slow open must not hold up other threads' lines. Only
    // the master's target has an appender; a worker opens the plain file (see
    // `rolling`).
    let fresh = match &path {
        Some(p) if !rolls => Target::open_plain(p, rotation)?,
        _ => Target::open(path.as_deref(), rotation)?,
    };
    match &mut *sink() {
        Sink::Sync(t) => *t = fresh,
        Sink::Async {
            writer: Some(w), ..
        } => w.replace_target(fresh),
        Sink::Async { writer: None, .. } => {}
    }
    Ok(())
}

/// In the master with `[log] rotation`: when the current period is over, rolls to the
/// next file. True when it did: its workers must then be handed the new file
/// ([`file_handle`]), as after a reopen. On failure the current file stays in use.
pub fn roll() -> Result<bool, LogError> {
    match &mut *sink() {
        Sink::Sync(t) => t.roll(SystemTime::now()),
        Sink::Async { .. } => Ok(false),
    }
}

/// When the master's current log period ends (None: the log does not roll).
pub fn next_roll() -> Option<SystemTime> {
    match &*sink() {
        Sink::Sync(t) => rolling::next_boundary(t.rotation, SystemTime::now()),
        Sink::Async { .. } => None,
    }
}

/// The file being written now (the current period's when rolling); None: stderr.
pub fn current_file() -> Option<PathBuf> {
    match &*sink() {
        Sink::Sync(t) => t.current.clone(),
        Sink::Async { .. } => None,
    }
}

/// Names the master on each of its lines (`master{pid=N}: …`): during a binary upgrade
/// two masters write to one log, and "generation 3 gone" must say whose. Held for the
/// master's life; a forked worker leaves it at once ([`leave_master`]).
pub fn enter_master() -> tracing::span::EnteredSpan {
    tracing::info_span!("master", pid = std::process::id()).entered()
}

/// In a freshly forked child: stop speaking as the master. The child inherited the
/// master's entered span, and its lines (before and inside the worker's own span)
/// would otherwise carry the parent's pid. The guard stays behind in the master's
/// stack frame, which the child never returns to.
pub fn leave_master() {
    let current = tracing::Span::current();
    if current.metadata().is_some_and(|m| m.name() == "master") {
        if let Some(id) = current.id() {
            tracing::dispatcher::get_default(|d| d.exit(&id));
        }
    }
}

/// A handle on the master's log file, to pass to its workers after a reopen; `None`
/// when logging goes to stderr.
pub fn file_handle() -> Option<std::os::fd::OwnedFd> {
    match &*sink() {
        Sink::Sync(t) => t.file_handle().ok().flatten().map(Into::into),
        Sink::Async { .. } => None,
    }
}

/// In a worker: write to `fd`, the log file the master just reopened, from now on.
/// A worker whose filesystem access is restricted (unprivileged user, Landlock)
/// may not be able to open the path itself.
pub fn adopt(fd: std::os::fd::OwnedFd) {
    let mut s = sink();
    let (path, rotation) = match &*s {
        Sink::Sync(t) => (t.path.clone(), t.rotation),
        Sink::Async { path, rotation, .. } => (path.clone(), *rotation),
    };
    let fresh = Target::adopt(path, rotation, fd.into());
    match &mut *s {
        Sink::Sync(t) => *t = fresh,
        Sink::Async {
            writer: Some(w), ..
        } => w.replace_target(fresh),
        Sink::Async { writer: None, .. } => {}
    }
}

/// In a freshly forked worker: move writing to tracing-appender's non-blocking writer
/// and its thread. The thread is started here, after fork, never in the master. If it
/// cannot start, the worker keeps writing synchronously, which is slower under
/// pressure but loses nothing. A rolling master's appender stays behind: the worker
/// writes the current period's file, and gets the next one from the master.
pub fn become_worker() {
    let mut s = sink();
    let Sink::Sync(t) = &*s else {
        return;
    };
    // The worker's own handle on the file: never the master's appender, which would
    // open the next period's file by path (refused in a worker).
    let own = t.duplicate();
    let started = t
        .duplicate()
        .map_err(LogError::Thread)
        .and_then(|t| Writer::start(t, nonblocking::CAPACITY).map_err(LogError::Thread));
    match started {
        Ok(writer) => {
            *s = Sink::Async {
                path: t.path.clone(),
                rotation: t.rotation,
                writer: Some(writer),
            };
        }
        Err(e) => {
            if let Ok(own) = own {
                *s = Sink::Sync(own);
            }
            drop(s);
            tracing::warn!("{e}; this worker logs synchronously");
        }
    }
}

/// Lines the worker's writer dropped since it started (0 in the master).
pub fn dropped() -> u64 {
    match &*sink() {
        Sink::Async {
            writer: Some(w), ..
        } => w.dropped(),
        _ => 0,
    }
}

/// Lets the worker's writer thread finish (for about a second at most); call before
/// a worker exits.
pub fn shutdown() {
    let writer = match &mut *sink() {
        Sink::Async { writer, .. } => writer.take(),
        Sink::Sync(_) => None,
    };
    if let Some(w) = writer {
        w.finish();
    }
}
