//! Creating runtime files safely as root: directories and files get the mode we ask
//! for whatever the umask, and temporary files get an unpredictable name and are
//! never opened through a symbolic link someone planted.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

use super::syscall::{cvt, retry};

/// Creates `dir` and any missing parents, each with exactly `mode` (set again after
/// `mkdir`, which the umask trims). Existing directories are left as they are.
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        // Someone else made it meanwhile: the caller checks whose it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// 64 random bits from the kernel, as 16 hex digits.
pub fn random_hex() -> io::Result<String> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        let tail = &mut buf[got..];
        let n = retry(|| {
            // SAFETY: the pointer and length describe the unfilled tail of `buf`.
            cvt(unsafe { libc::getrandom(tail.as_mut_ptr().cast(), tail.len(), 0) })
        })?;
        got += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `content` to a new file next to `target` with an unpredictable name and
/// exactly `mode`, created with O_EXCL|O_NOFOLLOW (an existing file or planted link
/// at that name makes it fail instead of being followed), and returns its path for
/// the caller to rename over `target`.
pub fn write_new_beside(target: &Path, content: &[u8], mode: u32) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.{}", random_hex()?));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let written = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(content));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Runs `f` with the process umask set to `mask`, then restores it. The umask is
/// process-wide: only for the single-threaded master and CLI, around one call (a
/// socket `bind`, whose file mode nothing else can set atomically).
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    let old = umask(Mode::from_bits_truncate(mask as libc::mode_t));
    let out = f();
    umask(old);
    out
}
