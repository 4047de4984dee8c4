//! Base64 (standard alphabet, padded) for the byte fields of channel messages.
//!
//! Messages are JSON, where serde writes a `Vec<u8>` as an array of numbers: up to
//! four bytes per byte. A suspended connection's state must fit in one SEQPACKET
//! message next to its neighbours in the batch, so it travels as base64 (4 per 3).

use serde::{Deserialize, Deserializer, Serializer};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of `n` bytes once encoded.
pub fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(bytes.len()));
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return Err(format!(
            "base64 length {} is not a multiple of 4",
            text.len()
        ));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let last = text.len() / 4;
    for (i, chunk) in text.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return Err("base64 with more than two padding characters".into());
        }
        if pad > 0 && i + 1 != last {
            return Err("base64 padding before the end".into());
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            let v = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| format!("invalid base64 character {:?}", char::from(c)))?;
            n = (n << 6) | v as u32;
        }
        // The bits below the last byte must be zero: one spelling per byte string
        // (found by the channel_message fuzz target: `Zm9vYme=` read as `Zm9vYmc=`).
        if n & ((1 << (2 * pad)) - 1) != 0 {
            return Err("base64 with stray bits before its padding".into());
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// `#[serde(with = "b64")]` for a `Vec<u8>`.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    decode(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_and_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        for n in 0..all.len() {
            let e = encode(&all[..n]);
            assert_eq!(e.len(), encoded_len(n));
            assert_eq!(decode(&e).unwrap(), &all[..n]);
        }
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert!(decode("Zm8").is_err());
        assert!(decode("Zm!=").is_err());
    }

    /// Every byte string has one spelling: no padding mid-text, no stray bits.
    #[test]
    fn only_the_canonical_spelling_decodes() {
        assert_eq!(decode("Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(decode("Zm9vYmc=").unwrap(), b"foobg");
        assert!(decode("Zm9vYme=").is_err());
        assert!(decode("Zm9=").is_err());
        assert!(decode("Zg==Zg==").is_err());
        assert!(decode("Zh==").is_err());
    }
}
