//! The workers' bus: how a published message reaches the other workers without
//! passing through the master's loop.
//!
//! The master wires the workers into a mesh of SOCK_SEQPACKET socketpairs: when it
//! forks a worker it makes one pair per live worker (any generation) and sends one
//! end to each side over their channels (`ToWorker::BusPeer`). After that it takes no
//! part: a publish is one packet per peer, written by the publishing worker, read by
//! each peer's loop. Seqpacket keeps boundaries and order per pair (so per
//! publisher), and a peer that exits shows as EOF. A peer's socket buffer holds only
//! a few hundred packets, so each peer has a bounded queue in front of it
//! (`PEER_QUEUE` messages, `PEER_QUEUE_BYTES`), flushed on EPOLLOUT; beyond it a
//! message is dropped for that peer and counted.
//!
//! A packet is `publisher u64 LE, seq u64 LE, topic length u8, topic, payload`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use crate::os::{fd, sockio};
use crate::service::push::{MAX_MESSAGE, MAX_TOPIC, PEER_QUEUE, PEER_QUEUE_BYTES};

/// Marks a bus peer's epoll token (with the peer's key in the low 32 bits).
pub const TOKEN_BUS: u64 = (1 << 63) | (1 << 62) | (1 << 40);
/// Bytes of a packet before the topic.
const HEADER: usize = 17;

/// One published message as it travels and as a worker keeps it.
#[derive(Debug)]
pub struct Msg {
    pub publisher: u64,
    pub seq: u64,
    pub topic: Rc<str>,
    pub payload: Box<[u8]>,
}

impl Msg {
    /// The packet for this message.
    pub fn encode(&self) -> Rc<[u8]> {
        let t = self.topic.as_bytes();
        let mut b = Vec::with_capacity(HEADER + t.len() + self.payload.len());
        b.extend_from_slice(&self.publisher.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.push(t.len() as u8);
        b.extend_from_slice(t);
        b.extend_from_slice(&self.payload);
        b.into()
    }

    /// A packet read from a peer; None if it is not one (a bug or a foreign binary).
    pub fn decode(b: &[u8]) -> Option<Msg> {
        let publisher = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        let tlen = usize::from(*b.get(16)?);
        let topic = std::str::from_utf8(b.get(HEADER..HEADER + tlen)?).ok()?;
        Some(Msg {
            publisher,
            seq,
            topic: topic.into(),
            payload: b[HEADER + tlen..].into(),
        })
    }
}

/// What a bus peer knows and owes.
struct Peer {
    key: u32,
    /// The peer worker's pid (for logs).
    pid: u32,
    fd: OwnedFd,
    queue: VecDeque<Rc<[u8]>>,
    queued_bytes: usize,
    /// More packets may be waiting (a turn ended before EAGAIN).
    readable: bool,
}

/// Counters of what the bus could not do.
#[derive(Clone, Copy, Debug, Default)]
pub struct BusCounts {
    /// Messages not sent to a peer because its queue was full.
    pub dropped_peer_full: u64,
    /// Packets from a peer that did not decode.
    pub malformed: u64,
}

/// This worker's ends of the mesh.
#[derive(Default)]
pub struct Bus {
    peers: Vec<Peer>,
    next_key: u32,
    pub counts: BusCounts,
    buf: Vec<u8>,
}

impl Bus {
    /// A new peer: its end of the pair, to watch with `epoll` under the returned token.
    pub fn add(&mut self, fd: OwnedFd, pid: u32) -> u64 {
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.peers.push(Peer {
            key,
            pid,
            fd,
            queue: VecDeque::new(),
            queued_bytes: 0,
            readable: true,
        });
        TOKEN_BUS | u64::from(key)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// The fd of the peer behind `token`, to watch it.
    pub fn fd_of(&self, token: u64) -> Option<std::os::fd::BorrowedFd<'_>> {
        let key = (token & 0xffff_ffff) as u32;
        self.peers
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.fd.as_fd())
    }

    /// An event on a peer's socket.
    pub fn event(&mut self, token: u64, readable: bool, writable: bool) -> Option<u32> {
        let key = (token & 0xffff_ffff) as u32;
        let i = self.peers.iter().position(|p| p.key == key)?;
        self.peers[i].readable |= readable;
        if writable && self.flush(i).is_err() {
            return Some(self.remove(i));
        }
        None
    }

    /// Whether a peer has packets to read.
    pub fn any_readable(&self) -> bool {
        self.peers.iter().any(|p| p.readable)
    }

    /// Sends `packet` to every peer (queued where a peer's socket is full). Returns
    /// the pids of peers found gone.
    pub fn broadcast(&mut self, packet: &Rc<[u8]>) -> Vec<u32> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.peers.len() {
            let p = &mut self.peers[i];
            if p.queue.len() >= PEER_QUEUE || p.queued_bytes + packet.len() > PEER_QUEUE_BYTES {
                self.counts.dropped_peer_full += 1;
                i += 1;
                continue;
            }
            p.queued_bytes += packet.len();
            p.queue.push_back(packet.clone());
            if p.queue.len() == 1 && self.flush(i).is_err() {
                gone.push(self.remove(i));
                continue;
            }
            i += 1;
        }
        gone
    }

    /// Writes a peer's queue until its socket is full.
    fn flush(&mut self, i: usize) -> io::Result<()> {
        let p = &mut self.peers[i];
        while let Some(b) = p.queue.front() {
            match fd::send(p.fd.as_fd(), b) {
                Ok(_) => {
                    p.queued_bytes -= b.len();
                    p.queue.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn remove(&mut self, i: usize) -> u32 {
        let p = self.peers.swap_remove(i);
        p.pid
    }

    /// Reads at most `per_peer` packets from every readable peer (a peer left with
    /// more stays marked readable, for the next call); returns the messages and the
    /// pids of peers that are gone (their fds are closed here: dropping an fd takes
    /// it out of the epoll set).
    pub fn read(&mut self, per_peer: usize) -> (Vec<Msg>, Vec<u32>) {
        if self.buf.len() < HEADER + MAX_TOPIC + MAX_MESSAGE {
            self.buf = vec![0; HEADER + MAX_TOPIC + MAX_MESSAGE];
        }
        let (mut msgs, mut gone) = (Vec::new(), Vec::new());
        let mut i = 0;
        while i < self.peers.len() {
            let p = &mut self.peers[i];
            let mut closed = false;
            if p.readable {
                let mut n = 0;
                loop {
                    if n == per_peer {
                        break; // still readable: the next iteration goes on
                    }
                    match sockio::recv(p.fd.as_fd(), &mut self.buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(len) => {
                            n += 1;
                            match Msg::decode(&self.buf[..len]) {
                                Some(m) => msgs.push(m),
                                None => self.counts.malformed += 1,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            p.readable = false;
                            break;
                        }
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed {
                gone.push(self.remove(i));
            } else {
                i += 1;
            }
        }
        (msgs, gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let m = Msg {
            publisher: 7,
            seq: 9,
            topic: "news".into(),
            payload: b"hello".to_vec().into(),
        };
        let b = m.encode();
        let d = Msg::decode(&b).unwrap();
        assert_eq!(
            (d.publisher, d.seq, &*d.topic, &*d.payload),
            (7, 9, "news", &b"hello"[..])
        );
        assert!(Msg::decode(&b[..10]).is_none());
    }

    /// A peer is another worker, which may be compromised: no packet makes decoding
    /// panic (every prefix and every byte changed of a real packet, and noise).
    #[test]
    fn no_packet_panics_the_decoder() {
        let m = Msg {
            publisher: u64::MAX,
            seq: 1,
            topic: "é topic".into(),
            payload: b"payload".to_vec().into(),
        };
        let b = m.encode().to_vec();
        for n in 0..=b.len() {
            let _ = Msg::decode(&b[..n]);
        }
        for i in 0..b.len() {
            for v in [0u8, 0x7f, 0xc3, 0xff] {
                let mut c = b.clone();
                c[i] = v;
                let _ = Msg::decode(&c);
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Msg::decode(&noise);
        }
    }

    /// A peer that does not read: the socket fills, then the queue, then messages
    /// are dropped and counted; nothing grows without bound. Once it reads, every
    /// queued message arrives in order.
    #[test]
    fn a_slow_peer_gets_a_bounded_queue_in_order() {
        let (a, b) = fd::seqpacket_pair().unwrap();
        let mut bus = Bus::default();
        let token = bus.add(a, 1);
        let mut other = Bus::default();
        other.add(b, 2);
        let total = PEER_QUEUE + 2000;
        for seq in 0..total as u64 {
            let m = Msg {
                publisher: 1,
                seq,
                topic: "t".into(),
                payload: Box::new([]),
            };
            assert!(bus.broadcast(&m.encode()).is_empty());
        }
        assert!(bus.counts.dropped_peer_full > 0);
        let mut next = 0;
        for _ in 0..1000 {
            let (msgs, gone) = other.read(1024);
            assert!(gone.is_empty());
            for m in msgs {
                assert_eq!(m.seq, next);
                next += 1;
            }
            other.peers[0].readable = true;
            bus.event(token, false, true);
        }
        assert_eq!(next + bus.counts.dropped_peer_full, total as u64);
    }
}
