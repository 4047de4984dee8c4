//! Connections that move at reload (suspend/resume): long echo streams with requests
//! in flight, proxied sessions mid-transfer (copy and splice), the kv example's
//! per-connection state, and a service that refuses to suspend (today's drain).
//! Every test sets `drain_timeout = "60s"`, so an old generation that is gone within
//! a second or so can only be gone because its connections moved.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::handover::raise_nofile;
use common::moves::*;
use common::*;

/// Longest an old generation may take to exit after `corral -s reload` returned (the
/// new generation is ready then). The goal is well under a second (each reload's time
/// is printed); on a 2-core box shared with other test runs a worker can wait
/// hundreds of milliseconds for the CPU, so the bound is what proves the point: an
/// exit without `drain_timeout` (60 s), by a wide margin.
const OLD_GONE_WITHIN: Duration = Duration::from_secs(5);
/// How long the harness polls before giving up (a failure, with the log).
const POLL_LIMIT: Duration = Duration::from_secs(30);

/// A corral with 2 echo workers and `n` streams doing round trips on it, going.
fn start_streams(n: usize) -> (Corral, EchoStreams) {
    start_streams_with(&Conf::bare(2).drain("60s").max_conns(5000).render(), n)
}

/// `start_streams` with a config of its own (the streams use its first listener).
fn start_streams_with(config: &str, n: usize) -> (Corral, EchoStreams) {
    raise_nofile();
    let c = Corral::start(config);
    let streams = EchoStreams::start(c.addr(), n, 4, Duration::from_millis(100));
    assert!(
        wait_until(POLL_LIMIT, || streams.total.load(Relaxed) >= 2 * n as u64),
        "the streams do not get going\n{}",
        c.log_tail(40)
    );
    (c, streams)
}

/// The streams go on: `n` more round trips within the poll limit.
fn assert_streams_go_on(c: &Corral, streams: &EchoStreams, n: usize, what: &str) {
    let before = streams.total.load(Relaxed);
    assert!(
        wait_until(POLL_LIMIT, || streams.total.load(Relaxed)
            >= before + n as u64),
        "{what}: round trips stopped\n{}",
        c.log_tail(40)
    );
}

/// Ends the streams: none saw an error, and each did at least `least` round trips.
fn finish_streams(c: &Corral, streams: EchoStreams, least: u64) {
    let report = streams.finish();
    assert!(
        report.errors.is_empty(),
        "{} errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(10)],
        c.log_tail(40)
    );
    let fewest = report.done.iter().min().copied().unwrap_or(0);
    assert!(fewest >= least, "a stream did only {fewest} round trips");
}

/// `corral -s upgrade`, then waits until the old master and its workers are gone
/// (their connections moved: `drain_timeout` is 60 s); returns how long that took.
fn upgrade_and_wait_old_gone(c: &Corral, what: &str) -> Duration {
    let master = c.serving_master();
    let old_workers = c.workers_of(master);
    let t0 = std::time::Instant::now();
    c.must_upgrade();
    assert!(
        c.wait_master_gone(master, &old_workers, POLL_LIMIT),
        "{what}: the old master {master} or its workers still run {:?} later\n{}",
        t0.elapsed(),
        c.log_tail(60)
    );
    t0.elapsed()
}

#[test]
fn a_thousand_echo_streams_survive_twenty_reloads_byte_exact() {
    const STREAMS: usize = 1000;
    const RELOADS: usize = 20;
    let (c, streams) = start_streams(STREAMS);
    let mut slowest = Duration::ZERO;
    for i in 0..RELOADS {
        let before = streams.total.load(Relaxed);
        let (gen, took) = reload_and_wait_old_gone(&c, POLL_LIMIT);
        eprintln!("reload {i}: generation {gen} alone after {took:?}");
        slowest = slowest.max(took);
        assert!(
            took <= OLD_GONE_WITHIN,
            "reload {i}: the old generation took {took:?} to exit (drain_timeout is 60 s)\n{}",
            c.log_tail(60)
        );
        // Round trips go on, now with the new generation.
        assert!(
            wait_until(POLL_LIMIT, || streams.total.load(Relaxed)
                >= before + STREAMS as u64),
            "reload {i}: round trips stopped\n{}",
            c.log_tail(40)
        );
    }
    let report = streams.finish();
    eprintln!(
        "{} round trips on {STREAMS} streams through {RELOADS} reloads; slowest old-generation exit {slowest:?}",
        report.done.iter().sum::<u64>()
    );
    assert!(
        report.errors.is_empty(),
        "{} errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(10)],
        c.log_tail(40)
    );
    // Every stream kept going through the reloads, not only some of them.
    let least = report.done.iter().min().copied().unwrap_or(0);
    assert!(
        least >= RELOADS as u64,
        "a stream did only {least} round trips"
    );
    let log = c.log();
    assert!(
        !log.contains("drain timeout"),
        "a drain ran into its timeout:\n{}",
        c.log_tail(60)
    );
}

/// The same streams through three binary upgrades: after each, every connection is
/// served by the new master's workers (moved across masters), the old master and its
/// workers leave without waiting for `drain_timeout`, and no stream sees an error.
#[test]
fn a_thousand_echo_streams_survive_three_binary_upgrades_byte_exact() {
    const STREAMS: usize = 1000;
    const UPGRADES: usize = 3;
    let (c, streams) = start_streams(STREAMS);
    for i in 0..UPGRADES {
        let took = upgrade_and_wait_old_gone(&c, &format!("upgrade {i}"));
        eprintln!("upgrade {i}: old master and its workers gone after {took:?}");
        assert_streams_go_on(&c, &streams, STREAMS, &format!("upgrade {i}"));
    }
    finish_streams(&c, streams, UPGRADES as u64);
}

/// The bench's shape at a small size: many reuseport sockets (6 workers x 2
/// listeners), a reload first (which frees low fd numbers in the master), then an
/// upgrade. The master-to-master link used to be copied after the listeners were
/// placed onto fds 3.., so when its number was among them the new master got a
/// listener under the link's name and nothing moved: the old master then held every
/// connection until drain_timeout.
#[test]
fn streams_move_at_an_upgrade_after_a_reload_with_many_reuseport_sockets() {
    const STREAMS: usize = 300;
    let second = free_port();
    let (c, streams) = start_streams_with(
        &Conf::bare(6)
            .drain("60s")
            .accept("reuseport")
            .listen(second, "echo", "accept = \"reuseport\"")
            .render(),
        STREAMS,
    );
    let (_, took) = reload_and_wait_old_gone(&c, POLL_LIMIT);
    assert!(
        took <= OLD_GONE_WITHIN,
        "reload: old generation took {took:?}"
    );
    let took = upgrade_and_wait_old_gone(&c, "the upgrade");
    eprintln!("upgrade: old master gone after {took:?}");
    assert!(
        !c.log()
            .contains("no connection will move from the old master"),
        "the new master did not get the link\n{}",
        c.log_tail(40)
    );
    assert_streams_go_on(&c, &streams, STREAMS, "after the upgrade");
    finish_streams(&c, streams, 1);
}

/// Sessions through the proxy to a real (threaded) echo server, several MiB each
/// way, every byte checked, while the proxy reloads ten times and then upgrades its
/// binary: each pair (client and upstream socket) moves to the new generation, then
/// to the new master's workers, and the old ones are gone long before
/// `drain_timeout`.
fn proxied_sessions_survive_reloads(splice: bool) {
    const SESSIONS: usize = 3;
    const RELOADS: usize = 10;
    let upstream = UpstreamEcho::start();
    let proxy_port = free_port();
    let c = Corral::start(
        &Conf::bare(2)
            .drain("60s")
            .proxy(proxy_port, &[upstream.addr], &format!("splice = {splice}"))
            .render(),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy_port));
    let sessions: Vec<Session> = (0..SESSIONS)
        .map(|id| Session::start(addr, id, 16 << 10, Duration::from_millis(4)))
        .collect();
    let received = |s: &[Session]| -> u64 { s.iter().map(|x| x.received.load(Relaxed)).sum() };
    assert!(
        wait_until(POLL_LIMIT, || received(&sessions) > (SESSIONS as u64) << 20),
        "the sessions do not get going\n{}",
        c.log_tail(40)
    );
    for i in 0..RELOADS {
        let before: Vec<u64> = sessions.iter().map(|s| s.received.load(Relaxed)).collect();
        let (gen, took) = reload_and_wait_old_gone(&c, POLL_LIMIT);
        eprintln!("reload {i}: generation {gen} alone after {took:?}");
        assert!(
            took <= OLD_GONE_WITHIN,
            "reload {i}: the old generation took {took:?} to exit\n{}",
            c.log_tail(60)
        );
        // Each session still moves bytes, now through the new generation.
        assert!(
            wait_until(POLL_LIMIT, || sessions
                .iter()
                .zip(&before)
                .all(|(s, b)| s.received.load(Relaxed) > b + (256 << 10))),
            "reload {i}: a session stopped\n{}",
            c.log_tail(40)
        );
    }
    // And a binary upgrade: each pair moves to the new master's workers.
    let before: Vec<u64> = sessions.iter().map(|s| s.received.load(Relaxed)).collect();
    upgrade_and_wait_old_gone(&c, "the upgrade");
    assert!(
        wait_until(POLL_LIMIT, || sessions
            .iter()
            .zip(&before)
            .all(|(s, b)| s.received.load(Relaxed) > b + (256 << 10))),
        "a session stopped after the upgrade\n{}",
        c.log_tail(40)
    );
    // Several MiB each way however fast the reloads went.
    assert!(
        wait_until(POLL_LIMIT * 4, || sessions
            .iter()
            .all(|s| s.received.load(Relaxed) >= 4 << 20)),
        "the sessions did not reach 4 MiB each\n{}",
        c.log_tail(40)
    );
    for (id, s) in sessions.into_iter().enumerate() {
        let bytes = s
            .finish()
            .unwrap_or_else(|e| panic!("session {id} (splice {splice}): {e}\n{}", c.log_tail(60)));
        eprintln!("session {id}: {} MiB each way, byte-exact", bytes >> 20);
        assert!(bytes >= 4 << 20, "session {id} moved only {bytes} bytes");
    }
}

#[test]
fn proxied_sessions_mid_transfer_survive_ten_reloads_copy_mode() {
    proxied_sessions_survive_reloads(false);
}

#[test]
fn proxied_sessions_mid_transfer_survive_ten_reloads_splice_mode() {
    proxied_sessions_survive_reloads(true);
}

/// kv connections move at reload with their state (the per-connection command count
/// goes on from where it was) and with a half-sent line (unconsumed input travels:
/// the command completes in the new worker).
#[test]
fn kv_connections_keep_their_state_and_half_lines_across_reloads() {
    const CONNS: usize = 20;
    let (c, kv) = start_kv(Conf::bare(2).drain("60s"), "", &[]);
    let mut clients: Vec<LineClient> = (0..CONNS).map(|_| LineClient::connect(kv)).collect();
    for k in &mut clients {
        assert_eq!(k.ask("SET a b").as_deref(), Ok("OK"));
        assert_eq!(k.ask("COUNT").as_deref(), Ok("COUNT 2"));
    }
    for round in 0..3u64 {
        // Half a command before the reload, the rest after it.
        for k in &mut clients {
            k.send(b"COU");
        }
        let (gen, took) = reload_and_wait_old_gone(&c, POLL_LIMIT);
        eprintln!("reload {round}: generation {gen} alone after {took:?}");
        assert!(
            took <= OLD_GONE_WITHIN,
            "reload {round}: the old generation took {took:?}\n{}",
            c.log_tail(60)
        );
        for (i, k) in clients.iter_mut().enumerate() {
            k.send(b"NT\n");
            let want = format!("COUNT {}", 3 + 2 * round);
            assert_eq!(
                k.line(),
                Ok(want.clone()),
                "client {i} after reload {round}\n{}",
                c.log_tail(40)
            );
            let want = format!("COUNT {}", 4 + 2 * round);
            assert_eq!(k.ask("COUNT"), Ok(want), "client {i}");
        }
    }
}

/// A service that does not suspend (kv with `CORRAL_KV_SUSPEND=off`) keeps today's
/// drain behaviour: its connection stays in the old worker, served there (its state
/// intact), and holds the old generation until it ends; one that does not end is cut
/// at `drain_timeout`.
#[test]
fn a_service_that_refuses_to_suspend_keeps_the_drain_behaviour() {
    const DRAIN: Duration = Duration::from_secs(6);
    let (c, kv) = start_kv(
        Conf::bare(2).drain("6s"),
        "",
        &[("CORRAL_KV_SUSPEND", "off")],
    );
    let gen_of = |c: &Corral| status(c).1;

    // 1. The connection ends by itself: the old generation goes with it.
    let mut a = LineClient::connect(kv);
    assert_eq!(a.ask("COUNT").as_deref(), Ok("COUNT 1"));
    c.must_reload();
    let new = gen_of(&c);
    // The old worker says it drains with the connection in hand (it did not hand it
    // on); from then on only the connection's end or drain_timeout ends it.
    assert!(
        wait_until(POLL_LIMIT, || c
            .log()
            .contains("draining (master asked) connections=1")),
        "the old worker never drained with its connection\n{}",
        c.log_tail(40)
    );
    assert_eq!(
        generations(&c).len(),
        2,
        "the old generation must stay while its connection is open\n{}",
        c.log_tail(40)
    );
    assert_eq!(
        a.ask("COUNT").as_deref(),
        Ok("COUNT 2"),
        "served by the old worker"
    );
    assert_eq!(a.ask("QUIT").as_deref(), Ok("BYE"));
    assert!(
        wait_until(DRAIN - Duration::from_secs(2), || generations(&c)
            == [new].into()),
        "the old generation outlived its last connection\n{}",
        c.log_tail(40)
    );

    // 2. The connection does not end: cut at drain_timeout, not before.
    let mut b = LineClient::connect(kv);
    assert_eq!(b.ask("COUNT").as_deref(), Ok("COUNT 1"));
    let out = c.cli(&["-s", "reload"]);
    let t0 = std::time::Instant::now();
    assert!(out.status.success(), "{}", out.all());
    let newest = gen_of(&c);
    assert_eq!(b.ask("COUNT").as_deref(), Ok("COUNT 2"));
    b.s.set_read_timeout(Some(DRAIN + Duration::from_secs(20)))
        .unwrap();
    let end = b.line();
    let cut_after = t0.elapsed();
    assert!(end.is_err(), "expected the drain to cut it, got {end:?}");
    assert!(
        cut_after >= DRAIN - Duration::from_millis(500),
        "cut after {cut_after:?}, before drain_timeout {DRAIN:?}\n{}",
        c.log_tail(40)
    );
    assert!(
        wait_until(POLL_LIMIT, || generations(&c) == [newest].into()),
        "the old generation is still there after the drain\n{}",
        c.log_tail(40)
    );
}

/// A real pub/sub session through the proxy: `redis-cli subscribe` stays connected,
/// idle between messages, across reloads, and gets every message published after
/// each one (the session the issue measured dying at `drain_timeout`). Skipped, with
/// the reason printed, when redis is not installed (`.ci/run` installs it).
#[test]
fn a_redis_subscription_through_the_proxy_survives_reloads() {
    use std::process::{Command, Stdio};
    if !have("redis-server") || !have("redis-cli") {
        eprintln!("skipped: redis-server and redis-cli are not installed");
        return;
    }
    let redis_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _redis = Child(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let redis = SocketAddr::from(([127, 0, 0, 1], redis_port));
    assert!(
        wait_until(POLL_LIMIT, || std::net::TcpStream::connect(redis).is_ok()),
        "redis-server did not start listening"
    );
    let proxy_port = free_port();
    let c = Corral::start(
        &Conf::bare(2)
            .drain("60s")
            .proxy(proxy_port, &[redis], "splice = false")
            .render(),
    );
    let cli = |args: &[&str]| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &proxy_port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut sub = Child(
        cli(&["subscribe", "news"])
            .spawn()
            .expect("redis-cli subscribe"),
    );
    let lines = stdout_lines(&mut sub.0);
    let wait_line = |want: &str| {
        let deadline = std::time::Instant::now() + POLL_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l == want => return,
                Ok(_) => {}
                Err(e) => panic!("no {want:?} from the subscriber ({e})\n{}", c.log_tail(40)),
            }
        }
    };
    wait_line("news");
    for i in 0..5 {
        let (gen, took) = reload_and_wait_old_gone(&c, POLL_LIMIT);
        eprintln!("reload {i}: generation {gen} alone after {took:?}");
        assert!(
            took <= OLD_GONE_WITHIN,
            "reload {i}: the old generation took {took:?}\n{}",
            c.log_tail(60)
        );
        let msg = format!("message-{i}");
        let out = cli(&["publish", "news", &msg])
            .output()
            .expect("redis-cli publish");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1",
            "publish after reload {i}: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_line(&msg);
    }
    assert!(sub.0.try_wait().unwrap().is_none(), "the subscriber exited");
}
