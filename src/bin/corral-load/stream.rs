//! `--mode stream`: every connection receives a continuous stream and the tool measures,
//! per connection, the rate it gets and the gaps between chunks.
//!
//! It is made for corral's echo service with a `[flow] rate` limit: each connection
//! keeps at most `WINDOW` bytes sent but not yet echoed, so corral always has data
//! waiting and its rate limit alone decides how fast each client's stream comes back.
//! The client side stays cheap (one write per chunk received) and kernel buffers stay
//! bounded (`WINDOW` per connection). A connection that is reset or closed (its
//! worker was killed, say) is counted as *affected* and reconnects after a short
//! pause; the summary reports the affected and the unaffected clients separately.

use std::io;
use std::time::{Duration, Instant};

use corral::os::client::Socket;
use corral::os::epoll::{Epoll, Event};

use crate::bucket::Bucket;
use crate::conn::{key, open_connection, wait_events};
use crate::histogram::Histogram;
use crate::plan::Plan;

/// Most bytes in flight per connection (sent, not yet received back).
const WINDOW: usize = 256 << 10;
/// Bytes written per send call.
const CHUNK: usize = 16 << 10;
/// Pause before a lost connection reconnects.
const RECONNECT: Duration = Duration::from_millis(100);

/// What `--mode stream` adds to the plan.
#[derive(Clone, Copy, Debug)]
pub struct StreamOpts {
    /// The rate each client should get (B/s), to count the starved ones.
    pub expect: Option<f64>,
    /// Fraction below `expect` that still counts as served.
    pub tolerance: f64,
    /// Rates and gaps are measured from this long after the start.
    pub warmup: Duration,
}

struct Conn {
    global: usize,
    sock: Option<Socket>,
    token: u32,
    connected: bool,
    sent: u64,
    received: u64,
    /// Bytes received inside the measuring window.
    counted: u64,
    last_read: Option<Instant>,
    max_gap: Duration,
    /// Resets/EOFs seen (its worker died, or corral closed it).
    lost: u32,
    retry_at: Option<Instant>,
}

/// One client's figures at the end.
pub struct ClientResult {
    pub rate: f64,
    pub max_gap: Duration,
    pub lost: u32,
}

/// What a thread (or the whole run) measured.
pub struct StreamOutcome {
    pub clients: Vec<ClientResult>,
    pub gaps_us: Histogram,
    pub connect_failed: u64,
    pub window: Duration,
}

struct Thread<'p> {
    plan: &'p Plan,
    epoll: Epoll,
    conns: Vec<Conn>,
    gaps: Histogram,
    measure_from: Instant,
    connect_failed: u64,
    bucket: Option<Bucket>,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

/// Runs the stream load on `plan.threads` threads and merges what they measured.
pub fn run(plan: &Plan, opts: StreamOpts) -> Result<StreamOutcome, String> {
    let start = Instant::now();
    let results: Vec<Result<StreamOutcome, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..plan.threads)
            .map(|t| s.spawn(move || Thread::new(plan, opts, t, start)?.run(start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a stream thread panicked (a bug)".into()))
            })
            .collect()
    });
    let mut all = StreamOutcome {
        clients: Vec::new(),
        gaps_us: Histogram::new(),
        connect_failed: 0,
        window: Duration::ZERO,
    };
    for r in results {
        let o = r?;
        all.clients.extend(o.clients);
        all.gaps_us.merge(&o.gaps_us);
        all.connect_failed += o.connect_failed;
        all.window = all.window.max(o.window);
    }
    Ok(all)
}

impl<'p> Thread<'p> {
    fn new(
        plan: &'p Plan,
        opts: StreamOpts,
        thread: usize,
        start: Instant,
    ) -> Result<Self, String> {
        let epoll = Epoll::new(1024).map_err(|e| format!("epoll_create1() failed: {e}"))?;
        let conns = (0..plan.conns)
            .filter(|g| g % plan.threads == thread)
            .map(|global| Conn {
                global,
                sock: None,
                token: 0,
                connected: false,
                sent: 0,
                received: 0,
                counted: 0,
                last_read: None,
                max_gap: Duration::ZERO,
                lost: 0,
                retry_at: Some(start),
            })
            .collect();
        Ok(Thread {
            plan,
            epoll,
            conns,
            gaps: Histogram::new(),
            measure_from: start + opts.warmup,
            connect_failed: 0,
            bucket: plan.connect_rate.map(|r| Bucket::new(r, start)),
            out: (0..CHUNK).map(|i| (i % 251) as u8).collect(),
            scratch: vec![0; 64 << 10],
        })
    }

    fn run(mut self, start: Instant) -> Result<StreamOutcome, String> {
        let end = start + self.plan.duration;
        let mut events = Vec::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= end || crate::run::stop_requested() {
                break;
            }
            self.connect_due(now);
            wait_events(&mut self.epoll, Duration::from_millis(20), &mut events)?;
            for &(idx, token, ev) in &events {
                if self.conns.get(idx).is_some_and(|c| c.token == token) {
                    self.on_event(idx, ev);
                }
            }
        }
        let stop = Instant::now().min(end);
        let window = stop.saturating_duration_since(self.measure_from);
        let secs = window.as_secs_f64().max(1e-3);
        let clients = self
            .conns
            .iter()
            .map(|c| ClientResult {
                rate: c.counted as f64 / secs,
                max_gap: c.max_gap,
                lost: c.lost,
            })
            .collect();
        Ok(StreamOutcome {
            clients,
            gaps_us: self.gaps,
            connect_failed: self.connect_failed,
            window,
        })
    }

    fn connect_due(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            if self.conns[idx].retry_at.is_none_or(|t| t > now) {
                continue;
            }
            if let Some(b) = &mut self.bucket {
                if !b.take(now) {
                    return;
                }
            }
            self.conns[idx].retry_at = None;
            if let Err(e) = self.open(idx) {
                self.connect_failed += 1;
                if self.connect_failed == 1 {
                    eprintln!("corral-load: {e}");
                }
                self.conns[idx].retry_at = Some(now + RECONNECT);
            }
        }
    }

    fn open(&mut self, idx: usize) -> Result<(), String> {
        let source = (!self.plan.sources.is_empty())
            .then(|| self.plan.sources[self.conns[idx].global % self.plan.sources.len()]);
        let token = key(idx, self.conns[idx].token);
        let sock = open_connection(&self.epoll, self.plan.addr, source, false, token)?;
        let c = &mut self.conns[idx];
        c.sock = Some(sock);
        c.sent = 0;
        c.received = 0;
        c.last_read = None;
        Ok(())
    }

    fn on_event(&mut self, idx: usize, ev: Event) {
        if !self.conns[idx].connected {
            let Some(sock) = &self.conns[idx].sock else {
                return;
            };
            match sock.take_error() {
                Ok(None) if ev.writable => {
                    self.conns[idx].connected = true;
                }
                Ok(None) => return,
                Ok(Some(_)) | Err(_) => {
                    self.connect_failed += 1;
                    return self.drop_conn(idx, false);
                }
            }
        }
        if let Err(lost) = self.pump(idx) {
            self.drop_conn(idx, lost);
        }
    }

    /// Reads what came back, then tops the window up. Err(true): the stream was lost.
    fn pump(&mut self, idx: usize) -> Result<(), bool> {
        let now = Instant::now();
        let measure_from = self.measure_from;
        let c = &mut self.conns[idx];
        let Some(sock) = &c.sock else { return Ok(()) };
        let mut got_any = false;
        loop {
            match io::Read::read(&mut &*sock, &mut self.scratch) {
                Ok(0) => return Err(true),
                Ok(n) => {
                    c.received += n as u64;
                    if now >= measure_from {
                        c.counted += n as u64;
                    }
                    got_any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(true),
            }
        }
        if got_any {
            if let Some(prev) = c.last_read {
                if prev >= measure_from {
                    let gap = now.saturating_duration_since(prev);
                    self.gaps.record(gap.as_micros() as u64);
                    c.max_gap = c.max_gap.max(gap);
                }
            }
            c.last_read = Some(now);
        }
        while c.sent < c.received + WINDOW as u64 {
            let room = (c.received + WINDOW as u64 - c.sent) as usize;
            match io::Write::write(&mut &*sock, &self.out[..room.min(CHUNK)]) {
                Ok(n) => c.sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(true),
            }
        }
        Ok(())
    }

    fn drop_conn(&mut self, idx: usize, lost: bool) {
        let c = &mut self.conns[idx];
        c.sock = None;
        c.connected = false;
        c.token = c.token.wrapping_add(1);
        if lost {
            c.lost += 1;
        }
        c.retry_at = Some(Instant::now() + RECONNECT);
    }
}

/// Sorted rates of a group: (count, min, median, max).
fn stats(mut rates: Vec<f64>) -> (usize, f64, f64, f64) {
    if rates.is_empty() {
        return (0, 0.0, 0.0, 0.0);
    }
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    };
    (n, rates[0], median, rates[n - 1])
}

/// The summary: JSON or lines; the last line is the benchmark's contract line.
pub fn report(o: &StreamOutcome, opts: StreamOpts, json: bool) -> serde_json::Value {
    let all = stats(o.clients.iter().map(|c| c.rate).collect());
    let hit = stats(
        o.clients
            .iter()
            .filter(|c| c.lost > 0)
            .map(|c| c.rate)
            .collect(),
    );
    let kept = stats(
        o.clients
            .iter()
            .filter(|c| c.lost == 0)
            .map(|c| c.rate)
            .collect(),
    );
    let floor = opts.expect.map(|e| e * (1.0 - opts.tolerance));
    let starved = floor.map_or(0, |f| o.clients.iter().filter(|c| c.rate < f).count());
    let starved_kept = floor.map_or(0, |f| {
        o.clients
            .iter()
            .filter(|c| c.lost == 0 && c.rate < f)
            .count()
    });
    let max_gap = o
        .clients
        .iter()
        .map(|c| c.max_gap)
        .max()
        .unwrap_or_default();
    let group = |g: (usize, f64, f64, f64)| serde_json::json!({"clients": g.0, "rate_min": g.1.round(), "rate_median": g.2.round(), "rate_max": g.3.round()});
    let j = serde_json::json!({
        "mode": "stream",
        "clients": all.0,
        "rate_min": all.1.round(),
        "rate_median": all.2.round(),
        "rate_max": all.3.round(),
        "starved": starved,
        "starved_unaffected": starved_kept,
        "expect_rate": opts.expect,
        "window_s": o.window.as_secs_f64(),
        "gap_p50_ms": o.gaps_us.quantile(0.50) as f64 / 1000.0,
        "gap_p99_ms": o.gaps_us.quantile(0.99) as f64 / 1000.0,
        "gap_max_ms": max_gap.as_secs_f64() * 1000.0,
        "connect_failed": o.connect_failed,
        "affected": group(hit),
        "unaffected": group(kept),
    });
    if !json {
        println!(
            "measured over {:.1} s; gaps between chunks p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; connect failures {}",
            o.window.as_secs_f64(),
            j["gap_p50_ms"].as_f64().unwrap_or(0.0),
            j["gap_p99_ms"].as_f64().unwrap_or(0.0),
            j["gap_max_ms"].as_f64().unwrap_or(0.0),
            o.connect_failed
        );
        for (name, g) in [
            ("unaffected", kept),
            ("affected (lost their stream at least once)", hit),
        ] {
            println!(
                "{name}: clients={} rate_min={:.0} rate_median={:.0} rate_max={:.0}",
                g.0, g.1, g.2, g.3
            );
        }
        println!(
            "clients={} rate_min={:.0} rate_median={:.0} rate_max={:.0} starved={}",
            all.0, all.1, all.2, all.3, starved
        );
    }
    j
}
