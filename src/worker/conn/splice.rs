//! Splice pipes: zero-copy forwarding of a proxied connection through kernel pipes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::os::fd;

use super::Flags;

/// A kernel pipe carrying one direction of a spliced connection.
pub struct Pipe {
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    /// Bytes in the pipe.
    pub(super) len: usize,
    /// The last splice into it could not take more: stop reading until it drains.
    pub(super) full: bool,
}

/// Room in a pipe: Linux's default pipe capacity (16 pages).
const PIPE_CAP: usize = 64 << 10;

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (r, w) = fd::pipe().map_err(|e| e.io())?;
        Ok(Pipe {
            r,
            w,
            len: 0,
            full: false,
        })
    }

    /// Moves bytes from socket `from` into the pipe, within `budget`. Returns (bytes,
    /// end of file). A socket with nothing to read ends without `Flags::MAY_READ`; a
    /// pipe that cannot take more sets `full` instead (reading resumes once it drains,
    /// so no readable edge is lost).
    pub(super) fn fill(
        &mut self,
        from: std::os::fd::BorrowedFd<'_>,
        budget: &mut usize,
        flags: &mut Flags,
    ) -> io::Result<(usize, bool)> {
        let mut moved = 0;
        while flags.has(Flags::MAY_READ) && !self.full && *budget > 0 && self.len < PIPE_CAP {
            match fd::splice(from, self.w.as_fd(), (*budget).min(PIPE_CAP - self.len)) {
                Ok(0) => return Ok((moved, true)),
                Ok(n) => {
                    self.len += n;
                    moved += n;
                    *budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // EAGAIN into an empty pipe means the socket is empty; with bytes
                    // in the pipe it may as well be the pipe that is out of buffers.
                    if self.len == 0 {
                        flags.set(Flags::MAY_READ, false);
                    } else {
                        self.full = true;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if self.len >= PIPE_CAP {
            self.full = true;
        }
        Ok((moved, false))
    }

    /// Moves bytes from the pipe to socket `to`; returns bytes moved.
    pub(super) fn drain(&mut self, to: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
        let mut moved = 0;
        while self.len > 0 {
            match fd::splice(self.r.as_fd(), to, self.len) {
                Ok(0) => break,
                Ok(n) => {
                    self.len -= n;
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 {
            self.full = false;
        }
        Ok(moved)
    }
}

/// Both directions of a spliced connection.
pub struct Pipes {
    pub(super) c2u: Pipe,
    pub(super) u2c: Pipe,
}

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes {
            c2u: Pipe::new()?,
            u2c: Pipe::new()?,
        })
    }
}
