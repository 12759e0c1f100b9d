//! Rate limiting for model APIs as a tower layer: named GCRA quotas on governor, keyed by
//! client address, principal, tenant, API key, SPIFFE ID, header, route, model, a composite or
//! one global key; bounded memory under floods of distinct keys; IETF `RateLimit` headers; and
//! brute-force throttling that locks out clients collecting `401`/`403` responses.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis_core::ClientAddr;
//! use portcullis_ratelimit::{RateLimitConfig, RateLimitLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: RateLimitConfig = serde_json::from_value(serde_json::json!({
//!     "policies": [{"name": "per-ip", "key": "clientIp", "requests": 2, "per": "1m"}]
//! }))?;
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::try_from(&config)?)
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Bytes::new()))
//!     }));
//! let request = || {
//!     let mut r = Request::new(());
//!     r.extensions_mut().insert(ClientAddr::from_peer("192.0.2.7:5000".parse().unwrap()));
//!     r
//! };
//! assert_eq!(service.clone().oneshot(request()).await?.status(), StatusCode::OK);
//! let second = service.clone().oneshot(request()).await?;
//! assert_eq!(second.headers()["ratelimit"], "\"per-ip\";r=0;t=60");
//! let third = service.oneshot(request()).await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! # Ok(())
//! # }
//! ```

mod budget;
mod budget_layer;
mod config;
mod global;
mod key;
mod layer;
mod policy;
mod store;

pub use budget::{
    Api, BudgetStore, Reservation, Window, delta_text, estimate_tokens, request_estimate, usage_of,
};
pub use budget_layer::{
    BudgetBody, BudgetConfig, CUT_OFF_EVENT, SseState, TokenBudget, TokenBudgetConfig,
    TokenBudgetLayer,
};
pub use config::{
    BruteForceConfig, KeyConfig, KeyName, PolicyConfig, RateLimitConfig, RedisConfig,
};
pub use global::{FailureMode, RedisLimiter, RedisUnavailable};
pub use governor::clock::{DefaultClock, FakeRelativeClock};
pub use key::{Key, KeySpec};
pub use layer::{
    RATELIMIT, RATELIMIT_POLICY, RateLimit, RateLimitLayer, ResponseFuture, ratelimit_headers,
};
pub use policy::{BruteForcePolicy, Count, GlobalUnavailable, RateLimitPolicy, most_restrictive};

#[cfg(test)]
mod budget_tests;
#[cfg(test)]
mod redis_tests;
#[cfg(test)]
mod tests;
