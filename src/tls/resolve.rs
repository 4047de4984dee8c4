//! Choosing a certificate by the name a client asks for (SNI): exact names first,
//! then a wildcard for the name's parent (`*.example.com` covers `a.example.com`, not
//! `example.com` nor `a.b.example.com`), else the listener's default certificate. The
//! names are the DNS names in each certificate's subjectAltName, taken at load.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A listener's certificates by name.
#[derive(Debug)]
pub struct ByName {
    default: Arc<CertifiedKey>,
    /// Lowercase names, wildcards kept as written (`*.example.com`). The first
    /// certificate to claim a name keeps it (the default is added first).
    names: HashMap<String, Arc<CertifiedKey>>,
}

impl ByName {
    pub fn new(default: Arc<CertifiedKey>) -> ByName {
        ByName {
            default,
            names: HashMap::new(),
        }
    }

    pub fn default(&self) -> Arc<CertifiedKey> {
        self.default.clone()
    }

    /// Makes `ck` the certificate for each of `names` not claimed yet.
    pub fn add(&mut self, names: &[String], ck: Arc<CertifiedKey>) {
        for n in names {
            self.names
                .entry(n.to_ascii_lowercase())
                .or_insert_with(|| ck.clone());
        }
    }

    /// The certificate for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(ck) = self.names.get(&name) {
            return ck.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.names.get(&format!("*.{parent}")) {
                return ck.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(tag: u8) -> Arc<CertifiedKey> {
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(
            &rustls_pki_types::PrivateKeyDer::Pkcs8(
                rcgen::KeyPair::generate().unwrap().serialize_der().into(),
            ),
        )
        .unwrap();
        Arc::new(CertifiedKey::new(vec![vec![tag].into()], key))
    }

    #[test]
    fn exact_then_one_level_wildcard_then_default() {
        let (d, a, w) = (ck(0), ck(1), ck(2));
        let mut b = ByName::new(d.clone());
        b.add(&["a.example.com".into()], a.clone());
        b.add(&["*.example.com".into(), "a.example.com".into()], w.clone());
        let tag = |c: Arc<CertifiedKey>| c.cert[0].as_ref()[0];
        assert_eq!(tag(b.pick(Some("a.example.com"))), 1);
        assert_eq!(tag(b.pick(Some("A.Example.COM."))), 1);
        assert_eq!(tag(b.pick(Some("b.example.com"))), 2);
        assert_eq!(tag(b.pick(Some("x.b.example.com"))), 0);
        assert_eq!(tag(b.pick(Some("example.com"))), 0);
        assert_eq!(tag(b.pick(None)), 0);
    }
}
