//! Session-ticket keys that every worker shares, so that a ticket issued by one worker
//! resumes on any other, after a reload, and after a binary upgrade.
//!
//! rustls's own ticketer makes its keys per process and rotates them on its own, so
//! two workers would never accept each other's tickets. Here the master makes the
//! keys (from the system's random source, through aws-lc-rs, the crate rustls uses for its
//! cryptography), every worker forked from it starts with them, and at each rotation
//! the master sends the new key to every worker. A ticket is sealed with the current
//! key and opened with the current or the previous one, so a ticket lives between one
//! and two rotation periods.
//!
//! The format of a ticket: key id (4 bytes) ‖ nonce (12 random bytes) ‖
//! ChaCha20-Poly1305(plain), with the key id as associated data. A random 96-bit nonce
//! is safe for the number of tickets one key seals in a rotation period (far below
//! 2^32). Key bytes are zeroized when a key is dropped and never logged; `Debug` shows
//! the id only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub use super::secret::KeyBytes;

/// The bytes of one key and its id.
#[derive(Clone)]
pub struct TicketKey {
    id: [u8; 4],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey({:02x?})", self.id)
    }
}

impl KeyBytes {
    pub fn of(k: &TicketKey) -> KeyBytes {
        KeyBytes::from_slice(&k.to_bytes())
    }

    pub fn key(&self) -> Option<TicketKey> {
        TicketKey::from_bytes(self.bytes())
    }
}

impl TicketKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<TicketKey, aws_lc_rs::error::Unspecified> {
        let rng = SystemRandom::new();
        let mut key = TicketKey {
            id: [0; 4],
            key: Zeroizing::new([0; 32]),
        };
        rng.fill(&mut key.id)?;
        rng.fill(key.key.as_mut())?;
        Ok(key)
    }

    /// The key as 36 bytes (id, then key), to travel to a worker or a new master over
    /// a private channel. The caller zeroizes what it made of them.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(36));
        v.extend_from_slice(&self.id);
        v.extend_from_slice(self.key.as_ref());
        v
    }

    /// The inverse of [`TicketKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<TicketKey> {
        if b.len() != 36 {
            return None;
        }
        let mut key = TicketKey {
            id: [0; 4],
            key: Zeroizing::new([0; 32]),
        };
        key.id.copy_from_slice(&b[..4]);
        key.key.copy_from_slice(&b[4..]);
        Some(key)
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, self.key.as_ref())
            .ok()
            .map(LessSafeKey::new)
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(4 + NONCE_LEN);
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(4)?;
        if id != self.id {
            return None;
        }
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(self.id), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Every key in force, as a new master of an upgrade receives them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeysWire {
    pub current: KeyBytes,
    pub previous: Option<KeyBytes>,
    pub rotation_secs: u64,
}

impl KeysWire {
    /// This process's keys, to hand on; None if it has none.
    pub fn snapshot() -> Option<KeysWire> {
        let k = keys();
        let k = k.as_ref()?;
        Some(KeysWire {
            current: KeyBytes::of(&k.current),
            previous: k.previous.as_ref().map(KeyBytes::of),
            rotation_secs: k.rotation.as_secs(),
        })
    }

    /// Puts these keys in force in this process; false if they do not decode.
    pub fn install(&self) -> bool {
        let Some(current) = self.current.key() else {
            return false;
        };
        let previous = self.previous.as_ref().and_then(KeyBytes::key);
        install(TicketKeys {
            current,
            previous,
            rotation: Duration::from_secs(self.rotation_secs.max(1)),
        });
        true
    }
}

/// The keys in force: the one that seals, and the one before it, which still opens.
#[derive(Clone, Debug)]
pub struct TicketKeys {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
    /// How often they rotate (the tickets' lifetime hint is twice this).
    pub rotation: Duration,
}

impl TicketKeys {
    /// A new current key; the current one becomes the previous.
    pub fn rotate(&mut self, fresh: TicketKey) {
        self.previous = Some(std::mem::replace(&mut self.current, fresh));
    }
}

/// This process's keys: the master's, or the copy a worker forked with and updates at
/// every rotation. A process with none issues no tickets.
static KEYS: Mutex<Option<TicketKeys>> = Mutex::new(None);

fn keys() -> std::sync::MutexGuard<'static, Option<TicketKeys>> {
    KEYS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts `k` in force in this process.
fn install(k: TicketKeys) {
    *keys() = Some(k);
}

/// Makes the keys this process starts with, unless it has some already (a new master
/// of an upgrade got its predecessor's).
pub fn ensure(rotation: Duration) -> Result<(), aws_lc_rs::error::Unspecified> {
    let mut k = keys();
    match k.as_mut() {
        Some(k) => k.rotation = rotation,
        None => {
            *k = Some(TicketKeys {
                current: TicketKey::generate()?,
                previous: None,
                rotation,
            })
        }
    }
    Ok(())
}

/// The rotation period in force (the tickets' lifetime hint follows it).
pub fn set_rotation(every: Duration) {
    if let Some(k) = keys().as_mut() {
        k.rotation = every;
    }
}

/// A rotation: `fresh` (the master's new key, in a worker) becomes the current key.
pub fn rotate_to(fresh: TicketKey) {
    if let Some(k) = keys().as_mut() {
        k.rotate(fresh);
    }
}

/// The master's half of a rotation: a new key, in force here, to send to workers.
pub fn rotate_new() -> Result<KeyBytes, aws_lc_rs::error::Unspecified> {
    let fresh = TicketKey::generate()?;
    let bytes = KeyBytes::of(&fresh);
    rotate_to(fresh);
    Ok(bytes)
}

/// The rustls ticketer over this process's keys.
#[derive(Debug)]
pub struct SharedTicketer;

impl SharedTicketer {
    pub fn new() -> Arc<SharedTicketer> {
        Arc::new(SharedTicketer)
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        keys().is_some()
    }

    fn lifetime(&self) -> u32 {
        keys().as_ref().map_or(0, |k| {
            u32::try_from(k.rotation.as_secs() * 2).unwrap_or(u32::MAX)
        })
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        keys().as_ref()?.current.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let k = keys();
        let k = k.as_ref()?;
        k.current
            .open(cipher)
            .or_else(|| k.previous.as_ref().and_then(|p| p.open(cipher)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_key_and_not_with_another_or_altered() {
        let a = TicketKey::generate().unwrap();
        let b = TicketKey::generate().unwrap();
        let t = a.seal(b"session state").unwrap();
        assert_eq!(a.open(&t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(b.open(&t), None);
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(a.open(&bad), None, "flipped byte {i} still opened");
        }
        assert_eq!(a.open(&t[..t.len() - 1]), None);
        assert_eq!(a.open(&[]), None);
    }

    #[test]
    fn two_seals_differ_and_keys_round_trip_as_bytes() {
        let a = TicketKey::generate().unwrap();
        assert_ne!(a.seal(b"x"), a.seal(b"x"), "nonces must differ");
        let back = TicketKey::from_bytes(&a.to_bytes()).unwrap();
        let t = a.seal(b"y").unwrap();
        assert_eq!(back.open(&t).as_deref(), Some(&b"y"[..]));
        assert!(TicketKey::from_bytes(&[0; 35]).is_none());
        assert!(!format!("{a:?}").contains(&format!("{:?}", &a.key[..4])));
        assert_eq!(format!("{:?}", KeyBytes::of(&a)), "KeyBytes(redacted)");
    }

    #[test]
    fn after_a_rotation_the_previous_key_still_opens_and_the_one_before_does_not() {
        let first = TicketKey::generate().unwrap();
        let mut k = TicketKeys {
            current: first.clone(),
            previous: None,
            rotation: Duration::from_secs(3600),
        };
        let t = first.seal(b"z").unwrap();
        k.rotate(TicketKey::generate().unwrap());
        assert!(k.previous.as_ref().unwrap().open(&t).is_some());
        k.rotate(TicketKey::generate().unwrap());
        assert!(k.current.open(&t).is_none() && k.previous.as_ref().unwrap().open(&t).is_none());
    }
}
