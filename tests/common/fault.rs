//! Helpers for `tests/faults.rs`: a config with fault injection, the master's view
//! of its workers straight from the control socket (fast enough to poll), echo
//! clients grouped by the worker that serves them, and `corral fault` runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{echo, owners, run_cli, wait_until, Conf, Corral, Echo};

/// A config with `workers` echo workers, a 2 s watchdog, 200 ms heartbeats, a
/// 64 MiB RSS limit and fault injection as `injection` says.
pub fn conf(workers: usize, injection: bool) -> Conf {
    let c = Conf::new(workers)
        .watchdog("2s")
        .max_rss("64MiB")
        .heartbeat("200ms")
        .max_conns(4096)
        .idle("120s");
    if injection {
        c.fault_injection()
    } else {
        c.master("fault_injection = false")
    }
}

/// One worker as the master reports it.
#[derive(Clone, Debug)]
pub struct W {
    pub pid: i32,
    pub slot: u64,
    pub generation: u64,
    pub state: String,
    pub connections: u64,
}

/// `status` over the control socket, without starting a CLI process (so it can be
/// polled every few ms): (generation, workers); None if the master did not answer.
pub fn master_view(c: &Corral) -> Option<(u64, Vec<W>)> {
    let mut s = UnixStream::connect(c.pid_file.with_extension("sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"\"status\"\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let ws = v["workers"]
        .as_array()?
        .iter()
        .map(|w| W {
            pid: w["pid"].as_i64().unwrap_or(0) as i32,
            slot: w["slot"].as_u64().unwrap_or(u64::MAX),
            generation: w["generation"].as_u64().unwrap_or(0),
            state: w["state"].as_str().unwrap_or("?").into(),
            connections: w["connections"].as_u64().unwrap_or(0),
        })
        .collect();
    Some((v["generation"].as_u64()?, ws))
}

/// The ready worker of `slot` in the current generation.
pub fn ready_in_slot(c: &Corral, slot: u64) -> Option<i32> {
    let (g, ws) = master_view(c)?;
    ws.iter()
        .find(|w| w.slot == slot && w.generation == g && w.state == "ready")
        .map(|w| w.pid)
}

/// Ready workers of the current generation.
pub fn ready_count(c: &Corral) -> usize {
    master_view(c).map_or(0, |(g, ws)| {
        ws.iter()
            .filter(|w| w.generation == g && w.state == "ready")
            .count()
    })
}

/// Echo clients, each with the pid of the worker serving it.
pub struct Clients {
    pub conns: Vec<(TcpStream, i32)>,
}

impl Clients {
    /// Opens `n` connections (each echoes once) and finds which worker holds each.
    /// The kernel picks the worker for each connection, so a few more are opened (at
    /// most 10 × `n`) until every worker holds at least one: tests need clients on
    /// the victim and on the others.
    pub fn open(c: &Corral, n: usize) -> Clients {
        let pids = c.worker_pids();
        let mut conns: Vec<(TcpStream, i32)> = Vec::with_capacity(n);
        let mut opened = 0;
        while opened < n
            || (opened < 11 * n && pids.iter().any(|p| !conns.iter().any(|(_, o)| o == p)))
        {
            let mut s = c.connect();
            assert!(
                matches!(
                    echo(
                        &mut s,
                        format!("hello {opened}\n").as_bytes(),
                        Duration::from_secs(10)
                    ),
                    Echo::Ok
                ),
                "client {opened} got no echo\n{}",
                c.log_tail(30)
            );
            let own = owners(c, std::slice::from_ref(&s), &pids);
            let owner = own[0].unwrap_or_else(|| panic!("no worker holds a client socket"));
            conns.push((s, owner));
            opened += 1;
        }
        Clients { conns }
    }

    fn by_worker(&self) -> std::collections::BTreeMap<i32, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (_, p) in &self.conns {
            *m.entry(*p).or_default() += 1;
        }
        m
    }

    pub fn on(&self, pid: i32) -> usize {
        self.conns.iter().filter(|(_, p)| *p == pid).count()
    }

    /// Waits until the master's heartbeat view counts our connections on each worker
    /// (a few heartbeats; generous, as a loaded 2-core box delays them: 10 s was seen
    /// to fall short at a load average of 16).
    pub fn wait_seen(&self, c: &Corral) {
        let ok = wait_until(Duration::from_secs(30), || {
            master_view(c)
                .is_some_and(|(_, ws)| ws.iter().all(|w| w.connections as usize == self.on(w.pid)))
        });
        // If it fails, say whether a worker was replaced meanwhile (a watchdog of 2 s
        // on a starved box) or the counts just disagree.
        assert!(
            ok,
            "heartbeats never showed our connections: ours by worker {:?}, the master's {:?}\n{}",
            self.by_worker(),
            master_view(c),
            c.log_tail(30)
        );
    }

    /// Echoes once on every connection not held by `except`; fails the test on any
    /// failure.
    pub fn echo_others(&mut self, except: i32, tag: &str) {
        for (i, (s, p)) in self.conns.iter_mut().enumerate() {
            if *p == except {
                continue;
            }
            let msg = format!("{tag} {i}\n");
            let got = echo(s, msg.as_bytes(), Duration::from_secs(10));
            assert!(
                matches!(got, Echo::Ok),
                "client {i} on worker {p} (not the victim): {got:?}"
            );
        }
    }

    /// Echoes on one connection not held by `except` (round robin by `turn`).
    pub fn echo_one_other(&mut self, except: i32, turn: usize) {
        let others: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].1 != except)
            .collect();
        if others.is_empty() {
            return;
        }
        let i = others[turn % others.len()];
        let (s, p) = &mut self.conns[i];
        let got = echo(
            s,
            format!("during {turn}\n").as_bytes(),
            Duration::from_secs(10),
        );
        assert!(
            matches!(got, Echo::Ok),
            "client {i} on worker {p} (not the victim) during the fault: {got:?}"
        );
    }

    /// How many of the victim's connections are closed (EOF or reset) by now,
    /// waiting up to `timeout` for each.
    pub fn closed_on(&mut self, pid: i32, timeout: Duration) -> usize {
        let mut closed = 0;
        for (s, p) in self.conns.iter_mut() {
            if *p == pid && super::wait_closed(s, timeout).is_ok() {
                closed += 1;
            }
        }
        closed
    }
}

/// `corral fault ARGS --json` against `c`, run in a thread so the caller can watch
/// the service meanwhile: join it for (exit ok, stdout JSON or Null, all output).
pub fn fault_async(
    c: &Corral,
    args: &[&str],
) -> std::thread::JoinHandle<(bool, serde_json::Value, String)> {
    let dir = c.dir.path().to_path_buf();
    let mut full: Vec<String> = vec![
        "-c".into(),
        c.config_path.display().to_string(),
        "fault".into(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    full.push("--json".into());
    std::thread::spawn(move || {
        let a: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = run_cli(&dir, &a, Duration::from_secs(90));
        let v = serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null);
        (out.status.success(), v, out.all())
    })
}

/// Polls (every few ms, echoing on other workers' clients meanwhile) until slot
/// `slot` has a ready worker other than `victim`; returns it and the time since
/// `t0`.
pub fn wait_replacement(
    c: &Corral,
    clients: &mut Clients,
    slot: u64,
    victim: i32,
    t0: Instant,
) -> (i32, Duration) {
    let mut turn = 0;
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(p) = ready_in_slot(c, slot).filter(|p| *p != victim) {
            return (p, t0.elapsed());
        }
        clients.echo_one_other(victim, turn);
        turn += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "slot {slot} got no ready replacement for {victim}\n{}",
        c.log_tail(40)
    );
}

/// `measured` and `reported` (ms) agree within 20 % plus 300 ms.
pub fn agrees(reported: u64, measured: Duration) -> bool {
    let m = measured.as_millis() as f64;
    (reported as f64 - m).abs() <= 0.2 * m + 300.0
}
