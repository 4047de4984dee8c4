//! Helpers for the recycling, rolling-reload and steering tests: a bounded load of
//! short echo connections that counts every failure, a poller of `corral status`
//! that records which slots had two workers at once, and a map from a server-side
//! connection to the worker that holds it for any loopback client address.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{socket_inodes, Corral, StatusWorker};

/// A bounded load of short connections (connect, echo one line, close).
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// One short echo connection; an error says what went wrong.
pub fn one_echo(addr: SocketAddr, n: u64) -> Result<(), String> {
    let t = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    let msg = format!("ping {n}\n");
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != msg.as_bytes() {
        return Err(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    Ok(())
}

impl Load {
    /// `threads` clients, each making at most `per_thread` connections, for at most
    /// `max_time`.
    pub fn start(addr: SocketAddr, threads: usize, per_thread: u64, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let end = Instant::now() + max_time;
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                std::thread::spawn(move || {
                    for n in 0..per_thread {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= end {
                            break;
                        }
                        match one_echo(addr, n) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                let mut v = errors.lock().unwrap_or_else(|e| e.into_inner());
                                if v.len() < 10 {
                                    v.push(e);
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            threads,
        }
    }

    pub fn done(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Stops the clients; returns (succeeded, failed, some errors).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What polling `corral status --json` saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub polls: usize,
    /// Most slots that had more than one worker in one poll.
    pub max_busy_slots: usize,
    /// Most live workers seen at once (from /proc, set by the caller).
    pub max_alive: usize,
    /// Each pid's worker: slot, generation, first and last time seen, and the
    /// largest `accepted` it reported.
    pub workers: HashMap<i32, SeenWorker>,
}

// `generation` is read through `Debug`, in a failing test's message.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct SeenWorker {
    pub slot: u64,
    pub generation: u64,
    pub first: Instant,
    pub last: Instant,
    pub accepted: u64,
}

/// `status --json`: each worker with the `accepted` count it reported.
fn status_accepted(c: &Corral) -> Vec<(StatusWorker, u64)> {
    let out = c.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}\n{}", out.stdout, out.stderr));
    v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status without workers: {v}"))
        .iter()
        .map(|w| {
            let sw = StatusWorker {
                pid: w["pid"].as_i64().unwrap_or(0) as i32,
                slot: w["slot"].as_u64().unwrap_or(u64::MAX),
                generation: w["generation"].as_u64().unwrap_or(0),
                state: w["state"].as_str().unwrap_or("?").to_string(),
            };
            (sw, w["accepted"].as_u64().unwrap_or(0))
        })
        .collect()
}

impl Seen {
    /// Polls once.
    pub fn poll(&mut self, c: &Corral) {
        let ws = status_accepted(c);
        let now = Instant::now();
        self.polls += 1;
        let mut per_slot: HashMap<u64, usize> = HashMap::new();
        for (w, accepted) in &ws {
            *per_slot.entry(w.slot).or_default() += 1;
            let e = self.workers.entry(w.pid).or_insert(SeenWorker {
                slot: w.slot,
                generation: w.generation,
                first: now,
                last: now,
                accepted: 0,
            });
            e.last = now;
            e.accepted = e.accepted.max(*accepted);
        }
        let busy = per_slot.values().filter(|n| **n > 1).count();
        self.max_busy_slots = self.max_busy_slots.max(busy);
    }

    /// Pids seen in `slot`, in the order they appeared.
    pub fn slot_history(&self, slot: u64) -> Vec<(i32, SeenWorker)> {
        let mut v: Vec<(i32, SeenWorker)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.slot == slot)
            .map(|(p, w)| (*p, w.clone()))
            .collect();
        v.sort_by_key(|(_, w)| w.first);
        v
    }
}

/// Lines of the master's log that announce a recycle.
pub fn recycle_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("recycling worker"))
        .map(str::to_string)
        .collect()
}

/// The number after `word ` in `line` (e.g. `served 203 connections`).
pub fn number_after(line: &str, word: &str) -> Option<f64> {
    let i = line.find(word)? + word.len();
    let rest = line[i..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

/// A connection to `server` from the loopback address `from` (bound before connect).
pub fn connect_from(from: Ipv4Addr, server: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
    s.connect_timeout(&server.into(), Duration::from_secs(10))?;
    Ok(s.into())
}

/// `/proc/net/tcp` hex of an IPv4 address and port.
fn hex(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    }
}

/// Which of `pids` holds the server side of each of `conns` (any loopback client
/// address), by socket inode.
pub fn owners_any(conns: &[TcpStream], pids: &[i32]) -> Vec<Option<i32>> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut by_pair: HashMap<(String, String), u64> = HashMap::new();
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 {
            if let Ok(ino) = f[9].parse::<u64>() {
                if ino != 0 {
                    by_pair.insert((f[1].to_string(), f[2].to_string()), ino);
                }
            }
        }
    }
    let inodes: Vec<(i32, HashSet<u64>)> = pids.iter().map(|&p| (p, socket_inodes(p))).collect();
    conns
        .iter()
        .map(|s| {
            let (local, peer) = (s.local_addr().ok()?, s.peer_addr().ok()?);
            let ino = by_pair.get(&(hex(peer), hex(local)))?;
            inodes
                .iter()
                .find(|(_, set)| set.contains(ino))
                .map(|(p, _)| *p)
        })
        .collect()
}
