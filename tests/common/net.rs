//! Network helpers: free loopback ports, connecting with retries, echo round
//! trips with deadlines, and telling which process holds the server side of a
//! loopback connection (socket inodes from /proc).

use std::collections::HashSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{handover, sysd, Corral, POLL};

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Ports handed out by this test process, so that two tests running in
/// parallel threads never race for the same one.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process and advanced per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A free loopback port in 20000..32000 (below Linux's ephemeral range, so no
/// outgoing connection of ours can take it), probed by binding it once.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20000 + (random_u64() % 12000) as u16;
        {
            let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
            let used = used.get_or_insert_with(HashSet::new);
            if used.contains(&port) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            used.insert(port);
        }
        return port;
    }
    panic!("no free port found in 20000..32000 after 1000 tries");
}

/// Socket inodes held open by `pid` (from /proc/PID/fd).
pub fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                    if let Ok(ino) = n.parse() {
                        out.insert(ino);
                    }
                }
            }
        }
    }
    out
}

/// Inodes of the server-side TCP sockets of loopback connections to
/// `server_port` (IPv4), by client port: one read of /proc/net/tcp for all.
pub fn server_socket_inodes(server_port: u16) -> std::collections::HashMap<u16, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tcp) = fs::read_to_string("/proc/net/tcp") else {
        return out;
    };
    let local = format!("0100007F:{server_port:04X}");
    for line in tcp.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_), Some(l), Some(r)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if l != local {
            continue;
        }
        let Some(port) = r
            .strip_prefix("0100007F:")
            .and_then(|p| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if let Some(ino) = f.nth(6).and_then(|i| i.parse::<u64>().ok()) {
            if ino != 0 {
                out.insert(port, ino);
            }
        }
    }
    out
}

/// Inode of the server-side TCP socket of the loopback connection whose
/// server end is `server_port` and client end is `client_port` (IPv4).
pub fn server_socket_inode(server_port: u16, client_port: u16) -> Option<u64> {
    let tcp = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[1] == local && f[2] == remote {
            let ino: u64 = f[9].parse().ok()?;
            if ino != 0 {
                return Some(ino);
            }
        }
    }
    None
}

/// Connects to `addr` with a timeout, retrying on transient errors until
/// `timeout` passes.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(50))) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads exactly `n` bytes before `timeout`; Err describes what happened
/// instead (EOF, reset, timeout).
pub fn read_exact_timeout(
    s: &mut TcpStream,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout(buf[..got].to_vec()));
        }
        s.set_read_timeout(Some(left)).map_err(ReadEnd::Other)?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadEnd::Eof(buf[..got].to_vec())),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ReadEnd::Timeout(buf[..got].to_vec())),
            Err(e) if is_reset(&e) => return Err(ReadEnd::Reset(e)),
            Err(e) => return Err(ReadEnd::Other(e)),
        }
    }
    Ok(buf)
}

/// How a read ended when it did not get what was asked (what it carries is read
/// through `Debug`, in a failing test's message).
#[allow(dead_code)]
#[derive(Debug)]
pub enum ReadEnd {
    Eof(Vec<u8>),
    Reset(io::Error),
    Timeout(Vec<u8>),
    Other(io::Error),
}

/// A read that ran into its read timeout (the kind depends on the socket's mode).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Outcome of one echo round trip on an existing connection.
#[derive(Debug)]
pub enum Echo {
    /// The message came back exactly.
    Ok,
    /// The peer closed (EOF, reset, broken pipe) — on write or read.
    Closed(String),
    /// Something else: wrong bytes, timeout, unexpected error.
    Bad(String),
}

/// Sends `msg` and expects exactly `msg` back within `timeout`.
pub fn echo(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> Echo {
    if let Err(e) = s.write_all(msg) {
        return if is_reset(&e) {
            Echo::Closed(format!("write: {e}"))
        } else {
            Echo::Bad(format!("write: {e}"))
        };
    }
    match read_exact_timeout(s, msg.len(), timeout) {
        Ok(b) if b == msg => Echo::Ok,
        Ok(b) => Echo::Bad(format!(
            "wrong echo: sent {:?}, got {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&b)
        )),
        Err(ReadEnd::Eof(b)) if b.is_empty() => Echo::Closed("EOF".into()),
        Err(ReadEnd::Reset(e)) => Echo::Closed(format!("read: {e}")),
        Err(other) => Echo::Bad(format!("{other:?}")),
    }
}

/// Waits until the peer closes `s` (EOF or reset) within `timeout`, without
/// sending anything. Returns the time it took, or an error describing what
/// was seen instead.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Result<Duration, String> {
    match sysd::wait_ending(s, timeout) {
        sysd::Ending::Eof(took) | sysd::Ending::Reset(took) => Ok(took),
        sysd::Ending::StillOpen => Err(format!("still open after {timeout:?}")),
        sysd::Ending::Other(e) => Err(e),
    }
}

/// Convenience: `Shutdown::Both` ignoring errors.
pub fn close(s: TcpStream) {
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
}
/// Which of `pids` holds the server side of each connection in `conns` (by socket
/// inode), or None where it cannot be told.
pub fn owners(c: &Corral, conns: &[TcpStream], pids: &[i32]) -> Vec<Option<i32>> {
    handover::owners_on(c.port, conns, pids)
}
