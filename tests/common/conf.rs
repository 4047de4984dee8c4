//! The config builder every test uses, and the two edits the harness makes to a
//! config body (finding `workers = N`, adding the pid file).

use std::path::Path;

/// The one config builder of the test suite: `[master]`, `[worker]` and `[log]`
/// with the harness's defaults, the echo listener on `{port}` the harness checks
/// readiness on, and whatever a test adds: lines in any of those tables, other
/// tables, more listeners. `render()` gives a template where `{port}` stands for
/// the echo listener's port (the harness adds the pid file). With nothing added,
/// `Conf::new(n).render()` is the same text as it always was.
///
/// `Conf::bare(n)` sets only `workers` (every other key keeps corral's own
/// default): an empty timeout, size or level, or `max_connections = 0`, means
/// "leave the key out".
///
/// A test writes no TOML of its own: the keys it needs are methods here (typed where
/// a test overrides them), `render_on(port)` gives the whole text of a config it
/// writes itself (for `corral -t`), and `Corral::write_config` replaces a running
/// one for a reload. Raw text stays only where it is the point (a malformed value,
/// a config with no listener), with a comment saying so.
#[derive(Clone, Debug)]
pub struct Conf {
    pub workers: usize,
    pub drain_timeout: String,
    pub stop_timeout: String,
    pub max_worker_rss: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    pub level: String,
    master: String,
    worker: String,
    log: String,
    echo: String,
    service: String,
    tables: String,
    listeners: String,
}

/// Appends `lines` to `to`, ending them with a newline.
fn push_lines(to: &mut String, lines: &str) {
    if lines.is_empty() {
        return;
    }
    to.push_str(lines);
    if !lines.ends_with('\n') {
        to.push('\n');
    }
}

/// One table: its header, its keys, a blank line; nothing when it has no keys.
fn table(out: &mut String, header: &str, keys: &[String], extra: &str) {
    if keys.is_empty() && extra.is_empty() {
        return;
    }
    out.push_str(header);
    out.push('\n');
    for k in keys {
        push_lines(out, k);
    }
    push_lines(out, extra);
    out.push('\n');
}

impl Conf {
    pub fn new(workers: usize) -> Conf {
        Conf {
            workers,
            drain_timeout: "20s".into(),
            stop_timeout: "3s".into(),
            max_worker_rss: String::new(),
            idle_timeout: "60s".into(),
            max_connections: 1024,
            level: "info".into(),
            master: String::new(),
            worker: String::new(),
            log: String::new(),
            echo: String::new(),
            service: "echo".into(),
            tables: String::new(),
            listeners: String::new(),
        }
    }
    /// Only `workers = N`: every other key is corral's default until set here.
    pub fn bare(workers: usize) -> Conf {
        Conf {
            drain_timeout: String::new(),
            stop_timeout: String::new(),
            idle_timeout: String::new(),
            max_connections: 0,
            level: String::new(),
            ..Conf::new(workers)
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
    /// `[master] max_worker_rss` (empty: left out).
    pub fn max_rss(mut self, size: &str) -> Conf {
        self.max_worker_rss = size.into();
        self
    }
    pub fn idle(mut self, d: &str) -> Conf {
        self.idle_timeout = d.into();
        self
    }
    pub fn max_conns(mut self, n: usize) -> Conf {
        self.max_connections = n;
        self
    }
    pub fn level(mut self, l: &str) -> Conf {
        self.level = l.into();
        self
    }
    /// `lines` added to `[master]`.
    pub fn master(mut self, lines: &str) -> Conf {
        push_lines(&mut self.master, lines);
        self
    }
    /// `lines` added to `[worker]`.
    pub fn worker(mut self, lines: &str) -> Conf {
        push_lines(&mut self.worker, lines);
        self
    }
    /// `lines` added to `[log]`.
    pub fn log(mut self, lines: &str) -> Conf {
        push_lines(&mut self.log, lines);
        self
    }
    /// The service of the listener on `{port}` (echo unless set): for a test whose
    /// first listener must be another (with `Launch::no_ready_check`, or for `-t`).
    pub fn service(mut self, name: &str) -> Conf {
        self.service = name.into();
        self
    }
    /// `lines` added to the echo listener on `{port}`.
    pub fn echo(mut self, lines: &str) -> Conf {
        push_lines(&mut self.echo, lines);
        self
    }
    /// Another table, `name` (e.g. `flow`) with `lines`.
    pub fn table(mut self, name: &str, lines: &str) -> Conf {
        self.tables.push_str(&format!("[{name}]\n"));
        push_lines(&mut self.tables, lines);
        self.tables.push('\n');
        self
    }
    /// Another `[[listen]]` on `127.0.0.1:port` for `service`, with `lines`.
    pub fn listen(self, port: u16, service: &str, lines: &str) -> Conf {
        self.listen_at(&format!("127.0.0.1:{port}"), service, lines)
    }
    /// Another `[[listen]]` on any `address` (`unix:PATH`, `0.0.0.0:PORT`) for
    /// `service`, with `lines`.
    pub fn listen_at(mut self, address: &str, service: &str, lines: &str) -> Conf {
        self.listeners.push_str(&format!(
            "\n[[listen]]\naddress = \"{address}\"\nservice = \"{service}\"\n"
        ));
        push_lines(&mut self.listeners, lines);
        self
    }
    /// A `proxy` listener on `127.0.0.1:port` to `upstreams`, with `lines`.
    pub fn proxy<A: std::fmt::Display>(self, port: u16, upstreams: &[A], lines: &str) -> Conf {
        let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        let keys = format!("upstreams = [{}]", list.join(", "));
        self.listen(port, "proxy", &keys).listen_lines(lines)
    }
    /// `lines` added to the last listener added (its keys, then its sub-tables).
    pub fn listen_lines(mut self, lines: &str) -> Conf {
        push_lines(&mut self.listeners, lines);
        self
    }
    /// `[master] upgrade_timeout`.
    pub fn upgrade_timeout(self, d: &str) -> Conf {
        self.master(&format!("upgrade_timeout = \"{d}\""))
    }
    /// `[master] watchdog_timeout`.
    pub fn watchdog(self, d: &str) -> Conf {
        self.master(&format!("watchdog_timeout = \"{d}\""))
    }
    /// `[master] fault_injection = true` (the `CORRAL_FAULT` hooks answer).
    pub fn fault_injection(self) -> Conf {
        self.master("fault_injection = true")
    }
    /// `[master] pid_file`: only for a config a test writes and runs itself
    /// (`Corral::start` adds its own pid file).
    pub fn pid_file(self, path: &str) -> Conf {
        self.master(&format!("pid_file = \"{path}\""))
    }
    /// `[worker] heartbeat_interval`.
    pub fn heartbeat(self, d: &str) -> Conf {
        self.worker(&format!("heartbeat_interval = \"{d}\""))
    }
    /// `[log] file`.
    pub fn log_file(self, path: &str) -> Conf {
        self.log(&format!("file = \"{path}\""))
    }
    /// The echo listener's connections stay in their worker at a reload or an
    /// upgrade (`suspend = false`): for a test that watches what cannot move.
    pub fn pinned(self) -> Conf {
        self.echo("suspend = false")
    }
    /// The echo listener's `accept` mode (`shared`, `reuseport`).
    pub fn accept(self, mode: &str) -> Conf {
        self.echo(&format!("accept = \"{mode}\""))
    }
    /// `render()` with the echo listener on `port`: the whole text of a config a
    /// test writes itself (for `corral -t`, or a master it starts by hand).
    pub fn render_on(&self, port: u16) -> String {
        self.render().replace("{port}", &port.to_string())
    }
    pub fn render(&self) -> String {
        let quoted = |key: &str, v: &str| (!v.is_empty()).then(|| format!("{key} = \"{v}\""));
        let mut out = String::new();
        let master: Vec<String> = [
            Some(format!("workers = {}", self.workers)),
            quoted("drain_timeout", &self.drain_timeout),
            quoted("stop_timeout", &self.stop_timeout),
            quoted("max_worker_rss", &self.max_worker_rss),
        ]
        .into_iter()
        .flatten()
        .collect();
        table(&mut out, "[master]", &master, &self.master);
        let worker: Vec<String> = [
            (self.max_connections > 0)
                .then(|| format!("max_connections = {}", self.max_connections)),
            quoted("idle_timeout", &self.idle_timeout),
        ]
        .into_iter()
        .flatten()
        .collect();
        table(&mut out, "[worker]", &worker, &self.worker);
        let log: Vec<String> = quoted("level", &self.level).into_iter().collect();
        table(&mut out, "[log]", &log, &self.log);
        out.push_str(&self.tables);
        out.push_str(&format!(
            "[[listen]]\naddress = \"127.0.0.1:{{port}}\"\nservice = \"{}\"\n",
            self.service
        ));
        out.push_str(&self.echo);
        out.push_str(&self.listeners);
        out
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
