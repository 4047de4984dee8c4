//! Steering a reuseport group with a classic BPF program
//! (`SO_ATTACH_REUSEPORT_CBPF`): the program's return value is the index of the
//! socket in the group that gets the new connection, so a program that hashes the
//! client's address sends one client to one socket (one worker slot) every time.
//!
//! The program runs on the SYN's skb with its data pointing past the TCP header, so
//! the IP header is reached with the `SKF_NET_OFF` negative offsets, which are
//! relative to the network header whatever the data pointer. IPv4: the source address
//! is at offset 12. IPv6: the last 4 bytes of the 16-byte source (offset 8) are at
//! offset 20. The word is mixed (a multiplicative hash, high half) so that
//! neighbouring addresses spread, then reduced modulo the group's size; an index at
//! or beyond the group's size makes the kernel fall back to its own hash.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::syscall::cvt;

/// Knuth's multiplicative constant (2^32 / golden ratio).
const MIX: u32 = 0x9E37_79B1;

/// The slot the program picks for the 32-bit word `word` in a group of `n`
/// (the same arithmetic in Rust, for tests and for anyone predicting a placement).
pub fn slot_for(word: u32, n: u32) -> u32 {
    (word.wrapping_mul(MIX) >> 16) % n.max(1)
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program for a group of `n` sockets bound to an IPv4 (`v6 = false`) or IPv6
/// address.
fn program(n: u32, v6: bool) -> Vec<libc::sock_filter> {
    let off = if v6 { 20 } else { 12 };
    let net = libc::SKF_NET_OFF + off;
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, net as u32),
        stmt(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K, MIX),
        stmt(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K, 16),
        stmt(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n.max(1)),
        stmt(libc::BPF_RET | libc::BPF_A, 0),
    ]
}

/// Attaches the client-address program for a group of `n` sockets to the reuseport
/// group `fd` belongs to (one call sets it for the whole group, replacing any
/// program attached before).
pub fn steer_by_client_ip(fd: BorrowedFd<'_>, n: u32, v6: bool) -> io::Result<()> {
    let mut filter = program(n, v6);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies
    // the program and reads exactly `size_of::<sock_fprog>()` bytes of `prog`.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `SO_DETACH_REUSEPORT_BPF` (asm-generic/socket.h; not in the libc crate).
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

/// Removes the group's program, if any: the kernel spreads by its own hash again.
pub fn unsteer(fd: BorrowedFd<'_>) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: the option takes (and ignores) an int, which `zero` is, for the call.
    let r = cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    });
    match r {
        // ENOENT: nothing was attached.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_addresses_spread_over_slots() {
        let slots: std::collections::HashSet<u32> = (2u32..10)
            .map(|last| slot_for(u32::from_be_bytes([127, 0, 0, last as u8]), 4))
            .collect();
        assert!(slots.len() >= 3, "{slots:?}");
        assert!(slots.iter().all(|s| *s < 4));
    }

    #[test]
    fn the_kernel_accepts_the_program() {
        use std::os::fd::AsFd;
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(8).unwrap();
        steer_by_client_ip(s.as_fd(), 4, false).unwrap();
        unsteer(s.as_fd()).unwrap();
        unsteer(s.as_fd()).unwrap();
    }
}
