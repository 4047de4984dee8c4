//! Client-side sockets for the `corral-load` tool: a non-blocking TCP connect from a
//! chosen source address. The server never uses these; they live here because this
//! layer is the one that calls the C library. (Its Ctrl-C flag is signal-hook's.)

use std::net::{IpAddr, SocketAddr};

pub use socket2::Socket;
use socket2::{Domain, Protocol, SockAddr, Type};

/// Creates a non-blocking, CLOEXEC TCP socket (with `TCP_NODELAY` when `nodelay`),
/// binds it to `source` if given (port chosen at connect time, so one source address
/// serves every destination with its whole port range) and starts connecting it to
/// `addr`. The error names the call that failed.
pub fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> Result<Socket, String> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|e| format!("socket() failed: {e}"))?;
    if nodelay {
        // A round trip is one small write; Nagle would only add delay.
        sock.set_nodelay(true)
            .map_err(|e| format!("setsockopt(TCP_NODELAY) failed: {e}"))?;
    }
    if let Some(src) = source {
        // Defer the port choice to connect(), so a source port is shared by every
        // destination and the whole range is usable per source address.
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .map_err(|e| format!("setsockopt(IP_BIND_ADDRESS_NO_PORT) failed: {e}"))?;
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .map_err(|e| format!("bind({src}) failed: {e}"))?;
    }
    match sock.connect(&SockAddr::from(addr)) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(format!("connect({addr}) failed: {e}")),
    }
}
