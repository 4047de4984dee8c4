//! A thin epoll wrapper: interest sets, tokens, and a wait that treats EINTR as "no
//! events" (epoll_wait returns EINTR even with SA_RESTART).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::syscall::{cvt, Interrupted};
use super::{Ctx, SysError};

/// What to wait for on a descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
    /// Edge-triggered: report a change once; the loop must drain until EAGAIN.
    pub edge: bool,
    /// Wake only one of the epoll instances waiting on this fd (shared listeners).
    pub exclusive: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
        edge: false,
        exclusive: false,
    };

    fn bits(self) -> u32 {
        // EPOLLEXCLUSIVE refuses EPOLLRDHUP (EINVAL); listeners do not need it.
        let mut b = if self.exclusive {
            0
        } else {
            libc::EPOLLRDHUP as u32
        };
        if self.read {
            b |= libc::EPOLLIN as u32;
        }
        if self.write {
            b |= libc::EPOLLOUT as u32;
        }
        if self.edge {
            b |= libc::EPOLLET as u32;
        }
        if self.exclusive {
            b |= libc::EPOLLEXCLUSIVE as u32;
        }
        b
    }
}

/// One readiness report. The three flags are what the loops act on; the predicates
/// below read the kernel's bits exactly, as mio's do, for code that must tell a
/// closed read side from an error.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Peer closed or error: the fd needs attention even if no interest matches.
    pub hangup: bool,
    bits: u32,
}

impl Event {
    fn from_bits(token: u64, bits: u32) -> Event {
        let has = |b: libc::c_int| bits & (b as u32) != 0;
        Event {
            token,
            readable: has(libc::EPOLLIN),
            writable: has(libc::EPOLLOUT),
            hangup: has(libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP),
            bits,
        }
    }

    fn has(&self, b: libc::c_int) -> bool {
        self.bits & (b as u32) != 0
    }

    /// Data (or urgent data) to read, or an end of file to read as 0.
    pub fn is_readable(&self) -> bool {
        self.has(libc::EPOLLIN) || self.has(libc::EPOLLPRI)
    }

    pub fn is_writable(&self) -> bool {
        self.has(libc::EPOLLOUT)
    }

    /// EPOLLERR: a pending socket error (read it with SO_ERROR), or a pipe whose
    /// reading end closed.
    pub fn is_error(&self) -> bool {
        self.has(libc::EPOLLERR)
    }

    /// The peer will send nothing more: both directions closed (EPOLLHUP), or a FIN
    /// or `shutdown(SHUT_RD)` arrived (EPOLLRDHUP, reported with EPOLLIN).
    pub fn is_read_closed(&self) -> bool {
        self.has(libc::EPOLLHUP) || (self.has(libc::EPOLLIN) && self.has(libc::EPOLLRDHUP))
    }

    /// Nothing more can be written: both directions closed, or the reading end of a
    /// pipe went away (EPOLLERR, alone or with EPOLLOUT).
    pub fn is_write_closed(&self) -> bool {
        self.has(libc::EPOLLHUP)
            || (self.has(libc::EPOLLOUT) && self.has(libc::EPOLLERR))
            || self.bits == libc::EPOLLERR as u32
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
    buf: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A CLOEXEC epoll instance that reports at most `capacity` events per wait.
    pub fn new(capacity: usize) -> Result<Epoll, SysError> {
        // SAFETY: epoll_create1 has no memory arguments; the result is checked.
        let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
            .ctx("epoll_create1()", || "creating the event loop".into())?;
        // SAFETY: raw was just returned by epoll_create1 and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Epoll {
            fd,
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: ev is a valid epoll_event for the duration of the call; the kernel
        // copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    /// Changes interest. Not allowed for EXCLUSIVE registrations (delete and re-add).
    pub fn modify(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::default(), 0)
    }

    /// Waits up to `timeout` (None = forever, rounded up to whole milliseconds so a
    /// sub-millisecond deadline never turns into a busy loop) and returns the events.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<impl Iterator<Item = Event> + '_> {
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: buf holds buf.len() initialised epoll_event slots for the kernel to fill.
        let n = cvt(unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                self.buf.len() as libc::c_int,
                ms,
            )
        });
        // Not retried: the caller's deadlines may have moved, so it recomputes them.
        let n = match n {
            Ok(n) => n as usize,
            Err(e) if e.interrupted() => 0,
            Err(e) => return Err(e),
        };
        Ok(self.buf[..n]
            .iter()
            .map(|ev| Event::from_bits(ev.u64, ev.events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn one_event(ep: &mut Epoll) -> Event {
        let evs: Vec<Event> = ep.wait(Some(Duration::from_secs(10))).unwrap().collect();
        assert_eq!(evs.len(), 1, "{evs:?}");
        evs[0]
    }

    #[test]
    fn a_peer_shutdown_is_read_closed_not_an_error() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut ep = Epoll::new(4).unwrap();
        ep.add(a.as_fd(), Interest::READ, 7).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let ev = one_event(&mut ep);
        assert_eq!(ev.token, 7);
        assert!(ev.is_readable() && ev.is_read_closed(), "{ev:?}");
        assert!(!ev.is_error() && !ev.is_write_closed(), "{ev:?}");
        assert!(
            ev.readable && ev.hangup,
            "the loops' flags stay as they were"
        );
    }

    #[test]
    fn a_pipe_without_reader_is_write_closed() {
        let (r, w) = crate::os::fd::pipe().unwrap();
        let mut ep = Epoll::new(4).unwrap();
        let write = Interest {
            write: true,
            ..Interest::default()
        };
        ep.add(w.as_fd(), write, 1).unwrap();
        let ev = one_event(&mut ep);
        assert!(ev.is_writable() && !ev.is_write_closed(), "{ev:?}");
        drop(r);
        let ev = one_event(&mut ep);
        assert!(ev.is_error() && ev.is_write_closed(), "{ev:?}");
        assert!(!ev.is_read_closed(), "{ev:?}");
    }
}
