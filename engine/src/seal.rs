//! Encryption at rest with ChaCha20-Poly1305: tenants' payloads under per-tenant data keys, and
//! data keys under the node's master key.
//!
//! This is what makes a GDPR purge real in an append-only log: a tenant's delivery payloads are
//! sealed under its data key, so destroying the key (crypto-shredding) leaves nothing readable
//! behind, without rewriting a single segment.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of the random nonce stored in front of every sealed blob.
pub const NONCE_BYTES: usize = 12;

/// A 256-bit key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_BYTES]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A sealed blob could not be opened: wrong key, or damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot open sealed data: wrong key or damaged")]
pub struct OpenError;

impl SecretKey {
    pub fn generate() -> SecretKey {
        SecretKey(rand::random())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SecretKey> {
        bytes.try_into().ok().map(SecretKey)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// `nonce || ciphertext+tag` of `plaintext`, bound to `context` (authenticated, not stored).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`SecretKey::seal`] made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_BYTES {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_and_refuses_other_keys_contexts_and_damage(msg in proptest::collection::vec(any::<u8>(), 0..512), flip in 0usize..600) {
            let key = SecretKey::generate();
            let sealed = key.seal(&msg, b"ctx");
            prop_assert_eq!(key.open(&sealed, b"ctx").unwrap(), msg);
            prop_assert!(SecretKey::generate().open(&sealed, b"ctx").is_err());
            prop_assert!(key.open(&sealed, b"other").is_err());
            let mut damaged = sealed.clone();
            let i = flip % damaged.len();
            damaged[i] ^= 1;
            prop_assert!(key.open(&damaged, b"ctx").is_err());
        }
    }

    #[test]
    fn short_input_is_an_error() {
        assert_eq!(SecretKey::generate().open(&[1, 2, 3], b""), Err(OpenError));
    }
}
