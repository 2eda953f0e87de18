//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body keyed with the secret
//! as configured (raw bytes). The legacy SHA-1 `X-Hub-Signature` is not accepted. GitHub
//! signs no timestamp, so there is nothing to expire.

use std::borrow::Cow;

use super::mac::{Candidates, any_secret_matches};
use super::{HeaderLookup, VerifyError, required_header};

pub(super) const SIGNATURE_HEADER: &str = "x-hub-signature-256";

pub(super) fn verify<H: HeaderLookup + ?Sized>(
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
) -> Result<(), VerifyError> {
    let header = required_header(headers, SIGNATURE_HEADER)?;
    let hex = header
        .strip_prefix(b"sha256=")
        .ok_or(VerifyError::Invalid)?;
    let mut candidates = Candidates::new();
    candidates.push_hex(hex);
    if candidates.is_empty()
        || !any_secret_matches(secrets, |s| Cow::Borrowed(s), &[body], &candidates)
    {
        return Err(VerifyError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::contract_tests::{hmac_hex, lookup};
    use super::super::verify;
    use super::*;
    use crate::verify::Mode;

    #[test]
    fn legacy_sha1_header_alone_is_invalid() {
        let headers = lookup(&[(
            "x-hub-signature",
            b"sha1=0123456789abcdef0123456789abcdef01234567",
        )]);
        assert_eq!(
            verify(Mode::Github, &[b"s"], &headers, b"{}", 0, 300),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn uppercase_hex_is_accepted_and_the_delivery_id_is_reported() {
        let sig = format!("sha256={}", hmac_hex(b"s", b"", b"{}").to_uppercase());
        let headers = lookup(&[
            (SIGNATURE_HEADER, sig.as_bytes()),
            ("x-github-delivery", b"72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ]);
        let verified = verify(Mode::Github, &[b"s"], &headers, b"{}", 0, 300).expect("valid");
        assert_eq!(verified.timestamp, None);
        assert_eq!(
            verified.provider_delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
    }
}
