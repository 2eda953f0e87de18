//! Encryption at rest with ChaCha20-Poly1305: tenants' payloads under per-tenant data keys, and
//! data keys under the node's master key.
//!
//! This is what makes a GDPR purge real in an append-only log: a tenant's delivery payloads are
//! sealed under its data key, so destroying the key (crypto-shredding) leaves nothing readable
//! behind, without rewriting a single segment.

use bytes::{BufMut, BytesMut};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of the random nonce stored in front of every sealed blob.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the Poly1305 tag after the ciphertext.
pub const TAG_BYTES: usize = 16;

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
    /// A fresh random key.
    pub fn generate() -> SecretKey {
        SecretKey(rand::random())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SecretKey> {
        bytes.try_into().ok().map(SecretKey)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// ring's key schedule for ChaCha20 is a copy of the 32 bytes: cheap enough per call.
    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("a 32-byte ChaCha20 key"),
        )
    }

    /// Bytes [`SecretKey::seal`] makes of `plaintext_len` bytes.
    pub const fn sealed_len(plaintext_len: usize) -> usize {
        NONCE_BYTES + plaintext_len + TAG_BYTES
    }

    /// `nonce || ciphertext || tag` of `plaintext`, bound to `context` (authenticated, not
    /// stored). The standard construction (RFC 8439), so blobs sealed by earlier releases (with
    /// the RustCrypto implementation) open unchanged.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(Self::sealed_len(plaintext.len()));
        self.seal_append(&mut out, plaintext, context);
        out.to_vec()
    }

    /// Appends what [`SecretKey::seal`] makes of `plaintext` to `out`, encrypting in place in
    /// `out`'s own memory: one copy of the plaintext, no temporary buffer (the ingest path seals
    /// every payload this way straight into its log record).
    pub fn seal_append(&self, out: &mut BytesMut, plaintext: &[u8], context: &[u8]) {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        out.reserve(Self::sealed_len(plaintext.len()));
        out.put_slice(&nonce);
        let start = out.len();
        out.put_slice(plaintext);
        let tag = self
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut out[start..],
            )
            .expect("ChaCha20-Poly1305 sealing fails only past 256 GiB");
        out.put_slice(tag.as_ref());
    }

    /// Opens what [`SecretKey::seal`] made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut buf = ct.to_vec();
        let plain_len = self
            .aead()
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| OpenError)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
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

    /// RFC 8439 §2.8.2: the AEAD test vector, so the format stays the standard one whatever
    /// implementation seals (records written by earlier releases must keep opening).
    #[test]
    fn opens_the_rfc_8439_test_vector() {
        let key = SecretKey::from_bytes(
            &hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap(),
        )
        .unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut sealed = hex::decode("070000004041424344454647").unwrap();
        sealed.extend(
            hex::decode(concat!(
                "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
                "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
                "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
                "3ff4def08e4b7a9de576d26586cec64b6116",
                "1ae10b594f09e26a7e902ecbd0600691",
            ))
            .unwrap(),
        );
        assert_eq!(key.open(&sealed, &aad).unwrap(), plaintext);
    }

    #[test]
    fn seal_append_matches_seal_and_keeps_what_was_there() {
        let key = SecretKey::generate();
        let mut out = BytesMut::from(&b"head"[..]);
        key.seal_append(&mut out, b"payload", b"ctx");
        assert_eq!(&out[..4], b"head");
        assert_eq!(out.len(), 4 + SecretKey::sealed_len(7));
        assert_eq!(key.open(&out[4..], b"ctx").unwrap(), b"payload");
    }

    #[test]
    fn short_input_is_an_error() {
        assert_eq!(SecretKey::generate().open(&[1, 2, 3], b""), Err(OpenError));
    }
}
