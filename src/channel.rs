//! The master↔worker channel: one SOCK_SEQPACKET socketpair per worker carrying
//! JSON messages, one message per packet.
//!
//! Seqpacket keeps message boundaries, so there is no framing to get wrong, and an EOF
//! is unambiguous: a worker that reads EOF knows its master is gone (even by SIGKILL)
//! and winds itself down instead of serving forever as an orphan.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::os::fd;

/// Largest message either side sends; the receive buffer is this big.
const MAX_MESSAGE: usize = 8 * 1024;

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
}

/// Worker → master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToMaster {
    /// Initialised and accepting.
    Ready,
    /// Still alive; sent from the timer step of the loop, so a hung loop goes silent.
    Heartbeat(Stats),
}

/// Master → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Stop accepting, close idle connections, exit when the last one is gone.
    Drain,
    /// Close everything and exit now.
    Stop,
    /// Reopen the log file (after logrotate renamed it).
    ReopenLogs,
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

    /// Sends one message without blocking. A full buffer (a worker that stopped
    /// reading) surfaces as `WouldBlock`; the caller decides what that means.
    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        fd::send(self.fd.as_fd(), &bytes).map(drop)
    }

    /// Receives one message if one is waiting: `Ok(None)` when none is.
    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<Option<T>, ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE];
        match fd::read(self.fd.as_fd(), &mut buf) {
            Ok(0) => Err(ChannelError::Closed),
            Ok(n) => Ok(Some(serde_json::from_slice(&buf[..n])?)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
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
        m.send(&ToWorker::Drain).unwrap();
        m.send(&ToWorker::Stop).unwrap();
        assert_eq!(w.recv::<ToWorker>().unwrap(), Some(ToWorker::Drain));
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
}
