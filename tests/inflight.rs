//! The kernel bounds the fds one user has in flight in Unix sockets (SCM_RIGHTS
//! messages sent and not yet received) by the sender's RLIMIT_NOFILE, unless it has
//! CAP_SYS_RESOURCE: past it `sendmsg` fails with ETOOMANYREFS. Workers (`nobody`,
//! no capabilities) that hand over thousands of connections at once reach it: found by
//! `bench/million.sh 300000` (17 workers), where 160 377 connections stayed on the old
//! workers until `drain_timeout`. A move must wait for the kernel and go on.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::handover::raise_nofile;
use common::*;

/// Workers, connections per worker and the workers' fd limit: together the workers
/// hand over three times what one of them may have in flight, several 64-fd messages
/// each at the same instant.
const WORKERS: usize = 8;
const PER_WORKER: usize = 30;
const NOFILE: usize = 100;

#[test]
fn a_move_of_more_fds_than_a_worker_may_have_in_flight_waits_for_the_kernel_and_finishes() {
    let _heavy = common::heavy();
    raise_nofile();
    let c = Corral::start(
        &Conf::bare(WORKERS)
            .drain("60s")
            .max_conns(NOFILE - 20)
            .worker(&format!("rlimit_nofile = {NOFILE}"))
            .render(),
    );
    let mut conns = Vec::with_capacity(WORKERS * PER_WORKER);
    for i in 0..WORKERS * PER_WORKER {
        let mut s = connect(c.addr(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"x\n").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("echo on connection {i}: {e}"));
        conns.push(s);
    }
    c.must_reload();
    let gone = |log: &str| {
        log.lines()
            .find(|l| l.contains("generation 1 gone after"))
            .map(str::to_string)
    };
    assert!(
        wait_until(Duration::from_secs(45), || gone(&c.log()).is_some()),
        "generation 1 stayed: its connections did not move\n{}",
        c.log_tail(40)
    );
    let line = gone(&c.log()).unwrap_or_default();
    let n = WORKERS * PER_WORKER;
    assert!(
        line.contains(&format!("moved {n}, kept 0, closed 0")),
        "every connection moved: {line}\n{}",
        c.log_tail(40)
    );
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(b"y\n").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i} after the move: {e}"));
        assert_eq!(&b, b"y\n");
    }
    let deferred: u64 = c
        .log()
        .lines()
        .filter(|l| l.contains("hand-over done") && l.contains("gen=1"))
        .filter_map(|l| {
            l.split("deferred=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    eprintln!(
        "{n} connections moved, fd limit {NOFILE} per worker; the kernel deferred sends {deferred} times"
    );
}
