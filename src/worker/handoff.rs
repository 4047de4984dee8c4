//! The draining worker's side of the hand-over: connections that can move (idle, or
//! suspended by their service: see `suspend`) go to the next generation through the
//! master, queued and sent in batches, never dropped.
//!
//! A reload can leave thousands of idle keep-alive connections on an old worker. They
//! wait their turn (`move_order`), still served here; in step 4 of the loop each in
//! turn is taken out of this worker's epoll set and queued, a batch at a time, and the
//! queue is flushed, 64 fds per message, until the channel is full, and again when
//! epoll reports it writable (EPOLLOUT interest only while something waits). What the
//! master cannot place comes back (`ToWorker::Keep`) and stays here under the drain
//! rules: it is served until the client leaves or `drain_timeout` ends it. The same
//! happens to what is queued when the channel to the master fails.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::channel::{ConnQueue, Handed, HandoffCounts, IdlePolicy, ToMaster};
use crate::os::epoll::Interest;
use crate::os::net;

use super::move_order::MoveOrder;
use super::{Phase, Timer, Worker, TOKEN_CHANNEL};

/// How often a drained worker looks whether the master has read its last hand-overs.
const SETTLE_CHECK: Duration = Duration::from_millis(10);

/// Most channel messages one loop turn reads (at most 64 connections each). Without a
/// bound, a worker adopting from a master that keeps its channel full reads for as
/// long as the master sends: on a busy box with a million connections moving, long
/// enough to miss its heartbeats and be killed by the watchdog as hung.
pub(super) const CHANNEL_TURN: usize = 32;

/// Most connections one loop turn adopts (`ToWorker::Adopt`, read in the turn's
/// "other work" step); the rest wait in the channel (level-triggered) for the next
/// turn. A turn of 32 full messages restored 2 048 connections while this worker's
/// own clients waited for the next epoll; 256 (~4 messages, a few ms) keeps their
/// round trips short during a move and costs the move one epoll_wait per 256.
pub(super) const ADOPT_TURN: usize = 256;

/// Connections suspended at a drain between two looks at the heartbeat's due time
/// (see `beat_if_due`).
pub(super) const BEAT_EVERY: usize = 256;

/// A worker's hand-over in progress.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// Connections waiting for their turn, still served here (see `move_order`).
    pub(super) order: MoveOrder,
    /// Connections taken out for the hand-over, not yet sent (at most about a batch
    /// beyond what the channel takes).
    pub(super) queue: ConnQueue,
    /// Connections were queued since the last flush.
    pub(super) dirty: bool,
    /// EPOLLOUT interest on the channel is on (only while the queue is not empty).
    want_write: bool,
    /// The channel reported writable.
    pub(super) writable: bool,
    pub(super) counts: HandoffCounts,
    /// The counts last told to the master and the log.
    reported: HandoffCounts,
    /// A `HandoffSettle` timer is pending.
    pub(super) settle_armed: bool,
    /// Suspended connections handed over that the new generation may still refuse:
    /// neither a refusal (`Keep`) nor word that they were taken (`Settled`) came back
    /// yet. A draining worker does not exit while some are out (until
    /// `drain_timeout`): a refusal must find it alive to serve the connection.
    pub(super) unsettled: u64,
    /// When a heartbeat sent from inside a long turn (`beat_if_due`) is next due.
    next_beat: Option<Instant>,
    /// Messages that found the channel full (of hand-overs) and must not be dropped: a
    /// heartbeat (without it the watchdog takes a busy worker for hung) and
    /// `HandoffDone` (the generation's moved/kept/closed counts). Sent before the next
    /// hand-over.
    pub(super) owed: Vec<ToMaster>,
}

impl Handoff {
    /// Nothing is waiting to be sent: a draining worker may exit.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.owed.is_empty() && self.order.is_empty()
    }

    /// Whether step 4 has sending to do.
    pub(super) fn wants_flush(&self) -> bool {
        !self.is_idle() && (self.dirty || self.writable)
    }

    /// Connections wait to be sent (EPOLLOUT wanted while the channel is full).
    fn sending(&self) -> bool {
        !self.queue.is_empty() || !self.order.is_empty()
    }

    pub(super) fn counts(&self) -> HandoffCounts {
        self.counts
    }
}

impl Worker {
    /// Suspending every connection at a drain, or adopting a few thousand, is one
    /// loop turn that can outlast `watchdog_timeout` on a busy box with tens of
    /// thousands of connections: the heartbeat timer would not run until it ends, and
    /// the master would kill this worker as hung, with the connections it holds. So
    /// such a turn sends a heartbeat itself when one is due.
    pub(super) fn beat_if_due(&mut self) {
        let now = Instant::now();
        if self.handoff.next_beat.is_some_and(|t| now < t) {
            return;
        }
        self.handoff.next_beat = Some(now + self.config.worker.heartbeat_interval.0);
        self.heartbeat();
    }

    /// Step 4: sends what is queued, as far as the channel takes it.
    pub(super) fn flush_handoff(&mut self) {
        let h = &mut self.handoff;
        h.dirty = false;
        h.writable = false;
        if !self.send_owed() {
            // Still full: the hand-overs wait behind what is owed.
            return self.set_channel_write(true);
        }
        if self.channel.is_none() {
            return self.keep_all("the channel to the master is gone");
        }
        // Taken out a batch at a time, only while the channel takes them: the rest
        // are still served here meanwhile.
        let (mut conns, mut messages) = (0, 0);
        loop {
            self.take_out_next_batch();
            let h = &mut self.handoff;
            let Some(ch) = &self.channel else {
                return self.keep_all("the channel to the master is gone");
            };
            let done = h.queue.flush(ch, |conns| ToMaster::Handoff { conns });
            h.counts.handed += done.conns as u64;
            conns += done.conns;
            messages += done.messages;
            if let Some(e) = done.error {
                warn!("cannot hand over connections to the master: {e}");
                return self.keep_all("the channel to the master failed");
            }
            if !h.queue.is_empty() || h.order.is_empty() {
                break;
            }
        }
        let h = &self.handoff;
        if conns > 0 {
            debug!(
                conns,
                messages,
                queued = h.queue.len(),
                waiting = !h.order.is_empty(),
                "handed over idle connections"
            );
        }
        let want_write = h.sending();
        self.set_channel_write(want_write);
        if !want_write {
            self.report_handoff();
        }
    }

    /// Suspends the connections whose turn it is, up to a batch in the queue. Only
    /// while handing over: once the worker keeps its connections, those waiting stay.
    fn take_out_next_batch(&mut self) {
        if self.idle_policy != IdlePolicy::Handoff {
            self.handoff.order.clear();
            return;
        }
        let mut asked = 0;
        while self.handoff.queue.len() < crate::channel::BATCH_CONNS {
            let Some(token) = self.handoff.order.pop() else {
                break;
            };
            // Not at a quiescent point now: it comes back after its next exchange.
            self.try_move(token);
            asked += 1;
            if asked % BEAT_EVERY == 0 {
                self.beat_if_due();
            }
        }
    }

    /// The master took back connections it could not place: they stay here, and so
    /// does every connection that goes idle from now on (handing it over again would
    /// only bounce it back). Connections the new generation refused stay too, pinned,
    /// but the others keep moving.
    pub(super) fn keep(&mut self, conns: Vec<Handed>, fds: Vec<OwnedFd>, reason: &str) {
        let n = fds.len() as u64;
        self.handoff.counts.handed = self.handoff.counts.handed.saturating_sub(n);
        let mine = conns.iter().filter(|h| suspended_by_me(h)).count() as u64;
        self.settled(mine);
        let refused = |h: &Handed| h.moved.as_ref().is_some_and(|m| m.refused.is_some());
        if conns.iter().any(|h| !refused(h)) {
            self.linger_from_now(reason);
        } else if !conns.is_empty() {
            info!(
                connections = conns.len(),
                "{reason}: serving them here to the end"
            );
        }
        for (h, fd) in conns.into_iter().zip(fds) {
            self.handoff.counts.kept += 1;
            // Pinned, so its own service cannot refuse it: nothing comes back.
            let _ = self.restore(h, fd, true);
        }
        if self.handoff.queue.is_empty() {
            self.report_handoff();
        }
    }

    /// Connections handed over to this worker. A draining worker passes them on to
    /// the newest generation (reload) or keeps them under its drain rules.
    pub(super) fn adopt(&mut self, conns: Vec<Handed>, fds: Vec<OwnedFd>) {
        if conns.len() != fds.len() {
            warn!(
                described = conns.len(),
                fds = fds.len(),
                "handed-over connections and fds do not match; closing the unmatched"
            );
        }
        // A turn may read many of these messages in a row.
        self.beat_if_due();
        let mut refused = Vec::new();
        // Origins whose connections are ours for good from here on.
        let mut taken = Origins::default();
        for (h, fd) in conns.into_iter().zip(fds) {
            let origin = h.moved.as_ref().map(|m| m.origin);
            match (self.phase, self.idle_policy) {
                (Phase::Running, _) => {
                    if let Err(back) = self.restore(h, fd, false) {
                        refused.push(back);
                        continue;
                    }
                }
                (Phase::Draining, IdlePolicy::Handoff) => {
                    let mut h = h;
                    // Passed on: a refusal must come back here, not to a worker
                    // that may be gone by then.
                    if let Some(m) = h.moved.as_mut() {
                        m.origin = crate::os::process::pid().as_raw() as u32;
                        self.handoff.unsettled += 1;
                    }
                    self.handoff.queue.push(h, fd);
                    self.handoff.dirty = true;
                }
                (Phase::Draining, IdlePolicy::Linger) => {
                    self.handoff.counts.kept += 1;
                    let _ = self.restore(h, fd, true);
                }
                // Stopping: idle connections close (dropping the fd closes it).
                (Phase::Draining, IdlePolicy::Close) => self.handoff.counts.closed += 1,
            }
            if let Some(o) = origin {
                taken.add(o);
            }
        }
        self.send_refused(refused);
        if !taken.0.is_empty() {
            self.send_or_owe(ToMaster::Settled { origins: taken.0 });
        }
    }

    /// `n` of the suspended connections this worker handed over will not come back.
    pub(super) fn settled(&mut self, n: u64) {
        self.handoff.unsettled = self.handoff.unsettled.saturating_sub(n);
    }

    /// Whether a refusal may still come back to this worker: then it must not exit
    /// yet. Not once the master is gone (nothing can come back then).
    pub(super) fn awaiting_refusals(&self) -> bool {
        self.handoff.unsettled > 0 && self.channel.is_some()
    }

    /// Hand-overs sent but not yet read by the master: a worker that exited now would
    /// take their fds with it (the master may be holding off reading while it has many
    /// fds in flight). While there are some, a timer looks again shortly.
    pub(super) fn handoff_in_transit(&mut self, now: Instant) -> bool {
        if self.handoff.counts.handed == 0 {
            return false;
        }
        let Some(ch) = &self.channel else {
            return false;
        };
        if ch.unread() == 0 {
            return false;
        }
        if !self.handoff.settle_armed {
            self.handoff.settle_armed = true;
            self.timers
                .schedule(now + SETTLE_CHECK, Timer::HandoffSettle);
        }
        true
    }

    /// At the drain deadline: what is still queued closes with the worker.
    pub(super) fn handoff_deadline(&mut self) {
        // Those still waiting their turn are open connections of this worker: the
        // master counts them as closed from its last heartbeat, with the rest.
        self.handoff.order.clear();
        let n = self.handoff.queue.take_all().len();
        if n > 0 {
            warn!(
                connections = n,
                "drain timeout: closing connections still waiting for the hand-over"
            );
            self.handoff.counts.closed += n as u64;
            // Told now: a worker still waiting for the master to read its last
            // hand-overs may be killed at the backstop before it reports otherwise,
            // and the generation's summary would say "closed 0".
            self.set_channel_write(false);
            self.report_handoff();
        }
    }

    /// Everything queued stays here after all.
    fn keep_all(&mut self, why: &str) {
        self.handoff.order.clear();
        let queued = self.handoff.queue.take_all();
        self.set_channel_write(false);
        if queued.is_empty() {
            return;
        }
        self.linger_from_now(why);
        let mine = queued.iter().filter(|(h, _)| suspended_by_me(h)).count() as u64;
        self.settled(mine);
        for (h, fd) in queued {
            self.handoff.counts.kept += 1;
            let _ = self.restore(h, fd, true);
        }
        self.report_handoff();
    }

    fn linger_from_now(&mut self, why: &str) {
        if self.idle_policy == IdlePolicy::Handoff {
            // Those still waiting for their turn stay too.
            self.handoff.order.clear();
            info!("{why}: keeping idle connections here until they finish");
            self.idle_policy = IdlePolicy::Linger;
        }
    }

    /// The index of the listener at address `listen`, if this worker has it.
    pub(super) fn listener_index(&self, listen: &str) -> Option<usize> {
        self.config
            .listen
            .iter()
            .position(|l| l.address.to_string() == listen)
            .filter(|&i| i < self.listeners.len())
    }

    /// A connection this worker serves again (kept, or adopted while running), with
    /// a fresh handler; `pinned`: never handed over again.
    pub(super) fn readd(&mut self, h: &Handed, fd: OwnedFd, pinned: bool) {
        let listen = h.listen.as_str();
        let Some(index) = self.listener_index(listen) else {
            debug!(
                listen,
                "handed-over connection for a listener we do not have; closing it"
            );
            self.handoff.counts.closed += 1;
            return;
        };
        let peer = peer_ip(&fd);
        if let Some(token) = self.add_conn(
            index,
            net::Accepted {
                fd,
                peer,
                addr: None,
            },
            Some(h),
        ) {
            if let Some(c) = self.conns.get_mut(token) {
                c.flags.set(super::conn::Flags::PINNED, pinned);
            }
            if !pinned {
                self.stats.adopted += 1;
            }
        }
    }

    /// Logs (at info) and tells the master the counts, once per finished burst.
    fn report_handoff(&mut self) {
        let c = self.handoff.counts;
        if c == self.handoff.reported {
            return;
        }
        self.handoff.reported = c;
        info!(
            handed = c.handed,
            kept = c.kept,
            closed = c.closed,
            left = self.conns.len(),
            "hand-over done"
        );
        self.send_or_owe(ToMaster::HandoffDone(c));
    }

    fn set_channel_write(&mut self, on: bool) {
        if self.handoff.want_write == on {
            return;
        }
        let Some(ch) = &self.channel else {
            self.handoff.want_write = false;
            return;
        };
        let interest = Interest {
            write: on,
            ..Interest::READ
        };
        match self.epoll.modify(ch.as_fd(), interest, TOKEN_CHANNEL) {
            Ok(()) => self.handoff.want_write = on,
            Err(e) => warn!("cannot change the channel's epoll interest: {e}"),
        }
    }
}

/// A suspended connection whose origin is this worker (a refusal would come here).
fn suspended_by_me(h: &Handed) -> bool {
    let me = crate::os::process::pid().as_raw() as u32;
    h.moved.as_ref().is_some_and(|m| m.origin == me)
}

/// Adopted suspended connections per origin worker (few origins per batch).
#[derive(Default)]
struct Origins(Vec<(u32, u64)>);

impl Origins {
    fn add(&mut self, origin: u32) {
        match self.0.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, n)) => *n += 1,
            None => self.0.push((origin, 1)),
        }
    }
}

/// The client's IP address (None for a Unix-socket client).
pub(super) fn peer_ip(fd: &OwnedFd) -> Option<std::net::IpAddr> {
    crate::os::net::peer_ip(fd.as_fd())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;
    use std::time::Duration;

    use crate::channel::{HandoffCounts, IdlePolicy, ToMaster, ToWorker};
    use crate::worker::testkit::Kit;

    const CONNS: usize = 300;
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// One response from `s`: (head, body).
    fn response(s: &mut TcpStream) -> (String, String) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    return (head, body);
                }
            }
            let n = s.read(&mut chunk).expect("read a response");
            assert!(
                n > 0,
                "EOF before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A worker loop (in a thread, from its fds) with this test as its master: the
    /// master refuses every hand-over (`Keep`), and the worker serves those
    /// connections itself under the drain rules, then exits once they are gone.
    #[test]
    fn connections_the_master_returns_are_kept_and_served() {
        let kit = Kit::start(
            "http",
            "[worker]\nidle_timeout = \"60s\"\nblocking_threads = 1",
            "",
        );
        let (master, addr, next) = (&kit.master, kit.addr, |w: &dyn Fn(&_) -> bool| kit.next(w));

        let mut clients: Vec<TcpStream> = (0..CONNS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(GET).unwrap();
                let (head, _) = response(&mut s);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                s
            })
            .collect();

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let mut got = 0;
        let mut messages = 0;
        while got < CONNS {
            let (m, fds) = next(&|m| matches!(m, ToMaster::Handoff { .. }));
            let ToMaster::Handoff { conns } = m else {
                unreachable!()
            };
            assert_eq!(conns.len(), fds.len());
            assert!(conns.len() <= crate::channel::BATCH_CONNS);
            assert!(
                conns.iter().all(|h| h.listen == addr.to_string()),
                "{conns:?}"
            );
            got += fds.len();
            messages += 1;
            let back = ToWorker::Keep {
                conns,
                reason: "test: nobody to adopt".into(),
            };
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            master.send_fds(&back, &borrowed).unwrap();
        }
        assert_eq!(got, CONNS);
        assert!(messages >= CONNS.div_ceil(crate::channel::BATCH_CONNS));
        assert!(
            messages < CONNS / 4,
            "{messages} messages for {CONNS}: not batched"
        );
        let (m, _) = next(&|m| matches!(m, ToMaster::HandoffDone(c) if c.kept as usize == CONNS));
        assert_eq!(
            m,
            ToMaster::HandoffDone(HandoffCounts {
                handed: 0,
                kept: CONNS as u64,
                closed: 0
            })
        );

        // Kept: served here, with Connection: close (the drain rules), never dropped.
        for s in &mut clients {
            s.write_all(GET).unwrap();
        }
        for s in &mut clients {
            let (head, body) = response(s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            assert_eq!(body, crate::service::http::DEFAULT_BODY);
        }
        drop(clients);
        assert_eq!(kit.exit_code(), 0, "once its kept connections were gone");
    }
}
