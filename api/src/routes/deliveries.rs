//! `GET /v1/deliveries/{id}`.

use std::rc::Rc;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};

pub async fn get(app: &Rc<App>, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let not_found = || Problem::new(Code::NotFound, format!("no delivery {id}"));
    let detail = app.shard.delivery(id).await.ok_or_else(not_found)?;
    if !caller.can_see(&detail.tenant_id) {
        return Err(not_found());
    }
    Ok(json_response(200, &detail))
}
