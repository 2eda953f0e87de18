//! Sender-side signatures (the contract's `generic` mode) for the load, and the check of the
//! Standard Webhooks signature HookRelay puts on what it forwards. Written from CONTRACT.md.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Unix seconds now, by this process's clock (never shifted by the clock-skew shim).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `X-Timestamp: <t>`, `X-Signature: sha256=<hex HMAC(secret, "{t}.{body}")>`.
pub fn sign_generic(secret: &str, body: &[u8], t: i64) -> [(String, String); 2] {
    let t = t.to_string();
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body]));
    [
        ("x-timestamp".into(), t),
        ("x-signature".into(), format!("sha256={sig}")),
    ]
}

/// Whether one of the space-separated `v1,<base64>` signatures is the Standard Webhooks
/// signature of (`msg_id`, `timestamp`, `body`) under the endpoint's `whsec_` signing secret.
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let Ok(key) = B64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
        return false;
    };
    let mac = hmac_sha256(
        &key,
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    let expected = format!("v1,{}", B64.encode(mac));
    header.split(' ').any(|candidate| candidate == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn standard_reference_vector() {
        assert!(verify_standard(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
            "v1,x v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
    }

    #[test]
    fn generic_signs_timestamp_dot_body() {
        let [(_, t), (_, sig)] = sign_generic("s3cret", b"{}", 1_700_000_000);
        assert_eq!(t, "1700000000");
        let expected = hex::encode(hmac_sha256(b"s3cret", &[b"1700000000.{}"]));
        assert_eq!(sig, format!("sha256={expected}"));
    }
}
