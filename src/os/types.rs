//! The system types the code above `os` names (signals, process ids), re-exported so
//! that only this layer depends on `nix` directly.

pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
