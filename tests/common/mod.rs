//! Black-box test harness for corral: starts the real binary with a generated
//! config on a loopback port, finds its workers through /proc, drives it with
//! real sockets and signals, and kills (by pid) everything it started when the
//! test ends, whatever the outcome.
//!
//! Rules the harness enforces for every test: waits are deadline loops (never a
//! bare sleep used as synchronisation), ports are probed before use and retried
//! on "Address already in use", the master's stderr goes to a file in the test's
//! own temp dir, and only pids this harness started are ever signalled.

#![allow(dead_code)]

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

#[allow(dead_code)]
pub mod fault;
#[allow(dead_code)]
pub mod fds;
#[allow(dead_code)]
pub mod handover;
#[allow(dead_code)]
pub mod inputs;
#[allow(dead_code)]
pub mod moves;
pub mod opsec;
pub mod pp;
pub mod pressure;
#[allow(dead_code)]
pub mod privs;
#[allow(dead_code)]
pub mod recycle;
#[allow(dead_code)]
pub mod scale;
#[allow(dead_code)]
pub mod sysd;

#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod million;
#[allow(dead_code)]
pub mod tls;
#[allow(dead_code)]
pub mod xmaster;

/// Says that a test (or part of one) could not run here, and why, where a newcomer
/// running `cargo test` sees it: straight to stderr, past the test harness's capture
/// (which shows `eprintln!` output only for a failing test).
pub fn skipped(why: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{why}");
}
