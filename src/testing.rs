//! Unit tests for a [`Handler`] without processes, sockets or waiting: a
//! [`Harness`] plays the worker's loop for one connection. It feeds bytes as the loop
//! does (what a call left unconsumed comes first in the next), keeps what the handler
//! wrote, runs its timers on a clock of its own that only [`Harness::advance`] moves,
//! runs its blocking jobs when asked, and shows whether it asked to close.
//!
//! ```
//! use std::time::Duration;
//! use corral::service::{Handler, Io};
//! use corral::testing::Harness;
//!
//! /// Answers each line in upper case; closes a client silent for 10 s.
//! struct Upper;
//!
//! impl Handler for Upper {
//!     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
//!         io.set_timer(Duration::from_secs(10));
//!         let Some(end) = data.iter().rposition(|&b| b == b'\n') else {
//!             return 0; // half a line: wait for the rest
//!         };
//!         io.write(&data[..=end].to_ascii_uppercase());
//!         end + 1
//!     }
//! }
//!
//! let mut h = Harness::new(Upper);
//! h.send(b"hello\nwor");
//! assert_eq!(h.take_written(), b"HELLO\n");
//! assert_eq!(h.unconsumed(), b"wor");
//! h.send(b"ld\n");
//! assert_eq!(h.take_written(), b"WORLD\n");
//! h.advance(Duration::from_secs(9));
//! assert!(!h.closed());
//! h.advance(Duration::from_secs(1)); // the default on_timer closes
//! assert!(h.closed());
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::service::{Handler, Io, Job, ResumeError, Service, Suspended};

/// One connection's handler, driven as the worker's loop would drive it.
pub struct Harness<H: Handler + ?Sized = dyn Handler> {
    handler: Box<H>,
    /// What the handler left unconsumed.
    input: Vec<u8>,
    /// What the handler wrote and the test has not taken yet.
    out: Vec<u8>,
    close: bool,
    shutdown_write: bool,
    timer: Option<Instant>,
    jobs: Vec<Job>,
    /// The harness's clock: starts at the real time, moves only by `advance`.
    now: Instant,
    peer: Option<SocketAddr>,
    draining: bool,
    eof: bool,
}

impl<H: Handler> Harness<H> {
    /// Drives `handler`, a connection from a client at 127.0.0.1:40000.
    pub fn new(handler: H) -> Harness<H> {
        Harness::from_box(Box::new(handler))
    }
}

impl Harness {
    /// A new connection to `service`: its handler from [`Service::connect`].
    pub fn connect(service: &mut dyn Service) -> Harness {
        Harness::from_box(service.connect(Some(default_peer().ip())))
    }

    /// A connection that moved with `suspended` (from [`Harness::suspend`], or a
    /// saved one), rebuilt by `service` as a worker of the next generation would.
    pub fn resume(
        service: &mut dyn Service,
        suspended: &Suspended,
    ) -> Result<Harness, ResumeError> {
        let handler = service.resume(
            Some(default_peer().ip()),
            &suspended.state,
            suspended.version,
        )?;
        Ok(Harness::from_box(handler))
    }
}

fn default_peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

impl<H: Handler + ?Sized> Harness<H> {
    fn from_box(handler: Box<H>) -> Harness<H> {
        Harness {
            handler,
            input: Vec::new(),
            out: Vec::new(),
            close: false,
            shutdown_write: false,
            timer: None,
            jobs: Vec::new(),
            now: Instant::now(),
            peer: Some(default_peer()),
            draining: false,
            eof: false,
        }
    }

    /// What [`Io::peer`] answers (None: a Unix-socket client).
    pub fn with_peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// What [`Io::draining`] answers from now on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Runs one handler callback with an `Io` over the harness's state.
    fn call<R>(&mut self, f: impl FnOnce(&mut H, &mut Io<'_>, &mut Vec<u8>) -> R) -> R {
        let mut io = Io {
            tls: None,
            out: &mut self.out,
            close: &mut self.close,
            shutdown_write: &mut self.shutdown_write,
            timer: &mut self.timer,
            jobs: &mut self.jobs,
            peer: self.peer,
            draining: self.draining,
            held: false,
            now: Some(self.now),
            push: None,
        };
        f(&mut self.handler, &mut io, &mut self.input)
    }

    /// The client sent `bytes`: the handler sees them after what it left unconsumed.
    /// Ignored once the handler closed or the client half-closed, as the loop reads
    /// nothing more then.
    pub fn send(&mut self, bytes: &[u8]) {
        if self.close || self.eof {
            return;
        }
        self.call(|h, io, input| {
            input.extend_from_slice(bytes);
            let used = h.on_data(io, input).min(input.len());
            input.drain(..used);
        });
    }

    /// The client half-closed (sent FIN): [`Handler::on_eof`].
    pub fn eof(&mut self) {
        if !self.eof {
            self.eof = true;
            self.call(|h, io, _| h.on_eof(io));
        }
    }

    /// Moves the harness's clock on by `by`, firing the handler's timer
    /// ([`Handler::on_timer`]) if it comes due meanwhile (again if `on_timer` sets it
    /// again within the interval).
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.timer.filter(|&at| at <= until) {
            self.now = self.now.max(at);
            self.timer = None;
            self.call(|h, io, _| h.on_timer(io));
        }
        self.now = until;
    }

    /// How long until the handler's timer fires; None if it set none.
    pub fn timer(&self) -> Option<Duration> {
        self.timer.map(|at| at.saturating_duration_since(self.now))
    }

    /// Jobs from [`Io::spawn_blocking`] not run yet.
    pub fn jobs_pending(&self) -> usize {
        self.jobs.len()
    }

    /// Runs the jobs from [`Io::spawn_blocking`] here, one after the other, and hands
    /// each result to the handler; jobs their completions spawn run too.
    pub fn run_jobs(&mut self) {
        while !self.jobs.is_empty() {
            let job = self.jobs.remove(0);
            let result = job();
            let delivered =
                self.call(|h, io, _| crate::service::complete(h.as_any_mut(), io, result));
            // In a worker the result would be dropped (and logged): here the test
            // learns that its completion names another type than its handler.
            assert!(
                delivered,
                "a job's completion names another type than the handler it was spawned by"
            );
        }
    }

    /// Everything written since the last call, taken.
    pub fn take_written(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Everything written since the last [`Harness::take_written`].
    pub fn written(&self) -> &[u8] {
        &self.out
    }

    /// Input the handler has not consumed yet.
    pub fn unconsumed(&self) -> &[u8] {
        &self.input
    }

    /// The handler asked to close ([`Io::close`]): the loop would close once the
    /// output is sent and the jobs are done.
    pub fn closed(&self) -> bool {
        self.close
    }

    /// The handler asked to half-close ([`Io::shutdown_write`]).
    pub fn write_shut(&self) -> bool {
        self.shutdown_write
    }

    /// What [`Handler::is_idle`] says.
    pub fn is_idle(&self) -> bool {
        self.handler.is_idle()
    }

    /// Asks the handler to suspend, as a draining worker would at a quiescent point.
    pub fn suspend(&mut self) -> Option<Suspended> {
        self.handler.suspend()
    }

    /// The handler, to look at its state.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to change its state.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }
}
