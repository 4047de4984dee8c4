//! Socket reads for the worker's hot path: `recv(2)` instead of `read(2)` on a
//! connection, because `read` on a socket goes through the VFS layer first (file
//! position lock, permission hooks: about 4 % of a worker's kernel time under wrk in
//! the issue-14 profile), which `recv` skips on its way to the same `sock_recvmsg`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::fd;

/// `recv(2)` into `buf` with no flags; `Ok(0)` is end of stream, `WouldBlock` means
/// no data now. Not a socket (`ENOTSOCK`): falls back to `read(2)`, so a caller may
/// hand it any stream fd.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the whole call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOTSOCK) => return fd::read(sock, buf),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
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
}
