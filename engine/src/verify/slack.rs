//! Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 of
//! `"v0:{X-Slack-Request-Timestamp}:{body}"` keyed with the signing secret as configured (raw
//! bytes); the timestamp must be within the tolerance.

use std::borrow::Cow;

use super::mac::{Candidates, any_secret_matches};
use super::timestamp::{Window, parse_unix_s};
use super::{HeaderLookup, VerifyError, required_header};

pub(super) const SIGNATURE_HEADER: &str = "x-slack-signature";
pub(super) const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

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
    let hex = header.strip_prefix(b"v0=").ok_or(VerifyError::Invalid)?;
    let mut candidates = Candidates::new();
    candidates.push_hex(hex);
    if candidates.is_empty()
        || !any_secret_matches(
            secrets,
            |s| Cow::Borrowed(s),
            &[b"v0:", t_raw, b":", body],
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
    fn a_dot_separated_signature_is_not_slacks() {
        // Same secret and timestamp, but signed as the generic scheme would: must not pass.
        let sig = format!("v0={}", hmac_hex(b"s", b"1000.", b"{}"));
        let headers = lookup(&[
            (SIGNATURE_HEADER, sig.as_bytes()),
            (TIMESTAMP_HEADER, b"1000"),
        ]);
        assert_eq!(
            verify(Mode::Slack, &[b"s"], &headers, b"{}", 1_000, 300),
            Err(VerifyError::Invalid)
        );
    }
}
