//! `GET /v1/admin/replication` and `POST /v1/admin/promote` (operator key).

use std::rc::Rc;
use std::time::Duration;

use hookrelay_engine::replication::PromoteError;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};

/// Role, epoch, ack mode and each shard's offsets and lag.
pub fn replication(app: &Rc<App>, caller: &Caller) -> Result<HttpResponse, Problem> {
    caller.require_root()?;
    let status = app.shard.node.replication().status();
    Ok(json_response(
        200,
        &serde_json::to_value(status).expect("replication status serialises"),
    ))
}

/// Longest a promotion waits for the shards to rebuild before answering.
const PROMOTE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Turns this replica into the primary with a higher epoch. The shards then rebuild their
/// state from their copy of the log and start delivering; the answer comes once they have
/// (`"ready": true`), or after [`PROMOTE_WAIT_MAX`] with `"ready": false` (a long log: watch
/// `/readyz`).
pub async fn promote(app: &Rc<App>, caller: &Caller) -> Result<HttpResponse, Problem> {
    caller.require_root()?;
    let node = &app.shard.node;
    match node.replication().promote() {
        Ok(epoch) => {
            let deadline = tokio::time::Instant::now() + PROMOTE_WAIT_MAX;
            while !node.shards_ready() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(json_response(
                200,
                &serde_json::json!({"role": "primary", "epoch": epoch, "ready": node.shards_ready()}),
            ))
        }
        Err(PromoteError::AlreadyPrimary(epoch)) => Err(Problem::new(
            Code::Conflict,
            format!("this node is already the primary (epoch {epoch})"),
        )),
        Err(e @ PromoteError::State(_)) => {
            tracing::error!(error = %e, "promotion failed");
            Err(Problem::new(
                Code::Unavailable,
                format!("promotion failed: {e}"),
            ))
        }
    }
}
