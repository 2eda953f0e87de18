//! Two replicated `hookrelay` nodes (A and B) on loopback, a receiver, and a tenant with
//! endpoints: the rig of the replication scenarios (`failover`, `partition`).
//!
//! Each node has its own data and log directory (`<ctx.dir>/a`, `<ctx.dir>/b`), its own HTTP
//! port and replication address, and the same operator key, master key, replication secret and
//! shard count (replication needs all four to match). Also here: the calls on
//! `/v1/admin/replication` and `/v1/admin/promote` the scenarios poll and make.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::api::{Api, Endpoint};
use crate::http::Http;
use crate::load::LoadSpec;
use crate::receiver::{Policy, Receiver};
use crate::scenario::{Ctx, endpoint_spec};
use crate::server::{READY_TIMEOUT, ROOT_KEY, Server, ServerSpec, free_port};

/// `HOOKRELAY_MASTER_KEY` of both nodes: base64 of the bytes 0..32. Replicated tenant data keys
/// are sealed with it, so the nodes must share it.
pub const MASTER_KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// `replication.secret` of both nodes.
pub const REPLICATION_SECRET: &str = "chaos-replication-secret-0123456789";
/// Concurrent `GET /v1/deliveries/{id}` when checking what a node holds.
const QUERY_TASKS: usize = 8;
/// Ids shown per kind of problem.
const IDS_SHOWN_MAX: usize = 5;

/// One node's `[replication]` settings.
#[derive(Clone, Debug)]
pub struct Replication {
    /// `primary` or `replica` (first start only; the node's durable state wins afterwards).
    pub role: &'static str,
    /// Where this node accepts the primary's stream.
    pub listen: SocketAddr,
    /// Where this node streams while it is primary (the other node's `listen`, or a proxy).
    pub peer: SocketAddr,
    /// `local` or `peer`.
    pub ack: &'static str,
    pub degrade_after_ms: Option<u64>,
    pub peer_timeout_ms: Option<u64>,
}

impl Replication {
    /// The `HOOKRELAY_*` variables that configure this.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "HOOKRELAY_MASTER_KEY".to_string(),
                MASTER_KEY_B64.to_string(),
            ),
            ("HOOKRELAY_REPLICATION_ROLE".into(), self.role.into()),
            (
                "HOOKRELAY_REPLICATION_LISTEN".into(),
                self.listen.to_string(),
            ),
            ("HOOKRELAY_REPLICATION_PEER".into(), self.peer.to_string()),
            ("HOOKRELAY_REPLICATION_ACK".into(), self.ack.into()),
            (
                "HOOKRELAY_REPLICATION_SECRET".into(),
                REPLICATION_SECRET.into(),
            ),
            // One probe per second while a circuit is open (as the single-node rig does).
            (
                "HOOKRELAY_DELIVERY_CIRCUIT_PROBE_INTERVAL_MS".into(),
                "1000".into(),
            ),
        ];
        if let Some(ms) = self.degrade_after_ms {
            env.push((
                "HOOKRELAY_REPLICATION_DEGRADE_AFTER_MS".into(),
                ms.to_string(),
            ));
        }
        if let Some(ms) = self.peer_timeout_ms {
            env.push((
                "HOOKRELAY_REPLICATION_PEER_TIMEOUT_MS".into(),
                ms.to_string(),
            ));
        }
        env
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// How to build a [`Pair`].
pub struct PairOptions {
    pub a: Replication,
    pub b: Replication,
    pub endpoints: usize,
    pub policy: Policy,
}

/// A receiver, node A (started as primary, ready), node B (started as replica, up), and a
/// tenant with endpoints created on A that B has already seen.
pub struct Pair {
    pub receiver: Receiver,
    pub a: Server,
    pub b: Server,
    /// The tenant's admin key (replicated to B with the rest of the metadata).
    pub admin_key: String,
    pub endpoints: Vec<Endpoint>,
}

impl Pair {
    pub async fn start(ctx: &mut Ctx, opts: PairOptions) -> anyhow::Result<Self> {
        let receiver = Receiver::start(opts.policy).await?;
        let spec = |name: &str, repl: &Replication| -> anyhow::Result<ServerSpec> {
            let dir = ctx.dir.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(ServerSpec {
                bin: ctx.bin.clone(),
                data_dir: dir.join("data"),
                log_dir: dir,
                port: free_port()?,
                shards: ctx.shards,
                env: ctx.server_env.iter().cloned().chain(repl.env()).collect(),
            })
        };
        let (spec_a, spec_b) = (spec("a", &opts.a)?, spec("b", &opts.b)?);
        // B first: with ack = peer, A is ready only once its peer is there.
        let mut b = Server::spawn(spec_b)?;
        b.wait_healthy(READY_TIMEOUT)
            .await
            .context("starting node B (replica)")?;
        let mut a = Server::spawn(spec_a)?;
        a.wait_ready(READY_TIMEOUT)
            .await
            .context("starting node A (primary)")?;
        let api = Api::create_tenant(&a.base_url(), "chaos").await?;
        let mut endpoints = Vec::new();
        for i in 0..opts.endpoints.max(1) {
            let tag = format!("ep{i}");
            let mut spec = endpoint_spec();
            spec["destination_url"] = json!(receiver.url(&tag));
            spec["name"] = json!(format!("chaos-{tag}"));
            let secret = format!("chaos-secret-{}-{i}", ctx.seed);
            let endpoint = api.create_endpoint(spec, &secret).await?;
            receiver.add_endpoint(&tag, &endpoint.signing_secret);
            endpoints.push(endpoint);
        }
        let pair = Self {
            receiver,
            a,
            b,
            admin_key: api.admin_key,
            endpoints,
        };
        pair.wait_metadata_on_b(Duration::from_secs(20)).await?;
        Ok(pair)
    }

    /// The tenant's API on node B.
    pub fn api_b(&self) -> Api {
        self.api_on(&self.b)
    }

    fn api_on(&self, node: &Server) -> Api {
        Api {
            http: Http::new(node.base_url(), 8, Duration::from_secs(10)),
            admin_key: self.admin_key.clone(),
        }
    }

    /// A load against every endpoint on `node`, tagged `tag` (unique per load run).
    pub fn load_spec(&self, node: &Server, tag: &str) -> LoadSpec {
        LoadSpec::new(node.base_url(), self.endpoints.clone(), tag)
    }

    /// Waits until B answers 200 for every endpoint (replicated metadata).
    async fn wait_metadata_on_b(&self, deadline: Duration) -> anyhow::Result<()> {
        let api = self.api_b();
        let started = Instant::now();
        for endpoint in &self.endpoints {
            let path = format!("/v1/endpoints/{}", endpoint.id);
            loop {
                let answer = api.http.get(&path, Some(&api.admin_key)).await;
                if matches!(&answer, Ok(r) if r.status == 200) {
                    break;
                }
                if started.elapsed() >= deadline {
                    let last = match answer {
                        Ok(r) => format!("HTTP {} {}", r.status, r.text()),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!(
                        "replica B did not see endpoint {} (created on A) within {deadline:?}; last GET {path} on B: {last}",
                        endpoint.id
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// An HTTP client for one node's operator calls.
pub fn operator(node: &Server) -> Http {
    Http::new(node.base_url(), 2, Duration::from_secs(10))
}

/// `GET /v1/admin/replication` (root) → its JSON; an error on anything but 200.
pub async fn replication_status(http: &Http) -> anyhow::Result<Value> {
    let r = http.get("/v1/admin/replication", Some(ROOT_KEY)).await?;
    if r.status != 200 {
        bail!("GET /v1/admin/replication → {}: {}", r.status, r.text());
    }
    r.json()
}

/// `POST /v1/admin/promote` (root) → 200 `{"role": "primary", "epoch"}`; returns the new epoch.
pub async fn promote(http: &Http) -> anyhow::Result<u64> {
    let r = http
        .post_json("/v1/admin/promote", &json!({}), Some(ROOT_KEY))
        .await?;
    if r.status != 200 {
        bail!(
            "POST /v1/admin/promote → {} (expected 200): {}",
            r.status,
            r.text()
        );
    }
    let v = r.json()?;
    if v["role"] != "primary" {
        bail!("POST /v1/admin/promote → 200 but role is not \"primary\": {v}");
    }
    v["epoch"]
        .as_u64()
        .with_context(|| format!("POST /v1/admin/promote → 200 without a numeric epoch: {v}"))
}

/// Polls `GET /v1/admin/replication` until `done` holds; the error names `what` and shows the
/// last answer.
pub async fn wait_status(
    http: &Http,
    what: &str,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let last = replication_status(http).await;
        if let Ok(v) = &last
            && done(v)
        {
            return Ok(v.clone());
        }
        if started.elapsed() >= deadline {
            let shown = match last {
                Ok(v) => v.to_string(),
                Err(e) => format!("{e:#}"),
            };
            bail!("{what}: not within {deadline:?}; last /v1/admin/replication: {shown}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a primary's status shows every shard connected with nothing unacknowledged.
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

/// Whether every shard of a status is connected.
pub fn all_connected(v: &Value) -> bool {
    v["shards"]
        .as_array()
        .is_some_and(|shards| !shards.is_empty() && shards.iter().all(|s| s["connected"] == true))
}

/// `next_offset` of every shard, by shard number.
pub fn next_offsets(v: &Value) -> Vec<(u64, Option<u64>)> {
    v["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| {
                    (
                        s["shard"].as_u64().unwrap_or(u64::MAX),
                        s["next_offset"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Of `ids`, those `GET /v1/deliveries/{id}` does not answer 200 for on `api`'s node, each with
/// what it answered instead (after up to `tries` tries 500 ms apart, for answers other than 404).
pub async fn not_held(api: &Api, ids: &BTreeSet<String>, tries: u32) -> Vec<(String, String)> {
    let ids: Vec<String> = ids.iter().cloned().collect();
    let chunk = ids.len().div_ceil(QUERY_TASKS).max(1);
    let mut tasks = JoinSet::new();
    for part in ids.chunks(chunk) {
        let part = part.to_vec();
        let api = api.clone();
        tasks.spawn(async move {
            let mut missing = Vec::new();
            for id in part {
                let path = format!("/v1/deliveries/{id}");
                let mut last = String::new();
                let mut held = false;
                for attempt in 0..tries.max(1) {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    match api.http.get(&path, Some(&api.admin_key)).await {
                        Ok(r) if r.status == 200 => {
                            held = true;
                            break;
                        }
                        Ok(r) if r.status == 404 => {
                            last = format!("HTTP 404 {}", r.text());
                            break;
                        }
                        Ok(r) => last = format!("HTTP {} {}", r.status, r.text()),
                        Err(e) => last = format!("{e:#}"),
                    }
                }
                if !held {
                    missing.push((id, last));
                }
            }
            missing
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(part) = done {
            all.extend(part);
        }
    }
    all.sort();
    all
}

/// `n ids (e.g. a: why, b: why)` for a failure line.
pub fn show_ids(items: &[(String, String)]) -> String {
    let shown: Vec<String> = items
        .iter()
        .take(IDS_SHOWN_MAX)
        .map(|(id, why)| format!("{id}: {why}"))
        .collect();
    format!("{} ids (e.g. {})", items.len(), shown.join("; "))
}

/// One ingest request to `node` for `endpoint` (signed, unique body); returns status and body.
pub async fn ingest_once(
    node: &Server,
    endpoint: &Endpoint,
    tag: &str,
) -> anyhow::Result<(u16, String)> {
    let http = Http::new(node.base_url(), 0, Duration::from_secs(15));
    let body = json!({"chaos": tag, "probe": true}).to_string();
    let mut headers: Vec<(String, String)> = crate::signing::sign_generic(
        &endpoint.secret,
        body.as_bytes(),
        crate::signing::unix_now(),
    )
    .into();
    headers.push(("content-type".into(), "application/json".into()));
    headers.push(("idempotency-key".into(), tag.to_string()));
    let r = http
        .send(
            hyper::Method::POST,
            &format!("/ingest/{}", endpoint.id),
            bytes::Bytes::from(body),
            &headers,
        )
        .await?;
    Ok((r.status, r.text()))
}
