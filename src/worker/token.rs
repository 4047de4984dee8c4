//! Connection tokens: the one place that says what the bits of an epoll token mean.
//!
//! A token is the slab index plus a generation: an event still queued for a closed
//! connection whose slot was reused in the same epoll batch finds a different
//! generation and is ignored instead of reaching the wrong client.

/// Identifies a connection: low 32 bits slab index, bits 32–60 generation; bit 61
/// marks the connection's upstream side, bits 62 and 63 listener and control tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    pub fn new(index: usize, gen: u32) -> Token {
        Token((u64::from(gen & GEN_MASK) << 32) | index as u64)
    }
    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub fn gen(self) -> u32 {
        ((self.0 >> 32) as u32) & GEN_MASK
    }

    /// The token under which the connection's upstream fd is registered.
    pub fn upstream(self) -> u64 {
        self.0 | UPSTREAM_BIT
    }
}

pub const GEN_MASK: u32 = 0x1fff_ffff;
/// Marks epoll events of a connection's upstream socket.
pub const UPSTREAM_BIT: u64 = 1 << 61;

/// The master channel, the signal fd and the blocking pool's wake-up fd.
pub const TOKEN_CHANNEL: u64 = 1 << 63;
pub const TOKEN_SIGNALS: u64 = (1 << 63) | 1;
pub const TOKEN_POOL: u64 = (1 << 63) | 2;
/// A listener, by index in the config (or'ed in).
pub const TOKEN_LISTENER: u64 = 1 << 62;
/// With `TOKEN_LISTENER`: a listening socket lent by the master (`worker/borrowed.rs`),
/// by its place among the borrowed ones.
pub const BORROWED_BIT: u64 = 1 << 40;
