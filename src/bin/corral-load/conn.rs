//! One connection's state machine state and buffers, and the message pattern that
//! catches an echo delivered to the wrong connection or replayed.

use std::io::{self};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use corral::os::client::Socket;
use corral::os::epoll::{Epoll, Event, Interest};

use crate::counters::Counters;
use crate::histogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting in the connect queue (connect-rate admission).
    Queued,
    /// Waiting for a retry after a failed connect.
    Backoff,
    Connecting,
    /// Writing the message.
    Sending,
    /// Waiting for the whole echo.
    Receiving,
    /// Connected, waiting for the next paced round trip.
    Paced,
    /// Connected and silent (idle mode).
    Idle,
}

pub(crate) struct Conn {
    /// Index over all threads: picks the source address and seeds the message pattern.
    pub(crate) global: usize,
    pub(crate) sock: Option<Socket>,
    pub(crate) state: State,
    /// Bumped whenever the socket is closed, so that epoll events and timers that refer
    /// to an earlier socket of this slot are recognised and ignored.
    pub(crate) token: u32,
    pub(crate) established: bool,
    /// When the current connect or round trip gives up.
    pub(crate) deadline: Option<Instant>,
    /// When the current connect or round trip began.
    pub(crate) began: Instant,
    /// When the next paced round trip is due (echo with --rate).
    pub(crate) next_due: Instant,
    pub(crate) seq: u64,
    pub(crate) out: Vec<u8>,
    pub(crate) sent: usize,
    pub(crate) back: Vec<u8>,
    pub(crate) got: usize,
    pub(crate) failures: u32,
    /// Counted in `conns_lost` already.
    pub(crate) was_lost: bool,
}

/// Per-second progress sent from a thread to the main thread.
pub(crate) struct Report {
    pub(crate) tick: u64,
    pub(crate) delta: Counters,
    pub(crate) latency: Histogram,
    pub(crate) open: usize,
}

/// What a thread hands back when the run ends.
pub(crate) struct Outcome {
    pub(crate) counters: Counters,
    pub(crate) latency: Histogram,
    pub(crate) connect_latency: Histogram,
    pub(crate) open_at_end: usize,
    pub(crate) first_connect_error: Option<String>,
}

pub(crate) fn key(idx: usize, token: u32) -> u64 {
    ((idx as u64) << 32) | u64::from(token)
}

/// Fills a message that differs per connection and per round trip, so that an echo
/// delivered to the wrong connection or replayed from an earlier round trip is caught.
pub(crate) fn fill_message(buf: &mut [u8], global: usize, seq: u64) {
    let head = seq.to_le_bytes();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = if i < head.len() {
            head[i]
        } else {
            (global as u64)
                .wrapping_mul(31)
                .wrapping_add(seq)
                .wrapping_add(i as u64) as u8
        };
    }
}

pub(crate) fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) fn is_interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// What every load connection waits for: both directions, edge-triggered.
const CONN_INTEREST: Interest = Interest {
    read: true,
    write: true,
    edge: true,
    exclusive: false,
};

/// Creates a non-blocking TCP socket (with `TCP_NODELAY` when `nodelay`), binds it to
/// `source` if given, starts connecting it to `addr` and registers it on `epoll`
/// under `token`: the one socket set-up of the closed-loop and the stream modes.
pub(crate) fn open_connection(
    epoll: &Epoll,
    addr: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
    token: u64,
) -> Result<Socket, String> {
    let sock = corral::os::client::connect_from(addr, source, nodelay)?;
    // Registered after connect(): an unconnected socket polls as hung up, which
    // would look like a failed connect. Adding a socket that is already connected
    // still reports it writable, so completion always arrives as an event.
    epoll
        .add(sock.as_fd(), CONN_INTEREST, token)
        .map_err(|e| format!("epoll_ctl(ADD) failed: {e}"))?;
    Ok(sock)
}

/// One epoll wait of at most `timeout` (rounded up to whole ms by the wait: never
/// early for nothing): the events in `events` as (connection index, socket token,
/// event). An interrupted wait is a wait with no events.
pub(crate) fn wait_events(
    epoll: &mut Epoll,
    timeout: Duration,
    events: &mut Vec<(usize, u32, Event)>,
) -> Result<(), String> {
    events.clear();
    let ready = epoll
        .wait(Some(timeout))
        .map_err(|e| format!("epoll_wait() failed: {e}"))?;
    events.extend(ready.map(|ev| ((ev.token >> 32) as usize, ev.token as u32, ev)));
    Ok(())
}
