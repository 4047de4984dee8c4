//! The worker's system-call filter (seccomp-bpf, built with `seccompiler`).
//!
//! # Threat model
//!
//! A worker parses bytes from strangers. If a parser bug hands an attacker the
//! worker's code execution, the filter bounds what that attacker can ask of the
//! kernel: only the calls the event loop, the built-in services, the log writer, the
//! orphan guard and the blocking pool make. Three filters are stacked, and the kernel
//! applies the strictest answer of all of them:
//!
//! 1. the allowlist: every call the worker makes, plus the "attacker" calls of the
//!    second filter; anything else traps (`SECCOMP_RET_TRAP`): a tiny SIGSYS handler
//!    writes the call's number to stderr and the worker dies by SIGSYS, which the
//!    master reports as "killed by seccomp" and respawns with the usual backoff;
//! 2. the attacker's calls, answered with EPERM instead of death, so that
//!    `corral fault escape` can show each one refused and the worker lives to report
//!    it: exec, fork (`clone` without `CLONE_THREAD`), ptrace and reading another
//!    process's memory, signals to any process but itself (the master included),
//!    every uid/gid/capability change, `socket`/`connect` unless a proxy listener
//!    needs them, `prctl` beyond naming threads, and opening a file for writing
//!    (the log file comes from the master, at start and on every reopen);
//! 3. `clone3` answers ENOSYS: its flags sit behind a pointer the filter cannot read,
//!    and glibc then falls back to `clone`, whose flags the second filter checks.
//!
//! What the filter cannot see (paths and addresses behind pointers) is the job of the
//! unprivileged user, `no_new_privs` and Landlock (see `os::landlock`). The filter
//! is installed with `SECCOMP_FILTER_FLAG_TSYNC`, so the threads started before it
//! (log writer, orphan guard) are covered too, and threads started after it (the
//! blocking pool) inherit it.
//!
//! In `log` mode nothing is refused: every call outside the allowlist, the attacker's
//! included, is allowed and logged by the kernel (audit log, `dmesg`). It is meant for
//! finding the calls a custom service needs, which it then declares with
//! [`allow_extra`] (`corral::Runtime::allow_syscalls`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What to do with a call outside the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Trap and die (SIGSYS); the attacker's calls fail with EPERM.
    Enforce,
    /// Allow and have the kernel log it.
    Log,
}

/// What one worker's filter allows beyond the base.
#[derive(Clone, Debug)]
pub struct Policy {
    pub action: Action,
    /// `socket` and `connect` (a proxy listener dials its upstreams).
    pub network: bool,
    /// Calls a custom service declared, allowed even when they are attacker calls.
    pub extra: Vec<i64>,
}

/// Why the filter could not be installed (the worker then does not run).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the seccomp filter: {0}")]
pub struct SeccompError(String);

static EXTRA: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// Adds system calls (numbers, `libc::SYS_*`) to every worker's allowlist; called
/// before the master starts, by a program that registers a custom service.
pub fn allow_extra(calls: &[i64]) {
    EXTRA
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend_from_slice(calls);
}

/// The calls added with [`allow_extra`].
pub fn extra() -> Vec<i64> {
    EXTRA.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Every call a worker makes: what `strace -f -c -p WORKER` shows under echo, http,
/// proxy, metrics, log reopen and the survivable faults, plus what the start of a
/// worker and of its pool threads (std, glibc) need and what the whole test suite
/// under `enforce` trapped (e.g. `socketpair`, for fd bundles when sessions move).
const BASE: &[i64] = &[
    // IO on fds it holds
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_splice,
    // files: log reopen, /proc/self for RSS, `fault emfile`; paths are the job of the
    // unprivileged user and Landlock
    libc::SYS_openat,
    libc::SYS_getdents64,
    // memory
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_madvise,
    // threads (log writer, orphan guard, pool) and their locks
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    // signals: its own mask and handlers, the signalfd; `kill`/`tgkill` to itself
    // only (second filter)
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd4,
    // time
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // the event loop
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    // sockets it was handed or accepted, the channel's fd passing
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // a connected pair of its own (no address): moving proxied sessions
    libc::SYS_socketpair,
    libc::SYS_getrandom,
];

/// The x86_64-only spellings of the calls above.
#[cfg(target_arch = "x86_64")]
const BASE_ARCH: &[i64] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_dup2,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_accept,
    libc::SYS_getrlimit,
];
#[cfg(not(target_arch = "x86_64"))]
const BASE_ARCH: &[i64] = &[];

/// Refused with EPERM, always: what an attacker wants and a worker never does.
const ATTACKER: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_tkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pidfd_getfd,
];
#[cfg(target_arch = "x86_64")]
const ATTACKER_ARCH: &[i64] = &[libc::SYS_fork, libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const ATTACKER_ARCH: &[i64] = &[];

/// Dialling out: refused with EPERM unless a proxy listener (or a custom service)
/// needs it.
const NETWORK: &[i64] = &[libc::SYS_socket, libc::SYS_connect];

/// `prctl` options a worker uses (naming its threads, glibc naming mappings).
const PRCTL_OK: &[u64] = &[
    libc::PR_SET_NAME as u64,
    libc::PR_GET_NAME as u64,
    0x5356_4d41, // PR_SET_VMA
    // It can only take privileges away (seccompiler sets it before each filter).
    libc::PR_SET_NO_NEW_PRIVS as u64,
];

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    v: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, len, op, v).map_err(err)
}

/// Rules matching an open whose flags (argument `arg`) ask to write or create.
fn write_open(arg: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    [libc::O_WRONLY, libc::O_RDWR, libc::O_CREAT, libc::O_TRUNC]
        .iter()
        .map(|flag| {
            let f = *flag as u64;
            let c = cond(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(f), f)?;
            SeccompRule::new(vec![c]).map_err(err)
        })
        .collect()
}

/// The three programs, in the order they are installed (the allowlist last).
pub fn programs(policy: &Policy, pid: u32) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let (trap, deny) = match policy.action {
        Action::Enforce => (
            SeccompAction::Trap,
            SeccompAction::Errno(libc::EPERM as u32),
        ),
        Action::Log => (SeccompAction::Log, SeccompAction::Log),
    };
    let conditional = [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_prctl,
    ];
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in BASE
        .iter()
        .chain(BASE_ARCH)
        .chain(ATTACKER)
        .chain(ATTACKER_ARCH)
        .chain(NETWORK)
        .chain(&conditional)
        .chain(&policy.extra)
    {
        allowed.insert(*nr, vec![]);
    }
    let allowlist = SeccompFilter::new(allowed, trap, SeccompAction::Allow, arch).map_err(err)?;

    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let refused = ATTACKER
        .iter()
        .chain(ATTACKER_ARCH)
        .chain(if policy.network { &[][..] } else { NETWORK });
    for nr in refused {
        denied.insert(*nr, vec![]);
    }
    use SeccompCmpArgLen::{Dword, Qword};
    // Signals only to itself: kill(pid) and tgkill(tgid, ...) with its own pid.
    let not_me = || -> Result<Vec<SeccompRule>, SeccompError> {
        let c = cond(0, Dword, SeccompCmpOp::Ne, u64::from(pid))?;
        Ok(vec![SeccompRule::new(vec![c]).map_err(err)?])
    };
    denied.insert(libc::SYS_kill, not_me()?);
    denied.insert(libc::SYS_tgkill, not_me()?);
    // Threads only: a clone without CLONE_THREAD is a fork.
    let fork = cond(
        0,
        Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )?;
    denied.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![fork]).map_err(err)?],
    );
    let other_prctl = PRCTL_OK
        .iter()
        .map(|op| cond(0, Dword, SeccompCmpOp::Ne, *op))
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(other_prctl).map_err(err)?],
    );
    // Files by path for reading only: the log file comes from the master (also on
    // reopen), so a write-open is an attacker's.
    denied.insert(libc::SYS_openat, write_open(2)?);
    #[cfg(target_arch = "x86_64")]
    denied.insert(libc::SYS_open, write_open(1)?);
    // What the service declared it needs is not refused.
    for nr in &policy.extra {
        denied.remove(nr);
    }
    let attacker = SeccompFilter::new(denied, SeccompAction::Allow, deny, arch).map_err(err)?;

    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    // The allowlist last: it does not allow seccomp(2) itself.
    [clone3, attacker, allowlist]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(err))
        .collect()
}

/// Installs the filters on every thread of this process. Sets `no_new_privs` first
/// (the kernel requires it of a process without CAP_SYS_ADMIN, and it is wanted
/// anyway), and the SIGSYS handler that names a trapped call.
pub fn install(policy: &Policy) -> Result<(), SeccompError> {
    let pid = std::process::id();
    let programs = programs(policy, pid)?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        )));
    }
    if policy.action == Action::Enforce {
        on_sigsys()?;
    }
    for p in &programs {
        seccompiler::apply_filter_all_threads(p).map_err(err)?;
    }
    Ok(())
}

/// Installs the handler that reports a trapped system call: it writes the call's
/// number to stderr, then lets SIGSYS kill the process (default action, core dump
/// where core dumps are on), so the master sees the real cause.
fn on_sigsys() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function
    // with the SA_SIGINFO signature and does only async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = sigsys_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(err(format!(
                "sigaction(SIGSYS): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a 64-bit `siginfo_t` for SIGSYS: after `si_signo`,
/// `si_errno`, `si_code`, padding (16 bytes) and `_call_addr` (8).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for a
    // seccomp trap its `_sigsys` member holds the call's number at this offset.
    let nr = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32)
    };
    let mut buf = [0u8; 128];
    let len = message(nr, std::process::id(), &mut buf);
    // SAFETY: write(2), getpid(2), gettid(2) and tgkill(2) are async-signal-safe and
    // allowed by the filter; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        // The handler was reset to the default by SA_RESETHAND: this SIGSYS kills.
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
    }
}

/// `corral worker[PID]: killed by seccomp: system call NR\n`, without allocating.
fn message(nr: i32, pid: u32, buf: &mut [u8; 128]) -> usize {
    let mut n = 0;
    let mut put = |s: &[u8], n: &mut usize| {
        for b in s {
            if *n < buf.len() {
                buf[*n] = *b;
                *n += 1;
            }
        }
    };
    let digits = |v: i64, n: &mut usize, put: &mut dyn FnMut(&[u8], &mut usize)| {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        let neg = v < 0;
        let mut v = v.unsigned_abs();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if neg {
            put(b"-", n);
        }
        put(&tmp[i..], n);
    };
    put(b"corral worker[", &mut n);
    digits(i64::from(pid), &mut n, &mut put);
    put(b"]: killed by seccomp: system call ", &mut n);
    digits(i64::from(nr), &mut n, &mut put);
    put(b" is not in the worker's allowlist\n", &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_call() {
        let mut buf = [0u8; 128];
        let n = message(57, 1234, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "corral worker[1234]: killed by seccomp: system call 57 is not in the worker's allowlist\n"
        );
    }

    #[test]
    fn attacker_calls_get_eperm_and_unlisted_ones_kill() {
        let p = Policy {
            action: Action::Enforce,
            network: false,
            extra: vec![],
        };
        let progs = programs(&p, 0).unwrap();
        // SAFETY: the child (of a threaded test process) only makes raw system calls
        // (the filters are built before the fork) and leaves by _exit or by SIGSYS.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw system calls on valid, NUL-terminated buffers and a filter
            // program that outlives the calls; the child never returns.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for prog in &progs {
                    let f = libc::sock_fprog {
                        len: prog.len() as u16,
                        filter: prog.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, 1, 0, &f as *const libc::sock_fprog) != 0 {
                        libc::_exit(10);
                    }
                }
                let eperm = || *libc::__errno_location() == libc::EPERM;
                if libc::setuid(0) != -1 || !eperm() {
                    libc::_exit(11);
                }
                let path = c"/tmp/corral-seccomp-test";
                let flags = libc::O_WRONLY | libc::O_CREAT;
                if libc::open(path.as_ptr(), flags, 0o600) != -1 || !eperm() {
                    libc::_exit(12);
                }
                if libc::kill(1, 0) != -1 || !eperm() {
                    libc::_exit(13);
                }
                // Reading by path is allowed.
                let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    libc::_exit(14);
                }
                // Not on any list: the trap's SIGSYS (default action) ends it.
                libc::syscall(libc::SYS_getcwd, std::ptr::null_mut::<u8>(), 0);
                libc::_exit(15);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "child ended with status {status:#x} (exit {})",
            libc::WEXITSTATUS(status)
        );
    }

    /// The filter's cost per system call, printed (not asserted: it depends on the
    /// box): `cargo test --release --lib seccomp_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn seccomp_cost() {
        let p = Policy {
            action: Action::Enforce,
            network: true,
            extra: vec![],
        };
        let progs = programs(&p, 0).unwrap();
        const N: u32 = 1_000_000;
        let time = |f: &dyn Fn()| {
            let t = std::time::Instant::now();
            for _ in 0..N {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(N)
        };
        let mut fds = [0; 2];
        // SAFETY: a pipe into `fds`, a valid out-array of two.
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        // SAFETY: a system call without pointers.
        let getppid = || unsafe {
            libc::syscall(libc::SYS_getppid);
        };
        // SAFETY: one byte through the pipe, from and into a byte on the stack.
        let rw = || unsafe {
            let mut b = 0u8;
            libc::write(fds[1], (&b as *const u8).cast(), 1);
            libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
        };
        // SAFETY: as in the test above; the child measures, prints and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: raw system calls on the filter programs, which outlive them.
            unsafe {
                let _warm = (time(&getppid), time(&rw));
                let before = (time(&getppid), time(&rw));
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for prog in &progs {
                    let f = libc::sock_fprog {
                        len: prog.len() as u16,
                        filter: prog.as_ptr() as *mut libc::sock_filter,
                    };
                    libc::syscall(libc::SYS_seccomp, 1, 0, &f as *const libc::sock_fprog);
                }
                let after = (time(&getppid), time(&rw));
                let line = format!(
                    "ns per call, off -> enforce: getppid {:.0} -> {:.0}, write+read {:.0} -> {:.0}\n",
                    before.0, after.0, before.1, after.1
                );
                libc::write(2, line.as_ptr().cast(), line.len());
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }

    #[test]
    fn programs_compile_in_both_modes() {
        for action in [Action::Enforce, Action::Log] {
            for network in [false, true] {
                let p = Policy {
                    action,
                    network,
                    extra: vec![libc::SYS_flock],
                };
                let progs = programs(&p, 42).unwrap();
                assert_eq!(progs.len(), 3);
                assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
            }
        }
    }
}
