//! The master's metrics: what workers report, what outlives them, and the text a
//! scrape gets.
//!
//! Counters stay monotonic across reloads and upgrades by one rule: **every worker is
//! counted by exactly one master, once.** While a worker lives, its latest report
//! counts; when it exits, its final report moves into `retired`, which only grows.
//! Across a binary upgrade the old master keeps counting its own (draining) workers
//! and writes its totals (retired + live + its own inherited base) to a JSON file,
//! named in `CORRAL_METRICS_TOTALS` for the new master: when it starts the new master,
//! then at most every [`SHARE_EVERY`] until it exits, and once more on exit. The new
//! master adds the latest file to its own counts as `base` (re-reading it while the
//! old master lives, once more after it is gone, then deleting it). The old master's
//! workers are never the new master's workers, so nothing is counted twice; what they
//! count after the handover reaches the new master's totals with the next file.

mod expo;
mod render;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::table::WorkerState;
use super::{Master, State};
use crate::channel::{Counters, ListenerCounters, UpstreamCounters};
use crate::channel::{HandoffCounts, Stats, ToMaster, ToWorker, MAX_MESSAGE};
use expo::Kind;

/// The environment variable naming the old master's totals file at an upgrade.
pub const TOTALS_ENV: &str = "CORRAL_METRICS_TOTALS";
/// How often an old master rewrites its totals file while it drains.
const SHARE_EVERY: Duration = Duration::from_millis(250);
/// Text per `ToWorker::Metrics` part: JSON escaping (quotes and newlines double)
/// keeps even a text made of nothing else under `MAX_MESSAGE`.
const PART: usize = MAX_MESSAGE / 2 - 512;

/// Counters of one listener that outlive workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerTotals {
    pub accepted: u64,
    pub rejected_limit: u64,
    pub rejected_per_ip: u64,
    pub rejected_rate: u64,
}

/// Counters of one upstream that outlive workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamTotals {
    pub connects: u64,
    pub failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// How reloads (or upgrades) went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub succeeded: u64,
    pub failed: u64,
    /// The last one succeeded (None: none yet).
    pub last_ok: Option<bool>,
    /// When the last one ended, Unix seconds.
    pub last_at: f64,
    /// How long the last successful one took to be ready.
    pub last_ready_secs: f64,
}

impl Outcomes {
    pub fn record(&mut self, ok: bool, took: Option<Duration>) {
        if ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.last_ok = Some(ok);
        self.last_at = unix_now();
        if let Some(t) = took {
            self.last_ready_secs = t.as_secs_f64();
        }
    }

    /// The later of two histories' "last" fields, counts summed.
    fn add(&mut self, o: &Outcomes) {
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        if o.last_at > self.last_at {
            self.last_ok = o.last_ok;
            self.last_at = o.last_at;
            self.last_ready_secs = o.last_ready_secs;
        }
    }
}

/// Everything that must never go down: what a master hands its successor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub accepted: u64,
    /// Absent from the file of an older old master.
    #[serde(default)]
    pub adopted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub refused_per_ip: u64,
    /// `accept_proxy` connections closed for a bad, missing or late PROXY header.
    #[serde(default)]
    pub proxy_header_failed: u64,
    /// Log lines workers dropped because their writer could not keep up.
    #[serde(default)]
    pub log_dropped: u64,
    /// Faults injected on request (`corral fault`, `corral chaos`), by kind: so that a
    /// dashboard tells a rehearsal from a real failure.
    #[serde(default)]
    pub faults: BTreeMap<String, u64>,
    pub listeners: BTreeMap<String, ListenerTotals>,
    /// By (listener, upstream) address.
    pub upstreams: BTreeMap<String, BTreeMap<String, UpstreamTotals>>,
    pub handoff: HandoffTotals,
    pub reloads: Outcomes,
    pub upgrades: Outcomes,
    pub watchdog_kills: u64,
    /// Times a stalled slot's sockets were lent to a healthy worker (`stalls.rs`).
    #[serde(default)]
    pub stall_lends: u64,
    pub restarts: u64,
    /// TLS handshakes and failures.
    #[serde(default)]
    pub tls: crate::tls::TlsCounts,
    /// Push deliveries and what was dropped, and why.
    #[serde(default)]
    pub push: crate::channel::PushCounts,
}

/// Hand-over outcomes (a `HandoffCounts` that can be serialised into the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffTotals {
    pub moved: u64,
    pub kept: u64,
    pub closed: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.accepted += o.accepted;
        self.adopted += o.adopted;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.refused_per_ip += o.refused_per_ip;
        self.proxy_header_failed += o.proxy_header_failed;
        self.log_dropped += o.log_dropped;
        for (k, n) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += n;
        }
        for (k, l) in &o.listeners {
            let t = self.listeners.entry(k.clone()).or_default();
            t.accepted += l.accepted;
            t.rejected_limit += l.rejected_limit;
            t.rejected_per_ip += l.rejected_per_ip;
            t.rejected_rate += l.rejected_rate;
        }
        for (k, ups) in &o.upstreams {
            let m = self.upstreams.entry(k.clone()).or_default();
            for (a, u) in ups {
                let t = m.entry(a.clone()).or_default();
                t.connects += u.connects;
                t.failures += u.failures;
                t.bytes_in += u.bytes_in;
                t.bytes_out += u.bytes_out;
            }
        }
        self.handoff.moved += o.handoff.moved;
        self.handoff.kept += o.handoff.kept;
        self.handoff.closed += o.handoff.closed;
        self.reloads.add(&o.reloads);
        self.upgrades.add(&o.upgrades);
        self.watchdog_kills += o.watchdog_kills;
        self.stall_lends += o.stall_lends;
        self.restarts += o.restarts;
        self.tls.add(&o.tls);
        self.push.add(&o.push);
    }

    /// One worker's counting, as totals.
    fn of_worker(stats: &Stats, c: Option<&Live>, h: Option<&HandoffCounts>) -> Totals {
        let mut t = Totals {
            accepted: stats.accepted,
            adopted: stats.adopted,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            refused_per_ip: stats.refused,
            tls: stats.tls,
            push: stats.push,
            proxy_header_failed: stats.proxy_header_failed,
            log_dropped: stats.log_dropped,
            ..Totals::default()
        };
        if let Some(h) = h {
            t.handoff = HandoffTotals {
                moved: h.handed,
                kept: h.kept,
                closed: h.closed,
            };
        }
        let Some(c) = c else { return t };
        for l in c.listeners.values() {
            let e = t.listeners.entry(l.listen.clone()).or_default();
            e.accepted += l.accepted;
            e.rejected_limit += l.rejected_limit;
            e.rejected_per_ip += l.rejected_per_ip;
            e.rejected_rate += l.rejected_rate;
        }
        for u in c.upstreams.values() {
            let e = t
                .upstreams
                .entry(u.listen.clone())
                .or_default()
                .entry(u.upstream.clone())
                .or_default();
            e.connects += u.connects;
            e.failures += u.failures;
            e.bytes_in += u.bytes_in;
            e.bytes_out += u.bytes_out;
        }
        t
    }
}

/// A live worker's latest counters, merged from its report's parts.
#[derive(Default)]
struct Live {
    listeners: BTreeMap<String, ListenerCounters>,
    upstreams: BTreeMap<(String, String), UpstreamCounters>,
}

/// A per-worker family: name, type, help, and where its value comes from.
type WorkerSeries = (&'static str, Kind, &'static str, fn(&Stats) -> u64);
/// A per-upstream counter family: name, help, and where its value comes from.
type UpstreamSeries = (&'static str, &'static str, fn(&UpstreamTotals) -> u64);

/// The master's metrics state.
#[derive(Default)]
pub struct Metrics {
    /// Each live worker's latest per-listener report, by pid.
    live: HashMap<i32, Live>,
    /// Each live worker's latest hand-over counts, by pid.
    handoffs: HashMap<i32, HandoffCounts>,
    /// Exited workers of this master, and the master's own events.
    pub own: Totals,
    /// The totals of the master we took over from (upgrade).
    base: Totals,
    /// The predecessor's totals file, while it may still change.
    base_file: Option<PathBuf>,
    /// Our own totals file, once we started a successor.
    share: Option<(PathBuf, Instant)>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn read_totals(path: &std::path::Path) -> Option<Totals> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(path = %path.display(), "ignoring the old master's metrics totals: {e}");
            None
        }
    }
}

impl Metrics {
    /// A fresh master's state; after an upgrade, with the old master's totals.
    pub fn from_env() -> Metrics {
        let mut m = Metrics::default();
        if let Some(path) = std::env::var_os(TOTALS_ENV).map(PathBuf::from) {
            std::env::remove_var(TOTALS_ENV);
            m.base = read_totals(&path).unwrap_or_default();
            m.base_file = Some(path);
        }
        m
    }

    /// One part of a worker's report: its entries replace the earlier ones.
    pub fn counters(&mut self, pid: i32, c: Counters) {
        let live = self.live.entry(pid).or_default();
        for l in c.listeners {
            live.listeners.insert(l.listen.clone(), l);
        }
        for u in c.upstreams.into_iter().flatten() {
            live.upstreams
                .insert((u.listen.clone(), u.upstream.clone()), u);
        }
    }

    pub fn handoff_done(&mut self, pid: i32, c: HandoffCounts) {
        self.handoffs.insert(pid, c);
    }

    /// A worker exited: its last report becomes part of the totals for good.
    pub fn retire(&mut self, pid: i32, stats: &Stats) {
        let c = self.live.remove(&pid);
        let h = self.handoffs.remove(&pid);
        self.own
            .add(&Totals::of_worker(stats, c.as_ref(), h.as_ref()));
    }

    /// Re-reads the predecessor's file while it may change; `gone` = the old master
    /// exited, so this read is its last word.
    fn refresh_base(&mut self, gone: bool) {
        let Some(path) = &self.base_file else { return };
        if let Some(t) = read_totals(path) {
            self.base = t;
        }
        if gone {
            let _ = std::fs::remove_file(path);
            self.base_file = None;
        }
    }
}

/// The file an upgrading master shares its totals in, next to the control socket.
fn share_path(m: &Master) -> PathBuf {
    let sock = m.config.master.control_socket_path();
    let dir = sock
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    dir.join(format!(
        "corral-metrics-{}.json",
        crate::os::process::pid().as_raw()
    ))
}

impl Master {
    /// Everything counted so far: base + exited workers + live workers.
    fn totals(&self) -> Totals {
        let mut t = self.metrics.base.clone();
        t.add(&self.metrics.own);
        for w in &self.workers {
            let pid = w.pid.as_raw();
            t.add(&Totals::of_worker(
                &w.stats,
                self.metrics.live.get(&pid),
                self.metrics.handoffs.get(&pid),
            ));
        }
        t
    }

    /// Starts sharing our totals with a new master; returns the environment entry
    /// that names the file.
    pub(super) fn share_totals(&mut self) -> Option<(String, String)> {
        let path = share_path(self);
        self.metrics.share = Some((path.clone(), Instant::now()));
        self.write_share();
        Some((TOTALS_ENV.into(), path.to_str()?.to_string()))
    }

    fn write_share(&mut self) {
        let Some((path, _)) = &self.metrics.share else {
            return;
        };
        let path = path.clone();
        let bytes = match serde_json::to_vec(&self.totals()) {
            Ok(b) => b,
            Err(e) => return warn!("cannot encode the metrics totals: {e}"),
        };
        // Written aside and renamed, so the new master never reads half a file.
        let tmp = path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path)) {
            warn!(path = %path.display(), "cannot write the metrics totals for the new master: {e}");
        }
        if let Some((_, at)) = &mut self.metrics.share {
            *at = Instant::now();
        }
    }

    /// Called every loop iteration: an old master keeps its successor's view of its
    /// totals fresh; a new master picks up its predecessor's.
    pub(super) fn metrics_tick(&mut self, now: Instant) {
        if self
            .metrics
            .share
            .as_ref()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= SHARE_EVERY)
        {
            self.write_share();
        }
        // The old master is gone: take its last word now, so its file does not
        // outlive it even if nobody scrapes.
        if self.metrics.base_file.is_some() && self.up.predecessor.is_none() {
            self.metrics.refresh_base(true);
        }
    }

    /// The upgrade was rolled back: nobody reads our file.
    pub(super) fn stop_sharing(&mut self) {
        if let Some((path, _)) = self.metrics.share.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Our last word to the new master, as we exit.
    pub(super) fn final_share(&mut self) {
        self.write_share();
    }

    /// A worker exited: what it sent last (a final heartbeat comes with its exit)
    /// becomes part of the totals for good.
    pub(super) fn retire_worker(&mut self, w: &super::table::WorkerRecord) {
        let pid = w.pid.as_raw();
        let mut stats = w.stats;
        // Anything else still queued (a hand-over) was already lost with the worker.
        while let Ok(Some(msg)) = w.channel.recv::<ToMaster>() {
            match msg {
                ToMaster::Heartbeat(s) => stats = s,
                ToMaster::Counters(c) => self.metrics.counters(pid, c),
                ToMaster::HandoffDone(h) => self.metrics.handoff_done(pid, h),
                _ => {}
            }
        }
        self.metrics.retire(pid, &stats);
    }

    /// A worker asked for the text for scrape `id`: send it in parts.
    pub(super) fn answer_metrics(&mut self, i: usize, id: u64) {
        let text = self.prometheus();
        let Some(w) = self.workers.get(i) else { return };
        let parts = split(&text, PART);
        let n = parts.len();
        for (k, part) in parts.into_iter().enumerate() {
            let msg = ToWorker::Metrics {
                id,
                text: part.to_string(),
                last: k + 1 == n,
            };
            if let Err(e) = w.channel.send(&msg) {
                // The scrape times out (503) on the worker's side.
                debug!(
                    pid = w.pid.as_raw(),
                    "cannot send metrics to the worker: {e}"
                );
                return;
            }
        }
    }
}

/// Splits `text` into parts of at most `max` bytes, at line ends where possible
/// (never inside a UTF-8 character).
fn split(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let cut = rest[..end].rfind('\n').map_or(end, |i| i + 1);
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_a_message_and_join_back() {
        let line = "corral_x{listen=\"\\\"quoted\\\"\"} 1\n";
        let text = line.repeat(5000);
        let parts = split(&text, PART);
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), text);
        for (k, p) in parts.iter().enumerate() {
            assert!(p.ends_with('\n'));
            let msg = ToWorker::Metrics {
                id: 1,
                text: p.to_string(),
                last: k + 1 == parts.len(),
            };
            assert!(serde_json::to_vec(&msg).unwrap().len() <= MAX_MESSAGE);
        }
        assert_eq!(split("", PART), vec![""]);
        let long = "é".repeat(PART);
        assert_eq!(split(&long, PART).concat(), long);
    }

    #[test]
    fn totals_add_up_and_keep_the_latest_outcome() {
        let mut a = Totals::default();
        a.reloads.record(true, Some(Duration::from_millis(20)));
        let mut b = Totals {
            accepted: 5,
            ..Totals::default()
        };
        b.listeners.entry("x".into()).or_default().accepted = 3;
        b.reloads.last_at = a.reloads.last_at + 1.0;
        b.reloads.last_ok = Some(false);
        b.reloads.failed = 1;
        a.add(&b);
        a.add(&b);
        assert_eq!(a.accepted, 10);
        assert_eq!(a.listeners["x"].accepted, 6);
        assert_eq!((a.reloads.succeeded, a.reloads.failed), (1, 2));
        assert_eq!(a.reloads.last_ok, Some(false));
    }
}
