//! What a listener binds, a TCP address or a Unix socket path, and how it is written
//! (`"127.0.0.1:8080"`, `"[::1]:8080"`, `"unix:/run/corral.sock"`): the socket layer
//! binds it, the config reads it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What a listener binds: a TCP address or a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "`{s}` is not an address (write \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/corral.sock\")"
            )
        })
    }
}
