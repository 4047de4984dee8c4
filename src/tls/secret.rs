//! Key material in transit (ticket keys, a moved connection's record keys): zeroized
//! when dropped, never shown by `Debug`, serialised as plain bytes for the private
//! channels it crosses.

use zeroize::Zeroizing;

/// Key material on its way to a worker or a new master: zeroized when dropped,
/// never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(Zeroizing<Vec<u8>>);

impl serde::Serialize for KeyBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for KeyBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(|v| KeyBytes(Zeroizing::new(v)))
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(redacted)")
    }
}

impl KeyBytes {
    pub fn from_slice(b: &[u8]) -> KeyBytes {
        KeyBytes(Zeroizing::new(b.to_vec()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}
