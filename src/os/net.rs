//! Listening sockets and accept: binding TCP (v4, v6) and Unix listeners, and
//! `accept4(2)` straight into non-blocking, CLOEXEC connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::ListenAddr;

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {step} failed: {source}")]
    Bind {
        addr: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("cannot listen on {addr}: another process is serving on that socket")]
    UnixInUse { addr: String },
}

fn step<'a>(addr: &'a ListenAddr, step: &'static str) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::Bind {
        addr: addr.to_string(),
        step,
        source,
    }
}

/// Binds and listens on `addr`. The socket is CLOEXEC and non-blocking; TCP sockets
/// get SO_REUSEADDR (restart while old connections sit in TIME_WAIT) and IPv6 ones
/// IPV6_V6ONLY (so `[::]:80` and `0.0.0.0:80` can be listed side by side).
pub fn bind(addr: &ListenAddr, backlog: i32, reuseport: bool) -> Result<OwnedFd, NetError> {
    let socket = match addr {
        ListenAddr::Tcp(sa) => {
            let s = Socket::new(Domain::for_address(*sa), Type::STREAM.cloexec(), None)
                .map_err(step(addr, "socket()"))?;
            s.set_reuse_address(true)
                .map_err(step(addr, "setsockopt(SO_REUSEADDR)"))?;
            if reuseport {
                s.set_reuse_port(true)
                    .map_err(step(addr, "setsockopt(SO_REUSEPORT)"))?;
            }
            if sa.is_ipv6() {
                s.set_only_v6(true)
                    .map_err(step(addr, "setsockopt(IPV6_V6ONLY)"))?;
            }
            s.bind(&SockAddr::from(*sa)).map_err(step(addr, "bind()"))?;
            s
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(addr, path)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)
                .map_err(step(addr, "socket()"))?;
            s.bind(&SockAddr::unix(path).map_err(step(addr, "sockaddr_un"))?)
                .map_err(step(addr, "bind()"))?;
            s
        }
    };
    socket.listen(backlog).map_err(step(addr, "listen()"))?;
    socket
        .set_nonblocking(true)
        .map_err(step(addr, "fcntl(O_NONBLOCK)"))?;
    Ok(OwnedFd::from(socket))
}

/// A Unix socket file left by a process that died is removed; one that still answers
/// belongs to a live server and is not ours to take.
fn remove_stale_unix_socket(addr: &ListenAddr, path: &Path) -> Result<(), NetError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Ok(()); // bind() will fail with EADDRINUSE and say so.
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(NetError::UnixInUse {
            addr: addr.to_string(),
        }),
        Err(_) => std::fs::remove_file(path).map_err(step(addr, "unlink() of a stale socket")),
    }
}

/// The address a listening socket is bound to, for matching inherited sockets.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<ListenAddr> {
    let sock = socket2::SockRef::from(&fd);
    let addr = sock.local_addr()?;
    if let Some(sa) = addr.as_socket() {
        return Ok(ListenAddr::Tcp(sa));
    }
    match addr.as_pathname() {
        Some(p) => Ok(ListenAddr::Unix(p.to_path_buf())),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unnamed unix socket",
        )),
    }
}

/// True if the fd is a listening stream socket.
pub fn is_listener(fd: BorrowedFd<'_>) -> bool {
    let sock = socket2::SockRef::from(&fd);
    sock.r#type().map(|t| t == Type::STREAM).unwrap_or(false) && sock.is_listener().unwrap_or(false)
}

/// One accepted connection.
pub struct Accepted {
    pub fd: OwnedFd,
    /// The peer's IP (None for Unix sockets).
    pub peer: Option<IpAddr>,
}

/// `accept4(2)` with SOCK_NONBLOCK | SOCK_CLOEXEC. `WouldBlock` when the queue is empty.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Accepted> {
    // SAFETY: zeroed sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let raw = loop {
        // SAFETY: storage and len are valid for writes of the sizes given.
        let raw = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if raw >= 0 {
            break raw;
        }
        let e = io::Error::last_os_error();
        // ECONNABORTED: the client gave up while queued; just take the next one.
        if e.kind() != io::ErrorKind::Interrupted && e.raw_os_error() != Some(libc::ECONNABORTED) {
            return Err(e);
        }
    };
    // SAFETY: raw was just returned by accept4 and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the kernel filled `len` bytes of storage with a valid address.
    let addr = unsafe { SockAddr::new(storage, len) };
    let peer = addr.as_socket().map(|sa: SocketAddr| sa.ip());
    if peer.is_some() {
        // Echo and request/response traffic wants small writes out at once.
        let _ = socket2::SockRef::from(&fd).set_nodelay(true);
    }
    Ok(Accepted { fd, peer })
}

/// `recv(2)` with MSG_PEEK: the bytes stay queued for the next read (a PROXY header is
/// looked at before it is known how much of the input it takes).
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the whole call.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A connected socket's (peer, local) IP addresses; None for Unix sockets.
pub fn tcp_addrs(fd: BorrowedFd<'_>) -> Option<(SocketAddr, SocketAddr)> {
    let s = socket2::SockRef::from(&fd);
    let peer = s.peer_addr().ok()?.as_socket()?;
    let local = s.local_addr().ok()?.as_socket()?;
    Some((peer, local))
}
