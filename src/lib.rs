//! corral: a supervised worker runtime in the style of nginx.
//!
//! A single-threaded master owns the listening sockets and supervises forked,
//! single-threaded worker processes, each running one fixed event loop (timers →
//! epoll → IO → other work). The master reloads its configuration on SIGHUP without
//! dropping a connection, respawns crashed and hung workers, and drains old
//! generations. See the README for operating it.
//!
//! As a library it runs services of your own the same way: implement
//! [`service::Service`] and [`service::Handler`], name the service in a [`Runtime`],
//! and `run` it ([`Runtime`] has a complete example; [`service`] the contract of a
//! handler; [`testing`] unit-tests one without processes).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod app;
pub(crate) mod channel;
pub(crate) mod cli;
pub mod config;
pub(crate) mod config_paths;
pub(crate) mod control;
pub(crate) mod fault;
/// For the fuzz targets in `fuzz/` only (see the module): not an API.
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod log;
pub(crate) mod master;
pub(crate) mod notify;
/// The system-call layer: the only code that calls the C library directly (public
/// for the corral-load tool).
#[doc(hidden)]
#[allow(unsafe_code)]
pub mod os;
pub(crate) mod program;
pub(crate) mod proxy_protocol;
mod runtime;
pub mod service;
pub mod testing;
pub(crate) mod tls;
pub mod websocket;
pub(crate) mod worker;

pub use runtime::Runtime;
/// serde, as corral uses it: a service's options derive `Deserialize` and
/// `Serialize` from here (`#[serde(crate = "corral::serde")]`), so a program needs
/// no serde of its own.
pub use serde;
