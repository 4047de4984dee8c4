//! TLS termination inside the worker's event loop, on rustls (aws-lc-rs provider).
//!
//! - `load`: the master reads and checks certificates and keys at start, `-t` and
//!   reload, before any worker forks, and builds each TLS listener's
//!   `rustls::ServerConfig`; workers inherit it through fork and never open a key
//!   file (they may run as a user that cannot read it).
//! - `resolve`: the certificate for the name a client asks for (SNI).
//! - `tickets`: session-ticket keys made by the master, shared by every worker and
//!   handed to a new master at a binary upgrade, so resumption survives both.
//! - `session`: one connection's engine, driven by the loop's readiness: rustls, or
//!   after a move the continued record layer (`record`), with the state that travels
//!   (`moved`) and key material in transit (`secret`).
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
//!
//! A moving TLS 1.3 connection adds a third secret: its record keys and IVs, taken from
//! rustls at a quiescent point. They cross the same private channels as ticket keys
//! (old worker → master → new worker; at an upgrade, old master → new master), inside
//! the message that carries the socket itself, so whoever could read them could
//! already take the connection; they are zeroized when the message buffers and the
//! engine that held them are dropped, and `Debug` shows none of them. Why a nonce never
//! repeats is in `record`'s module doc. Failure paths of a move: rustls refuses to give
//! its secrets (the connection stays, pinned, and is served to its end); the receiver
//! cannot continue the state (unknown version or suite: it is refused and goes back to
//! the worker that suspended it, which continues it); the receiving worker dies before it adopts (the socket and state die with
//! the message, as for plain connections: nothing was sealed with them); a refusal by
//! the new service (the connection goes back with its state untouched, and the origin
//! continues it with the same sequence numbers, since nothing used them meanwhile).

mod counts;
mod info;
pub mod load;
pub mod moved;
pub mod record;
mod resolve;
mod secret;
pub mod session;
pub mod tickets;

pub use counts::{Failure, TlsCounts};
pub use info::TlsInfo;
pub use moved::TlsMoved;
pub use session::TlsSession;
#[cfg(test)]
mod record_kat;
