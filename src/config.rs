//! Configuration: built-in defaults ← TOML file ← `CORRAL_SECTION__KEY` environment
//! variables, layered with figment and checked in full before anything acts on it.
//!
//! Every error names where the bad value came from (file or environment variable), the
//! key, and why, because a config error is read by an operator in a hurry. Values take
//! human units (`"30s"`, `"64KiB"`). A config is an immutable value: a reload builds a
//! new one and either swaps it in whole or leaves the running one untouched.
//!
//! Config knows the keys common to every `[[listen]]` table, not the services: the
//! rest of a table is its service's, parsed and checked by the [`Services`] that
//! [`Config::load_with`] is given (`crate::service` implements them and defines
//! `Config::load` with its registry), so this module imports no service.

use std::path::PathBuf;

mod checks;
pub mod effective;
pub mod privs;
pub use checks::RSS_FLOOR;
mod pp;
pub use pp::DEFAULT_ACCEPT_PROXY_TIMEOUT;
mod recycle;
pub use recycle::Steer;
mod listen;
mod load;
pub mod options;
mod sections;
pub mod tls;
mod units;
mod validate;
pub use listen::*;
pub use load::*;
pub use options::{ListenOptions, OptionError, ParsedOptions, RawOptions, Services};
pub use sections::*;
pub use tls::{TlsConfig, TlsLoaded};
pub use units::*;
#[cfg(test)]
mod tests;

/// Where the config file is read from when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/corral/corral.toml";

/// Prefix of environment variables that override config keys:
/// `CORRAL_MASTER__WORKERS=4` sets `[master] workers`.
pub const ENV_PREFIX: &str = "CORRAL_";

/// Config sections that environment variables may address. Other `CORRAL_*` variables
/// (say `CORRAL_BIN` in a test harness) are none of our business and are ignored, so
/// that they cannot trip the unknown-key check.
const ENV_SECTIONS: &[&str] = &["master", "worker", "log", "flow"];

/// Why a configuration was refused. The message is complete: it is printed as is by
/// `corral -t`, `corral -s reload` and the master's log.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable; figment would silently skip it otherwise.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An empty file (nothing but whitespace): never a config with every default,
    /// which would name the default runtime paths and so perhaps another instance.
    #[error("config file {path} is empty: it needs at least one [[listen]] entry")]
    Empty { path: PathBuf },
    /// Users other than the owner may write the file (see `load::check_writers`).
    #[error(
        "config file {path} is writable by {who} (mode {mode:04o}): refusing it, since \
         whoever can write it controls the master; remove the write bit (chmod go-w)"
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    /// TOML syntax, type errors and unknown keys, as reported by figment (which names
    /// the key and the file or environment variable).
    #[error("{0}")]
    Parse(String),
    /// A value that parsed but makes no sense.
    #[error("invalid value for key `{key}` in {origin}: {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
}
