//! Black-box test harness for corral: starts the real binary with a generated
//! config on a loopback port, finds its workers through /proc, drives it with
//! real sockets and signals, and kills (by pid) everything it started when the
//! test ends, whatever the outcome.
//!
//! Rules the harness enforces for every test: waits are deadline loops (never a
//! bare sleep used as synchronisation), ports are probed before use and retried
//! on "Address already in use", the master's stderr goes to a file in the test's
//! own temp dir, and only pids this harness started are ever signalled.

pub mod http;

mod cli;
mod conf;
mod corral;
mod net;
mod procs;
mod wait;

pub use cli::*;
pub use conf::*;
pub use corral::*;
pub use net::*;
pub use procs::*;
pub use wait::*;

pub mod browser;
pub mod fault;
pub mod fds;
pub mod handover;
pub mod inputs;
pub mod moves;
pub mod opsec;
pub mod pp;
pub mod pressure;
pub mod push;
pub mod recycle;
pub mod scale;
// The privileged tests' part of the harness (real systemd, second uids, PID 1).
#[allow(dead_code)]
pub mod privs;
#[allow(dead_code)]
pub mod sysd;

pub mod metrics;
pub mod million;
pub mod tls;
pub mod ws;
pub mod xmaster;

static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Taken by a test that holds thousands of sockets (or tens of thousands through
/// corral-load) for as long as it holds them: the suite is one process with one
/// 20000-fd limit, and two such tests side by side would also starve each other of
/// the box's two cores. A test that panicked while holding it does not stop the rest.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Says that a test (or part of one) could not run here, and why, where a newcomer
/// running `cargo test` sees it: straight to stderr, past the test harness's capture
/// (which shows `eprintln!` output only for a failing test).
pub fn skipped(why: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{why}");
}
