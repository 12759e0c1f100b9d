//! Portcullis: security for AI/ML HTTP APIs at the ingress, as tower layers.
//!
//! This facade re-exports each Portcullis crate under a short name, behind a cargo feature
//! named after it (all on by default):
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] | `portcullis-core`: the vocabulary layers exchange through extensions, problem responses, client-address resolution | `core` |
//! | [`ztls`] | `portcullis-ztls`: rustls mTLS server configs with SNI, CRLs and hot reload; the handshake's identity in every request; SPIFFE/SAN policy layer | `ztls` |
//! | [`waf`] | `portcullis-waf`: signature engine with ModSecurity semantics, the `ai-guard` prompt-injection pack, the response data-leak guard | `waf` |
//! | [`ratelimit`] | `portcullis-ratelimit`: keyed GCRA policies (local and Redis), brute-force lock-outs, LLM token budgets | `ratelimit` |
//! | [`authn`] | `portcullis-authn`: JWT + JWKS (OIDC discovery), API keys, client certificates, claims-based authorization | `authn` |
//! | [`audit`] | `portcullis-audit`: one record per request, SHA-256 hash chain, Ed25519-signed checkpoints, rotating sinks, `verify` | `audit` |
//!
//! # Example
//!
//! ```
//! use portcullis::core::{Problem, Reason};
//!
//! let response: http::Response<bytes::Bytes> = Problem::new(Reason::NoRoute).into_response();
//! assert_eq!(response.status(), 404);
//! ```

#[cfg(feature = "core")]
#[doc(inline)]
pub use portcullis_core as core;

#[cfg(feature = "authn")]
#[doc(inline)]
pub use portcullis_authn as authn;

#[cfg(feature = "ztls")]
#[doc(inline)]
pub use portcullis_ztls as ztls;

#[cfg(feature = "ratelimit")]
#[doc(inline)]
pub use portcullis_ratelimit as ratelimit;

#[cfg(feature = "audit")]
#[doc(inline)]
pub use portcullis_audit as audit;

#[cfg(feature = "waf")]
#[doc(inline)]
pub use portcullis_waf as waf;
