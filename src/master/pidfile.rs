//! The pid file, and the proof that the pid in it is still this corral master.
//!
//! The pid file's only line is the bare pid, as operators and systemd's `PIDFile=`
//! read it. Beside it, `<pid file>.id` records what identifies the master beyond a
//! pid the kernel reuses: its start time, this boot's id, its executable and its
//! config file. `corral -s` signals a pid only once /proc agrees with that record,
//! and a starting master treats a pid file as "already running" only then.
//!
//! Both files are written atomically (a new file with an unpredictable name, created
//! with O_EXCL|O_NOFOLLOW and mode 0644, then renamed) in a runtime directory that
//! must belong to us or root, and removed at exit only while they still name us.

use std::io;
use std::path::{Path, PathBuf};

use crate::os::master::Pid;

use crate::os::cred::{self, TrustError};
use crate::os::{files, process, procfs};

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
    #[error("pid file {path}: {source}")]
    Untrusted { path: PathBuf, source: TrustError },
    #[error("pid {pid} in {path} is not this corral master ({why}); refusing to signal it")]
    NotOurs {
        pid: i32,
        path: PathBuf,
        why: String,
    },
    #[error("pid {pid} in {path} is not running (stale pid file); nothing to signal")]
    NotRunning { pid: i32, path: PathBuf },
}

/// Mode of the pid file and its identity record, whatever the umask.
const FILE_MODE: u32 = 0o644;
/// Mode of a runtime directory we create, whatever the umask.
const DIR_MODE: u32 = 0o755;

/// What identifies a running master, as recorded in `<pid file>.id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// /proc/PID/stat field 22: clock ticks after boot.
    pub start_time: u64,
    pub boot_id: String,
    pub exe: PathBuf,
    pub config: PathBuf,
}

impl Identity {
    fn ours(config: &Path) -> io::Result<Identity> {
        let pid = process::pid().as_raw();
        Ok(Identity {
            pid,
            start_time: procfs::stat(pid)?.start_time,
            boot_id: procfs::boot_id()?,
            exe: procfs::exe(pid)?,
            config: config.to_path_buf(),
        })
    }

    fn render(&self) -> String {
        format!(
            "pid={}\nstart_time={}\nboot_id={}\nexe={}\nconfig={}\n",
            self.pid,
            self.start_time,
            self.boot_id,
            self.exe.display(),
            self.config.display()
        )
    }

    fn parse(text: &str) -> Option<Identity> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        };
        Some(Identity {
            pid: get("pid")?.parse().ok()?,
            start_time: get("start_time")?.parse().ok()?,
            boot_id: get("boot_id")?.to_string(),
            exe: PathBuf::from(get("exe")?),
            config: PathBuf::from(get("config")?),
        })
    }
}

/// The identity record beside `pid_file`.
pub fn id_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".id");
    PathBuf::from(s)
}

/// Our pid file, removed by `remove`.
pub struct PidFile {
    path: PathBuf,
    pid: Pid,
    identity: String,
}

impl PidFile {
    /// Writes our pid (and identity record) to `path`, unless the pid there is proven
    /// to be a live corral master. `config` is recorded as the file we serve.
    pub fn create(path: &Path, config: &Path) -> Result<PidFile, PidFileError> {
        let write_err = |source| PidFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = runtime_dir(path);
        files::create_dir_all(&dir, DIR_MODE).map_err(write_err)?;
        cred::check_runtime_dir(&dir).map_err(|source| PidFileError::Untrusted {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(Proof::Master(pid)) = prove(path) {
            if pid != process::pid() {
                return Err(PidFileError::Running {
                    pid: pid.as_raw(),
                    path: path.to_path_buf(),
                });
            }
        }
        let pid = process::pid();
        let identity = Identity::ours(config).map_err(write_err)?.render();
        let file = PidFile {
            path: path.to_path_buf(),
            pid,
            identity,
        };
        file.write_at(path)?;
        Ok(file)
    }

    /// The identity record first: a reader that finds the new pid finds its record.
    fn write_at(&self, path: &Path) -> Result<(), PidFileError> {
        let id = id_path(path);
        write_atomic(&id, &self.identity).map_err(|source| PidFileError::Write {
            path: id.clone(),
            source,
        })?;
        write_atomic(path, &format!("{}\n", self.pid)).map_err(|source| PidFileError::Write {
            path: path.to_path_buf(),
            source,
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
        let _ = std::fs::rename(id_path(&self.path), id_path(&old));
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
        self.write_at(&orig)?;
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(id_path(&self.path));
        self.path = orig;
        Ok(())
    }

    /// Removes the files if they still name us (a new master may have taken them over).
    pub fn remove(self) {
        if read(&self.path).ok() == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
        let id = id_path(&self.path);
        let recorded = std::fs::read_to_string(&id)
            .ok()
            .and_then(|t| Identity::parse(&t));
        if recorded.is_some_and(|r| r.pid == self.pid.as_raw()) {
            let _ = std::fs::remove_file(&id);
        }
    }
}

/// The directory holding `path` ("." for a bare file name).
pub fn runtime_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `<pid_file>.oldbin`, the old master's pid file during a binary upgrade.
pub fn oldbin(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".oldbin");
    PathBuf::from(s)
}

fn write_atomic(path: &Path, content: &str) -> io::Result<()> {
    let tmp = files::write_new_beside(path, content.as_bytes(), FILE_MODE)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads the pid on the first line of `path`.
pub fn read(path: &Path) -> Result<Pid, PidFileError> {
    let content = std::fs::read_to_string(path).map_err(|source| PidFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    content
        .lines()
        .next()
        .unwrap_or("")
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

/// What the process named by a pid file turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The live master that wrote the file.
    Master(Pid),
    /// Nothing runs under that pid any more (or only its zombie).
    Gone(Pid),
    /// Something runs under that pid, but not provably the master: the reason.
    Other(Pid, String),
}

/// Checks the pid in `path` against its identity record and /proc.
pub fn prove(path: &Path) -> Result<Proof, PidFileError> {
    let pid = read(path)?;
    let raw = pid.as_raw();
    let stat = match procfs::stat(raw) {
        Ok(s) if s.state != 'Z' => s,
        _ => return Ok(Proof::Gone(pid)),
    };
    let id = id_path(path);
    let recorded = match std::fs::read_to_string(&id) {
        Ok(t) => match Identity::parse(&t) {
            Some(r) => r,
            None => return Ok(Proof::Other(pid, format!("{} is malformed", id.display()))),
        },
        Err(e) => {
            return Ok(Proof::Other(
                pid,
                format!("no identity record {}: {e}", id.display()),
            ))
        }
    };
    if recorded.pid != raw {
        return Ok(Proof::Other(
            pid,
            format!("{} records pid {}", id.display(), recorded.pid),
        ));
    }
    match procfs::boot_id() {
        Ok(b) if b == recorded.boot_id => {}
        Ok(_) => {
            return Ok(Proof::Other(
                pid,
                "the pid file was written before the last reboot".into(),
            ))
        }
        Err(e) => return Ok(Proof::Other(pid, format!("cannot read the boot id: {e}"))),
    }
    if stat.start_time != recorded.start_time {
        return Ok(Proof::Other(
            pid,
            format!(
                "it started at tick {} after boot, the master at tick {}",
                stat.start_time, recorded.start_time
            ),
        ));
    }
    match procfs::exe(raw) {
        Ok(exe) if exe == recorded.exe => Ok(Proof::Master(pid)),
        Ok(exe) => Ok(Proof::Other(
            pid,
            format!(
                "it runs {}, the master ran {}",
                exe.display(),
                recorded.exe.display()
            ),
        )),
        Err(e) => Ok(Proof::Other(
            pid,
            format!("cannot read /proc/{raw}/exe: {e}"),
        )),
    }
}

/// The pid in `path` if it is proven to be the master; the reason otherwise. The pid
/// file must be in a directory (and be a file) that only we or root can write.
pub fn proven_master(path: &Path) -> Result<Pid, PidFileError> {
    let untrusted = |source| PidFileError::Untrusted {
        path: path.to_path_buf(),
        source,
    };
    let dir = std::path::absolute(runtime_dir(path)).map_err(|source| PidFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if dir.exists() {
        cred::check_runtime_dir(&dir).map_err(untrusted)?;
    }
    if path.exists() {
        cred::check_file(path).map_err(untrusted)?;
    }
    match prove(path)? {
        Proof::Master(pid) => Ok(pid),
        Proof::Gone(pid) => Err(PidFileError::NotRunning {
            pid: pid.as_raw(),
            path: path.to_path_buf(),
        }),
        Proof::Other(pid, why) => Err(PidFileError::NotOurs {
            pid: pid.as_raw(),
            path: path.to_path_buf(),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips() {
        let id = Identity::ours(Path::new("/etc/corral/corral.toml")).unwrap();
        assert_eq!(Identity::parse(&id.render()), Some(id));
    }

    /// A pid file made by this process (the test plays the master) in a fresh
    /// private directory.
    fn ours() -> (tempfile::TempDir, PathBuf, PidFile) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run/corral.pid");
        let f = PidFile::create(&path, Path::new("/etc/corral/corral.toml")).expect("create");
        (dir, path, f)
    }

    /// The pid of a process that has exited and been reaped.
    fn gone_pid() -> i32 {
        let mut c = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = c.id() as i32;
        c.wait().expect("reap");
        pid
    }

    #[test]
    fn a_pid_file_proves_its_master_and_nothing_else() {
        let (_dir, path, _f) = ours();
        let me = process::pid();
        assert_eq!(prove(&path).unwrap(), Proof::Master(me));
        assert_eq!(proven_master(&path).unwrap(), me);
        // The same master may write it again (a restart of start-up); the files are
        // private to us or root, mode 0644.
        PidFile::create(&path, Path::new("/etc/corral/corral.toml")).expect("again");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        // A pid the kernel reused for something else: the record names another pid.
        std::fs::write(&path, "1\n").unwrap();
        assert!(
            matches!(prove(&path).unwrap(), Proof::Other(p, why) if p.as_raw() == 1 && why.contains("records pid"))
        );
        assert!(matches!(
            proven_master(&path),
            Err(PidFileError::NotOurs { pid: 1, .. })
        ));

        // A master that is gone.
        let dead = gone_pid();
        std::fs::write(&path, format!("{dead}\n")).unwrap();
        assert!(matches!(prove(&path).unwrap(), Proof::Gone(p) if p.as_raw() == dead));
        assert!(matches!(
            proven_master(&path),
            Err(PidFileError::NotRunning { .. })
        ));

        // Garbage, and a missing file.
        std::fs::write(&path, "hello\n").unwrap();
        assert!(matches!(read(&path), Err(PidFileError::Garbage { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read(&path), Err(PidFileError::Read { .. })));
    }

    #[test]
    fn an_identity_record_that_disagrees_with_proc_is_not_proof() {
        let (_dir, path, _f) = ours();
        let id = id_path(&path);
        let mine = Identity::parse(&std::fs::read_to_string(&id).unwrap()).unwrap();
        let with = |f: &dyn Fn(&mut Identity)| {
            let mut r = mine.clone();
            f(&mut r);
            std::fs::write(&id, r.render()).unwrap();
            prove(&path).unwrap()
        };
        let why = |p: Proof| match p {
            Proof::Other(_, why) => why,
            other => panic!("proved {other:?}"),
        };
        assert!(why(with(&|r| r.start_time += 1)).contains("started at tick"));
        assert!(
            why(with(&|r| r.boot_id = "another-boot".into())).contains("before the last reboot")
        );
        assert!(why(with(&|r| r.exe = PathBuf::from("/usr/bin/other")))
            .contains("the master ran /usr/bin/other"));
        std::fs::write(&id, "nonsense").unwrap();
        assert!(why(prove(&path).unwrap()).contains("malformed"));
        std::fs::remove_file(&id).unwrap();
        assert!(why(prove(&path).unwrap()).contains("no identity record"));
    }

    #[test]
    fn oldbin_at_an_upgrade_back_at_a_rollback_and_removed_only_while_ours() {
        let (_dir, path, mut f) = ours();
        f.rename_to_oldbin().unwrap();
        let old = oldbin(&path);
        assert!(!path.exists() && old.exists() && id_path(&old).exists());
        assert_eq!(prove(&old).unwrap(), Proof::Master(process::pid()));
        // A new master would write the path now; it fails: we name it again.
        std::fs::write(&path, "1\n").unwrap();
        f.restore_from_oldbin().unwrap();
        assert_eq!(read(&path).unwrap(), process::pid());
        assert!(!old.exists() && !id_path(&old).exists());
        // Taken over by another master: removing ours leaves its files alone.
        std::fs::write(&path, "1\n").unwrap();
        f.remove();
        assert!(path.exists(), "a pid file naming another master stays");
        assert!(!id_path(&path).exists(), "our own record goes");
    }

    #[test]
    fn a_runtime_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = run.join("corral.pid");
        assert!(matches!(
            PidFile::create(&path, Path::new("/etc/corral/corral.toml")),
            Err(PidFileError::Untrusted { .. })
        ));
        assert_eq!(runtime_dir(Path::new("corral.pid")), PathBuf::from("."));
    }
}
