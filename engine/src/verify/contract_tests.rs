//! The contract's rules, checked the same way for every mode: one table row per mode, one
//! generated test module per row (`verify::contract_tests::<mode>::<rule>`).
//!
//! Signatures here are built independently of the code under test — straight from the `hmac`,
//! `hex` and `base64` crates, following each provider's documentation — so a shared mistake in
//! `mac.rs` cannot make both sides agree.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{HEADER_BYTES_MAX, Mode, VerifyError, verify};

pub(super) type Headers = Vec<(String, Vec<u8>)>;

pub(super) const NOW: i64 = 1_700_000_000;
const TOLERANCE_S: i64 = 300;
const BODY: &[u8] = br#"{"type":"invoice.paid","amount":4200}"#;

/// Owned header pairs from borrowed ones.
pub(super) fn lookup(pairs: &[(&str, &[u8])]) -> Headers {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
        .collect()
}

fn hmac(key: &[u8], prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(prefix);
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Lowercase hex HMAC-SHA256 of `prefix || body`.
pub(super) fn hmac_hex(key: &[u8], prefix: &[u8], body: &[u8]) -> String {
    hex::encode(hmac(key, prefix, body))
}

/// Padded base64 HMAC-SHA256 of `prefix || body`.
pub(super) fn hmac_base64(key: &[u8], prefix: &[u8], body: &[u8]) -> String {
    BASE64.encode(hmac(key, prefix, body))
}

/// One mode as a sender sees it.
pub(super) struct Case {
    mode: Mode,
    /// Two distinct secrets, as configured.
    secrets: [&'static str; 2],
    /// The headers a correct sender would send.
    sign: fn(secret: &str, body: &[u8], t: i64) -> Headers,
    signature_header: &'static str,
    /// The header carrying the timestamp, when it is separate from the signature.
    timestamp_header: Option<&'static str>,
    /// Malformed variants of a valid signature header value.
    malformed: fn(valid: &str) -> Vec<String>,
}

fn standard_key(secret: &str) -> Vec<u8> {
    let encoded = secret
        .strip_prefix("whsec_")
        .expect("test secrets are whsec_");
    BASE64.decode(encoded).expect("test secrets are base64")
}

pub(super) const STRIPE: Case = Case {
    mode: Mode::Stripe,
    secrets: ["whsec_stripe_current", "whsec_stripe_previous"],
    sign: |secret, body, t| {
        let v1 = hmac_hex(secret.as_bytes(), format!("{t}.").as_bytes(), body);
        lookup(&[("Stripe-Signature", format!("t={t},v1={v1}").as_bytes())])
    },
    signature_header: "stripe-signature",
    timestamp_header: None,
    malformed: |valid| {
        let (t, v1) = valid.split_once(',').expect("t=..,v1=..");
        let hex = v1.strip_prefix("v1=").expect("v1=");
        vec![
            v1.to_owned(),                      // no t
            t.to_owned(),                       // no v1
            format!("t=abc,{v1}"),              // t not a number
            format!("t=-{},{v1}", NOW),         // negative t
            format!("{t},v1={}", &hex[..62]),   // short hex
            format!("{t},v1={hex}00"),          // long hex
            format!("{t},v1={}zz", &hex[..62]), // not hex
            format!("{t};{v1}"),                // wrong separator
            "garbage".to_owned(),
        ]
    },
};

pub(super) const GITHUB: Case = Case {
    mode: Mode::Github,
    secrets: ["github current secret", "github previous secret"],
    sign: |secret, body, _| {
        let hex = hmac_hex(secret.as_bytes(), b"", body);
        lookup(&[("X-Hub-Signature-256", format!("sha256={hex}").as_bytes())])
    },
    signature_header: "x-hub-signature-256",
    timestamp_header: None,
    malformed: |valid| {
        let hex = valid.strip_prefix("sha256=").expect("sha256=");
        vec![
            hex.to_owned(),        // no scheme
            format!("sha1={hex}"), // wrong scheme
            format!("sha256={}", &hex[..63]),
            format!("sha256={hex}0"),
            format!("sha256=={hex}"),
            "garbage".to_owned(),
        ]
    },
};

pub(super) const STANDARD: Case = Case {
    mode: Mode::Standard,
    secrets: [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ],
    sign: |secret, body, t| {
        let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
        let sig = hmac_base64(&standard_key(secret), format!("{id}.{t}.").as_bytes(), body);
        lookup(&[
            ("webhook-id", id.as_bytes()),
            ("webhook-timestamp", t.to_string().as_bytes()),
            ("webhook-signature", format!("v1,{sig}").as_bytes()),
        ])
    },
    signature_header: "webhook-signature",
    timestamp_header: Some("webhook-timestamp"),
    malformed: |valid| {
        let b64 = valid.strip_prefix("v1,").expect("v1,");
        vec![
            b64.to_owned(),                           // no version
            format!("v2,{b64}"),                      // unknown version
            format!("v1a,{b64}"),                     // asymmetric version
            format!("v1={b64}"),                      // wrong separator
            format!("v1,{}", &b64[..40]),             // truncated
            format!("v1,{b64}AAAA"),                  // too long
            format!("v1,{}", hex::encode([0u8; 32])), // hex, not base64
            "garbage".to_owned(),
        ]
    },
};

pub(super) const SHOPIFY: Case = Case {
    mode: Mode::Shopify,
    secrets: ["shpss_current", "shpss_previous"],
    sign: |secret, body, _| {
        let sig = hmac_base64(secret.as_bytes(), b"", body);
        lookup(&[("X-Shopify-Hmac-Sha256", sig.as_bytes())])
    },
    signature_header: "x-shopify-hmac-sha256",
    timestamp_header: None,
    malformed: |valid| {
        vec![
            format!("sha256={valid}"),
            valid[..40].to_owned(),
            format!("{valid}AAAA"),
            valid.replace('=', "!"),
            "garbage".to_owned(),
        ]
    },
};

pub(super) const SLACK: Case = Case {
    mode: Mode::Slack,
    secrets: [
        "8f742231b10e8888abcd99yyyzzz85a5",
        "0123456789abcdef0123456789abcdef",
    ],
    sign: |secret, body, t| {
        let hex = hmac_hex(secret.as_bytes(), format!("v0:{t}:").as_bytes(), body);
        lookup(&[
            ("X-Slack-Request-Timestamp", t.to_string().as_bytes()),
            ("X-Slack-Signature", format!("v0={hex}").as_bytes()),
        ])
    },
    signature_header: "x-slack-signature",
    timestamp_header: Some("x-slack-request-timestamp"),
    malformed: |valid| {
        let hex = valid.strip_prefix("v0=").expect("v0=");
        vec![
            hex.to_owned(),
            format!("v1={hex}"),
            format!("v0={}", &hex[..62]),
            format!("v0:{hex}"),
            "garbage".to_owned(),
        ]
    },
};

pub(super) const GENERIC: Case = Case {
    mode: Mode::Generic,
    secrets: ["generic-current", "generic-previous"],
    sign: |secret, body, t| {
        let hex = hmac_hex(secret.as_bytes(), format!("{t}.").as_bytes(), body);
        lookup(&[
            ("X-Timestamp", t.to_string().as_bytes()),
            ("X-Signature", format!("sha256={hex}").as_bytes()),
        ])
    },
    signature_header: "x-signature",
    timestamp_header: Some("x-timestamp"),
    malformed: |valid| {
        let hex = valid.strip_prefix("sha256=").expect("sha256=");
        vec![
            hex.to_owned(),
            format!("sha512={hex}"),
            format!("sha256={}", &hex[..62]),
            format!("sha256={hex} sha256={hex}"),
            "garbage".to_owned(),
        ]
    },
};

impl Case {
    fn secret(&self, i: usize) -> &'static [u8] {
        self.secrets[i].as_bytes()
    }

    fn signed(&self, secret: usize, t: i64) -> Headers {
        (self.sign)(self.secrets[secret], BODY, t)
    }

    fn check(
        &self,
        secrets: &[&[u8]],
        headers: &Headers,
        body: &[u8],
    ) -> Result<Option<i64>, VerifyError> {
        verify(self.mode, secrets, headers, body, NOW, TOLERANCE_S).map(|v| v.timestamp)
    }

    fn value_of(&self, headers: &Headers, name: &str) -> String {
        let (_, value) = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .expect("header present");
        String::from_utf8(value.clone()).expect("ASCII")
    }

    fn replaced(&self, mut headers: Headers, name: &str, value: &str) -> Headers {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.to_owned(), value.as_bytes().to_vec()));
        headers
    }

    fn expected_timestamp(&self, t: i64) -> Option<i64> {
        self.mode.is_timestamped().then_some(t)
    }
}

pub(super) fn valid_signature_passes(case: &Case) {
    let headers = case.signed(0, NOW);
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Ok(case.expected_timestamp(NOW))
    );
}

pub(super) fn valid_signature_passes_through_http_header_map(case: &Case) {
    let mut map = http::HeaderMap::new();
    for (name, value) in case.signed(0, NOW) {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
        map.append(name, http::HeaderValue::from_bytes(&value).expect("value"));
    }
    let verified = verify(case.mode, &[case.secret(0)], &map, BODY, NOW, TOLERANCE_S);
    assert_eq!(
        verified.map(|v| v.timestamp),
        Ok(case.expected_timestamp(NOW))
    );
}

pub(super) fn tampered_body_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    let mut tampered = BODY.to_vec();
    tampered[10] ^= 0x01;
    assert_eq!(
        case.check(&[case.secret(0)], &headers, &tampered),
        Err(VerifyError::Invalid)
    );
    assert_eq!(
        case.check(&[case.secret(0)], &headers, b""),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn wrong_secret_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    assert_eq!(
        case.check(&[case.secret(1)], &headers, BODY),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn no_or_empty_secret_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    assert_eq!(case.check(&[], &headers, BODY), Err(VerifyError::Invalid));
    assert_eq!(
        case.check(&[b""], &headers, BODY),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn second_secret_passes_during_rotation(case: &Case) {
    let both = [case.secret(0), case.secret(1)];
    for signer in [0, 1] {
        let headers = case.signed(signer, NOW);
        assert_eq!(
            case.check(&both, &headers, BODY),
            Ok(case.expected_timestamp(NOW))
        );
    }
}

pub(super) fn missing_signature_header_is_invalid(case: &Case) {
    let mut headers = case.signed(0, NOW);
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(case.signature_header));
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Err(VerifyError::Invalid)
    );
    assert_eq!(
        case.check(&[case.secret(0)], &Headers::new(), BODY),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn malformed_signature_header_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    let valid = case.value_of(&headers, case.signature_header);
    for bad in (case.malformed)(&valid)
        .into_iter()
        .chain(["".to_owned(), " ".to_owned()])
    {
        let headers = case.replaced(headers.clone(), case.signature_header, &bad);
        assert_eq!(
            case.check(&[case.secret(0)], &headers, BODY),
            Err(VerifyError::Invalid),
            "{bad:?}"
        );
    }
}

pub(super) fn oversized_signature_header_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    let valid = case.value_of(&headers, case.signature_header);
    // Still a valid signature, with padding that the parser would otherwise ignore.
    let padded = match case.mode {
        Mode::Stripe => format!("{valid},{}", "x".repeat(HEADER_BYTES_MAX)),
        Mode::Standard => format!("{valid} {}", "x".repeat(HEADER_BYTES_MAX)),
        _ => format!("{valid}{}", "0".repeat(HEADER_BYTES_MAX)),
    };
    let headers = case.replaced(headers, case.signature_header, &padded);
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn expired_timestamp_is_expired(case: &Case) {
    let headers = case.signed(0, NOW - TOLERANCE_S - 1);
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Err(VerifyError::Expired)
    );
    let headers = case.signed(1, NOW - 86_400);
    assert_eq!(
        case.check(&[case.secret(0), case.secret(1)], &headers, BODY),
        Err(VerifyError::Expired)
    );
}

pub(super) fn future_timestamp_beyond_tolerance_is_expired(case: &Case) {
    let headers = case.signed(0, NOW + TOLERANCE_S + 1);
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Err(VerifyError::Expired)
    );
}

pub(super) fn timestamp_at_the_tolerance_edge_passes(case: &Case) {
    for t in [NOW - TOLERANCE_S, NOW + TOLERANCE_S] {
        let headers = case.signed(0, t);
        assert_eq!(case.check(&[case.secret(0)], &headers, BODY), Ok(Some(t)));
    }
}

pub(super) fn expired_timestamp_with_wrong_mac_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW - 3_600);
    assert_eq!(
        case.check(&[case.secret(1)], &headers, BODY),
        Err(VerifyError::Invalid)
    );
}

pub(super) fn missing_or_malformed_timestamp_is_invalid(case: &Case) {
    let headers = case.signed(0, NOW);
    let Some(name) = case.timestamp_header else {
        // The timestamp lives in the signature header; `malformed` covers it.
        return;
    };
    let mut without = headers.clone();
    without.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    assert_eq!(
        case.check(&[case.secret(0)], &without, BODY),
        Err(VerifyError::Invalid)
    );
    for bad in [
        "",
        "abc",
        "-1",
        "1.5",
        &format!("{NOW}x"),
        "99999999999999999999",
    ] {
        let headers = case.replaced(headers.clone(), name, bad);
        assert_eq!(
            case.check(&[case.secret(0)], &headers, BODY),
            Err(VerifyError::Invalid),
            "{bad:?}"
        );
    }
}

pub(super) fn a_timestamp_other_than_the_signed_one_is_invalid(case: &Case) {
    let Some(name) = case.timestamp_header else {
        return;
    };
    let headers = case.signed(0, NOW);
    let headers = case.replaced(headers, name, &(NOW + 1).to_string());
    assert_eq!(
        case.check(&[case.secret(0)], &headers, BODY),
        Err(VerifyError::Invalid)
    );
}

macro_rules! signature_contract {
    ($module:ident, $case:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn valid_signature_passes() {
                super::valid_signature_passes(&$case);
            }
            #[test]
            fn valid_signature_passes_through_http_header_map() {
                super::valid_signature_passes_through_http_header_map(&$case);
            }
            #[test]
            fn tampered_body_is_invalid() {
                super::tampered_body_is_invalid(&$case);
            }
            #[test]
            fn wrong_secret_is_invalid() {
                super::wrong_secret_is_invalid(&$case);
            }
            #[test]
            fn no_or_empty_secret_is_invalid() {
                super::no_or_empty_secret_is_invalid(&$case);
            }
            #[test]
            fn second_secret_passes_during_rotation() {
                super::second_secret_passes_during_rotation(&$case);
            }
            #[test]
            fn missing_signature_header_is_invalid() {
                super::missing_signature_header_is_invalid(&$case);
            }
            #[test]
            fn malformed_signature_header_is_invalid() {
                super::malformed_signature_header_is_invalid(&$case);
            }
            #[test]
            fn oversized_signature_header_is_invalid() {
                super::oversized_signature_header_is_invalid(&$case);
            }
        }
    };
}

macro_rules! timestamp_contract {
    ($module:ident, $case:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn expired_timestamp_is_expired() {
                super::expired_timestamp_is_expired(&$case);
            }
            #[test]
            fn future_timestamp_beyond_tolerance_is_expired() {
                super::future_timestamp_beyond_tolerance_is_expired(&$case);
            }
            #[test]
            fn timestamp_at_the_tolerance_edge_passes() {
                super::timestamp_at_the_tolerance_edge_passes(&$case);
            }
            #[test]
            fn expired_timestamp_with_wrong_mac_is_invalid() {
                super::expired_timestamp_with_wrong_mac_is_invalid(&$case);
            }
            #[test]
            fn missing_or_malformed_timestamp_is_invalid() {
                super::missing_or_malformed_timestamp_is_invalid(&$case);
            }
            #[test]
            fn a_timestamp_other_than_the_signed_one_is_invalid() {
                super::a_timestamp_other_than_the_signed_one_is_invalid(&$case);
            }
        }
    };
}

signature_contract!(stripe, STRIPE);
signature_contract!(github, GITHUB);
signature_contract!(standard, STANDARD);
signature_contract!(shopify, SHOPIFY);
signature_contract!(slack, SLACK);
signature_contract!(generic, GENERIC);

timestamp_contract!(stripe_timestamp, STRIPE);
timestamp_contract!(standard_timestamp, STANDARD);
timestamp_contract!(slack_timestamp, SLACK);
timestamp_contract!(generic_timestamp, GENERIC);

#[test]
fn none_mode_always_passes() {
    for headers in [Headers::new(), STRIPE.signed(0, NOW - 86_400)] {
        assert_eq!(
            verify(Mode::None, &[], &headers, BODY, NOW, TOLERANCE_S).map(|v| v.timestamp),
            Ok(None)
        );
    }
}

#[test]
fn a_signature_for_one_mode_never_passes_another() {
    let cases = [&STRIPE, &GITHUB, &STANDARD, &SHOPIFY, &SLACK, &GENERIC];
    for signer in cases {
        let headers = signer.signed(0, NOW);
        for checker in cases {
            if checker.mode == signer.mode {
                continue;
            }
            let verified = verify(
                checker.mode,
                &[signer.secret(0)],
                &headers,
                BODY,
                NOW,
                TOLERANCE_S,
            );
            assert_eq!(
                verified,
                Err(VerifyError::Invalid),
                "{} as {}",
                signer.mode,
                checker.mode
            );
        }
    }
}

#[test]
fn a_negative_tolerance_is_treated_as_zero() {
    let headers = GENERIC.signed(0, NOW);
    assert!(verify(Mode::Generic, &[GENERIC.secret(0)], &headers, BODY, NOW, -5).is_ok());
    let headers = GENERIC.signed(0, NOW - 1);
    assert_eq!(
        verify(Mode::Generic, &[GENERIC.secret(0)], &headers, BODY, NOW, -5),
        Err(VerifyError::Expired)
    );
}

#[test]
fn error_codes_match_the_contract() {
    assert_eq!(VerifyError::Invalid.code(), "invalid_signature");
    assert_eq!(VerifyError::Expired.code(), "signature_expired");
}
