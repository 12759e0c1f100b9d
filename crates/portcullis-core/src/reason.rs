//! Stable reason codes for rejections, and the [`Rejection`] record layers leave behind.

use std::fmt;

use http::StatusCode;
use serde::{Serialize, Serializer};

use crate::error::ValueError;

/// The layer that rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Layer {
    /// The server or router itself: no route, bad request framing, upstream failures.
    Gateway,
    /// Authentication and authorization.
    Authn,
    /// Zero-trust client-certificate policy.
    Ztls,
    /// Rate limits, token budgets, brute-force throttling.
    Ratelimit,
    /// The web application firewall, including the AI rule pack and the leak guard.
    Waf,
    /// The audit layer (only when configured to fail closed).
    Audit,
}

impl Layer {
    /// The layer's name as used in reason codes (`authn`, `waf`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Authn => "authn",
            Self::Ztls => "ztls",
            Self::Ratelimit => "ratelimit",
            Self::Waf => "waf",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! reasons {
    ($(
        $(#[$doc:meta])*
        $variant:ident => ($code:literal, $layer:ident, $status:ident, $title:literal),
    )*) => {
        /// Why a request was rejected: a stable, documented code.
        ///
        /// Codes are part of the public contract (clients and dashboards match on them), so a
        /// code is never renamed or reused. Each has a default HTTP status and a fixed title;
        /// neither ever contains request data. Which rule, key or policy matched is not in the
        /// code either: that detail goes to the audit log only.
        ///
        /// | code | status |
        /// |---|---|
        $(#[doc = concat!("| `", $code, "` | ", stringify!($status), " |")])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable code, `layer.snake_case` (e.g. `authn.invalid_token`).
            pub const fn code(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }

            /// The layer this reason belongs to.
            pub const fn layer(self) -> Layer {
                match self { $(Self::$variant => Layer::$layer,)* }
            }

            /// The default HTTP status.
            pub const fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)* }
            }

            /// A short, fixed, human-readable summary (the problem `title`).
            pub const fn title(self) -> &'static str {
                match self { $(Self::$variant => $title,)* }
            }
        }
    };
}

reasons! {
    /// No route matches the request's host and path.
    NoRoute => ("gateway.no_route", Gateway, NOT_FOUND, "No route for this request"),
    /// The request is malformed (bad framing, bad header syntax).
    MalformedRequest => ("gateway.malformed_request", Gateway, BAD_REQUEST, "Malformed request"),
    /// The request body is larger than the route allows.
    BodyTooLarge => ("gateway.body_too_large", Gateway, PAYLOAD_TOO_LARGE, "Request body too large"),
    /// The request headers are larger than allowed.
    HeadersTooLarge => ("gateway.headers_too_large", Gateway, REQUEST_HEADER_FIELDS_TOO_LARGE, "Request headers too large"),
    /// The client took too long to send the request.
    RequestTimeout => ("gateway.request_timeout", Gateway, REQUEST_TIMEOUT, "Request timeout"),
    /// No healthy upstream endpoint is available.
    UpstreamUnavailable => ("gateway.upstream_unavailable", Gateway, SERVICE_UNAVAILABLE, "Upstream unavailable"),
    /// The upstream failed or answered with something that is not HTTP.
    UpstreamError => ("gateway.upstream_error", Gateway, BAD_GATEWAY, "Upstream error"),
    /// The upstream did not answer in time.
    UpstreamTimeout => ("gateway.upstream_timeout", Gateway, GATEWAY_TIMEOUT, "Upstream timeout"),
    /// An internal error; the request was not forwarded.
    InternalError => ("gateway.internal_error", Gateway, INTERNAL_SERVER_ERROR, "Internal error"),
    /// The route's security policy is invalid and no earlier valid one exists: the route
    /// fails closed.
    RouteMisconfigured => ("gateway.route_misconfigured", Gateway, SERVICE_UNAVAILABLE, "Route not available"),

    /// The route requires credentials and the request carried none.
    MissingCredentials => ("authn.missing_credentials", Authn, UNAUTHORIZED, "Authentication required"),
    /// The bearer token is malformed, badly signed, from an unknown issuer or for another
    /// audience.
    InvalidToken => ("authn.invalid_token", Authn, UNAUTHORIZED, "Invalid token"),
    /// The bearer token has expired or is not yet valid.
    ExpiredToken => ("authn.expired_token", Authn, UNAUTHORIZED, "Token expired or not yet valid"),
    /// The request carries more than one credential (two `Authorization` headers, or a bearer
    /// token and an API key), so which one identifies the caller is ambiguous (RFC 6750 §3.1
    /// `invalid_request`).
    AmbiguousCredentials => ("authn.ambiguous_credentials", Authn, BAD_REQUEST, "More than one credential"),
    /// The API key is unknown, revoked or expired.
    InvalidApiKey => ("authn.invalid_api_key", Authn, UNAUTHORIZED, "Invalid API key"),
    /// The credential is valid but lacks a required scope.
    InsufficientScope => ("authn.insufficient_scope", Authn, FORBIDDEN, "Insufficient scope"),
    /// The credential is valid but an authorization rule denies the request.
    Forbidden => ("authn.forbidden", Authn, FORBIDDEN, "Forbidden"),
    /// The keys needed to verify the credential cannot be obtained; failing closed.
    KeysUnavailable => ("authn.keys_unavailable", Authn, SERVICE_UNAVAILABLE, "Verification keys unavailable"),

    /// The route requires a client certificate and the connection presented none.
    CertificateRequired => ("ztls.certificate_required", Ztls, FORBIDDEN, "Client certificate required"),
    /// The client certificate does not satisfy the route's identity policy.
    CertificateDenied => ("ztls.certificate_denied", Ztls, FORBIDDEN, "Client certificate not allowed"),

    /// A request-rate limit is exceeded.
    RateLimited => ("ratelimit.exceeded", Ratelimit, TOO_MANY_REQUESTS, "Rate limit exceeded"),
    /// A token budget cannot cover the request.
    TokenBudgetExceeded => ("ratelimit.token_budget_exceeded", Ratelimit, TOO_MANY_REQUESTS, "Token budget exceeded"),
    /// The client is locked out after too many failed authentication attempts.
    BruteForceLockout => ("ratelimit.lockout", Ratelimit, TOO_MANY_REQUESTS, "Too many failed attempts"),
    /// The shared rate-limit store is unreachable and the policy fails closed.
    RateLimitUnavailable => ("ratelimit.unavailable", Ratelimit, SERVICE_UNAVAILABLE, "Rate limiting unavailable"),

    /// The WAF blocked the request.
    WafBlocked => ("waf.blocked", Waf, FORBIDDEN, "Request blocked"),
    /// The request body could not be parsed for inspection; failing closed.
    UninspectableBody => ("waf.uninspectable_body", Waf, BAD_REQUEST, "Request body could not be inspected"),
    /// The request body is larger than the WAF inspects, and the policy rejects such bodies.
    InspectionLimit => ("waf.inspection_limit", Waf, PAYLOAD_TOO_LARGE, "Request body too large to inspect"),
    /// The WAF withheld the upstream's response (for example, it leaked secrets). The request
    /// itself was acceptable, so this is reported as a gateway failure, not a client error.
    ResponseBlocked => ("waf.response_blocked", Waf, BAD_GATEWAY, "Response withheld"),

    /// The audit record could not be written and the policy fails closed.
    AuditUnavailable => ("audit.unavailable", Audit, SERVICE_UNAVAILABLE, "Audit log unavailable"),
}

impl Reason {
    /// The reason with this code, if any.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// The record a layer leaves in the response extensions when it rejects a request, for the
/// audit layer further out.
///
/// [`Problem::into_response`](crate::Problem::into_response) inserts it automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rejection {
    reason: Reason,
    layer: Layer,
    #[serde(serialize_with = "serialize_status")]
    status: StatusCode,
}

fn serialize_status<S: Serializer>(status: &StatusCode, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u16(status.as_u16())
}

impl Rejection {
    /// A rejection for `reason` with its default status.
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            layer: reason.layer(),
            status: reason.status(),
        }
    }

    /// A rejection for `reason` with a configured status (e.g. a WAF set to answer 406).
    ///
    /// # Errors
    ///
    /// If `status` is not a client or server error (4xx or 5xx): a rejection that reports
    /// success would be a fail-open.
    pub fn with_status(reason: Reason, status: StatusCode) -> Result<Self, ValueError> {
        if !(status.is_client_error() || status.is_server_error()) {
            return Err(ValueError::new(
                "rejection status",
                "it must be a 4xx or 5xx status",
            ));
        }
        Ok(Self {
            reason,
            layer: reason.layer(),
            status,
        })
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Which layer.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_well_formed_and_prefixed_by_layer() {
        let mut seen = HashSet::new();
        for &reason in Reason::ALL {
            let code = reason.code();
            assert!(seen.insert(code), "duplicate code {code}");
            let (layer, rest) = code.split_once('.').unwrap();
            assert_eq!(layer, reason.layer().as_str(), "{code}");
            assert!(
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert!(
                reason.status().is_client_error() || reason.status().is_server_error(),
                "{code}"
            );
            assert!(!reason.title().is_empty());
            assert_eq!(Reason::from_code(code), Some(reason));
            assert_eq!(reason.to_string(), code);
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    #[test]
    fn issue_named_codes_exist() {
        assert_eq!(Reason::InvalidToken.code(), "authn.invalid_token");
        assert_eq!(Reason::RateLimited.code(), "ratelimit.exceeded");
        assert_eq!(Reason::WafBlocked.code(), "waf.blocked");
        assert_eq!(Reason::InvalidToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Reason::RateLimited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(Reason::NoRoute.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn rejection_status_must_be_an_error() {
        let r = Rejection::new(Reason::WafBlocked);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.layer(), Layer::Waf);
        assert_eq!(r.reason(), Reason::WafBlocked);
        let r = Rejection::with_status(Reason::WafBlocked, StatusCode::NOT_ACCEPTABLE).unwrap();
        assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
        for ok in [StatusCode::OK, StatusCode::FOUND, StatusCode::CONTINUE] {
            assert!(Rejection::with_status(Reason::WafBlocked, ok).is_err());
        }
        let json = serde_json::to_value(Rejection::new(Reason::RateLimited)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"reason": "ratelimit.exceeded", "layer": "ratelimit", "status": 429})
        );
    }
}
