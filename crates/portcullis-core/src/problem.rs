//! RFC 9457 `application/problem+json` rejection responses.

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::error::ValueError;
use crate::reason::{Reason, Rejection};

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type` URI; the reason code follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://portcullis.dev/problems/";

/// A rejection response under construction.
///
/// The body is an RFC 9457 problem object built only from the [`Reason`] (its code, title and
/// status) and an optional `'static` detail sentence. There is no way to put request data into
/// it: a rejection never echoes the offending input, which could reflect an attack back at a
/// browser or confirm to an attacker what was matched.
///
/// # Examples
///
/// ```
/// use http::{HeaderValue, Response, StatusCode};
/// use portcullis_core::{Problem, Reason, Rejection};
///
/// let response: Response<bytes::Bytes> = Problem::new(Reason::InvalidToken)
///     .www_authenticate(HeaderValue::from_static(r#"Bearer error="invalid_token""#))
///     .into_response();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// assert_eq!(
///     std::str::from_utf8(response.body())?,
///     r#"{"type":"https://portcullis.dev/problems/authn.invalid_token","title":"Invalid token","status":401,"code":"authn.invalid_token"}"#
/// );
/// // The audit layer further out finds what happened in the extensions.
/// let rejection = response.extensions().get::<Rejection>().ok_or("no rejection")?;
/// assert_eq!(rejection.reason(), Reason::InvalidToken);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Problem {
    rejection: Rejection,
    detail: Option<&'static str>,
    instance: Option<String>,
    headers: HeaderMap,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_uri: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
}

impl Problem {
    /// A problem for `reason`, with its default status.
    pub fn new(reason: Reason) -> Self {
        Self::from_rejection(Rejection::new(reason))
    }

    /// A problem for `reason` with a configured status.
    ///
    /// # Errors
    ///
    /// If `status` is not 4xx or 5xx (see [`Rejection::with_status`]).
    pub fn with_status(reason: Reason, status: StatusCode) -> Result<Self, ValueError> {
        Rejection::with_status(reason, status).map(Self::from_rejection)
    }

    /// A problem for an existing rejection record.
    pub fn from_rejection(rejection: Rejection) -> Self {
        Self {
            rejection,
            detail: None,
            instance: None,
            headers: HeaderMap::new(),
        }
    }

    /// Adds a fixed explanatory sentence (`detail`). It is `'static` on purpose: it cannot
    /// be built from request data.
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Sets `Retry-After` in whole seconds, rounded up (a client told "0" would retry at once).
    pub fn retry_after(mut self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.headers
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        self
    }

    /// Adds a `WWW-Authenticate` challenge (RFC 9110 §11.6.1 requires one on every 401).
    pub fn www_authenticate(mut self, challenge: HeaderValue) -> Self {
        self.headers.append(WWW_AUTHENTICATE, challenge);
        self
    }

    /// Adds a response header (rate-limit headers, for instance). `Content-Type`,
    /// `Cache-Control` and `X-Content-Type-Options` are fixed and cannot be overridden.
    ///
    /// The value must not be derived from request data.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The rejection record this problem stands for.
    pub fn rejection(&self) -> Rejection {
        self.rejection
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.rejection.status()
    }

    /// The headers added so far (without the fixed ones).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The serialized problem object.
    pub fn body(&self) -> Bytes {
        let reason = self.rejection.reason();
        let code = reason.code();
        let mut type_uri = String::with_capacity(PROBLEM_TYPE_BASE.len() + code.len());
        type_uri.push_str(PROBLEM_TYPE_BASE);
        type_uri.push_str(code);
        let body = Body {
            type_uri: &type_uri,
            title: reason.title(),
            status: self.rejection.status().as_u16(),
            code,
            detail: self.detail,
            instance: self.instance.as_deref(),
        };
        // Serializing plain strings and integers to a Vec cannot fail; if it ever did, the
        // minimal object below still tells the client what happened.
        match serde_json::to_vec(&body) {
            Ok(json) => Bytes::from(json),
            Err(_) => Bytes::from_static(br#"{"title":"Request rejected"}"#),
        }
    }

    /// Sets the problem's `instance` to an incident id (a random value the client can quote to
    /// support; it says nothing about what matched).
    pub fn incident(mut self, incident: crate::waf::IncidentId) -> Self {
        self.instance = Some(incident.urn());
        self
    }

    /// Builds the response, with the [`Rejection`] in its extensions.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let body = self.body();
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.rejection.status();
        let mut headers = self.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        *response.headers_mut() = headers;
        response.extensions_mut().insert(self.rejection);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    fn body_json(response: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn every_reason_renders_a_valid_problem() {
        for &reason in Reason::ALL {
            let response: Response<Bytes> = Problem::new(reason).into_response();
            assert_eq!(response.status(), reason.status());
            assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
            assert_eq!(response.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
            let json = body_json(&response);
            assert_eq!(
                json["type"],
                format!("https://portcullis.dev/problems/{}", reason.code())
            );
            assert_eq!(json["title"], reason.title());
            assert_eq!(json["status"], reason.status().as_u16());
            assert_eq!(json["code"], reason.code());
            assert!(json.get("detail").is_none());
            assert_eq!(
                response.extensions().get::<Rejection>(),
                Some(&Rejection::new(reason))
            );
        }
    }

    #[test]
    fn detail_and_headers() {
        let response: Response<Bytes> = Problem::new(Reason::RateLimited)
            .detail("Slow down.")
            .retry_after(Duration::from_millis(1500))
            .header(
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_static("\"per-ip\";q=100;w=60"),
            )
            .header(CONTENT_TYPE, HeaderValue::from_static("text/html"))
            .into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"per-ip\";q=100;w=60"
        );
        // The content type cannot be overridden.
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers().get_all(CONTENT_TYPE).iter().count(), 1);
        assert_eq!(body_json(&response)["detail"], "Slow down.");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        for (after, want) in [
            (Duration::ZERO, "1"),
            (Duration::from_millis(1), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1001), "2"),
            (Duration::from_secs(3600), "3600"),
        ] {
            let p = Problem::new(Reason::RateLimited).retry_after(after);
            assert_eq!(p.headers()[RETRY_AFTER], want, "{after:?}");
        }
    }

    #[test]
    fn configured_status_is_checked() {
        let p = Problem::with_status(Reason::WafBlocked, StatusCode::NOT_ACCEPTABLE).unwrap();
        let response: Response<Bytes> = p.into_response();
        assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(body_json(&response)["status"], 406);
        assert!(Problem::with_status(Reason::WafBlocked, StatusCode::OK).is_err());
    }

    #[test]
    fn multiple_challenges_are_kept() {
        let p = Problem::new(Reason::MissingCredentials)
            .www_authenticate(HeaderValue::from_static("Bearer realm=\"api\""))
            .www_authenticate(HeaderValue::from_static("ApiKey header=\"x-api-key\""));
        assert_eq!(p.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(p.rejection().reason(), Reason::MissingCredentials);
        let response: Response<Bytes> = p.into_response();
        assert_eq!(
            response.headers().get_all(WWW_AUTHENTICATE).iter().count(),
            2
        );
    }

    #[test]
    fn works_with_any_body_built_from_bytes() {
        let response: Response<Vec<u8>> = Problem::new(Reason::NoRoute).into_response();
        let text = String::from_utf8(response.into_body()).unwrap();
        assert!(text.contains("gateway.no_route"));
    }
}
