//! Replication security (issue #8 §4): the replication stream over mutual TLS with a shared
//! CA, and the refusals a stranger meets — a wrong shared secret, or a certificate from another
//! CA. Two real processes on loopback; waits are deadlines on outcomes.

use std::path::{Path, PathBuf};

use hookrelay_tests::api::{assert_accepted, endpoint_to, str_field};
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::replication::{
    Node, REPLICATION_DEADLINE, caught_up, free_addr, wait_get_ok, wait_status,
};
use hookrelay_tests::server::{Server, ServerOptions};
use serde_json::json;

/// PEM files of one node: its certificate (for `localhost`), key, and the CA that signed it.
struct Pki {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// A fresh CA in `dir` that signs one `localhost` certificate, named `name`.
fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    let p = Pki {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join(format!("{name}-ca.crt")),
    };
    std::fs::write(&p.cert, cert.pem()).expect("write cert");
    std::fs::write(&p.key, key.serialize_pem()).expect("write key");
    std::fs::write(&p.ca, ca.pem()).expect("write ca");
    p
}

fn with_tls(opts: ServerOptions, p: &Pki) -> ServerOptions {
    opts.env(
        "HOOKRELAY_REPLICATION_TLS_CERT_FILE",
        p.cert.to_str().unwrap(),
    )
    .env(
        "HOOKRELAY_REPLICATION_TLS_KEY_FILE",
        p.key.to_str().unwrap(),
    )
    .env("HOOKRELAY_REPLICATION_TLS_CA_FILE", p.ca.to_str().unwrap())
    .env("HOOKRELAY_REPLICATION_TLS_SERVER_NAME", "localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_shared_ca_carries_ack_peer() {
    let dir = tempfile::tempdir().unwrap();
    let shared = pki(dir.path(), "shared");
    let (la, lb) = (free_addr(), free_addr());
    let b = Server::start_healthy(with_tls(Node::replica(lb, la).options(), &shared)).await;
    let a = Server::start(with_tls(
        Node::primary(la, lb).ack("peer").options(),
        &shared,
    ))
    .await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let api = a.api();
    let (_, admin_key) = api.tenant("tls").await;
    let endpoint = api
        .create_endpoint(&admin_key, &endpoint_to(&receiver.url("/in"), json!({})))
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    // ack = peer: a 202 means the replica fsynced the record, over TLS.
    for i in 0..5 {
        let r = api
            .ingest_json(&endpoint_id, format!("{{\"n\":{i}}}").as_bytes())
            .await;
        assert_accepted(&r);
    }
    wait_status(
        &a.http(),
        "replica caught up over TLS",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;
    // The metadata stream runs over TLS too.
    wait_get_ok(
        &b.http(),
        &format!("/v1/endpoints/{endpoint_id}"),
        &admin_key,
        REPLICATION_DEADLINE,
    )
    .await;
}

/// A replica whose secret differs is never attached: the primary's status names the refusal,
/// and with `ack = "local"` the primary keeps taking ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused() {
    let (la, lb) = (free_addr(), free_addr());
    let _b = Server::start_healthy(Node::replica(lb, la).options().env(
        "HOOKRELAY_REPLICATION_SECRET",
        "a-different-secret-of-enough-length",
    ))
    .await;
    let a = Server::start(Node::primary(la, lb).options()).await;
    let v = wait_status(
        &a.http(),
        "the primary reports the refused secret",
        REPLICATION_DEADLINE,
        |v| {
            v["shards"].as_array().is_some_and(|s| {
                s.iter().all(|s| {
                    s["connected"] == false
                        && s["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("secret"))
                })
            })
        },
    )
    .await;
    assert_eq!(v["role"], "primary", "{v:#}");
}

/// A node whose certificate chains to another CA cannot attach, in either direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, stranger) = (pki(dir.path(), "ours"), pki(dir.path(), "stranger"));
    let (la, lb) = (free_addr(), free_addr());
    let _b = Server::start_healthy(with_tls(Node::replica(lb, la).options(), &stranger)).await;
    let a = Server::start(with_tls(Node::primary(la, lb).options(), &ours)).await;
    wait_status(
        &a.http(),
        "the primary reports the failed TLS handshake",
        REPLICATION_DEADLINE,
        |v| {
            v["shards"].as_array().is_some_and(|s| {
                s.iter().all(|s| {
                    s["connected"] == false
                        && s["last_error"].as_str().is_some_and(|e| e.contains("TLS"))
                })
            })
        },
    )
    .await;
}
