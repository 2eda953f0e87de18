//! Metadata: tenants, endpoints and API keys — the control plane's state.
//!
//! Writes go through [`Meta::apply`], which appends the change to a small checksummed metadata
//! log, fsyncs it, and swaps in a new immutable [`Snapshot`]. Readers (the shards' hot path)
//! only ever `load()` the current snapshot: no lock is taken on the data plane.

mod model;
mod store;

pub use model::{
    ApiKey, Endpoint, EndpointSecrets, MetaOp, ReplayJob, Role, Tenant, TenantKey, Verification,
};
pub use store::{Meta, MetaError, Snapshot, hash_key, parse_allowlist, parse_net, seal_tenant_key};
