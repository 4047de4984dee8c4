//! The channel between the two masters of a binary upgrade, over which the old
//! master's workers' idle connections move to the new master's workers.
//!
//! The old master makes a SOCK_SEQPACKET socketpair before it spawns the new master;
//! the new master inherits one end across the double fork and exec, named by
//! `CORRAL_UPGRADE_XFER_FD`. Nobody else can connect to a socketpair, and the new
//! master checks that the fd really is a seqpacket socket whose creator (SO_PEERCRED)
//! is the old master named by `CORRAL_UPGRADE_PREDECESSOR`; otherwise it ignores it.
//!
//! Nothing moves before the upgrade is committed: until the new master reports
//! ready the old workers drain nothing, and a rollback just closes the pair. Once
//! committed the old master's workers drain with `IdlePolicy::Handoff`; what they
//! send goes straight to the new master's workers over lanes (`xlanes.rs`, whose
//! adopter ends cross this link); what they hand over to us (proxied pairs, or all
//! of it without lanes) goes, in batches and with backpressure, to the new master,
//! which spreads it over its ready workers. What it cannot place comes back (`ToPredecessor::Back`)
//! and the old master returns it to the worker (`ToWorker::Keep`), where it stays
//! under the old generation's drain rules. Each side counts the fds queued here in
//! its `MAX_IN_FLIGHT` bound (master/handoff.rs), so neither fills its fd table.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use tracing::{debug, info, warn};

use crate::channel::{Channel, ChannelError, ConnQueue, Handed, ToPredecessor, ToSuccessor};
use crate::os::fd;

use super::table::WorkerState;
use super::Master;

/// Environment variable naming the fd of the new master's end of the pair.
pub const XFER_FD_ENV: &str = "CORRAL_UPGRADE_XFER_FD";

/// Set by an old master that reads `ToPredecessor::Adopters` (and so makes lanes
/// across the masters, `xlanes.rs`): an older one would take the message for a bad
/// one, so it is not sent to it.
pub const LANES_ENV: &str = "CORRAL_UPGRADE_LANES";

/// Why the new master refuses the fd it was named.
#[derive(Debug, thiserror::Error)]
pub enum XferError {
    #[error("environment variable {XFER_FD_ENV}={value:?}: {why}; no connection will move from the old master")]
    Refused { value: String, why: String },
}

/// Connections waiting to cross, per worker of the old master (by pid) and with the
/// reason they travel back, if they do.
#[derive(Debug, Default)]
struct Queues {
    items: Vec<(i32, String, ConnQueue)>,
}

impl Queues {
    fn push(&mut self, pid: i32, reason: &str, conns: Vec<(Handed, OwnedFd)>) {
        let k = match self.items.iter().position(|(p, _, _)| *p == pid) {
            Some(k) => k,
            None => {
                self.items
                    .push((pid, reason.to_string(), ConnQueue::default()));
                self.items.len() - 1
            }
        };
        for (h, f) in conns {
            self.items[k].2.push(h, f);
        }
    }

    fn len(&self) -> usize {
        self.items.iter().map(|(_, _, q)| q.len()).sum()
    }

    /// Sends as much as the channel takes; `Err` when it failed (not merely full).
    fn flush<M: serde::Serialize>(
        &mut self,
        ch: &Channel,
        wrap: impl Fn(i32, &str, Vec<Handed>) -> M,
    ) -> Result<usize, io::Error> {
        let mut sent = 0;
        for (pid, reason, q) in &mut self.items {
            let done = q.flush(ch, |conns| wrap(*pid, reason, conns));
            sent += done.conns;
            if let Some(e) = done.error {
                return Err(e);
            }
            if !q.is_empty() {
                break; // full
            }
        }
        self.items.retain(|(_, _, q)| !q.is_empty());
        Ok(sent)
    }

    fn take_all(&mut self) -> Vec<(i32, Vec<(Handed, OwnedFd)>)> {
        self.items
            .drain(..)
            .map(|(p, _, mut q)| (p, q.take_all()))
            .collect()
    }
}

/// Most publishes waiting for the link to the new master (each at most
/// `service::push::MAX_MESSAGE`): beyond, they are dropped with a warning.
const MAX_PUBLISHES: usize = 4096;

/// A message read from the other master: connections (worker pid, records, the
/// reason they come back, fds), or word that a worker's suspended connections were
/// taken for good.
enum Got {
    Conns(i32, Vec<Handed>, String, Vec<OwnedFd>),
    Settled(i32, u64),
    /// A publish of the old master's workers (publisher, seq, topic, message).
    Publish(u64, u64, String, Vec<u8>),
    /// The new master's adopters (pids).
    Adopters(Vec<u32>),
    /// A lane's adopter end: from the old master's worker, to ours, the socket.
    Lane(i32, u32, Option<OwnedFd>),
}

/// One master's end of the pair.
#[derive(Debug)]
pub struct Link {
    channel: Channel,
    out: Queues,
    /// Messages without fds that must not be lost (`ToPredecessor::Settled`), sent
    /// before the connections queued in `out`.
    control: VecDeque<ToPredecessor>,
    /// Publishes of our workers for the new master (old master's side), sent before
    /// the connections queued in `out`: the link is busiest exactly while they come.
    publishes: VecDeque<ToSuccessor>,
    /// Lane ends for the new master's workers (old master's side, `ToSuccessor::Lane`
    /// with its socket), sent before the connections queued in `out`. Dropped if the
    /// link goes: their senders then see the lane hang up and send again elsewhere.
    lanes: VecDeque<(ToSuccessor, OwnedFd)>,
    /// Old master's side: the new master's adopters, as it last said.
    pub adopters: Vec<u32>,
    /// New master's side: the old master reads `Adopters` (`LANES_ENV`), and the
    /// list it was last told.
    pub tells_adopters: bool,
    pub told: Vec<u32>,
    /// The other master closed its end (exited) or the channel failed.
    pub closed: bool,
    /// Usable: the new master greeted us (always, on the new master's side).
    confirmed: bool,
    /// Connections sent over (old master) or adopted from it (new master).
    pub moved: u64,
    /// Connections that came back (old master) or were sent back (new master).
    pub returned: u64,
}

impl Link {
    /// Queues a publish for the new master (old master's side; the caller flushes);
    /// refused when the link is down or `MAX_PUBLISHES` wait already.
    pub fn queue_publish(&mut self, msg: ToSuccessor) -> io::Result<()> {
        if self.closed || !self.confirmed {
            return Err(io::Error::other("the link is not up"));
        }
        if self.publishes.len() >= MAX_PUBLISHES {
            return Err(io::Error::other("too many publishes wait for the link"));
        }
        self.publishes.push_back(msg);
        Ok(())
    }

    /// The old master's TLS ticket keys, queued for the new master before it starts.
    pub fn send_ticket_keys(&self) {
        if let Some(k) = crate::tls::tickets::KeysWire::snapshot() {
            if let Err(e) = self.channel.send(&ToSuccessor::TicketKeys(k)) {
                warn!("cannot pass the TLS ticket keys to the new master ({e}); tickets will not resume across this upgrade");
            }
        }
    }

    fn new(channel: Channel) -> Link {
        Link {
            channel,
            out: Queues::default(),
            control: VecDeque::new(),
            publishes: VecDeque::new(),
            lanes: VecDeque::new(),
            adopters: Vec::new(),
            tells_adopters: false,
            told: Vec::new(),
            closed: false,
            confirmed: false,
            moved: 0,
            returned: 0,
        }
    }

    /// The old master's pair: (its link, the new master's end to pass on).
    /// Unusable until the new master says `Hello` (see `Links::confirm`).
    pub fn pair() -> Result<(Link, OwnedFd), crate::os::SysError> {
        let (ours, theirs) = fd::seqpacket_pair()?;
        Ok((Link::new(Channel::from_fd(ours)), theirs))
    }

    /// In the new master: the end the old master passed, if any, checked. The
    /// variable is removed so our own children and upgrades never see it.
    pub fn from_env(predecessor: Option<i32>) -> Result<Option<Link>, XferError> {
        let Ok(value) = std::env::var(XFER_FD_ENV) else {
            return Ok(None);
        };
        std::env::remove_var(XFER_FD_ENV);
        let refuse = |why: String| XferError::Refused {
            value: value.clone(),
            why,
        };
        let raw: RawFd = value
            .trim()
            .parse()
            .map_err(|_| refuse("not a file descriptor number".into()))?;
        if raw < 3 {
            return Err(refuse("not a file descriptor we inherited".into()));
        }
        let Some(old) = predecessor else {
            return Err(refuse(
                "no live old master is named by CORRAL_UPGRADE_PREDECESSOR".into(),
            ));
        };
        fd::check_channel_from(raw, old)
            .map_err(|why| refuse(format!("{why} (the old master is {old})")))?;
        let owned = fd::claim_inherited(raw).map_err(|e| refuse(e.to_string()))?;
        let _ = fd::set_cloexec(owned.as_fd(), true);
        fd::set_nonblocking(owned.as_fd(), true).map_err(|e| refuse(e.to_string()))?;
        let channel = Channel::from_fd(owned);
        // The old master queued its TLS ticket keys before it started us: in force
        // before our first worker forks, so tickets it sealed still open here.
        match channel.recv::<ToSuccessor>() {
            Ok(Some(ToSuccessor::TicketKeys(k))) if k.install() => {}
            Ok(Some(ToSuccessor::TicketKeys(_))) => {
                warn!("the old master's TLS ticket keys do not decode; tickets it issued will not resume here")
            }
            Ok(_) => {}
            Err(e) => return Err(refuse(format!("cannot read the old master's keys: {e}"))),
        }
        // Before we report ready, so it is there when the old master commits.
        channel
            .send(&ToPredecessor::Hello)
            .map_err(|e| refuse(format!("cannot greet the old master: {e}")))?;
        let mut link = Link::new(channel);
        link.confirmed = true;
        Ok(Some(link))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }

    /// Fds held here, waiting to cross (connections and lane ends).
    pub fn queued(&self) -> usize {
        self.out.len() + self.lanes.len()
    }

    pub fn wants_write(&self) -> bool {
        !self.closed
            && (self.out.len() > 0
                || !self.control.is_empty()
                || !self.publishes.is_empty()
                || !self.lanes.is_empty())
    }

    /// Queues a message without fds that must not be lost (the caller flushes).
    pub fn queue_control(&mut self, msg: ToPredecessor) {
        self.control.push_back(msg);
    }

    /// The new master greeted us (always true on the new master's side).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// Queues a lane's adopter end for the new master (the caller flushes).
    pub fn queue_lane(&mut self, msg: ToSuccessor, end: OwnedFd) {
        self.lanes.push_back((msg, end));
    }

    /// Sends the queued control messages; `Err` when the channel failed (not merely
    /// full).
    fn flush_control(&mut self) -> io::Result<()> {
        while let Some(msg) = self.control.front() {
            match self.channel.send(msg) {
                Ok(()) => {
                    self.control.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        while let Some((msg, end)) = self.lanes.front() {
            match self.channel.send_fds(msg, &[end.as_fd()]) {
                Ok(()) => {
                    self.lanes.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        while let Some(msg) = self.publishes.front() {
            match self.channel.send(msg) {
                Ok(()) => {
                    self.publishes.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Which of the two links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// To the new master of our own upgrade: we send connections, it gives some back.
    ToNew,
    /// To the old master that started us: it sends connections, we give some back.
    ToOld,
}

/// A master's links: to the new master of its own upgrade (made when the upgrade
/// starts, used once it is committed) and to the old master that started it (while
/// that one drains). Both may exist at once: an upgrade while the last one's old
/// master still drains.
#[derive(Debug, Default)]
pub struct Links {
    pub to_new: Option<Link>,
    pub to_old: Option<Link>,
}

impl Links {
    /// The link the old master passed us, if any (a refused one is said at warn).
    /// Called before `Predecessor::from_env` removes the old master's name (which
    /// it also ignores for a PID-1 old master; here that one counts).
    pub fn inherited() -> Links {
        let predecessor = std::env::var(super::upgrade::PREDECESSOR_ENV)
            .ok()
            .and_then(|v| v.split_once(':')?.0.parse().ok());
        let lanes = std::env::var_os(LANES_ENV).is_some();
        std::env::remove_var(LANES_ENV);
        let mut to_old = Link::from_env(predecessor).unwrap_or_else(|e| {
            warn!("{e}");
            None
        });
        if let Some(l) = to_old.as_mut() {
            l.tells_adopters = lanes;
        }
        Links {
            to_new: None,
            to_old,
        }
    }

    pub fn get(&self, side: Side) -> Option<&Link> {
        match side {
            Side::ToNew => self.to_new.as_ref(),
            Side::ToOld => self.to_old.as_ref(),
        }
    }

    fn get_mut(&mut self, side: Side) -> Option<&mut Link> {
        match side {
            Side::ToNew => self.to_new.as_mut(),
            Side::ToOld => self.to_old.as_mut(),
        }
    }

    /// The open links, to poll: (side, fd, wants to write).
    pub fn pollable(&self) -> Vec<(Side, BorrowedFd<'_>, bool)> {
        [Side::ToNew, Side::ToOld]
            .into_iter()
            .filter_map(|s| {
                // Not before the commit: the new master's greeting waits for it.
                let l = self.get(s).filter(|l| !l.closed && l.confirmed)?;
                Some((s, l.fd(), l.wants_write()))
            })
            .collect()
    }

    /// Fds held on both links.
    pub fn queued(&self) -> usize {
        [Side::ToNew, Side::ToOld]
            .into_iter()
            .filter_map(|s| self.get(s))
            .map(Link::queued)
            .sum()
    }

    /// Connections are still on their way to the new master.
    pub fn sending_to_new(&self) -> bool {
        self.to_new.as_ref().is_some_and(Link::wants_write)
    }

    /// At the commit: the new master must have greeted us (it sends `Hello` before
    /// it reports ready); one that did not (it refused the channel, or is a binary
    /// without it) gets nothing over it, and the link is dropped.
    pub fn confirm(&mut self) -> bool {
        let hello = self.to_new.as_mut().is_some_and(|l| {
            l.confirmed = matches!(
                l.channel.recv::<ToPredecessor>(),
                Ok(Some(ToPredecessor::Hello))
            );
            l.confirmed
        });
        if !hello && self.to_new.take().is_some() {
            info!("the new master did not take the upgrade channel: idle connections stay with this master's workers");
        }
        hello
    }
}

impl Master {
    /// Old master, upgrade committed: connections its worker `from` handed over go
    /// to the new master. False (the caller places them as usual) when the link is
    /// not usable.
    pub(super) fn xfer_send(&mut self, from: usize, conns: &mut Vec<(Handed, OwnedFd)>) -> bool {
        if !self.up.handed_over {
            return false;
        }
        let pid = self.workers[from].pid.as_raw();
        let Some(l) = self
            .up
            .xfer
            .to_new
            .as_mut()
            .filter(|l| !l.closed && l.confirmed)
        else {
            return false;
        };
        let n = conns.len() as u64;
        l.out.push(pid, "", std::mem::take(conns));
        self.workers[from].handoff.note_forwarded(n);
        self.xfer_flush(Side::ToNew);
        true
    }

    /// Sends what is queued on a link as far as it takes it.
    pub(super) fn xfer_flush(&mut self, side: Side) {
        let Some(l) = self.up.xfer.get_mut(side).filter(|l| l.wants_write()) else {
            return;
        };
        if let Err(e) = l.flush_control() {
            warn!("the channel to the other master failed: {e}");
            return self.xfer_closed(side);
        }
        let result = match side {
            Side::ToNew => l
                .out
                .flush(&l.channel, |from, _, conns| ToSuccessor::Conns {
                    from,
                    conns,
                }),
            Side::ToOld => l
                .out
                .flush(&l.channel, |to, reason, conns| ToPredecessor::Back {
                    to,
                    conns,
                    reason: reason.to_string(),
                }),
        };
        match result {
            Ok(n) if side == Side::ToNew => l.moved += n as u64,
            Ok(n) => l.returned += n as u64,
            Err(e) => {
                warn!("the channel to the other master failed: {e}");
                self.xfer_closed(side);
            }
        }
    }

    /// The other master is gone: what was on its way there stays here.
    fn xfer_closed(&mut self, side: Side) {
        let Some(l) = self.up.xfer.get_mut(side) else {
            return;
        };
        l.closed = true;
        l.lanes.clear();
        let left = l.out.take_all();
        for (pid, conns) in left {
            match side {
                // Our own workers' connections: they keep them.
                Side::ToNew => self.xfer_keep(pid, conns, "the new master is gone"),
                Side::ToOld if !conns.is_empty() => {
                    warn!(
                        connections = conns.len(),
                        "closing connections the old master can no longer take back: it is gone"
                    );
                }
                Side::ToOld => {}
            }
        }
        // The old master is gone for good: nothing more comes on its link, so its fd
        // closes instead of staying open for the new master's whole life.
        if side == Side::ToOld {
            self.up.xfer.to_old = None;
        }
    }

    /// Returns connections to our worker `pid`, or if it is gone to another of our
    /// draining workers (any of them can serve a connection of a listener it has);
    /// with none left, they close.
    fn xfer_keep(&mut self, pid: i32, conns: Vec<(Handed, OwnedFd)>, why: &str) {
        if conns.is_empty() {
            return;
        }
        let live = |w: &super::table::WorkerRecord| {
            !w.channel_closed && matches!(w.state, WorkerState::Draining { .. })
        };
        let target = self
            .workers
            .iter()
            .position(|w| w.pid.as_raw() == pid && live(w))
            .or_else(|| self.workers.iter().position(live));
        match target {
            Some(i) => {
                let n = conns.len() as u64;
                self.workers[i].handoff.take_back(conns, why, n);
                self.flush_handoff(i);
            }
            None => {
                warn!(
                    connections = conns.len(),
                    "closing connections the new master gave back ({why}): no worker of ours is left to keep them"
                );
                self.gens.bounced(pid, conns.len() as u64);
            }
        }
    }

    /// Reads what the other master sent on a link.
    pub(super) fn xfer_read(&mut self, side: Side) {
        loop {
            // What the old master sends is bounded by our fds in flight.
            if side == Side::ToOld && self.handoff_in_flight() >= super::moves::MAX_IN_FLIGHT {
                break;
            }
            let Some(l) = self.up.xfer.get(side).filter(|l| !l.closed) else {
                return;
            };
            let got = match side {
                Side::ToNew => l.channel.recv_fds::<ToPredecessor>().map(|m| {
                    m.map(|(msg, f)| match msg {
                        ToPredecessor::Back { to, conns, reason } => {
                            Got::Conns(to, conns, reason, f)
                        }
                        ToPredecessor::Hello => Got::Conns(0, Vec::new(), String::new(), f),
                        ToPredecessor::Settled { to, n } => Got::Settled(to, n),
                        ToPredecessor::Adopters { pids } => Got::Adopters(pids),
                    })
                }),
                Side::ToOld => l.channel.recv_fds::<ToSuccessor>().map(|m| {
                    m.map(|(msg, f)| match msg {
                        ToSuccessor::Conns { from, conns } => {
                            Got::Conns(from, conns, String::new(), f)
                        }
                        // Read at start (`from_env`); another copy changes nothing.
                        ToSuccessor::TicketKeys(_) => Got::Conns(0, Vec::new(), String::new(), f),
                        ToSuccessor::Publish {
                            publisher,
                            seq,
                            topic,
                            message,
                        } => Got::Publish(publisher, seq, topic, message),
                        ToSuccessor::Lane { from, to } => Got::Lane(from, to, f.into_iter().next()),
                    })
                }),
            };
            match got {
                Ok(Some(Got::Settled(pid, n))) => self.settle_ours(pid, n),
                Ok(Some(Got::Adopters(pids))) => self.xfer_adopters(pids),
                Ok(Some(Got::Lane(from, to, end))) => self.xfer_lane_end(from, to, end),
                Ok(Some(Got::Publish(publisher, seq, topic, message))) => {
                    self.forward_publish(publisher, seq, &topic, message);
                }
                Ok(Some(Got::Conns(_, conns, _, fds))) if conns.is_empty() && fds.is_empty() => {}
                Ok(Some(Got::Conns(pid, conns, reason, fds))) => {
                    if conns.len() != fds.len() {
                        warn!(
                            described = conns.len(),
                            fds = fds.len(),
                            "message from the other master with mismatched fds; closing the unmatched"
                        );
                    }
                    let conns: Vec<(Handed, OwnedFd)> = conns.into_iter().zip(fds).collect();
                    match side {
                        Side::ToNew => {
                            if let Some(l) = self.up.xfer.to_new.as_mut() {
                                l.returned += conns.len() as u64;
                            }
                            info!(
                                connections = conns.len(),
                                "the new master gave connections back: {reason}"
                            );
                            self.xfer_keep(pid, conns, &reason);
                        }
                        Side::ToOld => self.xfer_adopt(pid, conns),
                    }
                }
                Ok(None) => break,
                Err(ChannelError::Closed) => {
                    debug!("the other master closed the upgrade channel");
                    self.xfer_closed(side);
                    return;
                }
                Err(e) => {
                    warn!("bad message from the other master: {e}");
                    break;
                }
            }
        }
        self.xfer_flush(side);
    }

    /// Old master: `n` suspended connections of our worker `pid` were taken for good
    /// by the new master's workers.
    fn settle_ours(&mut self, pid: i32, n: u64) {
        if let Some(i) = self
            .workers
            .iter()
            .position(|w| w.pid.as_raw() == pid && !w.channel_closed)
        {
            self.workers[i]
                .handoff
                .owe(crate::channel::ToWorker::Settled { n });
            self.flush_handoff(i);
        }
    }

    /// New master: a connection our worker refused goes back to the old master's
    /// worker `origin` that suspended it, to be served there to the end. `Err` (the
    /// connection) when the old master cannot be reached.
    pub(super) fn xfer_refused(
        &mut self,
        origin: u32,
        why: &str,
        conn: (Handed, OwnedFd),
    ) -> Result<(), (Handed, OwnedFd)> {
        let Some(l) = self.up.xfer.to_old.as_mut().filter(|l| !l.closed) else {
            return Err(conn);
        };
        l.out.push(origin as i32, why, vec![conn]);
        // It did not stay: the status's "moved from the old master" says what did.
        self.gens.returned_to_predecessor(1);
        self.xfer_flush(Side::ToOld);
        Ok(())
    }

    /// New master: tells the old master that `n` suspended connections of its worker
    /// `origin` were taken for good (nothing to say once it is gone).
    pub(super) fn xfer_settled(&mut self, origin: i32, n: u64) {
        let Some(l) = self.up.xfer.to_old.as_mut().filter(|l| !l.closed) else {
            return;
        };
        l.control
            .push_back(ToPredecessor::Settled { to: origin, n });
        self.xfer_flush(Side::ToOld);
    }

    /// New master: connections from the old master's worker `from`, spread over our
    /// ready workers; with none, sent back.
    fn xfer_adopt(&mut self, from: i32, conns: Vec<(Handed, OwnedFd)>) {
        if conns.is_empty() {
            return;
        }
        let n = conns.len() as u64;
        match self.place(conns) {
            Ok(()) => {
                if let Some(l) = self.up.xfer.to_old.as_mut() {
                    l.moved += n;
                }
                self.gens.adopted_from_predecessor(n);
            }
            Err((why, back)) => {
                if let Some(l) = self.up.xfer.to_old.as_mut() {
                    l.out.push(from, &why, back);
                }
                self.xfer_flush(Side::ToOld);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Only a seqpacket socket made by the named process is taken; anything else is
    /// refused with the reason.
    #[test]
    fn only_the_old_masters_socketpair_is_taken() {
        let me = std::process::id() as i32;
        let (link, theirs) = Link::pair().unwrap();
        assert_eq!(fd::check_channel_from(theirs.as_raw_fd(), me), Ok(()));
        let wrong = fd::check_channel_from(theirs.as_raw_fd(), me + 1).unwrap_err();
        assert!(wrong.contains("not by"), "{wrong}");
        let (r, _w) = fd::pipe().unwrap();
        let pipe = fd::check_channel_from(r.as_raw_fd(), me).unwrap_err();
        assert!(pipe.contains("not a socket"), "{pipe}");
        drop(link);
    }

    /// Batches for several workers go out in order, each with its worker's pid.
    #[test]
    fn queued_connections_cross_in_batches_naming_their_worker() {
        let (mut link, theirs) = Link::pair().unwrap();
        let other = Channel::from_fd(theirs);
        let mut keep = Vec::new();
        for pid in [10, 11] {
            let mut conns = Vec::new();
            for i in 0..100 {
                let (r, w) = fd::pipe().unwrap();
                keep.push(r);
                conns.push((Handed::idle(format!("127.0.0.1:{i}")), w));
            }
            link.out.push(pid, "", conns);
        }
        assert_eq!(link.queued(), 200);
        let sent = link
            .out
            .flush(&link.channel, |from, _, conns| ToSuccessor::Conns {
                from,
                conns,
            })
            .unwrap();
        assert_eq!(sent, 200);
        assert_eq!(link.queued(), 0);
        let mut seen = Vec::new();
        while let Some((ToSuccessor::Conns { from, conns }, fds)) =
            other.recv_fds::<ToSuccessor>().unwrap()
        {
            // (TicketKeys would end the loop: none is sent here.)
            assert_eq!(conns.len(), fds.len());
            seen.push((from, conns.len()));
        }
        assert_eq!(seen, vec![(10, 64), (10, 36), (11, 64), (11, 36)]);
    }
}
