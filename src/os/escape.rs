//! `corral fault escape`: the system calls an attacker holding a worker would make
//! first, each tried for real by the live worker, and what the kernel answered.
//!
//! Each attempt is made so that it does no harm when it is *not* blocked (with
//! `seccomp = "off"`, or as `user = "root"`): the shell runs `exit 0` in a forked
//! child, a forked child exits at once, `/etc/shadow` and the config file are opened
//! and closed without reading, the file written outside is created empty and removed, the master is
//! traced with `PTRACE_SEIZE` (which does not stop it) and released, the signal to
//! the master is signal 0 (a permission check that sends nothing), the connection
//! goes to a loopback port and is closed, and `setuid(0)` by a root worker changes
//! nothing. An attempt counts as blocked when the kernel refused it (EPERM, EACCES);
//! any other failure (a refused connection, a missing shell) means the request got
//! through to the kernel's ordinary checks, so it is reported as not blocked.

use std::ffi::CString;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

/// One attacker's move and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub name: String,
    pub blocked: bool,
    /// The errno, or what happened when it was not refused.
    pub how: String,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn outcome(name: &str, result: Result<String, i32>) -> Attempt {
    match result {
        Ok(what) => Attempt {
            name: name.into(),
            blocked: false,
            how: what,
        },
        Err(e) => {
            let blocked = e == libc::EPERM || e == libc::EACCES;
            let text = std::io::Error::from_raw_os_error(e);
            Attempt {
                name: name.into(),
                blocked,
                how: if blocked {
                    format!("refused: {text}")
                } else {
                    format!("reached the kernel's ordinary checks: {text}")
                },
            }
        }
    }
}

/// Makes every attempt, in this process; `elsewhere` is an address no listener or
/// upstream of the config names, `outside` a path outside the worker's directories,
/// `readable` a file every user may read (the config file).
pub fn attempt_all(
    master: i32,
    elsewhere: SocketAddrV4,
    outside: &str,
    readable: &str,
) -> Vec<Attempt> {
    vec![
        outcome("exec-shell", exec_shell()),
        outcome("fork", fork()),
        outcome("read-etc-shadow", open_path("/etc/shadow", libc::O_RDONLY)),
        outcome("read-outside", open_path(readable, libc::O_RDONLY)),
        outcome(
            "write-outside",
            open_path(outside, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        ),
        outcome("ptrace-master", ptrace(master)),
        outcome("signal-master", signal(master)),
        outcome("connect-elsewhere", connect(elsewhere)),
        outcome("setuid-root", setuid_root()),
    ]
}

/// Forks; the child runs `f` and `_exit`s with its result. Returns the child's exit
/// code, or the fork's errno.
fn in_child(f: impl FnOnce() -> i32) -> Result<i32, i32> {
    // SAFETY: the child only calls async-signal-safe functions (execve, _exit) before
    // it exits; the parent waits for it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno());
    }
    if pid == 0 {
        let code = f();
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    })
}

fn exec_shell() -> Result<String, i32> {
    let sh = CString::new("/bin/sh").unwrap_or_default();
    let args = [
        CString::new("sh").unwrap_or_default(),
        CString::new("-c").unwrap_or_default(),
        CString::new("exit 0").unwrap_or_default(),
    ];
    let exec = || -> i32 {
        let argv: Vec<*const libc::c_char> = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: NUL-terminated strings and null-terminated arrays that outlive the
        // call; execve only returns on failure.
        unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        errno()
    };
    match in_child(exec) {
        Ok(0) => Ok("a shell ran (in a forked child)".into()),
        Ok(e) if e > 0 => Err(e),
        Ok(_) => Ok("the forked child died".into()),
        // No fork: try in this process. Where the filter refuses fork it refuses
        // exec as well, so this does not replace the worker.
        Err(_) => match exec() {
            0 => Ok("execve returned".into()),
            e => Err(e),
        },
    }
}

fn fork() -> Result<String, i32> {
    in_child(|| 0).map(|_| "a child process was created".into())
}

fn open_path(path: &str, flags: i32) -> Result<String, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: a NUL-terminated path; the fd, if any, is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    if flags & libc::O_CREAT != 0 {
        // SAFETY: a NUL-terminated path this attempt just created.
        unsafe { libc::unlink(c.as_ptr()) };
    }
    Ok(format!("opened {path}"))
}

fn ptrace(master: i32) -> Result<String, i32> {
    // SAFETY: PTRACE_SEIZE takes a pid and no pointers; it does not stop the tracee.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            master,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc < 0 {
        return Err(errno());
    }
    // SAFETY: as above; releases the tracee.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            master,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    Ok("attached to the master".into())
}

fn signal(master: i32) -> Result<String, i32> {
    // SAFETY: signal 0 checks permission and sends nothing.
    if unsafe { libc::kill(master, 0) } < 0 {
        return Err(errno());
    }
    Ok("may signal the master".into())
}

fn connect(to: SocketAddrV4) -> Result<String, i32> {
    match std::net::TcpStream::connect_timeout(&to.into(), std::time::Duration::from_secs(1)) {
        Ok(_) => Ok(format!("connected to {to}")),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn setuid_root() -> Result<String, i32> {
    // SAFETY: setuid takes an integer; a root process stays root.
    if unsafe { libc::setuid(0) } < 0 {
        return Err(errno());
    }
    Ok("setuid(0) succeeded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_refusals_count_as_blocked_and_other_errors_do_not() {
        assert!(outcome("x", Err(libc::EPERM)).blocked);
        assert!(outcome("x", Err(libc::EACCES)).blocked);
        assert!(!outcome("x", Err(libc::ECONNREFUSED)).blocked);
        assert!(!outcome("x", Ok("did it".into())).blocked);
    }
}
