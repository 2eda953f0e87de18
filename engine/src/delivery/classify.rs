//! What an attempt's result means for the delivery: success, failed at once, or retry — the
//! table in CONTRACT.md "Forwarding to the receiver" — plus the error class used for
//! `top_failures` and `last_error`, and `Retry-After` parsing.
//!
//! Where the contract is silent (decided here, documented in the README):
//! - 3xx → `Failed`. Redirects are never followed (a redirect could send a signed payload, or the
//!   request itself, somewhere the endpoint's owner did not choose, including internal addresses),
//!   so a receiver that redirects will redirect on every retry too; failing at once puts the
//!   delivery in the DLQ with `http_30x` as its error, to be replayed once the URL is fixed.
//! - Any other 4xx (402, 405, 409, 413, 415, 423, 425, ...) → `Retry`. The contract names the
//!   client errors that are permanent; for the rest we cannot know, and at-least-once prefers a
//!   bounded number of retries (`max_attempts`) over giving up early.
//! - 1xx and any other non-2xx status → `Retry`.
//! - Errors without a status: SSRF refusals and invalid URLs → `Failed` (retrying cannot change a
//!   policy decision or a malformed URL); timeouts, connection, DNS, TLS, body and other errors →
//!   `Retry` (DNS and certificates do get fixed).
//! - A status, when there is one, decides even if reading the body then failed: the receiver has
//!   answered.

use std::time::{Duration, SystemTime};

use super::client::AttemptError;

/// Longest `Retry-After` honoured; longer values are cut to this (the endpoint's `max_delay_ms`
/// caps it further). Bounds the arithmetic on a hostile header.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// What to do with a delivery after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has it.
    Success,
    /// Not retryable: 400, 401, 403, 404, 410, 422, 3xx, SSRF refusal, invalid URL.
    Failed,
    /// Retry later: 408, 429, 5xx, timeouts, connection errors, other 4xx. `retry_after` is only
    /// ever set for 429 and 503 (the receiver's `Retry-After`).
    Retry { retry_after: Option<Duration> },
}

/// Status codes that fail a delivery at once (CONTRACT.md).
const FAILED_STATUSES: [u16; 6] = [400, 401, 403, 404, 410, 422];

/// Classifies one attempt. `status` is the receiver's status code if a response head arrived;
/// `error` what went wrong otherwise (or while reading the body); `retry_after` the parsed
/// `Retry-After` header, honoured only on 429 and 503.
pub fn classify(
    status: Option<u16>,
    error: Option<&AttemptError>,
    retry_after: Option<Duration>,
) -> Outcome {
    match status {
        Some(s) => classify_status(s, retry_after),
        None => match error {
            Some(AttemptError::SsrfBlocked(_) | AttemptError::InvalidUrl(_)) => Outcome::Failed,
            Some(_) => Outcome::Retry { retry_after: None },
            None => {
                // A result with neither status nor error is a bug in the client; retrying is
                // the answer that cannot lose the delivery.
                debug_assert!(false, "attempt result with neither status nor error");
                Outcome::Retry { retry_after: None }
            }
        },
    }
}

fn classify_status(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        s if FAILED_STATUSES.contains(&s) => Outcome::Failed,
        300..=399 => Outcome::Failed,
        429 | 503 => Outcome::Retry {
            retry_after: retry_after.map(|d| d.min(RETRY_AFTER_MAX)),
        },
        _ => Outcome::Retry { retry_after: None },
    }
}

/// The error class of a failed attempt, for `top_failures` and `last_error`: `http_<status>` when
/// the receiver answered, else `timeout`, `connect_error`, `dns_error`, `tls_error`,
/// `ssrf_blocked`, `body_error`, `invalid_url` or `error`.
pub fn error_class(status: Option<u16>, error: Option<&AttemptError>) -> String {
    match (status, error) {
        (Some(s), _) => format!("http_{s}"),
        (None, Some(e)) => e.class().to_owned(),
        (None, None) => "error".to_owned(),
    }
}

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past means "now" (zero).
/// Anything else is `None`. Values beyond [`RETRY_AFTER_MAX`] are cut to it.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: an overflowing number is still "a very long time".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(RETRY_AFTER_MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Outcome = Outcome::Retry { retry_after: None };

    #[test]
    fn status_table() {
        let cases: &[(u16, Outcome)] = &[
            (100, RETRY),
            (200, Outcome::Success),
            (201, Outcome::Success),
            (202, Outcome::Success),
            (204, Outcome::Success),
            (299, Outcome::Success),
            (301, Outcome::Failed),
            (302, Outcome::Failed),
            (304, Outcome::Failed),
            (307, Outcome::Failed),
            (308, Outcome::Failed),
            (400, Outcome::Failed),
            (401, Outcome::Failed),
            (402, RETRY),
            (403, Outcome::Failed),
            (404, Outcome::Failed),
            (405, RETRY),
            (408, RETRY),
            (409, RETRY),
            (410, Outcome::Failed),
            (413, RETRY),
            (422, Outcome::Failed),
            (425, RETRY),
            (429, RETRY),
            (499, RETRY),
            (500, RETRY),
            (502, RETRY),
            (503, RETRY),
            (504, RETRY),
            (599, RETRY),
            (600, RETRY),
        ];
        for &(status, want) in cases {
            assert_eq!(classify(Some(status), None, None), want, "status {status}");
        }
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let ra = Some(Duration::from_secs(30));
        for s in [429, 503] {
            assert_eq!(
                classify(Some(s), None, ra),
                Outcome::Retry { retry_after: ra },
                "{s}"
            );
        }
        for s in [408, 500, 502, 504, 409] {
            assert_eq!(classify(Some(s), None, ra), RETRY, "{s}");
        }
        assert_eq!(classify(Some(200), None, ra), Outcome::Success);
        let huge = Some(Duration::from_secs(u64::from(u32::MAX)));
        assert_eq!(
            classify(Some(429), None, huge),
            Outcome::Retry {
                retry_after: Some(RETRY_AFTER_MAX)
            }
        );
    }

    #[test]
    fn error_table() {
        let cases: &[(AttemptError, Outcome, &str)] = &[
            (AttemptError::Timeout, RETRY, "timeout"),
            (
                AttemptError::Connect("refused".into()),
                RETRY,
                "connect_error",
            ),
            (AttemptError::Dns("nxdomain".into()), RETRY, "dns_error"),
            (AttemptError::Tls("bad cert".into()), RETRY, "tls_error"),
            (AttemptError::Body("reset".into()), RETRY, "body_error"),
            (AttemptError::Other("?".into()), RETRY, "error"),
            (
                AttemptError::SsrfBlocked("127.0.0.1".into()),
                Outcome::Failed,
                "ssrf_blocked",
            ),
            (
                AttemptError::InvalidUrl("ftp://x".into()),
                Outcome::Failed,
                "invalid_url",
            ),
        ];
        for (err, want, class) in cases {
            assert_eq!(classify(None, Some(err), None), *want, "{err:?}");
            assert_eq!(error_class(None, Some(err)), *class, "{err:?}");
        }
    }

    #[test]
    fn status_wins_over_body_error() {
        let body = AttemptError::Body("reset while reading".into());
        assert_eq!(classify(Some(200), Some(&body), None), Outcome::Success);
        assert_eq!(classify(Some(404), Some(&body), None), Outcome::Failed);
        assert_eq!(
            error_class(Some(503), Some(&AttemptError::Timeout)),
            "http_503"
        );
        assert_eq!(error_class(Some(404), None), "http_404");
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(RETRY_AFTER_MAX)
        );
        for bad in ["", "-5", "+5", "1.5", "soon", "12 s"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480 - 90);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date in the past means "retry now".
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480 + 5);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", later),
            Some(Duration::ZERO)
        );
        // The obsolete formats httpdate accepts (RFC 850, asctime) work too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 32 Oct 2015 07:28:00 GMT", now),
            None
        );
    }
}
