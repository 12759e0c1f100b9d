//! Rate-limit decisions and LLM token usage, left in extensions for the audit log.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::error::ValueError;

/// What a rate-limit policy counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyKind {
    /// The client IP address (optionally grouped by IPv6 prefix).
    ClientIp,
    /// The principal's subject.
    Subject,
    /// The principal's tenant.
    Tenant,
    /// The API key id.
    ApiKey,
    /// The client certificate's SPIFFE ID.
    SpiffeId,
    /// The value of a request header.
    Header,
    /// The route.
    Route,
    /// The model name.
    Model,
    /// Several of the above together.
    Composite,
    /// One key shared by every request.
    Global,
}

/// Whether a policy let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Outcome {
    /// Within quota.
    Allowed,
    /// Over quota: rejected with 429.
    Limited,
}

/// Checks a policy name: 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`. Names are
/// written into `RateLimit-Policy` headers and audit records, so nothing else is allowed.
///
/// # Errors
///
/// If the name breaks that rule.
pub fn validate_policy_name(name: &str) -> Result<(), ValueError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValueError::new(
            "rate-limit policy name",
            "it must be 1 to 64 letters, digits, `-`, `_` or `.`",
        ))
    }
}

/// The decision of the rate-limit policy that decided a request: when several apply, the most
/// restrictive one.
///
/// The policy name is shared (`Arc<str>`), so a limiter reporting a decision per request does
/// not allocate for it.
///
/// Invariants: `remaining <= limit`; a `Limited` decision has `remaining == 0` and a
/// `retry_after`; an `Allowed` decision has none.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use portcullis_core::{KeyKind, RateLimitDecision};
///
/// let d = RateLimitDecision::allowed("per-ip", KeyKind::ClientIp, 100, 99, Duration::from_secs(60))?;
/// assert!(!d.is_limited());
/// let d = RateLimitDecision::limited("per-ip", KeyKind::ClientIp, 100, Duration::from_secs(60), Duration::from_millis(600))?;
/// assert_eq!(d.remaining(), 0);
/// assert_eq!(d.retry_after(), Some(Duration::from_millis(600)));
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitDecision {
    #[serde(serialize_with = "serialize_arc_str")]
    policy: Arc<str>,
    key_kind: KeyKind,
    outcome: Outcome,
    limit: u64,
    remaining: u64,
    #[serde(rename = "window_secs", serialize_with = "secs_f64")]
    window: Duration,
    #[serde(
        rename = "retry_after_secs",
        serialize_with = "opt_secs_f64",
        skip_serializing_if = "Option::is_none"
    )]
    retry_after: Option<Duration>,
}

fn serialize_arc_str<S: Serializer>(s: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(s)
}

fn secs_f64<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs_f64<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl RateLimitDecision {
    /// The request was within quota: `remaining` of `limit` units are left in a window of
    /// `window`.
    ///
    /// # Errors
    ///
    /// If the policy name is invalid ([`validate_policy_name`]), `limit` is 0, `remaining`
    /// exceeds `limit`, or `window` is zero.
    pub fn allowed(
        policy: impl Into<Arc<str>>,
        key_kind: KeyKind,
        limit: u64,
        remaining: u64,
        window: Duration,
    ) -> Result<Self, ValueError> {
        Self::checked(
            policy.into(),
            key_kind,
            Outcome::Allowed,
            limit,
            remaining,
            window,
            None,
        )
    }

    /// The request was over quota; the client may retry after `retry_after`.
    ///
    /// # Errors
    ///
    /// As for [`allowed`](Self::allowed).
    pub fn limited(
        policy: impl Into<Arc<str>>,
        key_kind: KeyKind,
        limit: u64,
        window: Duration,
        retry_after: Duration,
    ) -> Result<Self, ValueError> {
        Self::checked(
            policy.into(),
            key_kind,
            Outcome::Limited,
            limit,
            0,
            window,
            Some(retry_after),
        )
    }

    fn checked(
        policy: Arc<str>,
        key_kind: KeyKind,
        outcome: Outcome,
        limit: u64,
        remaining: u64,
        window: Duration,
        retry_after: Option<Duration>,
    ) -> Result<Self, ValueError> {
        validate_policy_name(&policy)?;
        let err = |rule: &'static str| ValueError::new("rate-limit decision", rule);
        if limit == 0 {
            return Err(err("the limit is 0"));
        }
        if remaining > limit {
            return Err(err("more remains than the limit allows"));
        }
        if window.is_zero() {
            return Err(err("the window is zero"));
        }
        Ok(Self {
            policy,
            key_kind,
            outcome,
            limit,
            remaining,
            window,
            retry_after,
        })
    }

    /// The deciding policy's name.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// What the policy counts by.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// Allowed or limited.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the request was rejected.
    pub fn is_limited(&self) -> bool {
        self.outcome == Outcome::Limited
    }

    /// The quota: units per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Units left in the current window.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The window the quota is counted over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// When a limited client may retry.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Whether token counts were reported by the model server or estimated by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum UsageSource {
    /// The `usage` object of the model server's response.
    Reported,
    /// Estimated by the gateway (the response carried no usage, or was cut short).
    Estimated,
}

/// LLM token usage of one request, written by the token-budget layer and read by audit.
///
/// # Examples
///
/// ```
/// use portcullis_core::{TokenUsage, UsageSource};
///
/// let usage = TokenUsage::new(120, 30, UsageSource::Reported);
/// assert_eq!(usage.total(), 150);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TokenUsage {
    prompt: u64,
    completion: u64,
    source: UsageSource,
}

impl TokenUsage {
    /// `prompt` input and `completion` output tokens.
    pub fn new(prompt: u64, completion: u64, source: UsageSource) -> Self {
        Self {
            prompt,
            completion,
            source,
        }
    }

    /// Prompt (input) tokens.
    pub fn prompt(&self) -> u64 {
        self.prompt
    }

    /// Completion (output) tokens.
    pub fn completion(&self) -> u64 {
        self.completion
    }

    /// Prompt plus completion, saturating.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// Where the counts came from.
    pub fn source(&self) -> UsageSource {
        self.source
    }
}

impl fmt::Display for TokenUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} prompt + {} completion tokens",
            self.prompt, self.completion
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn policy_names() {
        for ok in ["per-ip", "tenant_daily", "v1.chat", &"a".repeat(64)] {
            assert!(validate_policy_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "quote\"",
            "semi;colon",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(validate_policy_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_decisions() {
        let d = RateLimitDecision::allowed("p", KeyKind::Subject, 10, 10, MIN).unwrap();
        assert_eq!(d.outcome(), Outcome::Allowed);
        assert_eq!(d.remaining(), 10);
        assert_eq!(d.limit(), 10);
        assert_eq!(d.window(), MIN);
        assert_eq!(d.retry_after(), None);
        assert_eq!(d.policy(), "p");
        assert_eq!(d.key_kind(), KeyKind::Subject);
        assert!(RateLimitDecision::allowed("p", KeyKind::Subject, 10, 11, MIN).is_err());
        assert!(RateLimitDecision::allowed("p", KeyKind::Subject, 0, 0, MIN).is_err());
        assert!(RateLimitDecision::allowed("p", KeyKind::Subject, 1, 0, Duration::ZERO).is_err());
        assert!(RateLimitDecision::allowed("bad name", KeyKind::Subject, 1, 0, MIN).is_err());
    }

    #[test]
    fn limited_decisions() {
        let d = RateLimitDecision::limited("p", KeyKind::ClientIp, 5, MIN, Duration::from_secs(3))
            .unwrap();
        assert!(d.is_limited());
        assert_eq!(d.remaining(), 0);
        assert_eq!(d.retry_after(), Some(Duration::from_secs(3)));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["outcome"], "limited");
        assert_eq!(json["key_kind"], "client-ip");
        assert_eq!(json["window_secs"], 60.0);
        assert_eq!(json["retry_after_secs"], 3.0);
        let allowed = RateLimitDecision::allowed("p", KeyKind::Global, 5, 4, MIN).unwrap();
        let json = serde_json::to_value(&allowed).unwrap();
        assert!(json.get("retry_after_secs").is_none());
    }

    #[test]
    fn token_usage() {
        let u = TokenUsage::new(u64::MAX, 5, UsageSource::Estimated);
        assert_eq!(u.total(), u64::MAX);
        assert_eq!(u.prompt(), u64::MAX);
        assert_eq!(u.completion(), 5);
        assert_eq!(u.source(), UsageSource::Estimated);
        let u = TokenUsage::new(7, 3, UsageSource::Reported);
        assert_eq!(u.to_string(), "7 prompt + 3 completion tokens");
        let json = serde_json::to_value(u).unwrap();
        assert_eq!(json["source"], "reported");
    }
}
