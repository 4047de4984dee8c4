//! `corral fault` and `corral chaos` against the real binary under echo load: each
//! fault is done for real inside the victim worker, the expected supervision path
//! runs (respawn, watchdog, recycling, backoff, rollback), clients on the other
//! workers keep echoing, and what corral reports matches what the test saw.

use crate::common;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault::{self, agrees, fault_async, master_view, ready_count, ready_in_slot, Clients};
use common::{echo, must_echo, run_cli, wait_until, Corral, Echo};

fn ms(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// Injects `args` into slot `slot` while echoing on the other workers; checks the
/// outcome against the replacement the test saw and returns the outcome.
fn crash_case(
    c: &Corral,
    clients: &mut Clients,
    args: &[&str],
    slot: u64,
    outcome: &str,
) -> serde_json::Value {
    let victim = ready_in_slot(c, slot).expect("a ready worker in the slot");
    let n = clients.on(victim);
    assert!(n > 0, "no test client landed on the victim {victim}");
    clients.wait_seen(c);
    let slot_s = slot.to_string();
    let mut full = args.to_vec();
    full.extend(["--slot", &slot_s]);
    let t0 = Instant::now();
    let h = fault_async(c, &full);
    let (replacement, measured) = fault::wait_replacement(c, clients, slot, victim, t0);
    let (ok, v, all) = h.join().expect("cli thread");
    assert!(
        ok,
        "`corral fault {}` failed: {all}\n{}",
        full.join(" "),
        c.log_tail(30)
    );
    assert_eq!(v["outcome"], outcome, "{v}\n{}", c.log_tail(30));
    assert_eq!(v["pid"], victim, "{v}");
    assert_eq!(v["slot"], slot, "{v}");
    assert_eq!(v["replacement_pid"], replacement, "{v}");
    assert_eq!(
        ms(&v, "lost_connections"),
        n as u64,
        "victim held {n} of our clients: {v}"
    );
    let (det, rec) = (ms(&v, "detected_ms"), ms(&v, "recovered_ms"));
    assert!(det <= rec, "{v}");
    assert!(
        agrees(rec, measured),
        "recovered_ms {rec} vs {measured:?} measured from the request to the replacement ready: {v}"
    );
    // The victim's clients really lost their connection; nobody else did.
    assert_eq!(
        clients.closed_on(victim, Duration::from_secs(10)),
        n,
        "victim's clients"
    );
    clients.conns.retain(|(_, p)| *p != victim);
    clients.echo_others(victim, "after");
    let mut fresh = c.connect();
    must_echo(c, &mut fresh, "fresh client\n");
    v
}

#[test]
fn crashes_respawn_and_only_the_victims_clients_are_lost() {
    let c = Corral::start(&fault::conf(4, true).render());
    let mut clients = Clients::open(&c, 80);
    for (slot, kind, exit) in [
        (0, "kill", "signal SIGKILL"),
        (1, "segv", "signal SIGSEGV"),
        (2, "abort", "signal SIGABRT"),
        (3, "panic", "exit code 101"),
    ] {
        let v = crash_case(&c, &mut clients, &[kind], slot, "respawned");
        assert_eq!(v["exit"], exit, "{v}");
        assert_eq!(v["kind"], kind, "{v}");
    }
    let log = c.log();
    assert!(
        log.contains("worker panicked: panicked at")
            && log.contains("injected fault (corral fault panic)"),
        "{}",
        c.log_tail(40)
    );
    assert!(
        log.contains("fault injection requested by uid 0"),
        "every request is logged with the uid"
    );
}

#[test]
fn hang_and_stall_are_caught_by_the_watchdog() {
    let c = Corral::start(&fault::conf(3, true).render());
    let mut clients = Clients::open(&c, 60);
    for (slot, kind) in [(0, "hang"), (1, "stall")] {
        let v = crash_case(&c, &mut clients, &[kind], slot, "watchdog");
        // Silence is noticed only once the 2 s watchdog timeout has passed.
        assert!(ms(&v, "detected_ms") >= 1000, "{v}");
    }
    assert!(c.log().contains("sent no heartbeat"), "{}", c.log_tail(30));
}

#[test]
fn a_leak_is_recycled_gracefully_without_losing_a_client() {
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 40);
    let victim = ready_in_slot(&c, 0).expect("slot 0 ready");
    let n = clients.on(victim);
    assert!(n > 0);
    clients.wait_seen(&c);
    let t0 = Instant::now();
    let h = fault_async(&c, &["leak", "100", "--slot", "0"]);
    let (replacement, measured) = fault::wait_replacement(&c, &mut clients, 0, victim, t0);
    let (ok, v, all) = h.join().expect("cli thread");
    assert!(ok, "{all}\n{}", c.log_tail(30));
    assert_eq!(v["outcome"], "recycled", "{v}");
    assert_eq!(v["pid"], victim);
    assert_eq!(v["replacement_pid"], replacement);
    assert_eq!(
        ms(&v, "lost_connections"),
        0,
        "a recycled worker drains: {v}"
    );
    assert!(
        agrees(ms(&v, "recovered_ms"), measured),
        "{v} vs {measured:?}"
    );
    // The old worker drains (it is not killed): still draining, or already gone by
    // draining out, its connections moved to the others (which takes milliseconds
    // now, so either can be what a status sees). Its clients, all of them, still echo.
    let view = master_view(&c).expect("status");
    let drained_out = c
        .log()
        .lines()
        .any(|l| l.contains(&format!("pid={victim} ")) && l.contains("drained, exiting"));
    assert!(
        drained_out
            || view
                .1
                .iter()
                .any(|w| w.pid == victim && w.state == "draining"),
        "{view:?}\n{}",
        c.log_tail(30)
    );
    clients.echo_others(-1, "still here");
    assert!(
        c.log().contains("outgrew max_worker_rss"),
        "{}",
        c.log_tail(30)
    );
}

#[test]
fn slow_adds_latency_and_the_worker_survives() {
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 20);
    let victim = ready_in_slot(&c, 0).expect("slot 0 ready");
    let on_victim = clients
        .conns
        .iter()
        .position(|(_, p)| *p == victim)
        .expect("a client on the victim");
    let t0 = Instant::now();
    let h = fault_async(&c, &["slow", "100", "--slot", "0"]);
    // Each loop iteration of the victim now takes 100 ms longer: so does an echo.
    let slowed = wait_until(Duration::from_secs(8), || {
        let s = &mut clients.conns[on_victim].0;
        let t = Instant::now();
        matches!(echo(s, b"slow?\n", Duration::from_secs(10)), Echo::Ok)
            && t.elapsed() >= Duration::from_millis(100)
    });
    assert!(slowed, "the victim's echo never slowed down");
    clients.echo_others(victim, "meanwhile");
    let (ok, v, all) = h.join().expect("cli thread");
    let measured = t0.elapsed();
    assert!(ok, "{all}\n{}", c.log_tail(30));
    assert_eq!(v["outcome"], "survived", "{v}");
    assert_eq!(v["detected_ms"], serde_json::Value::Null, "{v}");
    let rec = ms(&v, "recovered_ms");
    assert!(
        rec >= 10_000 && agrees(rec, measured),
        "{v} vs {measured:?}"
    );
    assert_eq!(
        ready_in_slot(&c, 0),
        Some(victim),
        "the same worker serves on"
    );
    clients.echo_others(-1, "after");
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn emfile_holds_every_fd_for_a_while_and_the_worker_survives() {
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 20);
    let victim = ready_in_slot(&c, 0).expect("slot 0 ready");
    let before = fd_count(victim);
    let t0 = Instant::now();
    let h = fault_async(&c, &["emfile", "--slot", "0"]);
    assert!(
        wait_until(Duration::from_secs(4), || fd_count(victim) > 5000),
        "the victim never held thousands of fds (had {before}, now {})",
        fd_count(victim)
    );
    // Open connections need no new fd: every client, the victim's too, still echoes.
    clients.echo_others(-1, "at the limit");
    let (ok, v, all) = h.join().expect("cli thread");
    let measured = t0.elapsed();
    assert!(ok, "{all}\n{}", c.log_tail(30));
    assert_eq!(v["outcome"], "survived", "{v}");
    let rec = ms(&v, "recovered_ms");
    assert!(rec >= 5000 && agrees(rec, measured), "{v} vs {measured:?}");
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(victim) < before + 100),
        "fds not released: {}",
        fd_count(victim)
    );
    assert_eq!(ready_in_slot(&c, 0), Some(victim));
    let mut fresh = c.connect();
    must_echo(&c, &mut fresh, "fresh\n");
}

#[test]
fn crash_on_start_backs_off_then_recovers() {
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 30);
    let v = crash_case(&c, &mut clients, &["crash-on-start", "2"], 0, "backoff");
    // Two failed starts: 100 ms, then 200 ms of backoff.
    assert!(ms(&v, "backoff_ms") >= 300, "{v}");
    assert!(ms(&v, "recovered_ms") >= 300, "{v}");
    assert!(
        c.log().contains("worker keeps dying; respawning it in"),
        "{}",
        c.log_tail(30)
    );
}

#[test]
fn a_bad_upgrade_rolls_back_and_the_old_master_keeps_serving() {
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 20);
    let workers = c.worker_pids();
    let h = fault_async(&c, &["bad-upgrade"]);
    let (ok, v, all) = h.join().expect("cli thread");
    assert!(ok, "{all}\n{}", c.log_tail(30));
    assert_eq!(v["outcome"], "rolled back", "{v}");
    assert!(
        ms(&v, "pid") > 0 && v["pid"] != c.master_pid(),
        "the new master's pid: {v}"
    );
    assert!(c.master_alive());
    assert_eq!(c.read_pid_file(), Some(c.master_pid()), "pid file restored");
    let mut now = c.worker_pids();
    now.sort_unstable();
    let mut was = workers.clone();
    was.sort_unstable();
    assert_eq!(now, was, "no worker was touched");
    clients.echo_others(-1, "after rollback");
    assert!(
        c.log().contains("upgrade rolled back"),
        "{}",
        c.log_tail(30)
    );
}

#[test]
fn refused_when_fault_injection_is_off() {
    let c = Corral::start(&fault::conf(2, false).render());
    let mut clients = Clients::open(&c, 10);
    let workers = c.worker_pids();
    let out = c.cli(&["fault", "kill", "--slot", "0"]);
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stderr.contains("fault_injection = false") && out.stderr.contains("corral.toml"),
        "{}",
        out.stderr
    );
    assert!(
        c.log().contains("fault injection requested by uid 0"),
        "{}",
        c.log_tail(20)
    );
    assert_eq!(c.worker_pids(), workers);
    clients.echo_others(-1, "untouched");
}

/// A leak with no `max_worker_rss` would have no supervision path to wait for: it is
/// refused at once, naming the key, instead of waiting out `--timeout`.
#[test]
fn a_leak_without_an_rss_limit_is_refused() {
    let c = Corral::start(&fault::conf(2, true).max_rss("0").render());
    let workers = c.worker_pids();
    let t0 = Instant::now();
    let out = c.cli(&["fault", "leak", "10", "--slot", "0"]);
    assert!(!out.status.success(), "{}", out.all());
    assert!(out.stderr.contains("max_worker_rss"), "{}", out.stderr);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(c.worker_pids(), workers);
}

#[test]
fn refused_for_another_uid() {
    use std::os::unix::fs::PermissionsExt;
    let Some(user) = common::opsec::TestUser::create() else {
        return;
    };
    let c = Corral::start(&fault::conf(2, true).render());
    let mut clients = Clients::open(&c, 10);
    let workers = c.worker_pids();
    // Loosen the socket (as a careless operator might): the master's own peer
    // credential check must still refuse the stranger.
    let sock = c.pid_file.with_extension("sock");
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        s.sendall(b'{\"fault\":{\"kind\":\"kill\",\"victim\":{\"slot\":0},\"timeout_ms\":5000}}\\n')\n\
        s.settimeout(5)\n\
        try:\n    print(s.recv(4096))\nexcept Exception as e:\n    print(e)\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script, &sock.display().to_string()]);
    {
        use std::os::unix::process::CommandExt;
        cmd.uid(user.uid).gid(user.gid);
    }
    let ran = common::opsec::run(cmd, c.dir.path(), Duration::from_secs(20));
    let line = format!("refusing a client of uid {}", user.uid);
    assert!(
        wait_until(Duration::from_secs(5), || c.log().contains(&line)),
        "{}\n{}",
        ran.all(),
        c.log_tail(20)
    );
    assert!(
        !c.log().contains("fault injection requested"),
        "the request was never read"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.worker_pids(), workers, "no worker was killed");
    clients.echo_others(-1, "untouched");
}

#[test]
fn a_30s_chaos_run_under_load_reports_and_leaves_the_service_healthy() {
    // A recycled (leak) victim drains: its echo clients stay with it until
    // drain_timeout, which must outlast the run for "lost" to be final when reported.
    let c = Corral::start(&fault::conf(3, true).drain("90s").render());
    let mut clients = Clients::open(&c, 60);
    clients.wait_seen(&c);
    // Load for the whole run: every client does a round trip every ~50 ms; one whose
    // worker is killed under it is marked dead and left alone.
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Vec<TcpStream> = clients.conns.drain(..).map(|(s, _)| s).collect();
    let loader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<(TcpStream, bool)> = conns.into_iter().map(|s| (s, true)).collect();
            let mut round_trips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, (s, alive)) in conns.iter_mut().enumerate() {
                    if !*alive {
                        continue;
                    }
                    let msg = format!("load {i} {round_trips}\n");
                    match echo(s, msg.as_bytes(), Duration::from_secs(10)) {
                        Echo::Ok => round_trips += 1,
                        _ => *alive = false,
                    }
                }
                // Pacing between rounds, not synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
            (conns, round_trips)
        })
    };
    let out = run_cli(
        c.dir.path(),
        &[
            "-c",
            &c.config_path.display().to_string(),
            "chaos",
            "--duration",
            "30s",
            "--every",
            "3s",
            "--faults",
            "kill,stall,leak:100",
            "--max-recovery",
            "10s",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}\n{}", out.all(), c.log_tail(40));
    let r: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    let n = r["faults"].as_u64().expect("faults");
    assert!(n >= 3, "{r}");
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len() as u64, n, "every fault has an outcome: {r}");
    assert_eq!(r["failed"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(
        r["unavailable"], false,
        "a ready worker was always there: {r}"
    );
    assert!(r["samples"].as_u64().unwrap_or(0) > 10, "{r}");
    let per_kind: u64 = r["per_kind"]
        .as_object()
        .expect("per_kind")
        .values()
        .map(|k| k["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per_kind, n, "{r}");
    for o in results {
        assert!(
            ["respawned", "backoff", "watchdog", "recycled"]
                .contains(&o["outcome"].as_str().unwrap_or("")),
            "{o}"
        );
        assert!(ms(o, "recovered_ms") <= 10_000, "{o}");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut conns, round_trips) = loader.join().expect("load thread");
    assert!(
        round_trips > 1000,
        "the load barely ran: {round_trips} round trips"
    );
    // The report's lost connections are exactly our clients that died.
    let mut dead = 0u64;
    for (i, (s, alive)) in conns.iter_mut().enumerate() {
        if !*alive
            || !matches!(
                echo(
                    s,
                    format!("after chaos {i}\n").as_bytes(),
                    Duration::from_secs(10)
                ),
                Echo::Ok
            )
        {
            dead += 1;
        }
    }
    eprintln!("chaos under load: {round_trips} round trips, {dead} of 60 clients lost: {r}");
    assert_eq!(
        dead,
        r["lost_connections"].as_u64().unwrap_or(u64::MAX),
        "{r}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || ready_count(&c) == 3),
        "{:?}",
        master_view(&c)
    );
    for _ in 0..6 {
        let mut s = c.connect();
        must_echo(&c, &mut s, "healthy\n");
    }
}

#[test]
fn a_recycled_http_worker_hands_its_idle_clients_over() {
    let conf = fault::conf(2, true).service("http").render();
    let c = Corral::start_with(
        &conf,
        common::Launch {
            no_ready_check: true,
            ..Default::default()
        },
    );
    assert!(
        wait_until(Duration::from_secs(20), || ready_count(&c) == 2),
        "{}",
        c.log_tail(20)
    );
    let mut conns = common::handover::open_idle(c.addr(), 100, Duration::from_secs(30));
    let victim = ready_in_slot(&c, 0).expect("slot 0 ready");
    let own = common::handover::owners_on(c.port, &conns, &c.worker_pids());
    let n = own.iter().filter(|o| **o == Some(victim)).count() as u64;
    assert!(n > 0, "no client on the victim: {own:?}");
    assert!(
        wait_until(Duration::from_secs(10), || master_view(&c).is_some_and(
            |(_, ws)| ws.iter().any(|w| w.pid == victim && w.connections == n)
        )),
        "{:?}",
        master_view(&c)
    );
    let (ok, v, all) = fault_async(&c, &["leak", "100", "--slot", "0"])
        .join()
        .expect("cli");
    assert!(ok, "{all}\n{}", c.log_tail(30));
    assert_eq!(v["outcome"], "recycled", "{v}");
    assert_eq!(
        ms(&v, "handed_over"),
        n,
        "every idle client of the victim moved: {v}"
    );
    assert_eq!(ms(&v, "lost_connections"), 0, "{v}");
    let answers = common::handover::request_all(&mut conns, Duration::from_secs(20));
    assert!(
        answers.iter().all(|a| a.is_ok()),
        "{}",
        common::handover::tally(&answers)
    );
}

#[test]
fn a_fault_on_an_old_draining_generation_is_not_replaced() {
    // `suspend = false`: the echo streams stay in generation 1 instead of moving.
    let c = Corral::start(&fault::conf(2, true).pinned().render());
    let mut clients = Clients::open(&c, 20);
    c.must_reload();
    // Echo streams are not idle: generation 1 drains while they stay open.
    let (g, ws) = master_view(&c).expect("status");
    assert_eq!(g, 2);
    let old: Vec<i32> = ws
        .iter()
        .filter(|w| w.generation == 1)
        .map(|w| w.pid)
        .collect();
    assert_eq!(old.len(), 2, "{ws:?}");
    clients.wait_seen(&c);
    let (ok, v, all) = fault_async(&c, &["kill", "--generation", "1"])
        .join()
        .expect("cli");
    assert!(ok, "{all}\n{}", c.log_tail(30));
    let victim = v["pid"].as_i64().expect("pid") as i32;
    assert!(old.contains(&victim), "{v}");
    assert_eq!(v["outcome"], "exited (old generation)", "{v}");
    assert_eq!(ms(&v, "lost_connections"), clients.on(victim) as u64, "{v}");
    assert_eq!(v["replacement_pid"], serde_json::Value::Null, "{v}");
    let n = clients.on(victim);
    assert_eq!(clients.closed_on(victim, Duration::from_secs(10)), n);
    clients.conns.retain(|(_, p)| *p != victim);
    clients.echo_others(victim, "old generation, other worker");
    assert_eq!(
        ready_count(&c),
        2,
        "generation 2 untouched: {:?}",
        master_view(&c)
    );
}

#[test]
fn a_fault_with_no_outcome_in_time_says_so_and_exits_non_zero() {
    let c = Corral::start(&fault::conf(2, true).render());
    let victim = ready_in_slot(&c, 0).expect("slot 0 ready");
    let t0 = Instant::now();
    // `slow` lasts 10 s; the request waits 1 s.
    let (ok, v, all) = fault_async(&c, &["slow", "5", "--slot", "0", "--timeout", "1s"])
        .join()
        .expect("cli");
    assert!(!ok, "a timeout is a failure: {all}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "bounded by --timeout"
    );
    assert_eq!(v["outcome"], "timeout", "{v}\n{all}");
    assert_eq!(v["recovered_ms"], serde_json::Value::Null, "{v}");
    assert!(all.contains("no outcome within 1s"), "{all}");
    assert_eq!(ready_in_slot(&c, 0), Some(victim));
}

#[test]
fn chaos_defaults_run_on_a_config_without_an_rss_limit_and_bad_plans_inject_nothing() {
    // fault_injection on, but no max_worker_rss: `leak` cannot be recycled here.
    let conf = fault::conf(2, true).max_rss("").render();
    assert!(!conf.contains("max_worker_rss"), "{conf}");
    let c = Corral::start(&conf);
    let cfg = c.config_path.display().to_string();
    let chaos = |extra: &[&str]| {
        let mut args = vec!["-c", &cfg, "chaos"];
        args.extend(extra);
        run_cli(c.dir.path(), &args, Duration::from_secs(90))
    };
    // Asked for leak explicitly: refused before anything is injected.
    let out = chaos(&["--faults", "kill,leak", "--duration", "2s", "--every", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.all());
    assert!(
        out.all().contains("max_worker_rss") && out.all().contains("nothing was injected"),
        "{}",
        out.all()
    );
    // The defaults pick only what this config can run, and every fault recovers.
    let out = chaos(&["--duration", "2s", "--every", "1s", "--json"]);
    assert!(out.status.success(), "{}\n{}", out.all(), c.log_tail(40));
    let r: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(r["failed"].as_array().map(Vec::len), Some(0), "{r}");
    let kinds: Vec<&String> = r["per_kind"]
        .as_object()
        .expect("per_kind")
        .keys()
        .collect();
    assert!(!kinds.is_empty(), "{r}");
    assert!(
        kinds.iter().all(|k| *k == "kill" || *k == "hang"),
        "default kinds on a config without max_worker_rss: {kinds:?}"
    );
    // The refused run injected nothing: every fault the master saw came from the
    // second run.
    let injected = c.log().matches("fault injection requested").count();
    let faults = r["faults"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        injected,
        faults,
        "injections logged vs faults of the second run\n{}",
        c.log_tail(40)
    );
    // fault_injection off: refused up front too, naming the key.
    let off = c.dir.path().join("off.toml");
    let text = std::fs::read_to_string(&c.config_path).unwrap();
    std::fs::write(
        &off,
        text.replace("fault_injection = true", "fault_injection = false"),
    )
    .unwrap();
    let off = off.display().to_string();
    let out = run_cli(
        c.dir.path(),
        &["-c", &off, "chaos"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.all());
    assert!(out.all().contains("fault_injection"), "{}", out.all());
}
