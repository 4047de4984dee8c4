//! Lanes: at a reload the old workers send their connections straight to the new
//! ones over socketpairs the master made, keeping their own copies until each
//! connection is acknowledged. A new worker killed in the middle of a move takes with
//! it only the connections it had acknowledged (adopted); every other one is sent
//! again over another lane and served.

use crate::common;

use std::time::{Duration, Instant};

use common::handover::*;
use common::*;

/// Echo connections held through the reload.
const CONNS: usize = 3000;

/// Idle echo connections on two old workers; the reload commits while they are
/// frozen, one new worker (the victim) is frozen too, so the old workers fill their
/// lanes to it with connections it has not read; it runs again until it has adopted
/// some, and is killed (SIGKILL, by pid). Then every client is asked for an echo:
/// exactly the connections the victim acknowledged are lost (the old workers' own
/// count, logged when its lanes hung up), every other one is served, and the old
/// generation's summary counts them all as moved, none kept or closed.
#[test]
fn a_new_worker_killed_mid_move_loses_only_what_it_had_adopted() {
    let _heavy = common::heavy();
    raise_nofile();
    // Frozen processes send no heartbeats: keep the watchdog out of this.
    let c = Corral::start(
        &Conf::new(2)
            .drain("120s")
            .max_conns(CONNS + 100)
            .master("watchdog_timeout = \"300s\"")
            .render(),
    );
    let old: Vec<i32> = c.worker_pids();
    assert_eq!(old.len(), 2, "{}", c.log_tail(20));
    let mut conns = open_echo(&c, CONNS);

    freeze(&old, true);
    let out = c.cli(&["-s", "reload"]);
    assert!(
        out.status.success(),
        "reload: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    let mut new: Vec<i32> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            new = c
                .worker_pids()
                .into_iter()
                .filter(|p| !old.contains(p))
                .collect();
            new.len() == 2
        }),
        "new workers: {new:?}\n{}",
        c.log_tail(40)
    );
    let victim = new[0];
    kill_mid_adoption(&old, victim);

    // The old generation finishes the move without it and leaves.
    let t0 = Instant::now();
    let gone = wait_until(Duration::from_secs(60), || {
        c.log().contains("generation 1 gone after")
    });
    assert!(
        gone,
        "generation 1 still there {:?} after the kill\n{}",
        t0.elapsed(),
        c.log_tail(60)
    );

    assert_lost_only_what_the_victim_took(&c, &mut conns, victim, 2);
    let log = c.log();
    let summary = log
        .lines()
        .find(|l| l.contains("generation 1 gone after"))
        .unwrap_or_default();
    assert!(
        summary.contains(&format!("moved {CONNS}, kept 0, closed 0")),
        "{summary}"
    );
}
