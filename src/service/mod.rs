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
//!
//! # Keys of its own
//!
//! A `[[listen]]` table holds the keys common to every listener and those of its
//! service. A service declares its keys as a serde struct (`deny_unknown_fields`, so a
//! mistyped key is an error) implementing [`ServiceOptions`], and registers with
//! [`register_with_options`]; corral parses and checks them in the master at every
//! load (start, `-t`, `-T`, reload: errors name the file, `listen[i]` and the key), and
//! the factory reads the parsed value with [`options()`]:
//!
//! ```no_run
//! use corral::config::{ListenConfig, OptionError};
//! use corral::service::{options, register_with_options, ServiceOptions};
//! # use corral::service::{Handler, Io, Service};
//! # struct Greeter(String);
//! # impl Service for Greeter {
//! #     fn connect(&mut self, _: Option<std::net::IpAddr>) -> Box<dyn Handler> { unimplemented!() }
//! # }
//!
//! #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
//! #[serde(deny_unknown_fields)]
//! struct GreeterOptions {
//!     #[serde(default)]
//!     greeting: Option<String>,
//! }
//!
//! impl ServiceOptions for GreeterOptions {
//!     fn check(&mut self) -> Result<(), OptionError> {
//!         match &self.greeting {
//!             Some(g) if g.contains('\n') => Err(OptionError::new("greeting", "one line only")),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! fn main() {
//!     register_with_options::<GreeterOptions>("greeter", |l: &ListenConfig| {
//!         let o = options::<GreeterOptions>(l).cloned().unwrap_or_default();
//!         Box::new(Greeter(o.greeting.unwrap_or_else(|| "hello".into())))
//!     });
//!     std::process::exit(corral::app::main());
//! }
//! ```
//!
//! # Connections that move at reload
//!
//! On reload the old workers hand their connections to the new generation instead of
//! keeping them until they end: the client keeps its TCP connection and notices
//! nothing. A connection moves at a *quiescent point*: the loop has sent everything
//! the handler queued, no blocking job is outstanding, no close or half-close is
//! under way (and, for a proxy, neither direction holds a byte in corral). There the
//! loop asks [`Handler::suspend`]; a handler that can move answers with its state,
//! a version number for the state's format, and is dropped; the socket (for a proxy,
//! both sockets), the state, the input the handler left unconsumed, the idle clock
//! and the handler's timer travel to a worker of the new generation, whose service
//! rebuilds a handler with [`Service::resume`]. A handler that answers `None` is
//! asked again at its next quiescent point (after its next complete exchange), until
//! the drain timeout ends it.
//!
//! The contract for a custom service:
//! - `suspend` returns `None` while anything is in flight that the state does not
//!   describe, and otherwise everything the next handler needs, in at most
//!   [`MAX_STATE`] bytes (more is not moved: it stays and is asked again later). It
//!   may be asked again if the move cannot happen now, so it should not change what
//!   the handler does.
//! - `resume` reads the versions it knows and refuses the others: a refused
//!   connection goes back to the old worker, which resumes it with its own (older)
//!   code and serves it to the end under the drain rules. Bump the version when the
//!   format changes.
//! - A service that implements neither keeps today's behaviour: a handler that says
//!   [`Handler::is_idle`] moves with no state (the new worker calls `connect`); any
//!   other stays in the old worker until it ends or the drain timeout cuts it.
//!
//! ```
//! use corral::service::{Handler, Io, ResumeError, Service, Suspended};
//!
//! /// Counts the lines a client sent, across reloads.
//! struct Counter;
//! struct Conn {
//!     lines: u64,
//! }
//!
//! impl Service for Counter {
//!     fn connect(&mut self, _peer: Option<std::net::IpAddr>) -> Box<dyn Handler> {
//!         Box::new(Conn { lines: 0 })
//!     }
//!     fn resume(
//!         &mut self,
//!         _peer: Option<std::net::IpAddr>,
//!         state: &[u8],
//!         version: u32,
//!     ) -> Result<Box<dyn Handler>, ResumeError> {
//!         match (version, <[u8; 8]>::try_from(state)) {
//!             (1, Ok(b)) => Ok(Box::new(Conn { lines: u64::from_le_bytes(b) })),
//!             (1, Err(_)) => Err(ResumeError::Invalid("not 8 bytes".into())),
//!             (v, _) => Err(ResumeError::Version(v)),
//!         }
//!     }
//! }
//!
//! impl Handler for Conn {
//!     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
//!         let mut used = 0;
//!         while let Some(n) = data[used..].iter().position(|&b| b == b'\n') {
//!             self.lines += 1;
//!             io.write(format!("{}\n", self.lines).as_bytes());
//!             used += n + 1;
//!         }
//!         used // a partial line travels as unconsumed input
//!     }
//!     fn suspend(&mut self) -> Option<Suspended> {
//!         Some(Suspended::new(1, self.lines.to_le_bytes().to_vec()))
//!     }
//! }
//!
//! let mut service = Counter;
//! let mut conn = Conn { lines: 41 };
//! let s = conn.suspend().unwrap();
//! assert!(service.resume(None, &s.state, s.version).is_ok());
//! assert!(service.resume(None, &s.state, 2).is_err());
//! ```

use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::{Mutex, OnceLock};

use crate::config::ListenConfig;
pub use crate::tls::TlsInfo;

pub mod echo;
pub mod http;
pub mod metrics;
pub mod options;
pub mod proxy;
pub mod push;

use options::OptionsKind;
pub use options::{options, NoOptions, ServiceOptions};
pub use push::{ConnId, Overflow};

/// Work for the worker's blocking pool: runs on a pool thread; its result comes back
/// to the connection's handler in [`Handler::on_complete`], on the loop thread.
pub type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// What a handler may do to its connection while handling an event.
pub struct Io<'a> {
    pub(crate) tls: Option<&'a TlsInfo>,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut bool,
    pub(crate) shutdown_write: &'a mut bool,
    pub(crate) timer: &'a mut Option<Instant>,
    pub(crate) jobs: &'a mut Vec<Job>,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) draining: bool,
    pub(crate) held: bool,
    /// Writes to other connections, topics (see [`push`]); None outside a worker.
    pub(crate) push: Option<&'a mut push::Outbox>,
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

    /// On a TLS listener, what the handshake settled: SNI, ALPN, version, suite, the
    /// client's certificate. None on a plain listener. The service only ever sees
    /// plaintext, after the handshake: this is how it learns about it.
    ///
    /// ```
    /// use corral::service::{Handler, Io};
    ///
    /// /// Greets a client by the name it asked for.
    /// struct Hello;
    ///
    /// impl Handler for Hello {
    ///     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
    ///         let name = io
    ///             .tls()
    ///             .and_then(|t| t.sni.clone())
    ///             .unwrap_or_else(|| "plain".into());
    ///         io.write(format!("hello {name}\n").as_bytes());
    ///         data.len()
    ///     }
    /// }
    /// # let _ = Hello;
    /// ```
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// The worker is draining (reload, upgrade, stop) and this connection will not
    /// move to the next generation: finish what is in progress and do not invite more
    /// — an HTTP service answers with `Connection: close`. A connection waiting to
    /// move at a reload is not told: it goes on where it is, then moves.
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

    /// The connection was just accepted (and its PROXY header, if any, read): a
    /// greeting goes here. Not called for a connection that arrives by a move at a
    /// reload (it was opened in its old worker). By default nothing happens.
    fn on_open(&mut self, _io: &mut Io<'_>) {}

    /// A message published to a topic this connection subscribed to (see [`push`]).
    /// By default it is written to the client as it is; a service frames it here
    /// (a line, a WebSocket frame, an SSE event).
    fn on_push(&mut self, io: &mut Io<'_>, _topic: &str, message: &[u8]) {
        io.write(message);
    }

    /// True when closing the connection now loses nothing (e.g. HTTP keep-alive
    /// between requests). Draining workers hand such connections to the new
    /// generation on reload, or close them on stop; they wait for the others. By
    /// default a connection is never idle.
    fn is_idle(&self) -> bool {
        false
    }

    /// Asked by a draining worker at a quiescent point (everything queued was sent,
    /// no job outstanding, no close under way): the connection may move to the new
    /// generation with this state, or stay for now (`None`, the default; asked again
    /// after the next exchange). See the module documentation for the contract.
    fn suspend(&mut self) -> Option<Suspended> {
        None
    }
}

/// Most bytes of state a handler may hand over (see [`Handler::suspend`]); with the
/// input it left unconsumed it must fit in `channel::MAX_MOVED_BYTES`.
pub const MAX_STATE: usize = crate::channel::MAX_MOVED_BYTES;

/// A handler's state as it moves to the next generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspended {
    /// The format of `state`, numbered by the service: a new binary refuses the
    /// versions it cannot read.
    pub version: u32,
    /// Everything the next handler needs, opaque to corral.
    pub state: Vec<u8>,
}

impl Suspended {
    pub fn new(version: u32, state: Vec<u8>) -> Suspended {
        Suspended { version, state }
    }
}

/// Why [`Service::resume`] could not rebuild a handler: the connection then goes back
/// to the worker that suspended it.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("state version {0} is not one this service reads")]
    Version(u32),
    #[error("invalid state: {0}")]
    Invalid(String),
}

/// For a service whose connections carry no state: accepts a suspended connection
/// written in format `expected` with an empty state, refuses anything else.
pub fn check_stateless(expected: u32, state: &[u8], version: u32) -> Result<(), ResumeError> {
    match (version == expected, state.is_empty()) {
        (true, true) => Ok(()),
        (true, false) => Err(ResumeError::Invalid(format!(
            "{} bytes of state for a service that keeps none",
            state.len()
        ))),
        (false, _) => Err(ResumeError::Version(version)),
    }
}

/// A protocol: makes handlers for the connections of one listener.
pub trait Service {
    /// A client connected.
    fn connect(&mut self, peer: Option<IpAddr>) -> Box<dyn Handler>;

    /// A connection suspended by the previous generation arrives with the state its
    /// handler returned from [`Handler::suspend`]. By default only an empty state is
    /// accepted (a fresh `connect`); any other is refused, and the connection goes
    /// back to the old worker.
    fn resume(
        &mut self,
        peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        if state.is_empty() {
            Ok(self.connect(peer))
        } else {
            Err(ResumeError::Version(version))
        }
    }

    /// A forwarding service (a TCP proxy) returns its upstream choice here: the loop
    /// then connects each client to an upstream and moves the bytes both ways itself,
    /// and the handler from `connect` never sees data.
    fn upstreams(&mut self) -> Option<&mut dyn Upstreams> {
        None
    }

    /// What a write from elsewhere ([`Io::send_to`], a topic's message) does to one of
    /// this service's connections whose unsent output is over `write_high_water`: drop
    /// the message (the default) or close the connection. Either is counted.
    fn overflow(&self) -> Overflow {
        Overflow::Drop
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

/// A registered service: its name, its factory and how its keys are parsed.
type Entry = (String, Factory, OptionsKind);

fn registry() -> &'static Mutex<Vec<Entry>> {
    static REGISTRY: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(vec![
            (
                "echo".to_string(),
                (|_: &ListenConfig| Box::new(echo::Echo) as Box<dyn Service>) as Factory,
                OptionsKind::of::<echo::EchoOptions>(),
            ),
            (
                "http".to_string(),
                (|l: &ListenConfig| Box::new(http::Http::new(l)) as Box<dyn Service>) as Factory,
                OptionsKind::of::<http::options::HttpOptions>(),
            ),
            (
                "metrics".to_string(),
                (|_: &ListenConfig| Box::new(metrics::Metrics) as Box<dyn Service>) as Factory,
                OptionsKind::of::<metrics::MetricsOptions>(),
            ),
            (
                "proxy".to_string(),
                (|l: &ListenConfig| Box::new(proxy::Proxy::new(l)) as Box<dyn Service>) as Factory,
                OptionsKind::of::<proxy::options::ProxyOptions>(),
            ),
        ])
    })
}

fn entries() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `service = "name"` available in `[[listen]]` entries, for a service that
/// takes no key of its own (any other key in its listeners is refused). Call it
/// before [`crate::app::main`], so that config checks and workers know the name.
pub fn register(name: &str, factory: Factory) {
    register_with_options::<NoOptions>(name, factory);
}

/// Like [`register`], for a service that takes the keys of `O` in its `[[listen]]`
/// tables: they are parsed and checked at every config load, and its factory reads
/// them with [`options()`].
pub fn register_with_options<O: ServiceOptions>(name: &str, factory: Factory) {
    let mut r = entries();
    r.retain(|(n, _, _)| n != name);
    r.push((name.to_string(), factory, OptionsKind::of::<O>()));
}

/// Adds system calls (`libc::SYS_*` numbers) to every worker's seccomp allowlist,
/// for a custom service that needs more than the built-in ones (a file lock, a
/// socket of its own). Call it before [`crate::app::main`], like [`register`].
/// A call on the attacker list (`execve`, `socket`, `kill` of others, ...) named here
/// is allowed too: the service has said it needs it. Run with
/// `[worker] seccomp = "log"` to find what to list (the kernel logs each call
/// outside the allowlist), then list it here and go back to `enforce`.
///
/// ```no_run
/// // A service that takes advisory file locks:
/// corral::service::allow_syscalls(&[libc::SYS_flock]);
/// ```
pub fn allow_syscalls(calls: &[i64]) {
    crate::os::seccomp::allow_extra(calls);
}

/// Lets workers read (and, with `write`, change) the files beneath `paths`: under
/// `[worker] seccomp = "enforce"` a worker is otherwise off the filesystem (Landlock),
/// since everything it needs comes from the master. Call it before
/// [`crate::app::main`], like [`allow_syscalls`].
///
/// ```no_run
/// // A service that serves files from /srv/www:
/// corral::service::allow_paths(&[std::path::Path::new("/srv/www")], false);
/// ```
pub fn allow_paths(paths: &[&std::path::Path], write: bool) {
    crate::os::landlock::allow_paths(paths, write);
}

/// True if a service of that name exists.
pub fn is_known(name: &str) -> bool {
    entries().iter().any(|(n, _, _)| n == name)
}

/// The names of every service, for error messages.
pub fn known() -> Vec<String> {
    entries().iter().map(|(n, _, _)| n.clone()).collect()
}

/// Every service's name with how its keys are parsed.
fn option_kinds() -> Vec<(String, OptionsKind)> {
    entries().iter().map(|(n, _, k)| (n.clone(), *k)).collect()
}

/// The service configured for a listener. The config was validated, so the name is
/// known; an unknown one (a bug) falls back to echo rather than failing a worker.
pub fn make(listen: &ListenConfig) -> Box<dyn Service> {
    let factory = entries()
        .iter()
        .find(|(n, _, _)| *n == listen.service)
        .map(|(_, f, _)| *f);
    match factory {
        Some(f) => f(listen),
        None => Box::new(echo::Echo),
    }
}
