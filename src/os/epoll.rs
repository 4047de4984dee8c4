//! A thin epoll wrapper: interest sets, tokens, and a wait that treats EINTR as "no
//! events" (epoll_wait returns EINTR even with SA_RESTART).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::SysError;

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

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Peer closed or error: the fd needs attention even if no interest matches.
    pub hangup: bool,
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
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(SysError::new(
                "epoll_create1()",
                "creating the event loop",
                nix::errno::Errno::last(),
            ));
        }
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
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
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
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                self.buf.len() as libc::c_int,
                ms,
            )
        };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        Ok(self.buf[..n].iter().map(|ev| {
            let bits = ev.events;
            Event {
                token: ev.u64,
                readable: bits & (libc::EPOLLIN as u32) != 0,
                writable: bits & (libc::EPOLLOUT as u32) != 0,
                hangup: bits & ((libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32) != 0,
            }
        }))
    }
}
