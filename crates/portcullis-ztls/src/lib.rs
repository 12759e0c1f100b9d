//! Zero-trust client certificates: rustls server configurations with mutual TLS, CRLs, SNI
//! selection and hot reload, an acceptor that records who connected, and a per-route policy
//! layer on SPIFFE IDs, SANs, issuers and pinned certificates.
//!
//! - [`ZtlsConfig`] → [`ReloadingTls`]: server certificates chosen by SNI, client
//!   authentication `required`/`optional`/`off` against trust bundles (per host where
//!   configured), CRLs, TLS 1.2 and 1.3 with rustls' safe suites, ALPN `h2` and `http/1.1`,
//!   and the clientAuth EKU required of client certificates. Files are re-read when they
//!   change; a broken file keeps the previous configuration in force and is reported.
//! - [`ZtlsAcceptor`]: the handshake, then a [`ConnectionInfo`] with the
//!   [`PeerCertificate`](portcullis_core::PeerCertificate) and
//!   [`TlsInfo`](portcullis_core::TlsInfo) that [`WithConnectionInfo`] puts into every
//!   request of the connection.
//! - [`ZeroTrustLayer`]: `403` for requests whose certificate is missing or outside the policy.
//!
//! See `examples/mtls_hyper.rs` for a complete hyper server.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis_ztls::{ZeroTrustLayer, ZeroTrustPolicy};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = ZeroTrustPolicy::require_certificate().allow_trust_domain("prod.example.org")?;
//! let service = ServiceBuilder::new()
//!     .layer(ZeroTrustLayer::new(policy))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Bytes::new()))
//!     }));
//! // No client certificate on this request's connection.
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::FORBIDDEN);
//! # Ok(())
//! # }
//! ```

mod acceptor;
mod error;
mod layer;
mod policy;
mod reload;
mod server;
mod verifier;
mod x509;

pub use acceptor::{ConnectionInfo, DEFAULT_HANDSHAKE_TIMEOUT, WithConnectionInfo, ZtlsAcceptor};
pub use error::ZtlsError;
pub use layer::{ResponseFuture, ZeroTrust, ZeroTrustLayer};
pub use policy::{SpiffeRule, ZeroTrustPolicy, ZeroTrustPolicyConfig};
pub use reload::{ReloadStatus, ReloadingTls};
pub use server::{
    CertificateConfig, ClientAuth, CrlScope, HostTrustConfig, ServerConfigs, ZtlsConfig,
};
pub use x509::{has_client_auth_eku, peer_certificate, thumbprint};

#[cfg(test)]
mod tests;
