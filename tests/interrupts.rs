//! Ctrl-C for the client tools, as signal-hook's flag: `corral-load` stops its run
//! early and still prints what it measured (a second Ctrl-C would end it at once).
//! (`corral top` and the reload follower: tests/top.rs.) The real binaries on
//! loopback; see `common/mod.rs` for the harness rules.

use crate::common;

use std::time::{Duration, Instant};

use common::scale::Load;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn corral_load_stops_on_ctrl_c_and_prints_its_summary() {
    let c = Corral::start(&Conf::new(1).render());
    let dir = tempfile::tempdir().expect("temp dir");
    let load = Load::spawn(
        dir.path(),
        "load",
        &[
            "--addr".into(),
            c.addr().to_string(),
            "--conns".into(),
            "4".into(),
            "--duration".into(),
            "120".into(),
            "--progress".into(),
        ],
    );
    let err = dir.path().join("load.err");
    // Its first per-second line: the run is under way.
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("s] open")),
        "corral-load printed no progress: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let t0 = Instant::now();
    kill(Pid::from_raw(load.pid()), Signal::SIGINT).expect("SIGINT to corral-load");
    let summary = load.finish(Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(
        summary["round_trips"].as_u64().unwrap_or(0) > 0,
        "no round trips in the summary: {summary}"
    );
    assert!(
        summary["elapsed_s"].as_f64().is_some_and(|s| s < 60.0),
        "the run went on after Ctrl-C: {summary}"
    );
    eprintln!("[interrupts] corral-load ended {took:?} after SIGINT: {summary}");
}
