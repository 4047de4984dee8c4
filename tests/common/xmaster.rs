//! Helpers for the upgrade-move and reload-storm tests: an http + echo config, the
//! raw `corral status --json`, and a load of keep-alive HTTP clients that keep
//! requesting, a connect/close loop and (optionally) echo streams, each counting
//! every failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handover::{read_response, Answer, GET};
use super::{connect, Conf, Corral};

/// `workers` workers, echo on `{port}` (the harness's), http on `http_port`, a long
/// drain and idle timeout (an exit at either would fail the tests), room for
/// thousands of connections; `master_extra` lines go in `[master]`.
pub fn http_template(workers: usize, http_port: u16, master_extra: &str) -> Conf {
    Conf::new(workers)
        .drain("60s")
        .idle("300s")
        .max_conns(10_000)
        .master("upgrade_timeout = \"30s\"")
        .master(master_extra)
        .listen(http_port, "http", "")
}

/// `corral status --json`, parsed; panics with the output if it is not an answer.
pub fn status_json(c: &Corral) -> serde_json::Value {
    let out = c.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "`corral status --json`: {}",
        out.all()
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`corral status --json` is not JSON ({e}): {}", out.stdout))
}

/// Resident set size of `pid` in KiB (0 if it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// What the load saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub connects: AtomicU64,
    pub echo_bytes: AtomicU64,
    /// Round-trip times of the keep-alive requests, in microseconds (bounded sample).
    pub rtt_us: Mutex<Vec<u32>>,
    pub first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if f.len() < 10 {
            f.push(what);
        }
    }

    /// The 99th percentile of the sampled round trips.
    pub fn p99(&self) -> Duration {
        let mut v = self
            .rtt_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        Duration::from_micros(u64::from(v[(v.len() * 99 / 100).min(v.len() - 1)]))
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests ok, {} failed, {} connect/close cycles, {} echo bytes, p99 {:?}; first failures: {:?}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.connects.load(Ordering::Relaxed),
            self.echo_bytes.load(Ordering::Relaxed),
            self.p99(),
            self.first_failures.lock().unwrap_or_else(|e| e.into_inner())
        )
    }
}

/// A running load; stopped (and joined) by `finish` or on drop.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub tally: Arc<Tally>,
}

/// Most round trips kept for the percentile.
const RTT_SAMPLE: usize = 200_000;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Load {
    /// `conns` keep-alive HTTP connections to `http` (opened here, spread over
    /// `threads` threads, each requesting on its connections in turn), one thread
    /// connecting and closing on `http`, and `echo_streams` echo connections to `echo`
    /// doing round trips.
    pub fn start(
        http: SocketAddr,
        conns: usize,
        threads: usize,
        echo: SocketAddr,
        echo_streams: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut handles = Vec::new();
        let open = super::handover::open_idle(http, conns, Duration::from_secs(120));
        let mut groups: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, s) in open.into_iter().enumerate() {
            groups[i % threads].push(s);
        }
        for group in groups {
            let (stop, tally) = (stop.clone(), tally.clone());
            handles.push(std::thread::spawn(move || {
                keepalive_loop(group, &stop, &tally)
            }));
        }
        {
            let (stop, tally) = (stop.clone(), tally.clone());
            handles.push(std::thread::spawn(move || churn_loop(http, &stop, &tally)));
        }
        let mut streams = Vec::new();
        for _ in 0..echo_streams {
            match connect(echo, IO_TIMEOUT) {
                Ok(s) => streams.push(s),
                Err(e) => tally.fail(format!("echo connect: {e}")),
            }
        }
        if !streams.is_empty() {
            let (stop, tally) = (stop.clone(), tally.clone());
            handles.push(std::thread::spawn(move || {
                echo_loop(streams, &stop, &tally)
            }));
        }
        Load {
            stop,
            threads: handles,
            tally,
        }
    }

    /// Waits until `n` more requests succeeded (by `timeout`).
    pub fn wait_progress(&self, n: u64, timeout: Duration) -> bool {
        let base = self.tally.ok.load(Ordering::Relaxed);
        super::wait_until(timeout, || {
            self.tally.ok.load(Ordering::Relaxed) >= base + n
        })
    }

    /// Stops and joins every thread.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}

fn keepalive_loop(mut conns: Vec<TcpStream>, stop: &AtomicBool, tally: &Tally) {
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) && !conns.is_empty() {
        let i = k % conns.len();
        k += 1;
        let t = Instant::now();
        let s = &mut conns[i];
        if let Err(e) = s.write_all(GET) {
            tally.fail(format!("keep-alive write: {e}"));
            conns.swap_remove(i);
            continue;
        }
        match read_response(s, t + IO_TIMEOUT) {
            Answer::Full {
                status: 200,
                closes: false,
                ..
            } => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let mut v = tally.rtt_us.lock().unwrap_or_else(|e| e.into_inner());
                if v.len() < RTT_SAMPLE {
                    v.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            other => {
                tally.fail(format!("keep-alive request: {other:?}"));
                conns.swap_remove(i);
            }
        }
    }
}

fn churn_loop(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n";
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut s = match connect(addr, IO_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("churn connect: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = s.write_all(CLOSE) {
            tally.fail(format!("churn write: {e}"));
            continue;
        }
        match read_response(&mut s, t + IO_TIMEOUT) {
            a if a.is_ok() => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.connects.fetch_add(1, Ordering::Relaxed);
            }
            other => tally.fail(format!("churn request: {other:?}")),
        }
    }
}

fn echo_loop(mut streams: Vec<TcpStream>, stop: &AtomicBool, tally: &Tally) {
    let mut k = 0u64;
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) && !streams.is_empty() {
        let i = (k as usize) % streams.len();
        k += 1;
        let msg = format!("{k:016}\n");
        let s = &mut streams[i];
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let ok = s.write_all(msg.as_bytes()).is_ok()
            && s.read_exact(&mut buf[..msg.len()]).is_ok()
            && &buf[..msg.len()] == msg.as_bytes();
        if ok {
            tally
                .echo_bytes
                .fetch_add(msg.len() as u64, Ordering::Relaxed);
        } else {
            tally.fail(format!("echo round trip {k} on stream {i}"));
            streams.swap_remove(i);
        }
    }
}
