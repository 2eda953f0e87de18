//! `POST /ingest/{endpoint_id}` — the public front door, in the order CONTRACT.md gives:
//! endpoint, size, source IP, signature, idempotency, durability.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hookrelay_engine::clock::now_ms;
use hookrelay_engine::record::IngestPayload;
use hookrelay_engine::shard::{IngestError, IngestOk, IngestRequest};
use hookrelay_engine::verify::{self, VerifyError};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;

use crate::app::{App, HttpResponse};
use crate::body::{BodyError, read_limited};
use crate::problem::{Code, Problem};

/// After a 413, how much more of the body is read and thrown away so the client, still
/// sending, gets the answer instead of a connection reset.
const DRAIN_BYTES_MAX: u64 = 64 << 20;
/// ... and for how long at most.
const DRAIN_TIME_MAX: Duration = Duration::from_secs(10);

/// Handles one ingest request and counts its answer (status code, latency) in this thread's
/// ingest metrics (`hookrelay_ingest_requests_total`, `hookrelay_ingest_latency_seconds`).
pub async fn ingest(
    app: &Rc<App>,
    peer: SocketAddr,
    endpoint_id: &str,
    req: Request<Incoming>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let response = handle(app, peer, endpoint_id, req).await;
    hookrelay_engine::metrics::ingest::record_ingest(response.status().as_u16(), started.elapsed());
    response
}

async fn handle(
    app: &Rc<App>,
    peer: SocketAddr,
    endpoint_id: &str,
    mut req: Request<Incoming>,
) -> HttpResponse {
    let snapshot = app.shard.node.meta().load();
    let Some(endpoint) = snapshot.endpoints.get(endpoint_id).cloned() else {
        return Problem::new(Code::NotFound, format!("no endpoint {endpoint_id}")).into_response();
    };
    let max = app.config.ingest.max_body_bytes as usize;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(req.into_body(), max);
    }
    if !snapshot.source_allowed(endpoint_id, peer.ip()) {
        return Problem::new(
            Code::IpNotAllowed,
            format!("{} may not send to this endpoint", peer.ip()),
        )
        .into_response();
    }
    let body = match read_limited(req.body_mut(), max).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(req.into_body(), max),
        Err(BodyError::Broken(e)) => {
            return Problem::new(Code::InvalidJson, format!("could not read the body: {e}"))
                .into_response();
        }
    };
    let now = now_ms();
    let now_s = (now / 1000) as i64;
    let headers = req.headers();
    let secrets = endpoint.verification_secrets(now);
    let verified = match verify::verify(
        endpoint.verification.mode,
        &secrets,
        headers,
        &body,
        now_s,
        app.config.ingest.signature_tolerance_s as i64,
    ) {
        Ok(v) => v,
        Err(VerifyError::Expired) => {
            return Problem::new(
                Code::SignatureExpired,
                "the signature's timestamp is outside the tolerance",
            )
            .into_response();
        }
        Err(VerifyError::Invalid) => {
            return Problem::new(Code::InvalidSignature, "missing or invalid signature")
                .into_response();
        }
    };
    let idempotency_key = verify::idempotency_key(
        endpoint.verification.mode,
        headers,
        &body,
        &endpoint.tenant_id,
        &endpoint.id,
        verified.timestamp,
        now_s,
    );
    // Headers and body are encoded into the record's payload format here, once, in one
    // allocation: the owning shard (perhaps another thread) copies it into the log record.
    let payload = IngestPayload::encode(HeaderPairs(headers), &body);
    let request = IngestRequest {
        endpoint_id: endpoint.id.clone(),
        tenant_id: endpoint.tenant_id.clone(),
        payload,
        idempotency_key,
        received_at_ms: now,
        replay_of: None,
    };
    match app.shard.ingest(request).await {
        Ok(IngestOk::Accepted { delivery_id }) => answer(202, &delivery_id, "queued", false),
        Ok(IngestOk::Duplicate {
            delivery_id,
            status,
        }) => answer(200, &delivery_id, status.as_str(), true),
        Err(IngestError::KeyReused) => Problem::new(
            Code::IdempotencyKeyReused,
            "this idempotency key was used for a different body in the last 7 days",
        )
        .into_response(),
        Err(IngestError::Unavailable(reason)) => Problem::new(Code::Unavailable, reason)
            .retry_after(1)
            .into_response(),
    }
}

/// A request's headers as (name, value) pairs, in arrival order; `Copy`, so the payload encoder
/// can walk them twice (sizes, then bytes) without collecting them first.
#[derive(Clone, Copy)]
struct HeaderPairs<'a>(&'a hyper::HeaderMap);

impl<'a> IntoIterator for HeaderPairs<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = std::iter::Map<
        hyper::header::Iter<'a, hyper::header::HeaderValue>,
        fn(
            (
                &'a hyper::header::HeaderName,
                &'a hyper::header::HeaderValue,
            ),
        ) -> (&'a str, &'a [u8]),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// A 2xx ingest answer (CONTRACT.md): `{"delivery_id":…,"status":…,"duplicate":…}`, written
/// into a buffer of its exact size (the body then becomes `Bytes` without another
/// allocation). Both strings are the engine's own (a delivery id, a status name): nothing to
/// escape, which the debug assertion checks.
fn answer(code: u16, delivery_id: &str, status: &str, duplicate: bool) -> HttpResponse {
    debug_assert!(
        [delivery_id, status]
            .iter()
            .all(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
        "{delivery_id:?} / {status:?} would need JSON escaping"
    );
    let parts: [&str; 7] = [
        "{\"delivery_id\":\"",
        delivery_id,
        "\",\"status\":\"",
        status,
        "\",\"duplicate\":",
        if duplicate { "true" } else { "false" },
        "}",
    ];
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        body.extend_from_slice(part.as_bytes());
    }
    let mut response = hyper::Response::new(http_body_util::Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(code).expect("a 2xx status");
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// 413, answered while a bounded drain of the rest of the body runs in the background, so a
/// client that is still sending reads the answer rather than a reset.
fn too_large(mut body: Incoming, max: usize) -> HttpResponse {
    tokio::task::spawn_local(async move {
        let mut drained = 0u64;
        let _ = tokio::time::timeout(DRAIN_TIME_MAX, async {
            while drained < DRAIN_BYTES_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
        })
        .await;
    });
    let mut resp = Problem::new(
        Code::PayloadTooLarge,
        format!("the body is larger than {max} bytes"),
    )
    .into_response();
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}
