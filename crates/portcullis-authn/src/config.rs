//! Serde configuration, shared by policies, manifest files and library users.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderName;
use jsonwebtoken::Algorithm;
use portcullis_core::{ConfigError, duration};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apikey::{ApiKeyConfig, ApiKeyStore};
use crate::authenticator::{
    ASYMMETRIC_ALGORITHMS, Authenticator, DEFAULT_API_KEY_HEADER, DEFAULT_LEEWAY,
    DEFAULT_MAX_TOKEN_SIZE, IssuerBuilder, SubjectFrom,
};
use crate::authz::{AuthzConfig, AuthzRules};
use crate::fetch::{HttpFetch, HttpsFetcher, roots_from_pem, webpki_roots};
use crate::jwks::{CachePolicy, Jwks};
use crate::keys::KeySet;
use crate::layer::AuthnLayer;

/// A credential method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    /// `Authorization: Bearer <jwt>`.
    Jwt,
    /// An API key header.
    ApiKey,
    /// The client certificate alone.
    ClientCertificate,
}

/// Authentication and authorization for a route.
///
/// ```yaml
/// methods: [jwt, apiKey]
/// realm: models
/// stripCredentials: true
/// jwt:
///   leeway: 60s
///   issuers:
///     - issuer: https://login.example.org/
///       audiences: [api://models]
///       algorithms: [RS256, ES256]
///       jwks: { discovery: true }
///       claims: { tenant: tid, roles: roles }
/// apiKeys:
///   header: x-api-key
///   keys:
///     - { id: batch, sha256: 9f86d0..., subject: svc-batch, scopes: [embeddings] }
/// authorization:
///   scopes: { any: [chat:write, embeddings] }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthnConfig {
    /// The accepted credential methods (default: those configured below).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    /// The realm named in challenges.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove the credential header before the request goes upstream.
    #[serde(default)]
    pub strip_credentials: bool,
    /// Bearer JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysConfig>,
    /// Client certificates as credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateConfig>,
    /// Authorization rules.
    #[serde(default)]
    pub authorization: AuthzConfig,
}

fn default_realm() -> String {
    "portcullis".into()
}

/// Bearer JWT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtConfig {
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// The largest token accepted, in bytes.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: usize,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Accept tokens without `exp` (they never expire).
    #[serde(default)]
    pub allow_tokens_without_expiry: bool,
    /// Require certificate-bound tokens (RFC 8705).
    #[serde(default)]
    pub require_bound_tokens: bool,
    /// The verified-token cache.
    #[serde(default)]
    pub cache: TokenCacheConfig,
    /// How long fetched key sets live and how often they may be refetched.
    #[serde(default)]
    pub jwks_cache: JwksCacheConfig,
}

fn default_max_token_size() -> usize {
    DEFAULT_MAX_TOKEN_SIZE
}

fn default_leeway() -> Duration {
    DEFAULT_LEEWAY
}

/// The verified-token cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Entries kept (0 disables the cache).
    pub capacity: usize,
    /// The longest an entry is kept.
    #[serde(with = "duration")]
    pub max_ttl: Duration,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// Key-set caching, see [`CachePolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksCacheConfig {
    /// Shortest lifetime of a fetched set.
    #[serde(with = "duration")]
    pub min_ttl: Duration,
    /// Longest lifetime of a fetched set.
    #[serde(with = "duration")]
    pub max_ttl: Duration,
    /// Lifetime of a set fetched without `max-age`.
    #[serde(with = "duration")]
    pub default_ttl: Duration,
    /// Least time between refetches triggered by unknown key ids or failures.
    #[serde(with = "duration")]
    pub min_refresh_interval: Duration,
    /// Fetch timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for JwksCacheConfig {
    fn default() -> Self {
        let p = CachePolicy::default();
        Self {
            min_ttl: p.min_ttl,
            max_ttl: p.max_ttl,
            default_ttl: p.default_ttl,
            min_refresh_interval: p.min_refresh_interval,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept any audience (only for issuers minting tokens for this API alone).
    #[serde(default)]
    pub allow_any_audience: bool,
    /// The algorithm allow-list (default: every asymmetric algorithm; HS* only with a secret).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Where the verification keys come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
    /// A shared secret for HS* algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<SecretConfig>,
    /// Where the principal's fields are in the claims.
    #[serde(default)]
    pub claims: ClaimsConfig,
}

/// Where verification keys come from: exactly one of `inline`, `file`, `url` and `discovery`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksConfig {
    /// A JWKS document, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Value>,
    /// A JWKS file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A JWKS URL (`https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Find the JWKS through the issuer's OIDC discovery document.
    #[serde(default)]
    pub discovery: bool,
    /// CA certificates (PEM file) to trust for `url`/`discovery` instead of the web PKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs. Anyone on the path can then replace the keys: tests only.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// A secret: exactly one of `base64` and `file` (whose content is the raw secret).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretConfig {
    /// The secret, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// A file holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretConfig")
            .field("base64", &self.base64.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .finish()
    }
}

/// Where the principal's fields are in a token's claims (dotted paths or JSON pointers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimsConfig {
    /// The subject (default `sub`).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// Scopes (default `scope` and `scp`).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Claims copied into the principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
}

fn default_subject() -> String {
    "sub".into()
}

fn default_scopes() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            subject: default_subject(),
            tenant: None,
            roles: None,
            scopes: default_scopes(),
            keep: Vec::new(),
        }
    }
}

/// API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The header carrying the key.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// The keys (hashes only).
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

fn default_api_key_header() -> String {
    DEFAULT_API_KEY_HEADER.into()
}

/// The client certificate as a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// Which certificate field is the subject.
    #[serde(default)]
    pub subject_from: SubjectFrom,
}

fn secret_bytes(field: &str, secret: &SecretConfig) -> Result<Vec<u8>, ConfigError> {
    match (&secret.base64, &secret.file) {
        (Some(b64), None) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| {
                ConfigError::new(
                    format!("{field}.base64"),
                    "not base64",
                    "encode the secret with standard base64",
                )
            }),
        (None, Some(path)) => std::fs::read(path).map_err(|e| {
            ConfigError::new(
                format!("{field}.file"),
                format!("cannot read {}: {e}", path.display()),
                "point to a readable file holding the secret",
            )
        }),
        _ => Err(ConfigError::new(
            field,
            "exactly one of `base64` and `file` must be set",
            "set one of them",
        )),
    }
}

fn jwks_from_config(
    field: &str,
    issuer: &str,
    config: &JwksConfig,
    cache: &JwksCacheConfig,
) -> Result<Arc<Jwks>, ConfigError> {
    let policy = CachePolicy {
        min_ttl: cache.min_ttl,
        max_ttl: cache.max_ttl,
        default_ttl: cache.default_ttl,
        min_refresh_interval: cache.min_refresh_interval,
    };
    let fetcher = || -> Result<Arc<dyn HttpFetch>, ConfigError> {
        let roots = match &config.ca_file {
            None => webpki_roots(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(
                        format!("{field}.caFile"),
                        format!("cannot read {}: {e}", path.display()),
                        "point to a PEM bundle of CA certificates",
                    )
                })?;
                roots_from_pem(&pem).map_err(|e| {
                    ConfigError::new(
                        format!("{field}.caFile"),
                        e,
                        "point to a PEM bundle of CA certificates",
                    )
                })?
            }
        };
        let fetcher = HttpsFetcher::new(roots, cache.timeout).map_err(|e| {
            ConfigError::new(
                format!("{field}.caFile"),
                e.to_string(),
                "check the CA bundle",
            )
        })?;
        Ok(Arc::new(if config.allow_insecure_http {
            fetcher.allow_insecure_http()
        } else {
            fetcher
        }))
    };
    let set = [
        config.inline.is_some(),
        config.file.is_some(),
        config.url.is_some(),
        config.discovery,
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(ConfigError::new(
            field,
            "exactly one of `inline`, `file`, `url` and `discovery` must be set",
            "choose one key source",
        ));
    }
    if let Some(doc) = &config.inline {
        let keys = KeySet::from_jwks_json(doc.to_string().as_bytes()).map_err(|e| {
            ConfigError::new(
                format!("{field}.inline"),
                e.to_string(),
                "paste a JWKS document with at least one RSA, EC or Ed25519 signature key",
            )
        })?;
        return Ok(Arc::new(Jwks::fixed(keys)));
    }
    if let Some(path) = &config.file {
        return Ok(Arc::new(Jwks::file(path.clone(), policy)));
    }
    if let Some(url) = &config.url {
        if !(url.starts_with("https://")
            || config.allow_insecure_http && url.starts_with("http://"))
        {
            return Err(ConfigError::new(
                format!("{field}.url"),
                "not an https:// URL",
                "serve the JWKS over HTTPS",
            ));
        }
        return Ok(Arc::new(Jwks::url(url.clone(), fetcher()?, policy)));
    }
    if !(issuer.starts_with("https://")
        || config.allow_insecure_http && issuer.starts_with("http://"))
    {
        return Err(ConfigError::new(
            format!("{field}.discovery"),
            "OIDC discovery needs an https:// issuer",
            "use `url` or `file` for this issuer",
        ));
    }
    Ok(Arc::new(Jwks::discovery(
        issuer.to_owned(),
        fetcher()?,
        policy,
    )))
}

impl TryFrom<&AuthnConfig> for Authenticator {
    type Error = ConfigError;

    fn try_from(config: &AuthnConfig) -> Result<Self, ConfigError> {
        let wants = |m: Method| config.methods.is_empty() || config.methods.contains(&m);
        for (method, present, name) in [
            (Method::Jwt, config.jwt.is_some(), "jwt"),
            (Method::ApiKey, config.api_keys.is_some(), "apiKeys"),
            (
                Method::ClientCertificate,
                config.client_certificate.is_some(),
                "clientCertificate",
            ),
        ] {
            if config.methods.contains(&method) && !present {
                return Err(ConfigError::new(
                    "methods",
                    format!("`{method:?}` is listed but `{name}` is not configured"),
                    format!("configure `{name}`, or remove the method"),
                ));
            }
        }
        let mut builder = Authenticator::builder()
            .realm(config.realm.clone())
            .strip_credentials(config.strip_credentials)
            .authorization(
                AuthzRules::try_from(&config.authorization).map_err(|e| e.at("authorization"))?,
            );
        if let Some(jwt) = config.jwt.as_ref().filter(|_| wants(Method::Jwt)) {
            if jwt.issuers.is_empty() {
                return Err(ConfigError::new(
                    "jwt.issuers",
                    "no issuer is configured",
                    "add at least one issuer",
                ));
            }
            let size = NonZeroUsize::new(jwt.max_token_size)
                .filter(|s| s.get() <= 64 * 1024)
                .ok_or_else(|| {
                    ConfigError::new(
                        "jwt.maxTokenSize",
                        "out of range",
                        "use 1 to 65536 bytes (default 8192)",
                    )
                })?;
            builder = builder
                .max_token_size(size)
                .leeway(jwt.leeway)
                .require_bound_tokens(jwt.require_bound_tokens);
            if jwt.allow_tokens_without_expiry {
                builder = builder.allow_tokens_without_expiry();
            }
            builder = match NonZeroUsize::new(jwt.cache.capacity) {
                Some(capacity) => builder.token_cache(capacity, jwt.cache.max_ttl),
                None => builder.no_token_cache(),
            };
            for (i, issuer) in jwt.issuers.iter().enumerate() {
                let field = |name: &str| format!("jwt.issuers[{i}].{name}");
                let algorithms = if issuer.algorithms.is_empty() {
                    ASYMMETRIC_ALGORITHMS.to_vec()
                } else {
                    issuer
                        .algorithms
                        .iter()
                        .enumerate()
                        .map(|(j, name)| {
                            Algorithm::from_str(name).map_err(|_| {
                                ConfigError::new(format!("jwt.issuers[{i}].algorithms[{j}]"), format!("`{name}` is not a supported algorithm"), "use RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512 (`none` is never accepted)")
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                let jwks = match &issuer.jwks {
                    Some(j) => Some(jwks_from_config(
                        &field("jwks"),
                        &issuer.issuer,
                        j,
                        &jwt.jwks_cache,
                    )?),
                    None => None,
                };
                let mut b = match jwks {
                    Some(jwks) => IssuerBuilder::new(issuer.issuer.clone(), jwks),
                    None => {
                        let Some(secret) = &issuer.hmac_secret else {
                            return Err(ConfigError::new(
                                field("jwks"),
                                "no key source is configured",
                                "configure `jwks` (or `hmacSecret` with HS* algorithms)",
                            ));
                        };
                        IssuerBuilder::hmac(
                            issuer.issuer.clone(),
                            secret_bytes(&field("hmacSecret"), secret)?,
                        )
                    }
                };
                if let (Some(secret), true) = (&issuer.hmac_secret, issuer.jwks.is_some()) {
                    b = b.hmac_secret(secret_bytes(&field("hmacSecret"), secret)?);
                }
                b = b.algorithms(algorithms);
                for aud in &issuer.audiences {
                    b = b.audience(aud.clone());
                }
                if issuer.allow_any_audience {
                    b = b.allow_any_audience();
                }
                b = b
                    .subject_claim(issuer.claims.subject.clone())
                    .scope_claims(issuer.claims.scopes.clone());
                if let Some(t) = &issuer.claims.tenant {
                    b = b.tenant_claim(t.clone());
                }
                if let Some(r) = &issuer.claims.roles {
                    b = b.roles_claim(r.clone());
                }
                for k in &issuer.claims.keep {
                    b = b.keep_claim(k.clone());
                }
                builder = builder.issuer(b);
            }
        }
        if let Some(api) = config.api_keys.as_ref().filter(|_| wants(Method::ApiKey)) {
            let header = HeaderName::from_bytes(api.header.as_bytes()).map_err(|_| {
                ConfigError::new(
                    "apiKeys.header",
                    format!("`{}` is not a header name", api.header),
                    "use a lowercase header name such as `x-api-key`",
                )
            })?;
            if header == http::header::AUTHORIZATION || header == http::header::COOKIE {
                return Err(ConfigError::new(
                    "apiKeys.header",
                    "this header is reserved",
                    "use a dedicated header such as `x-api-key`",
                ));
            }
            let store = ApiKeyStore::new(&api.keys).map_err(|e| e.at("apiKeys"))?;
            builder = builder.api_keys(header, store);
        }
        if let Some(cert) = config
            .client_certificate
            .as_ref()
            .filter(|_| wants(Method::ClientCertificate))
        {
            builder = builder.client_certificates(cert.subject_from);
        }
        builder.build()
    }
}

impl TryFrom<AuthnConfig> for Authenticator {
    type Error = ConfigError;

    fn try_from(config: AuthnConfig) -> Result<Self, ConfigError> {
        Self::try_from(&config)
    }
}

impl TryFrom<AuthnConfig> for AuthnLayer {
    type Error = ConfigError;

    fn try_from(config: AuthnConfig) -> Result<Self, ConfigError> {
        Authenticator::try_from(&config).map(AuthnLayer::new)
    }
}

#[cfg(test)]
mod tests;
