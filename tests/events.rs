//! Operator-visible events reach the log at the default level (info/warn), and a
//! flood of them does not flood the log: connections refused by the per-IP limit or
//! `max_connections`, accept errors, failed upstream connects, clients for whom no
//! upstream is left, and listeners a reload added or removed. See `common/mod.rs` for
//! the harness rules (deadline waits, loopback only, kill by pid).

use crate::common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::http::{events_counted, lines_with, operator_lines, suppressed_in};
use common::*;

/// How long a log line may take to appear (the worker's log writer is asynchronous).
const LOG_WAIT: Duration = Duration::from_secs(15);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until the log has a line with `needle`; fails with the log tail otherwise.
fn must_log(c: &Corral, needle: &str) {
    assert!(
        wait_until(LOG_WAIT, || c.log().contains(needle)),
        "no log line with {needle:?} within {LOG_WAIT:?}\n{}",
        c.log_tail(40)
    );
}

#[test]
fn per_ip_rejections_are_logged_and_a_flood_is_rate_limited() {
    let limited = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .listen(limited, "echo", "max_connections_per_ip = 1")
            .render(),
    );
    let mut held = connect(local(limited), Duration::from_secs(10)).expect("connect");
    must_echo(&c, &mut held, "first\n");
    // One over the limit: closed by the server, and the operator is told.
    let mut over = connect(local(limited), Duration::from_secs(10)).expect("connect");
    if let Err(e) = wait_closed(&mut over, Duration::from_secs(10)) {
        panic!("the connection over the per-IP limit was not closed: {e}");
    }
    must_log(&c, "per-IP connection limit");
    let log = c.log();
    let lines = operator_lines(&log, "per-IP connection limit");
    assert!(
        lines[0].contains("ip=127.0.0.1")
            && lines[0].contains("limit=1")
            && lines[0].contains(&format!("listen=127.0.0.1:{limited}")),
        "{}",
        lines[0]
    );

    // A flood of 500 more: every one refused, only a few lines, the rest counted.
    const FLOOD: u64 = 500;
    let t0 = Instant::now();
    for i in 0..FLOOD {
        match TcpStream::connect_timeout(&local(limited), Duration::from_secs(10)) {
            Ok(s) => drop(s),
            Err(e) => panic!("flood connection {i}: {e}"),
        }
    }
    let flood_took = t0.elapsed();
    let counted = wait_until(LOG_WAIT, || {
        events_counted(&c.log(), "per-IP connection limit") == FLOOD + 1
    });
    let log = c.log();
    let lines = operator_lines(&log, "per-IP connection limit");
    assert!(
        counted,
        "the per-IP lines account for {} of {} refusals:\n{}",
        events_counted(&log, "per-IP connection limit"),
        FLOOD + 1,
        lines.join("\n")
    );
    // One line per second at most, plus the summary after the flood.
    let bound = flood_took.as_secs() as usize + 4;
    assert!(
        lines.len() <= bound,
        "{} lines for a flood of {FLOOD} over {flood_took:?} (at most {bound}):\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| suppressed_in(l) > 0),
        "no suppressed count:\n{}",
        lines.join("\n")
    );
    eprintln!(
        "{} lines for {} refusals over {flood_took:?}:\n{}",
        lines.len(),
        FLOOD + 1,
        lines.join("\n")
    );
    // The connection within the limit was never disturbed.
    must_echo(&c, &mut held, "still here\n");
}

#[test]
fn reaching_max_connections_is_logged_and_accepting_resumes() {
    let mut conf = Conf::new(1);
    conf.max_connections = 4;
    let c = Corral::start(&conf.render());
    // The readiness check's connection may still be closing: wait for four served.
    let mut open = Vec::new();
    for i in 0..4 {
        let mut s = c.connect();
        must_echo(&c, &mut s, &format!("conn {i}\n"));
        open.push(s);
    }
    // A fifth waits in the listen queue; the operator learns why.
    let mut fifth = c.connect();
    fifth.write_all(b"fifth\n").expect("write");
    must_log(&c, "connection limit reached");
    let log = c.log();
    let lines = operator_lines(&log, "connection limit reached");
    assert!(lines[0].contains("max=4"), "{}", lines[0]);
    // Once one goes, the fifth is served.
    close(open.remove(0));
    match read_exact_timeout(&mut fifth, 6, Duration::from_secs(10)) {
        Ok(b) => assert_eq!(b, b"fifth\n"),
        Err(e) => panic!(
            "the queued connection was not served: {e:?}\n{}",
            c.log_tail(20)
        ),
    }
}

#[test]
fn upstream_connect_failures_and_all_upstreams_down_are_logged() {
    // Nothing listens there (probed free, below the ephemeral range): refused.
    let dead = free_port();
    let pp = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .proxy(
                pp,
                &[format!("127.0.0.1:{dead}")],
                "connect_timeout = \"2s\"",
            )
            .render(),
    );
    let mut s = connect(local(pp), Duration::from_secs(10)).expect("connect");
    let _ = s.write_all(b"hello?\n");
    if let Err(e) = wait_closed(&mut s, Duration::from_secs(15)) {
        panic!("a client with no upstream was not closed: {e}");
    }
    must_log(&c, "upstream connect failed");
    must_log(&c, "no upstream could be reached");
    let log = c.log();
    let failed = operator_lines(&log, "upstream connect failed");
    assert!(
        failed[0].contains(&format!("addr=127.0.0.1:{dead}")),
        "{}",
        failed[0]
    );
    assert_eq!(level_of_first(&failed), "WARN");
    let down = operator_lines(&log, "no upstream could be reached");
    assert!(
        down[0].contains(&format!("listen=127.0.0.1:{pp}")),
        "{}",
        down[0]
    );
    assert_eq!(level_of_first(&down), "WARN");
}

fn level_of_first(lines: &[&str]) -> String {
    common::http::level_of(lines[0]).unwrap_or("?").to_string()
}

#[test]
fn listeners_added_and_removed_by_a_reload_are_logged() {
    let (old, new) = (free_port(), free_port());
    let c = Corral::start(&Conf::new(1).listen(old, "echo", "").render());
    let mut s = connect(local(old), Duration::from_secs(10)).expect("connect");
    must_echo(&c, &mut s, "old\n");
    drop(s);
    c.write_config(&Conf::new(1).listen(new, "echo", "").render());
    c.must_reload();
    must_log(&c, "listener added by reload");
    must_log(&c, "listener removed by reload");
    let log = c.log();
    let added = operator_lines(&log, "listener added by reload");
    let removed = operator_lines(&log, "listener removed by reload");
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(
        added[0].contains(&format!("127.0.0.1:{new}")),
        "{}",
        added[0]
    );
    assert!(
        removed[0].contains(&format!("127.0.0.1:{old}")),
        "{}",
        removed[0]
    );
    // What the lines say is what happened.
    let mut s = connect(local(new), Duration::from_secs(10)).expect("connect to the new one");
    must_echo(&c, &mut s, "new\n");
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect_timeout(
            &local(old),
            Duration::from_secs(1)
        )
        .is_err()),
        "the removed listener still accepts"
    );
    // The harness's listener, unchanged, is in neither list.
    assert!(lines_with(&log, "by reload")
        .iter()
        .all(|l| !l.contains(&format!("127.0.0.1:{}", c.port))));
}

#[test]
fn accept_errors_from_emfile_are_rate_limited() {
    // corral under a small fd limit: its worker runs out of descriptors at accept().
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("corral-low-nofile");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 48 || exit 99\nexec {} \"$@\"\n",
            corral_bin()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let c = Corral::start_with(
        &Conf::new(1).render(),
        Launch {
            binary: Some(wrapper),
            ..Launch::default()
        },
    );
    // More clients than the worker has descriptors; they stay connected, so the
    // worker keeps hitting EMFILE (every 100 ms backoff) for as long as they do.
    let mut clients = Vec::new();
    for _ in 0..80 {
        match TcpStream::connect_timeout(&c.addr(), Duration::from_secs(5)) {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
    }
    must_log(&c, "accept() failed");
    // Three seconds of EMFILE: 30 warnings before, now a few lines and counts.
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || t0.elapsed()
            >= Duration::from_secs(3)
            && lines_with(&c.log(), "accept() failed")
                .iter()
                .any(|l| suppressed_in(l) > 0)),
        "no suppressed count among:\n{}",
        lines_with(&c.log(), "accept() failed").join("\n")
    );
    let log = c.log();
    let lines = operator_lines(&log, "accept() failed");
    let secs = t0.elapsed().as_secs() as usize + 1;
    assert!(
        lines.len() <= secs + 3,
        "{} accept() lines in about {secs}s:\n{}",
        lines.len(),
        lines.join("\n")
    );
    eprintln!("{} accept() lines:\n{}", lines.len(), lines.join("\n"));
    drop(clients);
}
