//! Helpers for the scale test of held connections moving through a reload and an
//! upgrade (`tests/scale.rs`, the small version of `bench/million.sh`): a config with
//! a tight watchdog, a paced echo sample, and what a client process counted as lost.

use super::scale::Load;
use super::{Conf, Corral};

/// Echo with `accept = "reuseport"` for many idle connections, and a watchdog only a
/// few heartbeats long: a worker the master stops hearing from during the move is
/// killed within a second, so a move that silences workers shows at test size.
pub fn moving_conf(workers: usize) -> String {
    Conf::new(workers)
        .drain("5m")
        .stop("5s")
        .watchdog("1s")
        .upgrade_timeout("60s")
        .max_conns(19_000)
        .idle("10m")
        .heartbeat("100ms")
        .accept("reuseport")
        .echo("backlog = 4096")
        .render()
}

/// `n` echo connections doing a round trip every half second for at most `secs`, with
/// a timeout long enough for a round trip that waits while its connection moves.
pub fn echo_sample(c: &Corral, n: usize, secs: u64) -> Load {
    let args: Vec<String> = [
        "--addr",
        &c.addr().to_string(),
        "--mode",
        "echo",
        "--conns",
        &n.to_string(),
        "--rate",
        "2",
        "--timeout-ms",
        "60000",
        "--duration",
        &secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Load::spawn(c.dir.path(), "sample", &args)
}

/// Connections a client process lost while holding them (closed, reset, wrong or
/// late answers), each counted once however often it reconnected.
pub fn conns_lost(j: &serde_json::Value) -> u64 {
    j["errors"]["conns_lost"].as_u64().unwrap_or(u64::MAX)
}
