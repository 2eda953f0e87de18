//! Inbound signature verification and idempotency-key derivation for ingest.
//!
//! A sender signs what it posts to `/ingest/{endpoint_id}`; [`verify`] checks that signature
//! the way the endpoint's [`Mode`] says (Stripe, GitHub, Standard Webhooks, Shopify, Slack,
//! HookRelay's generic scheme, or none) and [`idempotency_key`] names the delivery so that a
//! retried send is recognised. This module is pure: no clock (the caller passes `now_unix`),
//! no I/O, and no HTTP types beyond the [`HeaderLookup`] seam.
//!
//! It is not where HookRelay signs what it forwards: that is [`crate::signing`].
//!
//! Rules that hold for every mode:
//! - Every MAC comparison is constant-time ([`subtle::ConstantTimeEq`]); every configured
//!   secret is tried against every candidate signature, with no early exit.
//! - Parsing is bounded: a header over [`HEADER_BYTES_MAX`] is rejected, at most
//!   [`SIGNATURES_MAX`] candidate signatures of one request are considered (the rest are
//!   ignored), and a timestamp has at most [`TIMESTAMP_DIGITS_MAX`] digits.
//! - The signature is checked before the timestamp, as Stripe's own libraries do: a correct
//!   MAC over a timestamp outside the tolerance is [`VerifyError::Expired`]
//!   (`signature_expired`); anything missing, malformed or wrong is
//!   [`VerifyError::Invalid`] (`invalid_signature`). So `signature_expired` is only ever
//!   said to someone who holds the secret.
//! - An empty configured secret never verifies anything (an empty HMAC key would make the
//!   check decorative).

mod event_id;
mod generic;
mod github;
mod headers;
mod idempotency_key;
mod mac;
mod mode;
mod shopify;
mod slack;
mod standard;
mod stripe;
mod timestamp;

#[cfg(test)]
mod contract_tests;

pub use headers::HeaderLookup;
pub use idempotency_key::{
    ARRIVAL_BUCKET_S, IDEMPOTENCY_KEY_BYTES_MAX, STRIPE_EVENT_BODY_BYTES_MAX, idempotency_key,
    provider_delivery_id,
};
pub use mode::{Mode, UnknownMode};

pub(crate) use mac::hmac_sha256;
pub(crate) use standard::{
    SECRET_PREFIX as STANDARD_SECRET_PREFIX, key_from_secret as standard_key_from_secret,
};

/// Longest header value (in bytes, after trimming) that verification will parse. Real
/// signature headers are well under 1 KiB; this leaves room for several rotated signatures.
pub const HEADER_BYTES_MAX: usize = 4096;

/// Most candidate signatures considered in one request (Stripe's several `v1=`, Standard
/// Webhooks' space-separated list). Candidates past this bound are ignored, so a request whose
/// only correct signature comes later is rejected as invalid.
pub const SIGNATURES_MAX: usize = 16;

/// Most digits accepted in a unix-seconds timestamp. 18 digits always fit an `i64`; a sender
/// who sends milliseconds (13 digits) gets `signature_expired`, which points at the mistake.
pub const TIMESTAMP_DIGITS_MAX: usize = 18;

/// The tolerance the contract gives every timestamped mode, in seconds.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// Why a request failed verification. Both map to HTTP 401; [`VerifyError::code`] gives the
/// problem+json `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature is missing, malformed, or matches none of the secrets.
    #[error("missing, malformed or wrong signature")]
    Invalid,
    /// The signature is correct but its signed timestamp is more than the tolerance away from
    /// now, in either direction.
    #[error("signature timestamp outside the tolerance")]
    Expired,
}

impl VerifyError {
    /// The contract's problem+json `code` for this error.
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::Invalid => "invalid_signature",
            VerifyError::Expired => "signature_expired",
        }
    }
}

/// What a successful verification learned about the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// The signed timestamp (unix seconds), for modes that sign one (stripe, standard, slack,
    /// generic); `None` for github, shopify and none.
    pub timestamp: Option<i64>,
    /// The delivery id the mode's own provider assigned (see [`provider_delivery_id`]);
    /// `None` for modes that have none (slack, generic, none) or when it is absent.
    pub provider_delivery_id: Option<String>,
}

/// Verifies the signature of one ingest request.
///
/// `secrets` are the endpoint's verification secrets exactly as configured (the current one,
/// plus the previous one during a rotation window); a signature made with any of them passes.
/// `now_unix` is the arrival time and `tolerance_s` the allowed distance of a signed timestamp
/// from it ([`DEFAULT_TOLERANCE_S`]); a negative tolerance is treated as zero.
///
/// `Mode::None` always succeeds, without looking at the secrets or headers.
pub fn verify<H: HeaderLookup + ?Sized>(
    mode: Mode,
    secrets: &[&[u8]],
    headers: &H,
    body: &[u8],
    now_unix: i64,
    tolerance_s: i64,
) -> Result<Verified, VerifyError> {
    let window = timestamp::Window {
        now_unix,
        tolerance_s: tolerance_s.max(0),
    };
    let timestamp = match mode {
        Mode::Stripe => Some(stripe::verify(secrets, headers, body, window)?),
        Mode::Github => {
            github::verify(secrets, headers, body)?;
            None
        }
        Mode::Standard => Some(standard::verify(secrets, headers, body, window)?),
        Mode::Shopify => {
            shopify::verify(secrets, headers, body)?;
            None
        }
        Mode::Slack => Some(slack::verify(secrets, headers, body, window)?),
        Mode::Generic => Some(generic::verify(secrets, headers, body, window)?),
        Mode::None => None,
    };
    Ok(Verified {
        timestamp,
        provider_delivery_id: provider_delivery_id(mode, headers, body),
    })
}

/// The trimmed value of a header the mode requires. Missing, empty or longer than
/// [`HEADER_BYTES_MAX`] is [`VerifyError::Invalid`].
fn required_header<'h, H: HeaderLookup + ?Sized>(
    headers: &'h H,
    lowercase_name: &str,
) -> Result<&'h [u8], VerifyError> {
    let value = headers
        .get(lowercase_name)
        .ok_or(VerifyError::Invalid)?
        .trim_ascii();
    if value.is_empty() || value.len() > HEADER_BYTES_MAX {
        return Err(VerifyError::Invalid);
    }
    Ok(value)
}

/// Splits `bytes` at the first `delimiter` (which is dropped). `[u8]::split_once` is unstable.
fn split_once(bytes: &[u8], delimiter: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == delimiter)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}
