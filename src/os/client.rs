//! Client-side sockets and signals for the `corral-load` tool: a non-blocking TCP
//! connect from a chosen source address, and Ctrl-C as a flag. The server never uses
//! these; they live here because this layer is the one that calls the C library.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
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

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set the flag [`stop_requested`] reads, instead of killing the
/// process: a run ended early still prints what it measured.
pub fn stop_on_interrupt() -> io::Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // nothing else in the load tool installs handlers for these signals.
        unsafe { sigaction(sig, &act) }
            .map_err(|e| io::Error::other(format!("sigaction({}) failed: {e}", sig.as_str())))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived (after [`stop_on_interrupt`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
