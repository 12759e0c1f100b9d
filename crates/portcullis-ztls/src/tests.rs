//! Real TLS over 127.0.0.1 sockets: here the socket is the point.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis_core::{PeerCertificate, TlsInfo};
use portcullis_test_util::pki::{CLIENT_SPIFFE_ID, LeafSpec, TestCa, TestCert, TestPki};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tower::{ServiceBuilder, service_fn};

use crate::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(pki: &TestPki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki.write_to(dir.path()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> ZtlsConfig {
        serde_json::from_value(json!({
            "certificates": [{"hosts": ["localhost"], "certFile": self.path("server.crt"), "keyFile": self.path("server.key"), "default": true}],
            "clientAuth": "required",
            "trustBundles": [self.path("ca.crt")],
            "crls": [self.path("crl.pem")],
        }))
        .unwrap()
    }
}

async fn handler(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = req.extensions().get::<PeerCertificate>();
    let tls = req.extensions().get::<TlsInfo>();
    let body = json!({
        "spiffe": peer.and_then(|p| p.spiffe_id()).map(|s| s.as_str().to_owned()),
        "subject": peer.map(|p| p.subject().to_owned()),
        "issuer": peer.map(|p| p.issuer().to_owned()),
        "uri_sans": peer.map(|p| p.uri_sans().to_vec()),
        "thumbprint": peer.map(|p| p.thumbprint().to_string()),
        "version": tls.map(|t| t.version().as_str()),
        "suite": tls.map(|t| t.cipher_suite()),
        "sni": tls.and_then(|t| t.sni()),
        "alpn": tls.and_then(|t| t.alpn()),
    });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

struct Server {
    addr: SocketAddr,
    tls: Arc<ReloadingTls>,
}

async fn start(config: ZtlsConfig, policy: ZeroTrustPolicy) -> Server {
    let tls = Arc::new(ReloadingTls::load(config).unwrap());
    let acceptor = ZtlsAcceptor::new(Arc::clone(&tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = ZeroTrustLayer::new(policy);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let layer = layer.clone();
            tokio::spawn(async move {
                let Ok((stream, info)) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = ServiceBuilder::new()
                    .layer(layer)
                    .service(service_fn(handler));
                let svc = TowerToHyperService::new(WithConnectionInfo::new(svc, info));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, tls }
}

fn client_config(root: &TestCa, cert: Option<&TestCert>) -> Arc<rustls::ClientConfig> {
    Arc::new(portcullis_test_util::pki::client_config(root, cert).unwrap())
}

struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    server_cert: Vec<u8>,
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Connection, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_owned())?, tcp)
        .await?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(Connection {
        sender,
        server_cert,
    })
}

async fn get(conn: &mut Connection) -> Result<(StatusCode, Value), BoxError> {
    conn.sender.ready().await?;
    let response = conn
        .sender
        .send_request(
            Request::get("/v1/models")
                .header("host", "localhost")
                .body(Empty::new())?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
}

/// Connects and makes one request; `Err` when the handshake (or the first read after it,
/// where TLS 1.3 reports a rejected client certificate) fails.
async fn request(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(StatusCode, Value), BoxError> {
    let mut conn = connect(addr, sni, config).await?;
    get(&mut conn).await
}

#[tokio::test]
async fn valid_client_gets_through_with_its_identity() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let (status, body) = request(
        server.addr,
        "localhost",
        client_config(pki.root(), Some(pki.client())),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["spiffe"], CLIENT_SPIFFE_ID);
    assert_eq!(body["subject"], "O=Portcullis Tests, CN=client");
    assert_eq!(
        body["issuer"],
        "O=Portcullis Tests, CN=Portcullis Test Intermediate CA"
    );
    assert_eq!(body["uri_sans"], json!([CLIENT_SPIFFE_ID]));
    assert_eq!(
        body["thumbprint"],
        thumbprint(pki.client().cert_der()).to_string()
    );
    assert_eq!(body["version"], "TLSv1.3");
    assert!(body["suite"].as_str().unwrap().starts_with("TLS13_"));
    assert_eq!(body["sni"], "localhost");
    assert_eq!(body["alpn"], "http/1.1");
}

#[tokio::test]
async fn tls12_clients_are_served_too() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(pki.root().cert_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pki.client().chain().to_vec(), pki.client().key_der())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (status, body) = request(server.addr, "localhost", Arc::new(config))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], "TLSv1.2");
    assert!(
        body["suite"]
            .as_str()
            .unwrap()
            .starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{body}"
    );
    assert_eq!(body["spiffe"], CLIENT_SPIFFE_ID);
}

#[tokio::test]
async fn bad_client_certificates_are_refused_in_the_handshake() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let root = pki.root();
    let no_eku = pki
        .intermediate()
        .issue(
            &LeafSpec::client("no-eku")
                .uri(CLIENT_SPIFFE_ID)
                .eku(Vec::new()),
        )
        .unwrap();
    let server_eku = pki
        .intermediate()
        .issue(&LeafSpec::server("server-eku").uri(CLIENT_SPIFFE_ID))
        .unwrap();
    for (what, cert) in [
        ("no certificate", None),
        ("expired", Some(pki.expired_client())),
        ("not yet valid", Some(pki.not_yet_valid_client())),
        ("unrelated CA", Some(pki.unrelated_client())),
        ("revoked", Some(pki.revoked_client())),
        ("no EKU", Some(&no_eku)),
        ("serverAuth EKU", Some(&server_eku)),
    ] {
        let result = request(server.addr, "localhost", client_config(root, cert)).await;
        assert!(result.is_err(), "{what}: {result:?}");
    }
    // The valid client still works on the same server.
    assert!(
        request(
            server.addr,
            "localhost",
            client_config(root, Some(pki.client()))
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn policy_violations_get_403() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let policy = ZeroTrustPolicy::require_certificate()
        .allow_spiffe_prefix("spiffe://portcullis.test/ns/default".parse().unwrap())
        .allow_dns_san("*.clients.portcullis.test");
    let server = start(files.config(), policy).await;
    let root = pki.root();
    let good = pki
        .intermediate()
        .issue(
            &LeafSpec::client("good")
                .uri("spiffe://portcullis.test/ns/default/sa/good")
                .dns("a.clients.portcullis.test"),
        )
        .unwrap();
    let other_ns = pki
        .intermediate()
        .issue(
            &LeafSpec::client("other")
                .uri("spiffe://portcullis.test/ns/other/sa/x")
                .dns("a.clients.portcullis.test"),
        )
        .unwrap();
    let other_san = pki
        .intermediate()
        .issue(
            &LeafSpec::client("san")
                .uri("spiffe://portcullis.test/ns/default/sa/y")
                .dns("evil.example.org"),
        )
        .unwrap();
    let (status, _) = request(server.addr, "localhost", client_config(root, Some(&good)))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    for cert in [&other_ns, &other_san, pki.client()] {
        let (status, body) = request(server.addr, "localhost", client_config(root, Some(cert)))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["code"], "ztls.certificate_denied");
        assert!(body.get("spiffe").is_none(), "the handler was not reached");
    }
}

#[tokio::test]
async fn optional_client_auth_defers_to_the_route_policy() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let mut config = files.config();
    config.client_auth = ClientAuth::Optional;
    let root = pki.root();
    let strict = start(config.clone(), ZeroTrustPolicy::require_certificate()).await;
    let (status, body) = request(strict.addr, "localhost", client_config(root, None))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "ztls.certificate_required");
    let open = start(config, ZeroTrustPolicy::default()).await;
    let (status, body) = request(open.addr, "localhost", client_config(root, None))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["spiffe"], Value::Null);
    // A certificate that is sent must still verify.
    assert!(
        request(
            open.addr,
            "localhost",
            client_config(root, Some(pki.revoked_client()))
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn sni_selects_the_certificate_and_the_trust_bundle() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let api = pki
        .intermediate()
        .issue(
            &LeafSpec::server("api")
                .dns("api.portcullis.test")
                .dns("*.partner.test"),
        )
        .unwrap();
    let (api_crt, api_key) = api.write_to(files.dir.path(), "api").unwrap();
    let unrelated_ca = files.path("unrelated-ca.crt");
    std::fs::write(&unrelated_ca, pki.unrelated_ca().cert_pem()).unwrap();
    let config: ZtlsConfig = serde_json::from_value(json!({
        "certificates": [
            {"hosts": ["localhost"], "certFile": files.path("server.crt"), "keyFile": files.path("server.key"), "default": true},
            {"hosts": ["api.portcullis.test", "*.partner.test"], "certFile": api_crt, "keyFile": api_key},
        ],
        "trustBundles": [files.path("ca.crt")],
        "hostTrust": [{"hosts": ["*.partner.test"], "trustBundles": [unrelated_ca]}],
    }))
    .unwrap();
    let server = start(config, ZeroTrustPolicy::require_certificate()).await;
    let root = pki.root();
    let conn = connect(
        server.addr,
        "api.portcullis.test",
        client_config(root, Some(pki.client())),
    )
    .await
    .unwrap();
    assert_eq!(conn.server_cert, api.cert_der().to_vec());
    let conn = connect(
        server.addr,
        "localhost",
        client_config(root, Some(pki.client())),
    )
    .await
    .unwrap();
    assert_eq!(conn.server_cert, pki.server().cert_der().to_vec());
    // The partner hosts trust only the unrelated CA; the other hosts only the test root.
    let unrelated = client_config(root, Some(pki.unrelated_client()));
    let (status, body) = request(server.addr, "x.partner.test", Arc::clone(&unrelated))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sni"], "x.partner.test");
    assert!(request(server.addr, "localhost", unrelated).await.is_err());
    assert!(
        request(
            server.addr,
            "x.partner.test",
            client_config(root, Some(pki.client()))
        )
        .await
        .is_err()
    );
    let status = server.tls.configs();
    let partner = status.for_sni(Some("x.partner.test"));
    let default = status.for_sni(Some("localhost"));
    assert!(!Arc::ptr_eq(&partner, &default));
    assert!(Arc::ptr_eq(&status.for_sni(None), &default));
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

#[tokio::test]
async fn a_replaced_trust_bundle_applies_to_new_connections_only() {
    let pki = TestPki::generate().unwrap();
    let next = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let mut open = connect(
        server.addr,
        "localhost",
        client_config(pki.root(), Some(pki.client())),
    )
    .await
    .unwrap();
    assert_eq!(get(&mut open).await.unwrap().0, StatusCode::OK);

    // Rotate the client CA (and its CRL) on disk.
    write(&files.path("ca.crt"), next.root().cert_pem());
    write(
        &files.path("crl.pem"),
        &format!("{}{}", next.crl().pem(), next.root_crl().pem()),
    );
    assert!(server.tls.reload().unwrap());
    assert_eq!(server.tls.status().generation, 2);
    assert!(
        !server.tls.reload().unwrap(),
        "unchanged files are not reloaded"
    );

    // The open connection keeps working.
    assert_eq!(get(&mut open).await.unwrap().0, StatusCode::OK);
    // New connections use the new bundle. (The server certificate is still the old PKI's.)
    let old_client = client_config(pki.root(), Some(pki.client()));
    assert!(request(server.addr, "localhost", old_client).await.is_err());
    let new_client = client_config(pki.root(), Some(next.client()));
    assert_eq!(
        request(server.addr, "localhost", new_client)
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_to_new_connections() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let client = || client_config(pki.root(), Some(pki.client()));
    let mut open = connect(server.addr, "localhost", client()).await.unwrap();
    assert_eq!(open.server_cert, pki.server().cert_der().to_vec());
    let renewed = pki
        .intermediate()
        .issue(&LeafSpec::server("localhost").dns("localhost"))
        .unwrap();
    renewed.write_to(files.dir.path(), "server").unwrap();
    assert!(server.tls.reload().unwrap());
    let fresh = connect(server.addr, "localhost", client()).await.unwrap();
    assert_eq!(fresh.server_cert, renewed.cert_der().to_vec());
    // The connection made before the rotation still works.
    assert_eq!(get(&mut open).await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn a_corrupt_bundle_keeps_the_old_one_in_force() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let server = start(files.config(), ZeroTrustPolicy::require_certificate()).await;
    let client = || client_config(pki.root(), Some(pki.client()));
    write(
        &files.path("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let err = server.tls.reload().unwrap_err();
    assert!(
        matches!(&err, ZtlsError::Content { field, .. } if field == "trustBundles[0]"),
        "{err}"
    );
    let status = server.tls.status();
    assert_eq!(status.generation, 1);
    assert_eq!(status.last_error, Some(err));
    assert_eq!(
        request(server.addr, "localhost", client()).await.unwrap().0,
        StatusCode::OK
    );
    // Empty, missing and mismatched files are refused the same way.
    write(&files.path("ca.crt"), "");
    assert!(server.tls.reload().is_err());
    std::fs::remove_file(files.path("ca.crt")).unwrap();
    assert!(matches!(server.tls.reload(), Err(ZtlsError::Read { .. })));
    write(&files.path("ca.crt"), pki.root().cert_pem());
    write(&files.path("server.key"), pki.client().key_pem());
    let err = server.tls.reload().unwrap_err();
    assert!(
        matches!(&err, ZtlsError::Content { field, .. } if field == "certificates[0].keyFile"),
        "{err}"
    );
    assert_eq!(
        request(server.addr, "localhost", client()).await.unwrap().0,
        StatusCode::OK
    );
    // Repairing the files clears the error.
    write(&files.path("server.key"), pki.server().key_pem());
    assert!(!server.tls.reload().unwrap());
    assert_eq!(server.tls.status().last_error, None);
}

#[tokio::test]
async fn the_watcher_picks_up_changes() {
    let pki = TestPki::generate().unwrap();
    let next = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let mut config = files.config();
    config.reload_interval = Duration::from_millis(20);
    let server = start(config, ZeroTrustPolicy::require_certificate()).await;
    let watcher = server.tls.spawn_watcher();
    write(&files.path("ca.crt"), next.root().cert_pem());
    write(
        &files.path("crl.pem"),
        &format!("{}{}", next.crl().pem(), next.root_crl().pem()),
    );
    let tls = Arc::clone(&server.tls);
    tokio::time::timeout(Duration::from_secs(10), async move {
        while tls.status().generation < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the watcher reloads within the timeout");
    watcher.abort();
    let new_client = client_config(pki.root(), Some(next.client()));
    assert_eq!(
        request(server.addr, "localhost", new_client)
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_stalled_handshake_times_out() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let tls = Arc::new(ReloadingTls::load(files.config()).unwrap());
    let acceptor = ZtlsAcceptor::new(tls).with_handshake_timeout(Duration::from_millis(50));
    // A client that connects and never sends a ClientHello.
    let (server_side, _client_side) = tokio::io::duplex(1024);
    let err = acceptor.accept(server_side).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn configuration_errors_name_the_field() {
    let pki = TestPki::generate().unwrap();
    let files = Files::new(&pki);
    let mut config = files.config();
    config.trust_bundles.clear();
    assert!(
        matches!(ReloadingTls::load(config), Err(ZtlsError::Config(e)) if e.field() == "trustBundles")
    );
    let mut config = files.config();
    config.certificates[0].cert_file = files.path("missing.crt");
    assert!(
        matches!(ReloadingTls::load(config), Err(ZtlsError::Read { field, .. }) if field == "certificates[0].certFile")
    );
    let mut config = files.config();
    config.certificates.clear();
    assert!(
        matches!(ReloadingTls::load(config), Err(ZtlsError::Config(e)) if e.field() == "certificates")
    );
    let mut config = files.config();
    config.certificates[0].hosts = vec!["bad host".into()];
    assert!(
        matches!(ReloadingTls::load(config), Err(ZtlsError::Config(e)) if e.field() == "certificates[0].hosts[0]")
    );
    let mut config = files.config();
    config.crls = vec![files.path("ca.crt")];
    assert!(
        matches!(ReloadingTls::load(config), Err(ZtlsError::Content { field, .. }) if field == "crls[0]")
    );
    let mut config = files.config();
    config.client_auth = ClientAuth::Off;
    config.trust_bundles.clear();
    assert!(ReloadingTls::load(config).is_ok());
    assert!(
        serde_json::from_value::<ZtlsConfig>(
            json!({"certificates": [], "clientAuth": "sometimes"})
        )
        .is_err()
    );
}
