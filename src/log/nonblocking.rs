//! A worker's log writer: tracing-appender's non-blocking writer, lossy, with a
//! target that a log reopen (or a new rolling period) swaps under it.
//!
//! The event loop must not block on logging: a slow disk, or a stderr pipe that
//! journald (or whoever holds the other end) stopped reading, would otherwise stall
//! every connection of the worker until the watchdog killed it. The appender's writer
//! is a bounded channel to a thread of its own; when the channel is full the line is
//! dropped and its error counter counts it. The thread writes into [`Output`], which
//! adds what the appender leaves out: it switches to a reopened file, says in the log
//! how many lines are missing where they went missing, and counts the lines that the
//! file refused (`write` failed), so that `log_dropped` counts every line lost.
//! Nothing the loop thread touches is held while the thread is inside `write(2)`.

use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

use super::target::Target;

/// Lines the channel holds before it drops: enough for a burst (about 1 MiB of text),
/// small enough that a stuck writer cannot make a worker grow much.
pub(super) const CAPACITY: usize = 4096;

/// What the loop thread and the writer thread share besides the channel.
struct Shared {
    /// A reopened target for the writer thread to switch to. Each side holds the lock
    /// only to put or take a value, never across a write.
    pending: Mutex<Option<Target>>,
    /// Set with `pending`: the writer thread looks at this flag, not the lock, per line.
    switch: AtomicBool,
    /// Lines the target refused (a failed write), beside the channel's drops.
    failed: AtomicU64,
}

/// The loop thread's side.
pub(super) struct Writer {
    lines: NonBlocking,
    dropped: ErrorCounter,
    guard: WorkerGuard,
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the appender's thread, which owns `target` from now on. The appender
    /// panics when the thread cannot start: that is caught and returned as an error
    /// (a forked worker must never unwind into the master's code).
    pub(super) fn start(target: Target, capacity: usize) -> io::Result<Writer> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(None),
            switch: AtomicBool::new(false),
            failed: AtomicU64::new(0),
        });
        // The drop counter exists only once the writer does; the output reads it
        // through this slot, filled before this function returns, so before any line.
        let slot = Arc::new(OnceLock::new());
        let output = Output {
            target,
            shared: Arc::clone(&shared),
            dropped: Arc::clone(&slot),
            reported: 0,
        };
        let builder = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(capacity)
            .thread_name("corral-log");
        let (lines, guard) = catch_unwind(AssertUnwindSafe(move || builder.finish(output)))
            .map_err(|_| io::Error::other("cannot start the log writer thread"))?;
        let dropped = lines.error_counter();
        let _ = slot.set(dropped.clone());
        Ok(Writer {
            lines,
            dropped,
            guard,
            shared,
        })
    }

    /// A handle that sends one line without blocking.
    pub(super) fn line_writer(&self) -> NonBlocking {
        self.lines.clone()
    }

    /// Hands a freshly opened target to the writer thread, which switches to it
    /// before its next line (lines still queued go to the new file). Does not wait.
    pub(super) fn replace_target(&self, target: Target) {
        *lock(&self.shared.pending) = Some(target);
        self.shared.switch.store(true, Ordering::Release);
    }

    /// Lines lost since the worker started: dropped on a full channel, or refused by
    /// the file.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.dropped_lines() as u64 + self.shared.failed.load(Ordering::Relaxed)
    }

    /// Lets the writer thread write what is queued: the appender's guard waits at
    /// most about a second (a writer stuck on a blocked pipe must not keep the worker
    /// from exiting). The guard prints (to stdout) when it cannot even ask the thread
    /// to stop, and printing panics on a broken stdout: caught, for the reason above.
    pub(super) fn finish(self) {
        let Writer { lines, guard, .. } = self;
        drop(lines);
        let _ = catch_unwind(AssertUnwindSafe(move || drop(guard)));
    }
}

/// The writer thread's side: what the appender's thread writes into.
struct Output {
    target: Target,
    shared: Arc<Shared>,
    dropped: Arc<OnceLock<ErrorCounter>>,
    /// Drops already reported in the log.
    reported: u64,
}

impl Output {
    fn report_drops(&mut self) {
        let total = self.dropped.get().map_or(0, |c| c.dropped_lines() as u64);
        if total > self.reported {
            let n = total - self.reported;
            self.reported = total;
            if self.target.write_all(drop_report(n).as_bytes()).is_err() {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shared.switch.swap(false, Ordering::Acquire) {
            if let Some(t) = lock(&self.shared.pending).take() {
                let _ = self.target.flush();
                self.target = t;
            }
        }
        // Lines dropped since the previous one: said right before this one.
        self.report_drops();
        if self.target.write_all(buf).is_err() {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        // A lost line is accounted for, not an error for the appender to act on.
        Ok(buf.len())
    }

    /// The appender flushes whenever it has caught up: drops so far can be said now.
    fn flush(&mut self) -> io::Result<()> {
        self.report_drops();
        let _ = self.target.flush();
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a perfectly usable value behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The report line, shaped like the fmt layer's lines so that log readers parse it.
fn drop_report(n: u64) -> String {
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut ts = String::new();
    let _ = SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ts));
    format!(
        "{ts}  WARN corral-log{{pid={}}}: {n} log lines dropped: the log writer could not keep up dropped={n}\n",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rotation;
    use std::time::{Duration, Instant};

    fn tmp_target() -> (tempfile::TempDir, std::path::PathBuf, Target) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.log");
        let t = Target::open(Some(&path), Rotation::Never).unwrap();
        (dir, path, t)
    }

    fn read(path: &std::path::Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn wait_for(path: &std::path::Path, what: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if read(path).contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn lines_arrive_in_order() {
        let (_d, path, t) = tmp_target();
        let w = Writer::start(t, 64).unwrap();
        for i in 0..50 {
            w.line_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.finish();
        let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(read(&path), want);
    }

    #[test]
    fn full_channel_drops_counts_and_reports() {
        let (dir, path, t) = tmp_target();
        let w = Writer::start(t, 4).unwrap();
        // Hold the writer thread at its next line: it blocks on the pending lock
        // (the switch flag is set), so the channel fills up behind it and all but
        // at most 4 + 1 lines are dropped.
        let held = lock(&w.shared.pending);
        w.shared.switch.store(true, Ordering::Release);
        for i in 0..100 {
            w.line_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let dropped = w.dropped();
        assert!(
            dropped >= 95,
            "dropped {dropped} of 100 into a channel of 4"
        );
        drop(held);
        w.finish();
        let _ = dir;
        let text = read(&path);
        assert!(
            text.contains(&format!("{dropped} log lines dropped")),
            "{text}"
        );
        assert!(text.contains("line 0\n"), "{text}");
    }

    #[test]
    fn replaced_target_takes_the_next_lines() {
        let (dir, path, t) = tmp_target();
        let w = Writer::start(t, 64).unwrap();
        w.line_writer().write_all(b"first\n").unwrap();
        assert!(wait_for(&path, "first\n"));
        let other = dir.path().join("other.log");
        w.replace_target(Target::open(Some(&other), Rotation::Never).unwrap());
        w.line_writer().write_all(b"second\n").unwrap();
        w.finish();
        assert_eq!(read(&path), "first\n");
        assert_eq!(read(&other), "second\n");
    }

    #[test]
    fn a_refused_write_counts_as_dropped() {
        // /dev/full refuses every write with ENOSPC.
        let Ok(t) = Target::open(Some(std::path::Path::new("/dev/full")), Rotation::Never) else {
            return;
        };
        let w = Writer::start(t, 64).unwrap();
        w.line_writer().write_all(b"lost\n").unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while w.dropped() == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.dropped(), 1);
        w.finish();
    }
}
