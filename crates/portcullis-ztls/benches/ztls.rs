//! TLS handshakes on loopback through `ZtlsAcceptor`: full and resumed, with and without
//! client certificates, in one run; and the zero-trust policy check alone.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a bench with broken fixtures should stop at once"
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_test_util::pki::{TestCert, TestPki};
use portcullis_ztls::{ReloadingTls, ZeroTrustPolicy, ZtlsAcceptor, ZtlsConfig, peer_certificate};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Starts a server that completes the handshake, writes one byte and closes.
async fn server(tls: Arc<ReloadingTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = ZtlsAcceptor::new(tls);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok((mut stream, _info)) = acceptor.accept(stream).await {
                    let _ = stream.write_all(b"k").await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

fn client(pki: &TestPki, cert: Option<&TestCert>, resume: bool) -> tokio_rustls::TlsConnector {
    let mut config = portcullis_test_util::pki::client_config(pki.root(), cert).unwrap();
    config.alpn_protocols.clear();
    config.resumption = if resume {
        Resumption::default()
    } else {
        Resumption::disabled()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One connection: handshake, then read the server's byte (so the server's side of the
/// handshake, including client-certificate verification, is inside the measurement).
async fn handshake(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.unwrap();
}

fn handshakes(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let pki = TestPki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let config = |client_auth: &str| -> ZtlsConfig {
        serde_json::from_value(serde_json::json!({
            "certificates": [{"hosts": ["localhost"], "certFile": files.server_cert, "keyFile": files.server_key, "default": true}],
            "clientAuth": client_auth,
            "trustBundles": [files.ca],
            "crls": [files.crl],
        }))
        .unwrap()
    };
    let mtls = rt.block_on(server(Arc::new(
        ReloadingTls::load(config("required")).unwrap(),
    )));
    let plain = rt.block_on(server(Arc::new(ReloadingTls::load(config("off")).unwrap())));

    let mut g = c.benchmark_group("handshake");
    for (name, addr, cert, resume) in [
        ("tls_full", plain, None, false),
        ("mtls_full", mtls, Some(pki.client()), false),
        ("tls_resumed", plain, None, true),
        ("mtls_resumed", mtls, Some(pki.client()), true),
    ] {
        let connector = client(&pki, cert, resume);
        // Warm the session cache for the resumed cases, and check the setup works.
        rt.block_on(handshake(addr, &connector));
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(handshake(addr, &connector)))
        });
    }
    g.finish();
}

fn policy(c: &mut Criterion) {
    let pki = TestPki::generate().unwrap();
    let cert = peer_certificate(pki.client().cert_der()).unwrap();
    let policy = ZeroTrustPolicy::require_certificate()
        .allow_spiffe_id(
            &"spiffe://portcullis.test/ns/batch/sa/scorer"
                .parse()
                .unwrap(),
        )
        .allow_trust_domain("partner.test")
        .unwrap()
        .allow_spiffe_prefix("spiffe://portcullis.test/ns/default".parse().unwrap())
        .allow_issuer("O=Portcullis Tests, CN=Portcullis Test Intermediate CA");
    assert!(policy.check(Some(&cert)).is_ok());
    c.bench_function("policy/check", |b| {
        b.iter(|| policy.check(black_box(Some(&cert))))
    });
}

criterion_group!(benches, policy, handshakes);
criterion_main!(benches);
