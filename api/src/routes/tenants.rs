//! `POST /v1/tenants` (root) and `GET /v1/tenants/{id}`.

use std::rc::Rc;

use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::ids::new_id;
use hookrelay_engine::meta::{ApiKey, MetaOp, Role, Snapshot, Tenant, seal_tenant_key};
use hookrelay_engine::seal::SecretKey;
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::app::{App, HttpResponse};
use crate::auth::{Caller, generate_key};
use crate::body::read_json;
use crate::problem::{Code, Problem, json_response};
use crate::routes::meta_unavailable;

/// Plans a tenant may be on.
pub const PLANS: &[&str] = &["free", "pro", "enterprise"];
const NAME_CHARS_MAX: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: Option<String>,
    plan: Option<String>,
}

pub async fn create(
    app: &Rc<App>,
    caller: &Caller,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    caller.require_root()?;
    let body: CreateTenant = read_json(req.body_mut()).await?;
    let name = body.name.unwrap_or_default();
    if name.trim().is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(Problem::new(
            Code::ValidationFailed,
            format!("name is required, 1 to {NAME_CHARS_MAX} characters"),
        ));
    }
    let plan = body.plan.unwrap_or_else(|| "free".into());
    if !PLANS.contains(&plan.as_str()) {
        return Err(Problem::new(
            Code::ValidationFailed,
            format!("plan must be one of {PLANS:?}"),
        ));
    }
    let created_at = rfc3339_ms(now_ms());
    let tenant = Tenant {
        id: new_id("tn"),
        name,
        plan,
        created_at: created_at.clone(),
    };
    let admin_key = generate_key(Role::Admin);
    let key = ApiKey {
        id: new_id("ak"),
        tenant_id: Some(tenant.id.clone()),
        role: Role::Admin,
        name: "admin".into(),
        hash: hookrelay_engine::meta::hash_key(&admin_key),
        prefix: admin_key.chars().take(14).collect(),
        created_at,
        last_used_at_ms: None,
    };
    let meta = app.shard.node.meta();
    let data_key = seal_tenant_key(meta.master_key(), &tenant.id, 1, &SecretKey::generate());
    meta.apply(vec![
        MetaOp::PutTenant(tenant.clone()),
        MetaOp::PutTenantKey {
            tenant_id: tenant.id.clone(),
            key: data_key,
        },
        MetaOp::PutApiKey(key),
    ])
    .await
    .map_err(meta_unavailable)?;
    let mut out = serde_json::to_value(&tenant).expect("tenant serialises");
    out["admin_key"] = serde_json::Value::String(admin_key);
    Ok(json_response(201, &out))
}

pub fn get(snapshot: &Snapshot, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    match snapshot.tenants.get(id) {
        Some(t) if caller.can_see(&t.id) => Ok(json_response(200, &**t)),
        _ => Err(Problem::new(Code::NotFound, format!("no tenant {id}"))),
    }
}

/// `DELETE /v1/tenants/{id}/data` (root, or the tenant's admin): GDPR purge. The tenant's data
/// key is destroyed and replaced (crypto-shredding every payload sealed under it in the log),
/// its DLQ objects, API keys and replay jobs are deleted. Deliveries still queued end `failed`
/// (`purged`) without reaching the receiver. The tenant and its endpoints remain.
pub async fn purge(app: &Rc<App>, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let snapshot = app.shard.node.meta().load();
    let not_found = || Problem::new(Code::NotFound, format!("no tenant {id}"));
    if !snapshot.tenants.contains_key(id) || !caller.can_see(id) {
        return Err(not_found());
    }
    if caller.role() == Role::Viewer {
        return Err(Problem::new(Code::Forbidden, "viewer keys are read-only"));
    }
    let meta = app.shard.node.meta();
    let generation = snapshot.data_keys.get(id).map_or(0, |(g, _)| *g) + 1;
    let key = seal_tenant_key(meta.master_key(), id, generation, &SecretKey::generate());
    meta.apply(vec![MetaOp::PurgeTenant {
        tenant_id: id.to_string(),
        key,
    }])
    .await
    .map_err(meta_unavailable)?;
    crate::replay::dlq_store(app)
        .purge_tenant(id)
        .await
        .map_err(|e| {
            Problem::new(
                Code::Unavailable,
                format!("DLQ purge failed (retry the request): {e}"),
            )
        })?;
    app.shard
        .node
        .audit()
        .purge_tenant(id.to_string())
        .await
        .map_err(|e| {
            Problem::new(
                Code::Unavailable,
                format!("audit purge failed (retry the request): {e}"),
            )
        })?;
    Ok(json_response(
        202,
        &serde_json::json!({"tenant_id": id, "status": "purged", "data_key_generation": generation}),
    ))
}
