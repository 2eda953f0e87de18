//! Bench bodies: Stripe-like JSON events of an exact size whose only varying part is a short
//! tail carrying the unique event id.
//!
//! The id must be unique per request, or HookRelay's idempotency (the Stripe event `id` in the
//! body, or a hash of the body in other modes) would answer 200 `duplicate` instead of making a
//! new delivery durable. It sits at the very end of the body so the signer can precompute the
//! HMAC over everything before it (see `sign.rs`).

/// Length of the unique event id: `evt_` + 8 hex digits of run nonce + 16 of sequence number.
pub const EVENT_ID_LEN: usize = 4 + 8 + 16;
/// Length of the tail: the event id and the closing `"}`.
pub const TAIL_LEN: usize = EVENT_ID_LEN + 2;

const HEAD_START: &str =
    r#"{"object":"event","type":"bench.event","api_version":"2024-06-20","data":{"pad":""#;
const HEAD_END: &str = r#""},"id":""#;

/// The smallest body the template can make.
pub const BODY_BYTES_MIN: usize = HEAD_START.len() + HEAD_END.len() + TAIL_LEN;

/// The constant part of every body, sized so that `head + tail` is exactly the requested size.
#[derive(Clone, Debug)]
pub struct BodyTemplate {
    head: Vec<u8>,
}

impl BodyTemplate {
    /// A template for bodies of exactly `body_bytes` (at least [`BODY_BYTES_MIN`]).
    pub fn new(body_bytes: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            body_bytes >= BODY_BYTES_MIN,
            "bodies must be at least {BODY_BYTES_MIN} bytes (got {body_bytes})"
        );
        let pad = body_bytes - BODY_BYTES_MIN;
        let mut head = Vec::with_capacity(body_bytes);
        head.extend_from_slice(HEAD_START.as_bytes());
        // Varied printable padding: a body of one repeated byte would compress unrealistically
        // well if anything on the path compresses.
        head.extend(
            (0..pad).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + i / 36) % 36]),
        );
        head.extend_from_slice(HEAD_END.as_bytes());
        Ok(Self { head })
    }

    /// Everything before the tail.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Size of every body made from this template.
    pub fn body_bytes(&self) -> usize {
        self.head.len() + TAIL_LEN
    }
}

/// The unique tail of request `seq` in run `nonce`; its first [`EVENT_ID_LEN`] bytes are the
/// event id.
pub fn tail(nonce: u32, seq: u64) -> [u8; TAIL_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; TAIL_LEN];
    out[..4].copy_from_slice(b"evt_");
    for i in 0..8 {
        out[4 + i] = HEX[((nonce >> (28 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        out[12 + i] = HEX[((seq >> (60 - 4 * i)) & 0xf) as usize];
    }
    out[EVENT_ID_LEN..].copy_from_slice(b"\"}");
    out
}

/// The event id inside a tail.
pub fn event_id(tail: &[u8; TAIL_LEN]) -> &str {
    std::str::from_utf8(&tail[..EVENT_ID_LEN]).expect("tails are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_exact_size_and_are_json_with_the_id() {
        for size in [BODY_BYTES_MIN, 200, 1024, 65536] {
            let t = BodyTemplate::new(size).unwrap();
            let tail = tail(0xdead_beef, 42);
            let mut body = t.head().to_vec();
            body.extend_from_slice(&tail);
            assert_eq!(body.len(), size);
            assert_eq!(t.body_bytes(), size);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["id"], "evt_deadbeef000000000000002a");
            assert_eq!(event_id(&tail), "evt_deadbeef000000000000002a");
        }
        assert!(BodyTemplate::new(BODY_BYTES_MIN - 1).is_err());
    }
}
