//! Connections waiting to go over a channel. A non-blocking seqpacket socket refuses
//! more after a few hundred messages, so a hand-over of thousands must be queued and
//! flushed again on writability, never dropped.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;

use super::{Channel, Handed, BATCH_BYTES, BATCH_CONNS};

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
    /// Too many fds of this user are in flight (see `flush_into`); try again later.
    pub starved: bool,
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

    /// Queues a connection ahead of the others (one coming back to be sent again).
    pub fn push_front(&mut self, handed: Handed, fd: OwnedFd) {
        self.items.push_front((handed, fd));
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
        self.flush_into(ch, wrap, None)
    }

    /// `flush`, keeping what was sent in `sent`, one entry per message (our copies of
    /// the fds stay open), when it is given: a lane's sender holds each connection
    /// until the receiver says it took it. The sending user's limit of fds in flight (ETOOMANYREFS) counts as a
    /// full channel, reported in `starved`: no writability will tell when it is over.
    pub fn flush_into<M: Serialize>(
        &mut self,
        ch: &Channel,
        wrap: impl Fn(Vec<Handed>) -> M,
        mut sent: Option<&mut Vec<Vec<(Handed, OwnedFd)>>>,
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
                    // Our copies close here (the receiver holds its own), unless the
                    // caller keeps them.
                    let gone = self.items.drain(..n);
                    match sent.as_deref_mut() {
                        Some(keep) => keep.push(gone.collect()),
                        None => drop(gone),
                    }
                    done.conns += n;
                    done.messages += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if crate::os::scm::too_many_in_flight(&e) => {
                    done.starved = true;
                    break;
                }
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
    use std::net::SocketAddr;

    use super::*;
    use crate::channel::{Moved, ToMaster, ToWorker, MAX_MOVED_BYTES};

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
            q.push(Handed::idle(name(i)), wr);
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
            let mut h = Handed::idle("x".repeat(100));
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
                idle: false,
                push: None,
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

    #[test]
    fn long_names_make_smaller_batches() {
        let mut q = ConnQueue::default();
        let long = "x".repeat(1000);
        for _ in 0..BATCH_CONNS {
            let (_r, wr) = crate::os::fd::pipe().unwrap();
            q.push(Handed::idle(long.clone()), wr);
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
}
