//! corral: a supervised worker runtime in the style of nginx.
//!
//! A single-threaded master owns the listening sockets and supervises forked,
//! single-threaded worker processes, each running one fixed event loop (timers →
//! epoll → IO → other work). The master reloads its configuration on SIGHUP without
//! dropping a connection, respawns crashed and hung workers, and drains old
//! generations. See the README for operating it; this crate's library side exposes
//! the [`service`] API for writing protocol handlers, and the pieces the `corral`
//! binary is built from.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod app;
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
pub(crate) mod proxy_protocol;
pub mod service;
pub(crate) mod tls;
pub(crate) mod worker;

/// Runs corral's command line as a program of its own: `--version`, `--help`, the
/// completions and the man page carry the calling binary's name and its package's
/// version. Register services first.
///
/// ```no_run
/// // corral::service::register("mine", ...) first, then:
/// std::process::exit(corral::main!());
/// ```
#[macro_export]
macro_rules! main {
    () => {
        $crate::app::main_as(
            // Set for binaries and examples; a library calling it gets its package name.
            match option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => env!("CARGO_PKG_NAME"),
            },
            env!("CARGO_PKG_VERSION"),
        )
    };
}
