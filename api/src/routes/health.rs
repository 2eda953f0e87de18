//! `GET /healthz` and `GET /readyz`.

use std::rc::Rc;

use crate::app::{App, HttpResponse};
use crate::problem::{Code, Problem, json_response};

/// 200 whenever the process answers.
pub fn healthz() -> HttpResponse {
    json_response(200, &serde_json::json!({"status": "ok"}))
}

/// 200 only when every shard has recovered and takes ingest; 503 with the reason otherwise.
pub fn readyz(app: &Rc<App>) -> HttpResponse {
    match app.shard.node.readiness() {
        Ok(()) if app.shard.node.replication().any_degraded() => json_response(
            200,
            &serde_json::json!({
                "status": "ready",
                "replication": "degraded: ack = peer, but the peer has been away longer than \
                                replication.degrade_after_ms; ingest answers after the local fsync",
            }),
        ),
        Ok(()) => json_response(200, &serde_json::json!({"status": "ready"})),
        Err(reason) => Problem::new(Code::Unavailable, reason).into_response(),
    }
}
