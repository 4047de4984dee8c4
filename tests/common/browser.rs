//! A real browser for the black-box tests: headless Chromium on a page the test
//! writes, which reports what it sees by loading images from a listener of the test's
//! (no CORS involved). Chromium runs in a process group of its own, ended by pid.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Corral;

/// What a page reported: each request line's path, in order.
pub fn reports(listener: TcpListener) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 2048];
            let n = s.read(&mut b).unwrap_or(0);
            let line = String::from_utf8_lossy(&b[..n]);
            if let Some(path) = line.split(' ').nth(1) {
                let path = path.split('?').next().unwrap_or("").to_string();
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                if tx.send(path).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Headless Chromium in a process group of its own, ended (the group, by pid) on drop.
pub struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub fn next(rx: &mpsc::Receiver<String>, what: &str, c: &Corral) -> String {
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the page did not report {what}\n{}", c.log_tail(40)))
}

impl Browser {
    /// Chromium, headless, on `page` (with a profile beside it); None with a printed
    /// reason if it is not installed.
    pub fn open(page: &Path) -> Option<Browser> {
        let Some(chromium) = chromium() else {
            eprintln!(
                "SKIPPED: chromium is not installed (apt-get install chromium; .ci/run installs it)"
            );
            return None;
        };
        let profile = page.with_extension("profile");
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Some(Browser(cmd.spawn().expect("start chromium")))
    }
}

/// A listener for a page's reports: (its port, what arrives).
pub fn report_listener() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the report listener");
    let port = listener.local_addr().expect("its address").port();
    (port, reports(listener))
}

/// The page's `report(what)` function in JavaScript, reporting to `port`.
pub fn report_js(port: u16) -> String {
    format!(
        "const report = (what) => {{ new Image().src = \"http://127.0.0.1:{port}/\" + what + \"?t=\" + Math.random(); }};"
    )
}
