//! corral: a supervised worker runtime in the style of nginx.
//!
//! A single-threaded master owns the listening sockets and supervises forked,
//! single-threaded worker processes, each running one fixed event loop (timers →
//! epoll → IO → other work). The master reloads its configuration on SIGHUP without
//! dropping a connection, respawns crashed and hung workers, and drains old
//! generations. See the README for operating it; this crate's library side exposes
//! the [`service`] API for writing protocol handlers, and the pieces the `corral`
//! binary is built from.

pub mod app;
pub mod channel;
pub mod cli;
pub mod config;
pub mod config_paths;
pub mod fault;
pub mod log;
pub mod master;
pub mod notify;
pub mod os;
pub mod proxy_protocol;
pub mod service;
pub mod worker;

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
