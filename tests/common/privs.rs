//! Helpers for tests/privs.rs: reading a process's credentials and limits from /proc,
//! a throw-away system user, borrowing a server socket from another process
//! (`pidfd_getfd`) to read its options, and corral as PID 1 of a pid namespace.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The whitespace-separated values of `Key:` in /proc/PID/status.
pub fn status_field(pid: i32, key: &str) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// (soft, hard) of a limit line in /proc/PID/limits, e.g. "Max open files".
pub fn limit(pid: i32, name: &str) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default();
    let f: Vec<&str> = line[name.len().min(line.len())..]
        .split_whitespace()
        .collect();
    (
        f.first().unwrap_or(&"").to_string(),
        f.get(1).unwrap_or(&"").to_string(),
    )
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A system user made for one test (with its own group, and member of `extra`),
/// deleted on drop, even when the test fails.
pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TempUser {
    pub fn new(tag: &str, extra_group: &str) -> Option<TempUser> {
        if !have("useradd") {
            return None;
        }
        let name = format!("crl{tag}{}", std::process::id() % 100_000);
        // Left over by a run that was killed before its guard ran (same pid reused).
        let _ = Command::new("userdel")
            .arg(&name)
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("useradd")
            .args([
                "-M",
                "-r",
                "-U",
                "-s",
                "/usr/sbin/nologin",
                "-G",
                extra_group,
            ])
            .arg(&name)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Some(TempUser { name, uid, gid })
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the user's own group (USERGROUPS_ENAB); make sure.
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// The gid of a group by name.
pub fn gid_of(group: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// The fd number under which `pid` holds socket `inode`.
pub fn fd_of_inode(pid: i32, inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if fs::read_link(e.path()).ok()?.to_string_lossy() == want {
            return e.file_name().to_string_lossy().parse().ok();
        }
    }
    None
}

/// A duplicate of `pid`'s fd `fd` in this process (`pidfd_getfd(2)`, root only), so
/// that a test can `getsockopt` the server's own socket.
pub fn borrow_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; each returned fd is ours.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(got as i32))
    }
}

/// An int socket option of `fd`.
pub fn sockopt(fd: &OwnedFd, level: i32, name: i32) -> i32 {
    let mut v: i32 = -1;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

/// Inode of the listening IPv4 TCP socket on `port` (from /proc/net/tcp).
pub fn listener_inode(port: u16) -> Option<u64> {
    let tcp = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1].ends_with(&local) && f[3] == "0A")
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// `ss -lnt` Send-Q of the listener on `port`: its backlog.
pub fn ss_backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hlnt", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `ss -tno` timer of the server side of the connection `port` ← `client_port`.
pub fn ss_timer(port: u16, client_port: u16) -> String {
    let out = Command::new("ss")
        .args([
            "-Htno",
            "state",
            "established",
            &format!("( sport = :{port} and dport = :{client_port} )"),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// corral as PID 1 of a new pid namespace (`unshare --pid --fork --mount-proc`),
/// started through `wrapper` (a shell script given the corral command line). Dropping
/// it kills `unshare`, whose `--kill-child` takes the namespace down.
pub struct Pid1 {
    pub child: Child,
    pub dir: PathBuf,
}

impl Pid1 {
    pub fn start(dir: &Path, wrapper: &Path, config: &Path) -> Pid1 {
        let log = fs::File::create(dir.join("corral.stderr")).expect("log");
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(wrapper)
            .arg(super::corral_bin())
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        Pid1 {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// The namespace's PID 1 (host pid).
    pub fn init(&self) -> Option<i32> {
        super::live_children(self.child.id() as i32)
            .into_iter()
            .next()
            .map(|p| p.pid)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("corral.stderr")).unwrap_or_default()
    }

    /// Whether `unshare` has exited (the namespace is gone).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Children of `pid` (host pids) with their state letter, from /proc.
pub fn children_states(pid: i32) -> Vec<(i32, char, String)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if f.len() > 1 && f[1].parse::<i32>().ok() == Some(pid) {
            out.push((p, f[0].chars().next().unwrap_or('?'), comm));
        }
    }
    out
}
