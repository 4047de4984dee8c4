//! Binary upgrade moves idle connections to the new master: 2000 idle keep-alive
//! HTTP connections, `corral -s upgrade`, and every one is then held and answered by
//! a worker of the NEW master (by socket inode, and with keep-alive: nobody was told
//! `Connection: close`), while the old master and its workers leave as soon as they
//! are empty, long before `drain_timeout` (60 s). And an upgrade that rolls back
//! moves nothing: every connection stays with the old workers and answers.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::handover::*;
use common::xmaster::*;
use common::*;

const CONNS: usize = 2000;
/// Far below the 60 s drain timeout: an old generation that waits for it fails.
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// Generous: 2000 answers at once on a loaded 2-core box.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

fn start(bin: &Path) -> (Corral, u16) {
    let port = free_port();
    let c = Corral::start_with(
        &http_template(2, port, "").render(),
        Launch {
            binary: Some(bin.to_path_buf()),
            ..Launch::default()
        },
    );
    (c, port)
}

#[test]
fn upgrade_moves_2000_idle_connections_to_the_new_masters_workers() {
    let _heavy = common::heavy();
    raise_nofile();
    let (_bin_dir, bin) = copy_binary();
    let (c, port) = start(&bin);
    let old_master = c.master_pid();
    let old = c.workers();
    assert_eq!(old.len(), 2, "{}", c.log_tail(40));
    let old_pids: Vec<i32> = old.iter().map(|p| p.pid).collect();
    let mut conns = open_idle(loopback(port), CONNS, Duration::from_secs(120));
    assert!(
        owners_on(port, &conns, &old_pids)
            .iter()
            .all(Option::is_some),
        "connections not all on the old workers {old_pids:?}"
    );

    let t0 = Instant::now();
    let new_master = c.must_upgrade();
    assert_ne!(new_master, old_master);
    let mut new_workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            new_workers = c.workers_of(new_master);
            new_workers.len() == 2
        }),
        "new master {new_master} has workers {new_workers:?}\n{}",
        c.log_tail(40)
    );

    // With every client idle and connected, the old master and its workers leave
    // (their connections moved): not at drain_timeout, and not by closing them.
    let gone = wait_until(EXIT_WITHIN, || {
        old.iter().all(|p| !proc_alive(*p)) && c.master_exited()
    });
    let exit_took = t0.elapsed();
    assert!(
        gone,
        "old master {old_master} or workers {old:?} still running {exit_took:?} after the upgrade, \
         with {CONNS} idle clients connected\n{}",
        c.log_tail(60)
    );

    // Every connection is now held by a worker of the new master...
    let new_pids: Vec<i32> = new_workers.iter().map(|p| p.pid).collect();
    for w in &new_pids {
        assert_eq!(
            read_stat(*w).map(|s| s.ppid),
            Some(new_master),
            "worker {w} is not the new master's child"
        );
    }
    // (The last batches may still be on their way from the new master to its
    // workers when the old master exits.)
    let mut own = Vec::new();
    let mut held = 0;
    wait_until(EXIT_WITHIN, || {
        own = owners_on(port, &conns, &new_pids);
        held = own.iter().filter(|o| o.is_some()).count();
        held == CONNS
    });
    assert_eq!(
        held,
        CONNS,
        "only {held} of {CONNS} connections are held by the new master's workers {new_pids:?}\n{}",
        c.log_tail(60)
    );
    let spread: Vec<usize> = new_pids
        .iter()
        .map(|p| own.iter().filter(|o| **o == Some(*p)).count())
        .collect();
    assert!(
        spread.iter().all(|&n| n > 0),
        "moved connections not spread over the new workers: {spread:?}"
    );
    // ...and answers from there, keeping the connection alive.
    all_kept_alive(&c, &mut conns, "the upgrade", IO_TIMEOUT);

    // The old master said what became of its generation; the new one counts them.
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("generation 1 gone after"))
        .unwrap_or_else(|| panic!("no \"generation 1 gone\" line\n{}", c.log_tail(40)));
    assert!(
        line.contains(&format!("moved {CONNS}, kept 0, closed 0")),
        "old generation's summary: {line}"
    );
    let v = status_json(&c);
    assert_eq!(v["master_pid"].as_i64(), Some(i64::from(new_master)), "{v}");
    assert_eq!(
        v["moved_from_old_master"].as_u64(),
        Some(CONNS as u64),
        "{v}"
    );
    assert!(
        v["workers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["generation"].as_u64().is_some())),
        "per-worker generation missing: {v}"
    );
    eprintln!(
        "FIGURES upgrade moves: {CONNS} idle connections moved to the new master; old master \
         and workers gone {exit_took:?} after `-s upgrade` was asked ({line})"
    );
}

#[test]
fn an_upgrade_that_rolls_back_moves_nothing_and_loses_nothing() {
    let _heavy = common::heavy();
    raise_nofile();
    let (bin_dir, bin) = copy_binary();
    let (c, port) = start(&bin);
    let master = c.master_pid();
    let old = c.workers();
    assert_eq!(old.len(), 2, "{}", c.log_tail(40));
    let old_pids: Vec<i32> = old.iter().map(|p| p.pid).collect();
    let mut conns = open_idle(loopback(port), CONNS, Duration::from_secs(120));

    // The new binary fails at start: the upgrade must roll back.
    let script = bin_dir.path().join("broken");
    std::fs::write(&script, "#!/bin/sh\nexit 1\n").expect("write the broken binary");
    let tmp = bin.with_extension("new");
    install_exec(&script, &tmp);
    std::fs::rename(&tmp, &bin).expect("put the broken binary in place");
    let out = c.cli(&["-s", "upgrade"]);
    c.adopt_new_masters();
    assert!(
        !out.status.success() && out.all().contains("rolled back"),
        "an upgrade to a binary that exits 1 did not roll back: {}\n{}",
        out.all(),
        c.log_tail(40)
    );
    assert!(c.master_alive(), "master exited\n{}", c.log_tail(40));
    assert_eq!(c.workers(), old, "workers changed\n{}", c.log_tail(40));

    // Every connection is still with the old workers, and answers with keep-alive.
    let own = owners_on(port, &conns, &old_pids);
    assert!(
        own.iter().all(Option::is_some),
        "{} connections left the old workers after a rollback\n{}",
        own.iter().filter(|o| o.is_none()).count(),
        c.log_tail(40)
    );
    all_kept_alive(&c, &mut conns, "the rollback", IO_TIMEOUT);
    assert!(
        !c.log().contains("gone after"),
        "a generation was drained by a rolled-back upgrade\n{}",
        c.log_tail(40)
    );
    assert_eq!(c.read_pid_file(), Some(master));
}
