//! The delivery HTTP client: one POST per attempt to a receiver, with pooled keep-alive
//! connections per destination, HTTP and HTTPS (rustls, webpki roots), a whole-attempt timeout,
//! a bounded read of the receiver's answer, and the SSRF guard of `ssrf.rs` on every connection.
//!
//! Architecture Invariant: redirects are never followed — hyper does not follow them and nothing
//! here does; a 3xx is just a status for `classify`.
//! Architecture Invariant: a [`DeliveryClient`] belongs to one shard thread's runtime. Its pooled
//! connections are driven by tasks spawned on the runtime that first used them, so sharing one
//! client between shard runtimes would tie a shard to another's I/O driver. Build one per shard.
//! Not here: which headers to send (the caller builds them, signature included), retry policy.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::classify::{self, Outcome};
use super::ssrf::{GuardError, GuardedConnector, GuardedResolver};

pub use super::ssrf::{check_destination_resolved, check_destination_url, is_forbidden_ip};

/// At most this many bytes of the receiver's body are kept for `last_error`.
pub const BODY_SNIPPET_BYTES_MAX: usize = 256;

/// At most this many request headers are sent; more is a caller bug, answered with an error.
pub const REQUEST_HEADERS_MAX: usize = 512;

/// Longest error description kept (bytes), so `last_error` stays small.
const ERROR_MESSAGE_BYTES_MAX: usize = 512;

/// Request headers the client always drops from the caller's list: hop-by-hop ones (RFC 9110
/// §7.6.1) and framing headers (hyper frames the body itself; a stale `Content-Length` or
/// `Transfer-Encoding` from the sender would desynchronise the connection), `Host` (set from the
/// destination URL) and `Expect`. The one list of them: [`is_dropped_header`] exposes it.
const DROPPED_REQUEST_HEADERS: [HeaderName; 12] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::HOST,
    header::EXPECT,
];

/// True for a header name (lower case) this client never sends from its caller's list.
pub fn is_dropped_header(lowercase_name: &str) -> bool {
    DROPPED_REQUEST_HEADERS
        .iter()
        .any(|h| h.as_str() == lowercase_name)
}

/// How a shard's delivery client behaves. Every field is a bound or a policy from config.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `delivery.allow_private_destinations`: lifts the SSRF address rules (tests use it).
    pub allow_private_destinations: bool,
    /// Idle keep-alive connections kept per destination (scheme, host, port).
    pub pool_idle_per_host: usize,
    /// An idle pooled connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// Bound on TCP connect (per address tried); TLS and the rest count against the attempt's
    /// timeout.
    pub connect_timeout: Duration,
    /// At most this much of the receiver's body is read (and then discarded); a longer body is
    /// cut and its connection not reused.
    pub response_body_bytes_max: usize,
    /// Extra trusted CA certificates (PEM), besides the webpki roots: receivers behind a
    /// private CA (`delivery.ca_file`).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            allow_private_destinations: false,
            pool_idle_per_host: 32,
            pool_idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
            response_body_bytes_max: 64 * 1024,
            extra_roots_pem: None,
        }
    }
}

/// The webpki roots plus any extra PEM certificates. Certificates that do not parse are logged
/// and skipped (the config layer checks the file at start-up).
fn root_store(extra_pem: Option<&[u8]>) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut store = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            match cert
                .map_err(|e| e.to_string())
                .and_then(|c| store.add(c).map_err(|e| e.to_string()))
            {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an extra CA certificate"),
            }
        }
    }
    store
}

/// One attempt to send: the destination, the final headers (built by the caller: original
/// headers minus hop-by-hop ones, plus the signature and `X-HookRelay-*`), the body byte for byte,
/// and the whole-attempt timeout (the endpoint's `timeout_ms`).
#[derive(Debug, Clone)]
pub struct AttemptRequest {
    /// `http` or `https` URL. Credentials in it (`https://user:pass@host/`) are sent as
    /// `Authorization: Basic` unless the headers already carry an `Authorization`.
    pub url: Uri,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub timeout: Duration,
}

/// What happened in one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// The receiver's status code, if a response head arrived in time.
    pub status: Option<u16>,
    /// The receiver's `Retry-After`, parsed; only set on 429 and 503.
    pub retry_after: Option<Duration>,
    /// What went wrong: no response at all, or (with a status) reading the body failed.
    pub error: Option<AttemptError>,
    /// From the start of the attempt to the end of reading the (bounded) response body, or to the
    /// error or timeout.
    pub latency: Duration,
    /// The first ≤ [`BODY_SNIPPET_BYTES_MAX`] bytes of the receiver's body, lossy UTF-8; `None`
    /// when there was no body.
    pub body_snippet: Option<String>,
}

impl AttemptResult {
    /// The outcome per CONTRACT.md (see `classify`).
    pub fn outcome(&self) -> Outcome {
        classify::classify(self.status, self.error.as_ref(), self.retry_after)
    }

    /// `http_503`, `timeout`, `connect_error`, ... (see `classify::error_class`).
    pub fn error_class(&self) -> String {
        classify::error_class(self.status, self.error.as_ref())
    }

    fn failed(error: AttemptError, started: Instant) -> AttemptResult {
        AttemptResult {
            status: None,
            retry_after: None,
            error: Some(error),
            latency: started.elapsed(),
            body_snippet: None,
        }
    }
}

/// Why an attempt got no (complete) answer. The strings are human descriptions for `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The whole-attempt timeout passed before a response head arrived.
    #[error("timeout")]
    Timeout,
    /// TCP connect failed or timed out, or the connection broke before a response head.
    #[error("connect error: {0}")]
    Connect(String),
    /// The destination host did not resolve.
    #[error("dns error: {0}")]
    Dns(String),
    /// The TLS handshake failed (certificate, protocol).
    #[error("tls error: {0}")]
    Tls(String),
    /// The destination is (or resolves to) a forbidden address; nothing was sent.
    #[error("destination not allowed: {0}")]
    SsrfBlocked(String),
    /// Reading the response body failed or timed out after the status arrived.
    #[error("body error: {0}")]
    Body(String),
    /// The URL is not an absolute http(s) URL with a host, or a header is malformed.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// Anything else (an unparseable response, too many headers, ...).
    #[error("{0}")]
    Other(String),
}

impl AttemptError {
    /// The error class for metrics: `timeout`, `connect_error`, `dns_error`, `tls_error`,
    /// `ssrf_blocked`, `body_error`, `invalid_url`, `error`.
    pub fn class(&self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Connect(_) => "connect_error",
            AttemptError::Dns(_) => "dns_error",
            AttemptError::Tls(_) => "tls_error",
            AttemptError::SsrfBlocked(_) => "ssrf_blocked",
            AttemptError::Body(_) => "body_error",
            AttemptError::InvalidUrl(_) => "invalid_url",
            AttemptError::Other(_) => "error",
        }
    }
}

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// A shard's delivery client. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct DeliveryClient {
    inner: HttpClient,
    opts: Arc<ClientOptions>,
}

impl std::fmt::Debug for DeliveryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryClient")
            .field("opts", &self.opts)
            .finish()
    }
}

impl DeliveryClient {
    /// Builds the client. Needs no runtime; the first `send` must run inside the shard's tokio
    /// runtime (current-thread is fine: connection tasks go through `tokio::spawn`).
    pub fn new(opts: ClientOptions) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow_private: opts.allow_private_destinations,
        });
        // Let https URLs through to the TLS layer above.
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        // Detect dead pooled connections to receivers that vanished without a FIN.
        http.set_keepalive(Some(Duration::from_secs(30)));
        let guarded = GuardedConnector {
            inner: http,
            allow_private: opts.allow_private_destinations,
        };
        // An explicit provider: the process-wide default is ambiguous as soon as another crate
        // (aws-sdk-s3) enables rustls' aws-lc-rs feature too.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(root_store(opts.extra_roots_pem.as_deref()))
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(guarded);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.pool_idle_per_host)
            .build(https);
        DeliveryClient {
            inner,
            opts: Arc::new(opts),
        }
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Sends one attempt and reports what happened; never panics on network input. The whole
    /// attempt (connect, TLS, request, response head and the bounded body read) is bounded by
    /// `req.timeout`. Redirects are returned as their 3xx status, never followed.
    pub async fn send(&self, req: AttemptRequest) -> AttemptResult {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + req.timeout;
        let request = match build_request(req) {
            Ok(r) => r,
            Err(e) => return AttemptResult::failed(e, started),
        };
        let response = match tokio::time::timeout_at(deadline, self.inner.request(request)).await {
            Err(_elapsed) => return AttemptResult::failed(AttemptError::Timeout, started),
            Ok(Err(e)) => return AttemptResult::failed(map_client_error(&e), started),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let retry_after = if status == 429 || status == 503 {
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| classify::parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        let (snippet, body_error) = read_body_bounded(
            response.into_body(),
            self.opts.response_body_bytes_max,
            deadline,
        )
        .await;
        AttemptResult {
            status: Some(status),
            retry_after,
            error: body_error,
            latency: started.elapsed(),
            body_snippet: (!snippet.is_empty())
                .then(|| String::from_utf8_lossy(&snippet).into_owned()),
        }
    }
}

/// Reads at most `bytes_max` of the body before `deadline`, keeping the first
/// [`BODY_SNIPPET_BYTES_MAX`] bytes. Dropping a body that was not read to its end closes the
/// connection instead of returning it to the pool, which is what we want for oversized answers.
async fn read_body_bounded(
    mut body: hyper::body::Incoming,
    bytes_max: usize,
    deadline: tokio::time::Instant,
) -> (Vec<u8>, Option<AttemptError>) {
    let mut snippet = Vec::new();
    let mut read = 0usize;
    while read < bytes_max {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => {
                let e = AttemptError::Body("timed out reading the response body".to_owned());
                return (snippet, Some(e));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return (snippet, Some(AttemptError::Body(describe(&e)))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read = read.saturating_add(data.len());
                    let room = BODY_SNIPPET_BYTES_MAX.saturating_sub(snippet.len());
                    snippet.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    (snippet, None)
}

fn build_request(req: AttemptRequest) -> Result<Request<Full<Bytes>>, AttemptError> {
    let (uri, basic_auth) = split_credentials(req.url)?;
    if req.headers.len() > REQUEST_HEADERS_MAX {
        return Err(AttemptError::Other(format!(
            "{} request headers, more than {REQUEST_HEADERS_MAX}",
            req.headers.len()
        )));
    }
    let mut builder = Request::builder().method(Method::POST).uri(uri);
    let headers = builder
        .headers_mut()
        .ok_or_else(|| AttemptError::InvalidUrl("request could not be built".to_owned()))?;
    headers.reserve(req.headers.len() + 1);
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| AttemptError::Other(format!("invalid header name {name:?}")))?;
        if DROPPED_REQUEST_HEADERS.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| AttemptError::Other(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    if let Some(auth) = basic_auth
        && !headers.contains_key(header::AUTHORIZATION)
    {
        headers.insert(header::AUTHORIZATION, auth);
    }
    builder
        .body(Full::new(req.body))
        .map_err(|e| AttemptError::InvalidUrl(e.to_string()))
}

/// Checks scheme and host, and moves `user:pass@` out of the URL into a Basic credential (hyper
/// would otherwise send neither, and the pool key would include the password).
fn split_credentials(url: Uri) -> Result<(Uri, Option<HeaderValue>), AttemptError> {
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(AttemptError::InvalidUrl(format!(
                "{url}: not an http(s) URL"
            )));
        }
    }
    let Some(authority) = url.authority() else {
        return Err(AttemptError::InvalidUrl(format!("{url}: no host")));
    };
    let Some((userinfo, hostport)) = authority.as_str().rsplit_once('@') else {
        return Ok((url, None));
    };
    let (userinfo, hostport) = (userinfo.to_owned(), hostport.to_owned());
    let (user, pass) = userinfo.split_once(':').unwrap_or((&userinfo, ""));
    let credential = format!("{}:{}", percent_decode(user), percent_decode(pass));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credential);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| AttemptError::InvalidUrl("bad credentials in URL".to_owned()))?;
    value.set_sensitive(true);
    let mut parts = url.into_parts();
    parts.authority = Some(
        hostport
            .parse()
            .map_err(|_| AttemptError::InvalidUrl("bad host after credentials".to_owned()))?,
    );
    let uri = Uri::from_parts(parts).map_err(|e| AttemptError::InvalidUrl(e.to_string()))?;
    Ok((uri, Some(value)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The errors of an error's chain, including the payload of each `io::Error` (whose `source()`
/// skips its own payload and goes straight to the payload's source).
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> + 'a {
    let mut next = Some(e);
    let mut steps = 0usize;
    std::iter::from_fn(move || {
        // Bounded: error chains are short; a cycle would be a bug elsewhere.
        steps += 1;
        if steps > 32 {
            return None;
        }
        let cur = next?;
        next = match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(payload) => Some(payload as &(dyn StdError + 'static)),
            None => cur.source(),
        };
        Some(cur)
    })
}

/// "a: b: c" from an error chain, repeated messages collapsed, bounded in length.
fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for err in chain(e) {
        let msg = err.to_string();
        if msg.is_empty() || last.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
        last = msg;
    }
    if out.len() > ERROR_MESSAGE_BYTES_MAX {
        let mut cut = ERROR_MESSAGE_BYTES_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn map_client_error(e: &hyper_util::client::legacy::Error) -> AttemptError {
    let msg = describe(e);
    for err in chain(e) {
        if let Some(guard) = err.downcast_ref::<GuardError>() {
            return match guard {
                GuardError::Forbidden(m) => AttemptError::SsrfBlocked(m.clone()),
                GuardError::Dns(m) => AttemptError::Dns(m.clone()),
            };
        }
        if err.downcast_ref::<rustls::Error>().is_some() {
            return AttemptError::Tls(msg);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_parse_status() || h.is_user())
        {
            return AttemptError::Other(msg);
        }
    }
    // Connect failures, resets and "connection closed before message completed": the contract's
    // "connection error".
    AttemptError::Connect(msg)
}

#[cfg(test)]
mod tests;
