//! The pid file: written atomically (temp file + rename) so a reader never sees half a
//! pid, refused when it names a live corral master, and removed at exit only if it
//! still names us.

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::os::process;

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("corral is already running with pid {pid} (pid file {path})")]
    Running { pid: i32, path: PathBuf },
    #[error("cannot write pid file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read pid file {path}: {source} (is corral running?)")]
    Read { path: PathBuf, source: io::Error },
    #[error("pid file {path} does not hold a pid: {content:?}")]
    Garbage { path: PathBuf, content: String },
}

/// Our pid file, removed by `remove`.
pub struct PidFile {
    path: PathBuf,
    pid: Pid,
}

impl PidFile {
    /// Writes our pid to `path`, unless a live corral process is named there.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        if let Ok(pid) = read(path) {
            if pid != process::pid() && process::alive(pid) && is_corral(pid) {
                return Err(PidFileError::Running {
                    pid: pid.as_raw(),
                    path: path.to_path_buf(),
                });
            }
        }
        let pid = process::pid();
        write_atomic(path, &format!("{pid}\n")).map_err(|source| PidFileError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// On binary upgrade: our pid file becomes `<pid_file>.oldbin`, leaving the path
    /// free for the new master.
    pub fn rename_to_oldbin(&mut self) -> Result<(), PidFileError> {
        let old = oldbin(&self.path);
        std::fs::rename(&self.path, &old).map_err(|source| PidFileError::Write {
            path: old.clone(),
            source,
        })?;
        self.path = old;
        Ok(())
    }

    /// On rollback: the pid file names us again (overwriting whatever a failed new
    /// master wrote there).
    pub fn restore_from_oldbin(&mut self) -> Result<(), PidFileError> {
        let Some(orig) = self
            .path
            .to_str()
            .and_then(|p| p.strip_suffix(".oldbin"))
            .map(PathBuf::from)
        else {
            return Ok(());
        };
        write_atomic(&orig, &format!("{}\n", self.pid)).map_err(|source| PidFileError::Write {
            path: orig.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&self.path);
        self.path = orig;
        Ok(())
    }

    /// Removes the file if it still names us (a new master may have taken it over).
    pub fn remove(self) {
        if read(&self.path).ok() == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn oldbin(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".oldbin");
    PathBuf::from(s)
}

fn is_corral(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split('\0').next().unwrap_or("").contains("corral"))
        .unwrap_or(false)
}

fn write_atomic(path: &Path, content: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", process::pid()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads the pid in `path`.
pub fn read(path: &Path) -> Result<Pid, PidFileError> {
    let content = std::fs::read_to_string(path).map_err(|source| PidFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    content
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| PidFileError::Garbage {
            path: path.to_path_buf(),
            content,
        })
}
