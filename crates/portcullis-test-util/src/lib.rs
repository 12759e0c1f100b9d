//! Test fixtures shared by the Portcullis crates' tests. Not published.
//!
//! - [`pki`]: a certificate hierarchy generated at run time (root, intermediate, server,
//!   SPIFFE client certificates, expired / not-yet-valid / revoked / foreign ones, and CRLs).
//! - [`jwt`]: RSA, P-256, P-384 and Ed25519 signing keys generated at run time, their JWKS,
//!   and a token builder that can also forge the tokens an attacker would send.
//! - [`docs`]: a document server (HTTP or HTTPS with the test PKI) for JWKS and OIDC
//!   discovery documents, with scripted statuses, `Cache-Control: max-age` and a hit counter.
//! - [`upstream`]: a fake upstream server on `127.0.0.1:0` (echo, SSE, status codes, and an
//!   OpenAI-compatible chat-completions mock with `usage`).
//!
//! Nothing here is committed key material: every key is generated when a test asks for it.

use std::fmt;

pub mod docs;
pub mod jwt;
pub mod kube;
pub mod pki;
pub mod upstream;

pub use docs::DocumentServer;
pub use jwt::{JwtKey, JwtKeys, TokenBuilder};
pub use kube::{FakeKube, loopback_backend_yaml};
pub use pki::{LeafSpec, TestCa, TestCert, TestCrl, TestPki};
pub use upstream::FakeUpstream;

/// A fixture could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not {action}: {message}")]
pub struct Error {
    action: &'static str,
    message: String,
}

impl Error {
    fn new(action: &'static str, message: impl fmt::Display) -> Self {
        Self {
            action,
            message: message.to_string(),
        }
    }
}

macro_rules! from_error {
    ($($ty:ty => $action:literal,)*) => {$(
        impl From<$ty> for Error {
            fn from(err: $ty) -> Self {
                Self::new($action, err)
            }
        }
    )*};
}

from_error! {
    rcgen::Error => "generate a certificate or key",
    rcgen::InvalidAsn1String => "encode a subject alternative name",
    jsonwebtoken::errors::Error => "build a JWT or JWK",
    rustls::Error => "configure rustls",
    std::io::Error => "do I/O",
    serde_json::Error => "serialize JSON",
}
