//! A listener's service options, as config sees them: every key of a `[[listen]]`
//! table that is not a common one is kept raw, and the service layer, which knows
//! the services, parses and checks it (through [`Services`], handed to
//! [`super::Config::load_with`]). Config keeps the parsed value without knowing its
//! type, so that it never imports a service and a service registered by a program
//! built on the library takes keys of its own.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The keys of one `[[listen]]` table that belong to its service, as written.
pub type RawOptions = std::collections::BTreeMap<String, figment::value::Value>;

/// What a service's parsed options tell config and `corral -T`.
pub trait ListenOptions: Any + Send + Sync + fmt::Debug {
    /// For the service to get its own type back.
    fn as_any(&self) -> &dyn Any;
    /// Where this listener forwards connections (as written, and resolved), for the
    /// check that refuses forwarding loops.
    fn forwards_to(&self) -> Vec<(String, SocketAddr)>;
    /// Every option with its default filled in, for `corral -T`.
    fn effective(&self) -> serde_json::Value;
}

/// A key of a service's options that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The key as written in the `[[listen]]` table (`header_timeout`).
    pub key: String,
    pub reason: String,
}

impl OptionError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> OptionError {
        OptionError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The services a config may name, as the layer that knows them answers.
pub trait Services {
    /// Every service name, for the error that names an unknown one.
    fn names(&self) -> Vec<String>;
    /// Parses and checks the options of a listener of `service` (a known name).
    fn parse(
        &self,
        service: &str,
        options: &RawOptions,
    ) -> Result<Arc<dyn ListenOptions>, OptionError>;
}

/// A listener's parsed options, shared by every copy of its config (a worker gets
/// them with the config it forks with). Compared through the raw options they were
/// parsed from, so this one always compares equal.
#[derive(Clone, Default)]
pub struct ParsedOptions(pub Option<Arc<dyn ListenOptions>>);

impl PartialEq for ParsedOptions {
    fn eq(&self, _: &ParsedOptions) -> bool {
        true
    }
}

impl fmt::Debug for ParsedOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(o) => o.fmt(f),
            None => f.write_str("(not parsed)"),
        }
    }
}
