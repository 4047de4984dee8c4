//! File descriptors: pipes, socketpairs, flags, and raw reads and writes that report
//! `WouldBlock` instead of blocking.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::syscall::{cvt, retry};
use super::{Ctx, SysError};

/// A pipe, both ends CLOEXEC and non-blocking: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SysError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .ctx("pipe2()", || "creating a pipe".into())
}

/// A connected pair of SOCK_SEQPACKET Unix sockets, CLOEXEC and non-blocking: each send
/// is delivered as one message, so the master↔worker channel needs no framing code.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), SysError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .ctx("socketpair()", || "creating a channel".into())
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<(), SysError> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
        .ctx("fcntl(F_GETFL)", || "reading fd flags".into())?;
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))
        .ctx("fcntl(F_SETFL)", || "setting O_NONBLOCK".into())?;
    Ok(())
}

/// Sets or clears FD_CLOEXEC. Cleared only in a child about to exec, on exactly the
/// fds it is meant to inherit.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> Result<(), SysError> {
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags))
        .ctx("fcntl(F_SETFD)", || "setting FD_CLOEXEC".into())?;
    Ok(())
}

/// A copy of `fd` at the lowest free number >= `floor`, *without* FD_CLOEXEC: only
/// in a child about to exec, for an fd it is meant to inherit (the number is then
/// named to the new program, so the copy is deliberately left as a raw fd).
pub fn dup_inheritable(fd: BorrowedFd<'_>, floor: RawFd) -> Result<RawFd, SysError> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD(floor)).ctx("fcntl(F_DUPFD)", || {
        "copying an fd for the new program".into()
    })
}

/// Checks, without taking ownership (a wrong number must not close an fd that
/// something else owns), that `raw` is an open SOCK_SEQPACKET socket made by process
/// `creator` (SO_PEERCRED of a socketpair names the process that made it).
pub fn check_channel_from(raw: RawFd, creator: i32) -> Result<(), String> {
    fcntl(raw, FcntlArg::F_GETFD).map_err(|e| format!("not an open file descriptor ({e})"))?;
    // SAFETY: `raw` is open (just checked) and the borrow does not leave this
    // function; it is only asked for socket options.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        Ok(t) => return Err(format!("a {t:?} socket, not a seqpacket channel")),
        Err(e) => return Err(format!("not a socket ({e})")),
    }
    let peer = super::cred::peer(&fd).map_err(|e| e.to_string())?;
    if peer.pid != creator {
        return Err(format!("made by pid {}, not by {creator}", peer.pid));
    }
    Ok(())
}

/// `read(2)` into `buf`; `Ok(0)` is end of file, `WouldBlock` means no data now.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the whole call.
        cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
    .map(|n| n as usize)
}

/// `send(2)` with MSG_NOSIGNAL: a peer that went away yields EPIPE, never SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: buf is a valid readable region of buf.len() bytes for the whole call.
        cvt(unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    })
    .map(|n| n as usize)
}

/// `write(2)` for pipes and other non-sockets.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: buf is a valid readable region of buf.len() bytes for the whole call.
        cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    })
    .map(|n| n as usize)
}

/// Takes ownership of a raw fd handed to us by the environment (`LISTEN_FDS`, a
/// command-line number). Refuses fds that are not open.
///
/// # Safety
///
/// Nothing else in this process may own `raw`: an open fd that something else owns
/// would be closed twice, the second time perhaps closing an unrelated file that got
/// the number in between. That holds for an fd inherited across exec by a protocol
/// that names it (open since we started, so no `open` here returned its number), taken
/// once.
pub unsafe fn adopt(raw: RawFd) -> Result<OwnedFd, SysError> {
    fcntl(raw, FcntlArg::F_GETFD)
        .ctx("fcntl(F_GETFD)", || format!("checking inherited fd {raw}"))?;
    // SAFETY: the fd is open (checked above) and, by the caller's guarantee, owned by
    // nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Fd numbers [`claim_inherited`] has handed out, so that none is owned twice.
static CLAIMED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of an fd that a protocol of our environment names (`LISTEN_FDS`,
/// the upgrade's readiness pipe and link), once: a number claimed before, one of
/// 0–2, or one that is not open is refused.
///
/// This is the safe way in for inherited fds: such a number was open when the
/// program started, so no `open` of ours returned it and nothing else owns it unless
/// it was claimed already, which the registry refuses. The callers remove the
/// environment variable as they read it, so children never see it.
pub fn claim_inherited(raw: RawFd) -> Result<OwnedFd, SysError> {
    let refuse = |why: &str| {
        SysError::new(
            "claim",
            format!("inherited fd {raw}: {why}"),
            nix::errno::Errno::EBADF,
        )
    };
    if raw < 3 {
        return Err(refuse("0, 1 and 2 are the standard streams"));
    }
    // A poisoned lock only means a panic elsewhere; the list itself is still whole.
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if claimed.contains(&raw) {
        return Err(refuse("already claimed"));
    }
    // SAFETY: open since exec (checked by `adopt`) and, by the registry, claimed by
    // nobody else in this process.
    let fd = unsafe { adopt(raw) }?;
    claimed.push(raw);
    Ok(fd)
}

/// An eventfd, CLOEXEC and non-blocking, for waking an event loop from elsewhere.
pub fn eventfd() -> Result<OwnedFd, SysError> {
    // SAFETY: eventfd has no memory arguments; the result is checked before use.
    let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
        .ctx("eventfd()", || "creating a wake-up fd".into())?;
    // SAFETY: raw was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `splice(2)` up to `len` bytes from `from` to `to` (one of them a pipe), without
/// blocking and without copying through user space. `Ok(0)` is end of file on `from`.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    retry(|| {
        // SAFETY: null offsets mean "current position"; no user memory is involved.
        cvt(unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        })
    })
    .map(|n| n as usize)
}

/// True when the fd is readable now, without blocking.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd array of length 1 for the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && p.revents != 0
}

/// Bytes waiting to be read in a pipe or socket (FIONREAD).
pub fn readable_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid and
    // exclusively ours for the duration of the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Sets a socket's send buffer (SO_SNDBUF; the kernel doubles it). For tests that need
/// a channel to fill after a known amount, whatever the box's `wmem_default`.
#[cfg(test)]
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    socket2::SockRef::from(&fd).set_send_buffer_size(bytes)
}
