//! Sender-side signatures for every ingest verification mode, written from the contract's
//! "Ingest" section (not from the product's code), and the check of the Standard Webhooks
//! signature HookRelay puts on what it forwards.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::http::HeaderList;
use crate::payload::nonce;

type HmacSha256 = Hmac<Sha256>;

/// The timestamp tolerance of every timestamped mode, in seconds.
pub const TOLERANCE_S: i64 = 300;

/// The verification modes that check a signature (`none` is the only other one).
pub const SIGNED_MODES: [&str; 6] = [
    "stripe", "github", "standard", "shopify", "slack", "generic",
];

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// HMAC-SHA256 of the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `Stripe-Signature: t=<t>,v1=<hex HMAC(secret, "{t}.{body}")>`.
pub fn sign_stripe(secret: &str, body: &[u8], t: i64) -> HeaderList {
    let t = t.to_string();
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]));
    vec![("Stripe-Signature".into(), format!("t={t},v1={sig}"))]
}

/// `X-Hub-Signature-256: sha256=<hex HMAC(secret, body)>`.
pub fn sign_github(secret: &str, body: &[u8]) -> HeaderList {
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[body]));
    vec![("X-Hub-Signature-256".into(), format!("sha256={sig}"))]
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn standard_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(encoded).unwrap_or_else(|e| {
        panic!("Standard Webhooks secret {secret:?} is not whsec_<base64>: {e}")
    })
}

/// The `v1,<base64>` signature of Standard Webhooks over `"{id}.{t}.{body}"`.
pub fn standard_signature(secret: &str, msg_id: &str, t: i64, body: &[u8]) -> String {
    let t = t.to_string();
    let mac = hmac_sha256(
        &standard_key(secret),
        &[msg_id.as_bytes(), b".", t.as_bytes(), b".", body],
    );
    format!("v1,{}", B64.encode(mac))
}

/// `webhook-id`, `webhook-timestamp`, `webhook-signature` for a message.
pub fn sign_standard(secret: &str, msg_id: &str, body: &[u8], t: i64) -> HeaderList {
    vec![
        ("webhook-id".into(), msg_id.to_string()),
        ("webhook-timestamp".into(), t.to_string()),
        (
            "webhook-signature".into(),
            standard_signature(secret, msg_id, t, body),
        ),
    ]
}

/// `X-Shopify-Hmac-Sha256: <base64 HMAC(secret, body)>`.
pub fn sign_shopify(secret: &str, body: &[u8]) -> HeaderList {
    let sig = B64.encode(hmac_sha256(secret.as_bytes(), &[body]));
    vec![("X-Shopify-Hmac-Sha256".into(), sig)]
}

/// `X-Slack-Request-Timestamp: <t>`, `X-Slack-Signature: v0=<hex HMAC(secret, "v0:{t}:{body}")>`.
pub fn sign_slack(secret: &str, body: &[u8], t: i64) -> HeaderList {
    let t = t.to_string();
    let sig = hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[b"v0:", t.as_bytes(), b":", body],
    ));
    vec![
        ("X-Slack-Request-Timestamp".into(), t),
        ("X-Slack-Signature".into(), format!("v0={sig}")),
    ]
}

/// `X-Timestamp: <t>`, `X-Signature: sha256=<hex HMAC(secret, "{t}.{body}")>`.
pub fn sign_generic(secret: &str, body: &[u8], t: i64) -> HeaderList {
    let t = t.to_string();
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]));
    vec![
        ("X-Timestamp".into(), t),
        ("X-Signature".into(), format!("sha256={sig}")),
    ]
}

/// Signs `body` for `mode` at time `t` (ignored by untimed modes). Standard mode gets a fresh
/// `webhook-id`, so two calls never share a provider id.
pub fn sign(mode: &str, secret: &str, body: &[u8], t: i64) -> HeaderList {
    match mode {
        "stripe" => sign_stripe(secret, body, t),
        "github" => sign_github(secret, body),
        "standard" => sign_standard(secret, &format!("msg_{}", nonce()), body, t),
        "shopify" => sign_shopify(secret, body),
        "slack" => sign_slack(secret, body, t),
        "generic" => sign_generic(secret, body, t),
        "none" => Vec::new(),
        other => panic!("unknown verification mode {other:?}"),
    }
}

/// Whether `mode` signs a timestamp (and so rejects old ones with `signature_expired`).
pub fn is_timestamped(mode: &str) -> bool {
    matches!(mode, "stripe" | "standard" | "slack" | "generic")
}

/// The header that carries the signature itself in `mode`.
pub fn signature_header(mode: &str) -> &'static str {
    match mode {
        "stripe" => "Stripe-Signature",
        "github" => "X-Hub-Signature-256",
        "standard" => "webhook-signature",
        "shopify" => "X-Shopify-Hmac-Sha256",
        "slack" => "X-Slack-Signature",
        "generic" => "X-Signature",
        other => panic!("mode {other:?} has no signature header"),
    }
}

/// The header that carries the signed timestamp in `mode`, when it is a header of its own.
pub fn timestamp_header(mode: &str) -> Option<&'static str> {
    match mode {
        "standard" => Some("webhook-timestamp"),
        "slack" => Some("X-Slack-Request-Timestamp"),
        "generic" => Some("X-Timestamp"),
        _ => None,
    }
}

/// A secret acceptable to every mode: Standard Webhooks needs `whsec_<base64>`, the others use
/// the secret string's bytes as the key, and this string works as both.
pub fn new_secret() -> String {
    let seed = Sha256::digest(nonce().as_bytes());
    format!("whsec_{}", B64.encode(&seed[..24]))
}

/// Whether any of the space-separated `v1,<base64>` signatures in `signature_header` is the
/// Standard Webhooks signature of (`msg_id`, `timestamp`, `body`) under `secret`.
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let Ok(t) = timestamp.parse::<i64>() else {
        return false;
    };
    let expected = standard_signature(secret, msg_id, t, body);
    signature_header
        .split(' ')
        .any(|candidate| candidate == expected)
}

/// Drops every header named `name` (case-insensitive).
pub fn without(headers: &HeaderList, name: &str) -> HeaderList {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// Replaces the value of every header named `name` (case-insensitive).
pub fn with_value(headers: &HeaderList, name: &str, value: &str) -> HeaderList {
    headers
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(name) {
                (k.clone(), value.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(headers: &'a HeaderList, name: &str) -> &'a str {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no header {name}"))
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The example of the Standard Webhooks / Svix reference libraries.
    #[test]
    fn standard_matches_reference_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let headers = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", body, 1614265330);
        assert_eq!(
            value(&headers, "webhook-signature"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(verify_standard(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            body,
            "v1,bm90IGl0 v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!verify_standard(
            secret,
            "msg_other",
            "1614265330",
            body,
            value(&headers, "webhook-signature")
        ));
    }

    /// The example of Slack's "Verifying requests from Slack" guide.
    #[test]
    fn slack_matches_reference_vector() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let headers = sign_slack("8f742231b10e8888abcd99yyyzzz85a5", body, 1531420618);
        assert_eq!(
            value(&headers, "X-Slack-Signature"),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn signed_strings_follow_the_contract() {
        let secret = "s3cret";
        let body = b"{\"a\":1}";
        let stripe = sign_stripe(secret, body, 1700000000);
        let expected = hex::encode(hmac_sha256(b"s3cret", &[b"1700000000.{\"a\":1}"]));
        assert_eq!(
            value(&stripe, "Stripe-Signature"),
            format!("t=1700000000,v1={expected}")
        );

        let github = sign_github(secret, body);
        let expected = hex::encode(hmac_sha256(b"s3cret", &[b"{\"a\":1}"]));
        assert_eq!(
            value(&github, "X-Hub-Signature-256"),
            format!("sha256={expected}")
        );

        let shopify = sign_shopify(secret, body);
        assert_eq!(
            value(&shopify, "X-Shopify-Hmac-Sha256"),
            B64.encode(hmac_sha256(b"s3cret", &[b"{\"a\":1}"]))
        );

        let generic = sign_generic(secret, body, 1700000000);
        let expected = hex::encode(hmac_sha256(b"s3cret", &[b"1700000000.{\"a\":1}"]));
        assert_eq!(value(&generic, "X-Signature"), format!("sha256={expected}"));
        assert_eq!(value(&generic, "X-Timestamp"), "1700000000");
    }

    #[test]
    fn new_secrets_are_unique_standard_secrets() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert_eq!(standard_key(&a).len(), 24);
    }

    #[test]
    fn header_edits() {
        let headers = sign_generic("k", b"x", 1);
        assert_eq!(without(&headers, "x-signature").len(), 1);
        assert_eq!(
            value(&with_value(&headers, "x-timestamp", "2"), "X-Timestamp"),
            "2"
        );
    }
}
