//! Authentication and authorization for model APIs, as a tower layer.
//!
//! [`AuthnLayer`] checks every request's credential, puts the caller's
//! [`Principal`](portcullis_core::Principal) into the request extensions for the layers
//! further in, and answers failures itself with RFC 9457 problem responses and RFC 6750
//! challenges; the inner service is never called for a rejected request.
//!
//! - **Bearer JWTs** from several issuers, each with its own keys, audiences and algorithm
//!   allow-list. `alg: none`, algorithms outside the allow-list, keys of the wrong type (no
//!   RSA-public-key-as-HMAC-secret confusion), unknown issuers, wrong audiences, expired or
//!   not-yet-valid tokens, oversized and malformed tokens, and `crit` headers are rejected.
//! - **JWKS** inline, from a file, from a URL or via OIDC discovery, cached per
//!   `Cache-Control: max-age` within bounds, refreshed single-flight on unknown key ids, and
//!   served stale when the endpoint fails ([`Jwks`]).
//! - A **verified-token cache**, so a hot client pays for one signature check ([`TokenCache`]).
//! - **API keys**, stored only as SHA-256 digests and compared in constant time
//!   ([`ApiKeyStore`]).
//! - **Client certificates** as credentials for mTLS-only machine clients, and
//!   **certificate-bound tokens** (RFC 8705 `cnf.x5t#S256`).
//! - **Authorization rules**: scopes, roles, and conditions on claims ([`AuthzRules`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis_authn::{AuthnConfig, AuthnLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: AuthnConfig = serde_json::from_value(serde_json::json!({
//!     "apiKeys": { "keys": [{
//!         "id": "demo",
//!         // SHA-256 of "sk-demo"; the key itself is never configured.
//!         "sha256": portcullis_authn::hash_api_key("sk-demo"),
//!         "subject": "svc-demo"
//!     }]}
//! }))?;
//! let service = ServiceBuilder::new()
//!     .layer(AuthnLayer::try_from(config)?)
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Bytes::from_static(b"hello")))
//!     }));
//!
//! let denied = service.clone().oneshot(Request::new(())).await?;
//! assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
//!
//! let allowed = Request::builder().header("x-api-key", "sk-demo").body(())?;
//! assert_eq!(service.oneshot(allowed).await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod apikey;
mod authenticator;
mod authz;
mod cache;
mod config;
mod error;
mod fetch;
mod future;
mod jwks;
mod jwt;
mod keys;
mod layer;
mod service;
#[cfg(test)]
mod testing;

pub use apikey::{ApiKeyConfig, ApiKeyStore, MAX_API_KEY_LEN, hash_api_key};
pub use authenticator::{
    ASYMMETRIC_ALGORITHMS, Authenticated, Authenticator, AuthenticatorBuilder, Check,
    DEFAULT_API_KEY_HEADER, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_SIZE, IssuerBuilder, MAX_LEEWAY,
    Pending, SubjectFrom,
};
pub use authz::{AuthzConfig, AuthzRules, ClaimCondition, Requirement};
pub use cache::TokenCache;
pub use config::{
    ApiKeysConfig, AuthnConfig, ClaimsConfig, ClientCertificateConfig, IssuerConfig,
    JwksCacheConfig, JwksConfig, JwtConfig, Method, SecretConfig, TokenCacheConfig,
};
pub use error::{ApiKeyError, AuthnError, TokenError};
pub use fetch::{
    FetchFuture, Fetched, HttpFetch, HttpsFetcher, MAX_DOCUMENT, roots_from_pem, webpki_roots,
};
pub use future::ResponseFuture;
pub use jsonwebtoken::Algorithm;
pub use jwks::{CachePolicy, Jwks, JwksStatus};
pub use keys::{JwksError, KeySet, MAX_KEYS};
pub use layer::AuthnLayer;
pub use portcullis_core::{Clock, ManualClock, SystemClock};
pub use service::Authn;
