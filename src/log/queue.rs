//! A worker's log queue: the event loop hands each formatted line to a writer thread
//! through a bounded channel and never waits for it.
//!
//! The loop must not block on logging: a slow disk, or a stderr pipe that journald (or
//! whoever holds the other end) stopped reading, would otherwise stall every connection
//! of the worker until the watchdog killed it. So sending never blocks: when the queue
//! is full the line is dropped and counted, and the writer thread, once it writes again,
//! says how many lines are missing at the place where they went missing. Nothing the
//! loop thread touches is ever held while the writer thread is inside `write(2)`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::target::Target;

/// Lines the queue holds before it drops: enough for a burst (about 1 MiB of text), small
/// enough that a stuck writer cannot make a worker grow much.
pub(super) const CAPACITY: usize = 4096;

enum Msg {
    /// A formatted line, and the drop count when it was queued: a report of the drops
    /// since the previous line goes right before it.
    Line(Vec<u8>, u64),
    /// A new target is waiting in `Shared::pending`; lines queued before this one
    /// still go to the old target.
    Wake,
}

struct Shared {
    dropped: AtomicU64,
    /// A reopened target for the writer thread to switch to. Each side holds the lock
    /// only to put or take a value, never across a write.
    pending: Mutex<Option<Target>>,
    /// The `Wake` for a pending target found the queue full: switch at the next line.
    wake_lost: AtomicBool,
}

/// The loop thread's side of the queue.
pub(super) struct Queue {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    /// Disconnects when the writer thread ends.
    done: Receiver<()>,
}

/// A handle that queues lines without blocking; one per log event.
pub(super) struct QueueWriter {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl Queue {
    /// Starts the writer thread, which owns `target` from now on.
    pub(super) fn start(target: Target, capacity: usize) -> io::Result<Queue> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            pending: Mutex::new(None),
            wake_lost: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("corral-log".into())
            .spawn(move || {
                write_lines(target, rx, &thread_shared);
                drop(done_tx);
            })?;
        Ok(Queue { tx, shared, done })
    }

    pub(super) fn writer(&self) -> QueueWriter {
        QueueWriter {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Hands a freshly opened target to the writer thread, which switches to it
    /// before its next line. Does not wait for it.
    pub(super) fn replace_target(&self, target: Target) {
        *lock(&self.shared.pending) = Some(target);
        if self.tx.try_send(Msg::Wake).is_err() {
            self.shared.wake_lost.store(true, Ordering::Relaxed);
        }
    }

    /// Lines dropped since the worker started.
    pub(super) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lets the writer thread write what is queued, for at most `within` (a writer
    /// stuck on a blocked pipe must not keep the worker from exiting).
    pub(super) fn finish(self, within: Duration) {
        let Queue { tx, done, .. } = self;
        drop(tx);
        let _ = done.recv_timeout(within);
    }
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let seen = self.shared.dropped.load(Ordering::Relaxed);
        match self.tx.try_send(Msg::Line(buf.to_vec(), seen)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A dropped line is accounted for, not an error: the caller must not retry.
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a perfectly usable value behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread: writes lines in order, reporting drops where they happened.
fn write_lines(mut target: Target, rx: Receiver<Msg>, shared: &Shared) {
    let mut reported = 0u64;
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                // Caught up: whatever was dropped so far can be reported now.
                report_drops(&mut target, shared, &mut reported);
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Line(line, seen) => {
                if shared.wake_lost.swap(false, Ordering::Relaxed) {
                    switch_target(&mut target, shared);
                }
                if seen > reported {
                    let _ = target.write_all(drop_report(seen - reported).as_bytes());
                    reported = seen;
                }
                let _ = target.write_all(&line);
            }
            Msg::Wake => switch_target(&mut target, shared),
        }
    }
    report_drops(&mut target, shared, &mut reported);
    let _ = target.flush();
}

fn switch_target(target: &mut Target, shared: &Shared) {
    if let Some(t) = lock(&shared.pending).take() {
        *target = t;
    }
}

fn report_drops(target: &mut Target, shared: &Shared, reported: &mut u64) {
    let total = shared.dropped.load(Ordering::Relaxed);
    if total > *reported {
        let _ = target.write_all(drop_report(total - *reported).as_bytes());
        *reported = total;
    }
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
    use std::io::Read;

    fn tmp_target() -> (tempfile::TempDir, std::path::PathBuf, Target) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.log");
        let t = Target::open(Some(&path)).unwrap();
        (dir, path, t)
    }

    fn read(path: &std::path::Path) -> String {
        let mut s = String::new();
        std::fs::File::open(path)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn lines_arrive_in_order() {
        let (_d, path, t) = tmp_target();
        let q = Queue::start(t, 64).unwrap();
        for i in 0..50 {
            q.writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        q.finish(Duration::from_secs(10));
        let text = read(&path);
        let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
    }

    #[test]
    fn full_queue_drops_counts_and_reports() {
        let (_d, path, t) = tmp_target();
        let q = Queue::start(t, 4).unwrap();
        // Hold the writer thread at its next target switch: it blocks on the
        // pending lock (whenever it gets to the Wake), so the queue fills up behind
        // it and all but at most 4 lines are dropped.
        let held = lock(&q.shared.pending);
        let _ = q.tx.try_send(Msg::Wake);
        for i in 0..100 {
            q.writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let dropped = q.dropped();
        assert!(dropped >= 96, "dropped {dropped} of 100 into a queue of 4");
        drop(held);
        q.finish(Duration::from_secs(10));
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
        let q = Queue::start(t, 64).unwrap();
        q.writer().write_all(b"first\n").unwrap();
        let other = dir.path().join("other.log");
        q.replace_target(Target::open(Some(&other)).unwrap());
        q.writer().write_all(b"second\n").unwrap();
        q.finish(Duration::from_secs(10));
        assert_eq!(read(&path), "first\n");
        assert_eq!(read(&other), "second\n");
    }
}
