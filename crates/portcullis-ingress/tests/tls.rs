//! TLS end to end on real sockets: server certificates from Ingress `spec.tls` Secrets chosen
//! by SNI, client certificates verified at the handshake for the hosts whose policy has a
//! `ztls` section and checked against its identity policy on every request, certificate
//! rotation, and a broken Secret leaving the previous certificate serving.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_ingress::server::{Options, start};

mod common;
use common::{options, write};
use portcullis_test_util::FakeUpstream;
use portcullis_test_util::pki::{LeafSpec, TestCa, TestCert};
use rustls::pki_types::ServerName;

const GOOD: &str = "spiffe://test.example/ns/ml/sa/good";
const OTHER: &str = "spiffe://test.example/ns/ml/sa/other";

struct Pki {
    server_ca: TestCa,
    clients_ca: TestCa,
    good: TestCert,
    other: TestCert,
    stranger: TestCert,
}

fn pki() -> Pki {
    let server_ca = TestCa::root("Server CA").unwrap();
    let clients_ca = TestCa::root("Clients CA").unwrap();
    let good = clients_ca
        .issue(&LeafSpec::client("good").uri(GOOD))
        .unwrap();
    let other = clients_ca
        .issue(&LeafSpec::client("other").uri(OTHER))
        .unwrap();
    let stranger = TestCa::root("Stranger CA")
        .unwrap()
        .issue(&LeafSpec::client("stranger").uri(GOOD))
        .unwrap();
    Pki {
        server_ca,
        clients_ca,
        good,
        other,
        stranger,
    }
}

fn server_cert(ca: &TestCa, host: &str) -> TestCert {
    ca.issue(&LeafSpec::server(host).dns(host)).unwrap()
}

/// The manifests (JSON documents are YAML too).
fn manifests(upstream: SocketAddr, pki: &Pki, api: (&str, &str), open: &TestCert) -> String {
    let route = |name: &str, host: &str, secret: &str| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {
                "ingressClassName": "portcullis",
                "tls": [{"hosts": [host], "secretName": secret}],
                "rules": [{"host": host, "http": {"paths": [{"path": "/v1", "pathType": "Prefix",
                    "backend": {"service": {"name": "mock", "port": {"number": 80}}}}]}}]
            }
        })
    };
    let tls_secret = |name: &str, crt: &str, key: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "ml"},
            "stringData": {"tls.crt": crt, "tls.key": key}
        })
    };
    let docs = [
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "portcullis"},
            "spec": {"controller": "portcullis.dev/ingress-controller"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "mock", "namespace": "ml"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "mock-1", "namespace": "ml",
                "labels": {"kubernetes.io/service-name": "mock"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": upstream.port()}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        route("api", "api.test", "api-tls"),
        route("open", "open.test", "open-tls"),
        tls_secret("api-tls", api.0, api.1),
        tls_secret("open-tls", open.cert_pem(), open.key_pem()),
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "clients-ca", "namespace": "ml"},
            "stringData": {"ca.crt": pki.clients_ca.cert_pem()}}),
        serde_json::json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "PortcullisPolicy",
            "metadata": {"name": "api-policy", "namespace": "ml"},
            "spec": {"targetRefs": [{"name": "api"}],
                "ztls": {"caSecret": {"name": "clients-ca"},
                    "policy": {"spiffeIds": [{"exact": GOOD}]}}}}),
    ];
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn client_config(ca: &TestCa, cert: Option<&TestCert>) -> Arc<rustls::ClientConfig> {
    Arc::new(portcullis_test_util::pki::client_config(ca, cert).unwrap())
}

/// One request over a new TLS connection to `sni`, with `host` as the Host header. `Err` when
/// the handshake or the exchange fails; otherwise the status, the body and the server's
/// certificate.
async fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    host: &str,
) -> Result<(StatusCode, String, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let req = Request::post("/v1/chat/completions")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        server_cert,
    ))
}

/// One request over HTTP/2, negotiated by ALPN, to `api.test` with `config`'s client
/// certificate. Returns the status and the negotiated protocol.
async fn https_h2(addr: SocketAddr, config: &rustls::ClientConfig) -> (StatusCode, Vec<u8>) {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let req = Request::post("https://api.test/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    (status, alpn)
}

async fn admin_metrics(admin: SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = sender.send_request(req).await.unwrap().into_body();
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_tls_and_verifies_client_certificates() {
    let upstream = FakeUpstream::start().await.unwrap();
    let pki = pki();
    let api_cert = server_cert(&pki.server_ca, "api.test");
    let open_cert = server_cert(&pki.server_ca, "open.test");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &manifests(
            upstream.addr(),
            &pki,
            (api_cert.cert_pem(), api_cert.key_pem()),
            &open_cert,
        ),
    );
    let running = start(Options {
        tls_listen: "127.0.0.1:0".parse().ok(),
        ..options(dir.path())
    })
    .await
    .unwrap();
    let tls_addr = running.tls_addr.unwrap();
    let admin = running.admin.unwrap();
    let root = &pki.server_ca;

    // The allowed workload: verified at the handshake, allowed by the policy, proxied with
    // X-Forwarded-Proto https; the server certificate is the api.test Secret's.
    let good = || {
        https(
            tls_addr,
            client_config(root, Some(&pki.good)),
            "api.test",
            "api.test",
        )
    };
    let (status, body, served) = good().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served, api_cert.cert_der().to_vec());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.headers()["x-forwarded-proto"], "https");

    // HTTP/2, negotiated by ALPN, through the same handshake checks and route stack.
    let (status, alpn) = https_h2(tls_addr, &client_config(root, Some(&pki.good))).await;
    assert_eq!((status, alpn.as_slice()), (StatusCode::OK, &b"h2"[..]));
    let (status, _) = https_h2(tls_addr, &client_config(root, Some(&pki.other))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A certificate from the trusted CA whose identity the policy does not allow: 403.
    let (status, body, _) = https(
        tls_addr,
        client_config(root, Some(&pki.other)),
        "api.test",
        "api.test",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("ztls.certificate_denied"), "{body}");

    // No certificate, or one from an untrusted CA: the handshake refuses the client.
    for cert in [None, Some(&pki.stranger)] {
        let outcome = https(tls_addr, client_config(root, cert), "api.test", "api.test").await;
        assert!(outcome.is_err(), "{outcome:?}");
    }
    // The server counts its side of the failed handshakes (possibly after the client saw
    // the alert).
    let mut failures = 0;
    for _ in 0..100 {
        failures = metric(
            &admin_metrics(admin).await,
            "portcullis_tls_handshake_failures_total",
        );
        if failures >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failures >= 2, "{failures}");

    // open.test has no client authentication, and its own certificate by SNI.
    let (status, body, served) = https(
        tls_addr,
        client_config(root, None),
        "open.test",
        "open.test",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served, open_cert.cert_der().to_vec());

    // Reaching api.test's routes through open.test's handshake (no certificate) is refused
    // by the route's policy, and so is the plain listener.
    let (status, body, _) = https(tls_addr, client_config(root, None), "open.test", "api.test")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("ztls.certificate_required"), "{body}");
    let plain = running.addr.unwrap();
    let tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/v1/models")
                .header("host", "api.test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Rotation: a new certificate in the Secret is served to new connections.
    let rotated = server_cert(&pki.server_ca, "api.test");
    write(
        dir.path(),
        &manifests(
            upstream.addr(),
            &pki,
            (rotated.cert_pem(), rotated.key_pem()),
            &open_cert,
        ),
    );
    let mut served_now = Vec::new();
    for _ in 0..100 {
        let (_, _, served) = good().await.unwrap();
        served_now = served;
        if served_now == rotated.cert_der().to_vec() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_now, rotated.cert_der().to_vec());

    // A broken Secret (a key that is not the certificate's) is reported; the previous
    // certificate keeps serving.
    let before = metric(
        &admin_metrics(admin).await,
        "portcullis_route_table_reloads_total",
    );
    write(
        dir.path(),
        &manifests(
            upstream.addr(),
            &pki,
            (rotated.cert_pem(), open_cert.key_pem()),
            &open_cert,
        ),
    );
    for _ in 0..100 {
        let m = admin_metrics(admin).await;
        if metric(&m, "portcullis_route_table_reloads_total") > before {
            assert!(metric(&m, "portcullis_invalid_objects") >= 1, "{m}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body, served) = good().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served, rotated.cert_der().to_vec());
    running.shutdown().await;
}
