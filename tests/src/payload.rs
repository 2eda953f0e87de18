//! Unique sender payloads.
//!
//! Without an idempotency key HookRelay deduplicates on a hash of the body and a time bucket, so
//! two tests (or two sends in one test) that used the same bytes would be merged. Every body made
//! here carries a process-unique nonce.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A string unique within this machine for the life of the test run: pid, a counter, and the
/// clock (so two test binaries running at once never collide either).
pub fn nonce() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{n:x}", std::process::id(), nanos)
}

/// A JSON event shaped like a provider's (`id`, `type`, `data`), with a unique `id`, serialised
/// with deliberately odd whitespace so that a byte-for-byte check catches re-serialisation.
pub fn unique_json(label: &str) -> Vec<u8> {
    let id = format!("evt_{}", nonce());
    format!("{{\"id\":\"{id}\",  \"type\": \"{label}\",\n \"data\": {{\"amount\": 4200, \"note\": \"caf\u{e9} \\u00e9\"}} }}")
        .into_bytes()
}

/// A Stripe-like event with a chosen event `id` (which Stripe mode uses as the idempotency key).
pub fn stripe_event(event_id: &str, amount: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "object": "event",
        "type": "charge.succeeded",
        "data": {"object": {"amount": amount}},
    }))
    .expect("serialising a json! literal")
}

/// Bytes that are not UTF-8 nor JSON, with a unique tail.
pub fn unique_binary() -> Vec<u8> {
    let mut body = vec![0x00, 0xff, 0xfe, 0x80, b'\r', b'\n', 0x7f];
    body.extend_from_slice(nonce().as_bytes());
    body
}

/// The `id` field of a JSON body made here.
pub fn event_id(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("payload is JSON");
    value["id"]
        .as_str()
        .expect("payload has a string id")
        .to_string()
}
