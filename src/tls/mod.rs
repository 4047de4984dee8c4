//! TLS termination inside the worker's event loop, on rustls (aws-lc-rs provider).
//!
//! - `load`: the master reads and checks certificates and keys at start, `-t` and
//!   reload, before any worker forks, and builds each TLS listener's
//!   `rustls::ServerConfig`; workers inherit it through fork and never open a key
//!   file (they may run as a user that cannot read it).
//! - `resolve`: the certificate for the name a client asks for (SNI).
//! - `tickets`: session-ticket keys made by the master, shared by every worker and
//!   handed to a new master at a binary upgrade, so resumption survives both.
//! - `session`: one connection's engine, driven by the loop's readiness.
//! - `counts`, `info`: what is counted and what a handler may see.
//!
//! # Threat model
//!
//! Secrets: private keys (read by the master, kept in its memory and inherited by
//! each worker at fork; never written anywhere, never logged) and ticket keys (made
//! by the master from the system's random source; they cross process boundaries
//! only over the master's private channels to its workers and, at an upgrade, over
//! the socketpair shared with the new master, both `SO_PEERCRED`-checked same-uid
//! links that no other process holds; buffers holding them are zeroized after use;
//! `Debug` prints key ids only). Someone who can read a worker's memory (same uid
//! and ptrace, or root) can read both: that is true of every TLS server; the
//! containment of workers is what keeps a compromised worker from spreading. No
//! cryptography is written here: the handshake and records are rustls's; tickets are
//! sealed with aws-lc-rs's ChaCha20-Poly1305 (the AEAD rustls itself uses for tickets),
//! under random nonces, with a key id as associated data. Failure paths: a file that
//! cannot be read or parsed, a key that does not match its certificate, an expired
//! certificate, an unusable CA file: the load fails and nothing changes (start
//! refuses, a reload keeps the running generation). A ClientHello that is not TLS,
//! a handshake that fails or stalls past `handshake_timeout`, a record that does not
//! decrypt: the connection gets rustls's alert where there is one, is closed, and
//! is counted by reason; the worker goes on. 0-RTT data is refused (it can be
//! replayed).

mod counts;
mod info;
pub mod load;
pub mod moved;
pub mod record;
mod resolve;
mod secret;
mod session;
pub mod tickets;

pub use counts::{Failure, TlsCounts};
pub use info::TlsInfo;
pub use moved::TlsMoved;
pub use session::TlsSession;
#[cfg(test)]
mod record_kat;
