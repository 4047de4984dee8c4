//! Fd audits: what each open fd of a process is (from `/proc/PID/fd` and
//! `/proc/PID/fdinfo`), which unix socket is connected to which (from `ss -x`),
//! and which fds a test runner would hand to any child it spawns (those without
//! `FD_CLOEXEC`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::process::{Command, Stdio};

/// Open fds of `pid`: number -> readlink target (`socket:[123]`,
/// `anon_inode:[eventpoll]`, a path, ...).
pub fn fd_table(pid: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(t) = fs::read_link(e.path()) {
            out.insert(fd, t.to_string_lossy().into_owned());
        }
    }
    out
}

/// The inode of a `socket:[N]` link target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Fds of this process that a child it spawns inherits (no `FD_CLOEXEC`), except
/// stdio (which the harness replaces): the test runner's own, not corral's doing.
pub fn inheritable_fds() -> HashSet<i32> {
    let mut out = HashSet::new();
    let Ok(rd) = fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(info) = fs::read_to_string(e.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
        // O_CLOEXEC is 02000000 in fdinfo's octal flags.
        if fd > 2 && flags.is_some_and(|f| f & 0o2000000 == 0) {
            out.insert(fd);
        }
    }
    out
}

/// Every unix socket's peer, by inode (from `ss -xan`); None when `ss` cannot run.
pub fn unix_peers() -> Option<HashMap<u64, u64>> {
    let out = Command::new("ss")
        .args(["-H", "-x", "-a", "-n"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut peers = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Netid State Recv-Q Send-Q Local-Addr Local-Inode Peer-Addr Peer-Inode
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        if let (Ok(me), Ok(peer)) = (f[5].parse::<u64>(), f[7].parse::<u64>()) {
            if peer != 0 {
                peers.insert(me, peer);
            }
        }
    }
    Some(peers)
}

/// Inodes of the unix sockets bound to a path under `dir` (from /proc/net/unix).
pub fn unix_bound_under(dir: &std::path::Path) -> HashSet<u64> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[7].starts_with(&prefix))
                .then(|| f[6].parse().ok())
                .flatten()
        })
        .collect()
}

/// The port of `pid`'s fd `fd` if it is a listening TCP socket: asked of the socket
/// itself (a duplicate through `pidfd_getfd`), not of /proc/net/tcp, which a box
/// holding many connections makes slow to read.
pub fn tcp_listener_port(pid: i32, fd: i32) -> Option<u16> {
    let dup = super::privs::borrow_fd(pid, fd).ok()?;
    if super::privs::sockopt(&dup, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != 1 {
        return None;
    }
    let domain = super::privs::sockopt(&dup, libc::SOL_SOCKET, libc::SO_DOMAIN);
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    std::net::TcpListener::from(dup)
        .local_addr()
        .ok()
        .map(|a| a.port())
}
