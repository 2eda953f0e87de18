//! `/v1/api-keys`: create (shown once), list (never the key), revoke.

use std::rc::Rc;

use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::ids::new_id;
use hookrelay_engine::meta::{ApiKey, MetaOp, Role, Snapshot, hash_key};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::app::{App, HttpResponse};
use crate::auth::{Caller, generate_key};
use crate::body::read_json;
use crate::problem::{Code, Problem, empty_response, json_response};
use crate::routes::meta_unavailable;

/// Most keys one tenant may hold.
const KEYS_PER_TENANT_MAX: usize = 1000;
const NAME_CHARS_MAX: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: Option<String>,
    role: Option<Role>,
}

pub async fn create(
    app: &Rc<App>,
    caller: &Caller,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.require_admin()?.to_string();
    let body: CreateKey = read_json(req.body_mut()).await?;
    let role = body.role.unwrap_or(Role::Viewer);
    if role == Role::Root {
        return Err(Problem::new(
            Code::ValidationFailed,
            "role must be \"admin\" or \"viewer\"",
        ));
    }
    let name = body.name.unwrap_or_default();
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(Problem::new(
            Code::ValidationFailed,
            format!("name is limited to {NAME_CHARS_MAX} characters"),
        ));
    }
    let snapshot = app.shard.node.meta().load();
    let held = snapshot
        .api_keys
        .values()
        .filter(|k| k.tenant_id.as_deref() == Some(&tenant_id))
        .count();
    if held >= KEYS_PER_TENANT_MAX {
        return Err(Problem::new(
            Code::ValidationFailed,
            format!("a tenant holds at most {KEYS_PER_TENANT_MAX} keys"),
        ));
    }
    let key = generate_key(role);
    let record = ApiKey {
        id: new_id("ak"),
        tenant_id: Some(tenant_id),
        role,
        name,
        hash: hash_key(&key),
        prefix: key.chars().take(14).collect(),
        created_at: rfc3339_ms(now_ms()),
        last_used_at_ms: None,
    };
    app.shard
        .node
        .meta()
        .apply(vec![MetaOp::PutApiKey(record.clone())])
        .await
        .map_err(meta_unavailable)?;
    Ok(json_response(
        201,
        &json!({"id": record.id, "key": key, "role": role, "name": record.name, "created_at": record.created_at}),
    ))
}

pub fn list(snapshot: &Snapshot, caller: &Caller) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.tenant()?;
    let mut keys: Vec<&ApiKey> = snapshot
        .api_keys
        .values()
        .filter(|k| k.tenant_id.as_deref() == Some(tenant_id))
        .map(|k| &**k)
        .collect();
    keys.sort_by(|a, b| b.id.cmp(&a.id));
    let data: Vec<_> = keys
        .iter()
        .map(|k| {
            json!({"id": k.id, "prefix": k.prefix, "role": k.role, "name": k.name,
                   "created_at": k.created_at,
                   "last_used_at": k.last_used_at_ms.map(rfc3339_ms)})
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"data": data, "next_cursor": null}),
    ))
}

pub async fn delete(app: &Rc<App>, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.require_admin()?;
    let snapshot = app.shard.node.meta().load();
    match snapshot.api_keys.get(id) {
        Some(k) if k.tenant_id.as_deref() == Some(tenant_id) => {}
        _ => return Err(Problem::new(Code::NotFound, format!("no API key {id}"))),
    }
    app.shard
        .node
        .meta()
        .apply(vec![MetaOp::DeleteApiKey { id: id.to_string() }])
        .await
        .map_err(meta_unavailable)?;
    Ok(empty_response(204))
}
