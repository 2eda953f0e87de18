//! Embedded defaults: what `hookrelay serve` uses with no config file, no environment and no
//! flags (CONTRACT "Process and configuration").

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
pub const DATA_DIR: &str = "./data";
/// 0 = one shard per core.
pub const SHARDS: usize = 0;
pub const SHUTDOWN_TIMEOUT_MS: u64 = 25_000;
pub const BALANCE_BUSY_MIN_PERCENT: u64 = 50;
pub const BALANCE_MARGIN_PERCENT: u64 = 15;

pub const MAX_BODY_BYTES: u64 = 1 << 20;
pub const SIGNATURE_TOLERANCE_S: u64 = 300;
pub const MAX_HEADERS: u64 = 100;
pub const MAX_HEADER_BYTES: u64 = 64 << 10;
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const POOL_IDLE_PER_HOST: u64 = 32;
pub const MAX_IN_FLIGHT_PER_SHARD: u64 = 4096;
pub const QUEUE_IN_MEMORY_PER_ENDPOINT: u64 = 4096;
pub const CIRCUIT_FAILURES_TO_OPEN: u64 = 20;
pub const CIRCUIT_PROBE_INTERVAL_MS: u64 = 30_000;

pub const SEGMENT_BYTES_MAX: u64 = 128 << 20;
pub const SEGMENT_AGE_MAX_MS: u64 = 3_600_000;
pub const BATCH_BYTES_MAX: u64 = 1 << 20;
pub const BATCH_LINGER_US: u64 = 0;

pub const DELIVERIES_DAYS: u64 = 30;
pub const IDEMPOTENCY_DAYS: u64 = 7;

pub const DLQ_RETENTION_DAYS: u64 = 30;
pub const DLQ_MAX_CONCURRENT_PUTS: u64 = 8;
pub const DLQ_RETRY_MAX_DELAY_MS: u64 = 30_000;

pub const REPLAY_MAX_PER_S: u64 = 100;

pub const PEER_TIMEOUT_MS: u64 = 5_000;

pub const PAGERDUTY_API_BASE: &str = "https://events.pagerduty.com";

pub const STRIPE_API_BASE: &str = "https://api.stripe.com";
pub const METER_EVENT_NAME: &str = "hookrelay_deliveries";
pub const GRACE_DAYS: u64 = 7;

pub const LOG_LEVEL: &str = "info";

pub fn data_dir() -> PathBuf {
    PathBuf::from(DATA_DIR)
}
