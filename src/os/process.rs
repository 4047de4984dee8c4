//! Processes: fork, reaping, signalling by pid, and small facts about ourselves.

use std::fmt;

pub use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
pub use nix::unistd::Pid;

use super::syscall::cvt;
use super::{Ctx, SysError};

/// Which side of a fork we are on.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// `fork(2)`, refused (EDEADLK, naming the thread count) unless this process has
/// exactly one thread.
///
/// The child of a threaded process holds a copy of every lock the other threads held
/// at that instant, with nobody left to release them; only a single-threaded parent
/// makes running arbitrary code in the child sound. The master never starts a thread,
/// and this check keeps it so: a thread added by accident fails the fork loudly
/// instead of deadlocking a worker some day.
pub fn fork(context: impl FnOnce() -> String) -> Result<Forked, SysError> {
    let threads = match thread_count() {
        Ok(n) => n,
        Err(e) => {
            let why = format!("{} (counting threads in /proc/self/task)", context());
            return Err(SysError::from_io("fork()", why, &e));
        }
    };
    if threads != 1 {
        return Err(SysError::new(
            "fork()",
            format!(
                "{} (refused: this process has {threads} threads, and a child forked \
                 from a threaded process can deadlock on locks the others held)",
                context()
            ),
            nix::errno::Errno::EDEADLK,
        ));
    }
    // SAFETY: this process has exactly one thread (checked just above, and nothing
    // between the check and the fork starts one), so the child inherits no lock held
    // by a thread that does not exist in it.
    match unsafe { nix::unistd::fork() }.ctx("fork()", context)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// How many threads this process has: the entries of /proc/self/task.
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    Code(i32),
    Signal { signal: Signal, core_dumped: bool },
}

impl ExitReason {
    /// An exit nobody asked for: a crash by signal or a non-zero code.
    pub fn is_failure(self) -> bool {
        !matches!(self, ExitReason::Code(0))
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "signal {}", signal.as_str())?;
                if *signal == Signal::SIGSYS {
                    // The only sender of SIGSYS to a worker is its seccomp filter.
                    write!(f, " (killed by seccomp)")?;
                }
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Reaps every child that has ended, without blocking: SIGCHLD coalesces, so one
/// notification may stand for many exits.
pub fn reap_all() -> Vec<(Pid, ExitReason)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, ExitReason::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => out.push((
                pid,
                ExitReason::Signal {
                    signal,
                    core_dumped,
                },
            )),
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => continue,
        }
    }
}

/// Blocks until one specific child ends (used by short-lived helpers
/// such as the daemon launcher, never by the master loop).
pub fn wait_child(pid: Pid) -> Option<ExitReason> {
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, code)) => Some(ExitReason::Code(code)),
        Ok(WaitStatus::Signaled(_, signal, core_dumped)) => Some(ExitReason::Signal {
            signal,
            core_dumped,
        }),
        _ => None,
    }
}

/// Reaps one specific child if it has exited, without blocking.
pub fn try_wait_child(pid: Pid) -> Option<ExitReason> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(ExitReason::Code(code)),
        Ok(WaitStatus::Signaled(_, signal, core_dumped)) => Some(ExitReason::Signal {
            signal,
            core_dumped,
        }),
        _ => None,
    }
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: Pid, sig: Signal) -> Result<(), SysError> {
    match nix::sys::signal::kill(pid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(SysError::new(
            "kill()",
            format!("sending {} to pid {pid}", sig.as_str()),
            e,
        )),
    }
}

/// Sends `sig` to `pid`, reporting every failure, ESRCH included (for a command
/// that must say whether its signal arrived).
pub fn signal(pid: Pid, sig: Signal) -> Result<(), nix::errno::Errno> {
    nix::sys::signal::kill(pid, sig)
}

/// True if a process with this pid exists (it may be a zombie).
pub fn alive(pid: Pid) -> bool {
    nix::sys::signal::kill(pid, None).is_ok()
}

/// Sets the name shown by `ps -o comm`, `top` and in /proc (15 bytes at most), so an
/// operator can tell the master from its workers at a glance.
pub fn set_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from buf,
    // which outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Pins this process to the `n`-th CPU it may run on (modulo their number), so
/// workers stay on their own cores and keep their caches warm.
pub fn pin_to_cpu(n: usize) -> Result<usize, SysError> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(Pid::from_raw(0))
        .ctx("sched_getaffinity()", || "reading allowed CPUs".into())?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let Some(&cpu) = cpus.get(n % cpus.len().max(1)) else {
        return Ok(0);
    };
    let mut set = CpuSet::new();
    set.set(cpu)
        .ctx("CpuSet::set()", || format!("selecting CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .ctx("sched_setaffinity()", || format!("pinning to CPU {cpu}"))?;
    Ok(cpu)
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn self_rss() -> u64 {
    let page = page_size();
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * page)
        .unwrap_or(0)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Our pid.
pub fn pid() -> Pid {
    nix::unistd::getpid()
}

/// Leaves the process at once, without running destructors or atexit handlers: what a
/// forked child must do if it fails before it becomes a worker, so it cannot run the
/// master's cleanup (removing the pid file, say) by accident.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, since a worker holding many
/// connections needs fds and the default soft limit (1024) is a historical accident.
pub fn raise_nofile_limit() -> Result<u64, SysError> {
    super::privs::raise_nofile().map(|(_, hard)| hard)
}

/// The soft RLIMIT_NOFILE: how many fds this process may have open.
pub fn nofile_limit() -> Result<u64, SysError> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, _) =
        getrlimit(Resource::RLIMIT_NOFILE).ctx("getrlimit()", || "reading RLIMIT_NOFILE".into())?;
    Ok(soft)
}

/// The parent's pid (`getppid(2)`): 1, or a subreaper's, once the parent has died.
pub fn parent_pid() -> Pid {
    nix::unistd::getppid()
}

/// Waits (polling, at most `timeout`) until our parent is no longer `parent`: a
/// double-forked child uses it to be sure it has been re-parented to the service
/// manager before it names itself the main process.
pub fn wait_reparented(parent: Pid, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while parent_pid() == parent {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// Asks the kernel to send `sig` to this process when its parent dies
/// (`PR_SET_PDEATHSIG`). "Parent" is the thread that forked us; callers forked by
/// the single-threaded master get it on the master's death. The setting is not
/// race-free by itself: check `parent_pid()` afterwards.
pub fn set_parent_death_signal(sig: Signal) -> Result<(), SysError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number by value and no pointers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
        .ctx("prctl(PR_SET_PDEATHSIG)", || {
            format!("asking for {} when the master dies", sig.as_str())
        })
        .map(drop)
}

/// Dies of a real invalid memory access (SIGSEGV), as a service bug would: what
/// `corral fault segv` injects into a worker.
pub fn segfault() -> ! {
    let addr = std::hint::black_box(16usize) as *mut u8;
    // SAFETY: deliberately invalid. Address 16 is in the never-mapped first page
    // (vm.mmap_min_addr), so the store faults and the process dies of SIGSEGV before
    // anything could observe it; that death is the point.
    unsafe { std::ptr::write_volatile(addr, 1) };
    // Unreachable in practice; abort rather than carry on after an "impossible" store.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// In a forked, single-threaded copy of the test process: `fork` works while it has
    /// one thread and refuses, naming the count, once a second thread runs. Returns
    /// the exit code (0 = as expected) and what it saw.
    fn in_child() -> (i32, String) {
        match thread_count() {
            Ok(1) => {}
            other => return (10, format!("thread count {other:?} right after fork")),
        }
        match fork(|| "forking a grandchild".into()) {
            Ok(Forked::Child) => exit_now(0),
            Ok(Forked::Parent(p)) => {
                if wait_child(p) != Some(ExitReason::Code(0)) {
                    return (11, "the grandchild did not exit 0".into());
                }
            }
            Err(e) => return (12, format!("single-threaded fork refused: {e}")),
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let Ok(t) = std::thread::Builder::new().spawn(move || rx.recv()) else {
            return (13, "cannot start a thread".into());
        };
        let out = match fork(|| "spawning a test grandchild".into()) {
            Ok(Forked::Child) => exit_now(0),
            Ok(Forked::Parent(p)) => {
                let _ = wait_child(p);
                (14, "forked with two threads".into())
            }
            Err(e) => (0, e.to_string()),
        };
        drop(tx);
        let _ = t.join();
        out
    }

    #[test]
    fn fork_refuses_a_threaded_process() {
        let (r, w) = crate::os::fd::pipe().unwrap();
        crate::os::fd::set_nonblocking(r.as_fd(), false).unwrap();
        // SAFETY: the test harness is threaded, so the child runs only what is sound
        // after such a fork with glibc: malloc (reset by glibc's fork), system calls,
        // and `_exit`. It never returns into the harness, and prints nothing (stdout's
        // lock may be held by another thread).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            drop(r);
            let (code, text) = in_child();
            let _ = crate::os::fd::write(w.as_fd(), text.as_bytes());
            exit_now(code);
        }
        drop(w);
        let mut text = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match crate::os::fd::read(r.as_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&text);
        let ended = wait_child(Pid::from_raw(pid));
        assert_eq!(ended, Some(ExitReason::Code(0)), "the child saw: {text}");
        assert!(text.contains("has 2 threads"), "{text}");
        assert!(text.contains("spawning a test grandchild"), "{text}");
    }
}
