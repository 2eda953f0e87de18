//! Naming a delivery so that a retried send is recognised (contract, Ingest step 5).
//!
//! The key is, in order: the `Idempotency-Key` header; else the provider's delivery id; else a
//! SHA-256 over the tenant, endpoint, body and signed timestamp (or 5-minute arrival bucket).
//! Pure: the caller looks the key up in the idempotency index.

use sha2::{Digest, Sha256};

use super::event_id::stripe_event_id;
use super::{HeaderLookup, Mode};

/// Longest key kept verbatim, in bytes. A longer (or non-UTF-8, or control-character-bearing)
/// candidate is replaced by `sha256:<64 hex>` of its bytes: still stable across retries, and
/// bounded in the index and in delivery JSON.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Width of an arrival bucket for the content-hash fallback, in seconds (the contract's
/// "5-minute arrival bucket"). Bucket `n` is `[n * 300, (n + 1) * 300)` in unix seconds.
pub const ARRIVAL_BUCKET_S: i64 = 300;

/// Largest body searched for a Stripe event `id`; bigger bodies fall back to the content hash.
/// Matches the default `ingest.max_body_bytes`.
pub const STRIPE_EVENT_BODY_BYTES_MAX: usize = 1 << 20;

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const GITHUB_DELIVERY_HEADER: &str = "x-github-delivery";
const STANDARD_ID_HEADER: &str = "webhook-id";
const SVIX_ID_HEADER: &str = "svix-id";
const SHOPIFY_WEBHOOK_ID_HEADER: &str = "x-shopify-webhook-id";

/// Delivery-id headers looked at whatever the mode, in the contract's order (Svix's branded
/// `svix-id` last, since standard mode accepts Svix's headers).
const DELIVERY_ID_HEADERS: [&str; 4] = [
    GITHUB_DELIVERY_HEADER,
    STANDARD_ID_HEADER,
    SHOPIFY_WEBHOOK_ID_HEADER,
    SVIX_ID_HEADER,
];

/// Domain separation for the content hash, so it can never equal a hash computed for another
/// purpose over the same bytes. Bump the version if the framing ever changes.
const CONTENT_HASH_DOMAIN: &[u8] = b"hookrelay.idempotency-key.v1";

/// The delivery id the mode's own provider puts on a request, normalised like every key
/// candidate (see [`IDEMPOTENCY_KEY_BYTES_MAX`]):
/// - stripe: the `id` of the event in the body, only when the body is a JSON object (at most
///   [`STRIPE_EVENT_BODY_BYTES_MAX`]) with exactly one top-level `id` that is a string;
/// - github: `X-GitHub-Delivery`; standard: `webhook-id` (else `svix-id`);
///   shopify: `X-Shopify-Webhook-Id`;
/// - slack, generic, none: no provider id.
///
/// Empty or whitespace-only values count as absent.
pub fn provider_delivery_id<H: HeaderLookup + ?Sized>(
    mode: Mode,
    headers: &H,
    body: &[u8],
) -> Option<String> {
    match mode {
        Mode::Stripe if body.len() <= STRIPE_EVENT_BODY_BYTES_MAX => {
            stripe_event_id(body).and_then(|id| normalise(id.as_bytes()))
        }
        Mode::Stripe => None,
        Mode::Github => header_candidate(headers, GITHUB_DELIVERY_HEADER),
        Mode::Standard => header_candidate(headers, STANDARD_ID_HEADER)
            .or_else(|| header_candidate(headers, SVIX_ID_HEADER)),
        Mode::Shopify => header_candidate(headers, SHOPIFY_WEBHOOK_ID_HEADER),
        Mode::Slack | Mode::Generic | Mode::None => None,
    }
}

/// The idempotency key of one ingest request. The first of:
/// 1. the `Idempotency-Key` header;
/// 2. the mode's own provider delivery id ([`provider_delivery_id`]);
/// 3. any delivery-id header, whatever the mode, in this order: `X-GitHub-Delivery`,
///    `webhook-id`, `X-Shopify-Webhook-Id`, `svix-id`. These headers exist only to name a
///    delivery, so a sender that sets one (say a Svix sender on a generic endpoint) means it.
///    The Stripe body `id` is *not* used outside stripe mode: in an arbitrary JSON body `id`
///    usually names a business object (an order updated twice), not a delivery, and using it
///    would turn the second event into `idempotency_key_reused`;
/// 4. `hex(SHA-256(...))` (64 lowercase hex digits) over the tenant, the endpoint, the body, and
///    the signed timestamp when the mode has one, else the 5-minute arrival bucket of
///    `arrival_unix` ([`ARRIVAL_BUCKET_S`]). Each field is length-prefixed and the last one
///    tagged, so no two different inputs frame to the same bytes.
///
/// Values from 1–3 are kept verbatim when they are UTF-8 without control characters and at most
/// [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes (after trimming surrounding whitespace); otherwise they are
/// replaced by `sha256:<hex>` of their bytes. Empty values count as absent. The result is never
/// empty and never longer than [`IDEMPOTENCY_KEY_BYTES_MAX`]; the same inputs always give the same
/// key.
pub fn idempotency_key<H: HeaderLookup + ?Sized>(
    mode: Mode,
    headers: &H,
    body: &[u8],
    tenant_id: &str,
    endpoint_id: &str,
    signed_timestamp: Option<i64>,
    arrival_unix: i64,
) -> String {
    let key = header_candidate(headers, IDEMPOTENCY_KEY_HEADER)
        .or_else(|| provider_delivery_id(mode, headers, body))
        .or_else(|| {
            DELIVERY_ID_HEADERS
                .iter()
                .find_map(|name| header_candidate(headers, name))
        })
        .unwrap_or_else(|| {
            content_key(tenant_id, endpoint_id, body, signed_timestamp, arrival_unix)
        });
    debug_assert!(!key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX);
    key
}

fn header_candidate<H: HeaderLookup + ?Sized>(headers: &H, name: &str) -> Option<String> {
    headers.get(name).and_then(normalise)
}

/// A key candidate as stored: trimmed; `None` if empty; verbatim if short, UTF-8 and free of
/// control characters; else `sha256:<hex>` of its (trimmed) bytes.
fn normalise(raw: &[u8]) -> Option<String> {
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return None;
    }
    match std::str::from_utf8(raw) {
        Ok(text)
            if raw.len() <= IDEMPOTENCY_KEY_BYTES_MAX && !text.chars().any(char::is_control) =>
        {
            Some(text.to_owned())
        }
        _ => Some(format!("sha256:{}", hex::encode(Sha256::digest(raw)))),
    }
}

fn content_key(
    tenant_id: &str,
    endpoint_id: &str,
    body: &[u8],
    signed_timestamp: Option<i64>,
    arrival_unix: i64,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(CONTENT_HASH_DOMAIN);
    for field in [tenant_id.as_bytes(), endpoint_id.as_bytes(), body] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    // The tag keeps a signed timestamp `t` apart from an arrival bucket numbered `t`.
    match signed_timestamp {
        Some(t) => {
            hasher.update(b"t");
            hasher.update(t.to_be_bytes());
        }
        None => {
            hasher.update(b"b");
            hasher.update(arrival_unix.div_euclid(ARRIVAL_BUCKET_S).to_be_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: &str = "tn_1";
    const E: &str = "ep_1";
    const STRIPE_BODY: &[u8] =
        br#"{"id":"evt_123","object":"event","data":{"object":{"id":"ch_1"}}}"#;

    fn key(
        mode: Mode,
        headers: &[(&str, &[u8])],
        body: &[u8],
        signed: Option<i64>,
        arrival: i64,
    ) -> String {
        idempotency_key(mode, headers, body, T, E, signed, arrival)
    }

    #[test]
    fn idempotency_key_header_comes_first() {
        let headers: [(&str, &[u8]); 3] = [
            ("webhook-id", b"msg_1"),
            ("Idempotency-Key", b"  order-42 "),
            ("x-github-delivery", b"gh-1"),
        ];
        assert_eq!(
            key(Mode::Stripe, &headers, STRIPE_BODY, None, 0),
            "order-42"
        );
    }

    #[test]
    fn the_modes_own_provider_id_comes_next() {
        let headers: [(&str, &[u8]); 3] = [
            ("x-github-delivery", b"gh-1"),
            ("webhook-id", b"msg_1"),
            ("x-shopify-webhook-id", b"shop-1"),
        ];
        assert_eq!(key(Mode::Stripe, &headers, STRIPE_BODY, None, 0), "evt_123");
        assert_eq!(key(Mode::Github, &headers, b"{}", None, 0), "gh-1");
        assert_eq!(key(Mode::Standard, &headers, b"{}", None, 0), "msg_1");
        assert_eq!(key(Mode::Shopify, &headers, b"{}", None, 0), "shop-1");
    }

    #[test]
    fn any_delivery_id_header_is_used_whatever_the_mode_in_contract_order() {
        let all: [(&str, &[u8]); 4] = [
            ("svix-id", b"svix-1"),
            ("x-shopify-webhook-id", b"shop-1"),
            ("webhook-id", b"msg_1"),
            ("x-github-delivery", b"gh-1"),
        ];
        assert_eq!(key(Mode::Generic, &all, b"{}", None, 0), "gh-1");
        assert_eq!(key(Mode::None, &all[..3], b"{}", None, 0), "msg_1");
        assert_eq!(key(Mode::Slack, &all[..2], b"{}", None, 0), "shop-1");
        assert_eq!(key(Mode::Stripe, &all[..1], b"[]", None, 0), "svix-1");
    }

    #[test]
    fn the_stripe_body_id_is_used_only_in_stripe_mode() {
        let content = key(Mode::Generic, &[], STRIPE_BODY, None, 0);
        assert_eq!(content.len(), 64);
        assert_ne!(content, "evt_123");
    }

    #[test]
    fn the_stripe_body_id_must_be_a_top_level_string_of_a_single_object() {
        for body in [
            &br#"["evt_1"]"#[..],
            br#"{"id": 7}"#,
            br#"{"id": null}"#,
            br#"{"id": {"id": "evt_1"}}"#,
            br#"{"data": {"id": "evt_1"}}"#,
            br#"{"id": "evt_1", "id": "evt_2"}"#,
            br#"{"id": "evt_1"} trailing"#,
            br#"{"id": ""}"#,
            br#""evt_1""#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                provider_delivery_id(Mode::Stripe, &[] as &[(&str, &[u8])], body),
                None,
                "{body:?}"
            );
        }
        assert_eq!(
            provider_delivery_id(
                Mode::Stripe,
                &[] as &[(&str, &[u8])],
                br#" {"a": [1, {"id": 2}], "id": "evt_\u0031"} "#
            ),
            Some("evt_1".to_owned())
        );
    }

    #[test]
    fn an_oversized_stripe_body_is_not_parsed() {
        let mut body = br#"{"id":"evt_1","pad":""#.to_vec();
        body.resize(STRIPE_EVENT_BODY_BYTES_MAX, b'x');
        body.extend_from_slice(br#""}"#);
        assert_eq!(
            provider_delivery_id(Mode::Stripe, &[] as &[(&str, &[u8])], &body),
            None
        );
    }

    #[test]
    fn empty_candidates_count_as_absent() {
        let headers: [(&str, &[u8]); 2] = [("idempotency-key", b"   "), ("webhook-id", b"msg_1")];
        assert_eq!(key(Mode::Generic, &headers, b"{}", None, 0), "msg_1");
    }

    #[test]
    fn long_or_odd_candidates_are_hashed() {
        let long = vec![b'k'; IDEMPOTENCY_KEY_BYTES_MAX + 1];
        let exact = vec![b'k'; IDEMPOTENCY_KEY_BYTES_MAX];
        for raw in [&long[..], b"\xff\xfe", b"a\x01b"] {
            let headers = [("idempotency-key", raw)];
            let got = key(Mode::Generic, &headers, b"{}", None, 0);
            assert_eq!(got, format!("sha256:{}", hex::encode(Sha256::digest(raw))));
        }
        let headers = [("idempotency-key", &exact[..])];
        assert_eq!(
            key(Mode::Generic, &headers, b"{}", None, 0).as_bytes(),
            &exact[..]
        );
    }

    #[test]
    fn content_key_uses_the_signed_timestamp_over_the_arrival_bucket() {
        let a = key(Mode::Generic, &[], b"{}", Some(1_000), 0);
        let b = key(Mode::Generic, &[], b"{}", Some(1_000), 9_999_999);
        assert_eq!(a, b);
        assert_ne!(a, key(Mode::Generic, &[], b"{}", Some(1_001), 0));
        assert_ne!(
            a,
            key(Mode::Generic, &[], b"{}", None, 1_000 * ARRIVAL_BUCKET_S)
        );
    }

    #[test]
    fn content_key_is_stable_within_a_bucket_and_differs_across_buckets() {
        let start = 1_700_000_100; // a multiple of 300
        assert_eq!(start % ARRIVAL_BUCKET_S, 0);
        let first = key(Mode::None, &[], b"{}", None, start);
        assert_eq!(
            first,
            key(Mode::None, &[], b"{}", None, start + ARRIVAL_BUCKET_S - 1)
        );
        assert_ne!(first, key(Mode::None, &[], b"{}", None, start - 1));
        assert_ne!(
            first,
            key(Mode::None, &[], b"{}", None, start + ARRIVAL_BUCKET_S)
        );
        assert_eq!(first.len(), 64);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn content_key_framing_is_unambiguous() {
        let k = |tenant: &str, endpoint: &str, body: &[u8]| {
            idempotency_key(
                Mode::None,
                &[] as &[(&str, &[u8])],
                body,
                tenant,
                endpoint,
                None,
                0,
            )
        };
        assert_ne!(k("ab", "c", b"d"), k("a", "bc", b"d"));
        assert_ne!(k("a", "bc", b"d"), k("a", "b", b"cd"));
        assert_ne!(k("a", "b", b""), k("a", "", b"b"));
        assert_ne!(k("tn_1", "ep_1", b"x"), k("tn_2", "ep_1", b"x"));
    }

    proptest! {
        #[test]
        fn keys_are_deterministic_bounded_and_non_empty(
            header in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            tenant in "[a-z0-9_]{0,12}",
            endpoint in "[a-z0-9_]{0,12}",
            signed in proptest::option::of(any::<i64>()),
            arrival in any::<i64>(),
        ) {
            let headers: Vec<(&str, Vec<u8>)> = header.into_iter().map(|h| ("idempotency-key", h)).collect();
            let once = idempotency_key(Mode::Stripe, &headers, &body, &tenant, &endpoint, signed, arrival);
            let again = idempotency_key(Mode::Stripe, &headers, &body, &tenant, &endpoint, signed, arrival);
            prop_assert_eq!(&once, &again);
            prop_assert!(!once.is_empty());
            prop_assert!(once.len() <= IDEMPOTENCY_KEY_BYTES_MAX);
        }

        #[test]
        fn different_buckets_give_different_keys(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            bucket in -1_000_000i64..1_000_000,
            offset in 0..ARRIVAL_BUCKET_S,
            later in 1i64..1_000,
        ) {
            let empty: &[(&str, &[u8])] = &[];
            let at = |arrival| idempotency_key(Mode::None, empty, &body, T, E, None, arrival);
            let here = at(bucket * ARRIVAL_BUCKET_S + offset);
            prop_assert_eq!(&here, &at(bucket * ARRIVAL_BUCKET_S));
            prop_assert_ne!(&here, &at((bucket + later) * ARRIVAL_BUCKET_S + offset));
        }
    }
}
