//! The shared vocabulary of the Portcullis security layers.
//!
//! Portcullis layers never call each other. Each leaves typed values in the request extensions
//! for the layers further in, and in the response extensions for the layers further out. This
//! crate defines those values, so that any layer (ours or yours) can read what another wrote:
//!
//! | type | written by | read by |
//! |---|---|---|
//! | [`ClientAddr`] | the server (accept loop), via [`TrustedProxies::resolve`] | rate limiting, audit |
//! | [`PeerCertificate`], [`TlsInfo`] | the TLS acceptor | zero-trust policy, authn (RFC 8705), rate limiting, audit |
//! | [`Principal`] | authentication | rate limiting, WAF, audit |
//! | [`RouteInfo`] | the router | all |
//! | [`Rejection`] | whichever layer rejects ([`Problem::into_response`] adds it) | audit |
//! | [`WafVerdict`] | WAF | audit |
//! | [`SharedVerdict`] (response) | WAF, while the response body streams | audit, at the body's end |
//! | [`RateLimitDecision`] | rate limiting | audit |
//! | [`TokenUsage`] | token budgets | audit |
//!
//! It also holds what every layer needs to reject a request the same way ([`Problem`], RFC
//! 9457 `application/problem+json` with stable [`Reason`] codes), to resolve the client's
//! address behind proxies without believing forged headers ([`TrustedProxies`]), and to report
//! configuration mistakes ([`ConfigError`]).
//!
//! There is no tower service here: this crate is plain data and functions.
//!
//! # Example
//!
//! A custom gateway resolving the client address of a request that came through a load
//! balancer, and rejecting it with a problem response:
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use portcullis_core::{ClientAddr, Problem, Reason, TrustedProxies};
//!
//! let proxies = TrustedProxies::new(["10.0.0.0/8".parse()?]);
//! let mut request = Request::builder()
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
//!     .body(())?;
//! let client = proxies.resolve("10.1.2.3:50000".parse()?, request.headers());
//! request.extensions_mut().insert(client);
//!
//! let client = request.extensions().get::<ClientAddr>().ok_or("missing")?;
//! assert_eq!(client.ip().to_string(), "203.0.113.7");
//!
//! let response: Response<bytes::Bytes> = Problem::new(Reason::RateLimited).into_response();
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// Implements `Serialize` through `Display` and `Deserialize` through `FromStr` (whose error is
/// a [`ValueError`]), for types whose text form is their wire form.
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

mod cidr;
mod client_addr;
mod clock;
pub mod duration;
mod error;
mod principal;
mod problem;
mod ratelimit;
mod reason;
mod route;
mod spiffe;
mod timing;
mod tls;
mod waf;

pub use cidr::IpCidr;
pub use client_addr::{
    AddrSource, ClientAddr, ClientAddrConfig, DEFAULT_MAX_HOPS, ForwardedHeader, MAX_HOPS_LIMIT,
    TrustedProxies,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ConfigError, ValueError};
pub use principal::{
    AuthMethod, MAX_CLAIM_LEN, MAX_CLAIMS, MAX_ID_LEN, MAX_SCOPE_LEN, MAX_SCOPES, Principal,
    PrincipalBuilder, validate_scope_token,
};
pub use problem::{PROBLEM_JSON, PROBLEM_TYPE_BASE, Problem};
pub use ratelimit::{
    KeyKind, Outcome, RateLimitDecision, TokenUsage, UsageSource, validate_policy_name,
};
pub use reason::{Layer, Reason, Rejection};
pub use route::{MAX_ROUTE_NAME_LEN, RouteInfo};
pub use spiffe::{MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, validate_trust_domain};
pub use timing::UpstreamLatency;
pub use tls::{
    MAX_NAME_LEN, MAX_SANS, MAX_SERIAL_LEN, PeerCertificate, PeerCertificateBuilder, Thumbprint,
    TlsInfo, TlsVersion,
};
pub use waf::{
    IncidentId, MAX_MATCHED_RULES, MAX_REDACTION_KINDS, SharedVerdict, WafAction, WafVerdict,
};
