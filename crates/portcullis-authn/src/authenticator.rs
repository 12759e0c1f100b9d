//! The authenticator: credentials in, a principal (or a reason) out. No tower in here.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName};
use http::{Extensions, HeaderMap, Request};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use portcullis_core::{
    AuthMethod, Clock, ConfigError, PeerCertificate, Principal, Problem, SystemClock, Thumbprint,
};
use serde::{Deserialize, Serialize};

use crate::apikey::{ApiKeyStore, ct_eq};
use crate::authz::{AuthzRules, claim_pointer};
use crate::cache::{TokenCache, Verified, token_key};
use crate::error::{AuthnError, Challenge, TokenError};
use crate::jwks::Jwks;
use crate::jwt::{ClaimMap, Issuer, JwtVerifier, Step};

/// The default maximum token size (8 KiB).
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 8 * 1024;
/// The default clock-skew allowance for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The longest leeway accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The default header API keys are read from.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// Which field of a client certificate becomes the principal's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum SubjectFrom {
    /// The SPIFFE ID (certificates without one are rejected).
    #[default]
    SpiffeId,
    /// The first DNS SAN.
    DnsSan,
    /// The subject distinguished name.
    Subject,
}

/// One trusted JWT issuer, for [`AuthenticatorBuilder::issuer`].
#[must_use]
pub struct IssuerBuilder {
    iss: String,
    audiences: Vec<String>,
    any_audience: bool,
    algorithms: Vec<Algorithm>,
    jwks: Option<Arc<Jwks>>,
    hmac: Option<Vec<u8>>,
    subject_claim: String,
    tenant_claim: Option<String>,
    roles_claim: Option<String>,
    scope_claims: Vec<String>,
    keep_claims: Vec<String>,
}

impl fmt::Debug for IssuerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerBuilder")
            .field("iss", &self.iss)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("hmac", &self.hmac.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Every asymmetric algorithm: the default allow-list (HMAC is never on by default).
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl IssuerBuilder {
    /// Tokens whose `iss` is exactly `iss`, verified with `jwks`, for any of the asymmetric
    /// algorithms. Add audiences with [`audience`](Self::audience).
    pub fn new(iss: impl Into<String>, jwks: Arc<Jwks>) -> Self {
        Self {
            iss: iss.into(),
            audiences: Vec::new(),
            any_audience: false,
            algorithms: ASYMMETRIC_ALGORITHMS.to_vec(),
            jwks: Some(jwks),
            hmac: None,
            subject_claim: "sub".into(),
            tenant_claim: None,
            roles_claim: None,
            scope_claims: vec!["scope".into(), "scp".into()],
            keep_claims: Vec::new(),
        }
    }

    /// Tokens from `iss` signed with a shared HMAC secret (HS256 only unless
    /// [`algorithms`](Self::algorithms) says otherwise). The secret must be at least 32 bytes.
    pub fn hmac(iss: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            iss: iss.into(),
            audiences: Vec::new(),
            any_audience: false,
            algorithms: vec![Algorithm::HS256],
            jwks: None,
            hmac: Some(secret.into()),
            subject_claim: "sub".into(),
            tenant_claim: None,
            roles_claim: None,
            scope_claims: vec!["scope".into(), "scp".into()],
            keep_claims: Vec::new(),
        }
    }

    /// Accepts tokens for `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Accepts tokens for any audience. Only for issuers that mint tokens for this API alone.
    pub fn allow_any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// Replaces the algorithm allow-list.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Adds an HMAC secret (for `HS*` algorithms in the allow-list).
    pub fn hmac_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.hmac = Some(secret.into());
        self
    }

    /// The claim holding the subject (default `sub`); a dotted path or JSON pointer.
    pub fn subject_claim(mut self, path: impl Into<String>) -> Self {
        self.subject_claim = path.into();
        self
    }

    /// The claim holding the tenant.
    pub fn tenant_claim(mut self, path: impl Into<String>) -> Self {
        self.tenant_claim = Some(path.into());
        self
    }

    /// The claim holding roles (an array, or a space-separated string).
    pub fn roles_claim(mut self, path: impl Into<String>) -> Self {
        self.roles_claim = Some(path.into());
        self
    }

    /// The claims holding scopes (default `scope` and `scp`).
    pub fn scope_claims<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.scope_claims = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Claims to copy into the principal (for rules further in and the audit log).
    pub fn keep_claim(mut self, path: impl Into<String>) -> Self {
        self.keep_claims.push(path.into());
        self
    }

    fn build(self, i: usize) -> Result<Issuer, ConfigError> {
        let field = |name: &str| format!("jwt.issuers[{i}].{name}");
        if self.iss.is_empty() {
            return Err(ConfigError::new(
                field("issuer"),
                "it is empty",
                "write the exact `iss` value the issuer puts in its tokens",
            ));
        }
        if self.audiences.is_empty() && !self.any_audience {
            return Err(ConfigError::new(
                field("audiences"),
                "no audience is configured",
                "list the audiences this API accepts (the `aud` its tokens carry), or set `allowAnyAudience: true` if this issuer mints tokens for this API alone",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(
                field("algorithms"),
                "the allow-list is empty",
                "list the algorithms the issuer signs with, e.g. [RS256]",
            ));
        }
        let uses_hmac = self
            .algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let uses_keys = self
            .algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);
        let hmac = match (&self.hmac, uses_hmac) {
            (None, true) => {
                return Err(ConfigError::new(
                    field("algorithms"),
                    "an HS* algorithm is allowed but no HMAC secret is configured",
                    "configure `hmacSecret`, or remove the HS* algorithms",
                ));
            }
            (Some(secret), true) => {
                let need = self
                    .algorithms
                    .iter()
                    .map(|a| match a {
                        Algorithm::HS384 => 48,
                        Algorithm::HS512 => 64,
                        _ => 32,
                    })
                    .max()
                    .unwrap_or(32);
                if secret.len() < need {
                    return Err(ConfigError::new(
                        field("hmacSecret"),
                        format!("the secret is shorter than {need} bytes"),
                        "use a random secret at least as long as the hash (RFC 7518 §3.2)",
                    ));
                }
                Some(DecodingKey::from_secret(secret))
            }
            (_, false) => None,
        };
        let jwks = if uses_keys {
            Some(self.jwks.ok_or_else(|| {
                ConfigError::new(
                    field("jwks"),
                    "asymmetric algorithms are allowed but no key set is configured",
                    "configure `jwks`",
                )
            })?)
        } else {
            None
        };
        let pointer = |name: &str, path: &str| {
            claim_pointer(path).ok_or_else(|| {
                ConfigError::new(
                    field(name),
                    format!("`{path}` is not a claim path"),
                    "write a dotted path (`realm_access.roles`) or a JSON pointer (`/a~1b`)",
                )
            })
        };
        let claims = ClaimMap {
            subject: pointer("claims.subject", &self.subject_claim)?,
            tenant: self
                .tenant_claim
                .as_deref()
                .map(|p| pointer("claims.tenant", p))
                .transpose()?,
            roles: self
                .roles_claim
                .as_deref()
                .map(|p| pointer("claims.roles", p))
                .transpose()?,
            scopes: self
                .scope_claims
                .iter()
                .map(|p| pointer("claims.scopes", p))
                .collect::<Result<_, _>>()?,
            keep: self
                .keep_claims
                .iter()
                .map(|p| pointer("claims.keep", p).map(|ptr| (p.clone(), ptr)))
                .collect::<Result<_, _>>()?,
        };
        Ok(Issuer {
            iss: self.iss,
            audiences: self.audiences,
            any_audience: self.any_audience,
            algorithms: self.algorithms,
            jwks,
            hmac,
            claims,
        })
    }
}

/// Builds an [`Authenticator`].
#[must_use]
#[derive(Debug)]
pub struct AuthenticatorBuilder {
    issuers: Vec<IssuerBuilder>,
    api_keys: Option<(HeaderName, ApiKeyStore)>,
    certificates: Option<SubjectFrom>,
    authz: AuthzRules,
    strip: bool,
    realm: String,
    leeway: Duration,
    max_token_size: usize,
    require_exp: bool,
    require_bound: bool,
    cache: Option<(usize, Duration)>,
    clock: Arc<dyn Clock>,
}

impl AuthenticatorBuilder {
    /// Accepts bearer JWTs from this issuer (call once per issuer).
    pub fn issuer(mut self, issuer: IssuerBuilder) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Accepts API keys from `header`.
    pub fn api_keys(mut self, header: HeaderName, store: ApiKeyStore) -> Self {
        self.api_keys = Some((header, store));
        self
    }

    /// Accepts the client certificate alone as a credential (mTLS-only machine clients).
    pub fn client_certificates(mut self, subject_from: SubjectFrom) -> Self {
        self.certificates = Some(subject_from);
        self
    }

    /// Authorization rules every principal must satisfy.
    pub fn authorization(mut self, rules: AuthzRules) -> Self {
        self.authz = rules;
        self
    }

    /// Removes the credential header before the request goes further in (default: kept).
    pub fn strip_credentials(mut self, strip: bool) -> Self {
        self.strip = strip;
        self
    }

    /// The realm named in challenges (default `portcullis`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Clock-skew allowance for `exp`, `nbf`, `iat` (default 60 s, at most 300 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The largest token accepted (default 8 KiB).
    pub fn max_token_size(mut self, size: NonZeroUsize) -> Self {
        self.max_token_size = size.get();
        self
    }

    /// Accepts tokens without `exp`. Such tokens never expire: avoid.
    pub fn allow_tokens_without_expiry(mut self) -> Self {
        self.require_exp = false;
        self
    }

    /// Requires every token to be certificate-bound (RFC 8705 `cnf.x5t#S256`).
    pub fn require_bound_tokens(mut self, require: bool) -> Self {
        self.require_bound = require;
        self
    }

    /// Caches verified tokens: about `capacity` entries, each for at most `max_ttl` (default:
    /// 10,000 entries, 5 minutes).
    pub fn token_cache(mut self, capacity: NonZeroUsize, max_ttl: Duration) -> Self {
        self.cache = Some((capacity.get(), max_ttl));
        self
    }

    /// Verifies every token with its signature, every time.
    pub fn no_token_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// The wall clock for token lifetimes (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the authenticator.
    ///
    /// # Errors
    ///
    /// If no credential method is configured, an issuer is unusable (see [`IssuerBuilder`]),
    /// the leeway exceeds [`MAX_LEEWAY`], or the realm holds characters that cannot be quoted
    /// in a challenge.
    pub fn build(self) -> Result<Authenticator, ConfigError> {
        if self.issuers.is_empty() && self.api_keys.is_none() && self.certificates.is_none() {
            return Err(ConfigError::new(
                "methods",
                "no credential method is configured",
                "configure `jwt` issuers, `apiKeys`, or `clientCertificate`",
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::new(
                "jwt.leeway",
                "more than 5 minutes",
                "use at most 300s; larger skews hide broken clocks",
            ));
        }
        if self.realm.is_empty()
            || self.realm.len() > 128
            || !self
                .realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
        {
            return Err(ConfigError::new(
                "realm",
                "not a usable realm",
                "use up to 128 printable ASCII characters, without `\"` or `\\`",
            ));
        }
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for (i, issuer) in self.issuers.into_iter().enumerate() {
            let issuer = issuer.build(i)?;
            if issuers.iter().any(|other: &Issuer| other.iss == issuer.iss) {
                return Err(ConfigError::new(
                    format!("jwt.issuers[{i}].issuer"),
                    "the issuer is listed twice",
                    "merge the two entries",
                ));
            }
            issuers.push(issuer);
        }
        let jwt = (!issuers.is_empty()).then(|| {
            JwtVerifier::new(
                issuers,
                self.max_token_size,
                self.leeway.as_secs(),
                self.require_exp,
                self.require_bound,
            )
        });
        let challenge = Challenge {
            realm: self.realm,
            bearer: jwt.is_some(),
            api_key_header: self.api_keys.as_ref().map(|(h, _)| h.as_str().to_owned()),
            required_scopes: self.authz.required_scopes(),
        };
        Ok(Authenticator {
            inner: Arc::new(Inner {
                jwt,
                api_keys: self.api_keys,
                certificates: self.certificates,
                authz: self.authz,
                strip: self.strip,
                cache: self
                    .cache
                    .map(|(capacity, ttl)| TokenCache::new(capacity, ttl.as_secs())),
                clock: self.clock,
                challenge,
            }),
        })
    }
}

struct Inner {
    jwt: Option<JwtVerifier>,
    api_keys: Option<(HeaderName, ApiKeyStore)>,
    certificates: Option<SubjectFrom>,
    authz: AuthzRules,
    strip: bool,
    cache: Option<TokenCache>,
    clock: Arc<dyn Clock>,
    challenge: Challenge,
}

/// Authenticates and authorizes requests. Cheap to clone; clones share key sets and caches.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use http::Request;
/// use portcullis_authn::{ApiKeyConfig, ApiKeyStore, Authenticator, hash_api_key};
///
/// let store = ApiKeyStore::new(&[ApiKeyConfig {
///     id: "batch".into(),
///     sha256: hash_api_key("sk-test-123"),
///     subject: "svc-batch".into(),
///     tenant: None,
///     scopes: vec![],
///     roles: vec![],
///     expires: None,
/// }])?;
/// let auth = Authenticator::builder()
///     .api_keys(http::HeaderName::from_static("x-api-key"), store)
///     .build()?;
/// let request = Request::get("/v1/models").header("x-api-key", "sk-test-123").body(())?;
/// let principal = auth.authenticate_now(request.headers(), request.extensions())?;
/// assert_eq!(principal.subject(), "svc-batch");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.inner.jwt.is_some())
            .field(
                "api_keys",
                &self.inner.api_keys.as_ref().map(|(h, s)| (h, s.len())),
            )
            .field("certificates", &self.inner.certificates)
            .field("realm", &self.inner.challenge.realm)
            .finish_non_exhaustive()
    }
}

/// A credential found in a request.
enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a [u8]),
    Certificate(&'a PeerCertificate),
}

/// A successful authentication: the principal, and which header to strip.
#[derive(Debug, Clone)]
pub struct Authenticated {
    principal: Principal,
    strip: Option<HeaderName>,
}

impl Authenticated {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Puts the principal into the request's extensions and strips the credential header if
    /// so configured.
    pub fn apply<B>(self, request: &mut Request<B>) {
        if let Some(name) = self.strip {
            request.headers_mut().remove(name);
        }
        request.extensions_mut().insert(self.principal);
    }
}

/// What [`Authenticator::check`] found without waiting.
pub enum Check {
    /// Decided.
    Done(Result<Authenticated, AuthnError>),
    /// Keys must be fetched first; finish with [`Pending::resolve`].
    Pending(Pending),
}

/// An authentication waiting for keys.
pub struct Pending {
    token: String,
    strip: Option<HeaderName>,
    peer: Option<Thumbprint>,
    jwks: Arc<Jwks>,
    epoch: u64,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Fetches the keys (single-flight) and finishes the authentication.
    ///
    /// # Errors
    ///
    /// As for [`Authenticator::check`].
    pub async fn resolve(self, auth: &Authenticator) -> Result<Authenticated, AuthnError> {
        self.jwks.refresh(self.epoch).await;
        let now = auth.inner.clock.now_unix();
        let Some(jwt) = &auth.inner.jwt else {
            return Err(AuthnError::MissingCredentials);
        };
        match jwt.verify(&self.token, now, false) {
            Step::Done(result) => auth
                .finish_bearer(
                    auth.inner.cache.as_ref().map(|_| token_key(&self.token)),
                    result,
                    self.peer.as_ref(),
                    now,
                )
                .map(|principal| Authenticated {
                    principal,
                    strip: self.strip,
                }),
            Step::NeedKeys { .. } => Err(AuthnError::KeysUnavailable),
        }
    }
}

fn bearer_token(value: &http::HeaderValue) -> Option<Result<&str, AuthnError>> {
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    // RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let ok = !token.is_empty()
        && token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    Some(if ok {
        Ok(token)
    } else {
        Err(AuthnError::InvalidToken(TokenError::Malformed))
    })
}

impl Authenticator {
    /// Starts building an authenticator.
    pub fn builder() -> AuthenticatorBuilder {
        AuthenticatorBuilder {
            issuers: Vec::new(),
            api_keys: None,
            certificates: None,
            authz: AuthzRules::allow_all(),
            strip: false,
            realm: "portcullis".into(),
            leeway: DEFAULT_LEEWAY,
            max_token_size: DEFAULT_MAX_TOKEN_SIZE,
            require_exp: true,
            require_bound: false,
            cache: Some((10_000, Duration::from_secs(300))),
            clock: Arc::new(SystemClock),
        }
    }

    /// The key sets of the configured issuers (for status and readiness).
    pub fn key_sets(&self) -> Vec<Arc<Jwks>> {
        self.inner
            .jwt
            .as_ref()
            .map(|j| j.key_sets().cloned().collect())
            .unwrap_or_default()
    }

    /// The verified-token cache, if enabled.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.inner.cache.as_ref()
    }

    /// The rejection response for `err`, with this authenticator's challenges.
    pub fn problem(&self, err: &AuthnError) -> Problem {
        err.problem(&self.inner.challenge)
    }

    fn credential<'a>(
        &self,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> Result<(Credential<'a>, Option<HeaderName>), AuthnError> {
        let mut found = None;
        if self.inner.jwt.is_some() {
            let mut bearers = headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter_map(bearer_token);
            if let Some(token) = bearers.next() {
                if bearers.next().is_some() {
                    return Err(AuthnError::AmbiguousCredentials);
                }
                found = Some((Credential::Bearer(token?), Some(AUTHORIZATION)));
            }
        }
        if let Some((name, _)) = &self.inner.api_keys {
            let mut keys = headers.get_all(name).iter();
            if let Some(key) = keys.next() {
                if keys.next().is_some() || found.is_some() {
                    return Err(AuthnError::AmbiguousCredentials);
                }
                found = Some((Credential::ApiKey(key.as_bytes()), Some(name.clone())));
            }
        }
        if let Some(found) = found {
            return Ok(found);
        }
        if self.inner.certificates.is_some()
            && let Some(cert) = extensions.get::<PeerCertificate>()
        {
            return Ok((Credential::Certificate(cert), None));
        }
        Err(AuthnError::MissingCredentials)
    }

    /// Authenticates and authorizes a request without waiting, or says what it is waiting for.
    pub fn check(&self, headers: &HeaderMap, extensions: &Extensions) -> Check {
        let (credential, header) = match self.credential(headers, extensions) {
            Ok(found) => found,
            Err(err) => return Check::Done(Err(err)),
        };
        let strip = if self.inner.strip { header } else { None };
        let now = self.inner.clock.now_unix();
        let peer = || {
            extensions
                .get::<PeerCertificate>()
                .map(PeerCertificate::thumbprint)
        };
        let result = match credential {
            Credential::Bearer(token) => {
                let Some(jwt) = &self.inner.jwt else {
                    return Check::Done(Err(AuthnError::MissingCredentials));
                };
                // Hash the token only when there is a cache to look it up in.
                let key = self.inner.cache.as_ref().map(|_| token_key(token));
                let hit = self
                    .inner
                    .cache
                    .as_ref()
                    .zip(key.as_ref())
                    .and_then(|(cache, key)| cache.get(key, now));
                if let Some(hit) = hit {
                    self.authorize_bearer(&hit, peer().as_ref())
                } else {
                    match jwt.verify(token, now, true) {
                        Step::Done(result) => self.finish_bearer(key, result, peer().as_ref(), now),
                        Step::NeedKeys { jwks, epoch } => {
                            return Check::Pending(Pending {
                                token: token.to_owned(),
                                strip,
                                peer: peer(),
                                jwks,
                                epoch,
                            });
                        }
                    }
                }
            }
            Credential::ApiKey(key) => match &self.inner.api_keys {
                Some((_, store)) => store
                    .verify(key, now)
                    .map_err(AuthnError::InvalidApiKey)
                    .and_then(|p| self.inner.authz.check(p, None).map(|()| p.clone())),
                None => Err(AuthnError::MissingCredentials),
            },
            Credential::Certificate(cert) => self
                .certificate_principal(cert)
                .and_then(|p| self.inner.authz.check(&p, None).map(|()| p)),
        };
        Check::Done(result.map(|principal| Authenticated { principal, strip }))
    }

    /// Authenticates without ever waiting: a request whose keys must be fetched fails with
    /// [`AuthnError::KeysUnavailable`]. For synchronous callers and examples; the layer
    /// uses [`check`](Self::check) and waits when it must.
    ///
    /// # Errors
    ///
    /// Why the request is not authenticated or not authorized.
    pub fn authenticate_now(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Principal, AuthnError> {
        match self.check(headers, extensions) {
            Check::Done(result) => result.map(|a| a.principal),
            Check::Pending(_) => Err(AuthnError::KeysUnavailable),
        }
    }

    /// Authenticates, fetching keys if needed.
    ///
    /// # Errors
    ///
    /// Why the request is not authenticated or not authorized.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Principal, AuthnError> {
        match self.check(headers, extensions) {
            Check::Done(result) => result.map(|a| a.principal),
            Check::Pending(pending) => pending.resolve(self).await.map(|a| a.principal),
        }
    }

    fn finish_bearer(
        &self,
        key: Option<[u8; 32]>,
        result: Result<Verified, AuthnError>,
        peer: Option<&Thumbprint>,
        now: u64,
    ) -> Result<Principal, AuthnError> {
        let verified = Arc::new(result?);
        if let (Some(cache), Some(key)) = (&self.inner.cache, key) {
            cache.insert(key, Arc::clone(&verified), now);
        }
        self.authorize_bearer(&verified, peer)
    }

    fn authorize_bearer(
        &self,
        verified: &Verified,
        peer: Option<&Thumbprint>,
    ) -> Result<Principal, AuthnError> {
        if let Some(bound) = &verified.bound_to {
            let matches = peer.is_some_and(|p| ct_eq(p.as_bytes(), bound.as_bytes()));
            if !matches {
                return Err(AuthnError::InvalidToken(TokenError::CertificateMismatch));
            }
        }
        self.inner
            .authz
            .check(&verified.principal, Some(&verified.claims))?;
        Ok(verified.principal.clone())
    }

    fn certificate_principal(&self, cert: &PeerCertificate) -> Result<Principal, AuthnError> {
        let subject = match self.inner.certificates.unwrap_or_default() {
            SubjectFrom::SpiffeId => cert.spiffe_id().map(|id| id.as_str().to_owned()),
            SubjectFrom::DnsSan => cert.dns_sans().first().cloned(),
            SubjectFrom::Subject => Some(cert.subject().to_owned()).filter(|s| !s.is_empty()),
        }
        .ok_or(AuthnError::MissingCredentials)?;
        Principal::builder(subject, AuthMethod::ClientCertificate)
            .key_id(cert.thumbprint().to_string())
            .build()
            .map_err(|_| AuthnError::MissingCredentials)
    }
}

#[cfg(test)]
mod tests;
