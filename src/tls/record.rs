//! The TLS 1.3 record layer, continued after a move (RFC 8446 §5).
//!
//! When a TLS connection moves to another worker, its handshake is over and what is
//! left of it is the record layer: for each direction an AEAD key, a static IV and a
//! sequence number (rustls's `dangerous_extract_secrets` gives exactly these). The
//! receiving worker protects and opens records with them here, with aws-lc-rs's
//! AEAD (the implementation rustls itself uses): no cryptography is written in this
//! file, only the record framing RFC 8446 defines around the AEAD:
//!
//! - a record is `type(23) ‖ 0x0303 ‖ length(u16) ‖ AEAD(inner)`, at most 2^14 + 256
//!   bytes of ciphertext; `inner = content ‖ content type ‖ zero padding`;
//! - the nonce is the IV XOR the 64-bit sequence number (big endian, left-padded);
//! - the additional data is the record's 5-byte header.
//!
//! # Why a nonce never repeats
//!
//! Each direction's sequence number starts where rustls left it (extracted with the
//! keys, never reset), is incremented after every record sealed or opened, and
//! travels with the keys when the connection moves again. A record is sealed only
//! by the one worker that holds the connection; a worker that suspends it stops
//! using the keys before they leave (its engine is consumed), and a move that is
//! refused comes back with the same numbers, untouched: the receiver refuses before
//! it seals or opens anything. A direction that reaches [`RECORD_LIMIT`] records (RFC
//! 8446 §5.5's bound for AES-GCM under one key) ends the connection with close_notify,
//! long before a sequence number could wrap.
//!
//! # What cannot be continued
//!
//! A handshake message after the move (a KeyUpdate, whose next key derives from a
//! traffic secret that is not carried; a post-handshake certificate request) ends
//! the connection with `close_notify`; an alert from the client is honoured (its
//! `close_notify` is an end of stream, anything else an error); a record that does
//! not decrypt gets `bad_record_mac`, one that is malformed `decode_error` or
//! `unexpected_message`, and a close. Each case is reported to the caller, which
//! counts it.

use aws_lc_rs::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
    NONCE_LEN,
};
use zeroize::Zeroizing;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;
const CHANGE_CIPHER_SPEC: u8 = 20;

/// Alert descriptions we send or read.
pub const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;

/// Largest plaintext in one record, and largest ciphertext (RFC 8446 §5.2).
pub const MAX_PLAINTEXT: usize = 1 << 14;
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
pub const HEADER: usize = 5;
/// Most records one direction may carry under one key here (see `next_nonce`).
pub const RECORD_LIMIT: u64 = 1 << 24;
const TAG: usize = 16;

/// The TLS 1.3 cipher suites a moved connection can continue with, by IANA number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    /// The suite with this IANA number (`0x1301`..`0x1303`).
    pub fn from_iana(n: u16) -> Option<Suite> {
        match n {
            0x1301 => Some(Suite::Aes128Gcm),
            0x1302 => Some(Suite::Aes256Gcm),
            0x1303 => Some(Suite::Chacha20Poly1305),
            _ => None,
        }
    }

    pub fn iana(self) -> u16 {
        match self {
            Suite::Aes128Gcm => 0x1301,
            Suite::Aes256Gcm => 0x1302,
            Suite::Chacha20Poly1305 => 0x1303,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "TLS13_AES_128_GCM_SHA256",
            Suite::Aes256Gcm => "TLS13_AES_256_GCM_SHA384",
            Suite::Chacha20Poly1305 => "TLS13_CHACHA20_POLY1305_SHA256",
        }
    }

    fn algorithm(self) -> &'static Algorithm {
        match self {
            Suite::Aes128Gcm => &AES_128_GCM,
            Suite::Aes256Gcm => &AES_256_GCM,
            Suite::Chacha20Poly1305 => &CHACHA20_POLY1305,
        }
    }
}

/// One direction: its key, IV and next sequence number.
pub struct Direction {
    key: LessSafeKey,
    /// The key's bytes, to travel again if the connection moves on.
    key_bytes: Zeroizing<Vec<u8>>,
    iv: Zeroizing<[u8; NONCE_LEN]>,
    /// The next record's sequence number.
    pub seq: u64,
}

impl Direction {
    /// A direction from its secrets; None if the key has the wrong length for the
    /// suite or the IV is not 12 bytes.
    pub fn new(suite: Suite, key: &[u8], iv: &[u8], seq: u64) -> Option<Direction> {
        let aead = LessSafeKey::new(UnboundKey::new(suite.algorithm(), key).ok()?);
        let mut v = Zeroizing::new([0u8; NONCE_LEN]);
        if iv.len() != NONCE_LEN {
            return None;
        }
        v.copy_from_slice(iv);
        Some(Direction {
            key: aead,
            key_bytes: Zeroizing::new(key.to_vec()),
            iv: v,
            seq,
        })
    }

    /// The key and IV, to hand on with `seq`.
    pub fn secrets(&self) -> (&[u8], &[u8]) {
        (&self.key_bytes, &self.iv[..])
    }

    /// The nonce of the record numbered `self.seq`, which is then used up.
    fn next_nonce(&mut self) -> Result<Nonce, Failure> {
        let seq = self.seq;
        // RFC 8446 §5.5: at most 2^24.5 AES-GCM records under one key. rustls would
        // send a KeyUpdate before that; the secret that derives the next key did not
        // travel, so a continued connection ends (close_notify) at 2^24 records in
        // either direction instead. The same bound for ChaCha20-Poly1305 costs nothing.
        if seq >= RECORD_LIMIT {
            return Err(Failure::SequenceExhausted);
        }
        self.seq = seq + 1;
        let mut n = *self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// Why a continued connection cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A record that did not authenticate (tampered, or keys out of step).
    BadRecordMac,
    /// A header or inner plaintext that is not a valid TLS 1.3 record.
    Malformed,
    /// A handshake message (KeyUpdate, …): its keys cannot be derived here.
    Handshake,
    /// The client sent an alert other than close_notify.
    Alert(u8),
    /// The sequence number would wrap.
    SequenceExhausted,
}

impl Failure {
    /// The alert this side sends before closing, if any (`close_notify` for the
    /// cases that are not the client's fault).
    pub fn alert(self) -> Option<u8> {
        match self {
            Failure::BadRecordMac => Some(BAD_RECORD_MAC),
            Failure::Malformed => Some(DECODE_ERROR),
            Failure::Handshake | Failure::SequenceExhausted => Some(CLOSE_NOTIFY),
            Failure::Alert(_) => None,
        }
    }
}

/// What one record held.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: this many plaintext bytes, at the start of the buffer.
    Data(usize),
    /// The client's close_notify: the end of its stream.
    CloseNotify,
}

/// How long the record starting at `buf` is (header included), if `buf` holds its
/// header; an error for a header no TLS 1.3 peer sends after the handshake.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, Failure> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let typ = buf[0];
    if typ != APPLICATION_DATA && typ != ALERT && typ != CHANGE_CIPHER_SPEC && typ != HANDSHAKE {
        return Err(Failure::Malformed);
    }
    if buf[1] != 0x03 {
        return Err(Failure::Malformed);
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(Failure::Malformed);
    }
    Ok(Some(HEADER + len))
}

/// Opens the whole record in `rec` (from [`record_len`]) in place; the plaintext
/// is left at the start of `rec`.
pub fn open(rx: &mut Direction, rec: &mut [u8]) -> Result<Opened, Failure> {
    if rec[0] != APPLICATION_DATA {
        // After the handshake every record is protected: a plaintext alert,
        // handshake or change_cipher_spec record here is a protocol violation.
        return Err(Failure::Malformed);
    }
    let (header, body) = rec.split_at_mut(HEADER);
    if body.len() < TAG + 1 {
        return Err(Failure::Malformed);
    }
    let nonce = rx.next_nonce()?;
    let aad: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
    let plain = rx
        .key
        .open_in_place(nonce, Aad::from(aad), body)
        .map_err(|_| Failure::BadRecordMac)?;
    // The content type is the last non-zero byte; zeros after it are padding.
    let Some(end) = plain.iter().rposition(|&b| b != 0) else {
        return Err(Failure::Malformed);
    };
    if end > MAX_PLAINTEXT {
        return Err(Failure::Malformed);
    }
    let typ = plain[end];
    match typ {
        APPLICATION_DATA => {
            rec.copy_within(HEADER..HEADER + end, 0);
            Ok(Opened::Data(end))
        }
        ALERT if end == 2 && plain[1] == CLOSE_NOTIFY => Ok(Opened::CloseNotify),
        ALERT if end == 2 => Err(Failure::Alert(plain[1])),
        HANDSHAKE => Err(Failure::Handshake),
        _ => Err(Failure::Malformed),
    }
}

/// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as one record of `typ`,
/// appended to `out`.
pub fn seal(tx: &mut Direction, typ: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
    debug_assert!(plain.len() <= MAX_PLAINTEXT);
    let nonce = tx.next_nonce()?;
    let len = plain.len() + 1 + TAG;
    let header = [
        APPLICATION_DATA,
        0x03,
        0x03,
        (len >> 8) as u8,
        (len & 0xff) as u8,
    ];
    let start = out.len();
    out.extend_from_slice(&header);
    out.extend_from_slice(plain);
    out.push(typ);
    let mut body = out.split_off(start + HEADER);
    let sealed = tx
        .key
        .seal_in_place_append_tag(nonce, Aad::from(header), &mut body);
    if sealed.is_err() {
        out.truncate(start);
        return Err(Failure::Malformed);
    }
    out.extend_from_slice(&body);
    Ok(())
}

/// An alert record (level fatal unless it is close_notify, which is a warning).
pub fn seal_alert(tx: &mut Direction, description: u8, out: &mut Vec<u8>) -> Result<(), Failure> {
    let level = if description == CLOSE_NOTIFY { 1 } else { 2 };
    seal(tx, ALERT, &[level, description], out)
}

/// Names for alert numbers, for messages.
pub fn alert_name(d: u8) -> &'static str {
    match d {
        CLOSE_NOTIFY => "close_notify",
        UNEXPECTED_MESSAGE => "unexpected_message",
        BAD_RECORD_MAC => "bad_record_mac",
        RECORD_OVERFLOW => "record_overflow",
        DECODE_ERROR => "decode_error",
        _ => "alert",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite) -> (Direction, Direction) {
        let key = vec![7u8; suite.algorithm().key_len()];
        let iv = [9u8; NONCE_LEN];
        (
            Direction::new(suite, &key, &iv, 5).unwrap(),
            Direction::new(suite, &key, &iv, 5).unwrap(),
        )
    }

    #[test]
    fn records_round_trip_in_every_suite_and_sequence_numbers_advance() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut tx, mut rx) = pair(suite);
            let mut wire = Vec::new();
            seal(&mut tx, APPLICATION_DATA, b"hello", &mut wire).unwrap();
            seal(&mut tx, APPLICATION_DATA, b"again", &mut wire).unwrap();
            assert_eq!(tx.seq, 7);
            let n = record_len(&wire).unwrap().unwrap();
            let (first, second) = wire.split_at_mut(n);
            assert_eq!(open(&mut rx, first), Ok(Opened::Data(5)));
            assert_eq!(&first[..5], b"hello");
            assert_eq!(open(&mut rx, second), Ok(Opened::Data(5)));
            assert_eq!(&second[..5], b"again");
            assert_eq!(rx.seq, 7);
        }
    }

    #[test]
    fn a_tampered_or_reordered_record_does_not_open() {
        let (mut tx, mut rx) = pair(Suite::Aes128Gcm);
        let mut a = Vec::new();
        seal(&mut tx, APPLICATION_DATA, b"one", &mut a).unwrap();
        let mut b = Vec::new();
        seal(&mut tx, APPLICATION_DATA, b"two", &mut b).unwrap();
        // Out of order: the receiver expects sequence 5, this is 6.
        assert_eq!(open(&mut rx, &mut b.clone()), Err(Failure::BadRecordMac));
        let (mut _tx, mut rx) = pair(Suite::Aes128Gcm);
        let mut t = a.clone();
        t[7] ^= 1;
        assert_eq!(open(&mut rx, &mut t), Err(Failure::BadRecordMac));
        let (mut _tx, mut rx) = pair(Suite::Aes128Gcm);
        let mut h = a.clone();
        h[4] ^= 1; // the header is authenticated too
        assert!(open(&mut rx, &mut h).is_err());
    }

    #[test]
    fn alerts_and_handshake_messages_are_told_apart() {
        let (mut tx, mut rx) = pair(Suite::Chacha20Poly1305);
        let mut w = Vec::new();
        seal_alert(&mut tx, CLOSE_NOTIFY, &mut w).unwrap();
        assert_eq!(open(&mut rx, &mut w), Ok(Opened::CloseNotify));
        let mut w = Vec::new();
        seal_alert(&mut tx, BAD_RECORD_MAC, &mut w).unwrap();
        assert_eq!(open(&mut rx, &mut w), Err(Failure::Alert(BAD_RECORD_MAC)));
        let mut w = Vec::new();
        // KeyUpdate(update_not_requested)
        seal(&mut tx, HANDSHAKE, &[24, 0, 0, 1, 0], &mut w).unwrap();
        assert_eq!(open(&mut rx, &mut w), Err(Failure::Handshake));
    }

    #[test]
    fn headers_are_checked_before_anything_is_decrypted() {
        assert_eq!(record_len(&[23, 3, 3, 0]), Ok(None));
        assert_eq!(record_len(&[23, 3, 3, 0, 20]), Ok(Some(25)));
        assert_eq!(record_len(&[99, 3, 3, 0, 20]), Err(Failure::Malformed));
        assert_eq!(record_len(&[23, 3, 3, 0xff, 0xff]), Err(Failure::Malformed));
        let (_, mut rx) = pair(Suite::Aes128Gcm);
        let mut plain_alert = vec![21, 3, 3, 0, 2, 2, 40];
        assert_eq!(open(&mut rx, &mut plain_alert), Err(Failure::Malformed));
        let mut short = vec![23, 3, 3, 0, 3, 1, 2, 3];
        assert_eq!(open(&mut rx, &mut short), Err(Failure::Malformed));
    }

    #[test]
    fn a_key_stops_at_its_record_limit_and_a_sequence_number_never_wraps() {
        let suite = Suite::Aes128Gcm;
        let mut tx = Direction::new(suite, &[1; 16], &[2; 12], RECORD_LIMIT).unwrap();
        let mut w = Vec::new();
        assert_eq!(
            seal(&mut tx, APPLICATION_DATA, b"x", &mut w),
            Err(Failure::SequenceExhausted)
        );
        assert!(w.is_empty());
    }
}
