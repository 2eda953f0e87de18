//! The Standard Webhooks signature HookRelay puts on what it forwards (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`), and the secrets HookRelay generates.
//!
//! It is not where inbound signatures are checked: that is [`crate::verify`]. The two share one
//! key derivation ([`crate::verify`]'s Standard Webhooks rule), so whatever [`sign`] produces,
//! `verify(Mode::Standard, ..)` accepts with the same secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore as _;

use crate::verify::{Mode, hmac_sha256, standard_key_from_secret};

/// Random bytes in a generated secret. Standard Webhooks asks for 24 to 64; 32 is HMAC-SHA256's
/// own output size.
pub const SECRET_BYTES: usize = 32;

/// The prefix Standard Webhooks puts on symmetric secrets.
pub const SECRET_PREFIX: &str = crate::verify::STANDARD_SECRET_PREFIX;

/// A new signing secret: `whsec_` followed by the padded standard base64 of [`SECRET_BYTES`]
/// bytes from the operating system's CSPRNG (through `rand`'s thread-local generator).
pub fn generate_secret() -> String {
    format!("{SECRET_PREFIX}{}", BASE64.encode(random_bytes()))
}

/// A verification secret for an endpoint created without one.
///
/// - `standard` and `stripe`: `whsec_<base64>` ([`generate_secret`]). Standard mode decodes it
///   to get the key; stripe mode uses the whole string as the key, as Stripe does with its own
///   `whsec_` secrets.
/// - `github`, `shopify`, `slack`, `generic`, `none`: 64 lowercase hex digits (the hex of
///   [`SECRET_BYTES`] random bytes), used as-is as the HMAC key. Hex survives shells, YAML and
///   web forms unquoted, and looks like what Slack and GitHub users already paste. `none` gets
///   one too so that switching the mode later needs no rotation.
///
/// Providers that issue their own secrets (Stripe, Shopify, Slack) will not know a generated
/// one: the tenant then sets theirs with `rotate-secret`.
pub fn generate_verification_secret(mode: Mode) -> String {
    match mode {
        Mode::Standard | Mode::Stripe => generate_secret(),
        Mode::Github | Mode::Shopify | Mode::Slack | Mode::Generic | Mode::None => {
            hex::encode(random_bytes())
        }
    }
}

/// The `webhook-signature` value for one forwarded attempt: `v1,<base64>` per secret, separated
/// by single spaces, in the order given (current first, then the previous one during a rotation
/// window).
///
/// Each secret is turned into a key exactly as inbound `standard` verification does it
/// (`whsec_` + base64 decoded; without the prefix, base64 if it decodes, else the raw bytes).
/// `msg_id` must not contain `.` (the spec's rule; our `dl_<ULID>` ids never do). Empty secrets
/// are skipped, as verification never accepts them; with no usable secret the result is empty.
pub fn sign(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    debug_assert!(
        !secrets.is_empty(),
        "an endpoint always has a signing secret"
    );
    debug_assert!(
        !msg_id.contains('.'),
        "a '.' in the id makes the signed string ambiguous"
    );
    let timestamp = timestamp.to_string();
    let mut header = String::with_capacity(secrets.len() * 48);
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        let key = standard_key_from_secret(secret.as_bytes());
        let tag = hmac_sha256(
            &key,
            &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        BASE64.encode_string(tag, &mut header);
    }
    header
}

fn random_bytes() -> [u8; SECRET_BYTES] {
    let mut bytes = [0; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{SIGNATURES_MAX, VerifyError, verify};
    use proptest::prelude::*;

    fn verify_standard(
        secrets: &[&str],
        msg_id: &str,
        timestamp: i64,
        signature: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let timestamp = timestamp.to_string();
        let headers = [
            ("webhook-id", msg_id.as_bytes()),
            ("webhook-timestamp", timestamp.as_bytes()),
            ("webhook-signature", signature.as_bytes()),
        ];
        let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        let now = timestamp.parse().expect("digits");
        verify(Mode::Standard, &secrets, &headers, body, now, 300).map(|_| ())
    }

    /// Standard Webhooks' published vectors: standard-webhooks/standard-webhooks,
    /// `libraries/rust/src/lib.rs` (`test_sign`) and `libraries/php/tests/WebhookTest.php`
    /// (`testSignFunctionWorks`, also in Svix's docs).
    #[test]
    fn sign_reproduces_the_published_test_vectors() {
        assert_eq!(
            sign(
                &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(
            sign(
                &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#,
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn sign_with_two_secrets_gives_two_space_separated_signatures_in_order() {
        let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let previous = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let both = sign(&[current, previous], "msg_1", 1_000, b"{}");
        let alone = [
            sign(&[current], "msg_1", 1_000, b"{}"),
            sign(&[previous], "msg_1", 1_000, b"{}"),
        ];
        assert_eq!(both, alone.join(" "));
        for secret in [current, previous] {
            assert_eq!(
                verify_standard(&[secret], "msg_1", 1_000, &both, b"{}"),
                Ok(())
            );
        }
    }

    #[test]
    fn empty_secrets_are_skipped() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(
            sign(&["", secret], "msg_1", 1_000, b"{}"),
            sign(&[secret], "msg_1", 1_000, b"{}")
        );
    }

    #[test]
    fn generated_secrets_are_whsec_base64_of_32_random_bytes() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        for secret in [a, b] {
            let encoded = secret.strip_prefix(SECRET_PREFIX).expect("prefix");
            assert_eq!(BASE64.decode(encoded).expect("base64").len(), SECRET_BYTES);
        }
    }

    #[test]
    fn generated_verification_secrets_have_the_documented_shape() {
        for mode in Mode::ALL {
            let secret = generate_verification_secret(mode);
            assert_ne!(secret, generate_verification_secret(mode));
            match mode {
                Mode::Standard | Mode::Stripe => assert!(secret.starts_with(SECRET_PREFIX)),
                _ => {
                    assert_eq!(secret.len(), 2 * SECRET_BYTES);
                    assert!(
                        secret
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    );
                }
            }
        }
    }

    #[test]
    fn sign_output_stays_within_the_verifier_bounds_during_rotation() {
        // Rotation sends at most two signatures; both must be considered by a verifier that
        // caps candidates at SIGNATURES_MAX.
        const _: () = assert!(SIGNATURES_MAX >= 2);
        let header = sign(&[&generate_secret(), &generate_secret()], "dl_01J", 1, b"");
        assert!(header.len() < crate::verify::HEADER_BYTES_MAX);
    }

    fn secret_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 24..=64)
                .prop_map(|key| format!("{SECRET_PREFIX}{}", BASE64.encode(key))),
            "[ -~]{1,80}",
        ]
    }

    proptest! {
        #[test]
        fn sign_output_verifies_with_the_same_secret_and_never_with_another(
            secret in secret_strategy(),
            other in secret_strategy(),
            msg_id in "[A-Za-z0-9_-]{1,40}",
            timestamp in 0i64..=4_102_444_800,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let signature = sign(&[&secret], &msg_id, timestamp, &body);
            prop_assert_eq!(verify_standard(&[&secret], &msg_id, timestamp, &signature, &body), Ok(()));
            // Different strings can name the same key ("AQID" and "whsec_AQID"); only secrets
            // with different keys must fail.
            let same_key = standard_key_from_secret(secret.as_bytes())
                == standard_key_from_secret(other.as_bytes());
            if !same_key {
                prop_assert_eq!(
                    verify_standard(&[&other], &msg_id, timestamp, &signature, &body),
                    Err(VerifyError::Invalid)
                );
            }
        }

        #[test]
        fn sign_output_with_rotation_verifies_with_either_secret(
            current in secret_strategy(),
            previous in secret_strategy(),
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let signature = sign(&[&current, &previous], "dl_01", 1_700_000_000, &body);
            for secret in [&current, &previous] {
                prop_assert_eq!(
                    verify_standard(&[secret], "dl_01", 1_700_000_000, &signature, &body),
                    Ok(())
                );
            }
        }
    }
}
