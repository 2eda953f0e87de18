//! The set-up most tests share: a server, its API, and one tenant.

use serde_json::Value;

use crate::api::{Api, endpoint_to};
use crate::server::{Server, ServerOptions};

/// A started server with one tenant (`"acme"`) and its admin key.
pub struct Scenario {
    pub server: Server,
    pub api: Api,
    pub tenant_id: String,
    pub admin_key: String,
}

impl Scenario {
    /// A server with [`ServerOptions::default`] (2 shards, private destinations allowed).
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(opts: ServerOptions) -> Self {
        let server = Server::start(opts).await;
        let api = server.api();
        let (tenant_id, admin_key) = api.tenant("acme").await;
        Self {
            server,
            api,
            tenant_id,
            admin_key,
        }
    }

    /// Creates an endpoint of this tenant forwarding to `destination_url` (see
    /// [`endpoint_to`] for the defaults `overrides` merges into). Returns the endpoint object.
    pub async fn endpoint(&self, destination_url: &str, overrides: Value) -> Value {
        self.api
            .create_endpoint(&self.admin_key, &endpoint_to(destination_url, overrides))
            .await
    }
}
