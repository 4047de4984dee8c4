//! What a worker counts of its TLS connections, sent with every heartbeat: finished
//! handshakes (full or resumed, by version) and failures by reason.

use serde::{Deserialize, Serialize};

/// Why a TLS connection ended before or outside a clean close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedCipher,
    /// A client certificate that is missing or does not verify, or the client refused
    /// ours (its alert said so).
    BadCertificate,
    /// The client offers no version this listener accepts.
    ProtocolVersion,
    /// The handshake did not finish within `handshake_timeout`.
    Timeout,
    /// Not TLS, a malformed or undecryptable record, an unexpected message.
    Malformed,
    /// Anything else (an alert from the client, an internal error).
    Other,
    /// After a move: a handshake message (KeyUpdate), closed with close_notify.
    MovedHandshake,
    /// After a move: a record that did not open (`bad_record_mac`) or is malformed.
    MovedBadRecord,
    /// After a move: the client sent an alert other than close_notify.
    MovedAlert,
}

impl Failure {
    /// Classifies a rustls error.
    pub fn of(e: &rustls::Error) -> Failure {
        use rustls::{AlertDescription as A, Error as E, PeerIncompatible as P};
        match e {
            E::PeerIncompatible(
                P::NoCipherSuitesInCommon
                | P::NoKxGroupsInCommon
                | P::NoSignatureSchemesInCommon
                | P::NoCertificateRequestSignatureSchemesInCommon
                | P::NoEcPointFormatsInCommon,
            ) => Failure::NoSharedCipher,
            E::PeerIncompatible(
                P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::ServerTlsVersionIsDisabledByOurConfig
                | P::ServerDoesNotSupportTls12Or13,
            ) => Failure::ProtocolVersion,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Failure::BadCertificate,
            E::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::UnsupportedCertificate
                | A::CertificateRevoked,
            ) => Failure::BadCertificate,
            E::AlertReceived(A::ProtocolVersion) => Failure::ProtocolVersion,
            E::AlertReceived(A::HandshakeFailure | A::InsufficientSecurity) => {
                Failure::NoSharedCipher
            }
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::DecryptError
            | E::PeerMisbehaved(_) => Failure::Malformed,
            _ => Failure::Other,
        }
    }

    /// The label in metrics and status.
    pub fn label(self) -> &'static str {
        match self {
            Failure::NoSharedCipher => "no_shared_cipher",
            Failure::BadCertificate => "bad_certificate",
            Failure::ProtocolVersion => "protocol_version",
            Failure::Timeout => "timeout",
            Failure::Malformed => "malformed",
            Failure::Other => "other",
            Failure::MovedHandshake => "moved_key_update",
            Failure::MovedBadRecord => "moved_bad_record",
            Failure::MovedAlert => "moved_alert",
        }
    }

    pub const ALL: [Failure; 9] = [
        Failure::NoSharedCipher,
        Failure::BadCertificate,
        Failure::ProtocolVersion,
        Failure::Timeout,
        Failure::Malformed,
        Failure::Other,
        Failure::MovedHandshake,
        Failure::MovedBadRecord,
        Failure::MovedAlert,
    ];
}

/// A worker's TLS counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsCounts {
    /// Full handshakes that finished.
    pub full: u64,
    /// Resumed handshakes (a session ticket) that finished.
    pub resumed: u64,
    /// Finished handshakes by version.
    pub tls13: u64,
    pub tls12: u64,
    /// Failures, by reason (see [`Failure`]).
    pub no_shared_cipher: u64,
    pub bad_certificate: u64,
    pub protocol_version: u64,
    pub timeout: u64,
    pub malformed: u64,
    pub other: u64,
    pub moved_key_update: u64,
    pub moved_bad_record: u64,
    pub moved_alert: u64,
    /// Connections whose record layer moved out to another worker, and in from one.
    pub moved_out: u64,
    pub moved_in: u64,
}

impl TlsCounts {
    pub fn established(&mut self, tls13: bool, resumed: bool) {
        if resumed {
            self.resumed += 1;
        } else {
            self.full += 1;
        }
        if tls13 {
            self.tls13 += 1;
        } else {
            self.tls12 += 1;
        }
    }

    pub fn failed(&mut self, why: Failure) {
        *self.slot(why) += 1;
    }

    pub fn failures(&self, why: Failure) -> u64 {
        match why {
            Failure::NoSharedCipher => self.no_shared_cipher,
            Failure::BadCertificate => self.bad_certificate,
            Failure::ProtocolVersion => self.protocol_version,
            Failure::Timeout => self.timeout,
            Failure::Malformed => self.malformed,
            Failure::Other => self.other,
            Failure::MovedHandshake => self.moved_key_update,
            Failure::MovedBadRecord => self.moved_bad_record,
            Failure::MovedAlert => self.moved_alert,
        }
    }

    fn slot(&mut self, why: Failure) -> &mut u64 {
        match why {
            Failure::NoSharedCipher => &mut self.no_shared_cipher,
            Failure::BadCertificate => &mut self.bad_certificate,
            Failure::ProtocolVersion => &mut self.protocol_version,
            Failure::Timeout => &mut self.timeout,
            Failure::Malformed => &mut self.malformed,
            Failure::Other => &mut self.other,
            Failure::MovedHandshake => &mut self.moved_key_update,
            Failure::MovedBadRecord => &mut self.moved_bad_record,
            Failure::MovedAlert => &mut self.moved_alert,
        }
    }

    /// Adds another worker's counts (for totals).
    pub fn add(&mut self, o: &TlsCounts) {
        self.full += o.full;
        self.resumed += o.resumed;
        self.tls13 += o.tls13;
        self.tls12 += o.tls12;
        self.moved_out += o.moved_out;
        self.moved_in += o.moved_in;
        for f in Failure::ALL {
            *self.slot(f) += o.failures(f);
        }
    }
}
