//! A new build whose service cannot read the old build's suspended state: the kv
//! example with `state_version = 2` in its config (what a new build that changed its
//! state format does), after a reload and after a binary upgrade. Every connection
//! the new workers refuse goes back to the old worker that suspended it and is
//! served there, state intact, until the client leaves; the old generation's summary
//! counts them as kept, none moved, none closed. `drain_timeout` is 60 s: the old
//! generation leaves once its last client does, not at the deadline.

use crate::common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::handover::owners_on;
use common::moves::{start_kv, LineClient};
use common::*;

/// Clients, enough that both old workers hold some (reuseport spreads them).
const CLIENTS: usize = 6;
/// How long the harness polls before giving up (a failure, with the log).
const POLL_LIMIT: Duration = Duration::from_secs(30);
/// Round trips each refused connection makes after the move was tried.
const ROUNDS: u64 = 5;

/// The next build: kv writes and reads state version 2 only.
fn bump_state_version(c: &Corral, kv: SocketAddr) {
    c.write_config(
        &Conf::bare(2)
            .drain("60s")
            .upgrade_timeout("30s")
            .listen(kv.port(), "kv", "state_version = 2")
            .render(),
    );
}

/// `CLIENTS` kv clients, each with 2 commands behind it, on the workers `pids`.
fn clients_on(c: &Corral, kv: SocketAddr, pids: &[i32]) -> Vec<LineClient> {
    let mut clients: Vec<LineClient> = (0..CLIENTS).map(|_| LineClient::connect(kv)).collect();
    for k in &mut clients {
        assert_eq!(k.ask("SET a b").as_deref(), Ok("OK"));
        assert_eq!(k.ask("COUNT").as_deref(), Ok("COUNT 2"));
    }
    let own = owners(kv, &clients, pids);
    assert!(
        own.iter().all(Option::is_some),
        "clients not on the workers {pids:?}: {own:?}\n{}",
        c.log_tail(20)
    );
    clients
}

fn owners(kv: SocketAddr, clients: &[LineClient], pids: &[i32]) -> Vec<Option<i32>> {
    let socks: Vec<TcpStream> = clients
        .iter()
        .map(|k| k.s.try_clone().expect("clone"))
        .collect();
    owners_on(kv.port(), &socks, pids)
}

/// Every client is answered by the old generation, its command count going on from
/// where it was (its state was resumed there, not lost), round after round, each
/// held by an old worker; then each leaves.
fn served_by_the_old_workers_to_the_end(
    c: &Corral,
    kv: SocketAddr,
    mut clients: Vec<LineClient>,
    old: &[i32],
) {
    for round in 0..ROUNDS {
        for (i, k) in clients.iter_mut().enumerate() {
            let want = format!("COUNT {}", 3 + round);
            assert_eq!(
                k.ask("COUNT"),
                Ok(want),
                "client {i}, round {round}\n{}",
                c.log_tail(60)
            );
        }
        let own = owners(kv, &clients, old);
        assert!(
            own.iter().all(Option::is_some),
            "round {round}: clients not held by the old workers {old:?}: {own:?}\n{}",
            c.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, k) in clients.iter_mut().enumerate() {
        assert_eq!(k.ask("QUIT").as_deref(), Ok("BYE"), "client {i}");
    }
}

/// A new client goes to the new generation, which runs version 2 (a fresh count).
fn new_generation_serves(c: &Corral, kv: SocketAddr, new: &[i32]) {
    let mut k = LineClient::connect(kv);
    assert_eq!(k.ask("COUNT").as_deref(), Ok("COUNT 1"));
    let own = owners(kv, std::slice::from_ref(&k), new);
    assert!(
        own[0].is_some(),
        "a new client is not on the new workers {new:?}\n{}",
        c.log_tail(40)
    );
    assert_eq!(k.ask("QUIT").as_deref(), Ok("BYE"));
}

/// Waits until the move was tried and refused for every client: the new workers
/// said why, and the old ones took them back to serve them here to the end.
fn wait_refused_and_kept(c: &Corral) {
    let ok = wait_until(POLL_LIMIT, || {
        let log = c.log();
        log.matches("refused its state").count() >= 1
            && common::handover::sum_field(&log, "serving them here to the end", "connections")
                >= CLIENTS as u64
    });
    assert!(
        ok,
        "the old workers did not take back {CLIENTS} refused connections\n{}",
        c.log_tail(60)
    );
}

/// The old generation's summary, once it is gone: kept every client, moved and
/// closed none; and no refused connection was closed on the way.
fn old_generation_kept_all(c: &Corral, took_at_most: Duration, since: Instant) {
    let log = c.log();
    assert!(
        !log.contains("closing a refused connection"),
        "a refused connection was closed\n{}",
        c.log_tail(60)
    );
    let line = log
        .lines()
        .find(|l| l.contains("generation 1 gone after"))
        .unwrap_or_else(|| panic!("no \"generation 1 gone\" line\n{}", c.log_tail(60)));
    assert!(
        line.contains(&format!("moved 0, kept {CLIENTS}, closed 0")),
        "old generation's summary: {line}\n{}",
        c.log_tail(60)
    );
    assert!(
        since.elapsed() < took_at_most,
        "the old generation took {:?} to leave after its last client",
        since.elapsed()
    );
}

#[test]
fn a_state_refused_at_reload_is_served_by_its_old_worker_to_the_end() {
    let (c, kv) = start_kv(Conf::bare(2).drain("60s").upgrade_timeout("30s"), "", &[]);
    let old = c.worker_pids();
    assert_eq!(old.len(), 2, "{}", c.log_tail(20));
    let clients = clients_on(&c, kv, &old);

    bump_state_version(&c, kv);
    c.must_reload();
    let mut new = Vec::new();
    assert!(
        wait_until(POLL_LIMIT, || {
            new = c
                .worker_pids()
                .into_iter()
                .filter(|p| !old.contains(p))
                .collect();
            new.len() == 2
        }),
        "no new generation: {new:?}\n{}",
        c.log_tail(40)
    );
    wait_refused_and_kept(&c);
    new_generation_serves(&c, kv, &new);
    served_by_the_old_workers_to_the_end(&c, kv, clients, &old);

    let left = Instant::now();
    assert!(
        wait_until(POLL_LIMIT, || c
            .worker_pids()
            .iter()
            .all(|p| !old.contains(p))),
        "old workers {old:?} outlived their last client\n{}",
        c.log_tail(40)
    );
    assert!(
        wait_until(POLL_LIMIT, || c.log().contains("generation 1 gone after")),
        "{}",
        c.log_tail(40)
    );
    old_generation_kept_all(&c, POLL_LIMIT, left);
}

#[test]
fn a_state_refused_after_an_upgrade_goes_back_to_the_old_masters_worker() {
    let (c, kv) = start_kv(Conf::bare(2).drain("60s").upgrade_timeout("30s"), "", &[]);
    let old_master = c.master_pid();
    let old = c.worker_pids();
    assert_eq!(old.len(), 2, "{}", c.log_tail(20));
    let clients = clients_on(&c, kv, &old);

    bump_state_version(&c, kv);
    let new_master = c.must_upgrade();
    assert_ne!(new_master, old_master);
    let mut new = Vec::new();
    assert!(
        wait_until(POLL_LIMIT, || {
            new = c.workers_of(new_master).iter().map(|p| p.pid).collect();
            new.len() == 2
        }),
        "new master {new_master} has workers {new:?}\n{}",
        c.log_tail(40)
    );
    // The connections crossed to the new master's workers over lanes (the old master
    // linked its workers to them), were refused there, and the old workers served
    // them from their own copies: nothing came back through the masters.
    wait_refused_and_kept(&c);
    let log = c.log();
    assert!(
        log.contains("lanes made to the new master's workers")
            && !log.contains("the new master gave connections back"),
        "{}",
        c.log_tail(60)
    );
    new_generation_serves(&c, kv, &new);
    // The old master and its workers stay while the refused clients are connected.
    assert!(c.master_alive(), "{}", c.log_tail(40));
    served_by_the_old_workers_to_the_end(&c, kv, clients, &old);

    let left = Instant::now();
    assert!(
        wait_until(POLL_LIMIT, || c.master_exited()
            && old
                .iter()
                .all(|p| read_stat(*p).is_none_or(|s| s.state == 'Z'))),
        "the old master or workers {old:?} outlived their last client\n{}",
        c.log_tail(40)
    );
    old_generation_kept_all(&c, POLL_LIMIT, left);
    let v = common::xmaster::status_json(&c);
    assert_eq!(
        v["moved_from_old_master"].as_u64(),
        Some(0),
        "refused connections are not counted as moved: {v}"
    );
}
