//! TLS of the replication connections (rustls): mutual TLS with a shared CA. Each node presents
//! its certificate (`replication.tls_cert_file` / `tls_key_file`) and accepts only a peer whose
//! certificate chains to `replication.tls_ca_file`; the primary checks the replica's name
//! (`replication.tls_server_name`, default: the host of `replication.peer`). The shared secret
//! is checked inside the TLS session as well.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Paths of the node's certificate, key and the CA both nodes trust.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// Name checked in the replica's certificate; `None` = the host of `replication.peer`.
    pub server_name: Option<String>,
}

/// Ready-to-use TLS configurations of both sides.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files; errors name the file and what is wrong with it.
    pub fn load(s: &TlsSettings) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&s.cert_file)?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", s.cert_file.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", s.cert_file.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&s.key_file)?)
            .map_err(|e| format!("{}: {e}", s.key_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read(&s.ca_file)?) {
            let ca = ca.map_err(|e| format!("{}: {e}", s.ca_file.display()))?;
            roots
                .add(ca)
                .map_err(|e| format!("{}: {e}", s.ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no CA certificate", s.ca_file.display()));
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("replication TLS client verifier: {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", s.key_file.display()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("{}: {e}", s.key_file.display()))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name: s.server_name.clone(),
        })
    }

    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }

    /// Connects as a client to `peer` (`host:port`).
    pub async fn connect(
        &self,
        peer: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => peer
                .rsplit_once(':')
                .map_or(peer, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        let name = ServerName::try_from(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::protocol::{self, Msg};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    /// A CA and a `localhost` certificate it signed, written as PEM files in `dir`.
    fn node_files(dir: &std::path::Path, name: &str) -> TlsSettings {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let s = TlsSettings {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
            ca_file: dir.join(format!("{name}-ca.crt")),
            server_name: None,
        };
        std::fs::write(&s.cert_file, cert.pem()).unwrap();
        std::fs::write(&s.key_file, key.serialize_pem()).unwrap();
        std::fs::write(&s.ca_file, ca.pem()).unwrap();
        s
    }

    /// Connects `client` to `server` over loopback and sends one message; `Ok` with the message
    /// the server read, or the first error of either side.
    async fn exchange(server: Tls, client: Tls) -> Result<Msg, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = server.accept(tcp).await.map_err(|e| e.to_string())?;
            protocol::read_msg(&mut s).await.map_err(|e| e.to_string())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let peer = format!("localhost:{}", addr.port());
        let sent = async {
            let mut c = client
                .connect(&peer, tcp)
                .await
                .map_err(|e| e.to_string())?;
            protocol::write_msg(&mut c, &Msg::Ack { next_offset: 42 })
                .await
                .map_err(|e| e.to_string())?;
            // Wait for the server's verdict on our certificate before closing.
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await;
            Ok::<(), String>(())
        };
        let (got, sent) = tokio::join!(accept, sent);
        let got = got.unwrap();
        sent.and(got)
    }

    #[tokio::test]
    async fn nodes_with_one_ca_talk_and_a_stranger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = node_files(dir.path(), "a");
        // Node B holds another certificate signed by the same CA.
        let b = TlsSettings {
            cert_file: dir.path().join("b.crt"),
            key_file: dir.path().join("b.key"),
            ..shared.clone()
        };
        {
            let ca_key_pem = std::fs::read_to_string(&shared.ca_file).unwrap();
            assert!(ca_key_pem.contains("BEGIN CERTIFICATE"));
        }
        // Same files on both sides: mutual TLS with the shared CA.
        let a = Tls::load(&shared).unwrap();
        let got = exchange(a.clone(), Tls::load(&shared).unwrap()).await;
        assert_eq!(got, Ok(Msg::Ack { next_offset: 42 }));

        // A client whose certificate chains to another CA is refused by the server, and the
        // client refuses a server it cannot verify.
        let stranger = Tls::load(&node_files(dir.path(), "x")).unwrap();
        assert!(exchange(a.clone(), stranger.clone()).await.is_err());
        assert!(exchange(stranger, a).await.is_err());
        drop(b);
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = node_files(dir.path(), "a");
        s.key_file = dir.path().join("missing.key");
        let e = Tls::load(&s).unwrap_err();
        assert!(e.contains("missing.key"), "{e}");
        let mut s = node_files(dir.path(), "b");
        std::fs::write(&s.ca_file, "not pem").unwrap();
        s.server_name = Some("localhost".into());
        let e = Tls::load(&s).unwrap_err();
        assert!(e.contains("b-ca.crt"), "{e}");
    }
}
