//! Shopify: `X-Shopify-Hmac-Sha256: <base64>`, HMAC-SHA256 of the body keyed with the app's
//! client secret as configured (raw bytes). No timestamp is signed.

use std::borrow::Cow;

use super::mac::{Candidates, any_secret_matches};
use super::{HeaderLookup, VerifyError, required_header};

pub(super) const SIGNATURE_HEADER: &str = "x-shopify-hmac-sha256";

pub(super) fn verify<H: HeaderLookup + ?Sized>(
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
) -> Result<(), VerifyError> {
    let header = required_header(headers, SIGNATURE_HEADER)?;
    let mut candidates = Candidates::new();
    candidates.push_base64(header);
    if candidates.is_empty()
        || !any_secret_matches(secrets, |s| Cow::Borrowed(s), &[body], &candidates)
    {
        return Err(VerifyError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::contract_tests::{hmac_base64, lookup};
    use super::super::verify;
    use super::*;
    use crate::verify::Mode;

    #[test]
    fn the_webhook_id_is_reported_as_the_provider_delivery_id() {
        let sig = hmac_base64(b"s", b"", b"{}");
        let headers = lookup(&[
            (SIGNATURE_HEADER, sig.as_bytes()),
            (
                "x-shopify-webhook-id",
                b"b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
        ]);
        let verified = verify(Mode::Shopify, &[b"s"], &headers, b"{}", 0, 300).expect("valid");
        assert_eq!(
            verified.provider_delivery_id.as_deref(),
            Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
        );
    }

    #[test]
    fn a_hex_signature_is_not_accepted() {
        let sig = super::super::contract_tests::hmac_hex(b"s", b"", b"{}");
        let headers = lookup(&[(SIGNATURE_HEADER, sig.as_bytes())]);
        assert_eq!(
            verify(Mode::Shopify, &[b"s"], &headers, b"{}", 0, 300),
            Err(VerifyError::Invalid)
        );
    }
}
