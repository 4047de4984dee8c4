//! The `Service` API: what runs on a connection inside a worker's event loop.
//!
//! A service makes one [`Handler`] per accepted connection. The loop owns the socket,
//! the buffers and the flow control; a handler only sees bytes that arrived and writes
//! bytes to send, through [`Io`]. Handlers never block and never touch the fd, so the
//! loop can enforce budgets, water marks and timeouts uniformly for every service.
//! Blocking work goes to the worker's pool with [`Io::spawn_blocking`]; timeouts use
//! [`Io::set_timer`]. A forwarding service (a TCP proxy) returns [`Upstreams`] instead
//! and the loop moves the bytes.
//!
//! A program with its own service registers it and runs corral's command line:
//!
//! ```no_run
//! use corral::config::ListenConfig;
//! use corral::service::{register, Handler, Io, Service};
//!
//! /// Answers every line with its length.
//! struct LineLength;
//! struct Conn;
//!
//! impl Service for LineLength {
//!     fn connect(&mut self, _peer: Option<std::net::IpAddr>) -> Box<dyn Handler> {
//!         Box::new(Conn)
//!     }
//! }
//!
//! impl Handler for Conn {
//!     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
//!         let mut used = 0;
//!         while let Some(n) = data[used..].iter().position(|&b| b == b'\n') {
//!             io.write(format!("{n}\n").as_bytes());
//!             used += n + 1;
//!         }
//!         used // a partial line stays buffered for the next call
//!     }
//!     fn is_idle(&self) -> bool {
//!         true // nothing in flight between lines: reloads may hand it over
//!     }
//! }
//!
//! fn main() {
//!     register("linelength", |_: &ListenConfig| Box::new(LineLength));
//!     // `[[listen]] service = "linelength"` now works in the config.
//!     std::process::exit(corral::app::main());
//! }
//! ```
//!
//! `examples/kv.rs` is a complete key/value server built this way.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::{Mutex, OnceLock};

use crate::config::ListenConfig;

pub mod echo;
pub mod http;
pub mod metrics;
pub mod proxy;

/// Work for the worker's blocking pool: runs on a pool thread; its result comes back
/// to the connection's handler in [`Handler::on_complete`], on the loop thread.
pub type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// What a handler may do to its connection while handling an event.
pub struct Io<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut bool,
    pub(crate) shutdown_write: &'a mut bool,
    pub(crate) timer: &'a mut Option<Instant>,
    pub(crate) jobs: &'a mut Vec<Job>,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) draining: bool,
    pub(crate) held: bool,
}

impl Io<'_> {
    /// Queues bytes for the client. The loop writes them as the socket allows and stops
    /// reading from a client whose queued output passes the high water mark.
    pub fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Closes the connection once everything queued has been sent and every job from
    /// [`Io::spawn_blocking`] has completed (and whatever its `on_complete` queued has
    /// been sent). Nothing more is read meanwhile.
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// Sends FIN once everything queued has been sent, but keeps reading (half-close).
    pub fn shutdown_write(&mut self) {
        *self.shutdown_write = true;
    }

    /// The client's IP address (None for Unix-socket clients).
    pub fn peer(&self) -> Option<IpAddr> {
        self.peer
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// The worker is draining (reload, upgrade, stop): finish what is in progress and
    /// do not invite more — an HTTP service answers with `Connection: close`.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The loop is not reading from this client because it is not reading its replies
    /// (queued output above the high water mark). A timeout that measures how slowly
    /// the client sends should not count this time: the loop calls
    /// [`Handler::on_resume`] when it reads again.
    pub fn input_held(&self) -> bool {
        self.held
    }

    /// Calls [`Handler::on_timer`] after `after` (replacing any earlier request).
    pub fn set_timer(&mut self, after: Duration) {
        *self.timer = Some(Instant::now() + after);
    }

    /// Cancels the timer.
    pub fn clear_timer(&mut self) {
        *self.timer = None;
    }

    /// Runs `job` on the worker's blocking pool (threads started after fork, on first
    /// use) and hands its result to [`Handler::on_complete`]. The event loop never
    /// waits for it; if the connection is gone by then, the result is dropped.
    pub fn spawn_blocking<F, R>(&mut self, job: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: Any + Send,
    {
        self.jobs
            .push(Box::new(move || Box::new(job()) as Box<dyn Any + Send>));
    }
}

/// One connection's protocol logic.
pub trait Handler {
    /// Bytes arrived. `data` holds what earlier calls left unconsumed followed by the
    /// new bytes; return how many were consumed (the rest is kept for the next call).
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize;

    /// The client half-closed (sent FIN). By default the connection closes once it
    /// has given the client everything it owes: queued output is flushed and every
    /// job from [`Io::spawn_blocking`] has completed (their `on_complete` may write
    /// more, which is flushed too). [`Io::close`] always waits for both.
    fn on_eof(&mut self, io: &mut Io<'_>) {
        io.close();
    }

    /// The loop reads from the client again after holding it back for its unread
    /// output (see [`Io::input_held`]). By default nothing happens.
    fn on_resume(&mut self, _io: &mut Io<'_>) {}

    /// The timer set with [`Io::set_timer`] expired. By default the connection closes.
    fn on_timer(&mut self, io: &mut Io<'_>) {
        io.close();
    }

    /// A job from [`Io::spawn_blocking`] finished.
    fn on_complete(&mut self, _io: &mut Io<'_>, _result: Box<dyn Any + Send>) {}

    /// True when closing the connection now loses nothing (e.g. HTTP keep-alive
    /// between requests). Draining workers hand such connections to the new
    /// generation on reload, or close them on stop; they wait for the others. By
    /// default a connection is never idle.
    fn is_idle(&self) -> bool {
        false
    }
}

/// A protocol: makes handlers for the connections of one listener.
pub trait Service {
    /// A client connected.
    fn connect(&mut self, peer: Option<IpAddr>) -> Box<dyn Handler>;

    /// A forwarding service (a TCP proxy) returns its upstream choice here: the loop
    /// then connects each client to an upstream and moves the bytes both ways itself,
    /// and the handler from `connect` never sees data.
    fn upstreams(&mut self) -> Option<&mut dyn Upstreams> {
        None
    }
}

/// Where a forwarding service sends connections, and what it learns from attempts.
pub trait Upstreams {
    /// The next upstream to try for a new connection, skipping those already `tried`
    /// for it; None when there is nothing left to try.
    fn pick(&mut self, tried: &[usize], now: Instant) -> Option<(usize, SocketAddr)>;
    /// A connection to upstream `index` was established.
    fn connected(&mut self, index: usize);
    /// Connecting to upstream `index` failed (refused, unreachable, timed out).
    fn failed(&mut self, index: usize, now: Instant);
    /// An established connection to upstream `index` closed.
    fn released(&mut self, index: usize);
    /// How long a connect may take before the next upstream is tried.
    fn connect_timeout(&self) -> Duration;
}

/// Makes the service for one listener (called in each worker, after fork).
pub type Factory = fn(&ListenConfig) -> Box<dyn Service>;

fn registry() -> &'static Mutex<Vec<(String, Factory)>> {
    static REGISTRY: OnceLock<Mutex<Vec<(String, Factory)>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(vec![
            (
                "echo".to_string(),
                (|_: &ListenConfig| Box::new(echo::Echo) as Box<dyn Service>) as Factory,
            ),
            (
                "http".to_string(),
                (|l: &ListenConfig| Box::new(http::Http::new(l)) as Box<dyn Service>) as Factory,
            ),
            (
                "metrics".to_string(),
                (|_: &ListenConfig| Box::new(metrics::Metrics) as Box<dyn Service>) as Factory,
            ),
            (
                "proxy".to_string(),
                (|l: &ListenConfig| Box::new(proxy::Proxy::new(l)) as Box<dyn Service>) as Factory,
            ),
        ])
    })
}

/// Makes `service = "name"` available in `[[listen]]` entries. Call it before
/// [`crate::app::main`], so that config checks and workers know the name.
pub fn register(name: &str, factory: Factory) {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.retain(|(n, _)| n != name);
    r.push((name.to_string(), factory));
}

/// True if a service of that name exists.
pub fn is_known(name: &str) -> bool {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(n, _)| n == name)
}

/// The names of every service, for error messages.
pub fn known() -> Vec<String> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(n, _)| n.clone())
        .collect()
}

/// The service configured for a listener. The config was validated, so the name is
/// known; an unknown one (a bug) falls back to echo rather than failing a worker.
pub fn make(listen: &ListenConfig) -> Box<dyn Service> {
    let factory = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(n, _)| *n == listen.service)
        .map(|(_, f)| *f);
    match factory {
        Some(f) => f(listen),
        None => Box::new(echo::Echo),
    }
}
