//! What travels over a channel: the messages each side sends, and the record of a
//! connection moving between workers. Every field added after the first release is
//! `#[serde(default)]`, because an upgrade puts two binaries on one channel.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::b64;

/// A worker's counters, sent with every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Open client connections.
    pub connections: u64,
    /// Connections this worker accepted from its listeners since it started: new
    /// clients only (the sum of its listeners' `accepted`).
    pub accepted: u64,
    /// Connections this worker took over from another worker or from the old master
    /// of an upgrade (idle hand-overs and moved sessions), not accepted here.
    #[serde(default)]
    pub adopted: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Resident set size in bytes.
    pub rss: u64,
    /// Connections closed at once because their IP was over `max_connections_per_ip`.
    #[serde(default)]
    pub refused: u64,
    /// Log lines dropped because the worker's log writer could not keep up.
    #[serde(default)]
    pub log_dropped: u64,
    /// `accept_proxy` connections closed for a malformed, missing or late PROXY header.
    #[serde(default)]
    pub proxy_header_failed: u64,
    /// TLS handshakes and failures.
    #[serde(default)]
    pub tls: crate::tls::TlsCounts,
    /// Push: deliveries, and what was dropped and why.
    #[serde(default)]
    pub push: super::PushCounts,
}

/// One connection travelling between workers; its fd travels in the same message,
/// at the same position.
///
/// New fields are `#[serde(default)]`, so a record from an older binary (a bare
/// listener name: an idle connection, a fresh `connect` on arrival) still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handed {
    /// The listener that accepted it, by address: listener indices differ between the
    /// configs of two generations, addresses do not.
    pub listen: String,
    /// The real client, when a PROXY header named one: the socket's own peer is the
    /// balancer, and the new worker must not expect a header again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<std::net::SocketAddr>,
    /// A suspended connection: its service's state and the bytes the loop held for it.
    /// None for a connection that was merely idle (the receiver calls `connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Box<Moved>>,
    /// A TLS connection: its record layer, which the receiver continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<crate::tls::TlsMoved>>,
}

/// Most bytes of service state plus carried input one suspended connection may
/// take along. Base64 makes that ~22 KB in the message, which stays under
/// `MAX_MESSAGE` even alone in a batch; a connection holding more is not moved yet.
pub const MAX_MOVED_BYTES: usize = 16 << 10;

/// What a suspended connection takes along (see `Handler::suspend`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// The service that suspended it (its name in the config): only the same service
    /// resumes it, whatever the version numbers say.
    #[serde(default)]
    pub service: String,
    /// The state's format, as the service that wrote it numbers it.
    pub version: u32,
    /// The service's state, opaque to corral.
    #[serde(with = "b64")]
    pub state: Vec<u8>,
    /// Bytes read from the client that the handler had not consumed: the new handler
    /// sees them first.
    #[serde(default, with = "b64")]
    pub input: Vec<u8>,
    /// Milliseconds since the connection last moved a byte: its idle clock runs on.
    #[serde(default)]
    pub idle_ms: u64,
    /// The handler's timer (`Io::set_timer`), in milliseconds from the suspend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_ms: Option<u64>,
    /// The worker that suspended it (pid): where a refused connection goes back.
    #[serde(default)]
    pub origin: u32,
    /// A proxied connection: its upstream travels with it (the record's fd is then a
    /// bundle holding both sockets, see `worker::suspend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<SocketAddr>,
    /// The receiving service could not resume it, and why: it goes back to `origin`
    /// and stays there under the drain rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// It was idle, with no state of its service (the receiver calls `connect`); it
    /// travels as moved only for what rides beside it (a TLS record layer) and a way
    /// back to `origin` if that is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// Its subscriptions (`service::push`), which the new worker takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<super::PushMoved>,
}

impl Handed {
    /// An idle connection accepted on `listen`, with nothing to carry.
    pub fn idle(listen: String) -> Handed {
        Handed {
            listen,
            peer: None,
            moved: None,
            tls: None,
        }
    }

    /// What this entry costs in a message, for `BATCH_BYTES` (JSON overhead included).
    pub(super) fn weight(&self) -> usize {
        let moved = self.moved.as_ref().map_or(0, |m| {
            b64::encoded_len(m.state.len())
                + b64::encoded_len(m.input.len())
                + m.refused.as_ref().map_or(0, |r| r.len() + 16)
                + m.push.as_ref().map_or(0, |p| p.weight())
                + 192
        });
        let tls = self.tls.as_ref().map_or(0, |t| t.weight());
        self.listen.len() + 16 + if self.peer.is_some() { 60 } else { 0 } + moved + tls
    }
}

/// Counts of a worker's hand-over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffCounts {
    /// Sent to the master for the new generation.
    pub handed: u64,
    /// Kept here under the drain rules (the master had nowhere to put them, or the
    /// channel failed).
    pub kept: u64,
    /// Closed without a hand-over (the drain deadline came first).
    pub closed: u64,
}

/// Worker → master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToMaster {
    /// Initialised and accepting.
    Ready,
    /// A draining worker hands over idle connections (their fds travel with the
    /// message, in order) for workers of the current generation to adopt: the client
    /// never sees its keep-alive connection closed.
    Handoff { conns: Vec<Handed> },
    /// A worker's service refused suspended connections adopted from `Moved::origin`
    /// (their fds travel with the message, in order): the master returns each to its
    /// origin as a `ToWorker::Keep`, or closes it when the origin is gone.
    Refused { conns: Vec<Handed> },
    /// Suspended connections adopted from these origins (worker pid, how many) that
    /// this worker took over for good (resumed, passed on as their new origin, or
    /// closed): none of them can be refused any more, so their origins need not wait
    /// for them (`ToWorker::Settled`).
    Settled { origins: Vec<(u32, u64)> },
    /// A draining worker's queue of hand-overs ran empty; its counts so far.
    HandoffDone(HandoffCounts),
    /// Still alive; sent from the timer step of the loop, so a hung loop goes silent.
    Heartbeat(Stats),
    /// An injected fault the worker survives (`slow`, `emfile`) is over; `note` says
    /// what it did.
    FaultOver { note: String },
    /// `corral fault escape` is done: what each attempt met.
    Escaped {
        attempts: Vec<crate::os::escape::Attempt>,
    },
    /// Per-listener and per-upstream counters, sent right after each heartbeat (in
    /// several messages when there are many; each names its entries).
    Counters(super::Counters),
    /// A metrics scrape on this worker waits for the master's text (answered with
    /// `ToWorker::Metrics` parts carrying the same `id`).
    MetricsRequest { id: u64 },
    /// A publish of this worker, for the new master of an upgrade (sent only after
    /// `ToWorker::ForwardPublishes`): its workers are not on our bus.
    Publish {
        publisher: u64,
        seq: u64,
        topic: String,
        #[serde(with = "b64")]
        message: Vec<u8>,
    },
    /// Connections this worker adopted so far over its lanes from the old master's
    /// workers of a binary upgrade (`ToWorker::Lane { foreign: true }`), as running
    /// totals per sender (pid, total): the new master counts them as moved in from
    /// the old master, as it counts what comes through it.
    LaneAdopted { totals: Vec<(u32, u64)> },
}

/// Master → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Stop accepting; deal with idle connections as `idle` says; let active ones
    /// finish; exit when the last one is gone.
    Drain { idle: IdlePolicy },
    /// Adopt connections handed over by a draining worker (their fds travel with the
    /// message, in order), as if accepted on the listeners they name.
    Adopt { conns: Vec<Handed> },
    /// Take back connections this worker handed over: the master had no worker of the
    /// current generation to give them to. They stay under this worker's drain rules.
    Keep { conns: Vec<Handed>, reason: String },
    /// `n` suspended connections this worker handed over were taken for good by the
    /// new generation: they will not come back refused. A draining worker waits for
    /// these (or the refusals themselves) before it exits, so that a refusal always
    /// finds it alive.
    Settled { n: u64 },
    /// Close everything and exit now.
    Stop,
    /// Reopen the log file (after logrotate renamed it).
    ReopenLogs,
    /// `corral fault`: fail in this way, for real.
    Fault { kind: crate::fault::kind::FaultKind },
    /// The master's new TLS session-ticket key: it seals from now on, the one before
    /// it still opens.
    TicketKey(crate::tls::tickets::KeyBytes),
    /// One part of the metrics text for the scrape `id`; `last` ends it. Large texts
    /// travel in several parts, each well inside `MAX_MESSAGE`.
    Metrics { id: u64, text: String, last: bool },
    /// Accept on these listening sockets too (their fds travel with the message, one
    /// per address in `listens`, in order): they are slot `slot`'s reuseport sockets,
    /// and its worker has let connections wait in them (stopped, or stuck in a long
    /// turn). Until `Unlend` for the same slot.
    Lend { slot: usize, listens: Vec<String> },
    /// Slot `slot`'s worker is serving again: stop accepting on its sockets.
    Unlend { slot: usize },
    /// The end of a socketpair to worker `pid` (travelling with the message): one
    /// link of the workers' bus (`worker::bus`), made by the master when one of the
    /// two was forked.
    BusPeer { pid: u32 },
    /// The end of a lane to worker `pid` (travelling with the message): a socketpair
    /// the master made between a draining worker and a worker of the new generation
    /// at a reload, over which the draining one sends its connections directly
    /// (`worker::moves::lanes`). `send`: this end sends connections; the other adopts.
    Lane {
        pid: u32,
        #[serde(default)]
        send: bool,
        /// The other end is the other master's worker (a binary upgrade): an adopter
        /// reports what it takes over this lane (`ToMaster::LaneAdopted`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        foreign: bool,
    },
    /// `corral publish`: a message for this worker's subscribers of `topic` (the
    /// master sends it to every worker; `publisher` and `seq` number it like a
    /// worker's own publishes).
    Publish {
        publisher: u64,
        seq: u64,
        topic: String,
        #[serde(with = "b64")]
        message: Vec<u8>,
    },
    /// An upgrade committed: from now on send every publish of this worker to the
    /// master too (`ToMaster::Publish`), which passes it to the new master, whose
    /// workers are not on this bus. Sent before the drain, so before any move.
    ForwardPublishes,
}

/// Worker → worker, on a lane (`ToWorker::Lane`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LaneMsg {
    /// Connections for the receiver to adopt; their fds travel with the message, in
    /// order. The sender keeps its own copies until they are `Took`.
    Conns { conns: Vec<Handed> },
    /// The receiver took the next `n` connections sent on this lane: it serves them
    /// now, and the sender drops its copies. Those at the positions in `refused`
    /// (counted from the first of the `n`), with the reason, its service could not
    /// resume: the sender serves them itself from its copies, to their end. `room`:
    /// how many more connections the receiver can hold (its `max_connections` less
    /// what it serves): senders send to the emptiest receiver first.
    Took {
        n: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<(u32, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<u64>,
    },
}

/// Old master → new master of a binary upgrade, on their private channel (a
/// socketpair the new master inherited): idle connections of the old master's worker
/// `from` (its pid), for the new master's workers to adopt; their fds travel with the
/// message, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToSuccessor {
    Conns {
        from: i32,
        conns: Vec<Handed>,
    },
    /// The TLS session-ticket keys in force, sent before the new master starts, so
    /// that its workers open the tickets the old ones sealed.
    TicketKeys(crate::tls::tickets::KeysWire),
    /// A publish of one of the old master's workers during the upgrade, for the new
    /// master's workers (`ToWorker::Publish`), numbered by its publisher.
    Publish {
        publisher: u64,
        seq: u64,
        topic: String,
        #[serde(with = "b64")]
        message: Vec<u8>,
    },
    /// The adopter's end of a lane (travelling with the message) from the old
    /// master's worker `from` to the new master's worker `to`, which the new master
    /// passes on (`ToWorker::Lane { pid: from, send: false, foreign: true }`).
    Lane {
        from: i32,
        to: u32,
    },
}

/// New master → old master: connections it could not place, for the old master's
/// worker `to` (or, if it is gone, another of its draining workers) to keep under the
/// old generation's drain rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToPredecessor {
    /// The new master accepted the channel (sent before it reports ready): only
    /// then does the old master send anything over it.
    Hello,
    Back {
        to: i32,
        conns: Vec<Handed>,
        reason: String,
    },
    /// `n` suspended connections of the old master's worker `to` were taken for good
    /// by the new master's workers (relayed to it as `ToWorker::Settled`).
    Settled { to: i32, n: u64 },
    /// The new master's workers that adopt now (pids, all of them each time: at
    /// start, and when one becomes ready or the set changes): the old master links
    /// its draining workers to them (`ToSuccessor::Lane`). Sent only to an old
    /// master that said it reads it (`LANES_ENV`).
    Adopters { pids: Vec<u32> },
}

/// What a draining worker does with connections that are idle (closable without
/// loss, e.g. HTTP keep-alive between requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdlePolicy {
    /// Reload: hand them to a worker of the new generation through the master.
    Handoff,
    /// Binary upgrade: keep them; the service ends each after its next response
    /// (HTTP answers it with `Connection: close`), so no client sees a reset.
    Linger,
    /// Stop: close them now.
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record from a binary without the `moved` field still reads (an idle
    /// connection), and an idle one is written without it.
    #[test]
    fn handed_records_stay_compatible() {
        let old: Handed = serde_json::from_str(r#"{"listen":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old, Handed::idle("127.0.0.1:80".into()));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"listen":"127.0.0.1:80"}"#
        );
    }

    #[test]
    fn handed_peer_travels_and_old_records_still_parse() {
        let h = Handed {
            listen: "127.0.0.1:80".into(),
            peer: Some("203.0.113.5:6000".parse().unwrap()),
            moved: None,
            tls: None,
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handed>(&json).unwrap(), h);
        // A record from a binary without the field (an upgrade from it).
        let old: Handed = serde_json::from_str(r#"{"listen":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old.peer, None);
        assert!(!serde_json::to_string(&Handed::idle("x".into()))
            .unwrap()
            .contains("peer"));
    }
}
