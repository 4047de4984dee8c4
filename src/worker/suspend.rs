//! Connections that move at reload: a draining worker suspends each connection at a
//! quiescent point and queues it for the hand-over; a worker of the new generation
//! resumes it with its service's `resume`.
//!
//! The loop asks after every exchange (`drive`), so a connection that is busy now
//! (an echo whose output is still being sent, a proxy pair with bytes in either
//! direction) moves at its next quiescent point. What travels: the client socket, a
//! proxy's upstream socket (both in one *bundle*: a Unix socket whose receive queue
//! holds the two fds, so the master, which moves one fd per record, moves the pair
//! as one), the handler's state and version, the input it had not consumed, its
//! timer and its idle clock. Output never travels: the loop only asks once it has
//! all been sent. A state the new service refuses goes back to the worker that
//! suspended it (`ToMaster::Refused`, then a `Keep`), which resumes it with its own
//! code and serves it to the end (pinned: never offered again).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::channel::{Handed, Moved, ToMaster};
use crate::os::{process, scm};
use crate::service::Handler;

use super::conn::{Bucket, Conn, Leaving, Pipes, Token, Upstream};
use super::{Timer, Worker};

impl Worker {
    /// Draining for a reload: if the connection is at a quiescent point and its
    /// handler agrees, takes it out of this worker and queues it for the next
    /// generation. True if it left.
    pub(super) fn try_move(&mut self, token: Token) -> bool {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let Some(leaving) = c.suspend() else {
            return false;
        };
        let listen = self
            .config
            .listen
            .get(usize::from(c.listener))
            .map(|l| l.address.to_string())
            .unwrap_or_default();
        // Bundled before anything is taken apart: if that fails, the pair is served
        // here as if it had never been asked.
        let bundle = match &c.upstream {
            Some(up) => match scm::bundle(&[c.fd.as_fd(), up.fd.as_fd()]) {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!("cannot bundle a proxied pair for the hand-over ({e}); it stays here");
                    if let Leaving::Suspended(_, input) = leaving {
                        c.carry_input(input);
                    }
                    c.pinned = true;
                    return false;
                }
            },
            None => None,
        };
        let handed = match leaving {
            Leaving::Idle => Handed::idle(listen),
            Leaving::Suspended(s, input) => Handed {
                listen,
                moved: Some(Box::new(Moved {
                    version: s.version,
                    state: s.state,
                    input,
                    idle_ms: millis(now.saturating_duration_since(c.last_active)),
                    timer_ms: c.timer_at.map(|t| millis(t.saturating_duration_since(now))),
                    origin: process::pid().as_raw() as u32,
                    upstream: c.upstream.as_ref().map(|u| u.addr),
                    refused: None,
                })),
            },
        };
        // The fds stay open (queued, then in flight): without an explicit delete this
        // epoll set would keep reporting their events under a token that is reused.
        let _ = self.epoll.delete(c.fd.as_fd());
        if let Some(up) = &c.upstream {
            let _ = self.epoll.delete(up.fd.as_fd());
        }
        let Some(c) = self.detach(token) else {
            return false;
        };
        // Detaching released the upstream in this worker's balancer counts; the
        // receiver counts it as connected there.
        let (fd, _upstream) = c.into_fds(&mut self.bufs);
        self.handoff.queue.push(handed, bundle.unwrap_or(fd));
        self.handoff.dirty = true;
        true
    }

    /// A connection handed to this worker. One that was merely idle starts afresh
    /// (`connect`); a suspended one is resumed. `pinned` (handed back): it stays here,
    /// and a state its own service cannot read closes it. Otherwise a refused state is
    /// returned, to go back to its origin.
    pub(super) fn restore(
        &mut self,
        h: Handed,
        fd: OwnedFd,
        pinned: bool,
    ) -> Result<(), (Handed, OwnedFd)> {
        let Some(mut m) = h.moved else {
            self.readd(&h.listen, fd, pinned);
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
        let peer = super::handoff::peer_ip(&client);
        let handler = match self.listeners[index]
            .service
            .resume(peer, &m.state, m.version)
        {
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
                        moved: Some(m),
                    },
                    fd,
                ));
            }
        };
        self.add_moved(index, client, peer, handler, &m, upstream, pinned);
        Ok(())
    }

    /// Suspended connections this worker's services refused: back to the master,
    /// which returns each to the worker that suspended it.
    pub(super) fn send_refused(&mut self, refused: Vec<(Handed, OwnedFd)>) {
        if refused.is_empty() {
            return;
        }
        let (conns, fds): (Vec<Handed>, Vec<OwnedFd>) = refused.into_iter().unzip();
        let n = conns.len();
        let Some(ch) = &self.channel else {
            warn!(
                connections = n,
                "closing refused connections: the master is gone"
            );
            return;
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        match ch.send_fds(&ToMaster::Refused { conns }, &borrowed) {
            Ok(()) => debug!(connections = n, "refused moved connections sent back"),
            Err(e) => warn!(
                connections = n,
                "cannot send refused connections back ({e}); closing them"
            ),
        }
    }

    /// Serves a resumed connection as if it had been accepted here, with the idle
    /// clock, timer and input it brought, and its upstream already connected.
    #[allow(clippy::too_many_arguments)]
    fn add_moved(
        &mut self,
        listener: usize,
        fd: OwnedFd,
        peer: Option<std::net::IpAddr>,
        handler: Box<dyn Handler>,
        m: &Moved,
        upstream: Option<OwnedFd>,
        pinned: bool,
    ) {
        let flow = self.listeners[listener].flow;
        // Counted but never refused: the client is connected already, and refusing
        // here would cut it.
        let counted_ip = match peer {
            Some(ip) if flow.max_connections_per_ip > 0 => {
                *self.per_ip.entry(ip).or_insert(0) += 1;
                true
            }
            _ => false,
        };
        let now = Instant::now();
        let bucket = (flow.rate > 0).then(|| Box::new(Bucket::new(flow.rate, flow.burst, now)));
        let mut conn = Conn::new(fd, peer, handler, bucket, now);
        conn.counted_ip = counted_ip;
        conn.listener = listener as u16;
        conn.pinned = pinned;
        conn.last_active = now
            .checked_sub(Duration::from_millis(m.idle_ms))
            .unwrap_or(now);
        conn.timer_at = m.timer_ms.map(|ms| now + Duration::from_millis(ms));
        conn.carry_input(m.input.clone());
        if let (Some(ufd), Some(addr)) = (upstream, m.upstream) {
            let l = &self.config.listen[listener];
            // Indices differ between configs; addresses do not. An upstream the new
            // config dropped serves its session to the end, counted nowhere.
            let index = l.resolved_upstreams.iter().position(|a| *a == addr);
            let mut up = Upstream::moved(ufd, index.unwrap_or(usize::MAX), addr);
            if l.splice.unwrap_or(false) && conn.bucket.is_none() {
                match Pipes::new() {
                    Ok(p) => up.pipes = Some(Box::new(p)),
                    Err(e) => debug!("no pipes for splice ({e}); copying instead"),
                }
            }
            if let (Some(i), Some(u)) = (index, self.listeners[listener].service.upstreams()) {
                u.connected(i);
            }
            conn.upstream = Some(Box::new(up));
        }
        let token = self.conns.insert(conn);
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let watched = self
            .epoll
            .add(c.fd.as_fd(), c.registered, token.0)
            .and_then(|()| match &c.upstream {
                Some(up) => self
                    .epoll
                    .add(up.fd.as_fd(), up.registered, token.upstream()),
                None => Ok(()),
            });
        if let Err(e) = watched {
            warn!("cannot watch a moved connection: {e}");
            self.close(token);
            return;
        }
        if let Some(at) = c.timer_at {
            c.timer_queued = Some(at);
            self.timers.schedule(at, Timer::Handler(token));
        }
        let idle = self.listeners[listener].idle;
        if !idle.is_zero() {
            self.timers
                .schedule(c.last_active + idle, Timer::Idle(token));
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
