//! The master↔worker channel: one SOCK_SEQPACKET socketpair per worker carrying
//! JSON messages, one message per packet.
//!
//! Seqpacket keeps message boundaries, so there is no framing to get wrong, and an EOF
//! is unambiguous: a worker that reads EOF knows its master is gone (even by SIGKILL)
//! and winds itself down instead of serving forever as an orphan.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::os::{fd, scm};

pub(crate) mod b64;
mod counters;
mod messages;
mod push;
mod queue;

/// For [`crate::fuzzing`]'s canonical-encoding check.
pub(crate) use b64::{decode as b64_decode, encode as b64_encode};
pub use counters::{Counters, ListenerCounters, UpstreamCounters};
pub use messages::{
    Handed, HandoffCounts, IdlePolicy, LaneMsg, Moved, Stats, ToMaster, ToPredecessor, ToSuccessor,
    ToWorker, MAX_MOVED_BYTES,
};
pub use push::{PushCounts, PushMoved};
pub use queue::ConnQueue;

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
        // Wiped after use, as every message buffer here: some messages carry secrets
        // (TLS ticket keys).
        let bytes = Zeroizing::new(serde_json::to_vec(msg).map_err(io::Error::other)?);
        fd::send(self.fd.as_fd(), &bytes).map(drop)
    }

    /// Sends one message with file descriptors attached (SCM_RIGHTS), without
    /// blocking: the receiver gets its own copies of the open files; ours can be
    /// closed right after. `WouldBlock` means nothing was sent.
    pub fn send_fds<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = Zeroizing::new(serde_json::to_vec(msg).map_err(io::Error::other)?);
        if bytes.len() > MAX_MESSAGE {
            return Err(io::Error::other(format!(
                "channel message of {} bytes exceeds {MAX_MESSAGE}",
                bytes.len()
            )));
        }
        scm::send(self.fd.as_fd(), &bytes, fds)
    }

    /// Whether a message (or the other side's EOF) waits to be read.
    pub fn has_input(&self) -> bool {
        use crate::os::master::{poll, PollFlags};
        poll(
            &[(self.fd.as_fd(), PollFlags::POLLIN)],
            Some(std::time::Duration::ZERO),
        )
        .is_ok_and(|r| r.first().is_some_and(|f| !f.is_empty()))
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
        let parsed = serde_json::from_slice(&buf[..got.len]);
        // Wiped after use (only the bytes a message took: most receives find none,
        // and the rest of the buffer never held anything): some messages carry
        // secrets (TLS ticket and record keys).
        buf[..got.len].zeroize();
        Ok(Some((parsed?, got.fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
        // EOF comes once every copy of `m` is closed: a child another test of this
        // process forks meanwhile holds one until it exits, so wait for it.
        assert!(
            (0..10_000).any(|_| match w.recv::<ToWorker>() {
                Err(ChannelError::Closed) => true,
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    false
                }
            }),
            "no EOF after the master's end closed"
        );
    }

    #[test]
    fn fds_travel_with_messages_in_order() {
        let (m, w) = Channel::pair().unwrap();
        let (r1, w1) = crate::os::fd::pipe().unwrap();
        let (r2, w2) = crate::os::fd::pipe().unwrap();
        let msg = ToMaster::Handoff {
            conns: vec![Handed::idle("a".into()), Handed::idle("b".into())],
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
}
