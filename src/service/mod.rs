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
//! A program names its services in a [`crate::Runtime`] and runs it (the
//! [`crate::Runtime`] documentation has a complete program); [`crate::testing`] drives
//! a handler in a unit test. `examples/kv.rs` is a complete key/value server.
//!
//! ```
//! use corral::service::{Handler, Io};
//!
//! /// Answers every line with its length.
//! struct LineLength;
//!
//! impl Handler for LineLength {
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
//! let mut h = corral::testing::Harness::new(LineLength);
//! h.send(b"abc\nde");
//! h.send(b"f\n");
//! assert_eq!(h.take_written(), b"3\n3\n");
//! ```
//!
//! # Keys of its own
//!
//! A `[[listen]]` table holds the keys common to every listener and those of its
//! service. A service declares its keys as a serde struct (`deny_unknown_fields`, so a
//! mistyped key is an error; derive from [`crate::serde`], no serde of your own needed)
//! implementing [`ServiceOptions`], and is named with [`crate::Runtime::service_with`];
//! corral parses and checks them in the master at every load (start, `-t`, `-T`,
//! reload: errors name the file, `listen[i]` and the key), and hands the parsed value
//! to the factory.
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

pub use crate::tls::TlsInfo;

pub(crate) mod echo;
pub(crate) mod http;
pub(crate) mod metrics;
mod options;
pub(crate) mod proxy;
pub mod push;
pub(crate) mod registry;

#[cfg(test)]
pub(crate) use options::attach;
pub(crate) use options::OptionsKind;
pub use options::{options, NoOptions, ServiceOptions};
pub(crate) use options::{parse_unloaded, Registry};
pub use push::{ConnId, Overflow};

/// Work for the worker's blocking pool, as the loop hands it over: runs on a pool
/// thread and returns the [`Completion`] that delivers its result.
pub(crate) type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// A finished job's result with what the handler asked to do with it: called on the
/// loop thread with the connection's handler (as `Any`, to be downcast to the type
/// the job was spawned for). False if the handler is not of that type.
pub(crate) type Completion = Box<dyn FnOnce(&mut dyn Any, &mut Io<'_>) -> bool + Send>;

/// Hands a finished job's result to the handler that spawned it (see
/// [`Io::spawn_blocking`]). False if `result` is not a [`Completion`] or the handler is
/// not of the type it was spawned for (its result is then dropped).
pub(crate) fn complete(
    handler: &mut dyn Any,
    io: &mut Io<'_>,
    result: Box<dyn Any + Send>,
) -> bool {
    match result.downcast::<Completion>() {
        Ok(done) => done(handler, io),
        Err(_) => false,
    }
}

/// What a handler may do to its connection while handling an event.
pub struct Io<'a> {
    pub(crate) tls: Option<&'a TlsInfo>,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) close: &'a mut bool,
    pub(crate) shutdown_write: &'a mut bool,
    pub(crate) timer: &'a mut Option<Instant>,
    pub(crate) jobs: &'a mut Vec<Job>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) draining: bool,
    pub(crate) held: bool,
    /// The clock timers count from: None in a worker (the real clock); a test
    /// harness's own clock, which it advances by hand.
    pub(crate) now: Option<Instant>,
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
    /// [`Io::spawn_blocking`] has completed (and whatever its completion queued has
    /// been sent). The handler sees nothing more.
    ///
    /// What was written arrives even if the client is still sending: the loop sends
    /// FIN after the last byte, then reads and throws away whatever the client still
    /// sends until it closes too, or for at most [`LINGER`]. (Closing a socket with
    /// unread input makes the kernel send a reset, which can destroy the reply
    /// before the client reads it.) A client that already sent FIN is closed at once,
    /// and so is one the handler half-closed itself with [`Io::shutdown_write`] (it
    /// then reads on as long as it wants before it closes).
    pub fn close(&mut self) {
        *self.close = true;
    }

    /// Sends FIN once everything queued has been sent, but keeps reading (half-close).
    pub fn shutdown_write(&mut self) {
        *self.shutdown_write = true;
    }

    /// The client's address and port (None for Unix-socket clients). Behind a
    /// balancer that sends a PROXY header (`accept_proxy`), the client it names.
    pub fn peer(&self) -> Option<SocketAddr> {
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
        *self.timer = Some(self.now.unwrap_or_else(Instant::now) + after);
    }

    /// Cancels the timer.
    pub fn clear_timer(&mut self) {
        *self.timer = None;
    }

    /// Runs `job` on the worker's blocking pool (threads started after fork, on first
    /// use), then `done` with its result, on the loop thread, with the handler and
    /// its `Io`. The event loop never waits for the job; if the connection is gone by
    /// then, the result is dropped. A close waits for every job's `done` (and what
    /// it writes).
    ///
    /// `H` is the handler's own type (name it in `done`'s first argument): the
    /// result reaches the handler that spawned the job, typed, with no downcast.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::service::{Handler, Io};
    ///
    /// /// Answers each line with its length, computed "slowly" off the loop.
    /// struct Slow {
    ///     answered: u64,
    /// }
    ///
    /// impl Handler for Slow {
    ///     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
    ///         let len = data.len();
    ///         io.spawn_blocking(
    ///             move || {
    ///                 std::thread::sleep(Duration::from_millis(1));
    ///                 len
    ///             },
    ///             |this: &mut Slow, io, len: usize| {
    ///                 this.answered += 1;
    ///                 io.write(format!("{len}\n").as_bytes());
    ///             },
    ///         );
    ///         data.len()
    ///     }
    /// }
    ///
    /// let mut h = corral::testing::Harness::new(Slow { answered: 0 });
    /// h.send(b"four");
    /// h.run_jobs();
    /// assert_eq!(h.take_written(), b"4\n");
    /// assert_eq!(h.handler().answered, 1);
    /// ```
    pub fn spawn_blocking<H, R, F, D>(&mut self, job: F, done: D)
    where
        H: Handler,
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
        D: FnOnce(&mut H, &mut Io<'_>, R) + Send + 'static,
    {
        self.jobs.push(Box::new(move || {
            let result = job();
            let completion: Completion = Box::new(move |handler: &mut dyn Any, io: &mut Io<'_>| {
                match handler.downcast_mut::<H>() {
                    Some(h) => {
                        done(h, io, result);
                        true
                    }
                    None => false,
                }
            });
            Box::new(completion) as Box<dyn Any + Send>
        }));
    }
}

/// How long a closing connection waits for a client that is still sending (see
/// [`Io::close`]) before it closes anyway.
pub const LINGER: Duration = Duration::from_secs(2);

/// Implemented for every type, so that the loop can hand a job's result to the
/// handler type that asked for it (see [`Io::spawn_blocking`]): nothing to do.
pub trait AsAny: Any {
    /// `self` as `Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One connection's protocol logic.
pub trait Handler: AsAny {
    /// Bytes arrived. `data` holds what earlier calls left unconsumed followed by the
    /// new bytes; return how many were consumed (the rest is kept for the next call).
    fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize;

    /// The client half-closed (sent FIN). By default the connection closes once it
    /// has given the client everything it owes: queued output is flushed and every
    /// job from [`Io::spawn_blocking`] has completed (their completions may write
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
    /// The state `state`, written in the service's format number `version` (which
    /// its [`Service::resume`] reads back): at most [`MAX_STATE`] bytes with the
    /// input the handler left unconsumed.
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

    /// Only a forwarding service answers here (the built-in `proxy`, and those a
    /// program registers with [`crate::Runtime::forward`]): the loop then connects
    /// each client to an upstream and moves the bytes both ways itself. Sealed: a
    /// service of your own cannot turn into a forwarder by overriding it.
    #[doc(hidden)]
    fn upstreams(&mut self, _: sealed::Forwarding) -> Option<&mut dyn Upstreams> {
        None
    }

    /// What a write from elsewhere ([`Io::send_to`], a topic's message) does to one of
    /// this service's connections whose unsent output is over `write_high_water`: drop
    /// the message (the default) or close the connection. Either is counted.
    fn overflow(&self) -> Overflow {
        Overflow::Drop
    }
}

/// A boxed service is a service (a factory may choose among several at run time).
impl<S: Service + ?Sized> Service for Box<S> {
    fn connect(&mut self, peer: Option<IpAddr>) -> Box<dyn Handler> {
        (**self).connect(peer)
    }

    fn resume(
        &mut self,
        peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        (**self).resume(peer, state, version)
    }

    fn upstreams(&mut self, f: sealed::Forwarding) -> Option<&mut dyn Upstreams> {
        (**self).upstreams(f)
    }

    fn overflow(&self) -> Overflow {
        (**self).overflow()
    }
}

pub(crate) mod sealed {
    /// Names [`super::Service::upstreams`]' argument: nameable only inside the crate,
    /// so only corral's own forwarders implement that method.
    #[derive(Clone, Copy)]
    pub struct Forwarding(pub(crate) ());

    pub(crate) const FORWARDING: Forwarding = Forwarding(());
}

/// A forwarding service made of an upstream choice (see [`crate::Runtime::forward`]):
/// its handlers never see data, the loop moves the bytes.
pub(crate) struct Forwarder<U>(pub(crate) U);

impl<U: Upstreams + 'static> Service for Forwarder<U> {
    fn connect(&mut self, _peer: Option<IpAddr>) -> Box<dyn Handler> {
        Box::new(proxy::Forwarded)
    }

    fn resume(
        &mut self,
        _peer: Option<IpAddr>,
        state: &[u8],
        version: u32,
    ) -> Result<Box<dyn Handler>, ResumeError> {
        check_stateless(proxy::VERSION, state, version)?;
        Ok(Box::new(proxy::Forwarded))
    }

    fn upstreams(&mut self, _: sealed::Forwarding) -> Option<&mut dyn Upstreams> {
        Some(&mut self.0)
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
