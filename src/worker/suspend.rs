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

use super::bucket::Bucket;
use super::conn::Flags;
use super::conn::{Conn, Leaving, Pipes, Upstream};
use super::token::Token;
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
        let l = self.config.listen.get(usize::from(c.listener));
        let Some((leaving, tls)) = c.suspend(l.and_then(|l| l.suspend).unwrap_or(true)) else {
            return false;
        };
        let listen = l.map(|l| l.address.to_string()).unwrap_or_default();
        // Bundled before anything is taken apart: if that fails, the pair is served
        // here as if it had never been asked.
        let bundle = match c.upstream() {
            Some(up) => match scm::bundle(&[c.fd.as_fd(), up.fd.as_fd()]) {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!("cannot bundle a proxied pair for the hand-over ({e}); it stays here");
                    if let Leaving::Suspended(_, input) = leaving {
                        c.carry_input(input);
                    }
                    // Its TLS engine gave up its secrets: it goes on from them here.
                    if let Some(t) = tls.as_deref().and_then(crate::tls::TlsSession::continued) {
                        c.set_tls(Box::new(t));
                    }
                    c.flags.set(Flags::PINNED, true);
                    return false;
                }
            },
            None => None,
        };
        // What a connection with no service state carries; a suspended one adds its own.
        let idle = Moved {
            service: l.map(|l| l.service.clone()).unwrap_or_default(),
            version: 0,
            state: Vec::new(),
            input: Vec::new(),
            idle_ms: millis(now.saturating_duration_since(c.last_active)),
            timer_ms: None,
            origin: process::pid().as_raw() as u32,
            upstream: None,
            refused: None,
            idle: true,
            push: None,
        };
        // Subscriptions travel in the moved record, so a subscriber moves as moved.
        let push = self.push.take_for_move(token.0);
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let idle = Moved { push, ..idle };
        let moved = match leaving {
            Leaving::Idle if tls.is_none() && idle.push.is_none() => None,
            // An idle TLS connection travels as moved, so that a receiver that
            // cannot continue its record layer can send it back here.
            Leaving::Idle => Some(idle),
            Leaving::Suspended(s, input) => Some(Moved {
                version: s.version,
                state: s.state,
                input,
                timer_ms: c
                    .timer_at()
                    .map(|t| millis(t.saturating_duration_since(now))),
                upstream: c.upstream().map(|u| u.addr),
                idle: false,
                ..idle
            }),
        };
        let handed = Handed {
            listen,
            peer: c.origin(),
            moved: moved.map(Box::new),
            tls,
        };
        if handed.tls.is_some() {
            self.stats.tls.moved_out += 1;
        }
        // The fds stay open (queued, then in flight): without an explicit delete this
        // epoll set would keep reporting their events under a token that is reused.
        let _ = self.epoll.delete(c.fd.as_fd());
        if let Some(up) = c.upstream() {
            let _ = self.epoll.delete(up.fd.as_fd());
        }
        self.end_as(token, super::connlog::End::HandedOver);
        let Some(c) = self.detach(token) else {
            return false;
        };
        // Detaching released the upstream in this worker's balancer counts; the
        // receiver counts it as connected there.
        let (fd, _upstream) = c.into_fds(&mut self.bufs);
        if handed.moved.is_some() {
            // The new generation may refuse its state and send it back here.
            self.handoff.unsettled += 1;
        }
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
        let peer = h
            .peer
            .map(|a| a.ip())
            .or_else(|| super::handoff::peer_ip(&client));
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
                *self.per_ip.entry(ip).or_insert(0) += 1;
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
        if self.config.listen[listener].logs_connections() {
            conn.set_log(Some(super::connlog::Record::new(
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
            if let (Some(i), Some(u)) = (index, self.listeners[listener].service.upstreams()) {
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
            self.stats.adopted += 1;
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    use crate::channel::{Handed, IdlePolicy, Moved, ToMaster, ToWorker};
    use crate::worker::testkit::{round_trip, Kit};

    /// A worker loop (in a thread) serving echo, with this test as its master.
    fn echo_worker() -> Kit {
        Kit::start("echo", "[worker]\nblocking_threads = 1", "")
    }

    /// A connected client and the server side of its socket (to hand over).
    fn client_and_server_socket() -> (TcpStream, OwnedFd) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (c, s.into())
    }

    fn moved(listen: SocketAddr, version: u32, origin: u32) -> Handed {
        Handed {
            listen: listen.to_string(),
            peer: None,
            tls: None,
            moved: Some(Box::new(Moved {
                service: "echo".into(),
                version,
                state: Vec::new(),
                input: b"carried ".to_vec(),
                idle_ms: 0,
                timer_ms: None,
                origin,
                upstream: None,
                refused: None,
                idle: false,
                push: None,
            })),
        }
    }

    /// The new generation's service cannot read the state's version: the connection
    /// goes back (`Refused`, naming its origin and why) on the very socket it came
    /// on, untouched; a version it reads is resumed and served, input carried.
    #[test]
    fn a_state_the_service_cannot_read_goes_back_to_its_origin() {
        let kit = echo_worker();
        let (master, addr) = (&kit.master, kit.addr);

        let (mut refused_client, fd) = client_and_server_socket();
        let msg = ToWorker::Adopt {
            conns: vec![moved(addr, 99, 4242)],
        };
        master.send_fds(&msg, &[fd.as_fd()]).unwrap();
        drop(fd);
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Refused { .. }));
        let ToMaster::Refused { conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        let back = conns[0].moved.as_ref().unwrap();
        assert_eq!(back.origin, 4242);
        assert_eq!(back.input, b"carried ");
        let why = back.refused.as_deref().unwrap_or("");
        assert!(why.contains("99"), "{why}");
        crate::os::fd::write(fds[0].as_fd(), b"still yours").unwrap();
        let mut got = [0u8; 11];
        refused_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still yours");

        let (mut c, fd) = client_and_server_socket();
        let msg = ToWorker::Adopt {
            conns: vec![moved(addr, 1, 4242)],
        };
        master.send_fds(&msg, &[fd.as_fd()]).unwrap();
        drop(fd);
        // The carried input reaches the handler first, then the new bytes.
        c.write_all(b"bytes\n").unwrap();
        let mut got = vec![0u8; 14];
        c.read_exact(&mut got).expect("the echo");
        assert_eq!(got, b"carried bytes\n");
        round_trip(&mut c, b"and more\n");
        // Its origin is told it will not come back (the refused one was not).
        let (m, _) = kit.next(&|m| matches!(m, ToMaster::Settled { .. }));
        assert_eq!(
            m,
            ToMaster::Settled {
                origins: vec![(4242, 1)]
            }
        );
    }

    /// A worker that handed over a suspended connection does not exit while the new
    /// generation may still refuse it (the refusal would find nobody to serve it): it
    /// stays, beating, until the master says the connection was taken for good.
    #[test]
    fn the_origin_stays_until_what_it_handed_over_is_settled() {
        let kit = Kit::start(
            "echo",
            "[worker]\nblocking_threads = 1\nheartbeat_interval = \"100ms\"",
            "",
        );
        let (master, done, addr) = (&kit.master, &kit.done, kit.addr);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        round_trip(&mut c, b"before\n");

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        assert!(conns[0].moved.is_some(), "echo suspends");
        // Beats after its hand-over was read: its loop ran with no connection left,
        // and it stayed.
        for _ in 0..3 {
            kit.next(&|m| matches!(m, ToMaster::Heartbeat(_)));
        }
        assert!(
            done.try_recv().is_err(),
            "the worker exited while its connection could still be refused"
        );
        master.send(&ToWorker::Settled { n: 1 }).unwrap();
        assert_eq!(kit.exit_code(), 0, "once its connection was settled");
        drop(fds);
    }

    /// The origin's side: a connection it suspended comes back refused; it resumes it
    /// with its own service, serves it to the end without offering it again, and exits
    /// once the client leaves.
    #[test]
    fn a_refused_connection_is_served_to_the_end_by_its_origin() {
        let kit = echo_worker();
        let (master, done, addr) = (&kit.master, &kit.done, kit.addr);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        round_trip(&mut c, b"before\n");

        master
            .send(&ToWorker::Drain {
                idle: IdlePolicy::Handoff,
            })
            .unwrap();
        let (m, fds) = kit.next(&|m| matches!(m, ToMaster::Handoff { .. }));
        let ToMaster::Handoff { mut conns } = m else {
            unreachable!()
        };
        assert_eq!((conns.len(), fds.len()), (1, 1));
        let m = conns[0].moved.as_mut().expect("echo suspends");
        assert_eq!(m.origin, std::process::id());
        m.refused = Some("test: the new generation refused it".into());
        let back = ToWorker::Keep {
            conns,
            reason: "refused".into(),
        };
        master.send_fds(&back, &[fds[0].as_fd()]).unwrap();
        drop(fds);

        for i in 0..20 {
            round_trip(&mut c, format!("after {i}\n").as_bytes());
        }
        // Each of those exchanges ended at a quiescent point: none was offered again.
        std::thread::sleep(Duration::from_millis(200));
        while let Some((m, _)) = master.recv_fds::<ToMaster>().unwrap() {
            assert!(
                !matches!(m, ToMaster::Handoff { .. }),
                "a pinned connection was handed over again: {m:?}"
            );
        }
        assert!(done.try_recv().is_err(), "the worker exited with a client");
        drop(c);
        let code = done
            .recv_timeout(Duration::from_secs(30))
            .expect("the worker did not exit once its last client left");
        assert_eq!(code, 0);
    }
}
