//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of `"{t}.{body}"`
//! keyed with the endpoint secret exactly as Stripe shows it (`whsec_...`, used as raw bytes,
//! not decoded).
//!
//! As in Stripe's libraries: items are `key=value` separated by commas; schemes other than
//! `v1` (such as the test-mode `v0`) are ignored; any `v1` may match. Unlike them, a header with
//! two `t=` items is rejected rather than letting the last one win: which timestamp was signed
//! would be ambiguous.

use std::borrow::Cow;

use super::mac::{Candidates, any_secret_matches};
use super::timestamp::{Window, parse_unix_s};
use super::{HeaderLookup, VerifyError, required_header, split_once};

pub(super) const SIGNATURE_HEADER: &str = "stripe-signature";

/// Checks the request and returns the signed timestamp.
pub(super) fn verify<H: HeaderLookup + ?Sized>(
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
    window: Window,
) -> Result<i64, VerifyError> {
    let header = required_header(headers, SIGNATURE_HEADER)?;
    let mut t_raw: Option<&[u8]> = None;
    let mut candidates = Candidates::new();
    for item in header.split(|b| *b == b',') {
        // Items without `=` carry nothing we use; Stripe's libraries skip them too.
        let Some((scheme, value)) = split_once(item.trim_ascii(), b'=') else {
            continue;
        };
        match scheme {
            // Two timestamps: which one was signed is ambiguous.
            b"t" if t_raw.is_some() => return Err(VerifyError::Invalid),
            b"t" => t_raw = Some(value),
            b"v1" => candidates.push_hex(value),
            _ => {}
        }
    }
    let t_raw = t_raw.ok_or(VerifyError::Invalid)?;
    let t = parse_unix_s(t_raw)?;
    if candidates.is_empty() {
        return Err(VerifyError::Invalid);
    }
    if !any_secret_matches(
        secrets,
        |s| Cow::Borrowed(s),
        &[t_raw, b".", body],
        &candidates,
    ) {
        return Err(VerifyError::Invalid);
    }
    window.check(t)
}

#[cfg(test)]
mod tests {
    use super::super::contract_tests::{hmac_hex, lookup};
    use super::super::{SIGNATURES_MAX, Verified, verify};
    use super::*;
    use crate::verify::Mode;

    const SECRET: &[u8] = b"whsec_test_secret";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    fn v1(secret: &[u8], t: i64) -> String {
        hmac_hex(secret, format!("{t}.").as_bytes(), BODY)
    }

    fn check(header: &str) -> Result<Verified, VerifyError> {
        verify(
            Mode::Stripe,
            &[SECRET],
            &lookup(&[(SIGNATURE_HEADER, header.as_bytes())]),
            BODY,
            NOW,
            300,
        )
    }

    #[test]
    fn any_of_several_v1_may_match() {
        let good = v1(SECRET, NOW);
        let bad = v1(b"other", NOW);
        let header = format!("t={NOW},v1={bad},v1={good},v1={bad}");
        let verified = check(&header).expect("one v1 matches");
        assert_eq!(verified.timestamp, Some(NOW));
        assert_eq!(verified.provider_delivery_id.as_deref(), Some("evt_1"));
    }

    #[test]
    fn v0_and_unknown_schemes_are_ignored() {
        let good = v1(SECRET, NOW);
        assert!(check(&format!("t={NOW},v0={good},v1={good},x=1,junk")).is_ok());
        assert_eq!(
            check(&format!("t={NOW},v0={good}")),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn spaces_around_items_are_tolerated() {
        let good = v1(SECRET, NOW);
        assert!(check(&format!("t={NOW}, v1={good}")).is_ok());
    }

    #[test]
    fn duplicate_t_is_invalid() {
        let good = v1(SECRET, NOW);
        assert_eq!(
            check(&format!("t={NOW},t={NOW},v1={good}")),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn a_match_past_signatures_max_is_ignored() {
        let good = v1(SECRET, NOW);
        let bad = v1(b"other", NOW);
        let padding = vec![format!("v1={bad}"); SIGNATURES_MAX - 1].join(",");
        assert!(check(&format!("t={NOW},{padding},v1={good}")).is_ok());
        let padding = vec![format!("v1={bad}"); SIGNATURES_MAX].join(",");
        assert_eq!(
            check(&format!("t={NOW},{padding},v1={good}")),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn the_secret_is_used_as_raw_bytes_with_its_prefix() {
        let without_prefix = v1(b"test_secret", NOW);
        assert_eq!(
            check(&format!("t={NOW},v1={without_prefix}")),
            Err(VerifyError::Invalid)
        );
    }

    #[test]
    fn an_old_timestamp_with_a_wrong_mac_is_invalid_not_expired() {
        let old = NOW - 3_600;
        let wrong = v1(b"other", old);
        assert_eq!(
            check(&format!("t={old},v1={wrong}")),
            Err(VerifyError::Invalid)
        );
        let right = v1(SECRET, old);
        assert_eq!(
            check(&format!("t={old},v1={right}")),
            Err(VerifyError::Expired)
        );
    }
}
