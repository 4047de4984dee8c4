//! The master↔worker channel: one SOCK_SEQPACKET socketpair per worker carrying
//! JSON messages, one message per packet.
//!
//! Seqpacket keeps message boundaries, so there is no framing to get wrong, and an EOF
//! is unambiguous: a worker that reads EOF knows its master is gone (even by SIGKILL)
//! and winds itself down instead of serving forever as an orphan.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::os::{fd, scm};

mod b64;

/// Largest message either side sends; the receive buffer is this big.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// Most connections one hand-over message carries. SCM_RIGHTS allows 253 fds; 64
/// keeps a message small (the socket buffer holds many) while 5000 connections still
/// travel in ~80 messages instead of 5000.
pub const BATCH_CONNS: usize = 64;
/// Most bytes of per-connection descriptions in one hand-over message, so a batch
/// stays well inside `MAX_MESSAGE` however long the listener names (and, later, any
/// per-connection state) are.
pub const BATCH_BYTES: usize = 16 * 1024;

/// A worker's counters, sent with every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Open client connections.
    pub connections: u64,
    /// Connections accepted since the worker started.
    pub accepted: u64,
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
}

impl Handed {
    /// An idle connection accepted on `listen`, with nothing to carry.
    pub fn idle(listen: String) -> Handed {
        Handed {
            listen,
            peer: None,
            moved: None,
        }
    }

    /// What this entry costs in a message, for `BATCH_BYTES` (JSON overhead included).
    fn weight(&self) -> usize {
        let moved = self.moved.as_ref().map_or(0, |m| {
            b64::encoded_len(m.state.len())
                + b64::encoded_len(m.input.len())
                + m.refused.as_ref().map_or(0, |r| r.len() + 16)
                + 192
        });
        self.listen.len() + 16 + if self.peer.is_some() { 60 } else { 0 } + moved
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
    /// A draining worker's queue of hand-overs ran empty; its counts so far.
    HandoffDone(HandoffCounts),
    /// Still alive; sent from the timer step of the loop, so a hung loop goes silent.
    Heartbeat(Stats),
    /// An injected fault the worker survives (`slow`, `emfile`) is over; `note` says
    /// what it did.
    FaultOver { note: String },
    /// Per-listener and per-upstream counters, sent right after each heartbeat (in
    /// several messages when there are many; each names its entries).
    Counters(crate::worker::stats::Counters),
    /// A metrics scrape on this worker waits for the master's text (answered with
    /// `ToWorker::Metrics` parts carrying the same `id`).
    MetricsRequest { id: u64 },
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
    /// Close everything and exit now.
    Stop,
    /// Reopen the log file (after logrotate renamed it).
    ReopenLogs,
    /// `corral fault`: fail in this way, for real.
    Fault { kind: crate::fault::kind::FaultKind },
    /// One part of the metrics text for the scrape `id`; `last` ends it. Large texts
    /// travel in several parts, each well inside `MAX_MESSAGE`.
    Metrics { id: u64, text: String, last: bool },
}

/// Old master → new master of a binary upgrade, on their private channel (a
/// socketpair the new master inherited): idle connections of the old master's worker
/// `from` (its pid), for the new master's workers to adopt; their fds travel with the
/// message, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToSuccessor {
    Conns { from: i32, conns: Vec<Handed> },
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

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the other side closed the channel")]
    Closed,
    #[error("channel read failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed channel message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// One end of a channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: (master end, worker end).
    pub fn pair() -> Result<(Channel, Channel), crate::os::SysError> {
        let (a, b) = fd::seqpacket_pair()?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// A channel over a socket we already hold (the upgrade's master-to-master pair).
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Sends one message without blocking. A full buffer (a worker that stopped
    /// reading) surfaces as `WouldBlock`; the caller decides what that means.
    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        fd::send(self.fd.as_fd(), &bytes).map(drop)
    }

    /// Sends one message with file descriptors attached (SCM_RIGHTS), without
    /// blocking: the receiver gets its own copies of the open files; ours can be
    /// closed right after. `WouldBlock` means nothing was sent.
    pub fn send_fds<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(io::Error::other(format!(
                "channel message of {} bytes exceeds {MAX_MESSAGE}",
                bytes.len()
            )));
        }
        scm::send(self.fd.as_fd(), &bytes, fds)
    }

    /// Bytes we sent that the other side has not read yet (0 if that cannot be told).
    pub fn unread(&self) -> usize {
        scm::unread(self.fd.as_fd()).unwrap_or(0)
    }

    /// Receives one message if one is waiting: `Ok(None)` when none is. File
    /// descriptors sent along with it are discarded (closed); see `recv_fds`.
    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<Option<T>, ChannelError> {
        Ok(self.recv_fds()?.map(|(m, _)| m))
    }

    /// Receives one message and the file descriptors sent with it, in order. The fds
    /// are CLOEXEC (MSG_CMSG_CLOEXEC), like every fd we own.
    pub fn recv_fds<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = match scm::recv(self.fd.as_fd(), &mut buf) {
            Ok(Some(got)) => got,
            Ok(None) => return Ok(None),
            // The peer exited with our messages unread: as good as EOF.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ChannelError::Closed)
            }
            Err(e) => return Err(e.into()),
        };
        if got.len == 0 {
            return Err(ChannelError::Closed);
        }
        if got.truncated {
            tracing::warn!(
                received = got.fds.len(),
                "channel message lost some of its file descriptors in transit"
            );
        }
        Ok(Some((serde_json::from_slice(&buf[..got.len])?, got.fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Connections waiting to be sent over a channel, in batches, with backpressure: a
/// full channel leaves them queued (the owner waits for writability and flushes
/// again); nothing is dropped here.
#[derive(Debug, Default)]
pub struct ConnQueue {
    items: VecDeque<(Handed, OwnedFd)>,
}

/// What one `ConnQueue::flush` did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Connections sent.
    pub conns: usize,
    /// Messages they took.
    pub messages: usize,
    /// The channel failed (not merely full); what was not sent is still queued.
    pub error: Option<io::Error>,
}

impl ConnQueue {
    pub fn push(&mut self, handed: Handed, fd: OwnedFd) {
        self.items.push_back((handed, fd));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every queued connection out (to keep, re-route or close them).
    pub fn take_all(&mut self) -> Vec<(Handed, OwnedFd)> {
        self.items.drain(..).collect()
    }

    /// How many of the first queued connections form the next batch.
    fn next_batch(&self) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        for (h, _) in self.items.iter().take(BATCH_CONNS) {
            bytes += h.weight();
            if n > 0 && bytes > BATCH_BYTES {
                break;
            }
            n += 1;
        }
        n
    }

    /// Sends batches (each wrapped by `wrap`) until the queue is empty, the channel is
    /// full (a non-empty queue and no error: flush again when writable) or the channel
    /// fails (`error`, with the unsent connections still queued).
    pub fn flush<M: Serialize>(
        &mut self,
        ch: &Channel,
        wrap: impl Fn(Vec<Handed>) -> M,
    ) -> Flushed {
        let mut done = Flushed::default();
        while !self.items.is_empty() {
            let n = self.next_batch();
            let conns: Vec<Handed> = self.items.iter().take(n).map(|(h, _)| h.clone()).collect();
            let fds: Vec<BorrowedFd<'_>> =
                self.items.iter().take(n).map(|(_, f)| f.as_fd()).collect();
            match ch.send_fds(&wrap(conns), &fds) {
                Ok(()) => {
                    drop(fds);
                    // Our copies close here; the receiver holds its own.
                    self.items.drain(..n);
                    done.conns += n;
                    done.messages += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    done.error = Some(e);
                    break;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_eof_is_closed() {
        let (m, w) = Channel::pair().unwrap();
        assert!(matches!(w.recv::<ToWorker>(), Ok(None)));
        m.send(&ToWorker::Drain {
            idle: IdlePolicy::Handoff,
        })
        .unwrap();
        m.send(&ToWorker::Stop).unwrap();
        assert_eq!(
            w.recv::<ToWorker>().unwrap(),
            Some(ToWorker::Drain {
                idle: IdlePolicy::Handoff
            })
        );
        assert_eq!(w.recv::<ToWorker>().unwrap(), Some(ToWorker::Stop));
        let stats = Stats {
            connections: 3,
            rss: 1 << 20,
            ..Stats::default()
        };
        w.send(&ToMaster::Heartbeat(stats)).unwrap();
        assert_eq!(
            m.recv::<ToMaster>().unwrap(),
            Some(ToMaster::Heartbeat(stats))
        );
        drop(m);
        assert!(matches!(w.recv::<ToWorker>(), Err(ChannelError::Closed)));
    }

    fn handed(listen: &str) -> Handed {
        Handed::idle(listen.into())
    }

    #[test]
    fn fds_travel_with_messages_in_order() {
        let (m, w) = Channel::pair().unwrap();
        let (r1, w1) = crate::os::fd::pipe().unwrap();
        let (r2, w2) = crate::os::fd::pipe().unwrap();
        let msg = ToMaster::Handoff {
            conns: vec![handed("a"), handed("b")],
        };
        w.send_fds(&msg, &[w1.as_fd(), w2.as_fd()]).unwrap();
        drop((w1, w2));
        let (got, fds) = m.recv_fds::<ToMaster>().unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        for (fd, (r, text)) in fds.iter().zip([(&r1, b"one"), (&r2, b"two")]) {
            crate::os::fd::write(fd.as_fd(), text).unwrap();
            let mut buf = [0u8; 3];
            assert_eq!(crate::os::fd::read(r.as_fd(), &mut buf).unwrap(), 3);
            assert_eq!(&buf, text);
        }
    }

    /// Thousands of connections through a channel nobody reads at first: the queue
    /// sends 64 per message until the socket is full, keeps the rest (nothing is
    /// dropped on EAGAIN), and delivers every one, in order, as the reader catches up.
    /// (Long names make each message ~14 KB, so the socket buffer fills well before
    /// 3000 connections have gone.)
    #[test]
    fn queue_batches_and_keeps_what_a_full_channel_refuses() {
        const N: usize = 3000;
        let name = |i: usize| format!("{}:{i}", "x".repeat(200));
        let _ = crate::os::process::raise_nofile_limit();
        let (m, w) = Channel::pair().unwrap();
        let mut reads = Vec::with_capacity(N);
        let mut q = ConnQueue::default();
        for i in 0..N {
            let (r, wr) = crate::os::fd::pipe().unwrap();
            reads.push(r);
            q.push(handed(&name(i)), wr);
        }
        let first = q.flush(&w, |conns| ToMaster::Handoff { conns });
        assert!(first.error.is_none(), "{:?}", first.error);
        assert!(first.conns > 0, "nothing sent");
        assert!(
            first.conns < N && q.len() == N - first.conns,
            "a full channel must leave the rest queued: sent {}, queued {}",
            first.conns,
            q.len()
        );
        assert_eq!(first.messages, first.conns.div_ceil(BATCH_CONNS));
        let mut next = 0;
        let mut messages = first.messages;
        while next < N {
            let Some((msg, fds)) = m.recv_fds::<ToMaster>().unwrap() else {
                let more = q.flush(&w, |conns| ToMaster::Handoff { conns });
                assert!(more.error.is_none(), "{:?}", more.error);
                messages += more.messages;
                assert!(more.conns > 0, "channel drained but nothing was sent");
                continue;
            };
            let ToMaster::Handoff { conns } = msg else {
                panic!("unexpected {msg:?}");
            };
            assert!(conns.len() <= BATCH_CONNS);
            assert_eq!(conns.len(), fds.len());
            for (h, fd) in conns.iter().zip(&fds) {
                assert_eq!(h.listen, name(next));
                crate::os::fd::write(fd.as_fd(), b"x").unwrap();
                let mut b = [0u8; 1];
                assert_eq!(crate::os::fd::read(reads[next].as_fd(), &mut b).unwrap(), 1);
                next += 1;
            }
        }
        assert!(q.is_empty());
        assert_eq!(messages, N.div_ceil(BATCH_CONNS));
    }

    /// Connections with the largest state they may carry still travel, one per
    /// message if need be, each message under `MAX_MESSAGE`, state byte-exact.
    #[test]
    fn the_largest_moved_states_fit_in_a_message() {
        let mut q = ConnQueue::default();
        let state: Vec<u8> = (0..MAX_MOVED_BYTES).map(|i| (i * 7) as u8).collect();
        for _ in 0..3 {
            let (_r, wr) = crate::os::fd::pipe().unwrap();
            let mut h = handed(&"x".repeat(100));
            h.moved = Some(Box::new(Moved {
                service: "kv".into(),
                version: 7,
                state: state[..MAX_MOVED_BYTES / 2].to_vec(),
                input: state[MAX_MOVED_BYTES / 2..].to_vec(),
                idle_ms: 5,
                timer_ms: Some(9),
                origin: 1,
                upstream: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
                refused: Some("r".repeat(200)),
            }));
            q.push(h, wr);
        }
        let (m, w) = Channel::pair().unwrap();
        let done = q.flush(&w, |conns| ToMaster::Handoff { conns });
        assert!(done.error.is_none(), "{:?}", done.error);
        assert_eq!((done.conns, done.messages), (3, 3));
        for _ in 0..3 {
            let (msg, fds) = m.recv_fds::<ToMaster>().unwrap().unwrap();
            let ToMaster::Handoff { conns } = msg else {
                panic!("{msg:?}")
            };
            assert_eq!((conns.len(), fds.len()), (1, 1));
            let got = conns[0].moved.as_ref().unwrap();
            assert_eq!([got.state.clone(), got.input.clone()].concat(), state);
        }
    }

    /// A record from a binary without the `moved` field still reads (an idle
    /// connection), and an idle one is written without it.
    #[test]
    fn handed_records_stay_compatible() {
        let old: Handed = serde_json::from_str(r#"{"listen":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old, handed("127.0.0.1:80"));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"listen":"127.0.0.1:80"}"#
        );
    }

    #[test]
    fn long_names_make_smaller_batches() {
        let mut q = ConnQueue::default();
        let long = "x".repeat(1000);
        for _ in 0..BATCH_CONNS {
            let (_r, wr) = crate::os::fd::pipe().unwrap();
            q.push(handed(&long), wr);
        }
        let n = q.next_batch();
        assert!(n < BATCH_CONNS && n * 1016 <= BATCH_BYTES, "{n}");
        let (m, w) = Channel::pair().unwrap();
        let done = q.flush(&w, |conns| ToWorker::Adopt { conns });
        assert!(done.error.is_none(), "{:?}", done.error);
        assert_eq!(done.conns, BATCH_CONNS);
        let (msg, fds) = m.recv_fds::<ToWorker>().unwrap().unwrap();
        assert!(matches!(msg, ToWorker::Adopt { conns } if conns.len() == n));
        assert_eq!(fds.len(), n);
    }

    #[test]
    fn handed_peer_travels_and_old_records_still_parse() {
        let h = Handed {
            listen: "127.0.0.1:80".into(),
            peer: Some("203.0.113.5:6000".parse().unwrap()),
            moved: None,
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handed>(&json).unwrap(), h);
        // A record from a binary without the field (an upgrade from it).
        let old: Handed = serde_json::from_str(r#"{"listen":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old.peer, None);
        assert!(!serde_json::to_string(&handed("x"))
            .unwrap()
            .contains("peer"));
    }
}
