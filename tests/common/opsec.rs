//! Helpers for the operator-safety tests (`tests/operators.rs`): a throwaway second
//! user, a bystander process, a master started by hand (own paths, own cwd, own
//! binary, own umask) and a guard that kills every master a test made, by pid.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{live_children, proc_alive, proc_id, wait_until, Conf, ProcId};

/// Output of one command run to completion.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` with its output in files under `dir`, killing it (by pid) if it has not
/// exited after `timeout`.
pub fn run(mut cmd: Command, dir: &Path, timeout: Duration) -> Ran {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out = dir.join(format!("run-{n}.stdout"));
    let err = dir.join(format!("run-{n}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("create stdout file"))
        .stderr(File::create(&err).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not exit within {timeout:?}; stderr: {}",
            fs::read_to_string(&err).unwrap_or_default()
        );
    };
    Ran {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// `binary ARGS` in `cwd`.
pub fn cmd(binary: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(binary);
    c.args(args).current_dir(cwd);
    c
}

/// A throwaway user, deleted (with `userdel`) when dropped, whatever the outcome.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// None (with the reason printed) when this box cannot add users.
    pub fn create() -> Option<TestUser> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        if Command::new("useradd").arg("--help").output().is_err() {
            println!("SKIP: useradd is missing, so there is no second uid to test with");
            return None;
        }
        let name = format!(
            "crl{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // Concurrent useradd calls contend for the passwd lock: retry a little.
        let mut last = String::new();
        for _ in 0..20 {
            let out = Command::new("useradd")
                .args(["-M", "-N", "-s", "/usr/sbin/nologin", &name])
                .output()
                .expect("run useradd");
            if out.status.success() {
                let id = |flag: &str| -> u32 {
                    let o = Command::new("id")
                        .args([flag, &name])
                        .output()
                        .expect("run id");
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse()
                        .expect("numeric id")
                };
                let (uid, gid) = (id("-u"), id("-g"));
                assert_ne!(uid, 0, "test user must not be root");
                return Some(TestUser { name, uid, gid });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("useradd {name} kept failing: {last}");
    }

    /// `cmd`, run as this user.
    pub fn command(&self, binary: &Path, cwd: &Path, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = cmd(binary, cwd, args);
        c.uid(self.uid).gid(self.gid);
        c
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..20 {
            match Command::new("userdel").arg(&self.name).status() {
                Ok(s) if s.success() => return,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        eprintln!("could not remove test user {}", self.name);
    }
}

/// A process that is not corral, killed and reaped when dropped.
pub struct Bystander {
    child: Child,
    pub id: ProcId,
}

impl Bystander {
    pub fn spawn() -> Bystander {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let id = proc_id(pid).expect("sleep's /proc entry");
        Bystander { child, id }
    }

    pub fn pid(&self) -> i32 {
        self.id.pid
    }

    /// Alive and the same process (not a zombie, not reused).
    pub fn alive(&self) -> bool {
        proc_alive(self.id)
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills, by pid, every master registered with it and their children when dropped.
/// Masters that are not our children (daemons, upgraded masters) are registered by
/// pid and start time, so a reused pid is never hit.
#[derive(Default)]
pub struct Reaper {
    masters: Mutex<Vec<ProcId>>,
    children: Mutex<Vec<Child>>,
}

impl Reaper {
    pub fn adopt(&self, pid: i32) {
        if let Some(p) = proc_id(pid) {
            let mut m = self.masters.lock().unwrap();
            if !m.contains(&p) {
                m.push(p);
            }
        }
    }

    pub fn adopt_child(&self, child: Child) {
        self.adopt(child.id() as i32);
        self.children.lock().unwrap().push(child);
    }

    /// Reaps our children that have exited (an unreaped one still looks alive).
    pub fn reap(&self) {
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.try_wait();
        }
    }

    /// Whether every registered master is gone.
    pub fn all_gone(&self) -> bool {
        self.reap();
        self.masters.lock().unwrap().iter().all(|p| !proc_alive(*p))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let masters = self.masters.lock().unwrap().clone();
        for m in &masters {
            if proc_alive(*m) {
                for w in live_children(m.pid) {
                    let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(m.pid), Signal::SIGKILL);
            }
        }
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `binary -c config` (from `cwd`, stderr to `log`) under `reaper`, and waits
/// until the pid file names it and its control socket exists, or it exits. Returns
/// its pid, or None (and its stderr) when it exited first.
pub fn start_master(
    reaper: &Reaper,
    mut cmd: Command,
    pid_file: &Path,
    socket: &Path,
    log: &Path,
) -> Result<i32, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("create master log"))
        .spawn()
        .expect("spawn master");
    let pid = child.id() as i32;
    reaper.adopt_child(child);
    let up = wait_until(Duration::from_secs(30), || {
        reaper.reap();
        let named = fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
            == Some(pid);
        let gone = proc_id(pid).map(|p| !proc_alive(p)).unwrap_or(true);
        gone || (named && socket.exists())
    });
    let alive = proc_id(pid).map(proc_alive).unwrap_or(false);
    if up && alive {
        Ok(pid)
    } else {
        Err(fs::read_to_string(log).unwrap_or_default())
    }
}

/// An echo-only config with the given extra `[master]` lines.
pub fn echo_config(port: u16, master: &str) -> String {
    Conf::bare(1)
        .stop("3s")
        .drain("5s")
        .master(master)
        .render_on(port)
}

/// Sets the mode of `path`.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The permission bits of `path` (not following a final symlink).
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}
