//! Why authentication or authorization failed, and how each failure is answered on the wire.

use std::time::Duration;

use http::HeaderValue;
use portcullis_core::{Problem, Reason};

/// Why a request was not authenticated or not authorized.
///
/// The variant decides the response (status, reason code, RFC 6750 challenge); the detail
/// inside ([`TokenError`], [`ApiKeyError`]) is for logs and tests only and never reaches the
/// client, which sees one of a few fixed descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// No credential of an accepted kind was presented.
    #[error("no credentials")]
    MissingCredentials,
    /// More than one credential was presented.
    #[error("more than one credential")]
    AmbiguousCredentials,
    /// The bearer token is not acceptable.
    #[error("invalid token: {0}")]
    InvalidToken(TokenError),
    /// The bearer token has expired (`exp`) or is not valid yet (`nbf`).
    #[error("token expired or not yet valid")]
    ExpiredToken,
    /// The API key is not acceptable.
    #[error("invalid API key: {0}")]
    InvalidApiKey(ApiKeyError),
    /// The caller lacks a required scope.
    #[error("insufficient scope")]
    InsufficientScope,
    /// The caller lacks a required role or fails a claim condition.
    #[error("forbidden by the {0} rule")]
    Forbidden(&'static str),
    /// The keys needed to verify the token could not be obtained (never fetched successfully).
    #[error("verification keys unavailable")]
    KeysUnavailable,
}

/// Why a bearer token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than the configured maximum.
    #[error("too large")]
    TooLarge,
    /// Not three base64url segments of JSON objects.
    #[error("malformed")]
    Malformed,
    /// `alg` is `none`, unknown, or not one Portcullis verifies.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// The header has a `crit` parameter (no extension is understood, RFC 7515 §4.1.11).
    #[error("critical header parameter")]
    CriticalHeader,
    /// `iss` is missing or not a configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// `alg` is not in the issuer's allow-list.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No key with the token's `kid` (after a refresh, where allowed).
    #[error("unknown key")]
    UnknownKey,
    /// The key's type, curve or declared `alg` does not fit the token's `alg`.
    #[error("key does not fit the algorithm")]
    KeyMismatch,
    /// An HMAC algorithm for an issuer with no configured secret.
    #[error("HMAC not configured")]
    HmacNotConfigured,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `aud` does not name a configured audience.
    #[error("audience not accepted")]
    BadAudience,
    /// A required claim is missing.
    #[error("missing claim `{0}`")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or an unusable value.
    #[error("invalid claim `{0}`")]
    BadClaim(&'static str),
    /// `iat` is in the future.
    #[error("issued in the future")]
    IssuedInFuture,
    /// The policy requires certificate-bound tokens (RFC 8705) and this one is not bound.
    #[error("not certificate-bound")]
    NotCertificateBound,
    /// The token is bound to a certificate other than the connection's (or there is none).
    #[error("bound to another certificate")]
    CertificateMismatch,
}

/// Why an API key was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// Not a known key.
    #[error("unknown")]
    Unknown,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Not printable ASCII, empty, or too long.
    #[error("malformed")]
    Malformed,
}

/// How long a client is told to wait when keys are unavailable.
const KEYS_UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

/// What the layer offers in its `WWW-Authenticate` challenges. Every string in it comes from
/// validated configuration, never from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) realm: String,
    pub(crate) bearer: bool,
    pub(crate) api_key_header: Option<String>,
    pub(crate) required_scopes: Option<String>,
}

impl AuthnError {
    /// The reason code this failure is reported under.
    pub fn reason(&self) -> Reason {
        match self {
            Self::MissingCredentials => Reason::MissingCredentials,
            Self::AmbiguousCredentials => Reason::AmbiguousCredentials,
            Self::InvalidToken(_) => Reason::InvalidToken,
            Self::ExpiredToken => Reason::ExpiredToken,
            Self::InvalidApiKey(_) => Reason::InvalidApiKey,
            Self::InsufficientScope => Reason::InsufficientScope,
            Self::Forbidden(_) => Reason::Forbidden,
            Self::KeysUnavailable => Reason::KeysUnavailable,
        }
    }

    /// The problem response for this failure, with its challenges.
    pub(crate) fn problem(&self, challenge: &Challenge) -> Problem {
        let problem = Problem::new(self.reason());
        let bearer = |error: Option<(&str, &str)>| {
            let mut v = format!("Bearer realm=\"{}\"", challenge.realm);
            if let Some((code, description)) = error {
                v.push_str(&format!(
                    ", error=\"{code}\", error_description=\"{description}\""
                ));
            }
            v
        };
        let api_key = || {
            challenge
                .api_key_header
                .as_ref()
                .map(|h| format!("ApiKey realm=\"{}\", header=\"{h}\"", challenge.realm))
        };
        let mut challenges: Vec<String> = Vec::new();
        match self {
            Self::MissingCredentials => {
                if challenge.bearer {
                    challenges.push(bearer(None));
                }
                challenges.extend(api_key());
                if challenges.is_empty() {
                    // Certificate-only layers still owe a 401 a challenge (RFC 9110 §15.5.2).
                    challenges.push(format!("Mutual realm=\"{}\"", challenge.realm));
                }
            }
            Self::AmbiguousCredentials => challenges.push(bearer(Some((
                "invalid_request",
                "Send exactly one credential",
            )))),
            Self::InvalidToken(_) => challenges.push(bearer(Some((
                "invalid_token",
                "The access token is invalid",
            )))),
            Self::ExpiredToken => challenges.push(bearer(Some((
                "invalid_token",
                "The access token expired or is not yet valid",
            )))),
            Self::InvalidApiKey(_) => challenges.extend(api_key()),
            Self::InsufficientScope | Self::Forbidden(_) => {
                let mut v = bearer(Some((
                    "insufficient_scope",
                    "The request requires more privileges",
                )));
                if let Some(scopes) = &challenge.required_scopes {
                    v.push_str(&format!(", scope=\"{scopes}\""));
                }
                challenges.push(v);
            }
            Self::KeysUnavailable => {
                return problem.retry_after(KEYS_UNAVAILABLE_RETRY);
            }
        }
        challenges
            .into_iter()
            .filter_map(|c| HeaderValue::from_str(&c).ok())
            .fold(problem, Problem::www_authenticate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
    use http::{Response, StatusCode};

    fn challenge() -> Challenge {
        Challenge {
            realm: "models".into(),
            bearer: true,
            api_key_header: Some("x-api-key".into()),
            required_scopes: Some("chat:write".into()),
        }
    }

    fn respond(err: AuthnError) -> Response<Vec<u8>> {
        err.problem(&challenge()).into_response()
    }

    fn challenges(r: &Response<Vec<u8>>) -> Vec<String> {
        r.headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn wire_mapping() {
        let r = respond(AuthnError::MissingCredentials);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenges(&r),
            [
                "Bearer realm=\"models\"",
                "ApiKey realm=\"models\", header=\"x-api-key\""
            ]
        );

        let r = respond(AuthnError::InvalidToken(TokenError::BadSignature));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenges(&r),
            [
                "Bearer realm=\"models\", error=\"invalid_token\", error_description=\"The access token is invalid\""
            ]
        );

        let r = respond(AuthnError::ExpiredToken);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(challenges(&r)[0].contains("error=\"invalid_token\""));

        let r = respond(AuthnError::AmbiguousCredentials);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(challenges(&r)[0].contains("error=\"invalid_request\""));

        let r = respond(AuthnError::InvalidApiKey(ApiKeyError::Unknown));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenges(&r),
            ["ApiKey realm=\"models\", header=\"x-api-key\""]
        );

        for err in [
            AuthnError::InsufficientScope,
            AuthnError::Forbidden("roles"),
        ] {
            let r = respond(err);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(
                challenges(&r),
                [
                    "Bearer realm=\"models\", error=\"insufficient_scope\", error_description=\"The request requires more privileges\", scope=\"chat:write\""
                ]
            );
        }

        let r = respond(AuthnError::KeysUnavailable);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
        assert!(challenges(&r).is_empty());
    }

    #[test]
    fn certificate_only_layers_still_challenge() {
        let c = Challenge {
            realm: "r".into(),
            bearer: false,
            api_key_header: None,
            required_scopes: None,
        };
        let r: Response<Vec<u8>> = AuthnError::MissingCredentials.problem(&c).into_response();
        assert_eq!(r.headers().get_all(WWW_AUTHENTICATE).iter().count(), 1);
    }

    #[test]
    fn details_stay_out_of_the_response() {
        let r = respond(AuthnError::InvalidToken(TokenError::UnknownIssuer));
        let body = String::from_utf8(r.into_body()).unwrap();
        assert!(!body.contains("issuer"), "{body}");
        assert!(body.contains("authn.invalid_token"));
    }
}
