//! HMAC-SHA256 and the constant-time comparison of candidate signatures against it.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use super::SIGNATURES_MAX;

/// Bytes in an HMAC-SHA256 tag.
pub(crate) const MAC_BYTES: usize = 32;

/// One HMAC-SHA256 tag.
pub(crate) type Tag = [u8; MAC_BYTES];

/// Standard base64 alphabet that accepts input with or without `=` padding. Senders differ on
/// padding (secrets especially), and padding carries no information.
pub(crate) const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// HMAC-SHA256 of the concatenation of `parts` under `key`. Parts avoid building the signed
/// string (`"{t}.{body}"`...) in a fresh buffer for every request.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Tag {
    // HMAC is defined for keys of every length (long keys are hashed, short ones padded), so
    // this cannot fail whatever the input.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The candidate signatures of one request, decoded, at most [`SIGNATURES_MAX`] of them.
/// A fixed array, so parsing a header never allocates.
pub(super) struct Candidates {
    tags: [Tag; SIGNATURES_MAX],
    len: usize,
}

impl Candidates {
    pub(super) fn new() -> Self {
        Candidates {
            tags: [[0; MAC_BYTES]; SIGNATURES_MAX],
            len: 0,
        }
    }

    /// Adds a candidate; once [`SIGNATURES_MAX`] are held, further ones are ignored.
    pub(super) fn push(&mut self, tag: Tag) {
        if let Some(slot) = self.tags.get_mut(self.len) {
            *slot = tag;
            self.len += 1;
        }
    }

    /// Adds the candidate if `hex` is exactly 64 hex digits (either case); otherwise it is not
    /// a signature of ours and is skipped.
    ///
    /// hex-simd decodes without a branch per digit: the `hex` crate's digit-or-letter branch
    /// mispredicted on every other digit of a random signature (0.4 µs a request on a Zen 1).
    pub(super) fn push_hex(&mut self, hex: &[u8]) {
        let mut tag = [0; MAC_BYTES];
        if hex.len() == 2 * MAC_BYTES
            && hex_simd::decode(hex, hex_simd::Out::from_slice(&mut tag)).is_ok()
        {
            self.push(tag);
        }
    }

    /// Adds the candidate if `b64` is base64 of exactly 32 bytes; otherwise it is skipped.
    pub(super) fn push_base64(&mut self, b64: &[u8]) {
        let mut tag = [0; MAC_BYTES];
        // 32 bytes are 44 base64 characters (43 without padding): anything longer cannot be a
        // tag, and checking first keeps `decode_slice` from writing past `tag`.
        if b64.len() <= 44 && BASE64_LENIENT.decode_slice(b64, &mut tag) == Ok(MAC_BYTES) {
            self.push(tag);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[Tag] {
        self.tags.get(..self.len).unwrap_or(&[])
    }

    /// Whether any candidate equals `expected`. Every candidate is compared, in constant time,
    /// so the time taken says nothing about which one (or how much of one) matched.
    pub(super) fn contains(&self, expected: &Tag) -> Choice {
        self.as_slice()
            .iter()
            .fold(Choice::from(0), |found, candidate| {
                found | candidate.ct_eq(expected)
            })
    }
}

/// Whether any of `candidates` is the MAC of `parts` under any of `secrets`, each secret turned
/// into an HMAC key by `key_of`. Every secret is tried (no early exit); empty secrets are
/// skipped because they never verify.
pub(super) fn any_secret_matches(
    secrets: &[&[u8]],
    key_of: impl Fn(&[u8]) -> std::borrow::Cow<'_, [u8]>,
    parts: &[&[u8]],
    candidates: &Candidates,
) -> bool {
    let found = secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(Choice::from(0), |found, secret| {
            found | candidates.contains(&hmac_sha256(&key_of(secret), parts))
        });
    bool::from(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_of_parts_equals_hmac_of_their_concatenation() {
        // RFC 4231 test case 2.
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn candidates_keep_at_most_signatures_max() {
        let mut candidates = Candidates::new();
        for i in 0..SIGNATURES_MAX + 5 {
            candidates.push([u8::try_from(i).expect("small"); MAC_BYTES]);
        }
        assert_eq!(candidates.as_slice().len(), SIGNATURES_MAX);
        let last_kept = u8::try_from(SIGNATURES_MAX - 1).expect("small");
        assert!(bool::from(candidates.contains(&[last_kept; MAC_BYTES])));
        let first_dropped = u8::try_from(SIGNATURES_MAX).expect("small");
        assert!(!bool::from(
            candidates.contains(&[first_dropped; MAC_BYTES])
        ));
    }

    #[test]
    fn malformed_candidates_are_skipped() {
        let mut candidates = Candidates::new();
        candidates.push_hex(b"abc");
        candidates.push_hex(&[b'g'; 64]);
        candidates.push_hex(&[b'a'; 66]);
        candidates.push_base64(b"not base64!");
        candidates.push_base64(b"AAAA");
        candidates.push_base64(&[b'A'; 400]);
        assert!(candidates.is_empty());
        candidates.push_hex(&[b'A'; 64]);
        candidates.push_base64(b"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo=");
        candidates.push_base64(b"qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo");
        assert_eq!(candidates.as_slice().len(), 3);
        assert!(bool::from(candidates.contains(&[0xaa; MAC_BYTES])));
    }
}
