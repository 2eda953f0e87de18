//! A real S3-compatible server for the DLQ-on-S3 tests: `s3s-fs` (installed into
//! `target/tools` by `scripts/s3-server`), run on a free 127.0.0.1 port over a temporary
//! directory, stopped and started again on the same port and data; and [`RecordingProxy`], an
//! HTTP forwarder in front of it that records each request's headers (what HookRelay sent).
//!
//! s3s-fs keeps a bucket as the directory `<root>/<bucket>` and each object as the file
//! `<root>/<bucket>/<key>`: a bucket is created with `mkdir`, and [`S3Server::objects`] reads
//! what the store holds straight from the disk.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::server::free_port;

/// The credentials s3s-fs checks and HookRelay signs with.
pub const ACCESS_KEY: &str = "hookrelay-test";
pub const SECRET_KEY: &str = "hookrelay-test-secret";
/// Signed for; s3s-fs accepts any.
pub const REGION: &str = "us-east-1";
/// How long s3s-fs may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Objects [`S3Server::objects`] reads at most.
const OBJECTS_MAX: usize = 100_000;

/// Where the s3s-fs binary is: `$HOOKRELAY_S3S_FS`, else `<repo>/target/tools/bin/s3s-fs`.
pub fn s3s_fs_path() -> PathBuf {
    match std::env::var_os("HOOKRELAY_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/s3s-fs"),
    }
}

/// A running (or deliberately stopped) s3s-fs.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    /// Holds `data/` (s3s-fs's root) and `s3s-fs.log`.
    dir: TempDir,
    bin: PathBuf,
}

impl S3Server {
    /// Starts s3s-fs with a bucket named `bucket`. Panics — it never skips — when the binary
    /// is missing: `scripts/s3-server install` (which `scripts/test` runs) puts it in place.
    pub async fn start(bucket: &str) -> S3Server {
        let bin = s3s_fs_path();
        assert!(
            bin.is_file(),
            "the S3-compatible test server is missing at {}: run `scripts/s3-server install` \
             (scripts/test does), or set HOOKRELAY_S3S_FS to an s3s-fs binary",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("hookrelay-s3-")
            .tempdir()
            .expect("temp dir for s3s-fs");
        std::fs::create_dir_all(dir.path().join("data").join(bucket)).expect("creating the bucket");
        let mut server = S3Server {
            child: None,
            port: free_port(),
            dir,
            bin,
        };
        server.start_again().await;
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The environment that points HookRelay's DLQ at `url` (this server, or a proxy in front
    /// of it), bucket `bucket`, key prefix `prefix`.
    pub fn hookrelay_env(url: &str, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("HOOKRELAY_DLQ_BACKEND", "s3"),
            ("HOOKRELAY_DLQ_BUCKET", bucket),
            ("HOOKRELAY_DLQ_PREFIX", prefix),
            ("HOOKRELAY_DLQ_ENDPOINT_URL", url),
            ("HOOKRELAY_DLQ_FORCE_PATH_STYLE", "true"),
            ("HOOKRELAY_DLQ_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            // Never wait for the EC2 metadata service on a test machine.
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// SIGKILL, then reap: the store is down until [`S3Server::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts s3s-fs again on the same port and data and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("s3s-fs.log"))
            .expect("s3s-fs log file");
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("s3s-fs exited during start-up: {status}");
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not accept connections on {} within {START_TIMEOUT:?}",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The directory of `bucket`'s objects.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join("data").join(bucket)
    }

    /// Every object of `bucket`: key → bytes, in key order.
    pub fn objects(&self, bucket: &str) -> BTreeMap<String, Vec<u8>> {
        let dir = self.bucket_dir(bucket);
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if out.len() < OBJECTS_MAX
                    && let (Ok(rel), Ok(bytes)) = (path.strip_prefix(&dir), std::fs::read(&path))
                {
                    out.insert(rel.to_string_lossy().into_owned(), bytes);
                }
            }
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request that went through a [`RecordingProxy`].
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}

/// An HTTP/1.1 forwarder on 127.0.0.1 that records every request and passes it, headers
/// (`Host` included, so signatures still verify) and body unchanged, to `upstream`.
pub struct RecordingProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxiedRequest>>>,
}

impl RecordingProxy {
    pub async fn start(upstream: SocketAddr) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, client) = (log.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        forward(req, upstream, client.clone(), log.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RecordingProxy { addr, seen }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    log: Arc<Mutex<Vec<ProxiedRequest>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    log.lock().expect("lock").push(ProxiedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let bad_gateway = |why: String| {
        let mut r = Response::new(Full::new(Bytes::from(why)));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_gateway(format!("reading the request: {e}"))),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::CONNECTION && name != hyper::header::TRANSFER_ENCODING {
            out = out.header(name, value);
        }
    }
    let out = match out.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Ok(bad_gateway(format!("building the request: {e}"))),
    };
    let response = match client.request(out).await {
        Ok(r) => r,
        Err(e) => return Ok(bad_gateway(format!("upstream: {e}"))),
    };
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_gateway(format!("reading the upstream answer: {e}"))),
    };
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if name != hyper::header::CONNECTION && name != hyper::header::TRANSFER_ENCODING {
            answer.headers_mut().append(name, value.clone());
        }
    }
    Ok(answer)
}
