//! A real browser for the black-box tests: headless Chromium on a page the test
//! writes, which reports what it sees by loading images from a listener of the test's
//! (no CORS involved). Chromium runs in a process group of its own, ended by pid.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Corral;

/// What a page reported: each request line's path, in order.
fn reports(listener: TcpListener) -> mpsc::Receiver<String> {
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
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A page the test writes, open in headless Chromium, and what it reports.
pub struct Page {
    reports: mpsc::Receiver<String>,
    _browser: Browser,
    _dir: tempfile::TempDir,
}

impl Page {
    /// Opens a page running `script`, in which `report(what)` reports `/what` to the
    /// test; None, with a printed reason, where Chromium is not installed.
    pub fn open(script: &str) -> Option<Page> {
        let Some(chromium) = chromium() else {
            super::skipped(format_args!(
                "SKIPPED: a browser test: chromium is not installed (apt-get install chromium; .ci/run installs it)"
            ));
            return None;
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the report listener");
        let port = listener.local_addr().expect("its address").port();
        let reports = reports(listener);
        let dir = tempfile::tempdir().expect("temp dir");
        let page = dir.path().join("page.html");
        // Reports are image loads from the test's listener: no CORS involved.
        std::fs::write(
            &page,
            format!(
                "<!doctype html><meta charset=\"utf-8\"><title>test</title><script>\n\
                 const report = (what) => {{ new Image().src = \"http://127.0.0.1:{port}/\" + what + \"?t=\" + Math.random(); }};\n\
                 {script}\n</script>\n"
            ),
        )
        .expect("write the page");
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let browser = Browser(cmd.spawn().expect("start chromium"));
        Some(Page {
            reports,
            _browser: browser,
            _dir: dir,
        })
    }

    /// The next report (waiting up to 60 s: Chromium starts slowly on a loaded box).
    pub fn next(&self, what: &str, c: &Corral) -> String {
        self.reports
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the page did not report {what}\n{}", c.log_tail(40)))
    }

    /// Nothing more was reported so far.
    pub fn quiet(&self) -> bool {
        self.reports.try_recv().is_err()
    }
}
