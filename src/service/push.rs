//! Push: writing to other connections, and topics across workers.
//!
//! A handler usually writes only to its own client, during its own callbacks. A chat,
//! a push gateway or an IM server must also reach *other* clients: the one a message
//! is addressed to, or every client subscribed to a topic. From any callback that has
//! an [`Io`] (data, timer, blocking-job completion, [`Handler::on_open`]):
//!
//! - [`Io::id`] names this connection; [`Io::send_to`] queues bytes to another
//!   connection of this worker by its id (ids are per worker: a connection that moves
//!   at a reload gets a new one, see below);
//! - [`Io::subscribe`] / [`Io::unsubscribe`] put this connection on a topic, and
//!   [`Io::publish`] sends a message to every subscriber of a topic **in every worker**
//!   (of every generation this master runs), at most once each, in order per
//!   publisher. Each subscriber's handler gets it in [`Handler::on_push`] (which by
//!   default writes it as it is), so the service frames it for its protocol.
//!
//! Every write to another connection is under that connection's flow control: when
//! its unsent output is over the listener's `write_high_water`, the message is
//! dropped and counted, or the connection is closed, as [`Service::overflow`] says
//! ([`Overflow::Drop`] by default). Nothing queues without bound: between workers each
//! peer's queue holds at most [`PEER_QUEUE`] messages ([`PEER_QUEUE_BYTES`]), beyond
//! which messages are dropped and counted. The counts are in `corral status` and the
//! metrics (`corral_push_*`).
//!
//! Subscriptions are part of a connection's moved state: a connection that moves at a
//! reload or an upgrade keeps its topics, and a message published while it is in
//! flight is delivered by the new worker from the last [`HISTORY`] messages it saw,
//! unless the old one delivered it before the move (so once, not twice).
//!
//! ```
//! use corral::service::{Handler, Io, Service};
//!
//! /// A minimal chat: `JOIN room`, then every other line goes to the room.
//! struct Chat;
//! struct Member {
//!     room: Option<String>,
//! }
//!
//! impl Service for Chat {
//!     fn connect(&mut self, _: Option<std::net::IpAddr>) -> Box<dyn Handler> {
//!         Box::new(Member { room: None })
//!     }
//! }
//!
//! impl Handler for Member {
//!     fn on_open(&mut self, io: &mut Io<'_>) {
//!         io.write(format!("hello, you are #{}\n", io.id()).as_bytes());
//!     }
//!     fn on_data(&mut self, io: &mut Io<'_>, data: &[u8]) -> usize {
//!         let Some(end) = data.iter().position(|&b| b == b'\n') else {
//!             return 0;
//!         };
//!         let line = String::from_utf8_lossy(&data[..end]).into_owned();
//!         match (line.strip_prefix("JOIN "), &self.room) {
//!             (Some(room), _) => {
//!                 io.subscribe(room);
//!                 self.room = Some(room.to_string());
//!             }
//!             (None, Some(room)) => io.publish(room, format!("{line}\n").as_bytes()),
//!             (None, None) => io.write(b"JOIN a room first\n"),
//!         }
//!         end + 1
//!     }
//!     fn is_idle(&self) -> bool {
//!         true
//!     }
//! }
//! # let _ = Chat;
//! ```
//!
//! [`Handler::on_open`]: super::Handler::on_open
//! [`Handler::on_push`]: super::Handler::on_push
//! [`Service::overflow`]: super::Service::overflow

use super::Io;

/// Longest topic name, in bytes.
pub const MAX_TOPIC: usize = 255;
/// Largest message [`Io::publish`] sends; a longer one is dropped and counted.
pub const MAX_MESSAGE: usize = 60 << 10;
/// Most messages queued for one peer worker that is not reading fast enough.
pub const PEER_QUEUE: usize = 16_384;
/// Most bytes queued for one peer worker.
pub const PEER_QUEUE_BYTES: usize = 16 << 20;
/// How many of the latest messages a worker keeps to replay to connections that
/// arrive by a move (what was published while they were in flight).
pub const HISTORY: usize = 4096;
/// Most payload bytes those messages may hold together (the oldest go first).
pub const HISTORY_BYTES: usize = 8 << 20;
/// Most topics one connection may be subscribed to (further `subscribe`s are ignored
/// and counted): its topics travel with it when it moves.
pub const MAX_TOPICS_PER_CONN: usize = 64;

/// A connection's id within its worker, from [`Io::id`]: what [`Io::send_to`] takes.
/// Ids are not reused while the connection lives, but a connection that moves to
/// another worker at a reload has a new id there.
pub type ConnId = u64;

/// What happens to a message for a connection whose unsent output is already over the
/// listener's `write_high_water` (a client that does not read): see
/// [`Service::overflow`](super::Service::overflow).
///
/// ```
/// use corral::service::{Handler, Io, Overflow, Service};
///
/// /// Server-sent events of a price feed: a client that falls behind is cut rather
/// /// than left to miss prices silently.
/// struct Feed;
/// struct Reader;
///
/// impl Service for Feed {
///     fn connect(&mut self, _: Option<std::net::IpAddr>) -> Box<dyn Handler> {
///         Box::new(Reader)
///     }
///     fn overflow(&self) -> Overflow {
///         Overflow::Disconnect
///     }
/// }
///
/// impl Handler for Reader {
///     fn on_open(&mut self, io: &mut Io<'_>) {
///         io.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
///         io.subscribe("prices");
///     }
///     fn on_data(&mut self, _io: &mut Io<'_>, data: &[u8]) -> usize {
///         data.len() // the request is not read in this sketch
///     }
///     fn on_push(&mut self, io: &mut Io<'_>, topic: &str, message: &[u8]) {
///         io.write(format!("event: {topic}\ndata: ").as_bytes());
///         io.write(message);
///         io.write(b"\n\n");
///     }
/// }
///
/// assert_eq!(Feed.overflow(), Overflow::Disconnect);
/// // The same when the service is boxed, as a factory may return it.
/// let boxed: Box<dyn Service> = Box::new(Box::new(Feed));
/// assert_eq!(boxed.overflow(), Overflow::Disconnect);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// The message is dropped for that client (counted); the connection stays.
    #[default]
    Drop,
    /// The connection is closed (counted): the client misses nothing silently.
    Disconnect,
}

/// What handlers asked for during a callback, carried out by the loop right after it.
pub(crate) enum Op {
    Send(ConnId, Vec<u8>),
    Subscribe(ConnId, String),
    Unsubscribe(ConnId, String),
    Publish(String, Vec<u8>),
}

/// The worker's queue of [`Op`]s, lent to every [`Io`] it makes.
#[derive(Default)]
pub(crate) struct Outbox {
    /// The connection whose callback runs now.
    pub(crate) current: ConnId,
    pub(crate) ops: Vec<Op>,
}

impl Io<'_> {
    /// This connection's id in its worker (0 outside a worker's loop, e.g. in a unit
    /// test that makes its own `Io`).
    pub fn id(&self) -> ConnId {
        self.push.as_ref().map_or(0, |p| p.current)
    }

    /// Queues `bytes` to the connection `to` of this worker (same or another listener
    /// of the same program), as if its own handler had written them: after what it
    /// already queued, under its flow control
    /// ([`Service::overflow`](super::Service::overflow) of its listener).
    /// A connection that is gone (or in another worker) is skipped, and counted.
    pub fn send_to(&mut self, to: ConnId, bytes: &[u8]) {
        if let Some(p) = self.push.as_deref_mut() {
            p.ops.push(Op::Send(to, bytes.to_vec()));
        }
    }

    /// Subscribes this connection to `topic` (at most [`MAX_TOPIC`] bytes; at most
    /// [`MAX_TOPICS_PER_CONN`] topics). Subscribing twice is once.
    pub fn subscribe(&mut self, topic: &str) {
        if let Some(p) = self.push.as_deref_mut() {
            let id = p.current;
            p.ops.push(Op::Subscribe(id, topic.to_string()));
        }
    }

    /// Takes this connection off `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        if let Some(p) = self.push.as_deref_mut() {
            let id = p.current;
            p.ops.push(Op::Unsubscribe(id, topic.to_string()));
        }
    }

    /// Publishes `message` to every connection subscribed to `topic`, in this worker
    /// and all others (this connection too, if it is subscribed). Returns at once: the
    /// loop delivers after the callback. At most [`MAX_MESSAGE`] bytes.
    pub fn publish(&mut self, topic: &str, message: &[u8]) {
        if let Some(p) = self.push.as_deref_mut() {
            p.ops.push(Op::Publish(topic.to_string(), message.to_vec()));
        }
    }
}
