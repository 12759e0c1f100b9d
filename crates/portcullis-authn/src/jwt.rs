//! JWT verification: one parse of the token, the issuer's own rules, one signature check.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use portcullis_core::{AuthMethod, Principal, Thumbprint};
use serde::Deserialize;
use serde_json::Value;

use crate::cache::Verified;
use crate::error::{AuthnError, TokenError};
use crate::jwks::Jwks;
use crate::keys::Lookup;

/// How many keys are tried for a token without `kid`.
pub(crate) const MAX_KIDLESS_CANDIDATES: usize = 3;

/// Where to find the principal's fields in a token's claims (JSON pointers).
#[derive(Debug, Clone)]
pub(crate) struct ClaimMap {
    pub(crate) subject: String,
    pub(crate) tenant: Option<String>,
    pub(crate) roles: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) keep: Vec<(String, String)>,
}

/// One trusted token issuer.
#[derive(Debug)]
pub(crate) struct Issuer {
    pub(crate) iss: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) jwks: Option<Arc<Jwks>>,
    pub(crate) hmac: Option<DecodingKey>,
    pub(crate) claims: ClaimMap,
}

/// Verifies tokens from a set of issuers.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    pub(crate) max_token_size: usize,
    pub(crate) leeway: u64,
    pub(crate) require_exp: bool,
    pub(crate) require_bound: bool,
}

/// The outcome of a verification attempt.
pub(crate) enum Step {
    Done(Result<Verified, AuthnError>),
    /// The issuer's keys must be (re)fetched before the token can be judged.
    NeedKeys {
        jwks: Arc<Jwks>,
        epoch: u64,
    },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn b64(part: &str) -> Result<Vec<u8>, AuthnError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthnError::InvalidToken(TokenError::Malformed))
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional) as whole seconds.
fn numeric_date(claims: &Value, name: &'static str) -> Result<Option<u64>, AuthnError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => {
            let secs = v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .ok_or(AuthnError::InvalidToken(TokenError::BadClaim(name)))?;
            Ok(Some(secs))
        }
    }
}

/// Strings from a claim that is a string (split on spaces) or an array of strings.
fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    pub(crate) fn new(
        issuers: Vec<Issuer>,
        max_token_size: usize,
        leeway: u64,
        require_exp: bool,
        require_bound: bool,
    ) -> Self {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| (issuer.iss.clone(), i))
            .collect();
        Self {
            issuers,
            by_iss,
            max_token_size,
            leeway,
            require_exp,
            require_bound,
        }
    }

    /// The issuers' key sets (for background refresh and status).
    pub(crate) fn key_sets(&self) -> impl Iterator<Item = &Arc<Jwks>> {
        self.issuers.iter().filter_map(|i| i.jwks.as_ref())
    }

    /// Verifies `token` at `now`. With `allow_fetch`, a token whose keys are missing or whose
    /// `kid` is unknown yields [`Step::NeedKeys`] instead of a rejection.
    pub(crate) fn verify(&self, token: &str, now: u64, allow_fetch: bool) -> Step {
        match self.verify_inner(token, now, allow_fetch) {
            Ok(Ok(verified)) => Step::Done(Ok(verified)),
            Ok(Err((jwks, epoch))) => Step::NeedKeys { jwks, epoch },
            Err(err) => Step::Done(Err(err)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn verify_inner(
        &self,
        token: &str,
        now: u64,
        allow_fetch: bool,
    ) -> Result<Result<Verified, (Arc<Jwks>, u64)>, AuthnError> {
        use AuthnError::InvalidToken as Invalid;
        if token.len() > self.max_token_size {
            return Err(Invalid(TokenError::TooLarge));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid(TokenError::Malformed));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
            return Err(Invalid(TokenError::Malformed));
        }
        let header: Header = serde_json::from_slice(&b64(header_b64)?)
            .map_err(|_| Invalid(TokenError::Malformed))?;
        let alg = Algorithm::from_str(&header.alg)
            .map_err(|_| Invalid(TokenError::UnsupportedAlgorithm))?;
        if header.crit.is_some() {
            return Err(Invalid(TokenError::CriticalHeader));
        }
        let claims: Value = serde_json::from_slice(&b64(payload_b64)?)
            .map_err(|_| Invalid(TokenError::Malformed))?;
        if !claims.is_object() {
            return Err(Invalid(TokenError::Malformed));
        }
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|iss| self.by_iss.get(iss))
            .and_then(|&i| self.issuers.get(i))
            .ok_or(Invalid(TokenError::UnknownIssuer))?;
        if !issuer.algorithms.contains(&alg) {
            return Err(Invalid(TokenError::AlgorithmNotAllowed));
        }

        // The signed message is the token up to the second dot.
        let message = token
            .get(..header_b64.len() + 1 + payload_b64.len())
            .ok_or(Invalid(TokenError::Malformed))?;
        let verified = if alg.family() == AlgorithmFamily::Hmac {
            let key = issuer
                .hmac
                .as_ref()
                .ok_or(Invalid(TokenError::HmacNotConfigured))?;
            check_signature(signature, message, key, alg)
        } else {
            let jwks = issuer
                .jwks
                .as_ref()
                .ok_or(Invalid(TokenError::KeyMismatch))?;
            let epoch = jwks.epoch();
            let Some(keys) = jwks.keys() else {
                return if allow_fetch && jwks.refreshable() {
                    Ok(Err((Arc::clone(jwks), epoch)))
                } else {
                    Err(AuthnError::KeysUnavailable)
                };
            };
            jwks.refresh_in_background();
            match keys.lookup(header.kid.as_deref(), alg, MAX_KIDLESS_CANDIDATES) {
                Lookup::Found(candidates) => candidates
                    .iter()
                    .any(|key| check_signature(signature, message, &key.decoding, alg)),
                Lookup::UnknownKid if allow_fetch && jwks.refreshable() => {
                    return Ok(Err((Arc::clone(jwks), epoch)));
                }
                Lookup::UnknownKid => return Err(Invalid(TokenError::UnknownKey)),
                Lookup::Mismatch => return Err(Invalid(TokenError::KeyMismatch)),
            }
        };
        if !verified {
            return Err(Invalid(TokenError::BadSignature));
        }
        self.validate_claims(issuer, header.kid, claims, now)
            .map(Ok)
    }

    fn validate_claims(
        &self,
        issuer: &Issuer,
        kid: Option<String>,
        claims: Value,
        now: u64,
    ) -> Result<Verified, AuthnError> {
        use AuthnError::InvalidToken as Invalid;
        let exp = numeric_date(&claims, "exp")?;
        match exp {
            None if self.require_exp => return Err(Invalid(TokenError::MissingClaim("exp"))),
            Some(exp) if now > exp.saturating_add(self.leeway) => {
                return Err(AuthnError::ExpiredToken);
            }
            _ => {}
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(AuthnError::ExpiredToken);
        }
        if let Some(iat) = numeric_date(&claims, "iat")?
            && iat > now.saturating_add(self.leeway)
        {
            return Err(Invalid(TokenError::IssuedInFuture));
        }
        if !issuer.any_audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => issuer.audiences.iter().any(|a| a == aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| issuer.audiences.iter().any(|a| a == aud)),
                _ => false,
            };
            if !ok {
                return Err(Invalid(TokenError::BadAudience));
            }
        }
        let bound_to = match claims.pointer("/cnf/x5t#S256") {
            None => None,
            Some(v) => {
                let bytes = v
                    .as_str()
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(Invalid(TokenError::BadClaim("cnf")))?;
                Some(Thumbprint::from_bytes(bytes))
            }
        };
        if self.require_bound && bound_to.is_none() {
            return Err(Invalid(TokenError::NotCertificateBound));
        }

        let map = &issuer.claims;
        let subject = claims
            .pointer(&map.subject)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Invalid(TokenError::MissingClaim("sub")))?;
        let mut builder = Principal::builder(subject, AuthMethod::Jwt).issuer(issuer.iss.clone());
        if let Some(tenant) = map
            .tenant
            .as_deref()
            .and_then(|p| claims.pointer(p))
            .and_then(Value::as_str)
        {
            builder = builder.tenant(tenant);
        }
        for pointer in &map.scopes {
            builder = builder.scopes(string_list(claims.pointer(pointer)));
        }
        if let Some(pointer) = &map.roles {
            builder = builder.roles(string_list(claims.pointer(pointer)));
        }
        if let Some(kid) = kid {
            builder = builder.key_id(kid);
        }
        for (name, pointer) in &map.keep {
            if let Some(v) = claims.pointer(pointer) {
                builder = builder.claim(name.clone(), v.clone());
            }
        }
        let principal = builder
            .build()
            .map_err(|_| Invalid(TokenError::BadClaim("principal")))?;
        Ok(Verified {
            principal,
            claims: Arc::new(claims),
            exp,
            bound_to,
        })
    }
}

fn check_signature(signature: &str, message: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg).unwrap_or(false)
}
