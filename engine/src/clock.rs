//! Wall-clock time as the engine uses it: milliseconds since the Unix epoch, and RFC 3339.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ms` since the epoch as RFC 3339 UTC with millisecond precision, e.g.
/// `2026-11-28T10:00:00.123Z` (the DLQ object's format, [`crate::dlq::object::rfc3339`]).
pub fn rfc3339_ms(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    crate::dlq::object::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds() {
        let s = rfc3339_ms(1_790_000_000_123);
        assert!(s.ends_with(".123Z"), "{s}");
        let back = crate::dlq::object::parse_rfc3339(&s).unwrap();
        assert_eq!(back.unix_timestamp_nanos() / 1_000_000, 1_790_000_000_123);
    }
}
