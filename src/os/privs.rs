//! Giving up root in a freshly forked worker, and the resource limits it runs with.
//!
//! The master stays root because it binds new listeners on reload; a worker only
//! needs the sockets it was handed, so it drops to `[master] user`/`group` before it
//! runs any service code: supplementary groups, gid, uid (real, effective and saved),
//! then every capability (bounding set and ambient first, while it still may, then
//! what remains), and `PR_SET_NO_NEW_PRIVS` so no exec could win them back. The drop
//! is then verified: a `setuid(0)` that succeeds afterwards is a fatal error, never a
//! worker quietly running as root. Names are resolved by the config loader (in the
//! master), so this code makes only system calls.

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Uid};

use super::syscall::{cvt, errno_of};
use super::{Ctx, SysError};

/// Who a worker becomes, resolved from names at config load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// As written in the config, for messages.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's (from the group database), or only `gid`
    /// when `[master] group` is set.
    pub groups: Vec<u32>,
    /// Not asked for: the `nobody` a root master picks when `[master] user` is unset.
    pub implicit: bool,
}

/// Why a worker could not give up its privileges. Each is fatal for the worker.
#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("dropping to user {user} did not hold: {what}")]
    NotDropped { user: String, what: String },
}

/// Applies `creds` to this (single-threaded, freshly forked) process. `keep_dumpable`
/// re-enables core dumps, which the kernel turns off on a uid change.
pub fn drop_to(creds: &Credentials, keep_dumpable: bool) -> Result<(), PrivsError> {
    let (uid, gid) = (Uid::from_raw(creds.uid), Gid::from_raw(creds.gid));
    let groups: Vec<Gid> = creds.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let who = || format!("dropping to user {} (uid {})", creds.user, creds.uid);
    nix::unistd::setgroups(&groups).ctx("setgroups()", who)?;
    nix::unistd::setresgid(gid, gid, gid).ctx("setresgid()", who)?;
    // The bounding set can only shrink with CAP_SETPCAP, i.e. before setuid.
    drop_bounding_set().map_err(|e| SysError::new("prctl(PR_CAPBSET_DROP)", who(), e))?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    });
    match rc {
        // EINVAL: a kernel without ambient capabilities has none to clear.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        rc => {
            rc.ctx("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", who)?;
        }
    }
    nix::unistd::setresuid(uid, uid, uid).ctx("setresuid()", who)?;
    // Leaving uid 0 already cleared the permitted and effective sets; the inheritable
    // set is not cleared by the kernel, so clear everything explicitly.
    clear_capabilities().map_err(|e| SysError::new("capset()", who(), e))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .ctx("prctl(PR_SET_NO_NEW_PRIVS)", who)?;
    if keep_dumpable {
        // SAFETY: PR_SET_DUMPABLE takes integers only.
        cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })
            .ctx("prctl(PR_SET_DUMPABLE)", who)?;
    }
    verify(creds)
}

/// The drop must be irreversible: uids and gids are all the target, and asking for
/// root back fails.
fn verify(creds: &Credentials) -> Result<(), PrivsError> {
    let bad = |what: String| PrivsError::NotDropped {
        user: creds.user.clone(),
        what,
    };
    let u = nix::unistd::getresuid().map_err(|e| bad(format!("getresuid(): {e}")))?;
    let g = nix::unistd::getresgid().map_err(|e| bad(format!("getresgid(): {e}")))?;
    let uids = [u.real, u.effective, u.saved].map(|x| x.as_raw());
    let gids = [g.real, g.effective, g.saved].map(|x| x.as_raw());
    if uids != [creds.uid; 3] || gids != [creds.gid; 3] {
        return Err(bad(format!("uids are {uids:?}, gids {gids:?}")));
    }
    if creds.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(bad("setuid(0) succeeded afterwards".into()));
    }
    Ok(())
}

/// Removes every capability from the bounding set (so no exec could regain one).
fn drop_bounding_set() -> Result<(), Errno> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number by value.
        match cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }) {
            Ok(_) => {}
            // Past the last capability this kernel knows.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(e) => return Err(errno_of(&e)),
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` with empty effective, permitted and inheritable sets.
fn clear_capabilities() -> Result<(), Errno> {
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and the two data words (version 3 uses two) are valid for the
    // kernel to read for the duration of the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
    .map_err(|e| errno_of(&e))
}

/// The hard `RLIMIT_NOFILE`: as many fds as any process here may get.
pub fn nofile_hard() -> Result<u64, SysError> {
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).ctx("getrlimit()", || "reading RLIMIT_NOFILE".into())?;
    Ok(hard)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns `(old soft, hard)`.
pub fn raise_nofile() -> Result<(u64, u64), SysError> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).ctx("getrlimit()", || "reading RLIMIT_NOFILE".into())?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .ctx("setrlimit()", || "raising RLIMIT_NOFILE".into())?;
    }
    Ok((soft, hard))
}

/// Sets the soft `RLIMIT_NOFILE` to `n`, or to the hard limit if `n` is above it
/// (the hard limit is never raised: that takes CAP_SYS_RESOURCE, and the master
/// already warned). Returns the limit set.
pub fn set_nofile(n: u64) -> Result<u64, SysError> {
    let hard = nofile_hard()?;
    let soft = n.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)
        .ctx("setrlimit()", || format!("setting RLIMIT_NOFILE to {soft}"))?;
    Ok(soft)
}

/// Sets `RLIMIT_CORE` (soft and hard) to `bytes`; `u64::MAX` means unlimited.
pub fn set_core(bytes: u64) -> Result<(), SysError> {
    let v = if bytes == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        bytes
    };
    let (_, hard) =
        getrlimit(Resource::RLIMIT_CORE).ctx("getrlimit()", || "reading RLIMIT_CORE".into())?;
    // Above the hard limit only with CAP_SYS_RESOURCE: try, else take the hard limit.
    setrlimit(Resource::RLIMIT_CORE, v, v.max(hard))
        .or_else(|_| setrlimit(Resource::RLIMIT_CORE, v.min(hard), hard))
        .ctx("setrlimit()", || format!("setting RLIMIT_CORE to {bytes}"))
}

/// `chown(2)` of a path (the log file, a Unix socket) to `uid`/`gid`.
pub fn chown(path: &std::path::Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), SysError> {
    nix::unistd::chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw)).ctx("chown()", || {
        format!("changing the owner of {}", path.display())
    })
}

/// `chmod(2)` of a path (a Unix socket) to `mode`.
pub fn chmod(path: &std::path::Path, mode: u32) -> Result<(), SysError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        SysError::new(
            "chmod()",
            format!("setting the mode of {} to {mode:04o}", path.display()),
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        )
    })
}

/// Looks up a user by name or numeric uid: `(uid, primary gid, name)`; the gid is
/// `None` for a numeric uid without a passwd entry.
pub fn lookup_user(spec: &str) -> Result<(u32, Option<u32>, Option<String>), String> {
    if let Ok(uid) = spec.parse::<u32>() {
        return match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => Ok((uid, Some(u.gid.as_raw()), Some(u.name))),
            _ => Ok((uid, None, None)),
        };
    }
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), Some(u.gid.as_raw()), Some(u.name))),
        Ok(None) => Err(format!("no user named `{spec}` on this system")),
        Err(e) => Err(format!("cannot look up user `{spec}`: {e}")),
    }
}

/// Looks up a group by name or numeric gid.
pub fn lookup_group(spec: &str) -> Result<u32, String> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named `{spec}` on this system")),
        Err(e) => Err(format!("cannot look up group `{spec}`: {e}")),
    }
}

/// The supplementary groups of user `name` whose primary group is `gid`.
pub fn user_groups(name: &str, gid: u32) -> Result<Vec<u32>, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("`{name}` contains a NUL byte"))?;
    nix::unistd::getgrouplist(&c, Gid::from_raw(gid))
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .map_err(|e| format!("cannot read the groups of user `{name}`: {e}"))
}

/// Our effective uid is root's.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Our effective uid.
pub fn euid() -> u32 {
    super::cred::euid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup_user("root").unwrap().0, 0);
        assert_eq!(lookup_user("0").unwrap().2.as_deref(), Some("root"));
        assert_eq!(lookup_user("4000000").unwrap(), (4000000, None, None));
        let e = lookup_user("no-such-user-corral").unwrap_err();
        assert!(e.contains("no user named"), "{e}");
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert!(lookup_group("no-such-group-corral").is_err());
        assert!(user_groups("root", 0).unwrap().contains(&0));
    }
}
