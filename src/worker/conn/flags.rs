//! The state of a connection's sockets as one small set of flags, instead of a
//! dozen separate bools: what epoll told us, what each side closed, and what the loop
//! decided (paused, throttled, closing).

/// A set of [`Flags`] bits (two bytes). A client connection and a proxy's upstream
/// side each hold one; the socket bits mean the same on both.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    // The socket's readiness, on either side.
    /// Edge-triggered: a readable edge seen and not yet drained (to EAGAIN, or by a
    /// short read, see `PEER_HUP`).
    pub const MAY_READ: u16 = 1 << 0;
    /// epoll reported the peer's FIN or an error. Until then a read that returns less
    /// than it asked for proves the socket drained (the next byte brings a new edge),
    /// which saves the EAGAIN read per round trip; after it, the EOF is already there
    /// and brings no new edge, so reading goes on until it is seen.
    pub const PEER_HUP: u16 = 1 << 1;
    /// The peer sent FIN.
    pub const READ_CLOSED: u16 = 1 << 2;
    /// We sent FIN.
    pub const WRITE_SHUT: u16 = 1 << 3;
    /// Not read while the output it feeds is above the high water mark.
    pub const BACKPRESSURED: u16 = 1 << 4;

    // The client connection.
    /// Close once output is flushed and no blocking job is outstanding.
    pub const CLOSE: u16 = 1 << 5;
    /// The handler asked for a half-close once output is flushed.
    pub const SHUTDOWN_WRITE: u16 = 1 << 6;
    /// The rate limit ran out: not read from until the throttle timer re-admits it.
    pub const THROTTLED: u16 = 1 << 7;
    /// A throttle timer is pending for this connection.
    pub const THROTTLE_ARMED: u16 = 1 << 8;
    /// Counted in the worker's per-IP connection table.
    pub const COUNTED_IP: u16 = 1 << 9;
    /// `accept_proxy`: the PROXY header has not been read yet; the handler is a
    /// placeholder until it has.
    pub const AWAITING_HEADER: u16 = 1 << 10;
    /// Stays in this worker whatever happens (the new generation refused it).
    pub const PINNED: u16 = 1 << 11;
    /// What epoll watches the client socket for (always edge-triggered, never
    /// exclusive): two bits here instead of an `Interest` of four bools per connection.
    pub const WATCH_READ: u16 = 1 << 14;
    pub const WATCH_WRITE: u16 = 1 << 15;

    // A proxy's upstream side.
    /// The non-blocking connect completed.
    pub const CONNECTED: u16 = 1 << 12;
    /// The client is not read while its bytes wait here above the high water mark.
    pub const BACKPRESSURED_CLIENT: u16 = 1 << 13;

    pub const fn new(bits: u16) -> Flags {
        Flags(bits)
    }

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Any of the bits in `mask` is set: one test instead of a chain of `has` on the
    /// per-event path.
    pub fn any(self, mask: u16) -> bool {
        self.0 & mask != 0
    }

    pub fn set(&mut self, bit: u16, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Sets `bit` when `on`, leaves it otherwise (`x |= on`).
    pub fn or(&mut self, bit: u16, on: bool) {
        if on {
            self.0 |= bit;
        }
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flags({:#06x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Flags;

    #[test]
    fn bits_are_independent() {
        let mut f = Flags::new(Flags::MAY_READ);
        f.set(Flags::THROTTLED, true);
        f.or(Flags::PEER_HUP, false);
        assert!(f.has(Flags::MAY_READ) && f.has(Flags::THROTTLED) && !f.has(Flags::PEER_HUP));
        f.set(Flags::MAY_READ, false);
        f.or(Flags::PEER_HUP, true);
        assert!(!f.has(Flags::MAY_READ) && f.has(Flags::THROTTLED) && f.has(Flags::PEER_HUP));
        assert_eq!(std::mem::size_of::<Flags>(), 2);
    }
}
