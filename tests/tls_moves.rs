//! TLS connections that move at reload and upgrade, black box: real TLS clients
//! (rustls in this process, python's `ssl`, `openssl s_client`) keep numbered round
//! trips going while corral reloads and upgrades under them; every reply must be
//! exact and in order, no client may see a new handshake, and each old generation
//! must be gone within seconds (not at `drain_timeout`). Then what cannot be
//! continued after a move: a KeyUpdate, a corrupted record, TLS 1.2.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::moves::stdout_lines;
use common::tls::{have, rustls_client, rustls_client_versions, HttpsLoad, Pki, PyTls};
use common::xmaster::status_json;
use common::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(port: u16, config: &Arc<rustls::ClientConfig>) -> Tls {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    // Finish the handshake now, so that the test knows it happened before any move.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Sends `msg` and reads the echoed line back.
fn round_trip(s: &mut Tls, msg: &str) -> std::io::Result<String> {
    s.write_all(msg.as_bytes())?;
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.ends_with(b"\n") {
        let n = s.read(&mut b)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// Live generations other than `current` in `corral status` (draining ones).
fn old_generations_alive(c: &Corral) -> usize {
    let v = status_json(c);
    let current = v["generation"].as_u64().unwrap_or(0);
    v["generations"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter(|g| g["generation"].as_u64() != Some(current) && g["state"] != "gone")
                .count()
        })
        .unwrap_or(0)
}

fn tls_sum(c: &Corral, field: &str) -> u64 {
    let v = status_json(c);
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["tls"][field].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Numbered round trips on `n` TLS connections over `threads` threads, until told
/// to stop; every reply is checked.
struct Streams {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<Vec<u64>>>,
}

impl Streams {
    fn start(port: u16, config: Arc<rustls::ClientConfig>, n: usize, threads: usize) -> Streams {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for t in 0..threads {
            let (stop, ok, connected, errors, config) = (
                stop.clone(),
                ok.clone(),
                connected.clone(),
                errors.clone(),
                config.clone(),
            );
            let ids: Vec<usize> = (0..n).filter(|i| i % threads == t).collect();
            handles.push(std::thread::spawn(move || {
                let mut conns: Vec<Tls> = Vec::new();
                for _ in &ids {
                    conns.push(connect(port, &config));
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                let mut seq = vec![0u64; ids.len()];
                let deadline = Instant::now() + Duration::from_secs(240);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for (k, s) in conns.iter_mut().enumerate() {
                        let msg = format!("stream {} round {}\n", ids[k], seq[k]);
                        match round_trip(s, &msg) {
                            Ok(got) if got == msg => {
                                seq[k] += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(got) => {
                                errors.lock().unwrap().push(format!("{msg:?} -> {got:?}"));
                                return seq;
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(format!("{msg:?}: {e}"));
                                return seq;
                            }
                        }
                    }
                }
                seq
            }));
        }
        Streams {
            stop,
            ok,
            connected,
            errors,
            threads: handles,
        }
    }

    fn progress(&self, more: u64, timeout: Duration) -> bool {
        let start = self.ok.load(Ordering::Relaxed);
        wait_until(timeout, || {
            self.ok.load(Ordering::Relaxed) >= start + more
                || !self.errors.lock().unwrap().is_empty()
        }) && self.errors.lock().unwrap().is_empty()
    }

    fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut rounds = Vec::new();
        for t in self.threads {
            rounds.extend(t.join().unwrap());
        }
        (rounds, self.errors.lock().unwrap().clone())
    }
}

#[test]
fn a_thousand_tls_streams_survive_twenty_reloads_and_three_upgrades_without_a_handshake() {
    const N: usize = 1000;
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let (_bin_dir, bin) = copy_binary();
    let c = Corral::start_with(
        &Conf::new(2)
            .drain("120s")
            .idle("300s")
            .max_conns(5000)
            .master("upgrade_timeout = \"30s\"")
            .listen(port, "echo", &srv.tls_table(""))
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    let config = rustls_client(&pki.ca);
    let streams = Streams::start(port, config, N, 4);
    assert!(
        wait_until(Duration::from_secs(120), || streams
            .connected
            .load(Ordering::Relaxed)
            == N as u64),
        "only {} of {N} TLS connections were made",
        streams.connected.load(Ordering::Relaxed)
    );
    assert!(streams.progress(2 * N as u64, Duration::from_secs(60)));
    // Real OpenSSL clients beside them: python's ssl and s_client, one stream each.
    let mut py = have("python3").then(|| {
        let mut p = PyTls::start(port, &pki.ca, "localhost", "", "");
        assert!(p.ask("open").ok);
        p
    });
    let mut s_client = have("openssl").then(|| {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .args([
                "-CAfile",
                pki.ca.to_str().unwrap(),
                "-servername",
                "localhost",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = stdout_lines(&mut child);
        (child, stdin, lines)
    });
    let mut round = 0u32;
    let mut check_real_clients = |round: u32| {
        if let Some(p) = py.as_mut() {
            let a = p.ask(&format!("send python {round}"));
            assert_eq!(
                a.reply.as_deref(),
                Some(format!("python {round}").as_str()),
                "{a:?}"
            );
            assert!(!a.reused, "the python client's session changed: {a:?}");
        }
        if let Some((_, stdin, lines)) = s_client.as_mut() {
            writeln!(stdin, "s_client {round}").unwrap();
            let got = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("s_client echo");
            assert_eq!(got, format!("s_client {round}"));
        }
    };
    check_real_clients(round);
    for i in 0..20 {
        c.must_reload();
        assert!(
            wait_until(Duration::from_secs(15), || old_generations_alive(&c) == 0),
            "reload {i}: the old generation is still there: {}\n{}",
            status_json(&c),
            c.log_tail(20)
        );
        assert!(
            streams.progress(N as u64, Duration::from_secs(60)),
            "round trips stalled after reload {i}: {:?}\n{}",
            streams.errors.lock().unwrap(),
            c.log_tail(30)
        );
        round += 1;
        check_real_clients(round);
    }
    for i in 0..3 {
        let before = c.master_pid();
        let new = c.must_upgrade();
        assert!(
            wait_until(Duration::from_secs(30), || {
                let v = status_json(&c);
                v["master_pid"].as_i64() == Some(i64::from(new))
                    && read_stat(before).is_none_or(|s| s.state == 'Z')
                    && v["workers"].as_array().is_some_and(|w| w.len() == 2)
            }),
            "upgrade {i}: the old master is still there: {}",
            status_json(&c)
        );
        assert!(
            streams.progress(N as u64, Duration::from_secs(60)),
            "round trips stalled after upgrade {i}: {:?}\n{}",
            streams.errors.lock().unwrap(),
            c.log_tail(30)
        );
        round += 1;
        check_real_clients(round);
    }
    // The workers serving now never made a handshake: every connection they hold
    // arrived with its record layer.
    assert!(
        wait_until(Duration::from_secs(10), || tls_sum(&c, "moved_in")
            >= N as u64),
        "{}",
        status_json(&c)
    );
    assert_eq!(
        tls_sum(&c, "full") + tls_sum(&c, "resumed"),
        0,
        "{}",
        status_json(&c)
    );
    let (rounds, errors) = streams.finish();
    assert!(errors.is_empty(), "stream errors: {errors:?}");
    assert_eq!(rounds.len(), N);
    assert!(
        rounds.iter().all(|&r| r >= 20),
        "a stream fell behind: {:?}",
        rounds.iter().min()
    );
    if let Some((mut child, _, _)) = s_client {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn https_keep_alive_through_a_reload_storm_fails_nothing() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .drain("60s")
            .listen(port, "http", &srv.tls_table(""))
            .render(),
    );
    let load = HttpsLoad::start(port, rustls_client(&pki.ca), 8);
    assert!(load.progress(500, Duration::from_secs(20)));
    // A reload every 100 ms for 10 s, each waited for (`-s reload` returns once the
    // new generation serves).
    let t0 = Instant::now();
    let mut reloads = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        let next = Instant::now() + Duration::from_millis(100);
        c.must_reload();
        reloads += 1;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d); // pacing the storm, not a synchronisation
        }
    }
    assert!(load.progress(500, Duration::from_secs(20)));
    let (answered, failed, handshakes) = load.finish();
    assert_eq!(failed, 0, "failed requests in {reloads} reloads");
    assert_eq!(handshakes, 8, "a reload forced new handshakes");
    assert!(
        wait_until(Duration::from_secs(20), || old_generations_alive(&c) == 0),
        "more than one generation left: {}",
        status_json(&c)
    );
    eprintln!(
        "FIGURES tls_reload_storm reloads={reloads} requests={answered} failed=0 new_handshakes=0"
    );
}

#[test]
fn a_tls_proxy_session_mid_transfer_survives_reloads_and_an_upgrade_byte_exact() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let (_bin_dir, bin) = copy_binary();
    let c = Corral::start_with(
        &Conf::new(2)
            .drain("60s")
            .listen(
                port,
                "proxy",
                &format!(
                    "upstreams = [\"127.0.0.1:{{port}}\"]\n{}",
                    srv.tls_table("")
                ),
            )
            .render(),
        Launch {
            binary: Some(bin),
            ..Launch::default()
        },
    );
    const TOTAL: usize = 24 << 20;
    let config = rustls_client(&pki.ca);
    let s = connect(port, &config);
    let s = Arc::new(Mutex::new(s));
    // One thread writes the pattern in 16 KiB pieces and reads back what it can;
    // the echo upstream returns every byte, so the reply must equal the pattern.
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let pattern = |i: usize| (i % 251) as u8;
            let mut sent = 0usize;
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            let deadline = Instant::now() + Duration::from_secs(180);
            while got < TOTAL {
                if Instant::now() > deadline {
                    return Err(format!("timed out at {got} of {TOTAL}"));
                }
                let mut s = s.lock().unwrap();
                if sent < TOTAL && sent - got < (256 << 10) {
                    let n = (16 << 10).min(TOTAL - sent);
                    let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
                    s.write_all(&chunk)
                        .map_err(|e| format!("write at {sent}: {e}"))?;
                    sent += n;
                }
                s.sock
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                match s.read(&mut buf) {
                    Ok(0) => return Err(format!("EOF at {got}")),
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            if *b != pattern(got + k) {
                                return Err(format!("byte {} differs", got + k));
                            }
                        }
                        got += n;
                        done.store(got as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(format!("read at {got}: {e}")),
                }
            }
            Ok(())
        })
    };
    let step = |what: &str, args: &[&str]| {
        let before = done.load(Ordering::Relaxed);
        let out = c.cli(args);
        c.adopt_new_masters();
        assert!(out.status.success(), "{what}: {}", out.all());
        assert!(
            wait_until(Duration::from_secs(30), || done.load(Ordering::Relaxed)
                > before + (1 << 20)
                || done.load(Ordering::Relaxed) as usize >= TOTAL),
            "the transfer stalled after {what}\n{}",
            c.log_tail(30)
        );
    };
    assert!(wait_until(Duration::from_secs(30), || done
        .load(Ordering::Relaxed)
        > 1 << 20));
    for i in 0..5 {
        step(&format!("reload {i}"), &["-s", "reload"]);
    }
    step("upgrade", &["-s", "upgrade"]);
    worker
        .join()
        .unwrap()
        .expect("byte-exact through the moves");
    assert!(
        wait_until(Duration::from_secs(10), || tls_sum(&c, "moved_in") >= 1),
        "{}",
        status_json(&c)
    );
}

#[test]
fn a_tls_connection_moves_again_before_it_speaks() {
    if !have("python3") {
        skipped(format_args!("SKIPPED: python3 is not installed"));
        return;
    }
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(2)
            .drain("60s")
            .listen(port, "echo", &srv.tls_table(""))
            .render(),
    );
    let mut clients: Vec<PyTls> = (0..10)
        .map(|_| {
            let mut p = PyTls::start(port, &pki.ca, "localhost", "", "");
            assert!(p.ask("open").ok);
            assert_eq!(p.ask("send hello").reply.as_deref(), Some("hello"));
            p
        })
        .collect();
    // Two reloads with no byte from the clients in between: each generation must
    // hand every connection on at once, not keep the ones it never read from.
    for i in 0..2 {
        c.must_reload();
        assert!(
            wait_until(Duration::from_secs(15), || old_generations_alive(&c) == 0),
            "reload {i}: an old generation kept connections it could have moved: {}",
            status_json(&c)
        );
    }
    for (i, p) in clients.iter_mut().enumerate() {
        let m = format!("after two moves {i}");
        assert_eq!(
            p.ask(&format!("send {m}")).reply.as_deref(),
            Some(m.as_str())
        );
    }
}

/// A connection that has moved at least once: connect, round trip, reload, round
/// trip (now on the new generation's worker).
fn moved_connection(c: &Corral, port: u16, config: &Arc<rustls::ClientConfig>) -> Tls {
    let mut s = connect(port, config);
    assert_eq!(round_trip(&mut s, "before\n").unwrap(), "before\n");
    c.must_reload();
    assert!(wait_until(
        Duration::from_secs(15),
        || old_generations_alive(c) == 0
    ));
    assert_eq!(round_trip(&mut s, "after\n").unwrap(), "after\n");
    s
}

#[test]
fn what_cannot_be_continued_after_a_move_ends_cleanly_and_is_counted() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .drain("60s")
            .listen(port, "echo", &srv.tls_table(""))
            .render(),
    );
    let config = rustls_client(&pki.ca);

    // A KeyUpdate: the next key derives from a secret that did not travel, so the
    // server says close_notify and closes; the client sees a clean end.
    let mut s = moved_connection(&c, port, &config);
    s.conn.refresh_traffic_keys().unwrap();
    let _ = s.write_all(b"after the key update\n");
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        other => panic!("a KeyUpdate after a move did not end in close_notify: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(10), || tls_sum(&c, "moved_key_update")
            >= 1),
        "{}",
        status_json(&c)
    );

    // A corrupted record: bad_record_mac, then a close.
    let mut s = moved_connection(&c, port, &config);
    let mut bogus = vec![23u8, 3, 3, 0, 40];
    bogus.extend((0..40).map(|i| i as u8));
    s.sock.write_all(&bogus).unwrap();
    match s.read(&mut b) {
        Err(e) => assert!(
            e.to_string().contains("BadRecordMac") || e.to_string().contains("bad_record_mac"),
            "{e}"
        ),
        other => panic!("a corrupted record was not refused with bad_record_mac: {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(10), || tls_sum(
        &c,
        "moved_bad_record"
    ) >= 1));

    // The client's own close_notify after a move: a clean end.
    let mut s = moved_connection(&c, port, &config);
    s.conn.send_close_notify();
    s.conn.complete_io(&mut s.sock).unwrap();
    let mut rest = Vec::new();
    let _ = s.sock.read_to_end(&mut rest);
    assert!(s.conn.read_tls(&mut &rest[..]).is_ok());

    // TLS 1.2 stays in its old worker (its record layer is not continued) and is
    // served there until it closes.
    let tls12 = rustls_client_versions(&pki.ca, &[&rustls::version::TLS12]);
    let old_worker = c.worker_pids();
    let mut s12 = connect(port, &tls12);
    assert_eq!(round_trip(&mut s12, "tls12\n").unwrap(), "tls12\n");
    c.must_reload();
    for i in 0..3 {
        let m = format!("still served {i}\n");
        assert_eq!(round_trip(&mut s12, &m).unwrap(), m);
    }
    assert_eq!(
        old_generations_alive(&c),
        1,
        "the TLS 1.2 connection's generation drains"
    );
    assert!(old_worker.iter().all(|p| read_stat(*p).is_some()));
    drop(s12);
    assert!(
        wait_until(Duration::from_secs(15), || old_generations_alive(&c) == 0),
        "the old generation did not leave once its TLS 1.2 client left"
    );
}

#[test]
fn compact_idle_connections_serve_on_the_record_layer_alone() {
    let pki = Pki::new();
    let srv = pki.server("srv", &["localhost"], None, 90);
    let port = free_port();
    let c = Corral::start(
        &Conf::new(1)
            .drain("60s")
            .listen(port, "echo", &srv.tls_table("compact_idle = true\n"))
            .render(),
    );
    let config = rustls_client(&pki.ca);
    // Many exchanges, big and small, after the engine was traded at the first pause.
    let mut s = connect(port, &config);
    for i in 0..200 {
        let m = format!("{i} {}\n", "x".repeat(i * 97 % 20_000));
        assert_eq!(round_trip(&mut s, &m).unwrap(), m);
    }
    // It still moves.
    c.must_reload();
    assert!(wait_until(
        Duration::from_secs(15),
        || old_generations_alive(&c) == 0
    ));
    assert_eq!(round_trip(&mut s, "moved\n").unwrap(), "moved\n");
    // The trade's price: a KeyUpdate ends the connection cleanly.
    s.conn.refresh_traffic_keys().unwrap();
    let _ = s.write_all(b"after the key update\n");
    let mut b = [0u8; 64];
    assert!(
        matches!(s.read(&mut b), Ok(0)),
        "no clean close after a KeyUpdate"
    );
    assert!(wait_until(Duration::from_secs(10), || tls_sum(
        &c,
        "moved_key_update"
    ) >= 1));
}
