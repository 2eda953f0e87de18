//! Standard Webhooks (and Svix): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64> [v1,<base64> ...]`; HMAC-SHA256 of
//! `"{id}.{timestamp}.{body}"`; the timestamp must be within the tolerance.
//!
//! Decisions where the contract is silent:
//! - Key: see [`key_from_secret`]. The same function derives the key HookRelay signs with
//!   ([`crate::signing::sign`]), so what we send always verifies here.
//! - Svix's branded headers (`svix-id`, `svix-timestamp`, `svix-signature`) are accepted when
//!   `webhook-signature` is absent, as Svix's own libraries do; the three headers are always
//!   taken from the same family, never mixed.
//! - Signature versions other than `v1` (such as the asymmetric `v1a`) are ignored.

use std::borrow::Cow;

use base64::Engine as _;

use super::mac::{BASE64_LENIENT, Candidates, any_secret_matches};
use super::timestamp::{Window, parse_unix_s};
use super::{HeaderLookup, VerifyError, required_header, split_once};

/// The prefix Standard Webhooks puts on symmetric secrets (re-exported as
/// [`crate::signing::SECRET_PREFIX`]).
pub(crate) const SECRET_PREFIX: &str = "whsec_";

/// One family of the three headers: `[id, timestamp, signature]`.
type Family = [&'static str; 3];
pub(super) const STANDARD_HEADERS: Family =
    ["webhook-id", "webhook-timestamp", "webhook-signature"];
pub(super) const SVIX_HEADERS: Family = ["svix-id", "svix-timestamp", "svix-signature"];

/// The HMAC key for a configured secret.
///
/// `whsec_<base64>` → the decoded bytes, as the spec says. Without the prefix, the whole secret
/// is base64-decoded if it can be (the reference libraries treat the prefix as optional);
/// otherwise — or if the base64 is invalid or decodes to nothing — the secret's raw bytes are the
/// key, so that a plain-text secret still works between HookRelay and a sender who does the same.
/// Padding is optional in both cases. Never fails: every secret names exactly one key.
pub(crate) fn key_from_secret(secret: &[u8]) -> Cow<'_, [u8]> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX.as_bytes())
        .unwrap_or(secret);
    match BASE64_LENIENT.decode(encoded) {
        Ok(key) if !key.is_empty() => Cow::Owned(key),
        _ => Cow::Borrowed(secret),
    }
}

/// Checks the request and returns the signed timestamp.
pub(super) fn verify<H: HeaderLookup + ?Sized>(
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
    window: Window,
) -> Result<i64, VerifyError> {
    // Svix's family only when it alone carries a signature; otherwise the standard one (whose
    // absence then reads as "missing signature").
    let svix_only =
        headers.get(STANDARD_HEADERS[2]).is_none() && headers.get(SVIX_HEADERS[2]).is_some();
    let [id_name, timestamp_name, signature_name] = if svix_only {
        SVIX_HEADERS
    } else {
        STANDARD_HEADERS
    };
    let id = required_header(headers, id_name)?;
    let t_raw = required_header(headers, timestamp_name)?;
    let t = parse_unix_s(t_raw)?;
    let header = required_header(headers, signature_name)?;
    let mut candidates = Candidates::new();
    for token in header.split(|b| *b == b' ') {
        if let Some((b"v1", signature)) = split_once(token, b',') {
            candidates.push_base64(signature);
        }
    }
    if candidates.is_empty()
        || !any_secret_matches(
            secrets,
            key_from_secret,
            &[id, b".", t_raw, b".", body],
            &candidates,
        )
    {
        return Err(VerifyError::Invalid);
    }
    window.check(t)
}

#[cfg(test)]
mod tests {
    use super::super::contract_tests::{hmac_base64, lookup};
    use super::super::{SIGNATURES_MAX, Verified, verify};
    use super::*;
    use crate::verify::Mode;

    /// Published test vectors. Sources:
    /// - standard-webhooks/standard-webhooks, `libraries/rust/src/lib.rs`, `test_sign`;
    /// - standard-webhooks/standard-webhooks, `libraries/php/tests/WebhookTest.php`,
    ///   `testSignFunctionWorks` (the same vector is in Svix's docs).
    const VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ];

    fn check(
        secret: &str,
        family: Family,
        id: &str,
        t: i64,
        signature: &str,
        body: &str,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let t = t.to_string();
        let headers = lookup(&[
            (family[0], id.as_bytes()),
            (family[1], t.as_bytes()),
            (family[2], signature.as_bytes()),
        ]);
        verify(
            Mode::Standard,
            &[secret.as_bytes()],
            &headers,
            body.as_bytes(),
            now,
            300,
        )
    }

    #[test]
    fn published_test_vectors_verify() {
        for (secret, id, t, body, signature) in VECTORS {
            let verified = check(secret, STANDARD_HEADERS, id, t, signature, body, t)
                .expect("published vector verifies");
            assert_eq!(verified.timestamp, Some(t));
            assert_eq!(verified.provider_delivery_id.as_deref(), Some(id));
        }
    }

    #[test]
    fn published_test_vectors_verify_with_svix_branded_headers() {
        for (secret, id, t, body, signature) in VECTORS {
            assert!(check(secret, SVIX_HEADERS, id, t, signature, body, t).is_ok());
        }
    }

    #[test]
    fn a_secret_without_the_prefix_is_base64_decoded() {
        let (secret, id, t, body, signature) = VECTORS[1];
        let bare = secret.strip_prefix(SECRET_PREFIX).expect("prefixed");
        assert!(check(bare, STANDARD_HEADERS, id, t, signature, body, t).is_ok());
    }

    #[test]
    fn a_plain_text_secret_is_used_as_raw_bytes() {
        let secret = "not base64!";
        let signature = format!(
            "v1,{}",
            hmac_base64(secret.as_bytes(), b"msg_1.1000.", b"{}")
        );
        assert!(
            check(
                secret,
                STANDARD_HEADERS,
                "msg_1",
                1_000,
                &signature,
                "{}",
                1_000
            )
            .is_ok()
        );
    }

    #[test]
    fn key_from_secret_decodes_padded_and_unpadded_base64() {
        assert_eq!(&*key_from_secret(b"whsec_AQID"), &[1, 2, 3]);
        assert_eq!(&*key_from_secret(b"whsec_AQI="), &[1, 2]);
        assert_eq!(&*key_from_secret(b"whsec_AQI"), &[1, 2]);
        assert_eq!(&*key_from_secret(b"AQID"), &[1, 2, 3]);
        assert_eq!(&*key_from_secret(b"whsec_"), b"whsec_");
        assert_eq!(&*key_from_secret(b"whsec_!!"), b"whsec_!!");
    }

    #[test]
    fn several_signatures_and_other_versions_are_handled() {
        let (secret, id, t, body, signature) = VECTORS[1];
        let other = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let v1a = "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==";
        let header = format!("{other} {v1a}  {signature} v2,abc");
        assert!(check(secret, STANDARD_HEADERS, id, t, &header, body, t).is_ok());
        let without = format!("{other} {v1a}");
        assert_eq!(
            check(secret, STANDARD_HEADERS, id, t, &without, body, t),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn a_match_past_signatures_max_is_ignored() {
        let (secret, id, t, body, signature) = VECTORS[1];
        let other = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let within = format!("{} {signature}", vec![other; SIGNATURES_MAX - 1].join(" "));
        assert!(check(secret, STANDARD_HEADERS, id, t, &within, body, t).is_ok());
        let past = format!("{} {signature}", vec![other; SIGNATURES_MAX].join(" "));
        assert_eq!(
            check(secret, STANDARD_HEADERS, id, t, &past, body, t),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn the_id_is_signed() {
        let (secret, _, t, body, signature) = VECTORS[1];
        assert_eq!(
            check(secret, STANDARD_HEADERS, "msg_other", t, signature, body, t),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn headers_are_never_mixed_across_families() {
        let (secret, id, t, body, signature) = VECTORS[1];
        let t = t.to_string();
        let headers = lookup(&[
            ("svix-id", id.as_bytes()),
            ("svix-timestamp", t.as_bytes()),
            ("webhook-signature", signature.as_bytes()),
        ]);
        assert_eq!(
            verify(
                Mode::Standard,
                &[secret.as_bytes()],
                &headers,
                body.as_bytes(),
                1_614_265_330,
                300
            ),
            Err(VerifyError::Invalid)
        );
    }
}
