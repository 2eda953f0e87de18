//! The S3 store against a local HTTP server that records every request: what a PUT carries
//! (path-style URL, prefix, SSE-KMS headers, the contract's JSON) and how answers are read.
//! Paging is checked here too (continuation tokens, the page bound); listing and purging against
//! a real S3-compatible server are end-to-end tests (`tests/tests/dlq_s3.rs`, s3s-fs).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::types::{
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, Tag,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::dlq::object::tests::sample;

const BUCKET: &str = "dlq-bucket";
const KMS_KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/0b7c5a4e-test";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// The query string (`""` without one).
    query: String,
    headers: BTreeMap<String, String>,
    body: Bytes,
}

type Answer = Arc<dyn Fn(&Seen) -> (u16, &'static str) + Send + Sync>;

/// A recording HTTP server on 127.0.0.1 answering with `answer`.
struct FakeS3 {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeS3 {
    async fn start(answer: Answer) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, answer) = (log.clone(), answer.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let seen = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                query: parts.uri.query().unwrap_or_default().to_owned(),
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
                                body: body.unwrap_or_default(),
                            };
                            let (status, text) = answer(&seen);
                            log.lock().expect("lock").push(seen);
                            let resp = Response::builder()
                                .status(status)
                                .header("content-type", "application/xml")
                                .header("etag", "\"0123456789abcdef\"")
                                .body(Full::new(Bytes::from_static(text.as_bytes())))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeS3 { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn options(addr: SocketAddr, sse: Option<&str>) -> S3Options {
    S3Options {
        bucket: BUCKET.to_owned(),
        prefix: "hookrelay/".to_owned(),
        region: Some("eu-west-1".to_owned()),
        endpoint_url: Some(format!("http://{addr}")),
        force_path_style: true,
        sse_kms_key_id: sse.map(str::to_owned),
        test_credentials: Some(("AKIDTEST".to_owned(), "secret-test".to_owned())),
    }
}

fn error_xml(code: &'static str) -> &'static str {
    match code {
        "NoSuchKey" => {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
        }
        "SlowDown" => {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>reduce your request rate</Message></Error>"
        }
        _ => {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code><Message>bad</Message></Error>"
        }
    }
}

#[tokio::test]
async fn put_sends_sse_kms_headers_and_the_contract_json_path_style() {
    let server = FakeS3::start(Arc::new(|_| (200, ""))).await;
    let rt = S3Runtime::start().expect("runtime");
    let obj = sample();
    let key = obj.key().expect("key");

    let with_sse = S3Dlq::connect(options(server.addr, Some(KMS_KEY)), rt.handle())
        .await
        .expect("connect");
    with_sse
        .put(&key, object::encode(&key, &obj).expect("encode"))
        .await
        .expect("put");
    let plain = S3Dlq::connect(options(server.addr, None), rt.handle())
        .await
        .expect("connect");
    plain
        .put(&key, object::encode(&key, &obj).expect("encode"))
        .await
        .expect("put");

    let seen = server.seen();
    assert_eq!(seen.len(), 2, "one request per put: {seen:#?}");
    for s in &seen {
        assert_eq!(s.method, "PUT");
        // Path-style: /bucket/prefix + key.
        assert_eq!(s.path, format!("/{BUCKET}/hookrelay/{key}"));
        assert_eq!(
            s.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(
            s.headers
                .get("authorization")
                .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")),
            "signed: {:?}",
            s.headers.get("authorization")
        );
        let stored: DlqObject = serde_json::from_slice(&s.body).expect("the body is the object");
        assert_eq!(stored, obj);
    }
    let sse = &seen[0].headers;
    assert_eq!(
        sse.get("x-amz-server-side-encryption").map(String::as_str),
        Some("aws:kms")
    );
    assert_eq!(
        sse.get("x-amz-server-side-encryption-aws-kms-key-id")
            .map(String::as_str),
        Some(KMS_KEY)
    );
    let plain = &seen[1].headers;
    assert!(
        !plain.contains_key("x-amz-server-side-encryption")
            && !plain.contains_key("x-amz-server-side-encryption-aws-kms-key-id"),
        "no SSE headers without dlq.sse_kms_key_id: {plain:?}"
    );
}

#[tokio::test]
async fn answers_are_classified_and_a_put_is_tried_once() {
    let server = FakeS3::start(Arc::new(|s: &Seen| {
        if s.method == "GET" {
            (404, error_xml("NoSuchKey"))
        } else if s.path.contains("dl_DOWN") {
            (503, error_xml("SlowDown"))
        } else {
            (400, error_xml("InvalidArgument"))
        }
    }))
    .await;
    let rt = S3Runtime::start().expect("runtime");
    let s3 = S3Dlq::connect(options(server.addr, None), rt.handle())
        .await
        .expect("connect");
    let obj = sample();
    let key = obj.key().expect("key");
    assert_eq!(s3.get(&key).await.expect("a 404 is no object"), None);

    let down = DlqObject {
        delivery_id: "dl_DOWN".to_owned(),
        ..sample()
    };
    let down_key = down.key().expect("key");
    let err = s3
        .put(&down_key, object::encode(&down_key, &down).expect("encode"))
        .await
        .expect_err("503");
    assert!(
        matches!(&err, Error::S3 { op: "PutObject", transient: true, reason, .. } if reason.contains("503")),
        "{err:?}"
    );
    let puts = server
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("dl_DOWN"))
        .count();
    assert_eq!(puts, 1, "the shipper retries, not the SDK");

    let err = s3
        .put(&key, object::encode(&key, &obj).expect("encode"))
        .await
        .expect_err("400");
    assert!(
        matches!(
            &err,
            Error::S3 {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());

    // A bad key never reaches the server.
    let before = server.seen().len();
    assert!(matches!(
        s3.put("../x.json", Vec::new()).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        s3.get("tn_A/../x.json").await,
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(server.seen().len(), before);
}

#[tokio::test]
async fn an_unreachable_store_is_a_transient_error() {
    // A port with nothing listening: bind, note the port, close.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let rt = S3Runtime::start().expect("runtime");
    let s3 = S3Dlq::connect(options(addr, None), rt.handle())
        .await
        .expect("connect needs no network");
    let obj = sample();
    let key = obj.key().expect("key");
    let err = s3
        .put(&key, object::encode(&key, &obj).expect("encode"))
        .await
        .expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_stopped_runtime_interrupts_calls() {
    let server = FakeS3::start(Arc::new(|_| (200, ""))).await;
    let rt = S3Runtime::start().expect("runtime");
    let s3 = S3Dlq::connect(options(server.addr, None), rt.handle())
        .await
        .expect("connect");
    drop(rt);
    let obj = sample();
    let key = obj.key().expect("key");
    let err = s3
        .put(&key, object::encode(&key, &obj).expect("encode"))
        .await
        .expect_err("the runtime is gone");
    assert!(
        matches!(err, Error::Interrupted(_)) && err.is_transient(),
        "{err:?}"
    );
}

/// A `ListObjectsV2` answer with these common prefixes (under `hookrelay/tn_a/`) and object
/// keys (under `hookrelay/`), truncated with `next` as its continuation token if given.
fn list_page(prefixes: &[&str], keys: &[String], next: Option<&str>) -> &'static str {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>dlq-bucket</Name>",
    );
    xml.push_str(&format!(
        "<IsTruncated>{}</IsTruncated><KeyCount>{}</KeyCount>",
        next.is_some(),
        prefixes.len() + keys.len()
    ));
    if let Some(token) = next {
        xml.push_str(&format!(
            "<NextContinuationToken>{token}</NextContinuationToken>"
        ));
    }
    for key in keys {
        xml.push_str(&format!(
            "<Contents><Key>hookrelay/{key}</Key><Size>1</Size></Contents>"
        ));
    }
    for p in prefixes {
        xml.push_str(&format!(
            "<CommonPrefixes><Prefix>hookrelay/tn_a/{p}/</Prefix></CommonPrefixes>"
        ));
    }
    xml.push_str("</ListBucketResult>");
    Box::leak(xml.into_boxed_str())
}

/// The continuation token a listing request carries, if any.
fn token_of(seen: &Seen) -> Option<String> {
    seen.query
        .split('&')
        .find_map(|kv| kv.strip_prefix("continuation-token="))
        .map(str::to_owned)
}

#[tokio::test]
async fn listings_follow_continuation_tokens_across_pages() {
    let first = list_page(&["ep_b", "ep_a"], &[], Some("page-2"));
    let second = list_page(&["ep_c"], &[], None);
    let server = FakeS3::start(Arc::new(move |seen| match token_of(seen).as_deref() {
        None => (200, first),
        Some("page-2") => (200, second),
        Some(_) => (400, error_xml("InvalidArgument")),
    }))
    .await;
    let rt = S3Runtime::start().expect("runtime");
    let s3 = S3Dlq::connect(options(server.addr, None), rt.handle())
        .await
        .expect("connect");
    let names = s3.child_names("tn_a/").await.expect("listed");
    assert_eq!(names, ["ep_a", "ep_b", "ep_c"], "both pages, sorted");
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "one request a page: {seen:?}");
    for s in &seen {
        assert!(s.query.contains("list-type=2"), "{}", s.query);
        assert!(
            s.query.contains("prefix=hookrelay%2Ftn_a%2F"),
            "{}",
            s.query
        );
        assert!(s.query.contains("delimiter=%2F"), "{}", s.query);
        assert!(s.query.contains("max-keys=1000"), "{}", s.query);
    }
    assert_eq!(token_of(&seen[1]).as_deref(), Some("page-2"));
}

#[tokio::test]
async fn a_listing_stops_at_its_limit_and_an_endless_one_is_too_many_keys() {
    // Two valid keys a page; a listing wanting 3 stops on the second page.
    let obj = sample();
    let key = obj.key().expect("key");
    let day = key
        .rsplit_once('/')
        .map(|(d, _)| d.to_owned())
        .expect("a day");
    let keys: Vec<String> = (0..2)
        .map(|i| format!("{day}/dl_{:026}.json", i))
        .filter(|k| object::parse_key(k).is_ok())
        .collect();
    assert_eq!(
        keys.len(),
        2,
        "the test's keys are the contract's: {keys:?}"
    );
    // Tokens alternate, so the SDK's guard against a repeated token never ends the listing.
    let (a, b) = (
        list_page(&[], &keys, Some("t-a")),
        list_page(&[], &keys, Some("t-b")),
    );
    let server = FakeS3::start(Arc::new(move |seen| match token_of(seen).as_deref() {
        Some("t-a") => (200, b),
        _ => (200, a),
    }))
    .await;
    let rt = S3Runtime::start().expect("runtime");
    let s3 = S3Dlq::connect(options(server.addr, None), rt.handle())
        .await
        .expect("connect");
    let day = format!("{day}/");
    let got = s3.keys_under(&day, None, 3).await.expect("listed");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(server.seen().len(), 2, "stopped once it had enough");

    let err = s3
        .keys_under(&day, None, usize::MAX)
        .await
        .expect_err("never ends");
    assert!(
        matches!(err, Error::TooManyKeys { limit } if limit == LIST_RANGE_KEYS_MAX),
        "{err:?}"
    );
    assert_eq!(
        server.seen().len(),
        2 + LIST_PAGES_MAX + 1,
        "the bound in pages, then one more to see it is not the end"
    );
}

fn rule(status: &str, prefix: Option<&str>, days: i32) -> LifecycleRule {
    let mut filter = LifecycleRuleFilter::builder();
    if let Some(p) = prefix {
        filter = filter.prefix(p);
    }
    LifecycleRule::builder()
        .status(ExpirationStatus::from(status))
        .filter(filter.build())
        .expiration(LifecycleExpiration::builder().days(days).build())
        .build()
        .expect("rule")
}

#[test]
fn lifecycle_rules_that_cover_the_prefix() {
    assert_eq!(lifecycle_expiry_days(&[], "hookrelay/"), None);
    let rules = [
        rule("Enabled", Some("other/"), 7),
        rule("Disabled", Some("hookrelay/"), 1),
        rule("Enabled", Some("hook"), 90),
    ];
    assert_eq!(lifecycle_expiry_days(&rules, "hookrelay/"), Some(90));
    assert_eq!(lifecycle_expiry_days(&rules, "elsewhere/"), None);
    // A bucket-wide rule covers any prefix; the shortest expiry wins.
    let rules = [rule("Enabled", None, 30), rule("Enabled", Some(""), 60)];
    assert_eq!(lifecycle_expiry_days(&rules, ""), Some(30));
    // A rule that also filters on a tag does not cover every object.
    let tagged = LifecycleRule::builder()
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .tag(Tag::builder().key("k").value("v").build().expect("tag"))
                .build(),
        )
        .expiration(LifecycleExpiration::builder().days(5).build())
        .build()
        .expect("rule");
    assert_eq!(lifecycle_expiry_days(&[tagged], "hookrelay/"), None);
}
