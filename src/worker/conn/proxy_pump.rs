//! The proxy pump: moves a proxied connection's bytes between client and upstream.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::os::fd;

use super::{send_pending, Conn, Env, Outcome, Pipes, Upstream, POOLED_CAPACITY};

impl Conn {
    /// A proxied connection: moves bytes both ways between the client and its
    /// upstream, each direction bounded by the water marks of the other side, and
    /// forwards half-closes (FIN) each way once the bytes before them are through.
    pub fn pump_proxy(&mut self, env: &mut Env<'_>) -> Outcome {
        let Some(mut up) = self.upstream.take() else {
            return self.pump(env);
        };
        let outcome = self.proxy_both_ways(&mut up, env);
        self.upstream = Some(up);
        outcome
    }

    fn proxy_both_ways(&mut self, up: &mut Upstream, env: &mut Env<'_>) -> Outcome {
        let mut active = false;
        // A few passes: a flush on one side can unblock reading on the other.
        for _ in 0..4 {
            let mut progress = false;
            if up.connected && up.out.len() == up.out_pos && self.out.len() == self.out_pos {
                if let Some(p) = up.pipes.as_mut() {
                    match self.splice_both_ways(
                        p,
                        &up.fd,
                        &mut up.may_read,
                        &mut up.read_closed,
                        env,
                    ) {
                        Ok(moved) => {
                            progress |= moved;
                            active |= moved;
                        }
                        Err(e) => return Outcome::Close(Some(format!("splice failed: {e}"))),
                    }
                    if self.read_closed && p.c2u.len == 0 && !up.write_shut {
                        up.write_shut = true;
                        let _ = socket2::SockRef::from(&up.fd).shutdown(std::net::Shutdown::Write);
                    }
                    if up.read_closed && p.u2c.len == 0 && !self.write_shut {
                        self.write_shut = true;
                        let _ =
                            socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write);
                    }
                    if !progress {
                        break;
                    }
                    continue;
                }
            }
            // client -> upstream
            while self.may_read
                && !self.read_closed
                && !up.backpressured_client
                && !self.throttled
                && env.budget > 0
            {
                let Some(asked) = self.allowance(env.budget.min(env.scratch.len())) else {
                    break;
                };
                match fd::read(self.fd.as_fd(), &mut env.scratch[..asked]) {
                    Ok(0) => self.read_closed = true,
                    Ok(n) => {
                        active = true;
                        progress = true;
                        if n < asked && !self.peer_hup {
                            self.may_read = false;
                        }
                        env.budget -= n;
                        self.charge(n);
                        env.stats.bytes_in += n as u64;
                        up.out.extend_from_slice(&env.scratch[..n]);
                        if up.pending() >= env.high {
                            up.backpressured_client = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.may_read = false,
                    Err(e) => return Outcome::Close(Some(format!("client read failed: {e}"))),
                }
            }
            if up.connected {
                // upstream -> client
                while up.may_read && !up.read_closed && !up.backpressured && env.budget > 0 {
                    let asked = env.budget.min(env.scratch.len());
                    match fd::read(up.fd.as_fd(), &mut env.scratch[..asked]) {
                        Ok(0) => up.read_closed = true,
                        Ok(n) => {
                            active = true;
                            progress = true;
                            if n < asked && !up.peer_hup {
                                up.may_read = false;
                            }
                            env.budget -= n;
                            self.take_out_buf(env.pool);
                            self.out.extend_from_slice(&env.scratch[..n]);
                            if self.pending() >= env.high {
                                up.backpressured = true;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.may_read = false,
                        Err(e) => {
                            return Outcome::Close(Some(format!("upstream read failed: {e}")))
                        }
                    }
                }
                match send_pending(up.fd.as_fd(), &up.out, &mut up.out_pos) {
                    Ok(sent) => progress |= sent > 0,
                    Err(e) => return Outcome::Close(Some(format!("upstream write failed: {e}"))),
                }
                if up.pending() == 0 {
                    up.out.clear();
                    up.out_pos = 0;
                    if up.out.capacity() > POOLED_CAPACITY {
                        up.out = Vec::new();
                    }
                }
                if up.backpressured_client && up.pending() <= env.low {
                    up.backpressured_client = false;
                    self.may_read = true;
                    progress = true;
                }
                if self.read_closed && up.pending() == 0 && !up.write_shut {
                    up.write_shut = true;
                    let _ = socket2::SockRef::from(&up.fd).shutdown(std::net::Shutdown::Write);
                }
            }
            match self.flush(env.stats) {
                Ok(sent) => progress |= sent > 0,
                Err(e) => return Outcome::Close(Some(format!("client write failed: {e}"))),
            }
            if self.pending() == 0 {
                self.release_out(env.pool);
            }
            if up.backpressured && self.pending() <= env.low {
                up.backpressured = false;
                up.may_read = true;
                progress = true;
            }
            if up.read_closed && self.pending() == 0 && !self.write_shut {
                self.write_shut = true;
                let _ = socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write);
            }
            if !progress {
                break;
            }
        }
        if self.read_closed && up.read_closed && self.pending() == 0 && up.pending() == 0 {
            return Outcome::Close(None);
        }
        Outcome::Open { active }
    }

    /// One pass of zero-copy forwarding: socket → pipe → socket, each way. Returns
    /// whether any byte moved.
    fn splice_both_ways(
        &mut self,
        p: &mut Pipes,
        up_fd: &OwnedFd,
        up_may_read: &mut bool,
        up_read_closed: &mut bool,
        env: &mut Env<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        if !self.read_closed {
            let (n, eof) = p
                .c2u
                .fill(self.fd.as_fd(), &mut env.budget, &mut self.may_read)?;
            env.stats.bytes_in += n as u64;
            moved |= n > 0;
            self.read_closed |= eof;
        }
        moved |= p.c2u.drain(up_fd.as_fd())? > 0;
        if !*up_read_closed {
            let (n, eof) = p.u2c.fill(up_fd.as_fd(), &mut env.budget, up_may_read)?;
            moved |= n > 0;
            *up_read_closed |= eof;
        }
        let n = p.u2c.drain(self.fd.as_fd())?;
        env.stats.bytes_out += n as u64;
        moved |= n > 0;
        Ok(moved)
    }
}
