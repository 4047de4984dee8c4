//! Rolling log files (`[log] rotation = "hourly"|"daily"`): tracing-appender's
//! `RollingFileAppender` writes the master's lines, and the master hands each new
//! period's file to its workers.
//!
//! The appender opens files by path, which a worker cannot do: its seccomp filter
//! refuses a write-open and Landlock takes it off the filesystem (both by design: the
//! log file comes from the master). So the appender runs only in the master, which
//! never needs a thread for it (it writes in the calling thread), and at each period
//! boundary the master opens the same file the appender rolled to and passes it to
//! every worker, exactly as on SIGUSR1. This file knows the appender's naming
//! (`<file>.YYYY-MM-DD-HH`, `<file>.YYYY-MM-DD`, UTC), checked against the appender
//! itself in the tests below.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};

use super::LogError;
use crate::config::Rotation;

/// The length of a period, in seconds (None: never rolls).
fn period(rotation: Rotation) -> Option<u64> {
    match rotation {
        Rotation::Never => None,
        Rotation::Hourly => Some(3600),
        Rotation::Daily => Some(86_400),
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The file lines written at `at` go to: `file` itself when the log never rolls.
pub(super) fn path_at(file: &Path, rotation: Rotation, at: SystemTime) -> PathBuf {
    let Some(len) = period(rotation) else {
        return file.to_path_buf();
    };
    let start = unix_secs(at) / len * len;
    let t = time::OffsetDateTime::from_unix_timestamp(start as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut date = format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day());
    if rotation == Rotation::Hourly {
        date.push_str(&format!("-{:02}", t.hour()));
    }
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(date);
    file.with_file_name(name)
}

/// When the period that `at` falls in ends (None: never).
pub(super) fn next_boundary(rotation: Rotation, at: SystemTime) -> Option<SystemTime> {
    let len = period(rotation)?;
    let next = (unix_secs(at) / len + 1) * len;
    Some(UNIX_EPOCH + Duration::from_secs(next))
}

/// The master's appender for `file`: it opens (and creates) the current period's
/// file now, and the next one at the first line written after each boundary.
pub(super) fn appender(file: &Path, rotation: Rotation) -> Result<RollingFileAppender, LogError> {
    let open_err = |e: &dyn std::fmt::Display| LogError::Open {
        path: file.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        return Err(open_err(&"not a file name the appender can use (UTF-8)"));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let rotation = match rotation {
        Rotation::Never => AppenderRotation::NEVER,
        Rotation::Hourly => AppenderRotation::HOURLY,
        Rotation::Daily => AppenderRotation::DAILY,
    };
    RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name)
        .build(dir)
        .map_err(|e| open_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn names_and_boundaries() {
        // 2026-12-07 08:16:41 UTC
        let at = UNIX_EPOCH + Duration::from_secs(1_796_631_401);
        let f = Path::new("/var/log/corral/corral.log");
        assert_eq!(path_at(f, Rotation::Never, at), f);
        assert_eq!(
            path_at(f, Rotation::Hourly, at),
            Path::new("/var/log/corral/corral.log.2026-12-07-08")
        );
        assert_eq!(
            path_at(f, Rotation::Daily, at),
            Path::new("/var/log/corral/corral.log.2026-12-07")
        );
        assert_eq!(next_boundary(Rotation::Never, at), None);
        let h = next_boundary(Rotation::Hourly, at).unwrap();
        assert_eq!(unix_secs(h), 1_796_634_000);
        assert_eq!(
            path_at(f, Rotation::Hourly, h),
            Path::new("/var/log/corral/corral.log.2026-12-07-09")
        );
        let d = next_boundary(Rotation::Daily, at).unwrap();
        assert_eq!(
            path_at(f, Rotation::Daily, d),
            Path::new("/var/log/corral/corral.log.2026-12-08")
        );
        // The last second of a period is still in it.
        let last = h - Duration::from_secs(1);
        assert_eq!(
            path_at(f, Rotation::Hourly, last),
            path_at(f, Rotation::Hourly, at)
        );
    }

    /// The workers' file must be the one the master's appender writes: the appender
    /// names its file itself, so compare with what it created.
    #[test]
    fn the_appender_writes_the_file_path_at_names() {
        for rotation in [Rotation::Never, Rotation::Hourly, Rotation::Daily] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("corral.log");
            let before = path_at(&file, rotation, SystemTime::now());
            let mut a = appender(&file, rotation).unwrap();
            a.write_all(b"a line\n").unwrap();
            a.flush().unwrap();
            let after = path_at(&file, rotation, SystemTime::now());
            let made: Vec<PathBuf> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            // A boundary may pass between the two readings: then either name.
            assert!(
                made.len() <= 2 && made.iter().all(|m| *m == before || *m == after),
                "{rotation:?}: appender made {made:?}, expected {before:?}"
            );
            let text = std::fs::read_to_string(&made[made.len() - 1]).unwrap();
            assert!(made.len() == 2 || text == "a line\n", "{text:?}");
        }
    }
}
