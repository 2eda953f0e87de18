//! Sender-side signatures for every ingest verification mode (CONTRACT.md "Ingest"), made cheap
//! enough for the load generator's hot path.
//!
//! The trick: every signed message ends with the body, and every bench body ends with a short,
//! unique tail (the event id, see `payload.rs`). So once per unix second (Stripe's `t` changes
//! each second) a worker computes the HMAC state after `prefix(t) + body head` ([`Signer::prepare`]);
//! each request then clones that state, feeds the ~30-byte tail and finalizes: a few SHA-256
//! blocks instead of hashing the whole body. Standard Webhooks signs `"{id}.{t}.{body}"` with the
//! unique id first, so that mode hashes the whole body per request (it is not the default).
//!
//! Not here: what the body looks like (`payload.rs`) or the rest of the request (`request.rs`).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// An ingest verification mode of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stripe,
    Github,
    Standard,
    Shopify,
    Slack,
    Generic,
    None,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Stripe,
        Mode::Github,
        Mode::Standard,
        Mode::Shopify,
        Mode::Slack,
        Mode::Generic,
        Mode::None,
    ];

    /// The name used in `verification.mode`.
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

    /// A fixed secret valid for this mode: Standard Webhooks wants `whsec_<base64>`.
    pub fn default_secret(self) -> String {
        match self {
            Mode::Standard => format!("whsec_{}", B64.encode(b"hookrelay-bench-signing-key-0123")),
            _ => "hookrelay_bench_secret_0123456789abcdef".to_string(),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown verification mode {s:?} (one of stripe, github, standard, shopify, slack, generic, none)"))
    }
}

/// Signs requests for one endpoint: its mode and secret.
#[derive(Clone)]
pub struct Signer {
    mode: Mode,
    /// The keyed HMAC before any message byte (the ipad/opad blocks already absorbed).
    keyed: HmacSha256,
}

/// The per-second state of a [`Signer`] for one body head: computed by [`Signer::prepare`],
/// used by [`Signer::write_headers`] for every request of that second.
#[derive(Clone)]
pub struct Prepared {
    t_text: String,
    /// HMAC state after the signed prefix and the body head; `None` for Standard Webhooks
    /// (whose message starts with the per-request id) and for `none`.
    state: Option<HmacSha256>,
}

impl Signer {
    /// A signer for `mode` with the endpoint's verification `secret`.
    pub fn new(mode: Mode, secret: &str) -> anyhow::Result<Self> {
        let key = match mode {
            Mode::Standard => {
                let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
                B64.decode(encoded).map_err(|e| {
                    anyhow::anyhow!("a Standard Webhooks secret is whsec_<base64>: {e}")
                })?
            }
            _ => secret.as_bytes().to_vec(),
        };
        let keyed = HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length");
        Ok(Self { mode, keyed })
    }

    /// The state for second `t` and bodies starting with `head`. About one full-body HMAC.
    pub fn prepare(&self, t: i64, head: &[u8]) -> Prepared {
        let t_text = t.to_string();
        let state = match self.mode {
            Mode::Standard | Mode::None => None,
            mode => {
                let mut mac = self.keyed.clone();
                match mode {
                    Mode::Stripe | Mode::Generic => {
                        mac.update(t_text.as_bytes());
                        mac.update(b".");
                    }
                    Mode::Slack => {
                        mac.update(b"v0:");
                        mac.update(t_text.as_bytes());
                        mac.update(b":");
                    }
                    _ => {}
                }
                mac.update(head);
                Some(mac)
            }
        };
        Prepared { t_text, state }
    }

    /// Appends the signature header lines (each ending in CRLF) for the body `head + tail` to
    /// `out`. `event_id` is the unique id of the request (the provider's delivery id in modes
    /// that have one). `prepared` must come from [`Signer::prepare`] with the same `head`.
    pub fn write_headers(
        &self,
        prepared: &Prepared,
        head: &[u8],
        tail: &[u8],
        event_id: &str,
        out: &mut Vec<u8>,
    ) {
        let t = prepared.t_text.as_bytes();
        match self.mode {
            Mode::None => {}
            Mode::Standard => {
                let mut mac = self.keyed.clone();
                mac.update(event_id.as_bytes());
                mac.update(b".");
                mac.update(t);
                mac.update(b".");
                mac.update(head);
                mac.update(tail);
                header(out, b"webhook-id: ", &[event_id.as_bytes()]);
                header(out, b"webhook-timestamp: ", &[t]);
                let sig = finish_b64(mac);
                header(out, b"webhook-signature: v1,", &[sig.as_bytes()]);
            }
            mode => {
                let mut mac = prepared
                    .state
                    .clone()
                    .expect("prepare() keeps a state for every body-last mode");
                mac.update(tail);
                match mode {
                    Mode::Stripe => {
                        let sig = finish_hex(mac);
                        header(out, b"Stripe-Signature: t=", &[t, b",v1=", &sig]);
                    }
                    Mode::Github => {
                        let sig = finish_hex(mac);
                        header(out, b"X-Hub-Signature-256: sha256=", &[&sig]);
                        header(out, b"X-GitHub-Delivery: ", &[event_id.as_bytes()]);
                        header(out, b"X-GitHub-Event: ", &[b"bench"]);
                    }
                    Mode::Shopify => {
                        let sig = finish_b64(mac);
                        header(out, b"X-Shopify-Hmac-Sha256: ", &[sig.as_bytes()]);
                        header(out, b"X-Shopify-Webhook-Id: ", &[event_id.as_bytes()]);
                    }
                    Mode::Slack => {
                        let sig = finish_hex(mac);
                        header(out, b"X-Slack-Request-Timestamp: ", &[t]);
                        header(out, b"X-Slack-Signature: v0=", &[&sig]);
                    }
                    Mode::Generic => {
                        let sig = finish_hex(mac);
                        header(out, b"X-Timestamp: ", &[t]);
                        header(out, b"X-Signature: sha256=", &[&sig]);
                    }
                    Mode::Standard | Mode::None => unreachable!("handled above"),
                }
            }
        }
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

fn finish_hex(mac: HmacSha256) -> [u8; 64] {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex)
        .expect("32 bytes fill 64 hex digits");
    hex
}

fn finish_b64(mac: HmacSha256) -> String {
    B64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 over the concatenation of `parts`, the slow and obvious way.
    fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn headers(
        mode: Mode,
        secret: &str,
        t: i64,
        head: &[u8],
        tail: &[u8],
        id: &str,
    ) -> Vec<(String, String)> {
        let signer = Signer::new(mode, secret).unwrap();
        let prepared = signer.prepare(t, head);
        let mut out = Vec::new();
        signer.write_headers(&prepared, head, tail, id, &mut out);
        String::from_utf8(out)
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn get<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
        &h.iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name} in {h:?}"))
            .1
    }

    const HEAD: &[u8] = br#"{"object":"event","data":{"pad":"xxxxxxxx"},"id":""#;
    const TAIL: &[u8] = br#"evt_0001"}"#;

    #[test]
    fn stripe_signs_t_dot_body() {
        let h = headers(Mode::Stripe, "sk", 1_700_000_000, HEAD, TAIL, "evt_0001");
        let want = hex::encode(hmac(b"sk", &[b"1700000000.", HEAD, TAIL]));
        assert_eq!(
            get(&h, "Stripe-Signature"),
            format!("t=1700000000,v1={want}")
        );
    }

    #[test]
    fn github_signs_the_body() {
        let h = headers(Mode::Github, "gh", 5, HEAD, TAIL, "evt_0001");
        let want = hex::encode(hmac(b"gh", &[HEAD, TAIL]));
        assert_eq!(get(&h, "X-Hub-Signature-256"), format!("sha256={want}"));
        assert_eq!(get(&h, "X-GitHub-Delivery"), "evt_0001");
    }

    #[test]
    fn shopify_signs_the_body_in_base64() {
        let h = headers(Mode::Shopify, "sh", 5, HEAD, TAIL, "evt_0001");
        assert_eq!(
            get(&h, "X-Shopify-Hmac-Sha256"),
            B64.encode(hmac(b"sh", &[HEAD, TAIL]))
        );
    }

    #[test]
    fn slack_signs_v0_t_body() {
        let h = headers(Mode::Slack, "sl", 42, HEAD, TAIL, "evt_0001");
        let want = hex::encode(hmac(b"sl", &[b"v0:42:", HEAD, TAIL]));
        assert_eq!(get(&h, "X-Slack-Request-Timestamp"), "42");
        assert_eq!(get(&h, "X-Slack-Signature"), format!("v0={want}"));
    }

    #[test]
    fn generic_signs_t_dot_body() {
        let h = headers(Mode::Generic, "ge", 42, HEAD, TAIL, "evt_0001");
        let want = hex::encode(hmac(b"ge", &[b"42.", HEAD, TAIL]));
        assert_eq!(get(&h, "X-Timestamp"), "42");
        assert_eq!(get(&h, "X-Signature"), format!("sha256={want}"));
    }

    #[test]
    fn standard_signs_id_t_body_with_the_decoded_key() {
        let secret = Mode::Standard.default_secret();
        let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let h = headers(Mode::Standard, &secret, 42, HEAD, TAIL, "msg_1");
        let want = B64.encode(hmac(&key, &[b"msg_1.42.", HEAD, TAIL]));
        assert_eq!(get(&h, "webhook-id"), "msg_1");
        assert_eq!(get(&h, "webhook-timestamp"), "42");
        assert_eq!(get(&h, "webhook-signature"), format!("v1,{want}"));
    }

    #[test]
    fn none_writes_nothing() {
        assert!(headers(Mode::None, "x", 1, HEAD, TAIL, "e").is_empty());
    }

    #[test]
    fn one_prepared_state_signs_many_tails() {
        let signer = Signer::new(Mode::Stripe, "sk").unwrap();
        let prepared = signer.prepare(7, HEAD);
        for tail in [&b"a\"}"[..], b"bb\"}", b"ccc\"}"] {
            let mut out = Vec::new();
            signer.write_headers(&prepared, HEAD, tail, "x", &mut out);
            let want = hex::encode(hmac(b"sk", &[b"7.", HEAD, tail]));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("Stripe-Signature: t=7,v1={want}\r\n")
            );
        }
    }

    #[test]
    fn modes_round_trip_through_their_names() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>().unwrap(), mode);
        }
        assert!("svix".parse::<Mode>().is_err());
    }
}
