//! The one place that turns a raw system call's result into a `Result`: `cvt` maps
//! the C convention (-1 and `errno`) to `io::Error`, and `retry` repeats a call that a
//! signal interrupted (EINTR), so no wrapper in `os/` carries its own copy of either.
//!
//! This follows mio's `syscall!` and std's `cvt`/`cvt_r`, as functions rather than a
//! macro so that the `unsafe` block, and its `// SAFETY:` line, stays at the call site:
//! `retry(|| cvt(unsafe { libc::read(fd, buf, len) }))`.

use std::io;

/// A return type whose -1 means "failed, see errno".
pub trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

macro_rules! impl_is_minus_one {
    ($($t:ty)*) => {$(
        impl IsMinusOne for $t {
            fn is_minus_one(self) -> bool {
                self == -1
            }
        }
    )*};
}

impl_is_minus_one! { i32 i64 isize }

/// `Ok(ret)`, or the thread's `errno` as an `io::Error` when `ret` is -1. Call it
/// straight after the system call, before anything else can overwrite `errno`.
pub fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The errno an `io::Error` carries (0 for one that carries none).
pub fn errno_of(e: &io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// An error that may stand for EINTR: a signal handler ran while the call blocked.
pub trait Interrupted {
    fn interrupted(&self) -> bool;
}

impl Interrupted for io::Error {
    fn interrupted(&self) -> bool {
        self.kind() == io::ErrorKind::Interrupted
    }
}

impl Interrupted for nix::errno::Errno {
    fn interrupted(&self) -> bool {
        *self == nix::errno::Errno::EINTR
    }
}

/// Calls `f` again for as long as it fails with EINTR. A handler installed without
/// SA_RESTART (or a call the kernel never restarts) interrupts a blocking call; the
/// call did nothing, so repeating it is always right.
pub fn retry<T, E: Interrupted>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    loop {
        match f() {
            Err(e) if e.interrupted() => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    static HANDLED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: libc::c_int) {
        HANDLED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn cvt_maps_minus_one_to_errno() {
        assert_eq!(cvt(5i32).unwrap(), 5);
        // SAFETY: closing an fd number that is never open (-1) touches nothing.
        let e = cvt(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    /// A blocking read on a pipe is interrupted by a real signal whose handler has no
    /// SA_RESTART; `retry` calls it again and it returns the byte written afterwards.
    #[test]
    fn retry_survives_a_real_eintr() {
        // SIGURG: ignored by default, so a stray one harms no other test.
        // SAFETY: the handler only increments an atomic (async-signal-safe); the
        // sigaction struct is zeroed (a valid value) and then filled in.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0; // no SA_RESTART: the read must fail with EINTR.
            assert_eq!(libc::sigaction(libc::SIGURG, &sa, std::ptr::null_mut()), 0);
        }
        let (r, w) = crate::os::fd::pipe().unwrap();
        crate::os::fd::set_nonblocking(r.as_fd(), false).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // SAFETY: gettid and pthread_self have no arguments and cannot fail.
            let (tid, me) = unsafe { (libc::gettid(), libc::pthread_self()) };
            tid_tx.send((tid, me)).unwrap();
            let mut calls = 0;
            let mut buf = [0u8; 1];
            let got = retry(|| {
                calls += 1;
                // SAFETY: buf is valid for writes of buf.len() bytes for the call.
                cvt(unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
            });
            (got.map(|n| (n, buf[0])), calls)
        });
        let (tid, thread) = tid_rx.recv().unwrap();
        // Signal only once the reader sleeps inside read(2), until its handler ran.
        let deadline = Instant::now() + Duration::from_secs(20);
        let stat = format!("/proc/self/task/{tid}/stat");
        let syscall = format!("/proc/self/task/{tid}/syscall");
        while HANDLED.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the reader never blocked in read"
            );
            let sleeping = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('S'))
                })
                .unwrap_or(false);
            // Without /proc/PID/syscall (a kernel without it), sleeping must do.
            let in_read = std::fs::read_to_string(&syscall).map_or(true, |s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<i64>().ok())
                    == Some(libc::SYS_read)
            });
            if sleeping && in_read {
                // SAFETY: `thread` is the reader's pthread_t, which is still running
                // (it cannot return before we write to the pipe).
                unsafe { libc::pthread_kill(thread, libc::SIGURG) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::os::fd::write(w.as_fd(), b"z").unwrap();
        let (got, calls) = reader.join().unwrap();
        assert_eq!(got.unwrap(), (1, b'z'));
        assert!(
            calls >= 2,
            "read was not interrupted (called {calls} times)"
        );
    }
}
