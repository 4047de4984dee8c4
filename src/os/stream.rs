//! Stream sockets as the worker uses them: a non-blocking connect, its outcome, a
//! half-close, and which accept errors mean "out of resources".

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use socket2::{Domain, SockRef, Socket, Type};

/// Starts a non-blocking, close-on-exec TCP connect to `addr` with `TCP_NODELAY`;
/// the socket becomes writable once it completes (see [`take_error`]).
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    // Best effort: a proxy without it still works, only with Nagle delays.
    let _ = s.set_nodelay(true);
    match s.connect(&addr.into()) {
        Ok(()) => Ok(s.into()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s.into()),
        Err(e) => Err(e),
    }
}

/// The pending error of a socket (`SO_ERROR`), e.g. how a non-blocking connect ended.
pub fn take_error(fd: impl AsFd) -> io::Result<Option<io::Error>> {
    SockRef::from(&fd.as_fd()).take_error()
}

/// The socket's current maximum segment size (`TCP_MAXSEG`): the payload of one full
/// TCP segment on this connection.
pub fn segment_size(fd: impl AsFd) -> io::Result<u32> {
    SockRef::from(&fd.as_fd()).mss()
}

/// Sends FIN: no more writes, reading goes on.
pub fn shutdown_write(fd: impl AsFd) -> io::Result<()> {
    SockRef::from(&fd.as_fd()).shutdown(Shutdown::Write)
}

/// `accept` failed for lack of fds, buffers or memory: worth backing off, not
/// retrying at once.
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
