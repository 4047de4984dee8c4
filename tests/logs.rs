//! The log writers as an operator meets them: `[log] rotation` writes the current
//! period's file (`corral.log.YYYY-MM-DD-HH`, `corral.log.YYYY-MM-DD`, UTC), master and
//! workers alike, also after SIGUSR1, and at the hour the workers follow the master to
//! the next file (a clock started at hh:59:54 by libfaketime, so no test waits an
//! hour), the master staying single-threaded; a worker's lost lines (a log nobody reads, a
//! file that refuses writes) are counted in `log_dropped` and said in the log; a
//! rotation without a file is refused naming the file, the key and the reason. The
//! real binary throughout; see `common/mod.rs` for the harness rules.

use crate::common;

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::inputs::{cli_env, write_config};
use common::*;
use nix::sys::signal::Signal;

/// The file tracing-appender's appender writes at `at`: `<file>.YYYY-MM-DD[-HH]`, UTC
/// (computed here from the civil calendar, independently of corral's code).
fn period_file(file: &Path, hourly: bool, at: SystemTime) -> PathBuf {
    let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut name = format!(
        "{}.{y:04}-{m:02}-{d:02}",
        file.file_name().unwrap().to_str().unwrap()
    );
    if hourly {
        name.push_str(&format!("-{:02}", rem / 3600));
    }
    file.with_file_name(name)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// Opens `n` connections and resets them: a worker at `corral::worker=debug` logs a
/// line for each ("closing: read failed …").
fn reset_connections(addr: SocketAddr, n: usize, within: Duration) -> usize {
    let end = Instant::now() + within;
    let mut opened = 0;
    while opened < n && Instant::now() < end {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            opened += 1;
        }
    }
    opened
}

/// `log_dropped` of every worker, from `corral status --json`.
fn log_dropped(c: &Corral) -> Vec<u64> {
    let out = c.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", out.all()));
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["log_dropped"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rolling_files_take_the_master_and_worker_lines_of_the_current_period() {
    for (rotation, hourly) in [("hourly", true), ("daily", false)] {
        let logs = tempfile::Builder::new()
            .prefix("corral-test-logs-")
            .tempdir()
            .expect("temp dir");
        let file = logs.path().join("corral.log");
        let t = Conf::new(2)
            .level("info,corral::worker=debug")
            .log(&format!(
                "file = \"{}\"\nrotation = \"{rotation}\"",
                file.display()
            ))
            .render();
        let before = period_file(&file, hourly, SystemTime::now());
        let c = Corral::start(&t);
        // A boundary may pass during the test: lines then go to the next file.
        let current = || {
            let now = period_file(&file, hourly, SystemTime::now());
            format!(
                "{}{}",
                read(&before),
                if now == before {
                    String::new()
                } else {
                    read(&now)
                }
            )
        };
        assert!(
            wait_until(Duration::from_secs(10), || current()
                .contains("corral is serving")),
            "{rotation}: {} does not get the master's lines; the directory has {:?}\nstderr:\n{}",
            before.display(),
            fs::read_dir(logs.path())
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            c.log_tail(20)
        );
        // Workers' lines (through their non-blocking writers) land in it too.
        let workers = c.worker_pids();
        assert_eq!(reset_connections(c.addr(), 20, Duration::from_secs(20)), 20);
        let ok = wait_until(Duration::from_secs(10), || {
            let text = current();
            text.lines()
                .any(|l| l.contains("worker{pid=") && l.contains("read failed"))
        });
        assert!(
            ok,
            "{rotation}: no worker line (of {workers:?}) in {}:\n{}",
            before.display(),
            current()
        );
        // SIGUSR1 reopens the period's file, not the bare name.
        c.signal(Signal::SIGUSR1);
        assert!(
            wait_until(Duration::from_secs(10), || current()
                .contains("log file reopened")),
            "{rotation}: no reopen in {}:\n{}",
            before.display(),
            current()
        );
        let lines_before = current()
            .lines()
            .filter(|l| l.contains("read failed"))
            .count();
        assert_eq!(reset_connections(c.addr(), 10, Duration::from_secs(20)), 10);
        assert!(
            wait_until(Duration::from_secs(10), || {
                current()
                    .lines()
                    .filter(|l| l.contains("read failed"))
                    .count()
                    > lines_before
            }),
            "{rotation}: the workers stopped writing the period's file after SIGUSR1:\n{}",
            current()
        );
        assert!(
            !file.exists(),
            "{rotation}: {} was written although the log rolls",
            file.display()
        );
        assert_eq!(
            threads(c.master_pid()),
            1,
            "{rotation}: the master started a thread"
        );
        eprintln!(
            "[logs] {rotation}: {} has {} lines",
            before.display(),
            current().lines().count()
        );
    }
}

/// Threads of process `pid` (the master must have exactly one: it forks).
fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// libfaketime's preload library, where Debian puts it.
fn libfaketime() -> Option<PathBuf> {
    let dirs = fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists())
}

#[test]
fn at_the_hour_the_workers_follow_the_master_to_the_next_file() {
    let Some(lib) = libfaketime() else {
        skipped(format_args!(
            "libfaketime is not installed (apt-get install faketime): the real rollover \
             of [log] rotation is not tested"
        ));
        return;
    };
    let logs = tempfile::Builder::new()
        .prefix("corral-test-logs-")
        .tempdir()
        .expect("temp dir");
    let file = logs.path().join("corral.log");
    let t = Conf::new(1)
        .level("info,corral::worker=debug")
        .log(&format!(
            "file = \"{}\"\nrotation = \"hourly\"",
            file.display()
        ))
        .render();
    // The master's wall clock starts at 08:59:54 (its monotonic clock is left alone:
    // deadlines stay real), and its workers inherit it.
    let launch = Launch {
        env: vec![
            ("LD_PRELOAD".into(), lib.display().to_string()),
            ("FAKETIME".into(), "@2026-12-07 08:59:54".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ],
        ..Launch::default()
    };
    let c = Corral::start_with(&t, launch);
    let eight = logs.path().join("corral.log.2026-12-07-08");
    let nine = logs.path().join("corral.log.2026-12-07-09");
    let worker_lines = |p: &Path| {
        read(p)
            .lines()
            .filter(|l| l.contains("worker{pid=") && l.contains("read failed"))
            .count()
    };
    assert_eq!(reset_connections(c.addr(), 5, Duration::from_secs(20)), 5);
    assert!(
        wait_until(Duration::from_secs(10), || worker_lines(&eight) > 0),
        "no worker line in {} before the hour:\n{}\nstderr:\n{}",
        eight.display(),
        read(&eight),
        c.log_tail(20)
    );
    // Keep the worker logging until its lines reach the next hour's file.
    let rolled = wait_until(Duration::from_secs(40), || {
        reset_connections(c.addr(), 1, Duration::from_secs(2));
        read(&nine).contains("log file rolled over") && worker_lines(&nine) > 0
    });
    assert!(
        rolled,
        "the workers did not follow to {}:\n{}\n--- {} ---\n{}",
        nine.display(),
        read(&nine),
        eight.display(),
        read(&eight)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(threads(c.master_pid()), 1, "the master started a thread");
    eprintln!(
        "[logs] rollover: {} worker lines in the 08 file, {} in the 09 file",
        worker_lines(&eight),
        worker_lines(&nine)
    );
}

#[test]
fn rotation_without_a_file_is_refused_naming_the_file_key_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let body = Conf::bare(1)
        .pid_file("{dir}/corral.pid")
        .log("rotation = \"hourly\"")
        .render_on(1);
    let cfg = write_config(dir.path(), "corral.toml", &body);
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let out = cli_env(
        dir.path(),
        &["-t", "-c", cfg_s],
        &[],
        Duration::from_secs(20),
    )
    .expect("`corral -t` exits");
    assert!(!out.status.success(), "accepted: {}", out.all());
    assert!(
        out.stderr.contains(cfg_s)
            && out.stderr.contains("log.rotation")
            && out.stderr.contains("need log.file"),
        "the error does not name the file, the key and the reason: {}",
        out.stderr
    );
    let bad = body.replace("\"hourly\"", "\"weekly\"");
    write_config(dir.path(), "corral.toml", &bad);
    let out = cli_env(
        dir.path(),
        &["-t", "-c", cfg_s],
        &[],
        Duration::from_secs(20),
    )
    .expect("`corral -t` exits");
    assert!(!out.status.success(), "accepted weekly: {}", out.all());
    assert!(
        out.stderr.contains(cfg_s)
            && out.stderr.contains("rotation")
            && out.stderr.contains("daily"),
        "the error does not name the file, the key and the choices: {}",
        out.stderr
    );
}

#[test]
fn a_log_file_that_refuses_writes_counts_the_workers_lines_as_dropped() {
    // /dev/full takes the open and refuses every write (ENOSPC).
    if !Path::new("/dev/full").exists() {
        skipped(format_args!("no /dev/full here"));
        return;
    }
    let t = Conf::new(1)
        .level("info,corral::worker=debug")
        .log("file = \"/dev/full\"")
        .render();
    let c = Corral::start(&t);
    assert_eq!(reset_connections(c.addr(), 20, Duration::from_secs(20)), 20);
    let mut dropped = Vec::new();
    let ok = wait_until(Duration::from_secs(15), || {
        dropped = log_dropped(&c);
        dropped.iter().any(|&d| d >= 20)
    });
    assert!(
        ok,
        "workers' refused lines not counted in log_dropped: {dropped:?}\n{}",
        c.log_tail(20)
    );
    eprintln!("[logs] /dev/full: log_dropped {dropped:?}");
}

#[test]
fn a_log_fifo_nobody_reads_drops_lines_counts_and_says_so() {
    let dir = tempfile::Builder::new()
        .prefix("corral-test-logs-")
        .tempdir()
        .expect("temp dir");
    let fifo = dir.path().join("corral.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    // The read end, opened first (non-blocking) so that corral's open for writing
    // does not wait; not read until the flood is over, so the pipe (64 KiB) fills.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the fifo for reading");
    // Only the worker logs while the pipe is full (the master writes its own lines
    // in its own thread and would wait).
    let t = Conf::new(1)
        .level("info,corral::worker=debug")
        .worker("heartbeat_interval = \"250ms\"")
        .log(&format!("file = \"{}\"", fifo.display()))
        .render();
    let c = Corral::start(&t);
    // Far more lines than the pipe (~500 lines) and the writer's channel (4096 lines)
    // hold.
    const FLOOD: usize = 8000;
    let mut probe = c.connect();
    let t0 = Instant::now();
    let opened = reset_connections(c.addr(), FLOOD, Duration::from_secs(120));
    assert_eq!(opened, FLOOD, "the worker stopped accepting");
    must_echo(&c, &mut probe, "after the flood");
    let flood_took = t0.elapsed();
    let mut dropped = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            dropped = log_dropped(&c);
            dropped.iter().any(|&d| d > 0)
        }),
        "no dropped lines counted with the log pipe full: {dropped:?}"
    );
    // Read the pipe again: the writer catches up and says how many are missing.
    let mut text = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let said = wait_until(Duration::from_secs(20), || {
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).contains("log lines dropped")
    });
    let text = String::from_utf8_lossy(&text);
    assert!(
        said,
        "no drop report once the pipe was read; last lines:\n{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let reported: u64 = text
        .lines()
        .filter(|l| l.contains("log lines dropped"))
        .filter_map(|l| l.split(" dropped=").nth(1))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    assert!(reported > 0, "{text}");
    eprintln!(
        "[logs] fifo: {FLOOD} logged connections in {flood_took:?}, log_dropped {dropped:?}, \
         {reported} reported in the log"
    );
}
