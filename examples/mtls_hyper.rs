//! Mutual TLS in a plain hyper server: `ReloadingTls` + `ZtlsAcceptor` + `WithConnectionInfo`
//! + `ZeroTrustLayer`.
//!
//! ```sh
//! cargo run --example mtls_hyper                  # serve on 127.0.0.1:8443 with a generated PKI
//! cargo run --example mtls_hyper -- --self-check  # connect with good and bad clients, then exit
//! ```
//!
//! The example generates its PKI into a temporary directory (in production the files come from
//! your CA, or a Kubernetes Secret mounted as files) and watches the files for rotation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use portcullis::core::PeerCertificate;
use portcullis::ztls::{
    ReloadingTls, WithConnectionInfo, ZeroTrustLayer, ZeroTrustPolicy, ZtlsAcceptor, ZtlsConfig,
};
use portcullis_test_util::pki::{LeafSpec, TestCert, TestPki};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, service_fn};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The application: it can rely on a verified client identity.
async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|c| c.spiffe_id())
        .map_or("nobody", |id| id.as_str());
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello, {who}\n"
    )))))
}

async fn serve(listener: TcpListener, tls: Arc<ReloadingTls>, policy: ZeroTrustPolicy) {
    let acceptor = ZtlsAcceptor::new(tls);
    let policy = ZeroTrustLayer::new(policy);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, policy) = (acceptor.clone(), policy.clone());
        tokio::spawn(async move {
            // The handshake verifies the client certificate chain, CRLs and the clientAuth EKU.
            let Ok((stream, info)) = acceptor.accept(stream).await else {
                return;
            };
            let service = ServiceBuilder::new()
                .layer(policy) // who may call this route
                .service(service_fn(hello));
            // Every request on this connection carries the PeerCertificate and TlsInfo.
            let service = TowerToHyperService::new(WithConnectionInfo::new(service, info));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn call(
    addr: SocketAddr,
    pki: &TestPki,
    cert: &TestCert,
) -> Result<(StatusCode, String), Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
        pki.root().cert_pem().as_bytes(),
    )?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(cert.chain().to_vec(), cert.key_der())?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let pki = TestPki::generate()?;
    let dir = tempfile::tempdir()?;
    let files = pki.write_to(dir.path())?;
    let config: ZtlsConfig = serde_json::from_value(serde_json::json!({
        "certificates": [{"hosts": ["localhost"], "certFile": files.server_cert, "keyFile": files.server_key, "default": true}],
        "clientAuth": "required",
        "trustBundles": [files.ca],
        "crls": [files.crl],
        "reloadInterval": "5s",
    }))?;
    let tls = Arc::new(ReloadingTls::load(config)?);
    let _watcher = tls.spawn_watcher();
    let policy = ZeroTrustPolicy::require_certificate()
        .allow_spiffe_prefix("spiffe://portcullis.test/ns/default".parse()?);

    let self_check = std::env::args().any(|a| a == "--self-check");
    let addr: SocketAddr = if self_check {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8443"
    }
    .parse()?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::clone(&tls), policy));
    println!(
        "mTLS server on https://localhost:{} (PKI in {})",
        addr.port(),
        dir.path().display()
    );

    if !self_check {
        println!(
            "try: curl --cacert {0}/ca.crt --cert {0}/client.crt --key {0}/client.key https://localhost:{1}/",
            dir.path().display(),
            addr.port()
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let (status, body) = call(addr, &pki, pki.client()).await?;
    println!("{:>22} -> {status} {body}", "valid client");
    if status != StatusCode::OK {
        return Err("the valid client was refused".into());
    }
    let outsider = pki
        .intermediate()
        .issue(&LeafSpec::client("outsider").uri("spiffe://portcullis.test/ns/other/sa/x"))?;
    let (status, _) = call(addr, &pki, &outsider).await?;
    println!("{:>22} -> {status}", "other namespace");
    if status != StatusCode::FORBIDDEN {
        return Err("the policy did not refuse the other namespace".into());
    }
    let revoked = call(addr, &pki, pki.revoked_client()).await;
    println!(
        "{:>22} -> {}",
        "revoked client",
        if revoked.is_err() {
            "handshake refused"
        } else {
            "accepted"
        }
    );
    if revoked.is_ok() {
        return Err("the revoked client was accepted".into());
    }
    println!("self-check passed");
    Ok(())
}
