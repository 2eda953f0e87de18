//! `GET /v1/admin/replication` and `POST /v1/admin/promote` (operator key).

use std::rc::Rc;

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

/// Turns this replica into the primary with a higher epoch. The shards then rebuild their
/// state from their copy of the log and start delivering; `/readyz` turns 200 when they have.
pub fn promote(app: &Rc<App>, caller: &Caller) -> Result<HttpResponse, Problem> {
    caller.require_root()?;
    match app.shard.node.replication().promote() {
        Ok(epoch) => Ok(json_response(
            200,
            &serde_json::json!({"role": "primary", "epoch": epoch}),
        )),
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
