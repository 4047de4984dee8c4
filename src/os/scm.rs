//! File descriptors passed over a Unix socket (SCM_RIGHTS): one datagram, many fds.
//!
//! The channel moves idle connections between processes in batches, so these wrappers
//! take and return several fds per message. Received fds are CLOEXEC
//! (MSG_CMSG_CLOEXEC) and owned at once, so none can leak into a later fork or exec.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::syscall::{cvt, retry};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most fds the kernel accepts in one SCM_RIGHTS message (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// One received datagram.
pub struct Received {
    /// Bytes of payload; 0 means the peer closed (seqpacket EOF).
    pub len: usize,
    /// The fds that came with it, in the sender's order.
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped part of the control data (fds lost in transit).
    pub truncated: bool,
}

/// Sends `bytes` as one datagram with `fds` attached, without blocking (the socket
/// is non-blocking): a full buffer is `WouldBlock`, and nothing was sent.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    retry(|| {
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
    })
    .map(|_| ())
    .map_err(io::Error::from)
}

/// Receives one datagram into `buf` if one is waiting (`Ok(None)` when none is),
/// with room for up to `MAX_FDS` fds.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_buf),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(None),
        Err(e) => return Err(io::Error::from(e)),
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raws) = c {
                for raw in raws {
                    // SAFETY: the kernel just installed this fd in our table for us;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
    }
    Ok(Some(Received {
        len: msg.bytes,
        fds,
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    }))
}

/// Whether a send failed because the sending user has too many fds in flight in
/// Unix sockets already (ETOOMANYREFS: beyond its RLIMIT_NOFILE, without
/// CAP_SYS_RESOURCE): not a broken socket, a wait until receivers read some.
pub fn too_many_in_flight(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETOOMANYREFS)
}

/// Bytes sent on `sock` that the peer has not read yet (SIOCOUTQ). A sender whose
/// messages carry fds waits for 0 before it exits: what the peer never reads is lost
/// with the socket.
pub fn unread(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer, which is
    // valid and exclusively ours for the duration of the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Several fds as one: a Unix socket whose receive queue holds them (one message).
/// Whatever moves one fd (a channel batch, the master's queues) moves them all, and
/// [`unbundle`] gets them back, in order, in whichever process ends up with it.
pub fn bundle(fds: &[BorrowedFd<'_>]) -> io::Result<OwnedFd> {
    let (keep, send_end) = super::fd::seqpacket_pair().map_err(|e| e.io())?;
    send(send_end.as_fd(), b"b", fds)?;
    Ok(keep)
}

/// The fds of a [`bundle`]; `want` is how many it must hold.
pub fn unbundle(b: OwnedFd, want: usize) -> io::Result<Vec<OwnedFd>> {
    let mut buf = [0u8; 1];
    match recv(b.as_fd(), &mut buf)? {
        Some(got) if got.fds.len() == want && !got.truncated => Ok(got.fds),
        Some(got) => Err(io::Error::other(format!(
            "a bundle of {want} fds held {}",
            got.fds.len()
        ))),
        None => Err(io::Error::other("an empty bundle")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_gives_back_its_fds_in_order() {
        let (r1, w1) = crate::os::fd::pipe().unwrap();
        let (r2, w2) = crate::os::fd::pipe().unwrap();
        let b = bundle(&[w1.as_fd(), w2.as_fd()]).unwrap();
        drop((w1, w2));
        let fds = unbundle(b, 2).unwrap();
        for (fd, (r, text)) in fds.iter().zip([(&r1, b"one"), (&r2, b"two")]) {
            crate::os::fd::write(fd.as_fd(), text).unwrap();
            let mut buf = [0u8; 3];
            assert_eq!(crate::os::fd::read(r.as_fd(), &mut buf).unwrap(), 3);
            assert_eq!(&buf, text);
        }
        let b = bundle(&[r1.as_fd()]).unwrap();
        assert!(unbundle(b, 2).is_err(), "a count mismatch is an error");
    }

    /// One datagram carries its payload and the most fds the kernel takes, which
    /// arrive open, CLOEXEC, in order, and still reach what they were opened on.
    #[test]
    fn fds_round_trip_with_their_payload() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // Three fds per pipe sent: over the default soft limit of 1024 beside other tests.
        let _ = crate::os::process::raise_nofile_limit();
        let (a, b) = crate::os::fd::seqpacket_pair().unwrap();
        let mut buf = [0u8; 64];
        assert!(
            recv(b.as_fd(), &mut buf).unwrap().is_none(),
            "nothing sent yet"
        );
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..MAX_FDS)
            .map(|_| crate::os::fd::pipe().unwrap())
            .collect();
        let writers: Vec<BorrowedFd<'_>> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        send(a.as_fd(), b"payload", &writers).unwrap();
        let got = recv(b.as_fd(), &mut buf).unwrap().expect("a message");
        assert_eq!(&buf[..got.len], b"payload");
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), MAX_FDS);
        for (i, (fd, (r, w))) in got.fds.iter().zip(&pipes).enumerate() {
            assert_ne!(fd.as_raw_fd(), w.as_raw_fd(), "a new fd, not the sender's");
            let flags =
                FdFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC), "fd {i} is inheritable");
            let byte = [i as u8];
            crate::os::fd::write(fd.as_fd(), &byte).unwrap();
            let mut one = [0u8; 1];
            assert_eq!(crate::os::fd::read(r.as_fd(), &mut one).unwrap(), 1);
            assert_eq!(one, byte, "fd {i} arrived out of order");
        }
        drop(a);
        // EOF comes once every copy of `a` is closed: a child that another test of this
        // process forks meanwhile holds one until it exits, so wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let eof = loop {
            match recv(b.as_fd(), &mut buf).unwrap() {
                Some(m) => break m,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                None => panic!("no EOF after the sender closed"),
            }
        };
        assert_eq!((eof.len, eof.fds.len()), (0, 0));
    }
}
