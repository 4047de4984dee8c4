//! Hand-over at real size: 5000 idle keep-alive HTTP connections through a reload and
//! through a binary upgrade, each then asked one more request; every one must be
//! answered in full (no reset, no EOF without a response).
//!
//! On reload the old workers hand every idle connection to the new generation (in
//! batches, through the master) and exit as soon as they are empty, long before
//! `drain_timeout`. On upgrade the old generation keeps them and answers the next
//! request with `Connection: close`. The two tests take turns (each holds 5000
//! sockets and keeps the box busy); see `common/mod.rs` for the harness rules.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::handover::*;
use common::*;

/// Connections per test.
const CONNS: usize = 5000;
/// Far longer than the tests wait for the old generation: an exit at the drain
/// timeout would fail them.
const DRAIN: &str = "60s";
/// How long the old generation may take to leave once it has nothing to serve (a
/// loaded 2-core box; the hand-over itself takes well under a second).
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One heavy test at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Two workers; the echo listener on `{port}` for the harness, http on `http_port`.
fn template(http_port: u16) -> String {
    let mut conf = Conf::new(2).drain(DRAIN).idle("300s");
    conf.max_connections = 10_000;
    let mut out = String::new();
    for line in conf.render().lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[master]" {
            out.push_str("upgrade_timeout = \"30s\"\n");
        }
    }
    out.push_str(&format!(
        "\n[[listen]]\naddress = \"127.0.0.1:{http_port}\"\nservice = \"http\"\n"
    ));
    out
}

fn start(binary: Option<PathBuf>) -> (Corral, u16) {
    let port = free_port();
    let c = Corral::start_with(
        &template(port),
        Launch {
            binary,
            ..Launch::default()
        },
    );
    (c, port)
}

/// 5000 idle connections, all on `old` workers (checked by socket owner).
fn open_on(c: &Corral, port: u16, old: &[ProcId]) -> Vec<std::net::TcpStream> {
    let t = Instant::now();
    let conns = open_idle(loopback(port), CONNS, Duration::from_secs(120));
    let pids: Vec<i32> = old.iter().map(|p| p.pid).collect();
    let own = owners_on(port, &conns, &pids);
    let per = per_owner(&own);
    eprintln!(
        "opened {CONNS} idle keep-alive connections in {:?}: {per:?}",
        t.elapsed()
    );
    assert!(
        own.iter().all(Option::is_some),
        "connections not all on the workers {pids:?}: {per:?}\n{}",
        c.log_tail(40)
    );
    conns
}

fn per_owner(own: &[Option<i32>]) -> HashMap<Option<i32>, usize> {
    let mut m = HashMap::new();
    for o in own {
        *m.entry(*o).or_insert(0) += 1;
    }
    m
}

#[test]
fn reload_hands_5000_idle_connections_to_the_new_generation() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    let (c, port) = start(None);
    let old = c.workers();
    assert_eq!(old.len(), 2, "{}", c.log_tail(40));
    let mut conns = open_on(&c, port, &old);

    let t0 = Instant::now();
    let out = c.cli(&["-s", "reload"]);
    let reload_took = t0.elapsed();
    assert!(
        out.status.success(),
        "`corral -s reload` failed: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    // The old workers hand everything over and leave: not at drain_timeout.
    let gone = wait_until(EXIT_WITHIN, || old.iter().all(|p| !proc_alive(*p)));
    let exit_took = t0.elapsed();
    assert!(
        gone,
        "old workers {old:?} still running {exit_took:?} after the reload (drain_timeout {DRAIN})\n{}",
        c.log_tail(60)
    );
    let new: Vec<i32> = c.worker_pids();
    assert_eq!(new.len(), 2, "{}", c.log_tail(40));
    assert!(new.iter().all(|p| old.iter().all(|o| o.pid != *p)));

    // Every connection answers, in full, with keep-alive: it lives on in the new
    // generation.
    let t1 = Instant::now();
    let answers = request_all(&mut conns, IO_TIMEOUT);
    let answer_took = t1.elapsed();
    let summary = tally(&answers);
    eprintln!("after the reload: {summary} (in {answer_took:?})");
    assert_eq!(
        answers.iter().filter(|a| a.is_ok()).count(),
        CONNS,
        "{summary}\n{}",
        c.log_tail(60)
    );
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Answer::Full { closes: false, body, .. } if body == b"ok\n")),
        "an adopted connection must be served with keep-alive: {summary}"
    );

    // Served by the new workers, spread over both.
    let own = owners_on(port, &conns, &new);
    let per = per_owner(&own);
    eprintln!("owners after the reload: {per:?}");
    assert!(
        own.iter().all(Option::is_some),
        "connections not all on the new workers {new:?}: {per:?}"
    );
    for p in &new {
        let n = per.get(&Some(*p)).copied().unwrap_or(0);
        assert!(
            n >= CONNS / 5,
            "new worker {p} adopted only {n} of {CONNS}: {per:?}"
        );
    }

    // The old workers' own counts, at info: all handed over, none kept or closed.
    let log = c.log();
    let handed = sum_field(&log, "drained, exiting", "handed");
    let kept = sum_field(&log, "drained, exiting", "kept");
    let closed = sum_field(&log, "drained, exiting", "closed");
    assert_eq!(
        (handed, kept, closed),
        (CONNS as u64, 0, 0),
        "old workers' hand-over counts (handed, kept, closed)\n{}",
        c.log_tail(40)
    );
    assert!(
        log.lines()
            .any(|l| l.contains("hand-over from worker done")),
        "the master logged no hand-over summary\n{}",
        c.log_tail(40)
    );
    eprintln!(
        "FIGURES reload: {CONNS} connections, `-s reload` returned in {reload_took:?}, \
         old generation gone {exit_took:?} after it was asked, {} answered afterwards in \
         {answer_took:?}",
        answers.iter().filter(|a| a.is_ok()).count()
    );
}

/// A copy of the built corral in a temp dir (an upgrade execs the binary's path).
fn copy_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("corral-handover-bin-")
        .tempdir()
        .expect("create temp dir for the binary");
    let path = dir.path().join("corral");
    install_exec(Path::new(corral_bin()), &path);
    (dir, path)
}

#[test]
fn upgrade_answers_all_5000_idle_connections() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    let (_bin_dir, bin) = copy_binary();
    let (c, port) = start(Some(bin));
    let old = c.workers();
    assert_eq!(old.len(), 2, "{}", c.log_tail(40));
    let mut conns = open_on(&c, port, &old);

    let t0 = Instant::now();
    let out = c.cli(&["-s", "upgrade"]);
    let upgrade_took = t0.elapsed();
    for p in new_master_pids(&c.log()) {
        c.adopt_master(p);
    }
    assert!(
        out.status.success(),
        "`corral -s upgrade` failed: {}\n{}",
        out.all(),
        c.log_tail(60)
    );
    let new_master = *new_master_pids(&c.log())
        .last()
        .unwrap_or_else(|| panic!("no new master in the log\n{}", c.log_tail(40)));
    let mut new_workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            new_workers = c.workers_of(new_master);
            new_workers.len() == 2
        }),
        "new master {new_master} has workers {new_workers:?}\n{}",
        c.log_tail(40)
    );

    // Every idle connection still gets a full answer (the old generation says
    // Connection: close with it): no reset, no EOF without a response.
    let t1 = Instant::now();
    let answers = request_all(&mut conns, IO_TIMEOUT);
    let answer_took = t1.elapsed();
    let summary = tally(&answers);
    eprintln!("after the upgrade: {summary} (in {answer_took:?})");
    assert_eq!(
        answers.iter().filter(|a| a.is_ok()).count(),
        CONNS,
        "{summary}\n{}",
        c.log_tail(60)
    );

    // Its clients answered, the old generation leaves (not at drain_timeout).
    let gone = wait_until(EXIT_WITHIN, || {
        old.iter().all(|p| !proc_alive(*p)) && c.master_exited()
    });
    let exit_took = t0.elapsed();
    assert!(
        gone,
        "old master or workers {old:?} still running {exit_took:?} after the upgrade\n{}",
        c.log_tail(60)
    );
    eprintln!(
        "FIGURES upgrade: {CONNS} connections, `-s upgrade` returned in {upgrade_took:?}, \
         {} answered ({} with Connection: close) in {answer_took:?}, old generation gone \
         {exit_took:?} after the upgrade was asked",
        answers.iter().filter(|a| a.is_ok()).count(),
        answers
            .iter()
            .filter(|a| matches!(a, Answer::Full { closes: true, .. }))
            .count()
    );
}
