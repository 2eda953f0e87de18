//! The verification modes an endpoint can be configured with.

use std::fmt;
use std::str::FromStr;

/// How ingest checks the sender's signature (`verification.mode` in the contract).
/// Serialised, parsed and displayed as the lowercase names the contract uses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `Stripe-Signature: t=<unix>,v1=<hex>`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// Standard Webhooks / Svix: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard,
    /// `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// `X-Slack-Signature: v0=<hex>` with `X-Slack-Request-Timestamp`.
    Slack,
    /// HookRelay's own scheme: `X-Signature: sha256=<hex>` with `X-Timestamp`. The default.
    #[default]
    Generic,
    /// No check at all.
    None,
}

impl Mode {
    /// Every mode, in the contract's order.
    pub const ALL: [Mode; 7] = [
        Mode::Stripe,
        Mode::Github,
        Mode::Standard,
        Mode::Shopify,
        Mode::Slack,
        Mode::Generic,
        Mode::None,
    ];

    /// The contract's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stripe => "stripe",
            Mode::Github => "github",
            Mode::Standard => "standard",
            Mode::Shopify => "shopify",
            Mode::Slack => "slack",
            Mode::Generic => "generic",
            Mode::None => "none",
        }
    }

    /// Whether the mode signs a timestamp and so can answer `signature_expired`.
    pub fn is_timestamped(self) -> bool {
        matches!(
            self,
            Mode::Stripe | Mode::Standard | Mode::Slack | Mode::Generic
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of the contract's (they are matched exactly, lowercase, as in
/// JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown verification mode {0:?} (expected one of stripe, github, standard, shopify, slack, generic, none)"
)]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_display_and_serde() {
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
            let json = serde_json::to_string(&mode).expect("serialise");
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<Mode>(&json).expect("parse"), mode);
        }
    }

    #[test]
    fn default_is_generic() {
        assert_eq!(Mode::default(), Mode::Generic);
    }

    #[test]
    fn unknown_and_wrong_case_names_are_rejected() {
        assert!("Stripe".parse::<Mode>().is_err());
        assert!("svix".parse::<Mode>().is_err());
        assert!("".parse::<Mode>().is_err());
        assert!(serde_json::from_str::<Mode>("\"GITHUB\"").is_err());
    }
}
