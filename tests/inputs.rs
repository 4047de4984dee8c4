//! Inputs that used to be accepted and then broke the running service: log levels that
//! silence everything, timeouts of 0, a proxy pointed at itself, log files that cannot
//! be created, environment overrides blamed on the file, `-t` next to `-s`, a reopen
//! that failed quietly, and a blocked log pipe that stalled the workers. Every test runs
//! the real binary; see `common/mod.rs` for the harness rules.

use crate::common;

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::inputs::{cli_env, write_config, PipedCorral};
use common::*;

/// `corral -t -c cfg` from `dir` with `env` added (None if it did not exit in 20 s).
fn check(dir: &Path, cfg: &str, env: &[(&str, &str)]) -> Option<CliOutput> {
    cli_env(dir, &["-t", "-c", cfg], env, Duration::from_secs(20))
}

/// What `corral -t` and a start print for a refused config.
fn assert_refused(out: &CliOutput, what: &str, path: &Path, key: &str, why: &str) {
    let err = out.all();
    assert!(
        !out.status.success(),
        "{what}: accepted ({:?}): {err}",
        out.status
    );
    assert!(
        err.contains(&format!("`{key}`")),
        "{what}: no key `{key}`: {err}"
    );
    assert!(err.contains(why), "{what}: no reason `{why}`: {err}");
    assert!(
        err.contains(&path.display().to_string()),
        "{what}: does not name {}: {err}",
        path.display()
    );
}

#[test]
fn check_and_start_refuse_values_that_break_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let other = free_port();
    // Raw text on purpose: each case is a config error (a bad value, a proxy loop, a
    // first listener on 0.0.0.0), shown as the operator would write it next to the
    // key the error must name.
    let master = "[master]\nworkers = 1\npid_file = \"{dir}/corral.pid\"\n";
    let echo = format!("[[listen]]\naddress = \"127.0.0.1:{port}\"\nservice = \"echo\"\n");
    let http = format!("[[listen]]\naddress = \"127.0.0.1:{port}\"\nservice = \"http\"\n");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{master}[log]\nlevel = \"warning\"\n{echo}"),
            "log.level",
            "`warning` is not a level",
        ),
        (
            format!("{master}[log]\nlevel = \"loud\"\n{echo}"),
            "log.level",
            "`loud` is not a level",
        ),
        (
            format!("{master}[log]\nfile = \"{{dir}}/missing/x.log\"\n{echo}"),
            "log.file",
            "missing",
        ),
        (
            format!("{master}[log]\nfile = \"{{dir}}\"\n{echo}"),
            "log.file",
            "is a directory",
        ),
        (
            format!("{master}upgrade_timeout = \"0\"\n{echo}"),
            "master.upgrade_timeout",
            "must be more than 0",
        ),
        (
            format!("{master}stop_timeout = \"0s\"\n{echo}"),
            "master.stop_timeout",
            "must be more than 0",
        ),
        (
            format!("{master}{http}max_header_size = \"0\"\n"),
            "listen[0].max_header_size",
            "too small",
        ),
        (
            format!("{master}{http}header_timeout = \"0\"\n"),
            "listen[0].header_timeout",
            "must be more than 0",
        ),
        (
            format!(
                "{master}[[listen]]\naddress = \"127.0.0.1:{port}\"\nservice = \"proxy\"\n\
                 upstreams = [\"127.0.0.1:{other}\"]\n\
                 [[listen]]\naddress = \"127.0.0.1:{other}\"\nservice = \"proxy\"\n\
                 upstreams = [\"127.0.0.1:{port}\"]\n"
            ),
            "listen[0].upstreams",
            "lead back to listen[0]",
        ),
        (
            format!(
                "{master}[[listen]]\naddress = \"0.0.0.0:{port}\"\nservice = \"proxy\"\n\
                 upstreams = [\"127.0.0.1:{port}\"]\n"
            ),
            "listen[0].upstreams",
            "this listener itself",
        ),
    ];
    for (i, (body, key, why)) in cases.iter().enumerate() {
        let path = write_config(dir.path(), &format!("bad-{i}.toml"), body);
        let cfg = path.display().to_string();
        let out = check(dir.path(), &cfg, &[])
            .unwrap_or_else(|| panic!("`corral -t` did not exit for {key}"));
        assert_refused(&out, &format!("-t with {key}"), &path, key, why);
        let out = cli_env(dir.path(), &["-c", &cfg], &[], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("corral started serving with bad {key}:\n{body}"));
        assert_refused(&out, &format!("start with {key}"), &path, key, why);
    }
}

#[test]
fn check_warns_about_an_rss_limit_below_a_fresh_worker() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = Conf::bare(1)
        .pid_file("{dir}/corral.pid")
        .max_rss("1MiB")
        .render_on(port);
    let path = write_config(dir.path(), "corral.toml", &body);
    let cfg = path.display().to_string();
    let out = check(dir.path(), &cfg, &[]).expect("`corral -t` exits");
    // A warning, not a refusal: a tiny limit is how recycling is exercised on purpose.
    assert!(out.status.success(), "{}", out.all());
    assert!(
        out.stderr
            .contains("warning: master.max_worker_rss = 1MiB is below 16MiB"),
        "no warning: {}",
        out.all()
    );
}

#[test]
fn environment_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = Conf::bare(1).pid_file("{dir}/corral.pid").render_on(port);
    let path = write_config(dir.path(), "corral.toml", &body);
    let cfg = path.display().to_string();
    for (var, value, key) in [
        ("CORRAL_MASTER__WORKERS", "0", "master.workers"),
        (
            "CORRAL_MASTER__DRAIN_TIMEOUT",
            "soon",
            "master.drain_timeout",
        ),
        ("CORRAL_LOG__LEVEL", "warning", "log.level"),
        (
            "CORRAL_MASTER__UPGRADE_TIMEOUT",
            "0",
            "master.upgrade_timeout",
        ),
    ] {
        let out = check(dir.path(), &cfg, &[(var, value)])
            .unwrap_or_else(|| panic!("`corral -t` did not exit with {var}={value}"));
        let err = out.all();
        assert!(!out.status.success(), "{var}={value} accepted: {err}");
        assert!(
            err.contains(&format!("environment variable {var}")),
            "{var}={value}: the variable is not named: {err}"
        );
        assert!(err.contains(key), "{var}={value}: key not named: {err}");
        assert!(
            !err.contains(&format!("in {cfg}")),
            "{var}={value}: blames the file: {err}"
        );
    }
    // A variable shaped like an override whose section is mistyped would be ignored
    // silently (the default used instead): refused, naming the variable, as a
    // mistyped key in the file is.
    for (var, says) in [
        ("CORRAL_MASTR__WORKERS", "no config section `mastr`"),
        ("CORRAL_MASTER_WORKERS", "CORRAL_MASTER__WORKERS"),
    ] {
        let out = check(dir.path(), &cfg, &[(var, "3")])
            .unwrap_or_else(|| panic!("`corral -t` did not exit with {var}=3"));
        let err = out.all();
        assert!(!out.status.success(), "{var}=3 accepted: {err}");
        assert!(
            err.contains(&format!("environment variable {var}")) && err.contains(says),
            "{var}=3: the variable or the reason is not named: {err}"
        );
    }
    // Other `CORRAL_*` variables (a harness's, a service's) are not config overrides.
    let out = check(dir.path(), &cfg, &[("CORRAL_SOMETHING_ELSE", "1")]).expect("-t exits");
    assert!(out.status.success(), "{}", out.all());
    // The same bad value in the file is still blamed on the file.
    let path = write_config(
        dir.path(),
        "zero.toml",
        &body.replace("workers = 1", "workers = 0"),
    );
    let cfg = path.display().to_string();
    let out = check(dir.path(), &cfg, &[]).expect("`corral -t` exits");
    assert!(!out.status.success(), "{}", out.all());
    assert!(out.all().contains(&format!("in {cfg}")), "{}", out.all());
}

#[test]
fn test_flag_next_to_signal_is_refused_and_sends_nothing() {
    let c = Corral::start(&Conf::new(1).render());
    let out = c.cli(&["-t", "-s", "reload"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`corral -t -s reload` was not refused: {}",
        out.all()
    );
    assert!(
        out.stderr.contains("--test") && out.stderr.contains("--signal"),
        "usage error does not name both options: {}",
        out.stderr
    );
    // A real reload now makes generation 2; had the refused command reloaded too,
    // this one would make generation 3.
    let ok = c.cli(&["-s", "reload"]);
    assert!(ok.status.success(), "reload failed: {}", ok.all());
    let (_, generation, _) = status(&c);
    assert_eq!(generation, 2, "`-t -s reload` reloaded\n{}", c.log_tail(30));
}

#[test]
fn reopen_that_fails_exits_non_zero_with_the_reason() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("x.log");
    let template = Conf::new(1).log_file(&log.display().to_string()).render();
    let c = Corral::start(&template);
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("corral is serving"))),
        "nothing logged to {}",
        log.display()
    );
    // logrotate moves the file away, and something else takes its name.
    let rotated = logs.path().join("x.log.1");
    fs::rename(&log, &rotated).unwrap();
    fs::create_dir(&log).unwrap();
    let out = c.cli(&["-s", "reopen"]);
    assert!(
        !out.status.success(),
        "`-s reopen` reported success: {}",
        out.all()
    );
    assert!(
        out.stderr.contains(&log.display().to_string()) && out.stderr.contains("directory"),
        "reason missing: {}",
        out.stderr
    );
    // Nothing is lost: the service runs and the old file keeps getting the log.
    let mut s = c.connect();
    must_echo(&c, &mut s, "after a failed reopen\n");
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&rotated)
            .is_ok_and(|s| s.contains("still writing to the old log file"))),
        "the failure is not in the old log file:\n{}",
        fs::read_to_string(&rotated).unwrap_or_default()
    );
    // Once the path is usable again, reopen succeeds.
    fs::remove_dir(&log).unwrap();
    let out = c.cli(&["-s", "reopen"]);
    assert!(out.status.success(), "{}", out.all());
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("log file reopened"))),
        "nothing logged to the reopened {}",
        log.display()
    );
}

#[test]
fn idle_timeout_zero_means_no_idle_timeout() {
    let c = Corral::start(&Conf::new(1).idle("0").render());
    let mut s = c.connect();
    must_echo(&c, &mut s, "hello\n");
    // The property under test is "stays open while idle", so idling is the point.
    std::thread::sleep(Duration::from_secs(3));
    must_echo(&c, &mut s, "still here after 3 s of silence\n");
}

#[test]
fn reload_with_bad_log_settings_is_refused_and_logging_goes_on() {
    let c = Corral::start(&Conf::new(1).render());
    let good = c.config_str();
    let good = fs::read_to_string(&good).unwrap();
    let mut s = c.connect();
    for (bad, key) in [
        (
            good.replace("level = \"info\"", "level = \"warning\""),
            "log.level",
        ),
        (
            good.replace(
                "level = \"info\"",
                "level = \"info\"\nfile = \"/nonexistent-corral-dir/x.log\"",
            ),
            "log.file",
        ),
    ] {
        assert_ne!(bad, good, "the test did not change the config");
        fs::write(&c.config_path, &bad).unwrap();
        let out = c.cli(&["-s", "reload"]);
        assert!(
            !out.status.success(),
            "reload with a bad {key} accepted: {}\n{}",
            out.all(),
            c.log_tail(20)
        );
        assert!(out.stderr.contains(key), "{key} not named: {}", out.stderr);
        must_echo(&c, &mut s, "still served\n");
    }
    fs::write(&c.config_path, &good).unwrap();
    let (_, generation, _) = status(&c);
    assert_eq!(generation, 1, "a refused reload made a new generation");
    // Logging still runs at info: a reopen's info line shows up.
    let out = c.cli(&["-s", "reopen"]);
    assert!(out.status.success(), "{}", out.all());
    assert!(
        wait_until(Duration::from_secs(10), || c
            .log()
            .contains("log file reopened")),
        "info lines no longer logged after the refused reloads\n{}",
        c.log_tail(20)
    );
}

#[test]
fn bad_rust_log_is_named_and_the_config_level_used() {
    let c = Corral::start_with(
        &Conf::new(1).render(),
        Launch {
            env: vec![("RUST_LOG".into(), "warning".into())],
            ..Launch::default()
        },
    );
    let ok = wait_until(Duration::from_secs(10), || {
        let log = c.log();
        log.contains("RUST_LOG") && log.contains("corral is serving")
    });
    assert!(
        ok,
        "a bad RUST_LOG silenced the log or was not named\n{}",
        c.log_tail(20)
    );
    let log = c.log();
    assert!(
        log.contains("`warning` is not a level") && log.contains("level `info`"),
        "the reason or the fallback is missing:\n{log}"
    );
}

/// Opens connections that the per-IP limit closes at once; each one makes the worker
/// log a line. Returns how many were opened.
fn flood_log(addr: std::net::SocketAddr, count: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut opened = 0;
    while opened < count && Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            // Closed with a reset: the worker logs "closing: read failed: …" at debug
            // for each one (refusals and other events are rate-limited, so they
            // would not flood the log).
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            opened += 1;
        }
    }
    opened
}

/// One echo round trip on the probe connection, which must succeed.
fn expect_echo(s: &mut TcpStream, when: &str) {
    match echo(s, format!("{when}\n").as_bytes(), Duration::from_secs(5)) {
        Echo::Ok => {}
        other => panic!("{when}: the worker did not echo while its log was blocked: {other:?}"),
    }
}

#[test]
fn blocked_log_pipe_does_not_stall_or_kill_workers() {
    // Every flood connection is reset by the client, which the worker logs at debug;
    // the master logs nothing at info while this goes on.
    let template = Conf::bare(1)
        .pid_file("{dir}/corral.pid")
        .watchdog("2s")
        .heartbeat("250ms")
        .level("info,corral::worker=debug")
        .render();
    let c = PipedCorral::start(&template, 1);
    let worker = c.workers()[0];
    let mut probe = connect(c.addr(), Duration::from_secs(10)).expect("connect the probe");
    expect_echo(&mut probe, "first");

    // Far more lines than the pipe (64 KiB, ~500 lines) and the worker's queue (4096
    // lines) hold.
    const FLOOD: usize = 8000;
    let addr = c.addr();
    let flood = std::thread::spawn(move || flood_log(addr, FLOOD, Duration::from_secs(120)));
    let mut worst = Duration::ZERO;
    let mut rounds = 0u32;
    while !flood.is_finished() || rounds < 20 {
        let t = Instant::now();
        expect_echo(&mut probe, &format!("round {rounds} of the flood"));
        worst = worst.max(t.elapsed());
        rounds += 1;
        // Pacing between probes while the flood runs, not synchronisation.
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = flood.join().unwrap();
    assert_eq!(opened, FLOOD, "the worker stopped accepting");
    // Far below the 2 s watchdog; a stalled loop takes until the watchdog kills it.
    assert!(
        worst < Duration::from_secs(1),
        "worst echo round trip {worst:?} while the log pipe was blocked"
    );
    // Let a few watchdog periods pass with the pipe still blocked: the watchdog is a
    // timer, so time passing (with the worker answering throughout) is the property,
    // and no counter or log line can stand in for it.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        expect_echo(&mut probe, "after the flood");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(proc_alive(worker), "the watchdog killed the worker");
    assert_eq!(c.workers(), vec![worker], "the worker was replaced");

    // The drops are counted where an operator looks.
    let cfg = c.config_path.display().to_string();
    let out = cli_env(
        c.dir.path(),
        &["status", "--json", "-c", &cfg],
        &[],
        Duration::from_secs(20),
    )
    .expect("`corral status` answered");
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", out.all()));
    let dropped = v["workers"][0]["log_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "no dropped lines counted: {v}");
    eprintln!(
        "[inputs] log pipe blocked: {FLOOD} logged connections, {rounds} echo rounds, \
         worst round trip {worst:?}, {dropped} lines dropped"
    );

    // Once the pipe is read again, the log says how many lines are missing.
    c.drain();
    let reported = wait_until(Duration::from_secs(20), || {
        c.text().contains("log lines dropped")
    });
    let text = c.text();
    assert!(
        reported,
        "no drop report after the pipe was drained; last lines:\n{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let total: u64 = text
        .lines()
        .filter(|l| l.contains("log lines dropped"))
        .filter_map(|l| l.split(" dropped=").nth(1))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    assert!(
        total >= dropped,
        "reported {total} dropped lines, status counted {dropped}"
    );
    expect_echo(&mut probe, "after the drain");
}
