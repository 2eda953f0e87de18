//! Retry backoff: how long a delivery waits after a failed attempt (CONTRACT.md, "Forwarding to
//! the receiver").
//!
//! This module is pure arithmetic: it does not classify outcomes (that is `delivery`'s job), does
//! not draw random numbers (the caller passes a unit value, so the shard's seeded RNG or a test
//! decides) and does not schedule anything (the shard puts the due time into its [`crate::wheel`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bound for `max_attempts`: retries are bounded (ARCHITECTURE.md invariant 7).
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Upper bound for `max_delay_ms` (7 days, the idempotency window): a longer wait between two
/// attempts is a configuration mistake, not a policy.
pub const MAX_DELAY_MS_LIMIT: u64 = 7 * 24 * 60 * 60 * 1000;
/// Upper bound for `factor`; beyond it every delay after the first is `max_delay_ms` anyway.
pub const FACTOR_LIMIT: f64 = 1000.0;

/// An endpoint's retry policy: the `retry` object of an endpoint (CONTRACT.md, "Endpoints").
///
/// Missing fields take the contract defaults ([`RetryPolicy::default`]); unknown fields are an
/// error, so a typo in a config file or request body is reported rather than ignored. Call
/// [`RetryPolicy::validate`] after deserializing: serde accepts values the engine must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1..=[`MAX_ATTEMPTS_LIMIT`]). After this many
    /// attempts a retryable failure makes the delivery `exhausted`.
    pub max_attempts: u32,
    /// Wait after the first failed attempt, before jitter.
    pub base_delay_ms: u64,
    /// Growth of the wait per further failed attempt (>= 1).
    pub factor: f64,
    /// Ceiling of every wait, jitter and `Retry-After` included.
    pub max_delay_ms: u64,
    /// Fraction (0..=1) by which a wait is randomly lengthened or shortened.
    pub jitter: f64,
    /// Give 400, 401, 403, 404, 410 and 422 answers one more try instead of failing at once.
    pub retry_client_errors_once: bool,
}

impl Default for RetryPolicy {
    /// The contract defaults: 10 attempts, 5 s, ×3, at most 6 h, ±20 %, client errors final.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay_ms: 5_000,
            factor: 3.0,
            max_delay_ms: 21_600_000,
            jitter: 0.2,
            retry_client_errors_once: false,
        }
    }
}

impl RetryPolicy {
    /// Checks that the policy is usable; the error names the first offending field and is fit for
    /// a 422 `validation_failed` detail.
    ///
    /// A `base_delay_ms` of 0 is allowed (immediate retries, bounded by `max_attempts`).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(format!(
                "retry.max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {}",
                self.max_attempts
            ));
        }
        if !self.factor.is_finite() || !(1.0..=FACTOR_LIMIT).contains(&self.factor) {
            return Err(format!(
                "retry.factor must be between 1 and {FACTOR_LIMIT}, got {}",
                self.factor
            ));
        }
        if !self.jitter.is_finite() || !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry.jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if self.max_delay_ms > MAX_DELAY_MS_LIMIT {
            return Err(format!(
                "retry.max_delay_ms must be at most {MAX_DELAY_MS_LIMIT}, got {}",
                self.max_delay_ms
            ));
        }
        if self.base_delay_ms > self.max_delay_ms {
            return Err(format!(
                "retry.base_delay_ms ({}) must not exceed retry.max_delay_ms ({})",
                self.base_delay_ms, self.max_delay_ms
            ));
        }
        Ok(())
    }

    /// True when `attempts_made` attempts use up the policy: no further attempt may be scheduled
    /// and a retryable failure makes the delivery `exhausted`.
    pub fn is_exhausted(&self, attempts_made: u32) -> bool {
        attempts_made >= self.max_attempts
    }

    /// The wait after failed attempt `failed_attempt_n` (1-based) before the next attempt.
    ///
    /// The nominal wait is `min(max_delay_ms, base_delay_ms * factor^(n-1))`, so attempt 2 follows
    /// attempt 1 by `base_delay_ms`. Jitter then spreads it uniformly over
    /// `[nominal * (1 - jitter), min(nominal * (1 + jitter), max_delay_ms)]` using `rng_unit`
    /// (in `[0, 1)`; 0 gives the shortest wait).
    ///
    /// Decision: `max_delay_ms` is a hard ceiling, jitter never pushes a wait above it. At the cap
    /// the jitter is one-sided (downwards) but still uniform, so receivers that have been down for
    /// hours do not get a thundering herd of retries at exactly `max_delay_ms`.
    ///
    /// Never overflows (the arithmetic saturates) and is deterministic in its inputs. A
    /// `failed_attempt_n` of 0 is treated as 1; an `rng_unit` outside `[0, 1)` is clamped.
    pub fn delay_ms(&self, failed_attempt_n: u32, rng_unit: f64) -> u64 {
        debug_assert!(failed_attempt_n >= 1, "attempts are numbered from 1");
        debug_assert!(
            (0.0..1.0).contains(&rng_unit),
            "rng_unit {rng_unit} not in [0, 1)"
        );
        let nominal = self.nominal_delay_ms(failed_attempt_n);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if rng_unit.is_finite() {
            rng_unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let max = self.max_delay_ms as f64;
        let low = nominal * (1.0 - jitter);
        let high = (nominal * (1.0 + jitter)).min(max).max(low);
        // `as u64` saturates and maps NaN to 0; the final `min` keeps the ceiling exact despite
        // rounding.
        let delay = (low + (high - low) * unit).round() as u64;
        delay.min(self.max_delay_ms)
    }

    /// The wait before the next attempt after failed attempt `failed_attempt_n`, honouring the
    /// receiver's `Retry-After` when there is one.
    ///
    /// A `retry_after` replaces the computed backoff (no jitter: the receiver asked for a moment)
    /// and is capped by `max_delay_ms`. The caller decides which answers' `Retry-After` count
    /// (the contract: 429 and 503) and parses it with [`crate::delivery::classify::parse_retry_after`].
    pub fn next_delay_ms(
        &self,
        failed_attempt_n: u32,
        retry_after: Option<Duration>,
        rng_unit: f64,
    ) -> u64 {
        match retry_after {
            Some(wait) => {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                wait_ms.min(self.max_delay_ms)
            }
            None => self.delay_ms(failed_attempt_n, rng_unit),
        }
    }

    /// `min(max_delay_ms, base_delay_ms * factor^(n-1))` before jitter, as a float.
    fn nominal_delay_ms(&self, failed_attempt_n: u32) -> f64 {
        let max = self.max_delay_ms as f64;
        let base = self.base_delay_ms as f64;
        // Beyond 2048 doublings every factor > 1 is already infinite; the clamp keeps the cast to
        // i32 exact.
        let exponent = failed_attempt_n.saturating_sub(1).min(2048) as i32;
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let nominal = base * factor.powi(exponent);
        if nominal.is_finite() {
            nominal.min(max)
        } else {
            max
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 10);
        assert_eq!(p.base_delay_ms, 5_000);
        assert_eq!(p.factor, 3.0);
        assert_eq!(p.max_delay_ms, 21_600_000);
        assert_eq!(p.jitter, 0.2);
        assert!(!p.retry_client_errors_once);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn deserialize_fills_defaults_and_rejects_unknown_fields() {
        let p: RetryPolicy = serde_json::from_str(r#"{"max_attempts": 3}"#).unwrap();
        assert_eq!(
            p,
            RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            }
        );
        let round: RetryPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(round, p);
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_attempt": 3}"#).is_err());
    }

    #[test]
    fn validate_rejects_nonsense() {
        let ok = RetryPolicy::default();
        let bad = [
            RetryPolicy {
                max_attempts: 0,
                ..ok
            },
            RetryPolicy {
                max_attempts: MAX_ATTEMPTS_LIMIT + 1,
                ..ok
            },
            RetryPolicy { factor: 0.5, ..ok },
            RetryPolicy {
                factor: f64::NAN,
                ..ok
            },
            RetryPolicy {
                factor: f64::INFINITY,
                ..ok
            },
            RetryPolicy { jitter: -0.1, ..ok },
            RetryPolicy { jitter: 1.5, ..ok },
            RetryPolicy {
                jitter: f64::NAN,
                ..ok
            },
            RetryPolicy {
                base_delay_ms: 10,
                max_delay_ms: 5,
                ..ok
            },
            RetryPolicy {
                max_delay_ms: MAX_DELAY_MS_LIMIT + 1,
                ..ok
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?} should be refused");
        }
        let edge = RetryPolicy {
            max_attempts: 1,
            base_delay_ms: 0,
            factor: 1.0,
            jitter: 1.0,
            ..ok
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn contract_schedule_without_jitter() {
        let p = no_jitter();
        // Attempt 2 follows attempt 1 by base_delay_ms, then ×3 each time, capped at 6 h.
        let delays: Vec<u64> = (1..=9).map(|n| p.delay_ms(n, 0.5)).collect();
        assert_eq!(
            delays,
            [
                5_000, 15_000, 45_000, 135_000, 405_000, 1_215_000, 3_645_000, 10_935_000,
                21_600_000
            ]
        );
        assert_eq!(p.delay_ms(u32::MAX, 0.5), 21_600_000);
    }

    #[test]
    fn jitter_spreads_around_the_nominal_delay_and_never_passes_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 0.0), 4_000);
        assert_eq!(p.delay_ms(1, 0.5), 5_000);
        assert_eq!(p.delay_ms(1, 0.999_999), 6_000);
        // At the cap the jitter only shortens: [0.8 * max, max].
        assert_eq!(p.delay_ms(50, 0.0), 17_280_000);
        assert_eq!(p.delay_ms(50, 0.999_999_999), 21_600_000);
    }

    #[test]
    fn huge_values_saturate() {
        let p = RetryPolicy {
            base_delay_ms: MAX_DELAY_MS_LIMIT,
            max_delay_ms: MAX_DELAY_MS_LIMIT,
            factor: FACTOR_LIMIT,
            ..RetryPolicy::default()
        };
        assert!(p.delay_ms(u32::MAX, 0.99) <= MAX_DELAY_MS_LIMIT);
        let wild = RetryPolicy {
            max_delay_ms: u64::MAX,
            base_delay_ms: u64::MAX,
            ..p
        };
        // No wrap-around to a tiny delay: the arithmetic saturates.
        assert!(wild.delay_ms(u32::MAX, 0.99) > u64::MAX / 2);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next_delay_ms(1, Some(Duration::from_secs(30)), 0.0),
            30_000
        );
        assert_eq!(p.next_delay_ms(1, Some(Duration::ZERO), 0.0), 0);
        assert_eq!(
            p.next_delay_ms(1, Some(Duration::from_secs(1_000_000)), 0.0),
            21_600_000
        );
        assert_eq!(p.next_delay_ms(1, Some(Duration::MAX), 0.0), 21_600_000);
        assert_eq!(p.next_delay_ms(2, None, 0.5), 15_000);
    }

    fn valid_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            1..=MAX_ATTEMPTS_LIMIT,
            0..=MAX_DELAY_MS_LIMIT,
            1.0..=10.0f64,
            0.0..=1.0f64,
            any::<bool>(),
        )
            .prop_flat_map(|(max_attempts, max_delay_ms, factor, jitter, once)| {
                (0..=max_delay_ms).prop_map(move |base_delay_ms| RetryPolicy {
                    max_attempts,
                    base_delay_ms,
                    factor,
                    max_delay_ms,
                    jitter,
                    retry_client_errors_once: once,
                })
            })
    }

    proptest! {
        #[test]
        fn prop_delay_within_jitter_bounds_and_cap(
            p in valid_policy(), n in 1..200u32, unit in 0.0..1.0f64,
        ) {
            prop_assert_eq!(p.validate(), Ok(()));
            let d = p.delay_ms(n, unit);
            prop_assert!(d <= p.max_delay_ms);
            let nominal = p.nominal_delay_ms(n);
            let low = (nominal * (1.0 - p.jitter)).floor() as u64;
            let high = (nominal * (1.0 + p.jitter)).ceil() as u64;
            prop_assert!(d >= low && d <= high, "{} not in [{}, {}]", d, low, high);
        }

        #[test]
        fn prop_monotone_in_attempts_without_jitter(
            p in valid_policy(), n in 1..150u32, unit in 0.0..1.0f64,
        ) {
            let p = RetryPolicy { jitter: 0.0, ..p };
            prop_assert!(p.delay_ms(n, unit) <= p.delay_ms(n + 1, unit));
            prop_assert_eq!(p.delay_ms(1, unit), p.base_delay_ms);
        }

        #[test]
        fn prop_monotone_in_rng_unit(p in valid_policy(), n in 1..50u32, a in 0.0..1.0f64, b in 0.0..1.0f64) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(p.delay_ms(n, lo) <= p.delay_ms(n, hi));
        }

        #[test]
        fn prop_retry_after_capped(p in valid_policy(), secs in any::<u64>(), n in 1..50u32) {
            let d = p.next_delay_ms(n, Some(Duration::from_secs(secs)), 0.5);
            prop_assert_eq!(d, secs.saturating_mul(1000).min(p.max_delay_ms));
        }
    }
}
