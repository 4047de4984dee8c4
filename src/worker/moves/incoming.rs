//! The adopting worker's side of a move: connections handed to this worker are resumed
//! (`restore`), refused back to their origin, or kept here under the drain rules when
//! they come back (see the folder's `mod.rs`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::channel::{Handed, IdlePolicy, Moved, ToMaster};
use crate::os::{net, scm};
use crate::service::Handler;

use super::super::bucket::Bucket;
use super::super::conn::{Conn, Flags, Pipes, Upstream};
use super::super::token::Token;
use super::super::{Phase, Timer, Worker};
use super::{peer_ip, suspended_by_me, Origins};

impl Worker {
    /// Connections handed over to this worker. A draining worker passes them on to
    /// the newest generation (reload) or keeps them under its drain rules.
    pub(in crate::worker) fn adopt(&mut self, mut conns: Vec<Handed>, fds: Vec<OwnedFd>) {
        // A turn may read many of these messages in a row.
        self.beat_if_due();
        let mut refused = Vec::new();
        // Origins whose connections are ours for good from here on.
        let mut taken = Origins::default();
        if conns.len() > fds.len() {
            // The kernel dropped their sockets on the way (this worker's fd table was
            // full): they are gone. Their origin must not wait for a refusal that
            // cannot come (it stayed until its drain deadline).
            let lost = conns.split_off(fds.len());
            warn!(
                connections = lost.len(),
                "handed-over connections arrived without their sockets (the fd table is full): they are closed"
            );
            for o in lost
                .iter()
                .filter_map(|h| h.moved.as_ref().map(|m| m.origin))
            {
                taken.add(o);
            }
        }
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

    /// The master took back connections it could not place: they stay here, and so
    /// does every connection that goes idle from now on (handing it over again would
    /// only bounce it back). Connections the new generation refused stay too, pinned,
    /// but the others keep moving.
    pub(in crate::worker) fn keep(&mut self, conns: Vec<Handed>, fds: Vec<OwnedFd>, reason: &str) {
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

    /// `n` of the suspended connections this worker handed over will not come back.
    pub(in crate::worker) fn settled(&mut self, n: u64) {
        self.handoff.unsettled = self.handoff.unsettled.saturating_sub(n);
    }

    /// Whether a refusal may still come back to this worker: then it must not exit
    /// yet. Not once the master is gone (nothing can come back then).
    pub(in crate::worker) fn awaiting_refusals(&self) -> bool {
        self.handoff.unsettled > 0 && self.link.channel.is_some()
    }

    /// The index of the listener at address `listen`, if this worker has it.
    pub(in crate::worker) fn listener_index(&self, listen: &str) -> Option<usize> {
        self.config
            .listen
            .iter()
            .position(|l| l.address.to_string() == listen)
            .filter(|&i| i < self.listeners.len())
    }

    /// A connection this worker serves again (kept, or adopted while running), with
    /// a fresh handler; `pinned`: never handed over again.
    pub(in crate::worker) fn readd(&mut self, h: &Handed, fd: OwnedFd, pinned: bool) {
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
                c.flags.set(Flags::PINNED, pinned);
            }
            if !pinned {
                self.tally.stats.adopted += 1;
            }
        }
    }

    /// A connection handed to this worker. One that was merely idle starts afresh
    /// (`connect`); a suspended one is resumed. `pinned` (handed back): it stays here,
    /// and a state its own service cannot read closes it. Otherwise a refused state is
    /// returned, to go back to its origin.
    pub(in crate::worker) fn restore(
        &mut self,
        h: Handed,
        fd: OwnedFd,
        pinned: bool,
    ) -> Result<(), (Handed, OwnedFd)> {
        let Some(mut m) = h.moved else {
            self.readd(&h, fd, pinned);
            return Ok(());
        };
        let Some(index) = self.listener_index(&h.listen) else {
            debug!(
                listen = h.listen,
                "moved connection for a listener we do not have; closing it"
            );
            self.handoff.counts.closed += 1;
            return Ok(());
        };
        let (client, upstream) = if m.upstream.is_some() {
            match scm::unbundle(fd, 2) {
                Ok(mut fds) => {
                    let up = fds.pop();
                    match fds.pop() {
                        Some(client) => (client, up),
                        None => return Ok(()),
                    }
                }
                Err(e) => {
                    warn!("a moved proxy pair arrived broken ({e}); closing it");
                    self.handoff.counts.closed += 1;
                    return Ok(());
                }
            }
        } else {
            (fd, None)
        };
        // The real client when a PROXY header named it (the socket's peer is then
        // the balancer).
        let peer = h.peer.map(|a| a.ip()).or_else(|| peer_ip(&client));
        let service = &self.config.listen[index].service;
        let tls_refused = h
            .tls
            .as_deref()
            .and_then(crate::tls::TlsSession::cannot_continue);
        let resumed = if let Some(why) = tls_refused {
            Err(why)
        } else if *service != m.service {
            Err(format!(
                "the listener now runs service {service:?}, not {:?}",
                m.service
            ))
        } else if m.idle {
            Ok(self.listeners[index].service.connect(peer))
        } else {
            self.listeners[index]
                .service
                .resume(peer, &m.state, m.version)
                .map_err(|e| e.to_string())
        };
        let handler = match resumed {
            Ok(handler) => handler,
            Err(e) if pinned => {
                warn!(
                    listen = h.listen,
                    "cannot resume a connection handed back ({e}); closing it"
                );
                self.handoff.counts.closed += 1;
                return Ok(());
            }
            Err(e) => {
                debug!(listen = h.listen, "refusing a moved connection: {e}");
                m.refused = Some(format!("the new generation refused its state: {e}"));
                let fd = match upstream {
                    Some(up) => match scm::bundle(&[client.as_fd(), up.as_fd()]) {
                        Ok(b) => b,
                        Err(e) => {
                            warn!("cannot bundle a refused proxy pair ({e}); closing it");
                            return Ok(());
                        }
                    },
                    None => client,
                };
                return Err((
                    Handed {
                        listen: h.listen,
                        peer: h.peer,
                        moved: Some(m),
                        tls: h.tls,
                    },
                    fd,
                ));
            }
        };
        let moved = (&*m, h.tls.as_deref());
        let token = self.add_moved(
            index,
            client,
            (peer, h.peer),
            handler,
            moved,
            upstream,
            pinned,
        );
        if let (Some(token), Some(p)) = (token, &m.push) {
            self.restore_push(token, p);
        }
        Ok(())
    }

    /// Suspended connections this worker's services refused: back to the master,
    /// which returns each to the worker that suspended it.
    pub(in crate::worker) fn send_refused(&mut self, refused: Vec<(Handed, OwnedFd)>) {
        if refused.is_empty() {
            return;
        }
        let (conns, fds): (Vec<Handed>, Vec<OwnedFd>) = refused.into_iter().unzip();
        let n = conns.len();
        let Some(ch) = &self.link.channel else {
            warn!(
                connections = n,
                "closing refused connections: the master is gone"
            );
            return;
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        match ch.send_fds(&ToMaster::Refused { conns }, &borrowed) {
            Ok(()) => {
                self.handoff.via_master += n as u64;
                debug!(connections = n, "refused moved connections sent back");
            }
            Err(e) => warn!(
                connections = n,
                "cannot send refused connections back ({e}); closing them"
            ),
        }
    }

    /// Serves a resumed connection as if it had been accepted here, with the idle
    /// clock, timer and input it brought, and its upstream already connected.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_moved(
        &mut self,
        listener: usize,
        fd: OwnedFd,
        (peer, origin): (Option<std::net::IpAddr>, Option<std::net::SocketAddr>),
        handler: Box<dyn Handler>,
        (m, tls): (&Moved, Option<&crate::tls::TlsMoved>),
        upstream: Option<OwnedFd>,
        pinned: bool,
    ) -> Option<Token> {
        let flow = self.listeners[listener].flow;
        // Counted but never refused: the client is connected already, and refusing
        // here would cut it.
        let counted_ip = match peer {
            Some(ip) if flow.max_connections_per_ip > 0 => {
                *self.admit.per_ip.entry(ip).or_insert(0) += 1;
                true
            }
            _ => false,
        };
        let now = Instant::now();
        let bucket = (flow.rate > 0).then(|| Box::new(Bucket::new(flow.rate, flow.burst, now)));
        let mut conn = Conn::new(fd, peer, handler, bucket, now);
        conn.flags.set(Flags::COUNTED_IP, counted_ip);
        conn.listener = listener as u16;
        conn.flags.set(Flags::PINNED, pinned);
        conn.set_origin(origin);
        conn.peer_port = origin
            .or_else(|| crate::os::net::peer_addr(conn.fd.as_fd()))
            .map_or(0, |a| a.port());
        if self.config.listen[listener].logs_connections() {
            conn.set_log(Some(super::super::connlog::Record::new(
                now,
                conn.fd.as_fd(),
                None,
            )));
        }
        conn.last_active = now
            .checked_sub(Duration::from_millis(m.idle_ms))
            .unwrap_or(now);
        conn.set_timer_at(m.timer_ms.map(|ms| now + Duration::from_millis(ms)));
        conn.carry_input(m.input.clone());
        if let (Some(ufd), Some(addr)) = (upstream, m.upstream) {
            let l = &self.config.listen[listener];
            // Indices differ between configs; addresses do not. An upstream the new
            // config dropped serves its session to the end, counted nowhere.
            let opts = crate::service::proxy::options::of(l);
            let index = opts.and_then(|o| o.resolved.iter().position(|a| *a == addr));
            let mut up = Upstream::moved(ufd, index.unwrap_or(usize::MAX), addr);
            if opts.and_then(|o| o.splice).unwrap_or(false) && conn.bucket().is_none() {
                match Pipes::new() {
                    Ok(p) => up.pipes = Some(Box::new(p)),
                    Err(e) => debug!("no pipes for splice ({e}); copying instead"),
                }
            }
            if let (Some(i), Some(u)) = (
                index,
                self.listeners[listener]
                    .service
                    .upstreams(crate::service::sealed::FORWARDING),
            ) {
                u.connected(i);
            }
            conn.set_upstream(Some(Box::new(up)));
        }
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token)?;
        let watched = self
            .epoll
            .add(c.fd.as_fd(), c.registered(), token.0)
            .and_then(|()| match c.upstream() {
                Some(up) => self
                    .epoll
                    .add(up.fd.as_fd(), up.registered, token.upstream()),
                None => Ok(()),
            });
        if let Err(e) = watched {
            warn!("cannot watch a moved connection: {e}");
            self.close(token);
            return None;
        }
        if let Some(t) = tls {
            if !self.attach_moved_tls(token, t) {
                return None;
            }
        }
        let c = self.conns.get_mut(token)?;
        if !pinned {
            // Handed back to this worker is not a new arrival: counted once, here.
            self.tally.stats.adopted += 1;
        }
        if let Some(at) = c.timer_at() {
            c.set_timer_queued(Some(at));
            self.timers.schedule(at, Timer::Handler(token));
        }
        let idle = self.listeners[listener].idle;
        if !idle.is_zero() {
            self.timers
                .schedule(c.last_active + idle, Timer::Idle(token));
        }
        Some(token)
    }
}
