//! The TLS families of the exposition: handshakes by kind and version, failures by
//! reason, and each certificate's expiry (so an alert can fire before it comes).

use crate::tls::{Failure, TlsCounts};

use super::expo::{Expo, Kind};
use super::Master;

impl Master {
    pub(super) fn tls_metrics(&self, e: &mut Expo, t: &TlsCounts) {
        let c = Kind::Counter;
        e.family(
            "corral_tls_handshakes_total",
            c,
            "TLS handshakes that finished: kind = full or resumed (a session ticket).",
        );
        for (kind, v) in [("full", t.full), ("resumed", t.resumed)] {
            e.sample("corral_tls_handshakes_total", &[("kind", kind)], v as f64);
        }
        e.family(
            "corral_tls_protocol_total",
            c,
            "TLS handshakes that finished, by protocol version.",
        );
        for (version, v) in [("TLSv1.3", t.tls13), ("TLSv1.2", t.tls12)] {
            e.sample(
                "corral_tls_protocol_total",
                &[("version", version)],
                v as f64,
            );
        }
        e.family(
            "corral_tls_failures_total",
            c,
            "TLS connections that failed, by reason: no_shared_cipher, bad_certificate, protocol_version, timeout (handshake_timeout), malformed (not TLS, a bad record), other; after a move: moved_key_update (closed with close_notify), moved_bad_record, moved_alert.",
        );
        for f in Failure::ALL {
            e.sample(
                "corral_tls_failures_total",
                &[("reason", f.label())],
                t.failures(f) as f64,
            );
        }
        e.family(
            "corral_tls_moves_total",
            c,
            "TLS connections whose record layer moved to another worker at a reload or upgrade: direction = out (suspended here) or in (continued here).",
        );
        for (d, v) in [("out", t.moved_out), ("in", t.moved_in)] {
            e.sample("corral_tls_moves_total", &[("direction", d)], v as f64);
        }
        e.family(
            "corral_tls_certificate_expiry_timestamp_seconds",
            Kind::Gauge,
            "When a loaded certificate expires (notAfter), as a Unix time.",
        );
        for l in &self.config.listen {
            let Some(tls) = &l.tls else { continue };
            let listen = l.address.to_string();
            for cert in &tls.loaded.certs {
                let file = cert.file.display().to_string();
                e.sample(
                    "corral_tls_certificate_expiry_timestamp_seconds",
                    &[
                        ("listen", &listen),
                        ("file", &file),
                        ("subject", &cert.subject),
                    ],
                    cert.not_after as f64,
                );
            }
        }
    }
}
