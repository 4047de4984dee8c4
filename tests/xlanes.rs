//! Lanes across masters: at a binary upgrade the old master's workers send their
//! connections straight to the new master's workers, over socketpairs the old master
//! made and passed on over the upgrade channel; neither master carries them. Every
//! connection moves and is counted on both sides; a new worker killed in the middle
//! of the move takes with it only what it had acknowledged.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::handover::*;
use common::xmaster::status_json;
use common::*;
use nix::sys::signal::{kill, Signal};

/// Echo connections held through the upgrade.
const CONNS: usize = 3000;

/// The old master's line when it links its workers to the new master's.
const LANES_MADE: &str = "lanes made to the new master's workers";

fn start(bin: &Path, conf: Conf) -> Corral {
    Corral::start_with(
        &conf.render(),
        Launch {
            binary: Some(bin.to_path_buf()),
            ..Launch::default()
        },
    )
}

/// The old generation's summary line, once it is gone (within `limit`).
fn gone_summary(c: &Corral, limit: Duration) -> String {
    let gone = wait_until(limit, || c.log().contains("generation 1 gone after"));
    assert!(gone, "generation 1 still there\n{}", c.log_tail(60));
    c.log()
        .lines()
        .find(|l| l.contains("generation 1 gone after"))
        .unwrap_or_default()
        .to_string()
}

/// The new master counts what came to its workers over lanes as moved in from the
/// old master (their reports may trail the old master's exit by a moment).
fn new_master_counts(c: &Corral, want: u64) {
    let mut v = serde_json::Value::Null;
    let counted = wait_until(Duration::from_secs(20), || {
        v = status_json(c);
        v["moved_from_old_master"].as_u64() == Some(want)
    });
    assert!(counted, "moved_from_old_master should be {want}: {v}");
}

/// Two old workers (the watchdog kept out: frozen processes send no heartbeats) with
/// `n` echo connections; they are frozen and `corral -s upgrade` commits. Returns the
/// corral, its clients, the old workers (still frozen) and the new master's two
/// workers.
fn frozen_upgrade(
    bin: &Path,
    n: usize,
) -> (Corral, Vec<std::net::TcpStream>, Vec<i32>, i32, Vec<i32>) {
    let c = start(
        bin,
        Conf::new(2)
            .drain("120s")
            .upgrade_timeout("60s")
            .max_conns(n + 100)
            .master("watchdog_timeout = \"300s\""),
    );
    let old: Vec<i32> = c.worker_pids();
    assert_eq!(old.len(), 2, "{}", c.log_tail(20));
    let conns = open_echo(&c, n);
    freeze(&old, true);
    let new_master = c.must_upgrade();
    let mut new: Vec<i32> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            new = c.workers_of(new_master).iter().map(|p| p.pid).collect();
            new.len() == 2
        }),
        "new master {new_master} has workers {new:?}\n{}",
        c.log_tail(40)
    );
    (c, conns, old, new_master, new)
}

/// 3000 idle echo connections on two old workers, `corral -s upgrade`: every one
/// moves to the new master's workers over lanes (the old workers' own count of what
/// the new ones took equals the generation's "moved"; neither master relayed any),
/// every client still echoes, and both masters count them all.
#[test]
fn an_upgrade_moves_every_connection_over_lanes_to_the_new_masters_workers() {
    let _heavy = common::heavy();
    raise_nofile();
    let (_bin_dir, bin) = copy_binary();
    let c = start(
        &bin,
        Conf::new(2)
            .drain("120s")
            .upgrade_timeout("60s")
            .max_conns(CONNS + 100),
    );
    let old_master = c.master_pid();
    let mut conns = open_echo(&c, CONNS);

    let t0 = Instant::now();
    let new_master = c.must_upgrade();
    assert_ne!(new_master, old_master);
    let summary = gone_summary(&c, Duration::from_secs(120));
    let took = t0.elapsed();
    assert!(
        wait_until(Duration::from_secs(30), || c.master_exited()),
        "the old master stayed\n{}",
        c.log_tail(40)
    );

    let log = c.log();
    assert!(
        summary.contains(&format!("moved {CONNS}, kept 0, closed 0")),
        "{summary}\n{}",
        c.log_tail(60)
    );
    assert!(log.contains(LANES_MADE), "{}", c.log_tail(60));
    let over_lanes = sum_field(&log, "drained, exiting", "over_lanes");
    let relayed = sum_field(&log, "hand-over from worker done", "forwarded");
    eprintln!("upgrade moved {CONNS} in {took:?}: {over_lanes} over lanes, {relayed} through the masters ({summary})");
    assert_eq!(
        over_lanes,
        CONNS as u64,
        "the new workers' acknowledgements on the lanes should account for every move\n{}",
        c.log_tail(60)
    );
    assert_eq!(
        relayed,
        0,
        "the old master relayed some\n{}",
        c.log_tail(60)
    );

    let mut bad = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        match echo(s, b"again\n", Duration::from_secs(30)) {
            Echo::Ok => {}
            other => bad.push((i, other)),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {CONNS} clients not served after the upgrade: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    new_master_counts(&c, CONNS as u64);
}

/// As the reload test in `lanes.rs`, across masters: the old workers are frozen when
/// the upgrade commits, one of the new master's workers (the victim) is frozen too,
/// so the old workers fill their lanes to it; it runs again until it has adopted
/// some, and is killed (SIGKILL, by pid). Exactly the connections it acknowledged
/// are lost; every other one is sent again over another lane (the new master's
/// respawn gets lanes too) and served, and the old generation counts them all moved.
#[test]
fn a_new_masters_worker_killed_mid_move_loses_only_what_it_had_adopted() {
    let _heavy = common::heavy();
    raise_nofile();
    let (_bin_dir, bin) = copy_binary();
    let (c, mut conns, old, _new_master, new) = frozen_upgrade(&bin, CONNS);
    let victim = new[0];
    kill_mid_adoption(&old, victim);

    let summary = gone_summary(&c, Duration::from_secs(90));
    assert_lost_only_what_the_victim_took(&c, &mut conns, victim, 2);
    let log = c.log();
    assert!(
        summary.contains(&format!("moved {CONNS}, kept 0, closed 0")),
        "{summary}"
    );
    assert_eq!(
        sum_field(&log, "hand-over from worker done", "forwarded"),
        0,
        "the old master relayed some\n{}",
        c.log_tail(60)
    );
}

/// The new master dies (SIGKILL, by pid) right after the commit, before the old
/// workers (frozen) have moved anything: its workers drain and exit with it, the lanes
/// to them hang up or refuse, and the old workers keep every connection and serve it.
/// Nothing is lost to a lane whose other side went away.
#[test]
fn a_new_master_killed_after_the_commit_loses_no_connection() {
    let _heavy = common::heavy();
    raise_nofile();
    let (_bin_dir, bin) = copy_binary();
    let conns_n = 1000;
    let (c, mut conns, old, new_master, new) = frozen_upgrade(&bin, conns_n);
    kill(nix::unistd::Pid::from_raw(new_master), Signal::SIGKILL).expect("SIGKILL the new master");
    // Its workers see their channel close and leave (they hold no client).
    let gone = wait_until(Duration::from_secs(30), || {
        new.iter()
            .all(|&p| read_stat(p).is_none_or(|s| s.state == 'Z'))
    });
    assert!(
        gone,
        "the new master's workers {new:?} stayed\n{}",
        c.log_tail(40)
    );
    freeze(&old, false);

    let mut bad = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        match echo(s, b"still\n", Duration::from_secs(30)) {
            Echo::Ok => {}
            other => bad.push((i, other)),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {conns_n} clients not served by the old workers: {:?}\n{}",
        bad.len(),
        &bad[..bad.len().min(5)],
        c.log_tail(60)
    );
    assert!(
        c.master_alive(),
        "the old master serves on\n{}",
        c.log_tail(40)
    );
}
