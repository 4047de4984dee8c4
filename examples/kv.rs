//! A line-based key/value server written against corral's `Service` API and run by
//! the very same master as the built-in services: reloads, upgrades, crash
//! supervision and flow control come for free.
//!
//! ```text
//! cargo run --example kv -- -c examples/kv.toml
//! printf 'SET colour blue\nGET colour\nSLEEP 50\nQUIT\n' | nc 127.0.0.1 7171
//! ```
//!
//! Protocol, one command per line: `SET key value`, `GET key`, `DEL key`, `KEYS`,
//! `SLEEP ms` (runs on the worker's blocking pool, so the event loop keeps serving
//! everyone else meanwhile), `QUIT`. Each worker keeps its own map: workers share
//! nothing (run one worker if clients must see each other's keys).

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use corral::config::ListenConfig;
use corral::service::{self, Handler, Io, Service};

/// The longest line accepted; a client sending more is told so and disconnected.
const MAX_LINE: usize = 4096;
/// A connection that sends half a line and then nothing is closed after this.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker's store, shared by its connections (the loop is single-threaded, so
/// `Rc<RefCell<…>>` is all the sharing needed).
type Store = Rc<RefCell<BTreeMap<String, String>>>;

struct Kv {
    store: Store,
}

struct KvConn {
    store: Store,
    /// A SLEEP is running on the pool: replies wait for it, to keep them in order.
    busy: bool,
    /// Lines that arrived while busy.
    queued: Vec<String>,
}

impl Service for Kv {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(KvConn {
            store: self.store.clone(),
            busy: false,
            queued: Vec::new(),
        })
    }
}

impl KvConn {
    fn command(&mut self, io: &mut Io<'_>, line: &str) {
        let mut parts = line.splitn(3, ' ');
        let reply = match (parts.next(), parts.next(), parts.next()) {
            (Some("SET"), Some(k), Some(v)) => {
                self.store.borrow_mut().insert(k.to_string(), v.to_string());
                "OK".to_string()
            }
            (Some("GET"), Some(k), None) => match self.store.borrow().get(k) {
                Some(v) => format!("VALUE {v}"),
                None => "NOT_FOUND".to_string(),
            },
            (Some("DEL"), Some(k), None) => match self.store.borrow_mut().remove(k) {
                Some(_) => "DELETED".to_string(),
                None => "NOT_FOUND".to_string(),
            },
            (Some("KEYS"), None, None) => {
                let keys: Vec<String> = self.store.borrow().keys().cloned().collect();
                format!("KEYS {}", keys.join(" "))
            }
            (Some("SLEEP"), Some(ms), None) => match ms.parse::<u64>() {
                Ok(ms) if ms <= 10_000 => {
                    // Blocking work goes to the pool; the result arrives in on_complete.
                    self.busy = true;
                    io.spawn_blocking(move || {
                        std::thread::sleep(Duration::from_millis(ms));
                        ms
                    });
                    return;
                }
                _ => "ERROR SLEEP takes 0 to 10000 milliseconds".to_string(),
            },
            (Some("QUIT"), None, None) => {
                io.write(b"BYE\n");
                io.close();
                return;
            }
            _ => format!("ERROR unknown command: {line}"),
        };
        io.write(reply.as_bytes());
        io.write(b"\n");
    }

    fn run_queued(&mut self, io: &mut Io<'_>) {
        while !self.busy && !self.queued.is_empty() {
            let line = self.queued.remove(0);
            self.command(io, &line);
        }
    }
}

impl Handler for KvConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&data[used..used + end]);
            let line = line.trim_end_matches('\r').to_string();
            used += end + 1;
            if self.busy {
                self.queued.push(line);
            } else {
                self.command(io, &line);
            }
        }
        if data.len() - used > MAX_LINE {
            io.write(b"ERROR line too long\n");
            io.close();
            return data.len();
        }
        // Half a line: give the client a while to finish it.
        if used < data.len() {
            io.set_timer(LINE_TIMEOUT);
        } else {
            io.clear_timer();
        }
        used
    }

    fn on_timer(&mut self, io: &mut Io<'_>) {
        io.write(b"ERROR line timeout\n");
        io.close();
    }

    fn on_complete(&mut self, io: &mut Io<'_>, result: Box<dyn Any + Send>) {
        self.busy = false;
        if let Ok(ms) = result.downcast::<u64>() {
            io.write(format!("SLEPT {ms}\n").as_bytes());
        }
        self.run_queued(io);
    }

    fn is_idle(&self) -> bool {
        !self.busy && self.queued.is_empty()
    }
}

fn main() {
    service::register("kv", |_: &ListenConfig| {
        Box::new(Kv {
            store: Rc::new(RefCell::new(BTreeMap::new())),
        })
    });
    std::process::exit(corral::app::main());
}
