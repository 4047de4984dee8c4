//! The Unix-only parts of `std` the rest of the tree uses (Unix sockets, byte paths,
//! permission bits), re-exported here so that platform code is named in one layer:
//! outside `src/os/`, nothing spells `std::os::unix`, `libc`, `nix` or `socket2`.

pub use std::os::unix::ffi::OsStrExt;
pub use std::os::unix::fs::PermissionsExt;
pub use std::os::unix::net::{UnixListener, UnixStream};
