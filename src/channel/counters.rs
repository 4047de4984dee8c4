//! The per-listener and per-upstream counters a worker sends the master after each
//! heartbeat (`ToMaster::Counters`). The channel owns the message types; the worker's
//! accounting on them (`worker::stats`) and the master's merge (`master::metrics`)
//! live with their processes. The two `#[serde(skip)]` fields are the worker's own
//! bookkeeping and never cross the channel.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One listener's counters, named by address (indices differ between generations).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCounters {
    pub listen: String,
    /// Connections accepted from this listener: new clients only (adopted hand-overs
    /// are counted as the worker's `adopted`).
    pub accepted: u64,
    /// Open connections (gauge, as of the last heartbeat).
    pub active: u64,
    /// Times accepting paused because the worker held `max_connections` (the clients
    /// wait in the listen queue; none is closed).
    pub rejected_limit: u64,
    /// Connections closed at once for `max_connections_per_ip`.
    pub rejected_per_ip: u64,
    /// Times a client was held back by its `rate` limit.
    pub rejected_rate: u64,
}

/// One upstream of a proxy listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamCounters {
    pub listen: String,
    pub upstream: String,
    /// Connects that succeeded.
    pub connects: u64,
    /// Connects that failed (refused, unreachable, timed out).
    pub failures: u64,
    /// Established connections (gauge, as of the last heartbeat).
    pub active: u64,
    /// Bytes from the upstream to clients.
    pub bytes_in: u64,
    /// Bytes from clients to the upstream.
    pub bytes_out: u64,
    /// This worker skips the upstream until its backoff ends (as of the heartbeat).
    pub backoff: bool,
    /// Where `backoff` comes from; local to the worker.
    #[serde(skip)]
    pub(crate) down_until: Option<Instant>,
}

/// Every counter of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub listeners: Vec<ListenerCounters>,
    /// Per proxy listener, its upstreams in config order.
    pub upstreams: Vec<Vec<UpstreamCounters>>,
    /// Per listener, its upstream backoff.
    #[serde(skip)]
    pub(crate) backoff: Vec<Duration>,
}
