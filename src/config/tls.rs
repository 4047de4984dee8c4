//! `[listen.tls]`: what makes a listener speak TLS. Only the keys live here, as the
//! operator wrote them (paths made absolute like every other path); the files are read
//! and checked by `crate::tls` when the config is loaded, in the master, before any
//! worker forks, and the result is kept in [`TlsLoaded`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Dur;

/// `handshake_timeout` when not set: as long as nginx's `ssl_handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// One listener's TLS settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The default certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The default certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI) among the
    /// DNS names of each certificate's subjectAltName (wildcards included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCert>,
    /// Protocols offered by ALPN, in order of preference (`["h2", "http/1.1"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// The oldest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Verify client certificates against the CAs in this PEM file.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (default) or `"optional"` (a client without a
    /// certificate is served; one with a bad certificate is refused).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// A client must finish its handshake within this (default 60s).
    #[serde(default)]
    pub handshake_timeout: Option<Dur>,
    /// Issue session tickets (keys shared by every worker, rotated by the master).
    #[serde(default = "yes")]
    pub session_tickets: bool,
    /// An idle TLS 1.3 connection gives up its rustls engine for the record layer
    /// alone (the one a moved connection continues on): about 2 KB per connection
    /// instead of 8. A KeyUpdate from the client then ends it with close_notify.
    #[serde(default)]
    pub compact_idle: bool,
    /// What the files held once read and checked (not a config key).
    #[serde(skip)]
    pub loaded: TlsLoaded,
}

fn yes() -> bool {
    true
}

/// An extra certificate for SNI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

/// Whether a client certificate is required (with `client_ca`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// What one certificate says, for the status, the metrics and the expiry warning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// The file it was read from.
    pub file: PathBuf,
    /// The subject, as `CN=…, O=…`.
    pub subject: String,
    /// The DNS names it is valid for (subjectAltName), which SNI chooses among.
    pub names: Vec<String>,
    /// Seconds since the Unix epoch at which it expires (notAfter).
    pub not_after: i64,
}

/// A listener's TLS material as the master loaded it: the rustls configuration that
/// every worker forked with this config serves with, and a summary of each
/// certificate. Compared through the keys it was loaded from, so always equal.
#[derive(Clone, Default)]
pub struct TlsLoaded {
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub certs: Vec<CertSummary>,
    /// What was loaded but deserves the operator's eye (a key file others can read).
    pub warnings: Vec<String>,
}

impl PartialEq for TlsLoaded {
    fn eq(&self, _: &TlsLoaded) -> bool {
        true
    }
}

impl fmt::Debug for TlsLoaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLoaded")
            .field("loaded", &self.server.is_some())
            .field("certs", &self.certs)
            .finish()
    }
}

impl TlsConfig {
    /// How long a client has to finish its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |d| d.0)
    }

    /// Every path in the table, for `resolve_paths`.
    pub(crate) fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        let sni = self.sni.iter_mut().flat_map(|s| [&mut s.cert, &mut s.key]);
        [&mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.client_ca.iter_mut())
            .chain(sni)
    }
}
