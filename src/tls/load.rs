//! Reading and checking a listener's certificates and keys, in the master, at start,
//! `-t` and every reload, before any worker forks: a missing file, an unparsable PEM,
//! a key that does not match its certificate, an expired certificate or an unusable
//! CA file is reported with the key and the file, and a reload that hits one changes
//! nothing. What is read becomes one `rustls::ServerConfig` per listener that every
//! worker forked from this config serves with; workers never open a key file.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::config::tls::{CertSummary, ClientAuth, TlsConfig, TlsLoaded, TlsVersion};

use super::resolve::ByName;
use super::tickets::SharedTicketer;

/// A certificate that expires within this many days is loaded with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Why a listener's TLS material was refused: the key under `[listen.tls]` at fault
/// (`cert`, `sni[1].key`, …) and the reason, which names the file.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadError {
    pub key: String,
    pub reason: String,
}

impl LoadError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> LoadError {
        LoadError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The crypto provider corral's TLS runs on (see `docs/architecture.md` for why aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every file `t` names and builds the configuration workers serve with.
pub fn load(t: &TlsConfig) -> Result<TlsLoaded, LoadError> {
    let provider = provider();
    let now = unix_now();
    let mut certs = Vec::new();
    let mut warnings = Vec::new();
    for (k, path) in std::iter::once(("key".to_string(), &t.key)).chain(
        t.sni
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("sni[{i}].key"), &s.key)),
    ) {
        warnings.extend(key_file_permissions(path, &k)?);
    }
    let (default, summary) = certified(&t.cert, &t.key, "cert", "key", &provider, now)?;
    certs.push(summary.clone());
    let mut by_name = ByName::new(Arc::new(default));
    by_name.add(&summary.names, by_name.default());
    for (i, s) in t.sni.iter().enumerate() {
        let (ck, summary) = certified(
            &s.cert,
            &s.key,
            &format!("sni[{i}].cert"),
            &format!("sni[{i}].key"),
            &provider,
            now,
        )?;
        if summary.names.is_empty() {
            return Err(LoadError::new(
                format!("sni[{i}].cert"),
                format!(
                    "{}: the certificate names no DNS name (subjectAltName), so SNI can never choose it",
                    s.cert.display()
                ),
            ));
        }
        by_name.add(&summary.names, Arc::new(ck));
        certs.push(summary);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| LoadError::new("min_version", e.to_string()))?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(ca)?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = match t.client_auth {
                ClientAuth::Required => v,
                ClientAuth::Optional => v.allow_unauthenticated(),
            };
            let v = v
                .build()
                .map_err(|e| LoadError::new("client_ca", format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(by_name));
    let mut seen = BTreeSet::new();
    for (i, p) in t.alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(LoadError::new(
                format!("alpn[{i}]"),
                "a protocol name is 1 to 255 bytes",
            ));
        }
        if !seen.insert(p) {
            return Err(LoadError::new(format!("alpn[{i}]"), format!("`{p}` twice")));
        }
        server.alpn_protocols.push(p.as_bytes().to_vec());
    }
    if t.session_tickets {
        server.ticketer = SharedTicketer::new();
    }
    // Nothing is sent before the handshake ends that the handler did not write, and
    // the service reads plaintext as a stream: 0-RTT data (replayable) stays off.
    server.max_early_data_size = 0;
    // A TLS 1.3 connection moves at reload and upgrade with its record keys
    // (`session.rs`): rustls gives them only when asked for here.
    server.enable_secret_extraction = true;
    Ok(TlsLoaded {
        server: Some(Arc::new(server)),
        certs,
        warnings,
    })
}

/// A private key file that others can change is refused (whoever can write it can
/// make this server present their key); one that others can read is loaded with a
/// warning (they can read the key).
fn key_file_permissions(path: &Path, key: &str) -> Result<Option<String>, LoadError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| LoadError::new(key, format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o7777;
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("every user"),
        (true, false) => Some("its group"),
        (false, false) => None,
    };
    if let Some(who) = writers {
        return Err(LoadError::new(
            key,
            format!(
                "{} is writable by {who} (mode {mode:04o}): refusing a private key others can replace (chmod go-w)",
                path.display()
            ),
        ));
    }
    Ok((mode & 0o044 != 0).then(|| {
        format!(
            "{key}: the private key {} can be read by {} (mode {mode:04o}); chmod 600 it (workers never read it: the master does)",
            path.display(),
            if mode & 0o004 != 0 { "every user" } else { "its group" }
        )
    }))
}

/// Warnings for certificates that expire soon, with the date, and key files others
/// can read.
pub fn warnings(loaded: &TlsLoaded, listener: usize) -> Vec<String> {
    let now = unix_now();
    let keys = loaded
        .warnings
        .iter()
        .map(move |w| format!("listen[{listener}].tls.{w}"));
    loaded
        .certs
        .iter()
        .filter(|c| c.not_after - now < EXPIRY_WARNING_DAYS * 86_400)
        .map(|c| {
            format!(
                "listen[{listener}].tls: the certificate in {} ({}) expires on {} (in {} days)",
                c.file.display(),
                c.subject,
                date(c.not_after),
                (c.not_after - now).max(0) / 86_400
            )
        })
        .chain(keys)
        .collect()
}

/// One certificate chain and its key, checked against each other and the clock.
fn certified(
    cert: &Path,
    key: &Path,
    cert_key: &str,
    key_key: &str,
    provider: &CryptoProvider,
    now: i64,
) -> Result<(CertifiedKey, CertSummary), LoadError> {
    let chain = read_chain(cert, cert_key)?;
    let der = read_key(key, key_key)?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => LoadError::new(
            key_key,
            format!(
                "{}: the private key does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
        ),
        other => LoadError::new(key_key, format!("{}: {other}", key.display())),
    })?;
    let summary = summarize(cert, &ck.cert[0]).map_err(|e| LoadError::new(cert_key, e))?;
    if summary.not_after < now {
        return Err(LoadError::new(
            cert_key,
            format!(
                "{}: the certificate ({}) expired on {}",
                cert.display(),
                summary.subject,
                date(summary.not_after)
            ),
        ));
    }
    Ok((ck, summary))
}

fn read_file(path: &Path, key: &str) -> Result<Zeroizing<Vec<u8>>, LoadError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| LoadError::new(key, format!("cannot read {}: {e}", path.display())))
}

fn read_chain(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let pem = read_file(path, key)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            LoadError::new(
                key,
                format!("{}: not a PEM certificate: {e}", path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(LoadError::new(
            key,
            format!("{}: no CERTIFICATE block in the file", path.display()),
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, LoadError> {
    let pem = read_file(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block in the file".into(),
            other => format!("not a PEM private key: {other}"),
        };
        LoadError::new(key, format!("{}: {why}", path.display()))
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, LoadError> {
    let mut roots = RootCertStore::empty();
    for c in read_chain(path, "client_ca")? {
        roots
            .add(c)
            .map_err(|e| LoadError::new("client_ca", format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Subject, DNS names and expiry of a leaf certificate.
fn summarize(file: &Path, der: &CertificateDer<'_>) -> Result<CertSummary, String> {
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", file.display()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(CertSummary {
        file: file.to_path_buf(),
        subject: x.subject().to_string(),
        names,
        not_after: x.validity().not_after.timestamp(),
    })
}

/// Now, as a Unix time (what certificates' dates are compared with).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-07` for a Unix time (UTC), for messages.
pub fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_or_else(|_| format!("@{t}"), |d| d.date().to_string())
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_796_601_600), "2026-12-07");
    }
}
