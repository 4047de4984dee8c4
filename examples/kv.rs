//! A line-based key/value server written against corral's `Service` API and run by
//! the very same master as the built-in services: reloads, upgrades, crash
//! supervision and flow control come for free.
//!
//! ```text
//! cargo run --example kv -- -c examples/kv.toml
//! printf 'SET colour blue\nGET colour\nSLEEP 50\nQUIT\n' | nc 127.0.0.1 7171
//! ```
//!
//! Protocol, one command per line: `SET key value` (`ERROR store full` past
//! `max_keys`), `GET key`, `DEL key`, `KEYS`,
//! `SLEEP ms` (runs on the worker's blocking pool, so the event loop keeps serving
//! everyone else meanwhile), `COUNT` (how many commands this connection has sent),
//! `PEER` (the client's address and port, as `Io::peer` gives them),
//! `QUIT`. Each worker keeps its own map: workers share nothing (run one worker if
//! clients must see each other's keys).
//!
//! It takes a key of its own in its `[[listen]]` table, declared as a serde struct
//! ([`KvOptions`]) and named with `Runtime::service_with`, so corral
//! checks it at start, `-t` and reload like its own keys, and refuses any other:
//!
//! ```toml
//! [[listen]]
//! address = "127.0.0.1:7171"
//! service = "kv"
//! max_keys = 1000  # a SET of a new key beyond this many is refused; unset: no limit
//! state_version = 1  # the suspended state's format version; raise it to play a new
//!                    # build whose format changed (old connections are then refused
//!                    # by the new workers and served to the end by the old ones)
//! ```
//!
//! Connections survive reloads: between commands a connection suspends with its
//! state (the command count, format version 1) and the new worker resumes it. With
//! `CORRAL_KV_SUSPEND=off` in the environment a connection never suspends nor says it
//! is idle, like a service that keeps its connections: reloads then keep corral's
//! drain behaviour (it stays in the old worker until it ends or `drain_timeout` cuts
//! it).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use corral::config::OptionError;
use corral::serde::{Deserialize, Serialize};
use corral::service::{Handler, Io, ResumeError, Service, ServiceOptions, Suspended};

/// The longest line accepted, in bytes, not counting its line end (`\n` or `\r\n`);
/// a client sending more is told so and disconnected. The limit is exact however the
/// line is split into packets: a line is measured, not the read that brought it.
const MAX_LINE: usize = 4096;
/// A connection that sends half a line and then nothing is closed after this.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// The format of a suspended connection's state: its command count, 8 bytes LE.
/// `state_version` may number it otherwise (see `KvOptions`).
pub(crate) const STATE_VERSION: u32 = 1;

/// The keys a `[[listen]] service = "kv"` table may set besides the common ones.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(crate = "corral::serde", deny_unknown_fields)]
struct KvOptions {
    /// Most keys one worker's store holds; a SET of a new key beyond it gets an
    /// `ERROR` reply (overwriting an existing key still works). Unset: no limit.
    #[serde(default)]
    max_keys: Option<usize>,
    /// The version this build's suspended state is written in, and the only one it
    /// resumes (default 1). Raising it at a reload or an upgrade plays a new build
    /// whose state format changed: its workers refuse the old connections' state, and
    /// those are served to the end by the old workers that suspended them.
    #[serde(default)]
    state_version: Option<u32>,
}

impl ServiceOptions for KvOptions {
    fn check(&mut self) -> Result<(), OptionError> {
        match self.max_keys {
            Some(0) => Err(OptionError::new(
                "max_keys",
                "must be at least 1 (leave it unset for no limit)",
            )),
            _ if self.state_version == Some(0) => Err(OptionError::new(
                "state_version",
                "must be at least 1 (leave it unset for 1)",
            )),
            _ => Ok(()),
        }
    }
}

/// One worker's store, shared by its connections (the loop is single-threaded, so
/// `Rc<RefCell<…>>` is all the sharing needed).
type Store = Rc<RefCell<BTreeMap<String, String>>>;

struct Kv {
    store: Store,
    max_keys: Option<usize>,
    /// Connections may suspend or say they are idle (move at reload); off with
    /// `CORRAL_KV_SUSPEND=off`.
    suspend: bool,
    /// The suspended state's format version (`state_version`).
    version: u32,
}

struct KvConn {
    store: Store,
    max_keys: Option<usize>,
    /// A SLEEP is running on the pool: replies wait for it, to keep them in order.
    busy: bool,
    /// Lines that arrived while busy; `None` stands for a line that was too long,
    /// answered (and the connection closed) in its turn.
    queued: Vec<Option<String>>,
    /// A line was too long, or the client said QUIT: nothing after it is run.
    refused: bool,
    /// Commands this connection sent: its state across reloads.
    commands: u64,
    suspend: bool,
    version: u32,
}

impl Kv {
    fn conn(&self, commands: u64) -> KvConn {
        KvConn {
            store: self.store.clone(),
            max_keys: self.max_keys,
            busy: false,
            queued: Vec::new(),
            refused: false,
            commands,
            suspend: self.suspend,
            version: self.version,
        }
    }
}

impl Service for Kv {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(self.conn(0))
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        if version != self.version {
            return Err(ResumeError::Version(version));
        }
        let count = <[u8; 8]>::try_from(state)
            .map_err(|_| ResumeError::Invalid(format!("{} bytes, not 8", state.len())))?;
        Ok(Box::new(self.conn(u64::from_le_bytes(count))))
    }
}

impl KvConn {
    fn command(&mut self, io: &mut Io<'_>, line: &str) {
        self.commands += 1;
        let mut parts = line.splitn(3, ' ');
        let reply = match (parts.next(), parts.next(), parts.next()) {
            (Some("SET"), Some(k), Some(v)) => {
                let mut store = self.store.borrow_mut();
                match self.max_keys {
                    Some(max) if store.len() >= max && !store.contains_key(k) => {
                        format!("ERROR store full: max_keys is {max}")
                    }
                    _ => {
                        store.insert(k.to_string(), v.to_string());
                        "OK".to_string()
                    }
                }
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
                    // Blocking work goes to the pool; its result comes back to `slept`.
                    self.busy = true;
                    io.spawn_blocking(
                        move || {
                            std::thread::sleep(Duration::from_millis(ms));
                            ms
                        },
                        KvConn::slept,
                    );
                    return;
                }
                _ => "ERROR SLEEP takes 0 to 10000 milliseconds".to_string(),
            },
            (Some("COUNT"), None, None) => format!("COUNT {}", self.commands),
            (Some("PEER"), None, None) => match io.peer() {
                Some(addr) => format!("PEER {addr}"),
                None => "PEER unix".to_string(),
            },
            (Some("QUIT"), None, None) => {
                io.write(b"BYE\n");
                io.close();
                // Nothing after QUIT runs, queued or still to come.
                self.refused = true;
                self.queued.clear();
                return;
            }
            _ => format!("ERROR unknown command: {line}"),
        };
        io.write(reply.as_bytes());
        io.write(b"\n");
    }

    fn run_queued(&mut self, io: &mut Io<'_>) {
        while !self.busy && !self.queued.is_empty() {
            match self.queued.remove(0) {
                Some(line) => self.command(io, &line),
                None => self.too_long(io),
            }
        }
    }

    /// A line (or what has arrived of one) is over the limit: everything before it is
    /// answered first, then the refusal, then the connection closes.
    fn refuse(&mut self, io: &mut Io<'_>) {
        self.refused = true;
        io.clear_timer();
        if self.busy {
            self.queued.push(None);
        } else {
            self.too_long(io);
        }
    }

    /// The refusal arrives although the client may still be sending the rest of the
    /// line: `close` sends it, then FIN, and reads until the client closes too.
    fn too_long(&mut self, io: &mut Io<'_>) {
        io.write(format!("ERROR line too long: more than {MAX_LINE} bytes; closing\n").as_bytes());
        io.close();
    }

    /// A SLEEP finished on the pool: its reply, then the lines that waited for it.
    fn slept(&mut self, io: &mut Io<'_>, ms: u64) {
        self.busy = false;
        io.write(format!("SLEPT {ms}\n").as_bytes());
        self.run_queued(io);
    }
}

/// A line's length without its line end: `raw` is what precedes the `\n`.
fn line_len(raw: &[u8]) -> usize {
    raw.strip_suffix(b"\r").unwrap_or(raw).len()
}

impl Handler for KvConn {
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
        if self.refused {
            return data.len();
        }
        let mut used = 0;
        while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
            let raw = &data[used..used + end];
            used += end + 1;
            if line_len(raw) > MAX_LINE {
                self.refuse(io);
                return data.len();
            }
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches('\r').to_string();
            if self.busy {
                self.queued.push(Some(line));
            } else {
                self.command(io, &line);
                if self.refused {
                    return data.len();
                }
            }
        }
        // Half a line: already too long if it has more than MAX_LINE bytes, not
        // counting one trailing `\r` (it may be the start of the line end).
        if line_len(&data[used..]) > MAX_LINE {
            self.refuse(io);
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

    fn is_idle(&self) -> bool {
        self.suspend && !self.busy && self.queued.is_empty() && !self.refused
    }

    /// Between commands the whole state is the count (a half line travels as
    /// unconsumed input, its timeout as the handler's timer).
    fn suspend(&mut self) -> Option<Suspended> {
        self.is_idle()
            .then(|| Suspended::new(self.version, self.commands.to_le_bytes().to_vec()))
    }
}

/// A kv service with an empty store; `suspend` says whether its connections move at
/// reload. (Also how the fuzz target `state_kv` and `tests/fuzz_kv_state.rs`, which
/// include this file, build one.)
pub(crate) fn new_service(
    max_keys: Option<usize>,
    version: u32,
    suspend: bool,
) -> Box<dyn Service> {
    Box::new(Kv {
        store: Rc::new(RefCell::new(BTreeMap::new())),
        max_keys,
        version,
        suspend,
    })
}

fn main() -> std::process::ExitCode {
    // Read once, in the master, before it forks: every worker's factory sees it.
    let suspend = std::env::var("CORRAL_KV_SUSPEND").as_deref() != Ok("off");
    // `runtime!` names the program after this binary: `kv --version` says kv.
    corral::runtime!()
        .service_with("kv", move |o: &KvOptions, _listen| {
            new_service(
                o.max_keys,
                o.state_version.unwrap_or(STATE_VERSION),
                suspend,
            )
        })
        .run()
}
