//! The DLQ store the shards ship to and the API reads from: one cheap, cloneable handle over the
//! configured backend (`local`: [`LocalDlq`], `s3`: [`S3Dlq`]), with what shipping shares
//! node-wide — the bound on concurrent PUTs, the retry backoff, the counters behind `/metrics`.
//!
//! Every call is async and never blocks its caller's thread: the local store's calls run on the
//! blocking pool, the S3 store's on its own runtime. So a shard (current-thread, io_uring) and
//! an HTTP handler call it the same way.
//!
//! Read first: [`Store`], then `shard/dead_letter.rs` (the shipper that uses it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::local::{LIST_RANGE_KEYS_MAX, LocalDlq};
use super::metrics::ShipStats;
use super::object::{self, DlqObject};
use super::s3::S3Dlq;
use super::{Error, Result};

/// Default of `dlq.max_concurrent_puts`.
pub const MAX_CONCURRENT_PUTS_DEFAULT: usize = 8;
/// Upper bound of `dlq.max_concurrent_puts`.
pub const MAX_CONCURRENT_PUTS_LIMIT: usize = 1024;
/// First retry of a failed shipment waits up to this long (full jitter: uniformly 0..=it).
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Default of `dlq.retry_max_delay_ms`: the ceiling of the exponential backoff.
pub const RETRY_MAX_DELAY_DEFAULT: Duration = Duration::from_secs(30);

/// How shipping behaves, node-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most DLQ objects being stored at once across all shards (`dlq.max_concurrent_puts`);
    /// a shipment holds its slot through its retries.
    pub max_concurrent_puts: usize,
    /// Ceiling of the retry backoff (`dlq.retry_max_delay_ms`).
    pub retry_max_delay: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_concurrent_puts: MAX_CONCURRENT_PUTS_DEFAULT,
            retry_max_delay: RETRY_MAX_DELAY_DEFAULT,
        }
    }
}

/// Where objects go.
#[derive(Debug, Clone)]
pub enum Backend {
    Local(LocalDlq),
    S3(S3Dlq),
}

/// The DLQ store. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    options: StoreOptions,
    puts: Arc<Semaphore>,
    stats: ShipStats,
}

impl Store {
    /// A store over `backend`. Panics if `options.max_concurrent_puts` is not within
    /// 1..=[`MAX_CONCURRENT_PUTS_LIMIT`] (the configuration validates it).
    pub fn new(backend: Backend, options: StoreOptions) -> Store {
        assert!(
            (1..=MAX_CONCURRENT_PUTS_LIMIT).contains(&options.max_concurrent_puts),
            "max_concurrent_puts {} out of range",
            options.max_concurrent_puts
        );
        Store {
            inner: Arc::new(Inner {
                puts: Arc::new(Semaphore::new(options.max_concurrent_puts)),
                backend,
                options,
                stats: ShipStats::default(),
            }),
        }
    }

    /// The local store under `root`, with default options.
    pub fn local(root: PathBuf) -> Store {
        Store::new(Backend::Local(LocalDlq::new(root)), StoreOptions::default())
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// `local` or `s3`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Local(_) => "local",
            Backend::S3(_) => "s3",
        }
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    pub fn stats(&self) -> &ShipStats {
        &self.inner.stats
    }

    /// Waits for one of the node's `max_concurrent_puts` shipping slots.
    pub async fn put_slot(&self) -> OwnedSemaphorePermit {
        self.inner
            .puts
            .clone()
            .acquire_owned()
            .await
            .expect("the DLQ put semaphore is never closed")
    }

    /// How long to wait before retrying a shipment that failed `failures` times in a row:
    /// exponential backoff with full jitter, `unit` (uniform in 0..1) times
    /// `min(retry_max_delay, RETRY_BASE_DELAY * 2^(failures - 1))`.
    pub fn retry_delay(&self, failures: u32, unit: f64) -> Duration {
        full_jitter(
            failures,
            RETRY_BASE_DELAY,
            self.inner.options.retry_max_delay,
            unit,
        )
    }

    /// Stores `obj` at `key` durably: `Ok` once the object is on disk (fsynced) or S3 answered
    /// the PUT. A second put of the same key replaces the object.
    pub async fn put(&self, key: &str, obj: DlqObject) -> Result<()> {
        match &self.inner.backend {
            Backend::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.put(&key, &obj).map(|_| ())).await
            }
            Backend::S3(s3) => s3.put(key, object::encode(key, &obj)?).await,
        }
    }

    /// The object at `key`, `None` if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<DlqObject>> {
        match &self.inner.backend {
            Backend::Local(local) => {
                let (local, key) = (local.clone(), key.to_owned());
                blocking(move || local.get(&key)).await
            }
            Backend::S3(s3) => s3.get(key).await,
        }
    }

    /// One page of the keys of `tenant_id` (and `endpoint_id`) dated within the UTC days of
    /// `from..=to`: at most `limit` keys after `after`, in key order (see
    /// `LocalDlq::list_range_page`; both backends answer the same keys in the same order).
    pub async fn list_range_page(
        &self,
        tenant_id: &str,
        endpoint_id: Option<&str>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        match &self.inner.backend {
            Backend::Local(local) => {
                let local = local.clone();
                let (tenant, endpoint) = (tenant_id.to_owned(), endpoint_id.map(str::to_owned));
                let after = after.map(str::to_owned);
                blocking(move || {
                    local.list_range_page(
                        &tenant,
                        endpoint.as_deref(),
                        from,
                        to,
                        after.as_deref(),
                        limit,
                    )
                })
                .await
            }
            Backend::S3(s3) => {
                s3.list_range_page(tenant_id, endpoint_id, from, to, after, limit)
                    .await
            }
        }
    }

    /// Every key [`list_range_page`](Self::list_range_page) would page through; more than
    /// [`LIST_RANGE_KEYS_MAX`] is `Error::TooManyKeys`.
    pub async fn list_range(
        &self,
        tenant_id: &str,
        endpoint_id: Option<&str>,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<String>> {
        let keys = self
            .list_range_page(
                tenant_id,
                endpoint_id,
                from,
                to,
                None,
                LIST_RANGE_KEYS_MAX + 1,
            )
            .await?;
        if keys.len() > LIST_RANGE_KEYS_MAX {
            return Err(Error::TooManyKeys {
                limit: LIST_RANGE_KEYS_MAX,
            });
        }
        Ok(keys)
    }

    /// The DLQ object of `delivery_id`, a delivery of `tenant_id` dead-lettered on a UTC day
    /// within `from..=to`, when its endpoint is not known (the delivery left the log).
    pub async fn find_delivery(
        &self,
        tenant_id: &str,
        delivery_id: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Option<DlqObject>> {
        match &self.inner.backend {
            Backend::Local(local) => {
                let local = local.clone();
                let tenant = tenant_id.to_owned();
                let wanted = format!("/{delivery_id}.json");
                blocking(move || {
                    let keys = local.list_range(&tenant, None, from, to)?;
                    match keys.into_iter().find(|k| k.ends_with(&wanted)) {
                        Some(k) => local.get(&k),
                        None => Ok(None),
                    }
                })
                .await
            }
            Backend::S3(s3) => s3.find_delivery(tenant_id, delivery_id, from, to).await,
        }
    }

    /// Deletes every object of a tenant (GDPR purge).
    pub async fn purge_tenant(&self, tenant_id: &str) -> Result<()> {
        match &self.inner.backend {
            Backend::Local(local) => {
                let (local, tenant) = (local.clone(), tenant_id.to_owned());
                blocking(move || local.purge_tenant(&tenant)).await
            }
            Backend::S3(s3) => s3.purge_tenant(tenant_id).await,
        }
    }
}

/// `unit * min(max, base * 2^(failures - 1))`: exponential backoff with full jitter (AWS
/// Architecture Blog, "Exponential Backoff And Jitter"), so shipments that failed together do
/// not retry together. `unit` is clamped to 0..=1; `failures` 0 is treated as 1.
pub fn full_jitter(failures: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    // 2^20 × 100 ms is over a day: every real ceiling is reached before the shift overflows.
    let doublings = failures.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << doublings).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Interrupted(format!("blocking pool: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::object::tests::sample;
    use time::macros::datetime;

    #[test]
    fn backoff_grows_exponentially_to_the_ceiling_with_full_jitter() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(30));
        let ceilings: Vec<u128> = (1..=12)
            .map(|n| full_jitter(n, base, max, 1.0).as_millis())
            .collect();
        assert_eq!(
            ceilings,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(full_jitter(0, base, max, 1.0), base);
        assert_eq!(full_jitter(u32::MAX, base, max, 1.0), max);
        // Full jitter: anywhere from 0 to the ceiling.
        assert_eq!(full_jitter(5, base, max, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(5, base, max, 0.5).as_millis(), 800);
        assert_eq!(full_jitter(5, base, max, 7.0).as_millis(), 1_600);
    }

    #[tokio::test]
    async fn local_backend_through_the_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::local(dir.path().join("dlq"));
        assert_eq!(store.backend_name(), "local");
        let obj = sample();
        let key = obj.key().expect("key");
        store.put(&key, obj.clone()).await.expect("put");
        assert_eq!(store.get(&key).await.expect("get"), Some(obj.clone()));
        let (from, to) = (
            datetime!(2024-03-05 00:00 UTC),
            datetime!(2024-03-05 23:59 UTC),
        );
        let keys = store
            .list_range(&obj.tenant_id, None, from, to)
            .await
            .expect("list");
        assert_eq!(keys, std::slice::from_ref(&key));
        let found = store
            .find_delivery(&obj.tenant_id, &obj.delivery_id, from, to)
            .await
            .expect("find");
        assert_eq!(found, Some(obj.clone()));
        store.purge_tenant(&obj.tenant_id).await.expect("purge");
        assert_eq!(store.get(&key).await.expect("get"), None);
    }

    #[tokio::test]
    async fn put_slots_are_bounded() {
        let store = Store::new(
            Backend::Local(LocalDlq::new(PathBuf::from("/nonexistent"))),
            StoreOptions {
                max_concurrent_puts: 2,
                ..StoreOptions::default()
            },
        );
        let a = store.put_slot().await;
        let _b = store.put_slot().await;
        let third = tokio::time::timeout(Duration::from_millis(50), store.put_slot()).await;
        assert!(third.is_err(), "a third slot while two are held");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), store.put_slot())
            .await
            .expect("a slot once one is given back");
    }
}
