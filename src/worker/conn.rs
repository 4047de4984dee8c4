//! One client connection and the slab that holds them.
//!
//! A token is the slab index plus a generation: an event still queued for a closed
//! connection whose slot was reused in the same epoll batch finds a different
//! generation and is ignored instead of reaching the wrong client.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use crate::channel::Stats;
use crate::os::epoll::Interest;
use crate::os::fd;
use crate::service::{Handler, Io};

/// Identifies a connection: low 32 bits slab index, high bits generation (bit 62 and
/// 63 stay clear; they mark listener and control tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    fn new(index: usize, gen: u32) -> Token {
        Token((u64::from(gen & 0x3fff_ffff) << 32) | index as u64)
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.0 >> 32) as u32
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
    /// Edge-triggered: readable edge seen and not yet drained to EAGAIN.
    pub may_read: bool,
    /// The client sent FIN.
    read_closed: bool,
    /// Close once output is flushed.
    close: bool,
    /// Reading is suspended until output falls under the low water mark.
    backpressured: bool,
}

/// What `pump` decided.
pub enum Outcome {
    /// Keep the connection; `active` if any byte moved.
    Open { active: bool },
    /// Close it, with a reason worth a debug line.
    Close(Option<String>),
}

impl Conn {
    pub fn new(fd: OwnedFd, peer: Option<IpAddr>, handler: Box<dyn Handler>, now: Instant) -> Conn {
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
            read_closed: false,
            close: false,
            backpressured: false,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reading is possible and allowed now.
    pub fn wants_read(&self) -> bool {
        self.may_read && !self.read_closed && !self.backpressured && !self.close
    }

    /// Closing now loses nothing.
    pub fn idle_closable(&self) -> bool {
        self.pending() == 0 && self.inbuf.is_empty() && self.handler.is_idle()
    }

    /// The epoll interest this connection needs: read unless paused, write only while
    /// output is pending.
    pub fn interest(&self) -> Interest {
        Interest {
            read: !self.read_closed && !self.backpressured && !self.close,
            write: self.pending() > 0,
            edge: true,
            exclusive: false,
        }
    }

    /// Moves bytes: read within `budget` and the water marks, hand them to the handler,
    /// write what it queued. Loops while a flush makes room for more reading.
    #[allow(clippy::too_many_arguments)]
    pub fn pump(
        &mut self,
        scratch: &mut [u8],
        budget: &mut usize,
        high: usize,
        low: usize,
        inbuf_limit: usize,
        pool: &mut Vec<Vec<u8>>,
        stats: &mut Stats,
    ) -> Outcome {
        let mut active = false;
        loop {
            while self.wants_read() && *budget > 0 {
                let n = (*budget).min(scratch.len());
                match fd::read(self.fd.as_fd(), &mut scratch[..n]) {
                    Ok(0) => {
                        self.read_closed = true;
                        self.with_io(pool, |h, io| h.on_eof(io));
                    }
                    Ok(n) => {
                        active = true;
                        *budget -= n;
                        stats.bytes_in += n as u64;
                        self.feed(&scratch[..n], pool);
                        if self.inbuf.len() > inbuf_limit {
                            return Outcome::Close(Some(format!(
                                "the service left more than {inbuf_limit} bytes unconsumed"
                            )));
                        }
                        if self.pending() >= high {
                            self.backpressured = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.may_read = false,
                    Err(e) => return Outcome::Close(Some(format!("read failed: {e}"))),
                }
            }
            match self.flush(stats) {
                Ok(sent) => active |= sent > 0,
                Err(e) => return Outcome::Close(Some(format!("write failed: {e}"))),
            }
            if self.pending() == 0 {
                self.release_out(pool);
            }
            if self.backpressured && self.pending() <= low {
                // Output drained: read again. The readable edge may have been consumed
                // while we were not reading, so try rather than wait for a new one.
                self.backpressured = false;
                self.may_read = true;
                if *budget > 0 {
                    continue;
                }
            }
            break;
        }
        if self.close && self.pending() == 0 {
            return Outcome::Close(None);
        }
        Outcome::Open { active }
    }

    /// Output space comes from the pool only when a handler is about to write.
    fn take_out_buf(&mut self, pool: &mut Vec<Vec<u8>>) {
        if self.out.capacity() == 0 {
            if let Some(buf) = pool.pop() {
                self.out = buf;
            }
        }
    }

    fn with_io(&mut self, pool: &mut Vec<Vec<u8>>, f: impl FnOnce(&mut dyn Handler, &mut Io<'_>)) {
        self.take_out_buf(pool);
        let mut io = Io {
            out: &mut self.out,
            close: &mut self.close,
            peer: self.peer,
        };
        f(self.handler.as_mut(), &mut io);
    }

    /// Hands new bytes to the handler, after whatever it left unconsumed before.
    fn feed(&mut self, data: &[u8], pool: &mut Vec<Vec<u8>>) {
        self.take_out_buf(pool);
        let mut io = Io {
            out: &mut self.out,
            close: &mut self.close,
            peer: self.peer,
        };
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
    }

    /// Sends pending output until the socket would block; returns bytes sent.
    fn flush(&mut self, stats: &mut Stats) -> io::Result<usize> {
        let mut sent = 0;
        while self.pending() > 0 {
            match fd::send(self.fd.as_fd(), &self.out[self.out_pos..]) {
                Ok(n) => {
                    self.out_pos += n;
                    sent += n;
                    stats.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Returns an empty output buffer to the pool, so idle connections hold none.
    fn release_out(&mut self, pool: &mut Vec<Vec<u8>>) {
        self.out_pos = 0;
        if self.out.capacity() > 0 {
            let mut buf = std::mem::take(&mut self.out);
            buf.clear();
            if buf.capacity() <= 1 << 20 {
                pool.push(buf);
            }
        }
    }

    /// Gives the connection's buffer back to the pool as it closes.
    pub fn recycle(mut self, pool: &mut Vec<Vec<u8>>) {
        self.release_out(pool);
    }
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
        self.slots.push(Slot {
            gen: 0,
            conn: Some(conn),
        });
        Token::new(self.slots.len() - 1, 0)
    }

    pub fn get(&self, t: Token) -> Option<&Conn> {
        self.slots
            .get(t.index())
            .filter(|s| s.gen & 0x3fff_ffff == t.gen())
            .and_then(|s| s.conn.as_ref())
    }

    pub fn get_mut(&mut self, t: Token) -> Option<&mut Conn> {
        self.slots
            .get_mut(t.index())
            .filter(|s| s.gen & 0x3fff_ffff == t.gen())
            .and_then(|s| s.conn.as_mut())
    }

    pub fn remove(&mut self, t: Token) -> Option<Conn> {
        let slot = self
            .slots
            .get_mut(t.index())
            .filter(|s| s.gen & 0x3fff_ffff == t.gen())?;
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
