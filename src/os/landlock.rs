//! Landlock's rules for workers: no filesystem access beyond the worker's own
//! `/proc/<pid>` (read: its RSS for heartbeats) and `/dev/null`, plus what a custom
//! service declared ([`allow_paths`]); and for a proxy worker, TCP connects only to
//! its upstreams' ports and no TCP bind at all.
//!
//! A worker needs no path after set-up: its listeners, log file and TLS keys come
//! from the master (inherited, or over its channel at a log reopen). Without Landlock
//! (or with an ABI too old for a rule) the worker relies on seccomp (which refuses
//! opening for writing) and the unprivileged user (which cannot read what it does not
//! own); the caller is told.
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
const RULE_PATH_BENEATH: libc::c_int = 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_WRITE_FILE: u64 = 1 << 1;
/// The first ABI with network rules.
const NET_ABI: i64 = 4;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
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

/// Paths a custom service's workers may read (and, if `write`, write) beneath; set
/// before the master starts.
static PATHS: std::sync::Mutex<Vec<(std::path::PathBuf, bool)>> = std::sync::Mutex::new(Vec::new());

/// Lets workers reach `paths` (and what is beneath them) despite the filesystem rules.
pub fn allow_paths(paths: &[&std::path::Path], write: bool) {
    PATHS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(paths.iter().map(|p| (p.to_path_buf(), write)));
}

/// Every filesystem right the kernel's ABI knows (so that all are handled, and
/// refused unless a rule grants them).
fn fs_rights(abi: i64) -> u64 {
    match abi {
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

/// Takes this thread (and threads it starts later) off the filesystem, but for the
/// process's own `/proc/<pid>` (read), `/dev/null` (read and write) and the paths a
/// custom service declared. Sets `no_new_privs`, which Landlock requires.
pub fn restrict_fs() -> std::io::Result<Applied> {
    let abi = abi();
    if abi < 1 {
        return Ok(Applied::Unsupported(abi));
    }
    let handled = fs_rights(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
    };
    // Only the fields of ABI 1 to 3 for older kernels (no network part).
    let size = if abi < NET_ABI {
        8
    } else {
        std::mem::size_of::<RulesetAttr>()
    };
    // SAFETY: `attr` is valid for reads of `size` (at most its size) during the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    })?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let own_proc = format!("/proc/{}", std::process::id());
    let mut grants: Vec<(std::path::PathBuf, u64)> = vec![
        (own_proc.into(), FS_READ_FILE | FS_READ_DIR),
        ("/dev/null".into(), FS_READ_FILE | FS_WRITE_FILE),
    ];
    for (p, write) in PATHS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let rights = if *write {
            handled
        } else {
            FS_READ_FILE | FS_READ_DIR
        };
        grants.push((p.clone(), rights));
    }
    for (path, rights) in grants {
        let Ok(dir) = std::fs::File::open(&path) else {
            continue; // a path that does not exist grants nothing
        };
        let is_dir = dir.metadata().is_ok_and(|m| m.is_dir());
        // Directory rights on a file are refused by the kernel (EINVAL).
        let rights = if is_dir {
            rights
        } else {
            rights & !(FS_READ_DIR | (handled & !0b111))
        };
        let rule = PathBeneathAttr {
            allowed_access: rights & handled,
            parent_fd: dir.as_raw_fd(),
        };
        // SAFETY: `rule` is valid for reads for the duration of the call, and its fd
        // is open.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
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
    fn off_the_filesystem_but_for_its_own_proc_and_dev_null() {
        if abi() < 1 {
            eprintln!("skipping: no Landlock on this kernel");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let got = std::thread::spawn(move || {
            assert_eq!(restrict_fs().unwrap(), Applied::Restricted);
            (
                std::fs::read_to_string("/proc/self/statm").is_ok(),
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .is_ok(),
                std::fs::read(&file).err().and_then(|e| e.raw_os_error()),
                std::fs::read("/etc/hostname")
                    .err()
                    .and_then(|e| e.raw_os_error()),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got, (true, true, Some(libc::EACCES), Some(libc::EACCES)));
    }

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
