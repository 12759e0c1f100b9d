//! Serde configuration.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use http::{HeaderName, StatusCode};
use portcullis_core::{ConfigError, duration};
use serde::{Deserialize, Serialize};

use crate::global::{FailureMode, RedisLimiter};
use crate::key::KeySpec;
use crate::layer::RateLimitLayer;
use crate::policy::{BruteForcePolicy, RateLimitPolicy};

/// A named key source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyName {
    /// The client address.
    ClientIp,
    /// The principal's subject.
    Subject,
    /// The principal's tenant.
    Tenant,
    /// The API key id.
    ApiKey,
    /// The client certificate's SPIFFE ID.
    SpiffeId,
    /// The route.
    Route,
    /// The model.
    Model,
    /// One key for all.
    Global,
}

/// What a policy counts by: a name, `{header: NAME}`, or a list of these (composite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    /// A named key.
    Named(KeyName),
    /// A header's value.
    Header {
        /// The header.
        header: String,
    },
    /// Several keys together.
    Composite(Vec<KeyConfig>),
}

fn spec(field: &str, key: &KeyConfig, ipv6_prefix: Option<u8>) -> Result<KeySpec, ConfigError> {
    Ok(match key {
        KeyConfig::Named(KeyName::ClientIp) => KeySpec::ClientIp { ipv6_prefix },
        KeyConfig::Named(KeyName::Subject) => KeySpec::Subject,
        KeyConfig::Named(KeyName::Tenant) => KeySpec::Tenant,
        KeyConfig::Named(KeyName::ApiKey) => KeySpec::ApiKey,
        KeyConfig::Named(KeyName::SpiffeId) => KeySpec::SpiffeId,
        KeyConfig::Named(KeyName::Route) => KeySpec::Route,
        KeyConfig::Named(KeyName::Model) => KeySpec::Model,
        KeyConfig::Named(KeyName::Global) => KeySpec::Global,
        KeyConfig::Header { header } => {
            KeySpec::Header(HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{field}.header"),
                    format!("`{header}` is not a header name"),
                    "use a lowercase header name",
                )
            })?)
        }
        KeyConfig::Composite(parts) => {
            if parts.len() < 2 {
                return Err(ConfigError::new(
                    field,
                    "a composite key needs at least two parts",
                    "list two or more keys, or use one key",
                ));
            }
            KeySpec::Composite(
                parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| spec(&format!("{field}[{i}]"), p, ipv6_prefix))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// The key spec of a configured key (no IPv6 grouping).
pub(crate) fn spec_for(field: &str, key: &KeyConfig) -> Result<KeySpec, ConfigError> {
    spec(field, key, None)
}

/// One policy.
///
/// ```yaml
/// - { name: per-ip, key: clientIp, requests: 100, per: 1m, ipv6Prefix: 64 }
/// - { name: per-tenant-model, key: [tenant, model], requests: 600, per: 1m, burst: 50 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// The name, shown in headers and the audit log (`[A-Za-z0-9._-]`, 1–64).
    pub name: String,
    /// What to count by.
    pub key: KeyConfig,
    /// Requests allowed per `per`.
    pub requests: u32,
    /// The period.
    #[serde(with = "duration")]
    pub per: Duration,
    /// The largest burst (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Group IPv6 clients by this prefix length (client-IP keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
    /// The most keys tracked (default 100,000).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Decide this policy in Redis, shared by every replica (needs `redis`).
    #[serde(default)]
    pub global: bool,
}

/// The Redis shared by replicas for global policies.
///
/// ```yaml
/// redis: { url: "redis://redis.portcullis.svc:6379/0", timeout: 20ms, failureMode: failOpen }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The key prefix (default `portcullis`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The per-call timeout (default 20 ms).
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub timeout: Duration,
    /// What happens when Redis cannot answer (default `failOpen`: decide locally).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How long Redis is left alone after a failure (default 1 s).
    #[serde(default = "default_backoff", with = "duration")]
    pub backoff: Duration,
}

fn default_prefix() -> String {
    "portcullis".into()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(20)
}

fn default_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_max_keys() -> usize {
    100_000
}

/// Brute-force throttling.
///
/// ```yaml
/// bruteForce: { statuses: [401, 403], failures: 10, per: 5m, lockout: 15m }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BruteForceConfig {
    /// The response statuses that count as failures.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Failures allowed per `per` before the lock-out.
    pub failures: u32,
    /// The period failures are counted over.
    #[serde(with = "duration")]
    pub per: Duration,
    /// How long a client is locked out.
    #[serde(with = "duration")]
    pub lockout: Duration,
    /// What identifies a client (default: its address).
    #[serde(default = "default_bf_key")]
    pub key: KeyConfig,
    /// The most clients tracked.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_statuses() -> Vec<u16> {
    vec![401, 403]
}

fn default_bf_key() -> KeyConfig {
    KeyConfig::Named(KeyName::ClientIp)
}

/// Rate limiting for a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The policies; the most restrictive applicable one decides.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Send `RateLimit-Policy`/`RateLimit` on allowed responses too (default true).
    #[serde(default = "yes")]
    pub headers_on_success: bool,
    /// Brute-force throttling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brute_force: Option<BruteForceConfig>,
    /// Redis for global policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

fn yes() -> bool {
    true
}

fn positive(field: String, n: u32, fix: &str) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(n).ok_or_else(|| ConfigError::new(field, "must be at least 1", fix))
}

impl<C: Clock + Clone> RateLimitLayer<C> {
    /// Builds the layer from `config` on `clock` (tests pass governor's `FakeRelativeClock`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field at fault.
    pub fn from_config(config: &RateLimitConfig, clock: C) -> Result<Self, ConfigError> {
        if config.policies.is_empty() && config.brute_force.is_none() {
            return Err(ConfigError::new(
                "policies",
                "no policy is configured",
                "add a policy or `bruteForce`",
            ));
        }
        let redis = match &config.redis {
            None => None,
            Some(r) => {
                if r.timeout.is_zero() {
                    return Err(ConfigError::new(
                        "redis.timeout",
                        "zero",
                        "use a few milliseconds, e.g. 20ms",
                    ));
                }
                let limiter = RedisLimiter::new(&r.url, &r.prefix, r.timeout, r.failure_mode)
                    .map_err(|e| ConfigError::new("redis.url", e, "write `redis://host:port/db`"))?
                    .with_backoff(r.backoff);
                Some(std::sync::Arc::new(limiter))
            }
        };
        let mut policies = Vec::with_capacity(config.policies.len());
        for (i, p) in config.policies.iter().enumerate() {
            let field = |n: &str| format!("policies[{i}].{n}");
            if policies
                .iter()
                .any(|q: &RateLimitPolicy<C>| q.name() == p.name)
            {
                return Err(ConfigError::new(
                    field("name"),
                    format!("`{}` is used twice", p.name),
                    "give every policy its own name",
                ));
            }
            if let Some(prefix) = p.ipv6_prefix.filter(|n| *n > 128) {
                return Err(ConfigError::new(
                    field("ipv6Prefix"),
                    format!("{prefix} is over 128"),
                    "use a prefix length such as 64",
                ));
            }
            let requests = positive(
                field("requests"),
                p.requests,
                "allow at least one request per period",
            )?;
            let burst = positive(
                field("burst"),
                p.burst.unwrap_or(p.requests),
                "allow bursts of at least one",
            )?;
            let max_keys = NonZeroUsize::new(p.max_keys).ok_or_else(|| {
                ConfigError::new(field("maxKeys"), "must be at least 1", "use e.g. 100000")
            })?;
            let policy = RateLimitPolicy::new(&p.name, spec(&field("key"), &p.key, p.ipv6_prefix)?, requests, p.per, burst, max_keys, clock.clone())
                .map_err(|e| ConfigError::new(format!("policies[{i}]"), e.to_string(), "use a name of letters, digits, `.`, `-`, `_`, and a period longer than the requests count in nanoseconds"))?;
            let policy = match (p.global, &redis) {
                (false, _) => policy,
                (true, Some(r)) => policy.with_global(std::sync::Arc::clone(r)),
                (true, None) => {
                    return Err(ConfigError::new(
                        field("global"),
                        "the policy is global but no Redis is configured",
                        "configure `redis`, or set `global: false`",
                    ));
                }
            };
            policies.push(policy);
        }
        let brute_force = match &config.brute_force {
            None => None,
            Some(b) => {
                let statuses = b
                    .statuses
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        StatusCode::from_u16(*s).map_err(|_| {
                            ConfigError::new(
                                format!("bruteForce.statuses[{i}]"),
                                format!("{s} is not an HTTP status"),
                                "use e.g. 401",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let failures = positive(
                    "bruteForce.failures".into(),
                    b.failures,
                    "allow at least one failure",
                )?;
                let max_keys = NonZeroUsize::new(b.max_keys).ok_or_else(|| {
                    ConfigError::new(
                        "bruteForce.maxKeys",
                        "must be at least 1",
                        "use e.g. 100000",
                    )
                })?;
                if b.lockout.is_zero() {
                    return Err(ConfigError::new(
                        "bruteForce.lockout",
                        "zero",
                        "lock out for a while, e.g. 15m",
                    ));
                }
                Some(
                    BruteForcePolicy::new(spec("bruteForce.key", &b.key, Some(64))?, statuses, failures, b.per, b.lockout, max_keys, clock.clone())
                        .map_err(|e| ConfigError::new("bruteForce", e.to_string(), "list statuses and a period longer than the failures count in nanoseconds"))?,
                )
            }
        };
        Ok(Self::new(policies, brute_force, config.headers_on_success))
    }
}

impl TryFrom<&RateLimitConfig> for RateLimitLayer<DefaultClock> {
    type Error = ConfigError;

    fn try_from(config: &RateLimitConfig) -> Result<Self, ConfigError> {
        Self::from_config(config, DefaultClock::default())
    }
}
