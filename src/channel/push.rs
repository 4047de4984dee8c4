//! What push (`service::push`) puts on the master↔worker channel: a moving
//! connection's subscriptions, and the counters a heartbeat carries.

use serde::{Deserialize, Serialize};

/// A moving connection's subscriptions, in its `Moved` record (see `worker::push`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMoved {
    pub topics: Vec<String>,
    /// (publisher, last sequence number the old worker received from it): what the
    /// new worker must not deliver again, and after which it replays.
    #[serde(default)]
    pub cursor: Vec<(u64, u64)>,
}

impl PushMoved {
    /// What this record costs in a hand-over message (JSON).
    pub fn weight(&self) -> usize {
        self.topics.iter().map(|t| t.len() + 4).sum::<usize>() + self.cursor.len() * 44 + 32
    }
}

/// A worker's push counters, sent with every heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCounts {
    /// Messages published here (by handlers of this worker).
    #[serde(default)]
    pub published: u64,
    /// Messages and `send_to` writes handed to a connection.
    #[serde(default)]
    pub delivered: u64,
    /// Deliveries dropped because the connection's unsent output was over its high
    /// water (`Overflow::Drop`).
    #[serde(default)]
    pub dropped_slow: u64,
    /// Connections closed because their unsent output was over its high water
    /// (`Overflow::Disconnect`).
    #[serde(default)]
    pub disconnected_slow: u64,
    /// Messages not sent to a peer worker whose queue was full.
    #[serde(default)]
    pub dropped_peer_full: u64,
    /// Writes, subscriptions and publishes refused: no such connection here, topic or
    /// message too long, too many topics on one connection.
    #[serde(default)]
    pub refused: u64,
    /// Messages replayed to connections that arrived by a move (published while they
    /// travelled).
    #[serde(default)]
    pub replayed: u64,
    /// Messages that connections which moved here may have missed: published before
    /// this worker joined the bus, and not yet received by their old worker when
    /// they left (it was far behind: its peers still queued them). At most this
    /// many: some may have been for topics they did not subscribe to.
    #[serde(default)]
    pub missed_in_move: u64,
}

impl PushCounts {
    /// Sums another worker's counts into these.
    pub fn add(&mut self, o: &PushCounts) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.dropped_slow += o.dropped_slow;
        self.disconnected_slow += o.disconnected_slow;
        self.dropped_peer_full += o.dropped_peer_full;
        self.refused += o.refused;
        self.replayed += o.replayed;
        self.missed_in_move += o.missed_in_move;
    }
}
