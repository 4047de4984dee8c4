//! A TLS connection's record-layer state as it travels to another worker with its
//! socket: the suite, each direction's key, IV and next sequence number, the
//! ciphertext already read and not yet opened, and what the handshake settled (for
//! `Io::tls` on the other side). It crosses only the master↔worker channels (and,
//! at an upgrade, the masters' socketpair); its key material is zeroized when it is
//! dropped and `Debug` never shows it.

use serde::{Deserialize, Serialize};

use crate::channel::b64;

use super::info::TlsInfo;
use super::record::{Direction, Suite};
use super::tickets::KeyBytes;

/// The format of [`TlsMoved`]; a receiver refuses one it does not know (the
/// connection then goes back to its worker).
pub const TLS_STATE_VERSION: u32 = 1;

/// One direction in transit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedDirection {
    pub key: KeyBytes,
    pub iv: KeyBytes,
    pub seq: u64,
}

/// A suspended TLS connection's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMoved {
    pub version: u32,
    /// IANA number of the TLS 1.3 suite.
    pub suite: u16,
    /// Server to client.
    pub tx: MovedDirection,
    /// Client to server.
    pub rx: MovedDirection,
    /// Ciphertext read from the socket and not opened yet (part of a record).
    #[serde(default, with = "b64")]
    pub pending: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    #[serde(default)]
    pub resumed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub peer_certificate: Option<Vec<u8>>,
}

impl TlsMoved {
    pub fn direction(d: &Direction) -> MovedDirection {
        let (key, iv) = d.secrets();
        MovedDirection {
            key: KeyBytes::from_slice(key),
            iv: KeyBytes::from_slice(iv),
            seq: d.seq,
        }
    }

    /// What a handler of the receiving worker sees with `Io::tls`.
    pub fn info(&self, suite: Suite) -> TlsInfo {
        TlsInfo {
            sni: self.sni.clone(),
            alpn: self.alpn.as_ref().map(|a| a.as_bytes().to_vec()),
            version: "TLSv1.3",
            cipher: suite.name(),
            resumed: self.resumed,
            peer_certificate: self.peer_certificate.clone(),
        }
    }

    /// Bytes it adds to a channel message (base64 and JSON overhead).
    pub fn weight(&self) -> usize {
        b64::encoded_len(self.pending.len())
            + self
                .peer_certificate
                .as_ref()
                .map_or(0, |c| b64::encoded_len(c.len()))
            + self.sni.as_ref().map_or(0, String::len)
            + 512
    }
}

mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&crate::channel::b64::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(t) => crate::channel::b64::decode(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
