//! Two-node replication set-ups (contract: "Replication"): how to configure a node, and the
//! operator calls the replication tests repeat (`GET /v1/admin/replication`,
//! `POST /v1/admin/promote`), with polling helpers that fail with the last answer seen.
//!
//! Both nodes of a pair share the operator key ([`TEST_ROOT_KEY`]), the master key
//! ([`MASTER_KEY_B64`]), the replication secret and the shard count: replication needs all four
//! to match.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Http, Response};
use crate::server::{ServerOptions, TEST_ROOT_KEY, free_port};

/// `HOOKRELAY_MASTER_KEY` of every replicated node: base64 of the bytes 0..32.
pub const MASTER_KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// `replication.secret` of every replicated node.
pub const SECRET: &str = "e2e-replication-secret-0123456789";

/// How long replication may take to reach a state in a test (catch-up, fencing, a role
/// change). Generous on purpose: tests assert outcomes, never speed.
pub const REPLICATION_DEADLINE: Duration = Duration::from_secs(30);

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// One node's `[replication]` settings.
#[derive(Clone, Debug)]
pub struct Node {
    /// `primary` or `replica` (first start only; the durable state wins afterwards).
    pub role: &'static str,
    /// Where this node accepts the primary's stream.
    pub listen: SocketAddr,
    /// Where this node streams while primary (the other node's `listen`, or a proxy).
    pub peer: SocketAddr,
    /// `local` or `peer`.
    pub ack: &'static str,
    pub degrade_after_ms: Option<u64>,
    pub peer_timeout_ms: Option<u64>,
}

impl Node {
    /// A primary with `ack = "local"`.
    pub fn primary(listen: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            role: "primary",
            listen,
            peer,
            ack: "local",
            degrade_after_ms: None,
            peer_timeout_ms: None,
        }
    }

    /// A replica with `ack = "local"` (what it uses once promoted).
    pub fn replica(listen: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            role: "replica",
            ..Self::primary(listen, peer)
        }
    }

    pub fn ack(mut self, ack: &'static str) -> Self {
        self.ack = ack;
        self
    }

    pub fn degrade_after_ms(mut self, ms: u64) -> Self {
        self.degrade_after_ms = Some(ms);
        self
    }

    pub fn peer_timeout_ms(mut self, ms: u64) -> Self {
        self.peer_timeout_ms = Some(ms);
        self
    }

    /// [`ServerOptions::default`] (2 shards, the test operator key, private destinations) with
    /// this node's replication settings in the environment.
    pub fn options(&self) -> ServerOptions {
        let mut opts = ServerOptions::default()
            .env("HOOKRELAY_MASTER_KEY", MASTER_KEY_B64)
            .env("HOOKRELAY_REPLICATION_ROLE", self.role)
            .env("HOOKRELAY_REPLICATION_LISTEN", &self.listen.to_string())
            .env("HOOKRELAY_REPLICATION_PEER", &self.peer.to_string())
            .env("HOOKRELAY_REPLICATION_ACK", self.ack)
            .env("HOOKRELAY_REPLICATION_SECRET", SECRET);
        if let Some(ms) = self.degrade_after_ms {
            opts = opts.env("HOOKRELAY_REPLICATION_DEGRADE_AFTER_MS", &ms.to_string());
        }
        if let Some(ms) = self.peer_timeout_ms {
            opts = opts.env("HOOKRELAY_REPLICATION_PEER_TIMEOUT_MS", &ms.to_string());
        }
        opts
    }
}

/// `GET /v1/admin/replication` with the operator key, whatever it answers.
pub async fn try_status(http: &Http) -> anyhow::Result<Response> {
    http.try_send(
        hyper::Method::GET,
        "/v1/admin/replication",
        bytes::Bytes::new(),
        &[("Authorization".into(), format!("Bearer {TEST_ROOT_KEY}"))],
    )
    .await
}

/// `GET /v1/admin/replication` → 200 with the contract's shape (checked); returns the body.
pub async fn status(http: &Http) -> Value {
    let response = http.get("/v1/admin/replication", Some(TEST_ROOT_KEY)).await;
    assert_eq!(
        response.status, 200,
        "GET /v1/admin/replication:\n{response:?}"
    );
    let v = response.json();
    check_status_shape(&v);
    v
}

/// Asserts the shape of a `GET /v1/admin/replication` body.
#[track_caller]
pub fn check_status_shape(v: &Value) {
    assert!(
        v["role"] == "primary" || v["role"] == "replica",
        "role must be primary or replica:\n{v:#}"
    );
    assert!(v["epoch"].is_u64(), "epoch must be an integer:\n{v:#}");
    assert!(
        v["ack"] == "local" || v["ack"] == "peer",
        "ack must be local or peer:\n{v:#}"
    );
    assert!(
        v["degraded"].is_boolean(),
        "degraded must be a bool:\n{v:#}"
    );
    for key in ["peer", "listen"] {
        assert!(
            v[key].is_null() || v[key].is_string(),
            "{key} must be a string or null:\n{v:#}"
        );
    }
    let shards = v["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("shards must be an array:\n{v:#}"));
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(
            s["shard"].as_u64(),
            Some(i as u64),
            "shards in order:\n{v:#}"
        );
        assert!(s["next_offset"].is_u64(), "next_offset:\n{v:#}");
        assert!(
            s["peer_acked_offset"].is_null() || s["peer_acked_offset"].is_u64(),
            "peer_acked_offset:\n{v:#}"
        );
        assert!(s["lag_records"].is_u64(), "lag_records:\n{v:#}");
        assert!(s["connected"].is_boolean(), "connected:\n{v:#}");
        assert!(
            s["last_error"].is_null() || s["last_error"].is_string(),
            "last_error:\n{v:#}"
        );
    }
}

/// Polls `GET /v1/admin/replication` until `done` holds; panics after `timeout` naming `what`
/// and showing the last answer.
pub async fn wait_status(
    http: &Http,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = try_status(http).await;
        if let Ok(response) = &last
            && response.status == 200
            && let Ok(v) = serde_json::from_slice::<Value>(&response.body)
            && done(&v)
        {
            return v;
        }
        if Instant::now() >= deadline {
            let shown = match last {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("{e:#}"),
            };
            panic!("{what}: not within {timeout:?}; last GET /v1/admin/replication:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a primary's status shows every shard connected with nothing unacknowledged
/// (`lag_records` 0 and `peer_acked_offset` = `next_offset`).
pub fn caught_up(v: &Value) -> bool {
    v["role"] == "primary"
        && v["shards"].as_array().is_some_and(|shards| {
            !shards.is_empty()
                && shards.iter().all(|s| {
                    s["connected"] == true
                        && s["lag_records"].as_u64() == Some(0)
                        && s["peer_acked_offset"].as_u64() == s["next_offset"].as_u64()
                })
        })
}

/// `next_offset` of every shard, in shard order.
pub fn next_offsets(v: &Value) -> Vec<u64> {
    v["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| s["next_offset"].as_u64().unwrap_or(u64::MAX))
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /v1/admin/promote` with the operator key, whatever it answers.
pub async fn promote(http: &Http) -> Response {
    http.post("/v1/admin/promote", &json!({}), Some(TEST_ROOT_KEY))
        .await
}

/// `POST /v1/admin/promote` → 200 `{"role": "primary", "epoch"}`; returns the epoch.
pub async fn promote_ok(http: &Http) -> u64 {
    let response = promote(http).await;
    assert_eq!(
        response.status, 200,
        "POST /v1/admin/promote:\n{response:?}"
    );
    let v = response.json();
    assert_eq!(v["role"], "primary", "promote answer:\n{response:?}");
    v["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("promote answer without an integer epoch:\n{response:?}"))
}

/// Polls `GET path` with `key` until it answers 200 (e.g. replicated metadata reaching a
/// replica); panics after `timeout` with the last answer.
pub async fn wait_get_ok(http: &Http, path: &str, key: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = http
            .try_send(
                hyper::Method::GET,
                path,
                bytes::Bytes::new(),
                &[("Authorization".into(), format!("Bearer {key}"))],
            )
            .await;
        if let Ok(response) = &last
            && response.status == 200
        {
            return response.json();
        }
        if Instant::now() >= deadline {
            let shown = match last {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("{e:#}"),
            };
            panic!("GET {path} did not answer 200 within {timeout:?}; last answer:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (metric, value) = l.rsplit_once(' ')?;
        (metric.trim() == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_metrics() {
        let text = "# HELP x y\n# TYPE hookrelay_replication_degraded gauge\n\
                    hookrelay_replication_degraded 1\nhookrelay_replication_epoch 3\n\
                    hookrelay_replication_lag_records{shard=\"0\"} 5\n";
        assert_eq!(
            metric_value(text, "hookrelay_replication_degraded"),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "hookrelay_replication_epoch"), Some(3.0));
        assert_eq!(
            metric_value(text, "hookrelay_replication_lag_records"),
            None
        );
    }

    #[test]
    fn catch_up_needs_every_shard_level_and_connected() {
        let shard = |next: u64, acked: Option<u64>, connected: bool| {
            json!({"shard": 0, "next_offset": next, "peer_acked_offset": acked,
                   "lag_records": next - acked.unwrap_or(0), "connected": connected,
                   "last_error": null})
        };
        let status = |shards: Vec<Value>| json!({"role": "primary", "shards": shards});
        assert!(caught_up(&status(vec![shard(5, Some(5), true)])));
        assert!(!caught_up(&status(vec![shard(5, Some(4), true)])));
        assert!(!caught_up(&status(vec![shard(5, Some(5), false)])));
        assert!(!caught_up(&status(vec![])));
    }
}
