//! Who is calling the management API: `Authorization: Bearer <key>` resolved against the
//! hashed keys of the metadata snapshot. Architecture Invariant: a key of one tenant never
//! sees another tenant's objects — handlers call [`Caller::tenant_scope`] and answer 404 for
//! foreign objects, never 403.

use std::sync::Arc;

use hookrelay_engine::meta::{ApiKey, Role, Snapshot};
use hyper::HeaderMap;

use crate::problem::{Code, Problem};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<ApiKey>,
}

impl Caller {
    pub fn role(&self) -> Role {
        self.key.role
    }
    pub fn key_id(&self) -> &str {
        &self.key.id
    }

    /// The caller's tenant, or 403 for the operator key on tenant routes.
    pub fn tenant(&self) -> Result<&str, Problem> {
        self.key.tenant_id.as_deref().ok_or_else(|| {
            Problem::new(
                Code::Forbidden,
                "the operator key manages tenants; use a tenant's API key for this route",
            )
        })
    }

    /// True when the caller may read objects of `tenant_id` (its own, or any for root).
    pub fn can_see(&self, tenant_id: &str) -> bool {
        match self.key.role {
            Role::Root => true,
            _ => self.key.tenant_id.as_deref() == Some(tenant_id),
        }
    }

    /// 403 unless the caller may change its tenant's objects.
    pub fn require_admin(&self) -> Result<&str, Problem> {
        match self.key.role {
            Role::Admin => self.tenant(),
            Role::Viewer => Err(Problem::new(Code::Forbidden, "viewer keys are read-only")),
            Role::Root => self.tenant(),
        }
    }

    /// 403 unless the caller is the operator.
    pub fn require_root(&self) -> Result<(), Problem> {
        match self.key.role {
            Role::Root => Ok(()),
            _ => Err(Problem::new(
                Code::Forbidden,
                "this route needs the operator (root) key",
            )),
        }
    }
}

/// Resolves the bearer key, or 401 `unauthorized`.
pub fn authenticate(headers: &HeaderMap, snapshot: &Snapshot) -> Result<Caller, Problem> {
    let unauthorized = || {
        Problem::new(
            Code::Unauthorized,
            "a valid API key is required: Authorization: Bearer <key>",
        )
    };
    let value = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or_else(unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized());
    }
    let key = key.trim();
    if !key.starts_with("hr_") || key.len() > 256 {
        return Err(unauthorized());
    }
    snapshot
        .key_for(key)
        .map(|k| Caller { key: k.clone() })
        .ok_or_else(unauthorized)
}

/// A new API key `hr_<role>_<random>` (160 random bits, hex).
pub fn generate_key(role: Role) -> String {
    let random: [u8; 20] = rand::random();
    format!("hr_{}_{}", role.as_str(), hex::encode(random))
}
