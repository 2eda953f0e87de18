//! The metadata objects and the operations that change them.

use serde::{Deserialize, Serialize};

use crate::backoff::RetryPolicy;
use crate::verify::Mode;

/// A tenant: the unit of isolation. Every endpoint, key and delivery belongs to one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub created_at: String,
}

/// Roles of API keys.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// An API key as stored: only the SHA-256 of the key, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: String,
    /// `None` for the operator (root) key.
    pub tenant_id: Option<String>,
    pub role: Role,
    pub name: String,
    /// Hex SHA-256 of the full key.
    pub hash: String,
    /// The first characters of the key, for humans to recognise it.
    pub prefix: String,
    pub created_at: String,
    /// Last time the key authenticated a request, to the minute ([`MetaOp::TouchApiKey`]).
    #[serde(default)]
    pub last_used_at_ms: Option<u64>,
}

/// How ingest verifies the sender's signature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    pub mode: Mode,
    pub secret: String,
    /// The secret before the last rotation, valid until `previous_valid_until_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until_ms: Option<u64>,
}

/// The secret HookRelay signs forwarded requests with, and the previous one during rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointSecrets {
    pub signing_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_valid_until_ms: Option<u64>,
}

/// An endpoint: where one sender's webhooks come in and where they go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub destination_url: String,
    pub verification: Verification,
    pub secrets: EndpointSecrets,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub rate_limit_per_s: Option<u32>,
    pub allowed_source_ips: Option<Vec<String>>,
    pub ordering: String,
    pub paused: bool,
    pub created_at: String,
}

/// The verification secrets valid at one instant (one or two), without a heap allocation on
/// the ingest path; derefs to a slice.
#[derive(Debug, Clone, Copy)]
pub struct VerificationSecrets<'a>([&'a [u8]; 2], usize);

impl<'a> std::ops::Deref for VerificationSecrets<'a> {
    type Target = [&'a [u8]];

    fn deref(&self) -> &[&'a [u8]] {
        &self.0[..self.1]
    }
}

impl Endpoint {
    /// Verification secrets valid at `now_ms`: the current one, then the previous one while its
    /// rotation window lasts.
    pub fn verification_secrets(&self, now_ms: u64) -> VerificationSecrets<'_> {
        let current = self.verification.secret.as_bytes();
        match (
            &self.verification.previous_secret,
            self.verification.previous_valid_until_ms,
        ) {
            (Some(prev), Some(until)) if now_ms < until => {
                VerificationSecrets([current, prev.as_bytes()], 2)
            }
            _ => VerificationSecrets([current, &[]], 1),
        }
    }

    /// Signing secrets valid at `now_ms`, current first.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<&str> {
        let mut out = vec![self.secrets.signing_secret.as_str()];
        if let (Some(prev), Some(until)) = (
            &self.secrets.previous_signing_secret,
            self.secrets.previous_signing_valid_until_ms,
        ) && now_ms < until
        {
            out.push(prev.as_str());
        }
        out
    }
}

/// A replay job: re-enqueue past deliveries as new ones marked `replay_of`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayJob {
    pub id: String,
    pub tenant_id: String,
    pub created_at: String,
    /// What to replay, resolved at creation: `dl_...` ids or `dlq:<object key>` entries.
    pub items: Vec<String>,
    /// The new delivery of each item replayed so far, in order; `None` when the item could not
    /// be replayed (original gone, endpoint deleted).
    pub created: Vec<Option<String>>,
    /// Why items could not be replayed, by item index (bounded like `items`).
    #[serde(default)]
    pub errors: Vec<(usize, String)>,
    pub completed: bool,
}

/// A tenant's data key as stored: sealed under the node's master key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantKey {
    pub generation: u32,
    /// Base64 of `nonce || ciphertext` of the 32-byte key, bound to `"<tenant_id>/<generation>"`.
    pub sealed: String,
}

/// One change to the metadata, as written to the metadata log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaOp {
    PutTenant(Tenant),
    PutEndpoint(Box<Endpoint>),
    DeleteEndpoint {
        id: String,
    },
    PutApiKey(ApiKey),
    DeleteApiKey {
        id: String,
    },
    PutReplay(Box<ReplayJob>),
    PutTenantKey {
        tenant_id: String,
        key: TenantKey,
    },
    /// A key was used; applied only if the key still exists (a revoked key stays revoked).
    TouchApiKey {
        id: String,
        at_ms: u64,
    },
    /// GDPR purge: the tenant's API keys and replay jobs go, and its data key is replaced by a
    /// new generation, so every payload sealed under the old one is unreadable for good.
    PurgeTenant {
        tenant_id: String,
        key: TenantKey,
    },
}
