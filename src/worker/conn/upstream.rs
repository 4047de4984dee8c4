//! The upstream side of a proxied connection: its socket, pending bytes and state.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::os::epoll::Interest;
use crate::os::{fd, stream};

use super::{Flags, Pipes};

/// The upstream side of a proxied connection.
pub struct Upstream {
    pub fd: OwnedFd,
    /// Which upstream (index in the service's list), and every one tried so far.
    pub index: usize,
    /// Its address, for log lines.
    pub addr: SocketAddr,
    pub tried: Vec<usize>,
    /// When this attempt's connect times out: a connect timer of an earlier attempt
    /// (due before this) finds the connection still connecting and is ignored.
    pub connect_by: Instant,
    /// Client bytes not yet sent upstream: `out[out_pos..]`.
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    /// The upstream socket's readiness (`READ_CLOSED`: the upstream sent FIN;
    /// `WRITE_SHUT`: we sent FIN upstream as the client half-closed; `BACKPRESSURED`:
    /// not read while the client's output is above the high water mark), whether it
    /// is `CONNECTED`, and `BACKPRESSURED_CLIENT`: the client is not read while its
    /// bytes wait here above the high water mark.
    pub flags: Flags,
    pub registered: Interest,
    /// Zero-copy forwarding, once connected, when the listener asks for it.
    pub pipes: Option<Box<Pipes>>,
    /// The segment sizes (TCP MSS) of the upstream and the client socket, learnt at
    /// the first copying pump after the connect (1: unknown, no rounding). The
    /// copy pump reads whole segments' worth for the socket it writes to (see
    /// `proxy_pump::whole_segments`).
    pub(super) segments: Option<(u32, u32)>,
}

impl Upstream {
    pub fn new(
        fd: OwnedFd,
        index: usize,
        addr: SocketAddr,
        tried: Vec<usize>,
        connect_by: Instant,
    ) -> Upstream {
        Upstream {
            fd,
            index,
            addr,
            tried,
            connect_by,
            out: Vec::new(),
            out_pos: 0,
            flags: Flags::default(),
            pipes: None,
            segments: None,
            registered: Interest {
                write: true,
                edge: true,
                ..Interest::READ
            },
        }
    }

    /// An established upstream connection that moved here with its client.
    pub fn moved(fd: OwnedFd, index: usize, addr: SocketAddr) -> Upstream {
        // Connected already: no connect timer will look at the deadline.
        let mut up = Upstream::new(fd, index, addr, vec![index], Instant::now());
        up.flags.set(Flags::CONNECTED, true);
        up.flags.set(Flags::MAY_READ, true);
        up.registered = up.interest();
        up
    }

    /// Neither direction holds a byte here, and no half-close is under way: the pair
    /// can move. Pipe fills are read from the kernel (FIONREAD), not only from our
    /// counts, so a byte a splice left behind is never stranded.
    pub(super) fn quiescent(&self) -> bool {
        let pipes_empty = self.pipes.as_ref().is_none_or(|p| {
            [&p.c2u, &p.u2c]
                .iter()
                .all(|pipe| pipe.len == 0 && fd::readable_bytes(pipe.r.as_fd()).ok() == Some(0))
        });
        self.flags.has(Flags::CONNECTED)
            && self.out.len() == self.out_pos
            && pipes_empty
            && !self.flags.has(Flags::READ_CLOSED)
            && !self.flags.has(Flags::WRITE_SHUT)
    }

    /// The segment sizes `(upstream, client)`, asked of the kernel once per
    /// connection; 1 (no rounding) for a socket that does not say.
    pub(super) fn segments(&mut self, client: BorrowedFd<'_>) -> (usize, usize) {
        let (up, client) = *self.segments.get_or_insert_with(|| {
            let mss = |fd: BorrowedFd<'_>| stream::segment_size(fd).unwrap_or(0).max(1);
            (mss(self.fd.as_fd()), mss(client))
        });
        (up as usize, client as usize)
    }

    /// Client bytes not yet delivered upstream, in user space or in the pipe.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos + self.pipes.as_ref().map_or(0, |p| p.c2u.len)
    }

    /// Upstream bytes not yet delivered to the client that sit in the pipe.
    pub(super) fn piped_to_client(&self) -> usize {
        self.pipes.as_ref().map_or(0, |p| p.u2c.len)
    }

    /// Epoll interest: the connect's completion, then reads unless paused and writes
    /// only while client bytes wait.
    pub fn interest(&self) -> Interest {
        Interest {
            read: !self.flags.has(Flags::READ_CLOSED)
                && !self.flags.has(Flags::BACKPRESSURED)
                && !self.pipes.as_ref().is_some_and(|p| p.u2c.full),
            write: !self.flags.has(Flags::CONNECTED) || self.pending() > 0,
            edge: true,
            exclusive: false,
        }
    }

    /// Carries pending client bytes over to a new attempt.
    pub fn take_pending(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.out);
        v.drain(..self.out_pos);
        self.out_pos = 0;
        v
    }

    pub fn set_pending(&mut self, v: Vec<u8>) {
        self.out = v;
        self.out_pos = 0;
    }
}
