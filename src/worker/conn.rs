//! One client connection and the slab that holds them.
//!
//! A token is the slab index plus a generation: an event still queued for a closed
//! connection whose slot was reused in the same epoll batch finds a different
//! generation and is ignored instead of reaching the wrong client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::channel::Stats;
use crate::os::epoll::Interest;
use crate::os::fd;
use crate::service::{Handler, Io, Job, Suspended};

/// Identifies a connection: low 32 bits slab index, bits 32–60 generation; bit 61
/// marks the connection's upstream side, bits 62 and 63 listener and control tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    fn new(index: usize, gen: u32) -> Token {
        Token((u64::from(gen & GEN_MASK) << 32) | index as u64)
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        ((self.0 >> 32) as u32) & GEN_MASK
    }

    /// The token under which the connection's upstream fd is registered.
    pub fn upstream(self) -> u64 {
        self.0 | UPSTREAM_BIT
    }
}

const GEN_MASK: u32 = 0x1fff_ffff;
/// Output buffers larger than this are freed rather than kept for reuse: a burst to
/// one client must not leave the worker holding its peak memory.
pub const POOLED_CAPACITY: usize = 64 << 10;
/// Marks epoll events of a connection's upstream socket.
pub const UPSTREAM_BIT: u64 = 1 << 61;

/// A token bucket for one client's reads: `rate` bytes per second, at most `burst`
/// saved up. Boxed in the connection only when a rate is configured, so unlimited
/// connections pay 8 bytes for it.
pub struct Bucket {
    tokens: u64,
    last: Instant,
    rate: u64,
    burst: u64,
}

impl Bucket {
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_nanos().saturating_mul(u128::from(self.rate)) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.burst);
            // Advance by exactly the time the added tokens represent, so fractions
            // of a byte are not lost at low rates.
            self.last += Duration::from_nanos(
                (u128::from(add) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64,
            );
            if self.tokens == self.burst {
                self.last = now;
            }
        }
    }

    /// Bytes that may be read now.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens
    }

    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    /// When an exhausted bucket is worth reading from again: once 100 ms worth of
    /// tokens (or the whole burst, if smaller) have accumulated — the seeds' 100 ms
    /// re-admission timer, without polling in between.
    pub fn readmit_at(&self, now: Instant) -> Instant {
        // At most half the burst: a timer that fires a little late then finds the
        // bucket not yet full, so no token is lost to the cap (re-admitting at exactly
        // a full burst of 100 ms lost ~2.5 % of the rate to timer lateness).
        let want = (self.rate / 10).min(self.burst / 2).max(1);
        let missing = want.saturating_sub(self.tokens);
        let wait = Duration::from_nanos(
            (u128::from(missing) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64,
        );
        now + wait.max(Duration::from_millis(1))
    }
}

/// A kernel pipe carrying one direction of a spliced connection.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe.
    len: usize,
    /// The last splice into it could not take more: stop reading until it drains.
    full: bool,
}

/// Room in a pipe: Linux's default pipe capacity (16 pages).
const PIPE_CAP: usize = 64 << 10;

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (r, w) = fd::pipe().map_err(|e| e.io())?;
        Ok(Pipe {
            r,
            w,
            len: 0,
            full: false,
        })
    }

    /// Moves bytes from socket `from` into the pipe, within `budget`. Returns (bytes,
    /// end of file). A socket with nothing to read ends with `may_read = false`; a
    /// pipe that cannot take more sets `full` instead (reading resumes once it drains,
    /// so no readable edge is lost).
    fn fill(
        &mut self,
        from: std::os::fd::BorrowedFd<'_>,
        budget: &mut usize,
        may_read: &mut bool,
    ) -> io::Result<(usize, bool)> {
        let mut moved = 0;
        while *may_read && !self.full && *budget > 0 && self.len < PIPE_CAP {
            match fd::splice(from, self.w.as_fd(), (*budget).min(PIPE_CAP - self.len)) {
                Ok(0) => return Ok((moved, true)),
                Ok(n) => {
                    self.len += n;
                    moved += n;
                    *budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // EAGAIN into an empty pipe means the socket is empty; with bytes
                    // in the pipe it may as well be the pipe that is out of buffers.
                    if self.len == 0 {
                        *may_read = false;
                    } else {
                        self.full = true;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if self.len >= PIPE_CAP {
            self.full = true;
        }
        Ok((moved, false))
    }

    /// Moves bytes from the pipe to socket `to`; returns bytes moved.
    fn drain(&mut self, to: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
        let mut moved = 0;
        while self.len > 0 {
            match fd::splice(self.r.as_fd(), to, self.len) {
                Ok(0) => break,
                Ok(n) => {
                    self.len -= n;
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 {
            self.full = false;
        }
        Ok(moved)
    }
}

/// Both directions of a spliced connection.
pub struct Pipes {
    c2u: Pipe,
    u2c: Pipe,
}

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes {
            c2u: Pipe::new()?,
            u2c: Pipe::new()?,
        })
    }
}

/// The upstream side of a proxied connection.
pub struct Upstream {
    pub fd: OwnedFd,
    /// Which upstream (index in the service's list), and every one tried so far.
    pub index: usize,
    /// Its address, for log lines.
    pub addr: SocketAddr,
    pub tried: Vec<usize>,
    pub connected: bool,
    /// Bumped per attempt, so a connect timer for an earlier attempt is ignored.
    pub attempt: u32,
    /// Client bytes not yet sent upstream: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    pub may_read: bool,
    /// As `Conn::peer_hup`, for the upstream socket.
    pub peer_hup: bool,
    /// The upstream sent FIN.
    read_closed: bool,
    /// We sent FIN upstream (the client half-closed).
    write_shut: bool,
    /// Not read while the client's output is above the high water mark.
    backpressured: bool,
    /// The client is not read while its bytes wait here above the high water mark.
    backpressured_client: bool,
    pub registered: Interest,
    /// Zero-copy forwarding, once connected, when the listener asks for it.
    pub pipes: Option<Box<Pipes>>,
}

impl Upstream {
    pub fn new(
        fd: OwnedFd,
        index: usize,
        addr: SocketAddr,
        tried: Vec<usize>,
        attempt: u32,
    ) -> Upstream {
        Upstream {
            fd,
            index,
            addr,
            tried,
            connected: false,
            attempt,
            out: Vec::new(),
            out_pos: 0,
            may_read: false,
            peer_hup: false,
            read_closed: false,
            write_shut: false,
            backpressured: false,
            backpressured_client: false,
            pipes: None,
            registered: Interest {
                write: true,
                edge: true,
                ..Interest::READ
            },
        }
    }

    /// An established upstream connection that moved here with its client.
    pub fn moved(fd: OwnedFd, index: usize, addr: SocketAddr) -> Upstream {
        let mut up = Upstream::new(fd, index, addr, vec![index], 1);
        up.connected = true;
        up.may_read = true;
        up.registered = up.interest();
        up
    }

    /// Neither direction holds a byte here, and no half-close is under way: the pair
    /// can move. Pipe fills are read from the kernel (FIONREAD), not only from our
    /// counts, so a byte a splice left behind is never stranded.
    fn quiescent(&self) -> bool {
        let pipes_empty = self.pipes.as_ref().is_none_or(|p| {
            [&p.c2u, &p.u2c]
                .iter()
                .all(|pipe| pipe.len == 0 && fd::readable_bytes(pipe.r.as_fd()).ok() == Some(0))
        });
        self.connected
            && self.out.len() == self.out_pos
            && pipes_empty
            && !self.read_closed
            && !self.write_shut
    }

    /// Client bytes not yet delivered upstream, in user space or in the pipe.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos + self.pipes.as_ref().map_or(0, |p| p.c2u.len)
    }

    /// Upstream bytes not yet delivered to the client that sit in the pipe.
    fn piped_to_client(&self) -> usize {
        self.pipes.as_ref().map_or(0, |p| p.u2c.len)
    }

    /// Epoll interest: the connect's completion, then reads unless paused and writes
    /// only while client bytes wait.
    pub fn interest(&self) -> Interest {
        Interest {
            read: !self.read_closed
                && !self.backpressured
                && !self.pipes.as_ref().is_some_and(|p| p.u2c.full),
            write: !self.connected || self.pending() > 0,
            edge: true,
            exclusive: false,
        }
    }

    /// Carries pending client bytes over to a new attempt.
    pub fn take_pending(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.out);
        v.drain(..self.out_pos);
        self.out_pos = 0;
        v
    }

    pub fn set_pending(&mut self, v: Vec<u8>) {
        self.out = v;
        self.out_pos = 0;
    }
}

pub struct Conn {
    pub fd: OwnedFd,
    pub peer: Option<IpAddr>,
    handler: Box<dyn Handler>,
    /// Output not yet sent: `out[out_pos..]`. Empty (no allocation) while idle.
    out: Vec<u8>,
    out_pos: usize,
    /// Input the handler has not consumed yet. Empty (no allocation) while idle.
    inbuf: Vec<u8>,
    pub last_active: Instant,
    /// What epoll currently watches for.
    pub registered: Interest,
    /// Edge-triggered: readable edge seen and not yet drained (to EAGAIN, or by a
    /// short read, see `peer_hup`).
    pub may_read: bool,
    /// epoll reported the client's FIN or an error. Until then a read that returns
    /// less than it asked for proves the socket drained (the next byte brings a new
    /// edge), which saves the EAGAIN read per round trip; after it, the EOF is
    /// already there and brings no new edge, so reading goes on until it is seen.
    pub peer_hup: bool,
    /// The client sent FIN.
    read_closed: bool,
    /// Close once output is flushed and no blocking job is outstanding.
    close: bool,
    /// Blocking jobs submitted for this connection whose completion has not been
    /// delivered: their results may still write output the client is owed.
    jobs_pending: u32,
    /// Reading is suspended until output falls under the low water mark.
    backpressured: bool,
    /// Per-client rate limit, if one is configured.
    pub bucket: Option<Box<Bucket>>,
    /// The rate limit ran out: not read from until the throttle timer re-admits it.
    pub throttled: bool,
    /// A throttle timer is pending for this connection.
    pub throttle_armed: bool,
    /// Counted in the worker's per-IP connection table.
    pub counted_ip: bool,
    /// Which listener accepted it (index in the config).
    pub listener: u16,
    /// The handler asked for `on_timer` at this instant.
    pub timer_at: Option<Instant>,
    /// The earliest handler-timer entry already in the worker's heap.
    pub timer_queued: Option<Instant>,
    /// The handler asked for a half-close once output is flushed.
    shutdown_write: bool,
    write_shut: bool,
    /// For a proxied connection: the upstream side.
    pub upstream: Option<Box<Upstream>>,
    /// The real client when it is not the socket's peer (a PROXY header named it).
    pub origin: Option<SocketAddr>,
    /// `accept_proxy`: the PROXY header has not been read yet; the handler is a
    /// placeholder until it has.
    pub awaiting_header: bool,
    /// `log_connections`: what the line at close will say.
    pub log: Option<Box<super::connlog::Record>>,
    /// Stays in this worker whatever happens (the new generation refused it).
    pub pinned: bool,
}

/// How a connection leaves a draining worker.
pub enum Leaving {
    /// Idle, with nothing to carry (`Handler::is_idle`, today's hand-over).
    Idle,
    /// Suspended by its handler, with the input it left unconsumed.
    Suspended(Suspended, Vec<u8>),
}

/// What the loop lends a connection while it works on it.
pub struct Env<'a> {
    /// The worker's one read buffer, shared by all connections.
    pub scratch: &'a mut [u8],
    /// Bytes this connection may still read in this loop iteration.
    pub budget: usize,
    pub high: usize,
    pub low: usize,
    pub inbuf_limit: usize,
    pub pool: &'a mut Vec<Vec<u8>>,
    pub stats: &'a mut Stats,
    pub draining: bool,
    /// Blocking jobs the handler submitted; the loop sends them to the pool.
    pub jobs: &'a mut Vec<Job>,
}

/// What `pump` decided.
pub enum Outcome {
    /// Keep the connection; `active` if any byte moved.
    Open { active: bool },
    /// Close it, with a reason worth a debug line.
    Close(Option<String>),
}

impl Conn {
    pub fn new(
        fd: OwnedFd,
        peer: Option<IpAddr>,
        handler: Box<dyn Handler>,
        bucket: Option<Box<Bucket>>,
        now: Instant,
    ) -> Conn {
        Conn {
            fd,
            peer,
            handler,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            last_active: now,
            registered: Interest {
                edge: true,
                ..Interest::READ
            },
            may_read: true,
            peer_hup: false,
            read_closed: false,
            close: false,
            jobs_pending: 0,
            backpressured: false,
            bucket,
            throttled: false,
            throttle_armed: false,
            counted_ip: false,
            listener: 0,
            timer_at: None,
            timer_queued: None,
            shutdown_write: false,
            write_shut: false,
            upstream: None,
            origin: None,
            awaiting_header: false,
            log: None,
            pinned: false,
        }
    }

    /// The service's handler, once a PROXY header told who the client is.
    pub fn set_handler(&mut self, handler: Box<dyn Handler>) {
        self.handler = handler;
    }

    /// The client sent FIN.
    pub fn client_eof(&self) -> bool {
        self.read_closed
    }

    /// The upstream sent FIN.
    pub fn upstream_eof(&self) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.read_closed)
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos + self.upstream.as_ref().map_or(0, |u| u.piped_to_client())
    }

    /// Reading is possible and allowed now.
    pub fn wants_read(&self) -> bool {
        self.may_read
            && !self.read_closed
            && !self.backpressured
            && !self.close
            && !self.throttled
            && !self.client_paused()
    }

    /// Bytes may be waiting on either side and reading them is allowed: the loop
    /// must come back to this connection even if no new edge arrives.
    pub fn more_to_read(&self) -> bool {
        self.wants_read()
            || self.upstream.as_ref().is_some_and(|u| {
                u.connected
                    && u.may_read
                    && !u.read_closed
                    && !u.backpressured
                    && !u.pipes.as_ref().is_some_and(|p| p.u2c.full)
            })
    }

    /// A proxied client is not read while its bytes wait for the upstream beyond
    /// the high water mark (`Upstream::backpressured` is the mirror image).
    fn client_paused(&self) -> bool {
        self.upstream
            .as_ref()
            .is_some_and(|u| u.backpressured_client || u.pipes.as_ref().is_some_and(|p| p.c2u.full))
    }

    /// Closing now loses nothing.
    pub fn idle_closable(&self) -> bool {
        self.pending() == 0
            && self.jobs_pending == 0
            && self.inbuf.is_empty()
            && self.handler.is_idle()
    }

    /// At a quiescent point (everything queued sent, no job outstanding, no close or
    /// half-close under way, a proxy's both directions empty), asks the handler
    /// whether the connection can move, and with what. None: not now. Without
    /// `may_suspend` (the listener says `suspend = false`) only an idle connection
    /// leaves, with nothing to carry.
    pub fn suspend(&mut self, may_suspend: bool) -> Option<Leaving> {
        let quiet = !self.pinned
            && self.out.len() == self.out_pos
            && self.jobs_pending == 0
            && !self.close
            && !self.shutdown_write
            && !self.read_closed
            && !self.write_shut
            && self.upstream.as_ref().is_none_or(|u| u.quiescent());
        if !quiet {
            return None;
        }
        if !may_suspend {
            return (self.upstream.is_none() && self.idle_closable()).then_some(Leaving::Idle);
        }
        match self.handler.suspend() {
            Some(s) if s.state.len() + self.inbuf.len() <= crate::channel::MAX_MOVED_BYTES => {
                Some(Leaving::Suspended(s, std::mem::take(&mut self.inbuf)))
            }
            // Too big to travel now: the handler keeps serving, and is asked again.
            Some(_) => None,
            None if self.upstream.is_none() && self.idle_closable() => Some(Leaving::Idle),
            None => None,
        }
    }

    /// Input a suspended handler had left unconsumed: the new handler sees it first.
    pub fn carry_input(&mut self, input: Vec<u8>) {
        self.inbuf = input;
    }

    /// A blocking job of this connection finished (its result is about to be
    /// delivered, or was lost to a panic).
    pub fn job_done(&mut self) {
        self.jobs_pending = self.jobs_pending.saturating_sub(1);
    }

    /// The epoll interest this connection needs: read unless paused, write only while
    /// output is pending.
    pub fn interest(&self) -> Interest {
        Interest {
            read: !self.read_closed
                && !self.backpressured
                && !self.close
                && !self.throttled
                && !self.client_paused(),
            write: self.pending() > 0,
            edge: true,
            exclusive: false,
        }
    }

    /// Moves bytes: read within the budget and the water marks, hand them to the
    /// handler, write what it queued. Loops while a flush makes room for more reading.
    pub fn pump(&mut self, env: &mut Env<'_>) -> Outcome {
        let mut active = false;
        loop {
            while self.wants_read() && env.budget > 0 {
                let Some(asked) = self.allowance(env.budget.min(env.scratch.len())) else {
                    break;
                };
                match crate::os::sockio::recv(self.fd.as_fd(), &mut env.scratch[..asked]) {
                    Ok(0) => {
                        self.read_closed = true;
                        self.with_io(env, |h, io| h.on_eof(io));
                    }
                    Ok(n) => {
                        active = true;
                        if n < asked && !self.peer_hup {
                            self.may_read = false;
                        }
                        env.budget -= n;
                        self.charge(n);
                        env.stats.bytes_in += n as u64;
                        self.feed(n, env);
                        if self.inbuf.len() > env.inbuf_limit {
                            return Outcome::Close(Some(format!(
                                "the service left more than {} bytes unconsumed",
                                env.inbuf_limit
                            )));
                        }
                        if self.pending() >= env.high {
                            self.backpressured = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.may_read = false,
                    Err(e) => return Outcome::Close(Some(format!("read failed: {e}"))),
                }
            }
            match self.flush(env.stats) {
                Ok(sent) => active |= sent > 0,
                Err(e) => return Outcome::Close(Some(format!("write failed: {e}"))),
            }
            if self.pending() == 0 {
                self.release_out(env.pool);
                if self.shutdown_write && !self.write_shut {
                    // The handler's half-close: FIN to the client, reading goes on.
                    self.write_shut = true;
                    let _ = socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write);
                }
            }
            if self.backpressured && self.pending() <= env.low {
                // Output drained: read again. The readable edge may have been consumed
                // while we were not reading, so try rather than wait for a new one.
                self.backpressured = false;
                self.may_read = true;
                self.with_io(env, |h, io| h.on_resume(io));
                if env.budget > 0 {
                    continue;
                }
            }
            break;
        }
        // A close (the handler's, or the default one after EOF) waits for what the
        // connection still owes: queued output, and blocking jobs whose results may
        // write more.
        if self.close && self.pending() == 0 && self.jobs_pending == 0 {
            return Outcome::Close(None);
        }
        Outcome::Open { active }
    }

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

    /// How many of `want` bytes the rate limit lets us read now; None (and the
    /// connection throttled) when it allows none.
    fn allowance(&mut self, want: usize) -> Option<usize> {
        let Some(b) = &mut self.bucket else {
            return Some(want);
        };
        let allowed = b.available(Instant::now());
        if allowed == 0 {
            self.throttled = true;
            return None;
        }
        Some(want.min(allowed.min(usize::MAX as u64) as usize))
    }

    /// Takes `n` read bytes out of the rate limit's bucket.
    fn charge(&mut self, n: usize) {
        if let Some(b) = &mut self.bucket {
            b.take(n as u64);
        }
    }

    /// Output space comes from the pool only when a handler is about to write.
    fn take_out_buf(&mut self, pool: &mut Vec<Vec<u8>>) {
        if self.out.capacity() == 0 {
            if let Some(buf) = pool.pop() {
                self.out = buf;
            }
        }
    }

    /// Runs a handler callback with its `Io`.
    pub fn with_io<R>(
        &mut self,
        env: &mut Env<'_>,
        f: impl FnOnce(&mut dyn Handler, &mut Io<'_>) -> R,
    ) -> R {
        self.take_out_buf(env.pool);
        let jobs_before = env.jobs.len();
        let mut io = Io {
            out: &mut self.out,
            close: &mut self.close,
            shutdown_write: &mut self.shutdown_write,
            timer: &mut self.timer_at,
            jobs: env.jobs,
            peer: self.peer,
            draining: env.draining,
            held: self.backpressured,
        };
        let r = f(self.handler.as_mut(), &mut io);
        self.count_jobs(env.jobs.len(), jobs_before);
        r
    }

    fn count_jobs(&mut self, now: usize, before: usize) {
        let added = u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX);
        self.jobs_pending = self.jobs_pending.saturating_add(added);
    }

    /// Hands the `n` new bytes in the scratch buffer to the handler, after whatever it
    /// left unconsumed before.
    fn feed(&mut self, n: usize, env: &mut Env<'_>) {
        self.take_out_buf(env.pool);
        let jobs_before = env.jobs.len();
        let mut io = Io {
            out: &mut self.out,
            close: &mut self.close,
            shutdown_write: &mut self.shutdown_write,
            timer: &mut self.timer_at,
            jobs: env.jobs,
            peer: self.peer,
            draining: env.draining,
            held: self.backpressured,
        };
        let data = &env.scratch[..n];
        if self.inbuf.is_empty() {
            let used = self.handler.on_data(&mut io, data).min(data.len());
            if used < data.len() {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            self.inbuf.extend_from_slice(data);
            let used = self
                .handler
                .on_data(&mut io, &self.inbuf)
                .min(self.inbuf.len());
            self.inbuf.drain(..used);
            if self.inbuf.is_empty() {
                self.inbuf = Vec::new();
            }
        }
        self.count_jobs(env.jobs.len(), jobs_before);
    }

    /// Sends pending output until the socket would block; returns bytes sent.
    fn flush(&mut self, stats: &mut Stats) -> io::Result<usize> {
        let sent = send_pending(self.fd.as_fd(), &self.out, &mut self.out_pos)?;
        stats.bytes_out += sent as u64;
        Ok(sent)
    }

    /// Returns an empty output buffer to the pool, so idle connections hold none.
    fn release_out(&mut self, pool: &mut Vec<Vec<u8>>) {
        self.out_pos = 0;
        if self.out.capacity() > 0 {
            let mut buf = std::mem::take(&mut self.out);
            buf.clear();
            if buf.capacity() <= POOLED_CAPACITY {
                pool.push(buf);
            }
        }
    }

    /// When to re-admit a throttled connection.
    pub fn readmit_at(&self, now: Instant) -> Instant {
        match &self.bucket {
            Some(b) => b.readmit_at(now),
            None => now,
        }
    }

    /// Gives the connection's buffer back to the pool as it closes.
    pub fn recycle(mut self, pool: &mut Vec<Vec<u8>>) {
        self.release_out(pool);
    }

    /// `recycle`, handing the sockets (the client's, and a proxy's upstream) to the
    /// caller instead of closing them (a hand-over sends them on).
    pub fn into_fds(mut self, pool: &mut Vec<Vec<u8>>) -> (OwnedFd, Option<OwnedFd>) {
        self.release_out(pool);
        (self.fd, self.upstream.map(|u| u.fd))
    }
}

/// Sends `buf[*pos..]` until the socket would block; returns bytes sent.
fn send_pending(fd: std::os::fd::BorrowedFd<'_>, buf: &[u8], pos: &mut usize) -> io::Result<usize> {
    let mut sent = 0;
    while *pos < buf.len() {
        match fd::send(fd, &buf[*pos..]) {
            Ok(n) => {
                *pos += n;
                sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// The worker's connections, addressed by token.
#[derive(Default)]
pub struct Slab {
    slots: Vec<Slot>,
    free: Vec<usize>,
    len: usize,
    /// Generation of slots created anew: above every generation a slot dropped by
    /// `shrink` ever had, so a stale token of a dropped slot never matches its successor.
    gen_floor: u32,
}

impl Slab {
    pub fn insert(&mut self, conn: Conn) -> Token {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let slot = &mut self.slots[i];
            slot.gen = slot.gen.wrapping_add(1);
            slot.conn = Some(conn);
            return Token::new(i, slot.gen);
        }
        let gen = self.gen_floor;
        self.slots.push(Slot {
            gen,
            conn: Some(conn),
        });
        Token::new(self.slots.len() - 1, gen)
    }

    /// Drops the free slots at the end of the table and gives back the capacity the
    /// table no longer needs, so a worker that once held 100k connections does not
    /// keep their table. Slots in use never move (tokens stay valid).
    pub fn shrink(&mut self) {
        while self.slots.last().is_some_and(|s| s.conn.is_none()) {
            if let Some(s) = self.slots.pop() {
                self.gen_floor = self.gen_floor.max(s.gen.wrapping_add(1) & GEN_MASK);
            }
        }
        let n = self.slots.len();
        self.free.retain(|&i| i < n);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Slots allocated (in use, free, or spare capacity), for the trim decision.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn get(&self, t: Token) -> Option<&Conn> {
        self.slots
            .get(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())
            .and_then(|s| s.conn.as_ref())
    }

    pub fn get_mut(&mut self, t: Token) -> Option<&mut Conn> {
        self.slots
            .get_mut(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())
            .and_then(|s| s.conn.as_mut())
    }

    pub fn remove(&mut self, t: Token) -> Option<Conn> {
        let slot = self
            .slots
            .get_mut(t.index())
            .filter(|s| s.gen & GEN_MASK == t.gen())?;
        let conn = slot.conn.take()?;
        self.free.push(t.index());
        self.len -= 1;
        Some(conn)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens of every open connection (a snapshot, so the caller may close some).
    pub fn tokens(&self) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| Token::new(i, s.gen))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_holds_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 200, t0);
        assert_eq!(b.available(t0), 200);
        b.take(200);
        assert_eq!(b.available(t0), 0);
        // 100 ms at 1000 B/s = 100 bytes.
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 100);
        // Never more than the burst, however long it waits.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 200);
        b.take(200);
        let at = b.readmit_at(t0 + Duration::from_secs(60));
        assert_eq!(
            at,
            t0 + Duration::from_secs(60) + Duration::from_millis(100)
        );
    }

    #[test]
    fn bucket_keeps_fractions_at_low_rates() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 10, t0);
        b.take(10);
        let mut got = 0;
        for ms in (0..=3000).step_by(10) {
            let a = b.available(t0 + Duration::from_millis(ms));
            b.take(a);
            got += a;
        }
        assert_eq!(got, 9);
    }
}
