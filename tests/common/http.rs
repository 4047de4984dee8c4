//! Helpers of the "http" tests (protocol inputs, operator-visible events): reading
//! corral's log by line and level, counting rate-limited lines, and running curl
//! with a bound on its time.

use super::skipped;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::wait_until;

/// The level of a tracing line (`INFO`, `WARN`, ...), if it has one.
pub fn level_of(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(l))
}

/// The log lines that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// The log lines that contain `needle`, each at info or warn (panics, showing the
/// line, if one is at another level): what an operator sees at the default level.
pub fn operator_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    let lines = lines_with(log, needle);
    for l in &lines {
        assert!(
            matches!(level_of(l), Some("INFO" | "WARN")),
            "not at info/warn: {l}"
        );
    }
    lines
}

/// The N of "(N more suppressed)" or ": N more suppressed" in a line; 0 if none.
pub fn suppressed_in(line: &str) -> u64 {
    let Some(at) = line.find(" more suppressed") else {
        return 0;
    };
    let before = &line[..at];
    let digits: String = before
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap_or(0)
}

/// How many events the rate-limited lines for `what` account for: each line let
/// through is one event plus the count it carries ("(N more suppressed)"); a summary
/// line ("`what`: N more suppressed") carries only its count.
pub fn events_counted(log: &str, what: &str) -> u64 {
    let summary = format!("{what}: ");
    lines_with(log, what)
        .iter()
        .map(|l| {
            let n = suppressed_in(l);
            if l.contains(&summary) && l.contains(" more suppressed") && !l.contains('(') {
                n
            } else {
                1 + n
            }
        })
        .sum()
}

/// What a curl run printed.
pub struct CurlRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub const CURL: &str = "/usr/bin/curl";

/// Runs curl with `args` (plus `--max-time 10`), output in files under `dir`, killed
/// by pid if it overruns 20 s; None if curl is not installed.
pub fn run_curl(dir: &Path, args: &[&str]) -> Option<CurlRun> {
    if !Path::new(CURL).exists() {
        skipped(format_args!(
            "skipping the curl part: {CURL} is not installed"
        ));
        return None;
    }
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out = dir.join(format!("curl-http-{n}.stdout"));
    let err = dir.join(format!("curl-http-{n}.stderr"));
    let mut child = Command::new(CURL)
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("create curl stdout"))
        .stderr(File::create(&err).expect("create curl stderr"))
        .spawn()
        .expect("spawn curl");
    let mut status = None;
    let done = wait_until(Duration::from_secs(20), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("curl {args:?} did not exit within 20s");
    }
    Some(CurlRun {
        ok: status.is_some_and(|s| s.success()),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}
