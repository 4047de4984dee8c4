//! Landlock's network rules for a proxy worker: TCP connects only to its upstreams'
//! ports, and no TCP bind at all.
//!
//! Seccomp cannot read the address behind `connect(2)`'s pointer, so a proxy worker,
//! which must make sockets and connect, could otherwise dial anything. Landlock
//! (ABI 4, Linux 6.7) restricts TCP `connect` and `bind` by port. It applies to the
//! calling thread and the threads it starts later, so it is set in the freshly forked
//! worker before its log writer and orphan guard exist. On a kernel without
//! Landlock, or with an older ABI, nothing is restricted and the caller is told so;
//! the worker then relies on seccomp and the unprivileged user alone.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::syscall::cvt;

const CREATE_RULESET_VERSION: u32 = 1;
const ACCESS_NET_BIND_TCP: u64 = 1;
const ACCESS_NET_CONNECT_TCP: u64 = 2;
const RULE_NET_PORT: libc::c_int = 2;
/// The first ABI with network rules.
const NET_ABI: i64 = 4;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
}

#[repr(C)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

/// What [`restrict_tcp`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Restricted,
    /// The kernel has no Landlock, or none with network rules (its ABI).
    Unsupported(i64),
}

/// This kernel's Landlock ABI version; 0 without Landlock.
pub fn abi() -> i64 {
    // SAFETY: with a null attribute and size 0, the VERSION flag only asks for the
    // ABI version; no memory is read.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Allows this thread (and threads it starts later) TCP connects to `ports` only,
/// and no TCP bind. Sets `no_new_privs`, which Landlock requires.
pub fn restrict_tcp(ports: &[u16]) -> std::io::Result<Applied> {
    let abi = abi();
    if abi < NET_ABI {
        return Ok(Applied::Unsupported(abi));
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP,
    };
    // SAFETY: `attr` is valid for reads of its size for the duration of the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    })?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut seen = Vec::new();
    for &port in ports {
        if seen.contains(&port) {
            continue;
        }
        seen.push(port);
        let rule = NetPortAttr {
            allowed_access: ACCESS_NET_CONNECT_TCP,
            port: u64::from(port),
        };
        // SAFETY: `rule` is valid for reads for the duration of the call.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_NET_PORT,
                &rule as *const NetPortAttr,
                0u32,
            )
        })?;
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // SAFETY: an fd we own, and no flags.
    cvt(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) })?;
    Ok(Applied::Restricted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_port_may_be_dialled() {
        if abi() < NET_ABI {
            eprintln!("skipping: Landlock ABI {} has no network rules", abi());
            return;
        }
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (open.local_addr().unwrap(), other.local_addr().unwrap());
        // In a thread of its own: the restriction stays with that thread.
        let got = std::thread::spawn(move || {
            assert_eq!(restrict_tcp(&[a.port()]).unwrap(), Applied::Restricted);
            let ok = std::net::TcpStream::connect(a).is_ok();
            let refused = std::net::TcpStream::connect(b)
                .err()
                .and_then(|e| e.raw_os_error());
            let bind = std::net::TcpListener::bind("127.0.0.1:0")
                .err()
                .and_then(|e| e.raw_os_error());
            (ok, refused, bind)
        })
        .join()
        .unwrap();
        assert_eq!(got, (true, Some(libc::EACCES), Some(libc::EACCES)));
    }
}
