//! `push-load`: N subscribers of the push example (`examples/push.rs`) for
//! `bench/push.sh`. It opens `--conns` connections from one source address, sends
//! `SUB <topic>` and `PING` on each, writes the number subscribed to `--ready-file`
//! once every `PONG` arrived, then reads messages until `--stop-file` appears (it holds
//! the last sequence number published) and every connection has it, or the deadline.
//!
//! A message is a line `<seq> <unix ns when published> <padding>`; its delay is the
//! time it arrived here minus that. Per connection every number from 1 must arrive
//! once: a number again is a duplicate, one never received (up to the last published,
//! or for a connection closed, up to the last it got) is lost, one below a number
//! already received is reordered (not lost). Output (stdout, one JSON object):
//! connections, subscribed, closed, duplicates, lost (with up to 20 examples),
//! reordered, and the delay histograms (100 µs
//! buckets) of message 1, of all messages and of those in `--window A:B`, as sparse `[bucket, count]` pairs.
//!
//! Loopback only: it refuses any address outside 127.0.0.0/8.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral::os::epoll::{Epoll, Interest};

/// 100 µs buckets up to 30 s.
const BUCKETS: usize = 300_000;

struct Args {
    addr: SocketAddr,
    source: Option<IpAddr>,
    conns: usize,
    topic: String,
    rate: u64,
    deadline: Duration,
    /// How long after the last message was published (the stop file) a client waits
    /// for what it misses.
    grace: Duration,
    ready_file: PathBuf,
    stop_file: PathBuf,
    /// Sequence numbers (inclusive) whose delays also go to the `window` histogram.
    window: (u64, u64),
}

fn args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let mut m = BTreeMap::new();
    while let Some(k) = a.next() {
        let v = a.next().ok_or(format!("{k} needs a value"))?;
        m.insert(k, v);
    }
    let get = |k: &str| m.get(k).cloned().ok_or(format!("missing {k}"));
    let addr: SocketAddr = get("--addr")?.parse().map_err(|e| format!("--addr: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err("loopback addresses only".into());
    }
    let source = match m.get("--source") {
        Some(s) => Some(s.parse::<IpAddr>().map_err(|e| format!("--source: {e}"))?),
        None => None,
    };
    if source.is_some_and(|s| !s.is_loopback()) {
        return Err("loopback sources only".into());
    }
    Ok(Args {
        addr,
        source,
        conns: get("--conns")?
            .parse()
            .map_err(|e| format!("--conns: {e}"))?,
        topic: get("--topic")?,
        rate: m
            .get("--connect-rate")
            .map_or(Ok(5000), |r| r.parse())
            .map_err(|e| format!("{e}"))?,
        deadline: Duration::from_secs(
            get("--deadline")?
                .parse()
                .map_err(|e| format!("--deadline: {e}"))?,
        ),
        grace: Duration::from_secs(
            m.get("--grace")
                .map_or(Ok(20), |g| g.parse())
                .map_err(|e| format!("--grace: {e}"))?,
        ),
        ready_file: get("--ready-file")?.into(),
        stop_file: get("--stop-file")?.into(),
        window: match m.get("--window").and_then(|w| w.split_once(':')) {
            Some((a, b)) => (
                a.parse().map_err(|e| format!("--window: {e}"))?,
                b.parse().map_err(|e| format!("--window: {e}"))?,
            ),
            None => (0, 0),
        },
    })
}

struct Conn {
    sock: socket2::Socket,
    partial: Vec<u8>,
    subscribed: bool,
    sent: bool,
    last: u64,
    closed: bool,
    /// Sequence numbers received (bit `seq`): a loss is a number never received, a
    /// duplicate one received twice; arriving below `last` is only a reorder.
    seen: Vec<u64>,
}

impl Conn {
    fn has(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
    fn mark(&mut self, seq: u64) {
        let i = (seq / 64) as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, 0);
        }
        self.seen[i] |= 1 << (seq % 64);
    }
    /// Numbers in 1..=upto never received.
    fn missing(&self, upto: u64) -> impl Iterator<Item = u64> + '_ {
        (1..=upto).filter(|&s| !self.has(s))
    }
}

#[derive(Default)]
struct Tally {
    subscribed: usize,
    closed: usize,
    dup: u64,
    reordered: u64,
    deliveries: u64,
    first: Vec<u32>,
    all: Vec<u32>,
    window: Vec<u32>,
    window_range: (u64, u64),
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn line(c: &mut Conn, l: &[u8], t: &mut Tally, now: u64) {
    if l == b"PONG" {
        if !c.subscribed {
            c.subscribed = true;
            t.subscribed += 1;
        }
        return;
    }
    let s = String::from_utf8_lossy(l);
    let mut w = s.split(' ');
    let (Some(seq), Some(at)) = (w.next(), w.next()) else {
        return;
    };
    let (Ok(seq), Ok(at)) = (seq.parse::<u64>(), at.parse::<u64>()) else {
        return;
    };
    t.deliveries += 1;
    if seq > (1 << 20) {
        return; // not a bench sequence number
    }
    if c.has(seq) {
        t.dup += 1;
        return;
    }
    c.mark(seq);
    if seq < c.last {
        t.reordered += 1;
    }
    c.last = c.last.max(seq);
    let b = (now.saturating_sub(at) / 100_000).min(BUCKETS as u64 - 1) as usize;
    t.all[b] += 1;
    if seq == 1 {
        t.first[b] += 1;
    }
    if (t.window_range.0..=t.window_range.1).contains(&seq) {
        t.window[b] += 1;
    }
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("push-load: {e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let mut epoll = Epoll::new(1024).expect("epoll");
    let interest = Interest {
        read: true,
        write: true,
        edge: true,
        exclusive: false,
    };
    let mut conns: Vec<Conn> = Vec::with_capacity(a.conns);
    let mut t = Tally {
        first: vec![0; BUCKETS],
        all: vec![0; BUCKETS],
        window: vec![0; BUCKETS],
        window_range: a.window,
        ..Tally::default()
    };
    let sub = format!("SUB {}\nPING\n", a.topic);
    let mut buf = vec![0u8; 64 << 10];
    let mut ready_written = false;
    let mut expect: Option<u64> = None;
    let mut stop_seen: Option<Instant> = None;
    let mut errors = 0usize;
    let ended;
    loop {
        // Open more, at the connect rate.
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as usize).min(a.conns);
        while conns.len() < due {
            match corral::os::client::connect_from(a.addr, a.source, true) {
                Ok(sock) => {
                    let token = conns.len() as u64;
                    if epoll.add(sock.as_fd(), interest, token).is_err() {
                        errors += 1;
                    }
                    conns.push(Conn {
                        sock,
                        partial: Vec::new(),
                        subscribed: false,
                        sent: false,
                        last: 0,
                        closed: false,
                        seen: Vec::new(),
                    });
                }
                Err(e) => {
                    errors += 1;
                    if errors < 5 {
                        eprintln!("push-load: connect: {e}");
                    }
                    break;
                }
            }
        }
        let evs: Vec<(u64, bool, bool, bool)> = match epoll.wait(Some(Duration::from_millis(20))) {
            Ok(evs) => evs
                .map(|e| (e.token, e.readable, e.writable, e.hangup))
                .collect(),
            Err(_) => Vec::new(),
        };
        for (token, readable, writable, hangup) in evs {
            let Some(c) = conns.get_mut(token as usize) else {
                continue;
            };
            if c.closed {
                continue;
            }
            if writable && !c.sent {
                c.sent = (&c.sock).write_all(sub.as_bytes()).is_ok();
            }
            if readable || hangup {
                loop {
                    match (&c.sock).read(&mut buf) {
                        Ok(0) => {
                            c.closed = true;
                            t.closed += 1;
                            break;
                        }
                        Ok(n) => {
                            let now = now_ns();
                            let mut data = std::mem::take(&mut c.partial);
                            data.extend_from_slice(&buf[..n]);
                            let mut used = 0;
                            while let Some(e) = data[used..].iter().position(|&b| b == b'\n') {
                                line(c, &data[used..used + e], &mut t, now);
                                used += e + 1;
                            }
                            c.partial = data[used..].to_vec();
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            c.closed = true;
                            t.closed += 1;
                            break;
                        }
                    }
                }
            }
        }
        // Ready once every connection is subscribed or was closed first (a worker
        // killed during the connect phase: counted in `closed`, not waited for).
        let settled = conns.iter().filter(|c| c.closed && !c.subscribed).count();
        if !ready_written && conns.len() == a.conns && t.subscribed + settled == a.conns {
            let _ = std::fs::write(&a.ready_file, format!("{}\n", t.subscribed));
            ready_written = true;
        }
        if expect.is_none() {
            expect = std::fs::read_to_string(&a.stop_file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        if expect.is_some() && stop_seen.is_none() {
            stop_seen = Some(Instant::now());
        }
        let done = expect.is_some_and(|n| {
            conns
                .iter()
                .all(|c| c.closed || c.missing(n).next().is_none())
        });
        // Messages that were dropped never come: stragglers get the grace after the end.
        let late = stop_seen.is_some_and(|t| t.elapsed() > a.grace);
        if done || late || start.elapsed() > a.deadline {
            ended = if done {
                "all received"
            } else if late {
                "grace over"
            } else {
                "deadline"
            };
            break;
        }
    }
    let n = expect.unwrap_or(0);
    // Lost: numbers never received, up to the last published for a connection still
    // open, up to the last it got for one closed (what came after was not owed to it).
    // A few examples go to the output, to tell a mechanism from another.
    let mut lost = 0u64;
    let mut examples = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        let upto = if c.closed { c.last } else { n.max(c.last) };
        let miss: Vec<u64> = c.missing(upto).collect();
        lost += miss.len() as u64;
        if !miss.is_empty() && examples.len() < 20 {
            examples.push(serde_json::json!({
                "conn": i, "closed": c.closed, "last": c.last,
                "missing": miss.iter().take(16).collect::<Vec<_>>(),
            }));
        }
    }
    let sparse = |h: &[u32]| -> Vec<(usize, u32)> {
        h.iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i, c))
            .collect()
    };
    let out = serde_json::json!({
        "conns": conns.len(),
        "subscribed": t.subscribed,
        "closed": t.closed,
        "connect_errors": errors,
        "deliveries": t.deliveries,
        "dup": t.dup,
        "lost": lost,
        "reordered": t.reordered,
        "lost_examples": examples,
        "expected": n,
        "ended": ended,
        "first": sparse(&t.first),
        "all": sparse(&t.all),
        "window": sparse(&t.window),
    });
    println!("{out}");
}
