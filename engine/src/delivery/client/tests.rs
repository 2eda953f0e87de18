//! The delivery client against real local servers on 127.0.0.1, on a current-thread runtime
//! like a shard's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A hyper HTTP/1 server on 127.0.0.1 that counts accepted connections and requests.
struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl TestServer {
    fn url(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.addr)
            .parse()
            .expect("test URL")
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(handler: Handler) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (h, r) = (handler.clone(), r.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = h(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestServer {
        addr,
        connections,
        requests,
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: &'static str) -> Handler {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Arc::new(move |_req| {
        let mut resp = Response::builder().status(status);
        for (k, v) in &headers {
            resp = resp.header(k, v);
        }
        let resp = resp
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("response");
        Box::pin(async move { resp })
    })
}

fn client(allow_private: bool) -> DeliveryClient {
    DeliveryClient::new(ClientOptions {
        allow_private_destinations: allow_private,
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    })
}

fn attempt(url: Uri) -> AttemptRequest {
    AttemptRequest {
        url,
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        body: Bytes::from_static(b"{\"hello\":\"world\"}"),
        timeout: Duration::from_secs(5),
    }
}

/// A closed port: bind, note the port, drop the listener.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn ok_200_is_success_and_forwards_body_and_headers() {
    let seen: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>> = Arc::default();
    let seen2 = seen.clone();
    let server = serve(Arc::new(move |req: Request<Incoming>| {
        let seen = seen2.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            seen.lock().expect("lock").push((parts.headers, body));
            Response::new(Full::new(Bytes::from_static(b"ok")))
        })
    }))
    .await;
    let mut req = attempt(server.url("/hooks?x=1"));
    req.headers
        .push(("X-HookRelay-Attempt".to_owned(), b"1".to_vec()));
    // Stale framing and hop-by-hop headers must not reach the wire.
    req.headers
        .push(("Content-Length".to_owned(), b"999".to_vec()));
    req.headers
        .push(("Connection".to_owned(), b"close".to_vec()));
    req.headers
        .push(("Host".to_owned(), b"evil.example".to_vec()));
    let res = client(true).send(req).await;
    assert_eq!(res.status, Some(200), "{res:?}");
    assert_eq!(res.error, None);
    assert_eq!(res.outcome(), Outcome::Success);
    assert_eq!(res.body_snippet.as_deref(), Some("ok"));
    let seen = seen.lock().expect("lock");
    let (headers, body) = &seen[0];
    assert_eq!(&body[..], b"{\"hello\":\"world\"}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-hookrelay-attempt"], "1");
    assert_eq!(headers["content-length"], "17");
    assert_eq!(headers["host"], server.addr.to_string().as_str());
    assert!(headers.get("connection").is_none());
}

#[tokio::test]
async fn status_503_with_retry_after_is_retry() {
    let server = serve(respond(503, &[("retry-after", "7")], "busy")).await;
    let res = client(true).send(attempt(server.url("/"))).await;
    assert_eq!(res.status, Some(503));
    assert_eq!(res.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        res.outcome(),
        Outcome::Retry {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(res.error_class(), "http_503");
    assert_eq!(res.body_snippet.as_deref(), Some("busy"));
}

#[tokio::test]
async fn retry_after_is_ignored_on_500() {
    let server = serve(respond(500, &[("retry-after", "7")], "")).await;
    let res = client(true).send(attempt(server.url("/"))).await;
    assert_eq!(res.status, Some(500));
    assert_eq!(res.retry_after, None);
    assert_eq!(res.body_snippet, None);
    assert_eq!(res.outcome(), Outcome::Retry { retry_after: None });
}

#[tokio::test]
async fn hanging_receiver_times_out_within_the_timeout() {
    let server = serve(Arc::new(|_req| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(Full::new(Bytes::new()))
        })
    }))
    .await;
    let mut req = attempt(server.url("/"));
    req.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let res = client(true).send(req).await;
    let took = started.elapsed();
    assert_eq!(res.error, Some(AttemptError::Timeout), "{res:?}");
    assert_eq!(res.status, None);
    assert_eq!(res.error_class(), "timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(res.latency >= Duration::from_millis(300));
}

/// Bounded memory: a timed-out attempt must not leave its connection (and the task driving it)
/// open against a receiver that never answers.
#[tokio::test]
async fn timed_out_attempt_closes_its_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        // Read the request, never answer, report when the client hangs up.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed_tx.send(());
    });
    let mut req = attempt(format!("http://{addr}/").parse().expect("url"));
    req.timeout = Duration::from_millis(200);
    let c = client(true);
    let res = c.send(req).await;
    assert_eq!(res.error, Some(AttemptError::Timeout));
    tokio::time::timeout(Duration::from_secs(3), closed_rx)
        .await
        .expect("the client closes the connection of a timed-out attempt")
        .expect("server task");
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    let addr = closed_port().await;
    let res = client(true)
        .send(attempt(format!("http://{addr}/").parse().expect("url")))
        .await;
    assert!(
        matches!(res.error, Some(AttemptError::Connect(_))),
        "{res:?}"
    );
    assert_eq!(res.error_class(), "connect_error");
    assert_eq!(res.outcome(), Outcome::Retry { retry_after: None });
}

#[tokio::test]
async fn receiver_closing_without_answer_is_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        drop(s);
    });
    let res = client(true)
        .send(attempt(format!("http://{addr}/").parse().expect("url")))
        .await;
    assert!(
        matches!(res.error, Some(AttemptError::Connect(_))),
        "{res:?}"
    );
}

#[tokio::test]
async fn status_decides_when_the_body_then_stalls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let mut req = attempt(format!("http://{addr}/").parse().expect("url"));
    req.timeout = Duration::from_millis(300);
    let res = client(true).send(req).await;
    assert_eq!(res.status, Some(200));
    assert!(matches!(res.error, Some(AttemptError::Body(_))), "{res:?}");
    assert_eq!(res.body_snippet.as_deref(), Some("partial"));
    assert_eq!(res.outcome(), Outcome::Success);
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let target = serve(respond(200, &[], "target")).await;
    let location = format!("http://{}/landed", target.addr);
    let redirector = serve(Arc::new(move |_req| {
        let resp = Response::builder()
            .status(StatusCode::FOUND)
            .header("location", location.as_str())
            .body(Full::new(Bytes::new()))
            .expect("response");
        Box::pin(async move { resp })
    }))
    .await;
    let res = client(true).send(attempt(redirector.url("/"))).await;
    assert_eq!(res.status, Some(302));
    assert_eq!(res.outcome(), Outcome::Failed);
    assert_eq!(res.error_class(), "http_302");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(redirector.requests(), 1);
    assert_eq!(target.requests(), 0);
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn keep_alive_reuses_the_connection() {
    let server = serve(respond(200, &[], "ok")).await;
    let c = client(true);
    for _ in 0..10 {
        let res = c.send(attempt(server.url("/"))).await;
        assert_eq!(res.status, Some(200), "{res:?}");
    }
    assert_eq!(server.requests(), 10);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn oversized_response_body_is_cut_and_its_connection_dropped() {
    static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];
    let server = serve(Arc::new(|_req| {
        Box::pin(async { Response::new(Full::new(Bytes::from_static(&BIG))) })
    }))
    .await;
    let c = DeliveryClient::new(ClientOptions {
        allow_private_destinations: true,
        response_body_bytes_max: 64 * 1024,
        ..ClientOptions::default()
    });
    for _ in 0..2 {
        let res = c.send(attempt(server.url("/"))).await;
        assert_eq!(res.status, Some(200));
        assert_eq!(res.error, None);
        assert_eq!(
            res.body_snippet.as_deref().map(str::len),
            Some(BODY_SNIPPET_BYTES_MAX)
        );
    }
    // The unread rest of the first body made its connection unusable: a second one was opened.
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn ssrf_blocks_loopback_literal_before_connecting() {
    let server = serve(respond(200, &[], "ok")).await;
    for url in [
        format!("http://{}/", server.addr),
        format!("http://[::ffff:127.0.0.1]:{}/", server.addr.port()),
    ] {
        let res = client(false).send(attempt(url.parse().expect("url"))).await;
        assert!(
            matches!(res.error, Some(AttemptError::SsrfBlocked(_))),
            "{url}: {res:?}"
        );
        assert_eq!(res.outcome(), Outcome::Failed);
        assert_eq!(res.error_class(), "ssrf_blocked");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.connections(), 0);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn ssrf_blocks_hostnames_resolving_to_loopback_at_connect_time() {
    let server = serve(respond(200, &[], "ok")).await;
    let port = server.addr.port();
    // `127.1` is no IP literal to the URL parser, but getaddrinfo reads it as 127.0.0.1.
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.1:{port}/"),
    ] {
        let res = client(false).send(attempt(url.parse().expect("url"))).await;
        assert!(
            matches!(res.error, Some(AttemptError::SsrfBlocked(_))),
            "{url}: {res:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn allow_private_delivers_to_loopback() {
    let server = serve(respond(204, &[], "")).await;
    let port = server.addr.port();
    let c = client(true);
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let res = c.send(attempt(url.parse().expect("url"))).await;
        assert_eq!(res.status, Some(204), "{url}: {res:?}");
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn unresolvable_host_is_dns_error() {
    let res = client(false)
        .send(attempt("http://receiver.invalid/".parse().expect("url")))
        .await;
    assert!(matches!(res.error, Some(AttemptError::Dns(_))), "{res:?}");
    assert_eq!(res.outcome(), Outcome::Retry { retry_after: None });
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_tls_error() {
    let server = serve(respond(200, &[], "ok")).await;
    let url = format!("https://{}/", server.addr);
    let res = client(true).send(attempt(url.parse().expect("url"))).await;
    assert!(matches!(res.error, Some(AttemptError::Tls(_))), "{res:?}");
    assert_eq!(res.error_class(), "tls_error");
}

#[tokio::test]
async fn credentials_in_the_url_become_basic_auth() {
    let auth: Arc<Mutex<Option<String>>> = Arc::default();
    let auth2 = auth.clone();
    let server = serve(Arc::new(move |req: Request<Incoming>| {
        let got = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *auth2.lock().expect("lock") = got;
        Box::pin(async { Response::new(Full::new(Bytes::new())) })
    }))
    .await;
    let url = format!("http://user:p%40ss@{}/", server.addr);
    let res = client(true).send(attempt(url.parse().expect("url"))).await;
    assert_eq!(res.status, Some(200), "{res:?}");
    // base64("user:p@ss")
    assert_eq!(
        auth.lock().expect("lock").as_deref(),
        Some("Basic dXNlcjpwQHNz")
    );
}

#[tokio::test]
async fn non_http_url_is_invalid_url() {
    let res = client(true)
        .send(attempt("ftp://127.0.0.1/x".parse().expect("url")))
        .await;
    assert!(
        matches!(res.error, Some(AttemptError::InvalidUrl(_))),
        "{res:?}"
    );
    assert_eq!(res.outcome(), Outcome::Failed);
}

#[tokio::test]
async fn works_on_a_current_thread_runtime_in_a_local_set() {
    // A shard runs tokio_uring::start: current-thread runtime + LocalSet.
    let server = serve(respond(200, &[], "ok")).await;
    let local = tokio::task::LocalSet::new();
    let c = client(true);
    let url = server.url("/");
    let res = local
        .run_until(async move {
            tokio::task::spawn_local(async move { c.send(attempt(url)).await }).await
        })
        .await
        .expect("local task");
    assert_eq!(res.status, Some(200));
}

#[test]
fn error_descriptions_are_bounded() {
    let e = std::io::Error::other("x".repeat(10_000));
    assert!(describe(&e).len() <= ERROR_MESSAGE_BYTES_MAX);
}

/// An HTTPS receiver behind a private CA: a certificate for `localhost` signed by a fresh CA,
/// served with tokio-rustls; answers 200 to every request. Returns the CA's PEM and the port.
async fn https_receiver() -> (String, u16) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"secure"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (ca.pem(), port)
}

#[tokio::test]
async fn https_receivers_are_verified_with_rustls() {
    let (ca_pem, port) = https_receiver().await;
    let url: Uri = format!("https://localhost:{port}/hook")
        .parse()
        .expect("url");
    let trusting = DeliveryClient::new(ClientOptions {
        allow_private_destinations: true,
        extra_roots_pem: Some(ca_pem.into_bytes()),
        ..ClientOptions::default()
    });
    let res = trusting.send(attempt(url.clone())).await;
    assert_eq!(res.status, Some(200), "{res:?}");
    assert_eq!(res.outcome(), Outcome::Success);
    // Without the private CA the certificate is refused: a TLS error, never a delivery.
    let res = client(true).send(attempt(url)).await;
    assert!(matches!(res.error, Some(AttemptError::Tls(_))), "{res:?}");
    assert_eq!(res.status, None);
}
