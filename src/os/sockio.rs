//! Socket reads and writes for the worker's hot path, one system call each and
//! nothing around it.
//!
//! `recv(2)` instead of `read(2)` on a connection, because `read` on a socket goes
//! through the VFS layer first (file position lock, permission hooks: about 4 % of a
//! worker's kernel time under wrk in the issue-14 profile), which `recv` skips on its
//! way to the same `sock_recvmsg`. Both calls enter the kernel directly rather than
//! through libc's `recv`/`send`: a worker has threads (the blocking pool), and in a
//! threaded process those wrappers are pthread cancellation points that switch
//! asynchronous cancellation on and off around the call, two atomic
//! read-modify-writes each. corral never cancels a thread, so that is pure cost:
//! under callgrind about 115 of a worker's ~820 user-space instructions per echo
//! round trip (the C echo server, single-threaded, pays none of it). The rare
//! outcomes (EINTR, a non-socket, an error) are handled out of line.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::fd;

/// `recv(2)` into `buf` with no flags; `Ok(0)` is end of stream, `WouldBlock` means
/// no data now. Not a socket (`ENOTSOCK`): falls back to `read(2)`, so a caller may
/// hand it any stream fd.
#[inline]
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let ret = raw::recvfrom(sock.as_raw_fd(), buf);
    if ret >= 0 {
        return Ok(ret as usize);
    }
    recv_failed(sock, buf, -ret)
}

/// `recv`'s rare outcomes, out of the inlined path: an interrupted call is retried,
/// a non-socket read with `read(2)`, any other errno returned.
#[cold]
#[inline(never)]
fn recv_failed(sock: BorrowedFd<'_>, buf: &mut [u8], errno: isize) -> io::Result<usize> {
    let mut errno = errno as i32;
    loop {
        match errno {
            libc::EINTR => {}
            libc::ENOTSOCK => return fd::read(sock, buf),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
        let ret = raw::recvfrom(sock.as_raw_fd(), buf);
        if ret >= 0 {
            return Ok(ret as usize);
        }
        errno = -ret as i32;
    }
}

/// `send(2)` of `buf` with `MSG_NOSIGNAL` (a peer that went away is an `EPIPE`
/// error, not a SIGPIPE); returns the bytes the socket took. `WouldBlock`: none now.
/// Not a socket: falls back to `write(2)`, like [`recv`].
#[inline]
pub fn send(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let ret = raw::sendto(sock.as_raw_fd(), buf);
    if ret >= 0 {
        return Ok(ret as usize);
    }
    send_failed(sock, buf, -ret)
}

#[cold]
#[inline(never)]
fn send_failed(sock: BorrowedFd<'_>, buf: &[u8], errno: isize) -> io::Result<usize> {
    let mut errno = errno as i32;
    loop {
        match errno {
            libc::EINTR => {}
            libc::ENOTSOCK => return fd::write(sock, buf),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
        let ret = raw::sendto(sock.as_raw_fd(), buf);
        if ret >= 0 {
            return Ok(ret as usize);
        }
        errno = -ret as i32;
    }
}

/// The two system calls, returning the kernel's convention: bytes, or `-errno`.
/// On x86-64 Linux the `syscall` instruction itself (no libc frame, no errno in
/// thread-local storage: about 20 instructions less per call than `syscall(3)`);
/// elsewhere `syscall(3)`, whose `-1`/errno is turned into the same convention.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod raw {
    use std::os::fd::RawFd;

    #[inline]
    pub fn recvfrom(fd: RawFd, buf: &mut [u8]) -> isize {
        let ret: isize;
        // SAFETY: recvfrom(fd, buf, len, 0, NULL, NULL) by the x86-64 Linux syscall
        // ABI (number in rax, arguments in rdi, rsi, rdx, r10, r8, r9; rcx and r11
        // clobbered; no stack use). The kernel writes at most buf.len() bytes into
        // buf, which is valid and exclusively borrowed for the whole call; the null
        // address pointers ask for no peer address. Any fd value is safe to pass:
        // a bad one is an EBADF return.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_recvfrom as isize => ret,
                in("rdi") fd as isize,
                in("rsi") buf.as_mut_ptr(),
                in("rdx") buf.len(),
                in("r10") 0isize,
                in("r8") 0isize,
                in("r9") 0isize,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[inline]
    pub fn sendto(fd: RawFd, buf: &[u8]) -> isize {
        let ret: isize;
        // SAFETY: sendto(fd, buf, len, MSG_NOSIGNAL, NULL, 0) by the same ABI. The
        // kernel only reads buf.len() bytes of buf, valid for the whole call; no
        // destination address is passed.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_sendto as isize => ret,
                in("rdi") fd as isize,
                in("rsi") buf.as_ptr(),
                in("rdx") buf.len(),
                in("r10") libc::MSG_NOSIGNAL as isize,
                in("r8") 0isize,
                in("r9") 0isize,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, readonly),
            );
        }
        ret
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod raw {
    use std::os::fd::RawFd;

    fn kernel_convention(ret: libc::c_long) -> isize {
        if ret >= 0 {
            ret as isize
        } else {
            -(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as isize)
        }
    }

    pub fn recvfrom(fd: RawFd, buf: &mut [u8]) -> isize {
        // SAFETY: recvfrom(fd, buf, len, 0, NULL, NULL): buf is a valid writable region
        // of buf.len() bytes for the whole call; null pointers ask for no address.
        kernel_convention(unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                libc::c_long::from(fd),
                buf.as_mut_ptr(),
                buf.len(),
                0 as libc::c_long,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        })
    }

    pub fn sendto(fd: RawFd, buf: &[u8]) -> isize {
        // SAFETY: sendto(fd, buf, len, MSG_NOSIGNAL, NULL, 0): buf is a valid readable
        // region of buf.len() bytes for the whole call; no destination is passed.
        kernel_convention(unsafe {
            libc::syscall(
                libc::SYS_sendto,
                libc::c_long::from(fd),
                buf.as_ptr(),
                buf.len(),
                libc::c_long::from(libc::MSG_NOSIGNAL),
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::c_long,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn reads_sockets_and_falls_back_to_read_elsewhere() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        a.write_all(b"hi").expect("write");
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_fd(), &mut buf).expect("recv"), 2);
        assert_eq!(&buf[..2], b"hi");
        let f = std::fs::File::open("/proc/self/stat").expect("open");
        assert!(recv(f.as_fd(), &mut buf).expect("read fallback") > 0);
    }

    #[test]
    fn sends_to_sockets_and_falls_back_to_write_elsewhere() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(send(b.as_fd(), b"hello").expect("send"), 5);
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).expect("read"), 5);
        assert_eq!(&buf[..5], b"hello");
        let (r, w) = fd::pipe().expect("pipe");
        assert_eq!(send(w.as_fd(), b"xy").expect("write fallback"), 2);
        assert_eq!(fd::read(r.as_fd(), &mut buf).expect("read"), 2);
    }

    #[test]
    fn a_would_block_and_a_closed_peer_are_errors() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 8];
        let e = recv(b.as_fd(), &mut buf).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(recv(b.as_fd(), &mut buf).expect("eof"), 0);
        let e = send(b.as_fd(), b"x").expect_err("peer gone");
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
