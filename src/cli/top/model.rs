//! What `corral top` shows, computed from two successive status answers: rates are
//! deltas between polls, and events (reloads, upgrades, respawns, faults, refusals)
//! are the differences the master's status shows from one poll to the next, so the
//! control protocol needs nothing new. Plain rows of text, drawn by the terminal view
//! and printed by `--once` alike.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::Response;
use crate::control::WorkerStatus;
use crate::tls::{Failure, TlsCounts};

/// Events kept for the scrolling list.
const EVENTS_KEPT: usize = 200;

/// A table: its title, column names, and rows of cells.
#[derive(Debug, Default)]
pub struct Section {
    pub title: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// The worker table's columns, in order; the sort keys select one.
pub const WORKER_COLUMNS: [&str; 11] = [
    "SLOT",
    "PID",
    "GEN",
    "STATE",
    "CONNS",
    "ACC/S",
    "IN/S",
    "OUT/S",
    "RSS",
    "RESTARTS",
    "LAST EXIT",
];

/// One worker with its rates, sortable by any column.
#[derive(Debug, Clone)]
struct WorkerRow {
    w: WorkerStatus,
    accepted_s: f64,
    in_s: f64,
    out_s: f64,
}

impl WorkerRow {
    fn cells(&self) -> Vec<String> {
        let w = &self.w;
        vec![
            w.slot.to_string(),
            w.pid.to_string(),
            w.generation.to_string(),
            w.state.clone(),
            w.connections.to_string(),
            format!("{:.0}", self.accepted_s),
            bytes(self.in_s),
            bytes(self.out_s),
            bytes(w.rss as f64),
            w.restarts.to_string(),
            w.last_exit.clone().unwrap_or_else(|| "-".into()),
        ]
    }

    fn cmp_by(&self, other: &Self, col: usize) -> std::cmp::Ordering {
        let (a, b) = (&self.w, &other.w);
        let f = |x: f64, y: f64| x.total_cmp(&y);
        match col {
            0 => a.slot.cmp(&b.slot),
            1 => a.pid.cmp(&b.pid),
            2 => a.generation.cmp(&b.generation),
            3 => a.state.cmp(&b.state),
            4 => a.connections.cmp(&b.connections),
            5 => f(self.accepted_s, other.accepted_s),
            6 => f(self.in_s, other.in_s),
            7 => f(self.out_s, other.out_s),
            8 => a.rss.cmp(&b.rss),
            9 => a.restarts.cmp(&b.restarts),
            _ => a.last_exit.cmp(&b.last_exit),
        }
    }
}

/// Everything between polls: the last answer, the one before, and the events seen.
#[derive(Default)]
pub struct Model {
    prev: Option<(Instant, Response)>,
    cur: Option<(Instant, Response)>,
    events: VecDeque<String>,
    /// When each generation was first seen draining (its elapsed time, client-side).
    draining_since: HashMap<u64, Instant>,
    /// The last poll's error, while the master does not answer.
    pub unreachable: Option<String>,
    pub sort: usize,
    pub reverse: bool,
}

impl Model {
    /// Takes a new answer: derives the events from the previous one.
    pub fn update(&mut self, resp: Response, at: Instant) {
        self.unreachable = None;
        for g in &resp.generations {
            if g.state == "draining" {
                self.draining_since.entry(g.generation).or_insert(at);
            }
        }
        if let Some((_, old)) = &self.cur {
            for e in events(old, &resp) {
                self.push_event(e);
            }
        }
        self.prev = self.cur.take();
        self.cur = Some((at, resp));
    }

    pub fn push_event(&mut self, what: String) {
        self.events
            .push_front(format!("{} {what}", clock(SystemTime::now())));
        self.events.truncate(EVENTS_KEPT);
    }

    /// Newest first.
    pub fn events(&self) -> impl Iterator<Item = &String> {
        self.events.iter()
    }

    /// One line: the master, its state and generation, totals and their rates.
    pub fn headline(&self) -> String {
        let Some((_, r)) = &self.cur else {
            return "corral top: waiting for the master's first answer".into();
        };
        let conns: u64 = r.workers.iter().map(|w| w.connections).sum();
        let rows = self.rows();
        let acc: f64 = rows.iter().map(|w| w.accepted_s).sum();
        let i: f64 = rows.iter().map(|w| w.in_s).sum();
        let o: f64 = rows.iter().map(|w| w.out_s).sum();
        let mut line = format!(
            "master {}: {}, generation {} | {} workers, {conns} connections, {acc:.0} accepted/s, in {}/s, out {}/s",
            r.master_pid,
            r.message,
            r.generation,
            r.workers.len(),
            bytes(i),
            bytes(o)
        );
        if let Some(e) = &self.unreachable {
            line.push_str(&format!(" | UNREACHABLE: {e}"));
        }
        line
    }

    fn rows(&self) -> Vec<WorkerRow> {
        let Some((at, r)) = &self.cur else {
            return Vec::new();
        };
        let before: HashMap<i32, (&WorkerStatus, Duration)> = self
            .prev
            .as_ref()
            .map(|(t, p)| {
                p.workers
                    .iter()
                    .map(|w| (w.pid, (w, at.saturating_duration_since(*t))))
                    .collect()
            })
            .unwrap_or_default();
        r.workers
            .iter()
            .map(|w| {
                let rate = |now: u64, then: Option<u64>, dt: Duration| match then {
                    Some(t) if dt.as_secs_f64() > 0.0 => {
                        now.saturating_sub(t) as f64 / dt.as_secs_f64()
                    }
                    _ => 0.0,
                };
                let old = before.get(&w.pid);
                let dt = old.map_or(Duration::ZERO, |o| o.1);
                WorkerRow {
                    accepted_s: rate(
                        w.accepted + w.adopted,
                        old.map(|o| o.0.accepted + o.0.adopted),
                        dt,
                    ),
                    in_s: rate(w.bytes_in, old.map(|o| o.0.bytes_in), dt),
                    out_s: rate(w.bytes_out, old.map(|o| o.0.bytes_out), dt),
                    w: w.clone(),
                }
            })
            .collect()
    }

    /// The workers, sorted by the chosen column.
    pub fn workers(&self) -> Section {
        let mut rows = self.rows();
        rows.sort_by(|a, b| {
            let o = a.cmp_by(b, self.sort);
            if self.reverse {
                o.reverse()
            } else {
                o
            }
        });
        Section {
            title: format!(
                "workers (sorted by {}{})",
                WORKER_COLUMNS[self.sort.min(WORKER_COLUMNS.len() - 1)],
                if self.reverse { ", descending" } else { "" }
            ),
            header: WORKER_COLUMNS.to_vec(),
            rows: rows.iter().map(WorkerRow::cells).collect(),
        }
    }

    /// The generations and what became of their connections: moved, kept, closed,
    /// and still on their workers.
    pub fn generations(&self) -> Section {
        let mut s = Section {
            title: "generations".into(),
            header: vec![
                "GEN",
                "STATE",
                "WORKERS",
                "MOVED",
                "KEPT",
                "CLOSED",
                "REMAINING",
                "ELAPSED",
            ],
            rows: Vec::new(),
        };
        let Some((at, r)) = &self.cur else { return s };
        let mut gens: Vec<_> = r.generations.iter().collect();
        gens.sort_by_key(|g| std::cmp::Reverse(g.generation));
        for g in gens {
            let remaining: u64 = r
                .workers
                .iter()
                .filter(|w| w.generation == g.generation)
                .map(|w| w.connections)
                .sum();
            let elapsed = match (g.exit_ms, self.draining_since.get(&g.generation)) {
                (Some(ms), _) => format!("{:.1}s", ms as f64 / 1000.0),
                (None, Some(t)) if g.state == "draining" => {
                    format!("{:.0}s", at.saturating_duration_since(*t).as_secs_f64())
                }
                _ => "-".into(),
            };
            let serving = g.state == "serving";
            s.rows.push(vec![
                g.generation.to_string(),
                g.state.clone(),
                g.workers.to_string(),
                g.moved.to_string(),
                g.kept.to_string(),
                g.closed.to_string(),
                if serving {
                    "-".into()
                } else {
                    remaining.to_string()
                },
                elapsed,
            ]);
        }
        s
    }

    /// TLS: handshakes and failures per second over the live workers, and each
    /// certificate's expiry. Empty without TLS.
    pub fn tls(&self) -> Section {
        let mut s = Section {
            title: "tls".into(),
            header: vec!["LISTEN", "CERTIFICATE", "SUBJECT", "EXPIRES", "DAYS LEFT"],
            rows: Vec::new(),
        };
        let Some((at, r)) = &self.cur else { return s };
        if r.certificates.is_empty() {
            return s;
        }
        let now = sum_tls(r);
        let (hs, fail) = match &self.prev {
            Some((t, p)) if at.saturating_duration_since(*t) > Duration::ZERO => {
                let dt = at.saturating_duration_since(*t).as_secs_f64();
                let before = sum_tls(p);
                (
                    (now.full + now.resumed).saturating_sub(before.full + before.resumed) as f64
                        / dt,
                    failures(&now).saturating_sub(failures(&before)) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        };
        s.title = format!(
            "tls: {hs:.0} handshakes/s, {fail:.0} failed/s; {} full, {} resumed, {} failed in all (live workers)",
            now.full,
            now.resumed,
            failures(&now)
        );
        for c in &r.certificates {
            s.rows.push(vec![
                c.listen.clone(),
                c.file.clone(),
                c.subject.clone(),
                c.expires.clone(),
                c.days_left.to_string(),
            ]);
        }
        s
    }

    /// `--once`: every section as aligned plain text.
    pub fn text(&self) -> String {
        let mut out = self.headline();
        out.push('\n');
        for s in [self.workers(), self.generations(), self.tls()] {
            if s.rows.is_empty() && s.title != "generations" {
                continue;
            }
            out.push('\n');
            out.push_str(&s.title);
            out.push('\n');
            out.push_str(&aligned(&s));
        }
        out.push_str("\nevents\n");
        let mut any = false;
        for e in self.events() {
            out.push_str(e);
            out.push('\n');
            any = true;
        }
        if !any {
            out.push_str("(none since the first poll)\n");
        }
        out
    }
}

fn sum_tls(r: &Response) -> TlsCounts {
    let mut t = TlsCounts::default();
    for w in &r.workers {
        t.add(&w.tls);
    }
    t
}

fn failures(t: &TlsCounts) -> u64 {
    Failure::ALL.iter().map(|f| t.failures(*f)).sum()
}

/// Column widths: the widest cell or header of each column.
pub fn widths(s: &Section) -> Vec<usize> {
    let mut w: Vec<usize> = s.header.iter().map(|h| h.len()).collect();
    for r in &s.rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    w
}

fn aligned(s: &Section) -> String {
    let w = widths(s);
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<width$}  ", width = w[i]));
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(s.header.clone());
    for r in &s.rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// What changed between two answers, as the events an operator wants to see.
fn events(old: &Response, new: &Response) -> Vec<String> {
    let mut out = Vec::new();
    if old.master_pid != new.master_pid {
        out.push(format!(
            "upgrade: master {} replaced by master {} (generation {})",
            old.master_pid, new.master_pid, new.generation
        ));
    } else if new.generation != old.generation {
        out.push(format!(
            "reload: generation {} serving (was {})",
            new.generation, old.generation
        ));
    }
    if old.master_pid == new.master_pid && old.message != new.message {
        out.push(format!("master: {}", new.message));
    }
    for g in &new.generations {
        let before = old
            .generations
            .iter()
            .find(|o| o.generation == g.generation);
        if before.is_some_and(|b| b.state == g.state) {
            continue;
        }
        match g.state.as_str() {
            "draining" => out.push(format!("generation {} draining", g.generation)),
            "gone" => out.push(format!(
                "generation {} gone after {} ms: moved {}, kept {}, closed {}",
                g.generation,
                g.exit_ms.unwrap_or(0),
                g.moved,
                g.kept,
                g.closed
            )),
            _ => {}
        }
    }
    if old.master_pid != new.master_pid {
        return out;
    }
    for w in &new.workers {
        let same_slot = old
            .workers
            .iter()
            .find(|o| o.slot == w.slot && o.generation == w.generation);
        let Some(o) = same_slot else { continue };
        if o.pid != w.pid || w.restarts > o.restarts {
            out.push(format!(
                "respawn: slot {} pid {} replaced by {} (restarts {}; last exit: {})",
                w.slot,
                o.pid,
                w.pid,
                w.restarts,
                w.last_exit.as_deref().unwrap_or("-")
            ));
        } else if w.last_exit != o.last_exit && w.last_exit.is_some() && o.last_exit.is_none() {
            out.push(format!(
                "fault: slot {} last exit {}",
                w.slot,
                w.last_exit.as_deref().unwrap_or("-")
            ));
        }
        if w.proxy_header_failed > o.proxy_header_failed && o.pid == w.pid {
            out.push(format!(
                "refused: pid {} closed {} connection(s) for a bad PROXY header",
                w.pid,
                w.proxy_header_failed - o.proxy_header_failed
            ));
        }
        if o.pid == w.pid && failures(&w.tls) > failures(&o.tls) {
            out.push(format!(
                "refused: pid {} failed {} TLS handshake(s)",
                w.pid,
                failures(&w.tls) - failures(&o.tls)
            ));
        }
    }
    out
}

/// A byte count (or rate) for the eye: B, KiB, MiB, GiB.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// HH:MM:SS (UTC) for an event's time stamp.
pub fn clock(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pid: i32, slot: usize, gen: u64, acc: u64) -> WorkerStatus {
        WorkerStatus {
            pid,
            slot,
            generation: gen,
            state: "ready".into(),
            uptime_secs: 1.0,
            connections: 3,
            accepted: acc,
            adopted: 0,
            bytes_in: acc * 100,
            bytes_out: acc * 200,
            rss: 4 << 20,
            restarts: 0,
            last_exit: None,
            log_dropped: 0,
            proxy_header_failed: 0,
            tls: TlsCounts::default(),
            push: Default::default(),
        }
    }

    fn resp(gen: u64, workers: Vec<WorkerStatus>) -> Response {
        Response {
            ok: true,
            message: "running".into(),
            master_pid: 10,
            generation: gen,
            workers,
            fault: None,
            generations: Vec::new(),
            moved_from_old_master: 0,
            certificates: Vec::new(),
        }
    }

    #[test]
    fn rates_come_from_deltas_and_respawns_and_reloads_are_events() {
        let mut m = Model::default();
        let t0 = Instant::now();
        m.update(resp(1, vec![worker(100, 0, 1, 10)]), t0);
        let mut w = worker(100, 0, 1, 30);
        w.connections = 5;
        m.update(resp(1, vec![w]), t0 + Duration::from_secs(2));
        let s = m.workers();
        assert_eq!(s.rows[0][5], "10", "20 accepted in 2 s: {:?}", s.rows);
        assert_eq!(s.rows[0][6], "1000B");
        let mut w = worker(101, 0, 1, 0);
        w.restarts = 1;
        w.last_exit = Some("killed by SIGKILL, 0s ago".into());
        m.update(resp(1, vec![w]), t0 + Duration::from_secs(3));
        m.update(
            resp(2, vec![worker(102, 0, 2, 0)]),
            t0 + Duration::from_secs(4),
        );
        let ev: Vec<&String> = m.events().collect();
        assert!(ev[0].contains("reload: generation 2 serving"), "{ev:?}");
        assert!(
            ev[1].contains("respawn: slot 0 pid 100 replaced by 101"),
            "{ev:?}"
        );
        assert!(m.text().contains("102"));
    }

    #[test]
    fn sorting_by_a_column_either_way() {
        let mut m = Model::default();
        m.update(
            resp(1, vec![worker(5, 0, 1, 0), worker(3, 1, 1, 0)]),
            Instant::now(),
        );
        m.sort = 1;
        assert_eq!(m.workers().rows[0][1], "3");
        m.reverse = true;
        assert_eq!(m.workers().rows[0][1], "5");
    }
}
