//! The master↔worker channel: one SOCK_SEQPACKET socketpair per worker carrying
//! JSON messages, one message per packet.
//!
//! Seqpacket keeps message boundaries, so there is no framing to get wrong, and an EOF
//! is unambiguous: a worker that reads EOF knows its master is gone (even by SIGKILL)
//! and winds itself down instead of serving forever as an orphan.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

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
    /// Log lines dropped because the worker's log writer could not keep up.
    #[serde(default)]
    pub log_dropped: u64,
}

/// Worker → master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToMaster {
    /// Initialised and accepting.
    Ready,
    /// A draining worker hands over an idle connection (the fd travels with the
    /// message) for a worker of the current generation to adopt: the client never
    /// sees its keep-alive connection closed.
    Handoff { listen: String },
    /// Still alive; sent from the timer step of the loop, so a hung loop goes silent.
    Heartbeat(Stats),
}

/// Master → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Stop accepting; deal with idle connections as `idle` says; let active ones
    /// finish; exit when the last one is gone.
    Drain { idle: IdlePolicy },
    /// Adopt a connection handed over by a draining worker (the fd travels with the
    /// message), as if accepted on the listener bound to `listen`.
    Adopt { listen: String },
    /// Close everything and exit now.
    Stop,
    /// Reopen the log file (after logrotate renamed it).
    ReopenLogs,
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

    /// Sends one message without blocking. A full buffer (a worker that stopped
    /// reading) surfaces as `WouldBlock`; the caller decides what that means.
    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        fd::send(self.fd.as_fd(), &bytes).map(drop)
    }

    /// Sends one message with a file descriptor attached (SCM_RIGHTS): the receiver
    /// gets its own copy of the open file; ours can be closed right after.
    pub fn send_fd<T: Serialize>(&self, msg: &T, fd: BorrowedFd<'_>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// Receives one message if one is waiting: `Ok(None)` when none is. A file
    /// descriptor sent along with it is discarded (closed); see `recv_fd`.
    pub fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<Option<T>, ChannelError> {
        Ok(self.recv_fd()?.map(|(m, _)| m))
    }

    /// Receives one message and the file descriptor sent with it, if any. The fd is
    /// CLOEXEC (MSG_CMSG_CLOEXEC), like every fd we own.
    pub fn recv_fd<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> Result<Option<(T, Option<OwnedFd>)>, ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => return Ok(None),
                // The peer exited with our messages unread: as good as EOF.
                Err(nix::errno::Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(io::Error::from(e).into()),
            };
            let mut fd = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed this fd in our table
                            // for us; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
            }
            (msg.bytes, fd)
        };
        if n == 0 {
            return Err(ChannelError::Closed);
        }
        Ok(Some((serde_json::from_slice(&buf[..n])?, fd)))
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
        assert!(matches!(w.recv::<ToWorker>(), Err(ChannelError::Closed)));
    }

    #[test]
    fn fds_travel_with_messages() {
        let (m, w) = Channel::pair().unwrap();
        let (r, wr) = crate::os::fd::pipe().unwrap();
        w.send_fd(&ToMaster::Handoff { listen: "x".into() }, wr.as_fd())
            .unwrap();
        drop(wr);
        let (msg, fd) = m.recv_fd::<ToMaster>().unwrap().unwrap();
        assert_eq!(msg, ToMaster::Handoff { listen: "x".into() });
        let fd = fd.expect("fd");
        crate::os::fd::write(fd.as_fd(), b"hi").unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(crate::os::fd::read(r.as_fd(), &mut buf).unwrap(), 2);
        assert_eq!(&buf, b"hi");
    }
}
