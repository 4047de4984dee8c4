//! What a run counts: connections opened and failed, round trips and how each ended.

/// What one thread counted. Errors are split by what the user of the server would feel.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    /// Connections established.
    pub(crate) opened: u64,
    /// connect() failed, or did not complete within the timeout.
    pub(crate) connect_failed: u64,
    /// Echoes received complete and correct.
    pub(crate) round_trips: u64,
    /// The server closed or reset the connection while an echo was expected.
    pub(crate) reset_eof: u64,
    /// The echo differed from what was sent, or data came when none was expected.
    pub(crate) mismatch: u64,
    /// A round trip took longer than the timeout.
    pub(crate) timeouts: u64,
    /// The server closed a connection that had no round trip outstanding (idle mode,
    /// or between paced round trips).
    pub(crate) closed_idle: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    /// Connection slots lost (any of the four above) at least once: unlike the events,
    /// this never exceeds the connections held, however often a slot reconnects.
    pub(crate) conns_lost: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, o: &Counters) {
        self.opened += o.opened;
        self.connect_failed += o.connect_failed;
        self.round_trips += o.round_trips;
        self.reset_eof += o.reset_eof;
        self.mismatch += o.mismatch;
        self.timeouts += o.timeouts;
        self.closed_idle += o.closed_idle;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.conns_lost += o.conns_lost;
    }

    pub(crate) fn since(&self, o: &Counters) -> Counters {
        Counters {
            opened: self.opened - o.opened,
            connect_failed: self.connect_failed - o.connect_failed,
            round_trips: self.round_trips - o.round_trips,
            reset_eof: self.reset_eof - o.reset_eof,
            mismatch: self.mismatch - o.mismatch,
            timeouts: self.timeouts - o.timeouts,
            closed_idle: self.closed_idle - o.closed_idle,
            bytes_sent: self.bytes_sent - o.bytes_sent,
            bytes_received: self.bytes_received - o.bytes_received,
            conns_lost: self.conns_lost - o.conns_lost,
        }
    }

    /// Round trips that were started and did not complete correctly.
    pub(crate) fn round_trips_failed(&self) -> u64 {
        self.reset_eof + self.mismatch + self.timeouts
    }

    pub(crate) fn errors(&self) -> u64 {
        self.connect_failed + self.round_trips_failed() + self.closed_idle
    }
}
