//! HookRelay's generic scheme: `X-Signature: sha256=<hex>`, HMAC-SHA256 of
//! `"{X-Timestamp}.{body}"` keyed with the secret as configured (raw bytes), `X-Timestamp` in
//! unix seconds within the tolerance.

use std::borrow::Cow;

use super::mac::{Candidates, any_secret_matches};
use super::timestamp::{Window, parse_unix_s};
use super::{HeaderLookup, VerifyError, required_header};

pub(super) const SIGNATURE_HEADER: &str = "x-signature";
pub(super) const TIMESTAMP_HEADER: &str = "x-timestamp";

/// Checks the request and returns the signed timestamp.
pub(super) fn verify<H: HeaderLookup + ?Sized>(
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
    window: Window,
) -> Result<i64, VerifyError> {
    let t_raw = required_header(headers, TIMESTAMP_HEADER)?;
    let t = parse_unix_s(t_raw)?;
    let header = required_header(headers, SIGNATURE_HEADER)?;
    let hex = header
        .strip_prefix(b"sha256=")
        .ok_or(VerifyError::Invalid)?;
    let mut candidates = Candidates::new();
    candidates.push_hex(hex);
    if candidates.is_empty()
        || !any_secret_matches(
            secrets,
            |s| Cow::Borrowed(s),
            &[t_raw, b".", body],
            &candidates,
        )
    {
        return Err(VerifyError::Invalid);
    }
    window.check(t)
}

#[cfg(test)]
mod tests {
    use super::super::contract_tests::{hmac_hex, lookup};
    use super::super::verify;
    use super::*;
    use crate::verify::Mode;

    #[test]
    fn a_millisecond_timestamp_is_expired_not_invalid() {
        let t_ms = b"1700000000000";
        let sig = format!("sha256={}", hmac_hex(b"s", b"1700000000000.", b"{}"));
        let headers = lookup(&[(SIGNATURE_HEADER, sig.as_bytes()), (TIMESTAMP_HEADER, t_ms)]);
        assert_eq!(
            verify(Mode::Generic, &[b"s"], &headers, b"{}", 1_700_000_000, 300),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn the_timestamp_is_signed_as_sent() {
        // A sender that signed "0001000" must be checked against "0001000", not "1000".
        let sig = format!("sha256={}", hmac_hex(b"s", b"0001000.", b"{}"));
        let headers = lookup(&[
            (SIGNATURE_HEADER, sig.as_bytes()),
            (TIMESTAMP_HEADER, b"0001000"),
        ]);
        let verified = verify(Mode::Generic, &[b"s"], &headers, b"{}", 1_000, 300).expect("valid");
        assert_eq!(verified.timestamp, Some(1_000));
    }
}
