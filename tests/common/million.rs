//! Helpers for the scale test of held connections moving through a reload and an
//! upgrade (`tests/scale.rs`, the small version of `bench/million.sh`): a config with
//! a tight watchdog, a paced echo sample, and what a client process counted as lost.

use super::scale::Load;
use super::Corral;

/// Echo with `accept = "reuseport"` for many idle connections, and a watchdog only a
/// few heartbeats long: a worker the master stops hearing from during the move is
/// killed within a second, so a move that silences workers shows at test size.
pub fn moving_conf(workers: usize) -> String {
    format!(
        "[master]\nworkers = {workers}\ndrain_timeout = \"5m\"\nstop_timeout = \"5s\"\n\
         watchdog_timeout = \"1s\"\nupgrade_timeout = \"60s\"\n\n\
         [worker]\nmax_connections = 19000\nidle_timeout = \"10m\"\nheartbeat_interval = \"100ms\"\n\n\
         [log]\nlevel = \"info\"\n\n\
         [[listen]]\naddress = \"127.0.0.1:{{port}}\"\nservice = \"echo\"\naccept = \"reuseport\"\nbacklog = 4096\n"
    )
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
