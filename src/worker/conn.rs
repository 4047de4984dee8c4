//! One client connection: its socket, buffers and handler, and the pump that moves
//! its bytes within the loop's budgets and water marks.
//!
//! A proxied connection's upstream side, its splice pipes and the proxy pump live in
//! `conn/`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use crate::channel::Stats;
use crate::os::epoll::Interest;
use crate::os::{sockio, stream};
use crate::service::{Handler, Io, Job, Suspended};
use crate::tls::TlsMoved;

use super::bucket::Bucket;

mod flags;
mod proxy_pump;
mod rare;
mod splice;
mod upstream;

pub use flags::Flags;
use rare::Rare;
pub use splice::Pipes;
pub use upstream::Upstream;

/// Output buffers larger than this are freed rather than kept for reuse: a burst to
/// one client must not leave the worker holding its peak memory.
pub const POOLED_CAPACITY: usize = 64 << 10;

/// One client connection. Kept small (see the size test): a worker holds one per
/// open connection, most of them idle, so every field here is paid a million times;
/// what only some connections need (a proxy's upstream, a rate limit, a PROXY-header
/// origin, a handler timer, a connection log line) sits behind one pointer, `rare`.
pub struct Conn {
    pub fd: OwnedFd,
    /// Which listener accepted it (index in the config).
    pub listener: u16,
    /// The client socket's readiness, the loop's decisions about it, and what epoll
    /// currently watches it for (`registered`).
    pub flags: Flags,
    /// Blocking jobs submitted for this connection whose completion has not been
    /// delivered: their results may still write output the client is owed.
    jobs_pending: u32,
    /// Output not yet sent: `out[out_pos..]`. Empty (no allocation) while idle.
    out_pos: usize,
    out: Vec<u8>,
    /// Input the handler has not consumed yet. Empty (no allocation) while idle.
    inbuf: Vec<u8>,
    handler: Box<dyn Handler>,
    pub last_active: Instant,
    /// The rarely set rest, allocated only when one of them is.
    rare: Option<Box<Rare>>,
    pub peer: Option<IpAddr>,
    /// The peer's port, for `Io::peer` (0 when unknown).
    pub peer_port: u16,
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
    /// What the handler asked of other connections and topics (`service::push`).
    pub push: &'a mut crate::service::push::Outbox,
    /// This connection's token (its `Io::id`).
    pub token: u64,
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
            listener: 0,
            flags: Flags::new(Flags::MAY_READ | Flags::WATCH_READ),
            jobs_pending: 0,
            out_pos: 0,
            out: Vec::new(),
            inbuf: Vec::new(),
            handler,
            last_active: now,
            rare: bucket.map(Rare::with_bucket),
            peer,
            peer_port: 0,
        }
    }

    /// What epoll currently watches the client socket for.
    pub fn registered(&self) -> Interest {
        Interest {
            read: self.flags.has(Flags::WATCH_READ),
            write: self.flags.has(Flags::WATCH_WRITE),
            edge: true,
            exclusive: false,
        }
    }

    /// Notes what epoll now watches for (only read and write vary: `interest` is
    /// always edge-triggered and never exclusive).
    pub fn set_registered(&mut self, i: Interest) {
        debug_assert!(i.edge && !i.exclusive);
        self.flags.set(Flags::WATCH_READ, i.read);
        self.flags.set(Flags::WATCH_WRITE, i.write);
    }

    /// The service's handler, once a PROXY header told who the client is.
    pub fn set_handler(&mut self, handler: Box<dyn Handler>) {
        self.handler = handler;
    }

    /// The client sent FIN.
    pub fn client_eof(&self) -> bool {
        self.flags.has(Flags::READ_CLOSED)
    }

    /// The upstream sent FIN.
    pub fn upstream_eof(&self) -> bool {
        self.upstream()
            .is_some_and(|u| u.flags.has(Flags::READ_CLOSED))
    }

    /// Output queued for the client and not yet sent (for a write from elsewhere,
    /// which respects the high water mark).
    pub fn owed(&self) -> usize {
        self.pending()
    }

    #[inline]
    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
            + self.upstream().map_or(0, |u| u.piped_to_client())
            + self.tls().map_or(0, |t| usize::from(t.wants_write()))
    }

    /// Reading is possible and allowed now.
    pub fn wants_read(&self) -> bool {
        self.flags.has(Flags::MAY_READ) && self.read_allowed()
    }

    /// Nothing stops reading this client (whether there is anything to read or not):
    /// no FIN seen, not paused by its output or its upstream, not closing or
    /// throttled. One mask test on the common path, where no upstream exists.
    fn read_allowed(&self) -> bool {
        const STOP: u16 =
            Flags::READ_CLOSED | Flags::BACKPRESSURED | Flags::CLOSE | Flags::THROTTLED;
        if self.flags.any(STOP) {
            // A lingering close reads (and throws away) until the client's FIN.
            return self.lingering() && !self.flags.any(Flags::READ_CLOSED | Flags::THROTTLED);
        }
        !self.client_paused()
    }

    /// A close whose output is all sent while the client has not sent FIN: FIN to
    /// the client, then linger (see `lingering`). True if it started now. A handler
    /// that half-closed itself (`Io::shutdown_write`) read on until it closed, as
    /// the http service does: its close is not delayed again.
    fn start_lingering(&mut self) -> bool {
        if !self.flags.has(Flags::CLOSE)
            || self.flags.any(Flags::READ_CLOSED | Flags::SHUTDOWN_WRITE)
            || self.pending() > 0
            || self.jobs_pending > 0
            || self.lingering()
        {
            return false;
        }
        self.send_fin();
        self.set_lingering(Instant::now() + crate::service::LINGER);
        self.flags.set(Flags::MAY_READ, true);
        true
    }

    /// FIN to the client after everything queued (close_notify first on TLS).
    fn send_fin(&mut self) {
        self.flags.set(Flags::WRITE_SHUT, true);
        if let Some((tls, fd)) = self.tls_on_fd() {
            tls.close_notify(fd);
        }
        let _ = stream::shutdown_write(&self.fd);
    }

    /// Bytes may be waiting on either side and reading them is allowed: the loop
    /// must come back to this connection even if no new edge arrives.
    pub fn more_to_read(&self) -> bool {
        self.wants_read()
            || self.upstream().is_some_and(|u| {
                u.flags.has(Flags::CONNECTED)
                    && u.flags.has(Flags::MAY_READ)
                    && !u.flags.has(Flags::READ_CLOSED)
                    && !u.flags.has(Flags::BACKPRESSURED)
                    && !u.pipes.as_ref().is_some_and(|p| p.u2c.full)
            })
    }

    /// A proxied client is not read while its bytes wait for the upstream beyond
    /// the high water mark (`Upstream::backpressured` is the mirror image).
    fn client_paused(&self) -> bool {
        self.upstream().is_some_and(|u| {
            u.flags.has(Flags::BACKPRESSURED_CLIENT) || u.pipes.as_ref().is_some_and(|p| p.c2u.full)
        })
    }

    /// Closing now loses nothing.
    pub fn idle_closable(&self) -> bool {
        self.pending() == 0
            && self.jobs_pending == 0
            && self.inbuf.is_empty()
            && self.handler.is_idle()
    }

    /// At a quiescent point: everything queued sent, no job outstanding, no close or
    /// half-close under way, a proxy's both directions empty; and not pinned here.
    /// (Whether its service lets it go is `suspend`'s question.)
    pub fn may_move(&self) -> bool {
        !self.flags.has(Flags::PINNED)
            && self.out.len() == self.out_pos
            && self.jobs_pending == 0
            && !self.flags.has(Flags::CLOSE)
            && !self.flags.has(Flags::SHUTDOWN_WRITE)
            && !self.flags.has(Flags::READ_CLOSED)
            && !self.flags.has(Flags::WRITE_SHUT)
            && self.upstream().is_none_or(|u| u.quiescent())
    }

    /// At a quiescent point (`may_move`), asks the handler whether the connection can
    /// move, and with what. None: not now. Without `may_suspend` (the listener says
    /// `suspend = false`) only an idle connection leaves, with nothing to carry.
    ///
    /// A TLS connection leaves only at a point where its engine is quiet too (see
    /// `TlsSession::movable`), and then with its record layer; one that can never
    /// move (TLS 1.2) stays under the drain rules.
    pub fn suspend(&mut self, may_suspend: bool) -> Option<(Leaving, Option<Box<TlsMoved>>)> {
        if self.tls().is_some_and(|t| t.movable().is_err()) {
            return None;
        }
        let leaving = self.leaving(may_suspend)?;
        let Some((tls, _)) = self.tls_on_fd() else {
            return Some((leaving, None));
        };
        match tls.suspend() {
            Some(moved) => Some((leaving, Some(moved))),
            None => {
                // The engine would not give its secrets: this connection stays.
                if let Leaving::Suspended(_, input) = leaving {
                    self.inbuf = input;
                }
                self.flags.set(Flags::PINNED, true);
                None
            }
        }
    }

    /// Whether a drain that hands connections over will (sooner or later) take this
    /// one: then its service need not tell the client to go (`Io::draining` is false
    /// for it). A TLS 1.2 connection never moves, so it is told.
    pub fn can_move(&self) -> bool {
        !self.flags.has(Flags::PINNED)
            && self
                .tls()
                .is_none_or(|t| t.movable() != Err(crate::tls::session::NotNow::Never))
    }

    /// `suspend` without the TLS part.
    fn leaving(&mut self, may_suspend: bool) -> Option<Leaving> {
        if !self.may_move() {
            return None;
        }
        if !may_suspend {
            return (self.upstream().is_none() && self.idle_closable()).then_some(Leaving::Idle);
        }
        match self.handler.suspend() {
            Some(s) if s.state.len() + self.inbuf.len() <= crate::channel::MAX_MOVED_BYTES => {
                Some(Leaving::Suspended(s, std::mem::take(&mut self.inbuf)))
            }
            // Too big to travel now: the handler keeps serving, and is asked again.
            Some(_) => None,
            None if self.upstream().is_none() && self.idle_closable() => Some(Leaving::Idle),
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
    /// output is pending. Asked after every event: inlined.
    #[inline]
    pub fn interest(&self) -> Interest {
        Interest {
            read: self.read_allowed(),
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
                match self.recv(&mut env.scratch[..asked], env.stats) {
                    Ok(0) => {
                        self.flags.set(Flags::READ_CLOSED, true);
                        if !self.flags.has(Flags::CLOSE) {
                            self.with_io(env, |h, io| h.on_eof(io));
                        }
                    }
                    Ok(n) if self.flags.has(Flags::CLOSE) => {
                        // Lingering: the handler is done, the bytes go nowhere.
                        env.budget -= n;
                        self.charge(n);
                        env.stats.bytes_in += n as u64;
                    }
                    Ok(n) => {
                        active = true;
                        // A short read drained a plain socket; a TLS engine may have
                        // stopped at a record's end with more ciphertext queued.
                        if n < asked && !self.flags.has(Flags::PEER_HUP) && self.tls().is_none() {
                            self.flags.set(Flags::MAY_READ, false);
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
                            self.flags.set(Flags::BACKPRESSURED, true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.flags.set(Flags::MAY_READ, false)
                    }
                    Err(e) => return Outcome::Close(Some(format!("read failed: {e}"))),
                }
            }
            match self.flush(env.stats) {
                Ok(sent) => active |= sent > 0,
                Err(e) => return Outcome::Close(Some(format!("write failed: {e}"))),
            }
            if self.pending() == 0 {
                self.release_out(env.pool);
                if self.flags.has(Flags::SHUTDOWN_WRITE) && !self.flags.has(Flags::WRITE_SHUT) {
                    // The handler's half-close: FIN to the client, reading goes on.
                    self.send_fin();
                }
            }
            if self.flags.has(Flags::BACKPRESSURED) && self.pending() <= env.low {
                // Output drained: read again. The readable edge may have been consumed
                // while we were not reading, so try rather than wait for a new one.
                self.flags.set(Flags::BACKPRESSURED, false);
                self.flags.set(Flags::MAY_READ, true);
                self.with_io(env, |h, io| h.on_resume(io));
                if env.budget > 0 {
                    continue;
                }
            }
            // A close with everything owed sent, the client still sending: FIN, then
            // read what is already queued.
            if self.start_lingering() && env.budget > 0 {
                continue;
            }
            break;
        }
        // A close (the handler's, or the default one after EOF) waits for what the
        // connection still owes: queued output, and blocking jobs whose results may
        // write more; and, lingering, for the client's FIN.
        if self.flags.has(Flags::CLOSE)
            && self.pending() == 0
            && self.jobs_pending == 0
            && (self.flags.has(Flags::READ_CLOSED) || !self.lingering())
        {
            return Outcome::Close(None);
        }
        Outcome::Open { active }
    }

    /// How many of `want` bytes the rate limit lets us read now; None (and the
    /// connection throttled) when it allows none.
    fn allowance(&mut self, want: usize) -> Option<usize> {
        let Some(b) = self.bucket_mut() else {
            return Some(want);
        };
        let allowed = b.available(Instant::now());
        if allowed == 0 {
            self.flags.set(Flags::THROTTLED, true);
            return None;
        }
        Some(want.min(allowed.min(usize::MAX as u64) as usize))
    }

    /// Takes `n` read bytes out of the rate limit's bucket.
    fn charge(&mut self, n: usize) {
        if let Some(b) = self.bucket_mut() {
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
        self.io_call(env, |h, io, _| f(h, io))
    }

    /// The one place a handler's `Io` is made: the connection's flags it may change
    /// are lent as plain bools and written back after the callback, which also sees
    /// the unconsumed input.
    fn io_call<R>(
        &mut self,
        env: &mut Env<'_>,
        f: impl FnOnce(&mut dyn Handler, &mut Io<'_>, &mut Vec<u8>) -> R,
    ) -> R {
        let (jobs, draining) = (&mut *env.jobs, env.draining);
        self.take_out_buf(env.pool);
        env.push.current = env.token;
        let jobs_before = jobs.len();
        let mut close = self.flags.has(Flags::CLOSE);
        let mut shutdown_write = self.flags.has(Flags::SHUTDOWN_WRITE);
        let timer_before = self.timer_at();
        let mut timer = timer_before;
        let tls = self.rare.as_deref().and_then(Rare::tls_info);
        let mut io = Io {
            tls,
            out: &mut self.out,
            close: &mut close,
            shutdown_write: &mut shutdown_write,
            timer: &mut timer,
            jobs,
            peer: self
                .peer
                .map(|ip| std::net::SocketAddr::new(ip, self.peer_port)),
            draining,
            held: self.flags.has(Flags::BACKPRESSURED),
            now: None,
            push: Some(&mut *env.push),
        };
        let r = f(self.handler.as_mut(), &mut io, &mut self.inbuf);
        let jobs_now = io.jobs.len();
        self.flags.set(Flags::CLOSE, close);
        self.flags.set(Flags::SHUTDOWN_WRITE, shutdown_write);
        if timer != timer_before {
            self.set_timer_at(timer);
        }
        if jobs_now != jobs_before {
            self.count_jobs(jobs_now, jobs_before);
        }
        r
    }

    fn count_jobs(&mut self, now: usize, before: usize) {
        let added = u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX);
        self.jobs_pending = self.jobs_pending.saturating_add(added);
    }

    /// Hands the `n` new bytes in the scratch buffer to the handler, after whatever it
    /// left unconsumed before.
    fn feed(&mut self, n: usize, env: &mut Env<'_>) {
        // The scratch buffer is lent out of `env` while `env` lends the rest.
        let scratch = std::mem::take(&mut env.scratch);
        let data = &scratch[..n];
        self.io_call(env, |handler, io, inbuf| {
            if inbuf.is_empty() {
                let used = handler.on_data(io, data).min(data.len());
                if used < data.len() {
                    inbuf.extend_from_slice(&data[used..]);
                }
            } else {
                inbuf.extend_from_slice(data);
                let used = handler.on_data(io, inbuf).min(inbuf.len());
                inbuf.drain(..used);
                if inbuf.is_empty() {
                    *inbuf = Vec::new();
                }
            }
        });
        env.scratch = scratch;
    }

    /// Sends pending output until the socket would block; returns bytes sent.
    fn flush(&mut self, stats: &mut Stats) -> io::Result<usize> {
        let sent = match self.rare.as_deref_mut().and_then(Rare::tls_mut) {
            None => send_pending(self.fd.as_fd(), &self.out, &mut self.out_pos)?,
            Some(tls) => send_pending_tls(tls, self.fd.as_fd(), &self.out, &mut self.out_pos)?,
        };
        stats.bytes_out += sent as u64;
        Ok(sent)
    }

    /// Reads from the client: the socket's bytes, or on TLS the plaintext its engine
    /// makes of them (counting handshakes and failures).
    #[inline]
    fn recv(&mut self, buf: &mut [u8], stats: &mut Stats) -> io::Result<usize> {
        match self.rare.as_deref_mut().and_then(Rare::tls_mut) {
            None => sockio::recv(self.fd.as_fd(), buf),
            Some(tls) => tls.recv(self.fd.as_fd(), buf, &mut stats.tls),
        }
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
        match self.bucket() {
            Some(b) => b.readmit_at(now),
            None => now,
        }
    }

    /// Gives the connection's buffer back to the pool as it closes (telling a TLS
    /// client first, with close_notify, that the end is an end and not a cut).
    pub fn recycle(mut self, pool: &mut Vec<Vec<u8>>) {
        if let Some((tls, fd)) = self.tls_on_fd() {
            tls.close_notify(fd);
        }
        self.release_out(pool);
    }

    /// `recycle`, handing the sockets (the client's, and a proxy's upstream) to the
    /// caller instead of closing them (a hand-over sends them on).
    pub fn into_fds(mut self, pool: &mut Vec<Vec<u8>>) -> (OwnedFd, Option<OwnedFd>) {
        self.release_out(pool);
        let up = self.take_upstream();
        (self.fd, up.map(|u| u.fd))
    }
}

/// Sends `buf[*pos..]` until the socket would block; returns bytes sent.
fn send_pending(fd: std::os::fd::BorrowedFd<'_>, buf: &[u8], pos: &mut usize) -> io::Result<usize> {
    let mut sent = 0;
    while *pos < buf.len() {
        match sockio::send(fd, &buf[*pos..]) {
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

/// `send_pending` through a TLS engine: plaintext goes into rustls, ciphertext out to
/// the socket, until the socket would block or rustls will take no more; returns the
/// plaintext bytes taken.
fn send_pending_tls(
    tls: &mut crate::tls::TlsSession,
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &[u8],
    pos: &mut usize,
) -> io::Result<usize> {
    let mut sent = 0;
    while *pos < buf.len() {
        match tls.send(fd, &buf[*pos..]) {
            Ok(n) => {
                *pos += n;
                sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
            Err(e) => return Err(e),
        }
    }
    match tls.write_tls(fd) {
        Ok(()) => Ok(sent),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(sent),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::Conn;

    /// Every byte here is paid per open connection (a million of them in the scale
    /// bench): the bound is what the layout reached, so a field added carelessly
    /// fails here instead of in the idle-memory figures.
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Conn>();
        println!("size_of::<Conn>() = {size} bytes");
        assert!(size <= 128, "Conn grew to {size} bytes");
    }
}
