//! The S3 DLQ store (`dlq.backend = "s3"`): the contract's objects in a bucket of AWS S3 or of
//! any S3-compatible store (MinIO, Ceph, R2, ...), at `{dlq.prefix}{key}`.
//!
//! Runtime: aws-sdk-s3 needs a multi-thread tokio runtime (its connection pool, timeouts and
//! credential refreshes run as tasks on it), while a shard runs a current-thread runtime on
//! io_uring. So the binary starts one small [`S3Runtime`] and every call here is spawned onto
//! it; the caller awaits the join handle from whatever runtime it is on.
//! Architecture Invariant: a key is validated by `object::parse_key` before a request is built
//! from it, and every key listed back is validated before it is handed out.
//! Not here: the retries and the concurrency bound of shipping (`store.rs`,
//! `shard/dead_letter.rs`); retention, which is a bucket lifecycle rule (README "DLQ on S3"),
//! only checked here at start-up ([`S3Dlq::check`]).

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::operation::list_objects_v2::builders::ListObjectsV2FluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, LifecycleRule, ObjectIdentifier, ServerSideEncryption};
use time::{Date, OffsetDateTime, UtcOffset};
use tokio::runtime::Handle;

use super::local::{LIST_RANGE_KEYS_MAX, OBJECT_BYTES_MAX};
use super::object::{self, DlqObject, is_valid_id, parse_fixed_digits};
use super::{Error, Result};

/// Worker threads of the S3 runtime: S3 calls are I/O bound and few (bounded by
/// `dlq.max_concurrent_puts` plus replay reads), two threads keep them off the shards' cores.
pub const RUNTIME_WORKER_THREADS: usize = 2;
/// Keys asked for per `ListObjectsV2` page (S3's own maximum).
const LIST_PAGE_KEYS_MAX: i32 = 1000;
/// Pages one listing walks before giving up with `Error::TooManyKeys`.
const LIST_PAGES_MAX: usize = LIST_RANGE_KEYS_MAX / LIST_PAGE_KEYS_MAX as usize + 1;
/// A range of at most this many days lists each day's prefix directly; a longer one first
/// walks the years, months and days that exist (one listing per level), as the local store
/// walks its directories.
const DAYS_LISTED_DIRECTLY_MAX: i64 = 31;
/// Most `GET`s one search for a delivery id may make (endpoints × days).
const FIND_PROBES_MAX: usize = 20_000;
/// Most `DeleteObjects` batches (of up to 1000 keys) one tenant purge makes.
const PURGE_BATCHES_MAX: usize = 100_000;
/// TCP (and TLS) connect timeout of an S3 request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one S3 request attempt may take (a 1 MiB body is ~1.4 MB of JSON).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a read, list or delete (the SDK's standard retry with backoff). Shipping PUTs
/// are tried once per call: the shipper retries them with its own backoff.
const READ_ATTEMPTS_MAX: u32 = 3;

/// Where the S3 store writes; `[dlq]` of the configuration.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub bucket: String,
    /// Put before every key, as is (`hookrelay/` gives `hookrelay/tn_.../...json`).
    pub prefix: String,
    /// Unset: the standard AWS chain (`AWS_REGION`, profile, EC2 metadata); with an
    /// `endpoint_url` and no region anywhere, `us-east-1` (what S3-compatible stores expect).
    pub region: Option<String>,
    /// An S3-compatible store's URL; unset = AWS.
    pub endpoint_url: Option<String>,
    /// `endpoint/bucket/key` URLs instead of `bucket.endpoint/key`.
    pub force_path_style: bool,
    /// Sent as `x-amz-server-side-encryption: aws:kms` with this key id on every PUT.
    pub sse_kms_key_id: Option<String>,
    /// Unit tests sign with fixed keys instead of the AWS chain (which would ask the EC2
    /// metadata address when the environment has none).
    #[cfg(test)]
    pub test_credentials: Option<(String, String)>,
}

/// The multi-thread runtime S3 calls run on (see the module docs). Owned by the binary for the
/// life of the process; dropping it stops it without waiting (calls then fail as
/// `Error::Interrupted`).
pub struct S3Runtime {
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Runtime {
    /// Starts the runtime with [`RUNTIME_WORKER_THREADS`] threads named `dlq-s3`.
    pub fn start() -> std::io::Result<S3Runtime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKER_THREADS)
            .thread_name("dlq-s3")
            .enable_all()
            .build()?;
        Ok(S3Runtime { rt: Some(rt) })
    }

    /// A handle to spawn onto.
    pub fn handle(&self) -> Handle {
        match &self.rt {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }

    /// Runs `f` to completion on the runtime; for start-up, outside any runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for S3Runtime {
    fn drop(&mut self) {
        // `shutdown_background` does not block, so this may run inside an async context
        // (tests); a plain drop there would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The S3 store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct S3Dlq {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    sse_kms_key_id: Option<String>,
    rt: Handle,
}

impl std::fmt::Debug for S3Dlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Dlq")
            .field("bucket", &self.inner.bucket)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Dlq {
    /// Builds the client: credentials from the standard AWS chain (resolved at the first
    /// request, so a start-up without network still succeeds), TLS on rustls/ring. Fails only
    /// on configuration that can never work (no region at all).
    pub async fn connect(opts: S3Options, rt: Handle) -> Result<S3Dlq> {
        let handle = rt.clone();
        let bucket = opts.bucket.clone();
        let client = spawn_on(&rt, async move { build_client(&opts).await })
            .await?
            .map_err(|reason| Error::S3 {
                op: "configure",
                key: bucket,
                reason,
                transient: false,
            })?;
        Ok(S3Dlq {
            inner: Arc::new(Inner {
                client: client.client,
                bucket: client.bucket,
                prefix: client.prefix,
                sse_kms_key_id: client.sse_kms_key_id,
                rt: handle,
            }),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Stores `body` (an encoded object, `object::encode`) at `key`, once: no SDK retry, the
    /// shipper retries with its own backoff. A second PUT of the same key replaces the object
    /// with the same bytes. Returns once S3 answered 200: the object is durable.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        object::parse_key(key)?;
        let inner = self.inner.clone();
        let full = format!("{}{key}", inner.prefix);
        spawn_on(&self.inner.rt, async move {
            let mut req = inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(&full)
                .content_type("application/json")
                .body(ByteStream::from(body));
            if let Some(kms_key) = &inner.sse_kms_key_id {
                req = req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(kms_key);
            }
            req.customize()
                .config_override(
                    aws_sdk_s3::config::Builder::new().retry_config(RetryConfig::disabled()),
                )
                .send()
                .await
                .map_err(|e| s3_error("PutObject", &full, e))?;
            Ok(())
        })
        .await?
    }

    /// The object at `key`, `None` if there is none; larger than [`OBJECT_BYTES_MAX`] is
    /// `Error::TooLarge`, not a valid object of that key is `Error::Corrupt`.
    pub async fn get(&self, key: &str) -> Result<Option<DlqObject>> {
        object::parse_key(key)?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        spawn_on(&self.inner.rt, async move {
            let full = format!("{}{key}", inner.prefix);
            let out = match inner
                .client
                .get_object()
                .bucket(&inner.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(s3_error("GetObject", &full, e)),
            };
            let too_large = |bytes: u64| Error::TooLarge {
                key: key.clone(),
                bytes,
                limit: OBJECT_BYTES_MAX,
            };
            let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
            if let Some(n) = announced.filter(|n| *n > OBJECT_BYTES_MAX) {
                return Err(too_large(n));
            }
            let mut body = out.body;
            let mut bytes = Vec::with_capacity(announced.map_or(0, |n| n as usize));
            // The bound holds whatever the store announced.
            while let Some(chunk) = body.try_next().await.map_err(|e| Error::S3 {
                op: "GetObject",
                key: full.clone(),
                reason: e.to_string(),
                transient: true,
            })? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() as u64 > OBJECT_BYTES_MAX {
                    return Err(too_large(bytes.len() as u64));
                }
            }
            object::decode(&key, &bytes).map(Some)
        })
        .await?
    }

    /// One page of the keys of `tenant_id` (and `endpoint_id` if given) whose date is within
    /// the UTC dates of `from..=to`: at most `limit` keys greater than `after`, in key order —
    /// the same keys and order as `LocalDlq::list_range_page`. Lists the tenant's endpoint
    /// prefixes (when no endpoint is given), then each day's prefix.
    pub async fn list_range_page(
        &self,
        tenant_id: &str,
        endpoint_id: Option<&str>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let Some((from, to)) = object::range_dates(tenant_id, endpoint_id, from, to)? else {
            return Ok(out);
        };
        if limit == 0 {
            return Ok(out);
        }
        // A prefix that sorts before `after` and is not a prefix of it holds only keys before.
        let skip = |prefix: &str| after.is_some_and(|a| prefix < a && !a.starts_with(prefix));
        let endpoints = match endpoint_id {
            Some(e) => vec![e.to_owned()],
            None => self.endpoint_names(tenant_id).await?,
        };
        for ep in &endpoints {
            if skip(&format!("{tenant_id}/{ep}/")) {
                continue;
            }
            for prefix in self.day_prefixes(tenant_id, ep, from, to).await? {
                if skip(&prefix) {
                    continue;
                }
                let start_after = after.filter(|a| a.starts_with(&prefix));
                let want = limit - out.len();
                let keys = self.keys_under(&prefix, start_after, want).await?;
                out.extend(keys);
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// The DLQ object of `delivery_id` (a delivery of `tenant_id`), dead-lettered on a UTC day
    /// within `from..=to`: probes `{tenant}/{endpoint}/{day}/{delivery_id}.json` for each of the
    /// tenant's endpoint prefixes, earliest day first (a delivery usually ends the day it was
    /// created). More than [`FIND_PROBES_MAX`] probes is `Error::TooManyKeys`.
    pub async fn find_delivery(
        &self,
        tenant_id: &str,
        delivery_id: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Option<DlqObject>> {
        if !is_valid_id("tn_", tenant_id) || !is_valid_id("dl_", delivery_id) {
            return Err(Error::InvalidKey {
                key: format!("{tenant_id}/{delivery_id}"),
                reason: "bad tenant or delivery id",
            });
        }
        let (from, to) = (
            from.to_offset(UtcOffset::UTC).date(),
            to.to_offset(UtcOffset::UTC).date(),
        );
        if from > to {
            return Ok(None);
        }
        let endpoints = self.endpoint_names(tenant_id).await?;
        let days = (to - from).whole_days().unsigned_abs() as usize + 1;
        if endpoints.len().saturating_mul(days) > FIND_PROBES_MAX {
            return Err(Error::TooManyKeys {
                limit: FIND_PROBES_MAX,
            });
        }
        let mut day = Some(from);
        while let Some(d) = day.filter(|d| *d <= to) {
            for ep in &endpoints {
                let key = format!("{}{delivery_id}.json", object::day_prefix(tenant_id, ep, d));
                if let Some(obj) = self.get(&key).await? {
                    return Ok(Some(obj));
                }
            }
            day = d.next_day();
        }
        Ok(None)
    }

    /// Deletes every object under `{prefix}{tenant_id}/` (GDPR purge), in `DeleteObjects`
    /// batches, until a listing finds none. An object shipped while the purge runs may survive
    /// it; a second purge deletes it.
    pub async fn purge_tenant(&self, tenant_id: &str) -> Result<()> {
        if !is_valid_id("tn_", tenant_id) {
            return Err(Error::InvalidKey {
                key: tenant_id.to_owned(),
                reason: "bad tenant id",
            });
        }
        let inner = self.inner.clone();
        let prefix = format!("{}{tenant_id}/", inner.prefix);
        spawn_on(&self.inner.rt, async move {
            for _ in 0..PURGE_BATCHES_MAX {
                let page = inner
                    .client
                    .list_objects_v2()
                    .bucket(&inner.bucket)
                    .prefix(&prefix)
                    .max_keys(LIST_PAGE_KEYS_MAX)
                    .send()
                    .await
                    .map_err(|e| s3_error("ListObjectsV2", &prefix, e))?;
                let keys: Vec<String> = page
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned))
                    .collect();
                if keys.is_empty() {
                    return Ok(());
                }
                let objects = keys
                    .iter()
                    .map(|k| ObjectIdentifier::builder().key(k).build())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| invalid_request("DeleteObjects", &prefix, e))?;
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| invalid_request("DeleteObjects", &prefix, e))?;
                let out = inner
                    .client
                    .delete_objects()
                    .bucket(&inner.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| s3_error("DeleteObjects", &prefix, e))?;
                if let Some(e) = out.errors().first() {
                    return Err(Error::S3 {
                        op: "DeleteObjects",
                        key: e.key().unwrap_or(&prefix).to_owned(),
                        reason: format!(
                            "{} of {} keys not deleted: {} {}",
                            out.errors().len(),
                            keys.len(),
                            e.code().unwrap_or("?"),
                            e.message().unwrap_or("")
                        ),
                        transient: true,
                    });
                }
            }
            Err(Error::TooManyKeys {
                limit: PURGE_BATCHES_MAX * LIST_PAGE_KEYS_MAX as usize,
            })
        })
        .await?
    }

    /// Start-up check, logged and never fatal (an S3 outage must not stop ingest): the bucket
    /// answers, and a lifecycle rule expires the DLQ's objects after `retention_days`.
    pub async fn check(&self, retention_days: u64) {
        let inner = self.inner.clone();
        let checked = spawn_on(&self.inner.rt, async move {
            let bucket = &inner.bucket;
            if let Err(e) = inner.client.head_bucket().bucket(bucket).send().await {
                let e = s3_error("HeadBucket", bucket, e);
                tracing::warn!(error = %e, "DLQ bucket not reachable yet; shipping retries until it is");
                return;
            }
            match inner
                .client
                .get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await
            {
                Ok(out) => match lifecycle_expiry_days(out.rules(), &inner.prefix) {
                    Some(days) if u64::try_from(days).ok() == Some(retention_days) => {
                        tracing::info!(bucket, days, "DLQ retention: bucket lifecycle rule found");
                    }
                    Some(days) => tracing::warn!(
                        bucket,
                        prefix = inner.prefix,
                        lifecycle_days = days,
                        retention_days,
                        "DLQ retention: the bucket's lifecycle rule does not match dlq.retention_days"
                    ),
                    None => tracing::warn!(
                        bucket,
                        prefix = inner.prefix,
                        retention_days,
                        "DLQ retention: no lifecycle rule expires the DLQ objects; they are kept \
                         forever (README, \"DLQ on S3\")"
                    ),
                },
                Err(e) => {
                    let e = s3_error("GetBucketLifecycleConfiguration", bucket, e);
                    tracing::warn!(
                        error = %e,
                        retention_days,
                        "DLQ retention: cannot read the bucket's lifecycle rules; make sure one \
                         expires the DLQ objects (README, \"DLQ on S3\")"
                    );
                }
            }
        })
        .await;
        if let Err(e) = checked {
            tracing::warn!(error = %e, "DLQ bucket check interrupted");
        }
    }

    /// The key prefixes of the days of `from..=to` that may hold objects of `ep`.
    async fn day_prefixes(
        &self,
        tenant_id: &str,
        ep: &str,
        from: Date,
        to: Date,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if (to - from).whole_days() < DAYS_LISTED_DIRECTLY_MAX {
            let mut day = Some(from);
            while let Some(d) = day.filter(|d| *d <= to) {
                out.push(object::day_prefix(tenant_id, ep, d));
                day = d.next_day();
            }
            return Ok(out);
        }
        let ep_prefix = format!("{tenant_id}/{ep}/");
        let mut years = self.child_names(&ep_prefix).await?;
        years.retain(|y| {
            parse_fixed_digits(y, 4)
                .and_then(|y| i32::try_from(y).ok())
                .is_some_and(|y| (from.year()..=to.year()).contains(&y))
        });
        for y in &years {
            let mut months = self.child_names(&format!("{ep_prefix}{y}/")).await?;
            months.retain(|m| object::month_overlaps(y, m, from, to));
            for m in &months {
                let mut days = self.child_names(&format!("{ep_prefix}{y}/{m}/")).await?;
                days.retain(|d| {
                    object::parse_date_parts(y, m, d).is_some_and(|d| from <= d && d <= to)
                });
                out.extend(days.iter().map(|d| format!("{ep_prefix}{y}/{m}/{d}/")));
            }
        }
        Ok(out)
    }

    /// The endpoint ids with objects of `tenant_id`, sorted.
    async fn endpoint_names(&self, tenant_id: &str) -> Result<Vec<String>> {
        let mut names = self.child_names(&format!("{tenant_id}/")).await?;
        names.retain(|n| is_valid_id("ep_", n));
        Ok(names)
    }

    /// The names one level below `parent` (a key prefix ending in `/`), sorted.
    async fn child_names(&self, parent: &str) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        let full = format!("{}{parent}", inner.prefix);
        spawn_on(&self.inner.rt, async move {
            let mut names = Vec::new();
            let request = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(&full)
                .delimiter("/");
            each_page(request, &full, |page| {
                for p in page.common_prefixes() {
                    if let Some(name) = p
                        .prefix()
                        .and_then(|p| p.strip_prefix(full.as_str()))
                        .and_then(|p| p.strip_suffix('/'))
                        .filter(|n| !n.is_empty())
                    {
                        names.push(name.to_owned());
                    }
                }
                ControlFlow::Continue(())
            })
            .await?;
            names.sort_unstable();
            Ok(names)
        })
        .await?
    }

    /// Up to `limit` object keys under `prefix` (a day's prefix, without the store prefix),
    /// after `start_after`, in key order; keys that are not the contract's are left out.
    async fn keys_under(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        let start_after = start_after.map(|a| format!("{}{a}", inner.prefix));
        spawn_on(&self.inner.rt, async move {
            let full = format!("{}{prefix}", inner.prefix);
            let mut keys = Vec::new();
            let request = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(&full)
                .set_start_after(start_after);
            each_page(request, &full, |page| {
                for o in page.contents() {
                    let Some(key) = o.key().and_then(|k| k.strip_prefix(inner.prefix.as_str()))
                    else {
                        continue;
                    };
                    // Only the contract's keys of this day (a stray upload is not a delivery).
                    if key.starts_with(&prefix) && object::parse_key(key).is_ok() {
                        keys.push(key.to_owned());
                        if keys.len() >= limit {
                            return ControlFlow::Break(());
                        }
                    }
                }
                ControlFlow::Continue(())
            })
            .await?;
            Ok(keys)
        })
        .await?
    }
}

/// Walks the `ListObjectsV2` pages of `request` with the SDK's paginator
/// ([`LIST_PAGE_KEYS_MAX`] keys a page), handing each page to `each` until it breaks or the
/// listing ends. A listing longer than [`LIST_PAGES_MAX`] pages is [`Error::TooManyKeys`];
/// `what` names the listed prefix in errors.
async fn each_page(
    request: ListObjectsV2FluentBuilder,
    what: &str,
    mut each: impl FnMut(&ListObjectsV2Output) -> ControlFlow<()>,
) -> Result<()> {
    let mut pages = request.max_keys(LIST_PAGE_KEYS_MAX).into_paginator().send();
    let mut walked = 0;
    while let Some(page) = pages.next().await {
        if walked == LIST_PAGES_MAX {
            return Err(Error::TooManyKeys {
                limit: LIST_RANGE_KEYS_MAX,
            });
        }
        walked += 1;
        let page = page.map_err(|e| s3_error("ListObjectsV2", what, e))?;
        if each(&page).is_break() {
            break;
        }
    }
    Ok(())
}

/// The client of `opts`, with its bucket, prefix and SSE settings.
struct Built {
    client: Client,
    bucket: String,
    prefix: String,
    sse_kms_key_id: Option<String>,
}

async fn build_client(opts: &S3Options) -> std::result::Result<Built, String> {
    use aws_config::meta::region::RegionProviderChain;
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let explicit = opts.region.clone().map(Region::new);
    let region = match (&explicit, &opts.endpoint_url) {
        (Some(r), _) => Some(r.clone()),
        (None, endpoint) => {
            let chain = RegionProviderChain::default_provider();
            match (chain.region().await, endpoint) {
                (Some(r), _) => Some(r),
                // S3-compatible stores mostly ignore the region, but requests are signed for one.
                (None, Some(_)) => Some(Region::new("us-east-1")),
                (None, None) => None,
            }
        }
    };
    let Some(region) = region else {
        return Err("no region: set dlq.region (or AWS_REGION)".to_owned());
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(region)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(READ_ATTEMPTS_MAX));
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    #[cfg(test)]
    if let Some((id, secret)) = &opts.test_credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id, secret, None, None, "test",
        ));
    }
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(opts.force_path_style)
        // Checksums only where an operation requires one (DeleteObjects): a signed request
        // already carries the payload's SHA-256, and several S3-compatible stores refuse the
        // newer default trailing checksums.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Built {
        client: Client::from_conf(config),
        bucket: opts.bucket.clone(),
        prefix: opts.prefix.clone(),
        sse_kms_key_id: opts.sse_kms_key_id.clone(),
    })
}

/// Runs `f` on the S3 runtime and waits for it from the caller's runtime.
async fn spawn_on<T: Send + 'static>(
    rt: &Handle,
    f: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    rt.spawn(f)
        .await
        .map_err(|e| Error::Interrupted(format!("S3 runtime: {e}")))
}

/// A 404 or `NoSuchKey`.
fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            s.err().code() == Some("NoSuchKey") || s.raw().status().as_u16() == 404
        }
        _ => false,
    }
}

/// An SDK error as `Error::S3`, classified: network failures, timeouts, 5xx, 408, 429 and
/// authorization failures (expired or rotated credentials get fixed) are transient; other 4xx
/// answers and requests that could not be built are not.
fn s3_error<E>(op: &'static str, key: &str, e: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (reason, transient) = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let reason = format!(
                "HTTP {status} {}: {}",
                s.err().code().unwrap_or("?"),
                s.err().message().unwrap_or("")
            );
            let refused = (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 429);
            (reason, !refused)
        }
        SdkError::ConstructionFailure(_) => (error_chain(&e), false),
        _ => (error_chain(&e), true),
    };
    Error::S3 {
        op,
        key: key.to_owned(),
        reason,
        transient,
    }
}

/// A builder refused its input (a bug here, never an outage).
fn invalid_request(op: &'static str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::S3 {
        op,
        key: key.to_owned(),
        reason: e.to_string(),
        transient: false,
    }
}

/// An error and its sources on one line (the SDK's top-level messages say little:
/// "dispatch failure").
fn error_chain(e: &dyn std::error::Error) -> String {
    /// Sources followed; a chain is a handful deep.
    const SOURCES_MAX: usize = 8;
    let mut out = e.to_string();
    let mut next = e.source();
    for _ in 0..SOURCES_MAX {
        let Some(s) = next else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// The expiration in days of the enabled lifecycle rule that covers every key under `prefix`
/// (a rule whose prefix filter is a prefix of it, without tag or size conditions), if any.
fn lifecycle_expiry_days(rules: &[LifecycleRule], prefix: &str) -> Option<i32> {
    rules
        .iter()
        .filter(|r| r.status().as_str() == "Enabled")
        .filter(|r| {
            #[allow(deprecated)] // the rule-level prefix is deprecated, and still in use
            let legacy = r.prefix();
            let covers = |p: Option<&str>| p.is_none_or(|p| prefix.starts_with(p));
            match r.filter() {
                None => covers(legacy),
                Some(f) => {
                    f.tag().is_none()
                        && f.and().is_none()
                        && f.object_size_greater_than().is_none()
                        && f.object_size_less_than().is_none()
                        && covers(f.prefix())
                }
            }
        })
        .filter_map(|r| r.expiration().and_then(|e| e.days()))
        .min()
}

#[cfg(test)]
mod tests;
