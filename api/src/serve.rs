//! `hookrelay serve`: open the node, bootstrap the operator key, start one thread per shard
//! (each pinned to a core unless `server.pin_shards` is off, with its own runtime and its own
//! SO_REUSEPORT listener), and stop gracefully on SIGTERM/SIGINT.
//!
//! Runtime choice (see README "Design"): each shard thread runs `tokio_uring` — a tokio
//! current-thread runtime with an io_uring driver — so hyper runs natively on `tokio::net`
//! while the log writes through io_uring. When io_uring is unavailable (container seccomp
//! profiles, `kernel.io_uring_disabled`, memlock limits) or `log.io = "portable"`, the thread
//! runs a plain current-thread runtime with a `LocalSet` and the log uses pwrite + fdatasync on
//! the blocking pool. The choice is logged per shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::meta::{ApiKey, MetaOp, Role, hash_key};
use hookrelay_engine::node::{EngineConfig, Node};
use hookrelay_engine::shard::{self, ShardCtx, ShardMsg};
use tokio::sync::mpsc;

use crate::app::{self, App};
use crate::auth::generate_key;
use crate::balance::{Balancer, Moved, Policy, ShardBalance};
use crate::config::{Config, LogIo};
use crate::listener::bind_reuseport_group;

/// Room in a log frame for the ids, key and lengths around an ingested body and its headers.
const FRAME_OVERHEAD_BYTES: u64 = 64 << 10;
/// Listen backlog of each shard's socket.
const LISTEN_BACKLOG: i32 = 4096;
/// Exit deadline after SIGTERM (the contract's 30 s, with room for the process to exit).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(29);

/// The engine's view of the configuration.
pub fn engine_config(config: &Config) -> EngineConfig {
    let mut e = EngineConfig::new(&config.server.data_dir, config.effective_shards());
    e.log_io = match config.log.io {
        LogIo::Auto => hookrelay_log::IoMode::Auto,
        LogIo::Uring => hookrelay_log::IoMode::Uring,
        LogIo::Portable => hookrelay_log::IoMode::Portable,
    };
    e.segment_bytes_max = config.log.segment_bytes_max;
    e.segment_age_max = Duration::from_millis(config.log.segment_age_max_ms);
    e.batch_bytes_max = config.log.batch_bytes_max as usize;
    e.batch_linger = Duration::from_micros(config.log.batch_linger_us);
    e.direct_io = config.log.direct_io;
    // A frame holds the body, the headers and a few ids: size it from the ingest limits.
    e.frame_bytes_max = u32::try_from(
        config.ingest.max_body_bytes + config.ingest.max_header_bytes + FRAME_OVERHEAD_BYTES,
    )
    .unwrap_or(u32::MAX)
    .min(hookrelay_log::FRAME_BYTES_LIMIT);
    e.allow_private_destinations = config.delivery.allow_private_destinations;
    e.connect_timeout = Duration::from_millis(config.delivery.connect_timeout_ms);
    e.pool_idle_per_host = config.delivery.pool_idle_per_host as usize;
    e.max_in_flight_per_shard = config.delivery.max_in_flight_per_shard as usize;
    e.queue_in_memory_per_endpoint = config.delivery.queue_in_memory_per_endpoint as usize;
    e.circuit_failures_to_open = config.delivery.circuit_failures_to_open as u32;
    e.circuit_probe_interval = Duration::from_millis(config.delivery.circuit_probe_interval_ms);
    e.idempotency_ttl =
        Duration::from_secs(u64::from(config.retention.idempotency_days as u32) * 86_400);
    e.deliveries_retention =
        Duration::from_secs(config.retention.deliveries_days.saturating_mul(86_400));
    e.shutdown_timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
    e.replication = replication_config(config);
    e
}

/// The engine's view of `[replication]`.
fn replication_config(config: &Config) -> hookrelay_engine::replication::ReplicationConfig {
    use crate::config::{Ack, Role as ReplRole};
    use hookrelay_engine::replication::{AckMode, ReplicationConfig, Role, tls::TlsSettings};
    let r = &config.replication;
    ReplicationConfig {
        role: match r.role {
            ReplRole::Primary => Role::Primary,
            ReplRole::Replica => Role::Replica,
        },
        peer: r.peer.clone(),
        listen: r.listen,
        ack: match r.ack {
            Ack::Local => AckMode::Local,
            Ack::Peer => AckMode::Peer,
        },
        degrade_after: r.degrade_after_ms.map(Duration::from_millis),
        peer_timeout: Duration::from_millis(r.peer_timeout_ms),
        secret: r.secret.clone(),
        tls: match (&r.tls_cert_file, &r.tls_key_file, &r.tls_ca_file) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsSettings {
                cert_file: cert.into(),
                key_file: key.into(),
                ca_file: ca.into(),
                server_name: r.tls_server_name.clone(),
            }),
            _ => None,
        },
    }
}

/// Runs the service until a signal stops it.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let mut engine = engine_config(&config);
    // Kept until the process ends: the S3 client's runtime, when dlq.backend = "s3".
    let (dlq, _dlq_runtime) = start_dlq(&config, &engine.data_dir)?;
    engine.dlq = Some(dlq);
    engine.master_key = master_key_from_env()?;
    if let Some(path) = &config.delivery.ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("reading delivery.ca_file {path}"))?;
        anyhow::ensure!(
            pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"),
            "delivery.ca_file {path} holds no PEM certificate"
        );
        engine.extra_roots_pem = Some(pem);
    }
    let node = Node::open(engine).context("opening the data dir")?;
    bootstrap_root_key(&node)?;
    let _replication_listener = hookrelay_engine::replication::receiver::spawn_listener(
        node.clone(),
    )
    .with_context(|| {
        format!(
            "binding replication.listen {}",
            config
                .replication
                .listen
                .map(|a| a.to_string())
                .unwrap_or_default()
        )
    })?;
    let listen: SocketAddr = config.server.listen;
    let public_url = config.public_url();
    let config = Arc::new(config);
    let shards = node.shards();
    // Bind every listener before starting threads, so a taken port fails start-up cleanly.
    let listeners = bind_reuseport_group(listen, shards, LISTEN_BACKLOG)
        .with_context(|| format!("binding {listen}"))?;
    let cores = if config.server.pin_shards {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let s = &config.server;
    let policy = Policy::from_percent(
        s.balance_connections,
        s.balance_busy_min_percent,
        s.balance_margin_percent,
    );
    let balancer = Balancer::new(shards, policy);
    let mut threads = Vec::with_capacity(shards);
    for (i, listener) in listeners.into_iter().enumerate() {
        let inbox = node.take_inbox(i).context("shard inbox taken twice")?;
        let moved_in = balancer
            .take_inbox(i)
            .context("connection inbox taken twice")?;
        let (node, config, public_url) = (node.clone(), config.clone(), public_url.clone());
        let balancer = balancer.clone();
        let core = cores.get(i % cores.len().max(1)).copied();
        let handle = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let shard = Shard {
                    i,
                    node,
                    config,
                    public_url,
                    balancer,
                };
                run_shard_thread(shard, listener, inbox, moved_in)
            })
            .context("spawning a shard thread")?;
        threads.push(handle);
    }
    tracing::info!(%listen, shards, data_dir = %node.config().data_dir.display(), "hookrelay serving");

    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    signals.block_on(wait_for_signal(&node));
    tracing::info!("shutting down");
    node.shutdown();
    let deadline = std::time::Instant::now() + SHUTDOWN_DEADLINE;
    let mut failed = false;
    for t in threads {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !t.is_finished() {
            tracing::error!("a shard did not stop within the shutdown deadline");
            std::process::exit(1);
        }
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "shard failed");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    if failed {
        anyhow::bail!("a shard stopped with an error");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Builds the DLQ store of `[dlq]`, which the node hands to every shard and to the API. For
/// `s3`, also starts the S3 client's runtime, returned to be kept for the life of the process.
fn start_dlq(
    config: &Config,
    data_dir: &std::path::Path,
) -> anyhow::Result<(
    hookrelay_engine::dlq::store::Store,
    Option<hookrelay_engine::dlq::s3::S3Runtime>,
)> {
    use hookrelay_engine::dlq::local::LocalDlq;
    use hookrelay_engine::dlq::s3::{S3Dlq, S3Options, S3Runtime};
    use hookrelay_engine::dlq::store::{Backend, Store, StoreOptions};
    let q = &config.dlq;
    let options = StoreOptions {
        max_concurrent_puts: q.max_concurrent_puts as usize,
        retry_max_delay: Duration::from_millis(q.retry_max_delay_ms),
    };
    let (backend, runtime) = match q.backend {
        crate::config::DlqBackend::Local => {
            (Backend::Local(LocalDlq::new(data_dir.join("dlq"))), None)
        }
        crate::config::DlqBackend::S3 => {
            let rt = S3Runtime::start().context("starting the DLQ's S3 runtime")?;
            let opts = S3Options {
                bucket: q.bucket.clone().unwrap_or_default(),
                prefix: q.prefix.clone(),
                region: q.region.clone(),
                endpoint_url: q.endpoint_url.clone(),
                force_path_style: q.force_path_style,
                sse_kms_key_id: q.sse_kms_key_id.clone(),
            };
            let s3 = rt
                .block_on(S3Dlq::connect(opts, rt.handle()))
                .context("configuring the S3 DLQ")?;
            tracing::info!(bucket = s3.bucket(), prefix = s3.prefix(), "DLQ on S3");
            // Logged, never fatal: an S3 outage delays shipping, it must not stop ingest.
            let (check, days) = (s3.clone(), q.retention_days);
            rt.handle().spawn(async move { check.check(days).await });
            (Backend::S3(s3), Some(rt))
        }
    };
    Ok((Store::new(backend, options), runtime))
}

/// `HOOKRELAY_MASTER_KEY`: base64 of 32 bytes, the key that seals tenants' data keys. Keep it
/// outside the data dir (a secrets manager, a systemd credential) in production.
fn master_key_from_env() -> anyhow::Result<Option<hookrelay_engine::seal::SecretKey>> {
    use base64::Engine as _;
    match std::env::var("HOOKRELAY_MASTER_KEY") {
        Err(_) => Ok(None),
        Ok(v) => base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .ok()
            .and_then(|b| hookrelay_engine::seal::SecretKey::from_bytes(&b))
            .map(Some)
            .context(
                "HOOKRELAY_MASTER_KEY must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)",
            ),
    }
}

/// Waits for SIGTERM or SIGINT.
async fn wait_for_signal(node: &Node) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    let mut shutdown = node.shutdown_signal();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shutdown.changed() => {}
    }
}

/// Creates the operator key on first start: `HOOKRELAY_ROOT_KEY`, or a generated key printed
/// once to stdout as `root key: hr_root_...`.
fn bootstrap_root_key(node: &Node) -> anyhow::Result<()> {
    let snapshot = node.meta().load();
    if snapshot.api_keys.values().any(|k| k.role == Role::Root) {
        return Ok(());
    }
    let (key, generated) = match std::env::var("HOOKRELAY_ROOT_KEY") {
        Ok(k) if !k.trim().is_empty() => (k.trim().to_string(), false),
        _ => (generate_key(Role::Root), true),
    };
    if !key.starts_with("hr_") {
        anyhow::bail!("HOOKRELAY_ROOT_KEY must look like hr_root_<random>");
    }
    let record = ApiKey {
        id: "ak_root".into(),
        tenant_id: None,
        role: Role::Root,
        name: "operator".into(),
        hash: hash_key(&key),
        prefix: key.chars().take(12).collect(),
        created_at: rfc3339_ms(now_ms()),
        last_used_at_ms: None,
    };
    node.meta()
        .apply_blocking(&[MetaOp::PutApiKey(record)])
        .context("storing the operator key")?;
    if generated {
        println!("root key: {key}");
    }
    Ok(())
}

/// What a shard thread starts from.
struct Shard {
    i: usize,
    node: Node,
    config: Arc<Config>,
    public_url: String,
    balancer: Arc<Balancer>,
}

/// One shard thread: a tokio_uring runtime when io_uring works, else a plain one.
fn run_shard_thread(
    shard: Shard,
    listener: std::net::TcpListener,
    inbox: mpsc::Receiver<ShardMsg>,
    moved_in: mpsc::Receiver<Moved>,
) -> anyhow::Result<()> {
    let Shard {
        i,
        node,
        config,
        public_url,
        balancer,
    } = shard;
    let want_uring = !matches!(config.log.io, LogIo::Portable);
    let body = async move {
        let ctx = ShardCtx::new(i, node.clone());
        let app = Rc::new(App {
            shard: ctx.clone(),
            config,
            public_url,
            balance: ShardBalance::new(i, balancer),
        });
        if i == 0 {
            tokio::task::spawn_local(crate::replay::resume_all(app.clone()));
        }
        tokio::task::spawn_local(app::serve(listener, moved_in, app));
        let result = shard::run(ctx, inbox).await;
        if let Err(e) = &result {
            tracing::error!(shard = i, error = %e, "shard failed; stopping the node");
            node.shutdown();
        }
        result.map_err(anyhow::Error::from)
    };
    if want_uring {
        match tokio_uring::Runtime::new(&tokio_uring::builder()) {
            Ok(rt) => return rt.block_on(body),
            Err(e) => {
                tracing::warn!(shard = i, error = %e, "io_uring unavailable; using the portable runtime")
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the shard runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, body)
}
