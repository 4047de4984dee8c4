//! corral's black-box test suite: one binary, a module per feature, every test
//! starting the real `corral` binary with real sockets and signals (see
//! `tests/common/mod.rs` for the harness and its rules). One binary instead of one per
//! file: the harness is compiled once, dead code in it is real dead code, and the
//! build writes one test executable, not forty (CI's disk is small).
//!
//! Tests that hold thousands of sockets in this process take `common::heavy()`, so
//! two of them never share the 20000-fd limit.

mod common;

mod chat_ws;
mod chunked;
mod close_delivers;
mod config_checks;
mod dashboards;
mod events;
mod example_kv;
mod faults;
mod fd_audit;
mod flow;
mod foundation;
mod fuzz_kv_state;
mod handover;
mod http;
mod inflight;
mod inputs;
mod interrupts;
mod lanes;
mod library_api;
mod logs;
mod metrics;
mod moves;
mod operators;
mod packaging;
mod pressure;
mod proxy;
mod proxy_protocol;
mod push;
mod push_ws;
mod reads;
mod recycle;
mod refused_moves;
mod reload;
mod scale;
mod stalled;
mod storm;
mod supervision;
mod systemd;
mod tls;
mod tls_moves;
mod top;
mod unknown_service;
mod upgrade;
mod upgrade_moves;
mod xlanes;
