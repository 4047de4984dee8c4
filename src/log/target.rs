//! Where log lines end up: stderr, or a file opened for appending that can be opened
//! again by its path (after logrotate moved it away).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::LogError;

/// stderr, or an append-mode file remembered by path.
pub(super) struct Target {
    pub(super) path: Option<PathBuf>,
    file: Option<File>,
}

impl Target {
    pub(super) fn stderr() -> Target {
        Target {
            path: None,
            file: None,
        }
    }

    pub(super) fn open(path: Option<&Path>) -> Result<Target, LogError> {
        let file = match path {
            Some(p) => Some(open_append(p)?),
            None => None,
        };
        Ok(Target {
            path: path.map(Path::to_path_buf),
            file,
        })
    }

    /// The file the master opened at `path`, passed to a worker over its channel
    /// (so that a worker reopens without opening anything by path).
    pub(super) fn adopt(path: Option<PathBuf>, file: File) -> Target {
        Target {
            path,
            file: Some(file),
        }
    }

    /// Another handle on the open file, if there is one (stderr has none to pass).
    pub(super) fn file_handle(&self) -> io::Result<Option<File>> {
        self.file.as_ref().map(File::try_clone).transpose()
    }

    /// A second handle on the same open file (or stderr), for a writer thread.
    pub(super) fn duplicate(&self) -> io::Result<Target> {
        Ok(Target {
            path: self.path.clone(),
            file: match &self.file {
                Some(f) => Some(f.try_clone()?),
                None => None,
            },
        })
    }
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

fn open_append(p: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|source| LogError::Open {
            path: p.to_path_buf(),
            source,
        })
}
