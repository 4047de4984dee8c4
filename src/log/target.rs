//! Where log lines end up: stderr, or a file opened for appending that can be opened
//! again by its path (after logrotate moved it away), or a rolling file
//! ([`super::rolling`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing_appender::rolling::RollingFileAppender;
use tracing_subscriber::fmt::MakeWriter;

use super::{rolling, LogError};
use crate::config::Rotation;

/// stderr, or an append-mode file remembered by path.
pub(super) struct Target {
    /// The configured file; None: stderr.
    pub(super) path: Option<PathBuf>,
    pub(super) rotation: Rotation,
    /// The file written, or (in a rolling master) the same file as the appender's,
    /// opened again to hand to workers.
    file: Option<File>,
    /// Which file `file` is: `path`, or the current period's file when rolling.
    pub(super) current: Option<PathBuf>,
    /// A rolling master's writer. Never in a worker: it opens files by path.
    appender: Option<RollingFileAppender>,
}

impl Target {
    pub(super) fn stderr() -> Target {
        Target {
            path: None,
            rotation: Rotation::Never,
            file: None,
            current: None,
            appender: None,
        }
    }

    /// The master's target: with `rotation`, tracing-appender's rolling appender,
    /// which creates the current period's file (and its directory).
    pub(super) fn open(path: Option<&Path>, rotation: Rotation) -> Result<Target, LogError> {
        let Some(path) = path else {
            return Ok(Target::stderr());
        };
        if rotation == Rotation::Never {
            return Target::open_plain(path, rotation);
        }
        let appender = rolling::appender(path, rotation)?;
        let mut t = Target::open_plain(path, rotation)?;
        t.appender = Some(appender);
        Ok(t)
    }

    /// The file for now (the current period's when rolling), without an appender:
    /// what a worker opens by path.
    pub(super) fn open_plain(path: &Path, rotation: Rotation) -> Result<Target, LogError> {
        let current = rolling::path_at(path, rotation, SystemTime::now());
        let file = open_append(&current)?;
        Ok(Target {
            path: Some(path.to_path_buf()),
            rotation,
            file: Some(file),
            current: Some(current),
            appender: None,
        })
    }

    /// The file the master opened, passed to a worker over its channel (so that a
    /// worker reopens without opening anything by path).
    pub(super) fn adopt(path: Option<PathBuf>, rotation: Rotation, file: File) -> Target {
        Target {
            current: path
                .as_deref()
                .map(|p| rolling::path_at(p, rotation, SystemTime::now())),
            path,
            rotation,
            file: Some(file),
            appender: None,
        }
    }

    /// Another handle on the open file, if there is one (stderr has none to pass).
    pub(super) fn file_handle(&self) -> io::Result<Option<File>> {
        self.file.as_ref().map(File::try_clone).transpose()
    }

    /// A second handle on the same open file (or stderr), for a worker's writer
    /// thread: never the appender.
    pub(super) fn duplicate(&self) -> io::Result<Target> {
        Ok(Target {
            path: self.path.clone(),
            rotation: self.rotation,
            file: self.file_handle()?,
            current: self.current.clone(),
            appender: None,
        })
    }

    /// True for a rolling master's target (it has the appender).
    pub(super) fn rolls(&self) -> bool {
        self.appender.is_some()
    }

    /// In a rolling master, when a period ended: makes the appender roll now (not at
    /// its next line) and opens the same new file for the workers. False when there
    /// is nothing to do (not rolling, or still the same period).
    pub(super) fn roll(&mut self, now: SystemTime) -> Result<bool, LogError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let next = rolling::path_at(path, self.rotation, now);
        if self.current.as_ref() == Some(&next) {
            return Ok(false);
        }
        if let Some(a) = &self.appender {
            // make_writer rolls over when a boundary passed; nothing is written.
            drop(a.make_writer());
        }
        self.file = Some(open_append(&next)?);
        self.current = Some(next);
        Ok(true)
    }
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match (&mut self.appender, &mut self.file) {
            (Some(a), _) => a.write(buf),
            (None, Some(f)) => f.write(buf),
            (None, None) => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match (&mut self.appender, &mut self.file) {
            (Some(a), _) => a.flush(),
            (None, Some(f)) => f.flush(),
            (None, None) => io::stderr().flush(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A rolling master's target, one period on: it opens the next period's file for
    /// its workers (the appender rolls by its own clock, which a test cannot move).
    #[test]
    fn a_new_period_opens_the_next_file_for_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corral.log");
        let mut t = Target::open(Some(&file), Rotation::Hourly).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            t.current.as_deref(),
            Some(rolling::path_at(&file, Rotation::Hourly, now).as_path())
        );
        // Still the same period: nothing to do (unless the hour just turned).
        let same = t.roll(now).unwrap();
        assert!(!same || t.current != Some(rolling::path_at(&file, Rotation::Hourly, now)));
        let later = now + Duration::from_secs(3600);
        assert!(t.roll(later).unwrap());
        let next = rolling::path_at(&file, Rotation::Hourly, later);
        assert_eq!(t.current.as_deref(), Some(next.as_path()));
        let mut handed = t.file_handle().unwrap().unwrap();
        handed.write_all(b"from a worker\n").unwrap();
        assert_eq!(std::fs::read_to_string(&next).unwrap(), "from a worker\n");
        assert!(!t.roll(later).unwrap(), "rolled twice for one period");
        // Never rolls without a rotation.
        let mut plain = Target::open(Some(&file), Rotation::Never).unwrap();
        assert!(!plain.roll(later).unwrap());
    }
}
