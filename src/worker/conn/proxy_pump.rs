//! The proxy pump: moves a proxied connection's bytes between client and upstream.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::os::{fd, sockio, stream};

use super::{send_pending, Conn, Env, Flags, Outcome, Pipes, Upstream, POOLED_CAPACITY};

impl Conn {
    /// A proxied connection: moves bytes both ways between the client and its
    /// upstream, each direction bounded by the water marks of the other side, and
    /// forwards half-closes (FIN) each way once the bytes before them are through.
    pub fn pump_proxy(&mut self, env: &mut Env<'_>) -> Outcome {
        let Some(mut up) = self.take_upstream() else {
            return self.pump(env);
        };
        let outcome = self.proxy_both_ways(&mut up, env);
        self.set_upstream(Some(up));
        outcome
    }

    fn proxy_both_ways(&mut self, up: &mut Upstream, env: &mut Env<'_>) -> Outcome {
        let mut active = false;
        let full_budget = env.budget;
        // A few passes: a flush on one side can unblock reading on the other.
        for _ in 0..4 {
            let mut progress = false;
            if up.flags.has(Flags::CONNECTED)
                && up.out.len() == up.out_pos
                && self.out.len() == self.out_pos
            {
                if let Some(p) = up.pipes.as_mut() {
                    match self.splice_both_ways(p, &up.fd, &mut up.flags, env) {
                        Ok(moved) => {
                            progress |= moved;
                            active |= moved;
                        }
                        Err(e) => return Outcome::Close(Some(format!("splice failed: {e}"))),
                    }
                    if self.flags.has(Flags::READ_CLOSED)
                        && p.c2u.len == 0
                        && !up.flags.has(Flags::WRITE_SHUT)
                    {
                        up.flags.set(Flags::WRITE_SHUT, true);
                        let _ = stream::shutdown_write(&up.fd);
                    }
                    if up.flags.has(Flags::READ_CLOSED)
                        && p.u2c.len == 0
                        && !self.flags.has(Flags::WRITE_SHUT)
                    {
                        self.flags.set(Flags::WRITE_SHUT, true);
                        let _ = stream::shutdown_write(&self.fd);
                    }
                    if !progress {
                        break;
                    }
                    continue;
                }
            }
            // Reads come in whole segments of the socket they go to, so that sends
            // do too (`whole_segments`); once less than a segment of the budget is
            // left, this direction waits for the next turn rather than read a sliver.
            let (seg_up, seg_client) = if up.flags.has(Flags::CONNECTED) {
                up.segments(self.fd.as_fd())
            } else {
                (1, 1)
            };
            let quantum = full_budget.min(env.scratch.len());
            let floor_up = if quantum >= seg_up { seg_up } else { 1 };
            let floor_client = if quantum >= seg_client { seg_client } else { 1 };
            // client -> upstream
            while self.flags.has(Flags::MAY_READ)
                && !self.flags.has(Flags::READ_CLOSED)
                && !up.flags.has(Flags::BACKPRESSURED_CLIENT)
                && !self.flags.has(Flags::THROTTLED)
                && env.budget >= floor_up
            {
                let want = whole_segments(env.budget.min(env.scratch.len()), seg_up);
                let Some(asked) = self.allowance(want) else {
                    break;
                };
                match self.recv(&mut env.scratch[..asked], env.stats) {
                    Ok(0) => self.flags.set(Flags::READ_CLOSED, true),
                    Ok(n) => {
                        active = true;
                        progress = true;
                        if n < asked && !self.flags.has(Flags::PEER_HUP) && self.tls().is_none() {
                            self.flags.set(Flags::MAY_READ, false);
                        }
                        env.budget -= n;
                        self.charge(n);
                        env.stats.bytes_in += n as u64;
                        let data = &env.scratch[..n];
                        // Before the connect completes everything waits in the queue.
                        let direct = up.flags.has(Flags::CONNECTED) && up.pending() == 0;
                        let sent = if direct {
                            match send_now(up.fd.as_fd(), data) {
                                Ok(sent) => sent,
                                Err(e) => {
                                    return Outcome::Close(Some(format!(
                                        "upstream write failed: {e}"
                                    )))
                                }
                            }
                        } else {
                            0
                        };
                        if sent < n {
                            up.out.extend_from_slice(&data[sent..]);
                        }
                        if up.pending() >= env.high {
                            up.flags.set(Flags::BACKPRESSURED_CLIENT, true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.flags.set(Flags::MAY_READ, false)
                    }
                    Err(e) => return Outcome::Close(Some(format!("client read failed: {e}"))),
                }
            }
            if up.flags.has(Flags::CONNECTED) {
                // upstream -> client
                while up.flags.has(Flags::MAY_READ)
                    && !up.flags.has(Flags::READ_CLOSED)
                    && !up.flags.has(Flags::BACKPRESSURED)
                    && env.budget >= floor_client
                {
                    let asked = whole_segments(env.budget.min(env.scratch.len()), seg_client);
                    match sockio::recv(up.fd.as_fd(), &mut env.scratch[..asked]) {
                        Ok(0) => up.flags.set(Flags::READ_CLOSED, true),
                        Ok(n) => {
                            active = true;
                            progress = true;
                            if n < asked && !up.flags.has(Flags::PEER_HUP) {
                                up.flags.set(Flags::MAY_READ, false);
                            }
                            env.budget -= n;
                            let data = &env.scratch[..n];
                            // Nothing queued or piped may precede these bytes.
                            let sent =
                                if self.out.len() == self.out_pos && up.piped_to_client() == 0 {
                                    match self.send_now(data) {
                                        Ok(sent) => sent,
                                        Err(e) => {
                                            return Outcome::Close(Some(format!(
                                                "client write failed: {e}"
                                            )))
                                        }
                                    }
                                } else {
                                    0
                                };
                            env.stats.bytes_out += sent as u64;
                            if sent < n {
                                self.take_out_buf(env.pool);
                                self.out.extend_from_slice(&data[sent..]);
                            }
                            if self.pending() >= env.high {
                                up.flags.set(Flags::BACKPRESSURED, true);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            up.flags.set(Flags::MAY_READ, false)
                        }
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
                if up.flags.has(Flags::BACKPRESSURED_CLIENT) && up.pending() <= env.low {
                    up.flags.set(Flags::BACKPRESSURED_CLIENT, false);
                    self.flags.set(Flags::MAY_READ, true);
                    progress = true;
                }
                if self.flags.has(Flags::READ_CLOSED)
                    && up.pending() == 0
                    && !up.flags.has(Flags::WRITE_SHUT)
                {
                    up.flags.set(Flags::WRITE_SHUT, true);
                    let _ = stream::shutdown_write(&up.fd);
                }
            }
            match self.flush(env.stats) {
                Ok(sent) => progress |= sent > 0,
                Err(e) => return Outcome::Close(Some(format!("client write failed: {e}"))),
            }
            if self.pending() == 0 {
                self.release_out(env.pool);
            }
            if up.flags.has(Flags::BACKPRESSURED) && self.pending() <= env.low {
                up.flags.set(Flags::BACKPRESSURED, false);
                up.flags.set(Flags::MAY_READ, true);
                progress = true;
            }
            if up.flags.has(Flags::READ_CLOSED)
                && self.pending() == 0
                && !self.flags.has(Flags::WRITE_SHUT)
            {
                self.flags.set(Flags::WRITE_SHUT, true);
                if let Some((tls, fd)) = self.tls_on_fd() {
                    tls.close_notify(fd);
                }
                let _ = stream::shutdown_write(&self.fd);
            }
            if !progress {
                break;
            }
        }
        if self.flags.has(Flags::READ_CLOSED)
            && up.flags.has(Flags::READ_CLOSED)
            && self.pending() == 0
            && up.pending() == 0
        {
            return Outcome::Close(None);
        }
        Outcome::Open { active }
    }

    /// `send_now` to the client: straight to its socket, or through its TLS engine.
    fn send_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some((tls, fd)) = self.tls_on_fd() else {
            return send_now(self.fd.as_fd(), data);
        };
        let mut sent = 0;
        while sent < data.len() {
            match tls.send(fd, &data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// One pass of zero-copy forwarding: socket → pipe → socket, each way. Returns
    /// whether any byte moved.
    fn splice_both_ways(
        &mut self,
        p: &mut Pipes,
        up_fd: &OwnedFd,
        up_flags: &mut Flags,
        env: &mut Env<'_>,
    ) -> io::Result<bool> {
        let mut moved = false;
        if !self.flags.has(Flags::READ_CLOSED) {
            let (n, eof) = p
                .c2u
                .fill(self.fd.as_fd(), &mut env.budget, &mut self.flags)?;
            env.stats.bytes_in += n as u64;
            moved |= n > 0;
            self.flags.or(Flags::READ_CLOSED, eof);
        }
        moved |= p.c2u.drain(up_fd.as_fd())? > 0;
        if !up_flags.has(Flags::READ_CLOSED) {
            let (n, eof) = p.u2c.fill(up_fd.as_fd(), &mut env.budget, up_flags)?;
            moved |= n > 0;
            up_flags.or(Flags::READ_CLOSED, eof);
        }
        let n = p.u2c.drain(self.fd.as_fd())?;
        env.stats.bytes_out += n as u64;
        moved |= n > 0;
        Ok(moved)
    }
}

/// `quantum` rounded down to whole segments of `seg` bytes, when it holds one.
///
/// With `TCP_NODELAY` (the proxy's sockets have it) every send is pushed at once, so
/// a send of 64 KiB on loopback (MSS 65 483) leaves as a full segment and a 53-byte
/// one, and on Ethernet (MSS 1 448) as 45 full ones and a 376-byte one: each of
/// those tails is a packet that costs the sender and the receiver their whole
/// per-packet path (skb, transmit, softirq receive, ACK) for a few bytes. Reading
/// only whole segments' worth makes every full send whole segments; the bytes left
/// over wait in the socket for the next read. Measured on loopback under iperf3: 1.74
/// segments per 64 KiB send before, 1.0 after (docs/benchmarks.md §12).
fn whole_segments(quantum: usize, seg: usize) -> usize {
    if seg > 1 && quantum >= seg {
        quantum - quantum % seg
    } else {
        quantum
    }
}

/// Sends `data` straight from the read buffer, as far as the socket takes it now. The
/// pump calls it only when nothing is queued before these bytes, so order holds; what
/// is not taken is queued by the caller. Copying every byte into the queue first was
/// a third copy per byte (after the kernel's two) that nginx and HAProxy do not make:
/// a user-space `memmove` at 6 % of a worker's samples under iperf3.
fn send_now(dst: std::os::fd::BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        match fd::send(dst, &data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::whole_segments;

    #[test]
    fn reads_round_down_to_whole_segments_only_when_one_fits() {
        assert_eq!(whole_segments(65536, 65483), 65483);
        assert_eq!(whole_segments(65536, 1448), 45 * 1448);
        assert_eq!(whole_segments(1000, 1448), 1000);
        assert_eq!(whole_segments(65536, 1), 65536);
        assert_eq!(whole_segments(65536, 0), 65536);
    }
}
