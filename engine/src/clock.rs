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

/// Milliseconds on the monotonic clock (since the first call in this process, plus one so that
/// 0 never appears). The scheduler runs on it: a wall-clock jump must neither fire every retry
/// at once nor stall them for hours.
pub fn mono_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    origin.elapsed().as_millis() as u64 + 1
}

/// A wall-clock due time (as stored in records) on the monotonic clock: the same distance from
/// now. A due time in the past is due now.
pub fn wall_to_mono(due_wall_ms: u64) -> u64 {
    mono_ms() + due_wall_ms.saturating_sub(now_ms())
}

/// `ms` since the epoch as RFC 3339 UTC with millisecond precision, e.g.
/// `2026-11-28T10:00:00.123Z` (the DLQ object's format, [`crate::dlq::object::rfc3339`]).
pub fn rfc3339_ms(ms: u64) -> String {
    crate::dlq::object::rfc3339(datetime_ms(ms))
}

/// `ms` since the epoch as a UTC date-time (the epoch if out of range).
pub fn datetime_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
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
