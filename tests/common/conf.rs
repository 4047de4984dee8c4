//! The config builder every test uses, and the two edits the harness makes to a
//! config body (finding `workers = N`, adding the pid file).

use std::path::Path;

/// A config for one echo listener; `render()` gives a template where `{port}`
/// stands for the listening port (the harness adds the pid file).
#[derive(Clone, Debug)]
pub struct Conf {
    pub workers: usize,
    pub drain_timeout: String,
    pub stop_timeout: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    pub level: String,
}

impl Conf {
    pub fn new(workers: usize) -> Conf {
        Conf {
            workers,
            drain_timeout: "20s".into(),
            stop_timeout: "3s".into(),
            idle_timeout: "60s".into(),
            max_connections: 1024,
            level: "info".into(),
        }
    }
    pub fn drain(mut self, d: &str) -> Conf {
        self.drain_timeout = d.into();
        self
    }
    pub fn stop(mut self, d: &str) -> Conf {
        self.stop_timeout = d.into();
        self
    }
    pub fn idle(mut self, d: &str) -> Conf {
        self.idle_timeout = d.into();
        self
    }
    pub fn render(&self) -> String {
        format!(
            "[master]\n\
             workers = {}\n\
             drain_timeout = \"{}\"\n\
             stop_timeout = \"{}\"\n\
             \n\
             [worker]\n\
             max_connections = {}\n\
             idle_timeout = \"{}\"\n\
             \n\
             [log]\n\
             level = \"{}\"\n\
             \n\
             [[listen]]\n\
             address = \"127.0.0.1:{{port}}\"\n\
             service = \"echo\"\n",
            self.workers,
            self.drain_timeout,
            self.stop_timeout,
            self.max_connections,
            self.idle_timeout,
            self.level
        )
    }
}

/// Parses `workers = N` (or "auto") out of a config body.
pub(super) fn expected_workers(body: &str) -> usize {
    for line in body.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("workers") {
            let v = v.trim_start();
            if let Some(v) = v.strip_prefix('=') {
                let v = v.split('#').next().unwrap_or("").trim();
                if v.trim_matches('"') == "auto" {
                    return std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1);
                }
                if let Ok(n) = v.parse() {
                    return n;
                }
            }
        }
    }
    panic!("test config must set `workers = N` explicitly:\n{body}");
}

/// Adds `pid_file = "..."` to the `[master]` table of `body` (creating it if
/// the body has none).
pub(super) fn with_pid_file(body: &str, pid_file: &Path) -> String {
    let line = format!("pid_file = \"{}\"", pid_file.display());
    let mut out = String::new();
    let mut done = false;
    for l in body.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && l.trim() == "[master]" {
            out.push_str(&line);
            out.push('\n');
            done = true;
        }
    }
    if done {
        out
    } else {
        format!("[master]\n{line}\n\n{out}")
    }
}
