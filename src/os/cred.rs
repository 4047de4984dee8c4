//! Who is on the other end, and who may have written a path: SO_PEERCRED on Unix
//! sockets and ownership checks on runtime directories and files.
//!
//! A control socket or pid file in a directory that another user can write is theirs
//! to replace: they could fake the master's answers or aim root's `corral -s` signals
//! at any process. So only root and our own uid are trusted, for peers and for owners.

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{Ctx, SysError};

/// The process on the other end of a Unix stream socket, as the kernel recorded it
/// when that end connected (or, for a server, called `listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// `getsockopt(SO_PEERCRED)`.
pub fn peer(sock: &impl AsFd) -> Result<Peer, SysError> {
    let c = getsockopt(sock, PeerCredentials).ctx("getsockopt(SO_PEERCRED)", || {
        "asking who is on the other end of a control socket".into()
    })?;
    Ok(Peer {
        pid: c.pid(),
        uid: c.uid(),
    })
}

/// Our effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Root, or ourselves: the only users whose processes and files we act on.
pub fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Why a path is not ours to trust.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "runtime directory {path} is owned by uid {owner} with mode {mode:04o}: it must be owned by uid {me} (or root) and not writable by group or others"
    )]
    Directory {
        path: PathBuf,
        owner: u32,
        mode: u32,
        me: u32,
    },
    #[error(
        "{path} (on the way to runtime directory {dir}) is owned by uid {owner} with mode {mode:04o}: another user could replace what lies below it"
    )]
    Ancestor {
        path: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error(
        "{path} is owned by uid {owner} with mode {mode:04o}: it must be owned by uid {me} (or root) and not writable by group or others"
    )]
    File {
        path: PathBuf,
        owner: u32,
        mode: u32,
        me: u32,
    },
    #[error("cannot inspect {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn stat_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Stat {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a runtime directory (the pid file's or control socket's): owned by us or
/// root, not writable by group or others; every directory above it owned by us or
/// root and either not writable by others or sticky (as /tmp is, where others cannot
/// rename what we own); and no symbolic link on the way owned by anyone else.
/// `dir` must be absolute.
pub fn check_runtime_dir(dir: &Path) -> Result<(), TrustError> {
    let mut walked = PathBuf::new();
    for c in dir.components() {
        walked.push(c);
        if matches!(c, Component::RootDir) {
            continue;
        }
        let m = std::fs::symlink_metadata(&walked).map_err(stat_err(&walked))?;
        if m.file_type().is_symlink() && !trusted_uid(m.uid()) {
            return Err(TrustError::Ancestor {
                path: walked,
                dir: dir.to_path_buf(),
                owner: m.uid(),
                mode: m.permissions().mode() & 0o7777,
            });
        }
    }
    let real = std::fs::canonicalize(dir).map_err(stat_err(dir))?;
    let m = std::fs::metadata(&real).map_err(stat_err(&real))?;
    let mode = m.permissions().mode() & 0o7777;
    if !trusted_uid(m.uid()) || mode & 0o022 != 0 {
        return Err(TrustError::Directory {
            path: dir.to_path_buf(),
            owner: m.uid(),
            mode,
            me: euid(),
        });
    }
    for a in real.ancestors().skip(1) {
        let m = std::fs::metadata(a).map_err(stat_err(a))?;
        let mode = m.permissions().mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if !trusted_uid(m.uid()) || (mode & 0o022 != 0 && !sticky) {
            return Err(TrustError::Ancestor {
                path: a.to_path_buf(),
                dir: dir.to_path_buf(),
                owner: m.uid(),
                mode,
            });
        }
    }
    Ok(())
}

/// Checks a file we are about to believe (a pid file): owned by us or root, not
/// writable by group or others. A symbolic link is judged by its target.
pub fn check_file(path: &Path) -> Result<(), TrustError> {
    let m = std::fs::metadata(path).map_err(stat_err(path))?;
    let mode = m.permissions().mode() & 0o7777;
    if !trusted_uid(m.uid()) || mode & 0o022 != 0 {
        return Err(TrustError::File {
            path: path.to_path_buf(),
            owner: m.uid(),
            mode,
            me: euid(),
        });
    }
    Ok(())
}
