//! Listening sockets and accept: binding TCP (v4, v6) and Unix listeners, and
//! `accept4(2)` straight into non-blocking, CLOEXEC connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

pub use super::addr::ListenAddr;
use super::syscall::{cvt, retry};

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

/// A connected socket's peer IP address (None for a Unix socket, or on error).
pub fn peer_ip(fd: BorrowedFd<'_>) -> Option<IpAddr> {
    peer_addr(fd).map(|a| a.ip())
}

/// A connected socket's peer address and port (None for a Unix socket, or on error).
pub fn peer_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    socket2::SockRef::from(&fd)
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
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
    /// The peer's address as accept() returned it: still known when the client
    /// reset before anyone asked (getpeername then fails), as a balancer's health
    /// check does.
    pub addr: Option<SocketAddr>,
}

/// `accept4(2)` with SOCK_NONBLOCK | SOCK_CLOEXEC. `WouldBlock` when the queue is empty.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Accepted> {
    // SAFETY: zeroed sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let raw = retry(|| {
        // SAFETY: storage and len are valid for writes of the sizes given.
        let r = cvt(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        });
        match r {
            // ECONNABORTED: the client gave up while queued; just take the next one.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                Err(io::ErrorKind::Interrupted.into())
            }
            r => r,
        }
    })?;
    // SAFETY: raw was just returned by accept4 and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the kernel filled `len` bytes of storage with a valid address.
    let addr = unsafe { SockAddr::new(storage, len) };
    let addr = addr.as_socket();
    let peer = addr.map(|sa: SocketAddr| sa.ip());
    // TCP_NODELAY and keep-alive come from the listener (see `set_tcp_options`).
    Ok(Accepted { fd, peer, addr })
}

/// Keep-alive probing of accepted connections; `None` fields keep the system's
/// defaults (`net.ipv4.tcp_keepalive_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub idle_secs: Option<u32>,
    pub interval_secs: Option<u32>,
    pub count: Option<u32>,
}

/// Options of a TCP listener that its accepted connections get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    pub nodelay: bool,
    /// TCP_DEFER_ACCEPT: wake accept only once data arrived (or this many seconds
    /// passed); 0 = off.
    pub defer_accept_secs: u32,
    pub keepalive: Option<Keepalive>,
}

/// Sets `opts` on a listening TCP socket. Linux copies TCP_NODELAY, SO_KEEPALIVE and
/// the keep-alive timers from a listener to every connection it accepts, so this costs
/// no system call per accept; setting them again on a listener that is already
/// serving (a reload) changes what later connections get.
pub fn set_tcp_options(fd: BorrowedFd<'_>, opts: &TcpOptions) -> io::Result<()> {
    let sock = socket2::SockRef::from(&fd);
    sock.set_nodelay(opts.nodelay)?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        opts.defer_accept_secs as i32,
    )?;
    let ka = opts.keepalive.unwrap_or_default();
    sock.set_keepalive(opts.keepalive.is_some())?;
    // Unset values go back to the system's defaults on a reload that dropped them.
    let defaults = keepalive_defaults();
    let pick = |v: Option<u32>, d: u32| v.unwrap_or(d) as i32;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        pick(ka.idle_secs, defaults.0),
    )?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        pick(ka.interval_secs, defaults.1),
    )?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        pick(ka.count, defaults.2),
    )?;
    Ok(())
}

/// `net.ipv4.tcp_keepalive_{time,intvl,probes}`, or Linux's defaults if unreadable.
fn keepalive_defaults() -> (u32, u32, u32) {
    let read = |name: &str, d: u32| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/tcp_keepalive_{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(d)
    };
    (read("time", 7200), read("intvl", 75), read("probes", 9))
}

fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value is a valid c_int for the size given, read by the kernel only.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `getsockopt` of an int option (for checks and tests).
pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// `recv(2)` with MSG_PEEK: the bytes stay queued for the next read (a PROXY header is
/// looked at before it is known how much of the input it takes).
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the whole call.
        cvt(unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        })
    })
    .map(|n| n as usize)
}

/// A connected socket's (peer, local) IP addresses; None for Unix sockets.
pub fn tcp_addrs(fd: BorrowedFd<'_>) -> Option<(SocketAddr, SocketAddr)> {
    let s = socket2::SockRef::from(&fd);
    let peer = s.peer_addr().ok()?.as_socket()?;
    let local = s.local_addr().ok()?.as_socket()?;
    Some((peer, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The claim `set_tcp_options` rests on: accepted sockets inherit the options.
    #[test]
    fn accepted_sockets_inherit_listener_options() {
        for nodelay in [true, false] {
            let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
            let l = bind(&addr, 16, false).unwrap();
            let opts = TcpOptions {
                nodelay,
                defer_accept_secs: 0,
                keepalive: Some(Keepalive {
                    idle_secs: Some(33),
                    interval_secs: Some(7),
                    count: Some(4),
                }),
            };
            set_tcp_options(l.as_fd(), &opts).unwrap();
            let at = socket2::SockRef::from(&l)
                .local_addr()
                .unwrap()
                .as_socket()
                .unwrap();
            let _c = std::net::TcpStream::connect(at).unwrap();
            let a = loop {
                match accept(l.as_fd()) {
                    Ok(a) => break a,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let fd = a.fd.as_fd();
            let tcp = libc::IPPROTO_TCP;
            assert_eq!(get_int(fd, tcp, libc::TCP_NODELAY).unwrap() != 0, nodelay);
            assert_eq!(
                get_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE).unwrap(),
                1
            );
            assert_eq!(get_int(fd, tcp, libc::TCP_KEEPIDLE).unwrap(), 33);
            assert_eq!(get_int(fd, tcp, libc::TCP_KEEPINTVL).unwrap(), 7);
            assert_eq!(get_int(fd, tcp, libc::TCP_KEEPCNT).unwrap(), 4);
        }
    }
}
