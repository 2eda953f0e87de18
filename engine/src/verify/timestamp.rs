//! Signed timestamps: parsing them strictly and checking them against the tolerance.

use super::{TIMESTAMP_DIGITS_MAX, VerifyError};

/// The accepted range around the arrival time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) now_unix: i64,
    /// Never negative.
    pub(super) tolerance_s: i64,
}

impl Window {
    /// `Expired` when `|now - t| > tolerance`, in the past or the future. Called only after
    /// the MAC matched.
    pub(super) fn check(self, signed_unix: i64) -> Result<i64, VerifyError> {
        debug_assert!(self.tolerance_s >= 0);
        // abs_diff: no overflow whatever the sender put in the header.
        if self.now_unix.abs_diff(signed_unix) > self.tolerance_s.unsigned_abs() {
            return Err(VerifyError::Expired);
        }
        Ok(signed_unix)
    }
}

/// Unix seconds as the sender wrote them: 1 to [`TIMESTAMP_DIGITS_MAX`] ASCII digits, no sign,
/// no spaces, no fraction. Anything else is `Invalid`.
pub(super) fn parse_unix_s(raw: &[u8]) -> Result<i64, VerifyError> {
    if raw.is_empty() || raw.len() > TIMESTAMP_DIGITS_MAX || !raw.iter().all(u8::is_ascii_digit) {
        return Err(VerifyError::Invalid);
    }
    // At most 18 digits: always fits an i64.
    Ok(raw
        .iter()
        .fold(0i64, |acc, digit| acc * 10 + i64::from(digit - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_digits_only() {
        assert_eq!(parse_unix_s(b"1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_unix_s(b"0"), Ok(0));
        assert_eq!(
            parse_unix_s(b"999999999999999999"),
            Ok(999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1.5",
            b" 1",
            b"1e9",
            b"abc",
            b"9999999999999999999",
        ] {
            assert_eq!(parse_unix_s(bad), Err(VerifyError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn tolerance_is_inclusive_and_symmetric() {
        let window = Window {
            now_unix: 1_000,
            tolerance_s: 300,
        };
        assert_eq!(window.check(700), Ok(700));
        assert_eq!(window.check(1_300), Ok(1_300));
        assert_eq!(window.check(699), Err(VerifyError::Expired));
        assert_eq!(window.check(1_301), Err(VerifyError::Expired));
        assert_eq!(window.check(i64::MAX), Err(VerifyError::Expired));
        assert_eq!(window.check(i64::MIN), Err(VerifyError::Expired));
    }
}
