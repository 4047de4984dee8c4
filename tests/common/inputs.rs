//! Helpers for `tests/inputs.rs`: running `corral` with extra environment, writing a
//! config into a temp dir, and a corral whose stderr is a pipe that the test holds
//! (and may leave unread, to block the log writer).

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{
    corral_bin, echo, free_port, live_children, proc_alive, read_stat, wait_until, CliOutput, Echo,
    ProcId, START_TIMEOUT,
};

/// Runs `corral ARGS` with `env` added, output to files in `dir`; kills it (by pid) if
/// it has not exited after `timeout`, and reports that as a timeout (`None`).
pub fn cli_env(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Option<CliOutput> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = dir.join(format!("inputs-cli-{n}.stdout"));
    let err_path = dir.join(format!("inputs-cli-{n}.stderr"));
    let mut child = Command::new(corral_bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create cli stdout file"))
        .stderr(File::create(&err_path).expect("create cli stderr file"))
        .spawn()
        .expect("spawn corral");
    let pid = child.id() as i32;
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait corral");
        status.is_some()
    });
    let Some(status) = status else {
        // It started serving with a config it should have refused: kill it and what
        // it forked, by pid.
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        let kids = live_children(pid);
        let _ = child.kill();
        let _ = child.wait();
        for k in kids {
            if proc_alive(k) {
                let _ = kill(Pid::from_raw(k.pid), Signal::SIGKILL);
            }
        }
        return None;
    };
    Some(CliOutput {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// Writes `body` (with `{dir}` replaced by `dir`) to `dir/NAME` and returns the path.
pub fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body.replace("{dir}", &dir.display().to_string())).expect("write config");
    path
}

/// A corral master whose stderr is a pipe held by the test. Until `drain` is called
/// nobody reads it, so once the pipe buffer is full every write to it blocks.
pub struct PipedCorral {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    master: ProcId,
    child: Mutex<Child>,
    stderr: Mutex<Option<ChildStderr>>,
    /// What `drain` has read so far.
    pub read: Arc<Mutex<Vec<u8>>>,
    seen: Mutex<Vec<ProcId>>,
}

impl PipedCorral {
    /// Starts corral with `template` (`{port}` and `{dir}` replaced; it must set
    /// `pid_file = "{dir}/corral.pid"` and have one echo listener on `{port}`) and waits
    /// for `workers` workers and an echo round trip.
    pub fn start(template: &str, workers: usize) -> PipedCorral {
        let dir = tempfile::Builder::new()
            .prefix("corral-inputs-")
            .tempdir()
            .expect("create temp dir");
        let port = free_port();
        let config_path = write_config(
            dir.path(),
            "corral.toml",
            &template.replace("{port}", &port.to_string()),
        );
        let mut child = Command::new(corral_bin())
            .arg("-c")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let pid = child.id() as i32;
        let stderr = child.stderr.take();
        let c = PipedCorral {
            master: ProcId {
                pid,
                start: read_stat(pid).map(|s| s.start).unwrap_or(0),
            },
            dir,
            config_path,
            port,
            child: Mutex::new(child),
            stderr: Mutex::new(stderr),
            read: Arc::new(Mutex::new(Vec::new())),
            seen: Mutex::new(Vec::new()),
        };
        let ready = wait_until(START_TIMEOUT, || {
            if c.workers().len() != workers {
                return false;
            }
            let Ok(mut s) = TcpStream::connect_timeout(&c.addr(), Duration::from_secs(1)) else {
                return false;
            };
            matches!(echo(&mut s, b"ping\n", Duration::from_secs(2)), Echo::Ok)
        });
        assert!(ready, "piped corral not ready within {START_TIMEOUT:?}");
        c
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// Live workers (remembered for cleanup).
    pub fn workers(&self) -> Vec<ProcId> {
        let w = live_children(self.master.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &w {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        w
    }

    /// Starts reading the pipe in a thread, into `read`.
    pub fn drain(&self) {
        let Some(mut r) = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let out = Arc::clone(&self.read);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
    }

    /// What `drain` read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.read.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Drop for PipedCorral {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.master.pid);
        if proc_alive(self.master) {
            let _ = kill(pid, Signal::SIGSTOP);
            let _ = self.workers();
            let _ = kill(pid, Signal::SIGKILL);
        }
        {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for w in &seen {
            if proc_alive(*w) {
                let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
            }
        }
        wait_until(Duration::from_secs(10), || {
            seen.iter().all(|w| !proc_alive(*w))
        });
    }
}
