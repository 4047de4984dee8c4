//! Listening sockets lent by the master while the worker they belong to stalls.
//!
//! With `accept = "reuseport"` each slot has its own socket and the kernel spreads new
//! connections over them by hash: a worker that is stopped (SIGSTOP) or stuck in a
//! long turn still gets its share, and those clients wait in its queue until the
//! watchdog kills it, seconds later. The master watches the queues; when one stays
//! non-empty it lends that slot's sockets to a healthy worker (`ToWorker::Lend`),
//! which accepts on them as on its own until the slot's worker is heard from again
//! (`ToWorker::Unlend`). The owner keeps its registration: whichever accepts first
//! gets the client.
//!
//! A borrowed socket is watched level-triggered and without EPOLLEXCLUSIVE: the owner
//! registered it exclusive, and an exclusive wake-up may go to the stopped owner
//! alone. It leaves the epoll set before it is closed (the master and the owner hold
//! the same file, so closing our fd alone would leave it registered).

use std::os::fd::{AsFd, OwnedFd};

use tracing::{debug, info};

use crate::os::epoll::Interest;
use crate::os::net;

use super::token::{BORROWED_BIT, TOKEN_LISTENER};
use super::{Phase, Worker};

/// Connections accepted from one borrowed socket per event (as from our own).
const BATCH: usize = 64;

/// One lent socket: whose (`slot`), and which of our listeners it stands for.
struct Lent {
    slot: usize,
    listener: usize,
    fd: OwnedFd,
}

/// The sockets lent to this worker; an index is its token (freed places are reused).
#[derive(Default)]
pub(super) struct Borrowed(Vec<Option<Lent>>);

impl Borrowed {
    fn token(i: usize) -> u64 {
        TOKEN_LISTENER | BORROWED_BIT | i as u64
    }
}

impl Worker {
    /// The master lends us slot `slot`'s sockets, one per address in `listens`.
    pub(super) fn borrow(&mut self, slot: usize, listens: &[String], fds: Vec<OwnedFd>) {
        if self.phase != Phase::Running {
            return; // dropping the fds closes our copies; the master lends elsewhere
        }
        self.give_back(slot);
        let mut n = 0;
        for (listen, fd) in listens.iter().zip(fds) {
            let Some(listener) = self.listener_index(listen) else {
                debug!(listen, "lent a socket for a listener we do not have");
                continue;
            };
            let i = match self.borrowed.0.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.borrowed.0.push(None);
                    self.borrowed.0.len() - 1
                }
            };
            if self.admit.on {
                if let Err(e) = self
                    .epoll
                    .add(fd.as_fd(), Interest::READ, Borrowed::token(i))
                {
                    debug!("cannot watch a lent socket: {e}");
                    continue;
                }
            }
            self.borrowed.0[i] = Some(Lent { slot, listener, fd });
            n += 1;
        }
        info!(
            slot,
            sockets = n,
            "accepting for a stalled worker's slot too"
        );
    }

    /// Slot `slot`'s worker serves again: its sockets go back.
    pub(super) fn give_back(&mut self, slot: usize) {
        for place in &mut self.borrowed.0 {
            if place.as_ref().is_some_and(|l| l.slot == slot) {
                if let Some(l) = place.take() {
                    let _ = self.epoll.delete(l.fd.as_fd());
                }
            }
        }
    }

    /// Draining: every lent socket goes back at once.
    pub(super) fn give_all_back(&mut self) {
        for l in self.borrowed.0.drain(..).flatten() {
            let _ = self.epoll.delete(l.fd.as_fd());
        }
    }

    /// Lent sockets follow our own in and out of the epoll set (paused at
    /// `max_connections`, after EMFILE, while draining).
    pub(super) fn watch_borrowed(&mut self, on: bool) {
        for (i, l) in self.borrowed.0.iter().enumerate() {
            let Some(l) = l else { continue };
            let _ = if on {
                self.epoll
                    .add(l.fd.as_fd(), Interest::READ, Borrowed::token(i))
            } else {
                self.epoll.delete(l.fd.as_fd())
            };
        }
    }

    /// A lent socket has connections waiting: accept them as our listener's.
    pub(super) fn accept_borrowed(&mut self, i: usize) {
        let max = self.config.worker.max_connections;
        for _ in 0..BATCH {
            if !self.admit.on {
                return;
            }
            let Some(l) = self.borrowed.0.get(i).and_then(Option::as_ref) else {
                return;
            };
            let listener = l.listener;
            if self.conns.len() >= max {
                // As `accept_on` does: level-triggered, it would report again at once.
                self.notices.max_connections(max);
                self.tally.counters.at_limit(listener);
                self.pause_accept();
                return;
            }
            match net::accept(l.fd.as_fd()) {
                Ok(a) => {
                    self.tally.counters.accepted(listener);
                    self.tally.stats.accepted += 1;
                    let _ = self.add_conn(listener, a, None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if crate::os::stream::out_of_resources(&e) => {
                    self.accept_out_of_resources(&e);
                    return;
                }
                Err(e) => {
                    debug!("accept() on a lent socket failed: {e}");
                    return;
                }
            }
        }
    }
}
