//! The authenticated caller of a request.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{ValueError, check_text};

/// The longest subject, issuer, tenant or key id kept, in bytes.
pub const MAX_ID_LEN: usize = 1024;
/// The most scopes, and separately the most roles, a principal may carry.
pub const MAX_SCOPES: usize = 256;
/// The longest scope or role, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;
/// The most selected claims a principal may carry.
pub const MAX_CLAIMS: usize = 32;
/// The largest selected claim value, in bytes of compact JSON.
pub const MAX_CLAIM_LEN: usize = 4096;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// A signed JSON Web Token (`Authorization: Bearer ...`).
    Jwt,
    /// An API key.
    ApiKey,
    /// The client certificate alone (mutual TLS).
    ClientCertificate,
}

impl AuthMethod {
    /// `jwt`, `api-key` or `client-certificate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api-key",
            Self::ClientCertificate => "client-certificate",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller, written by authentication and read by rate limiting, the WAF and
/// audit.
///
/// A principal never holds a credential: no token, no key, no secret. It holds who the caller
/// is (subject, issuer, tenant), what it may do (scopes, roles), how it proved it, which key
/// verified it, and the claims a policy asked to keep.
///
/// Every text field is bounded and free of control characters, so a principal can be written
/// to logs and used as a rate-limit key as it is. A principal is immutable once built and
/// shared behind an `Arc`, so cloning it into each request's extensions costs one atomic
/// increment.
///
/// # Examples
///
/// ```
/// use portcullis_core::{AuthMethod, Principal};
///
/// let principal = Principal::builder("user-42", AuthMethod::Jwt)
///     .issuer("https://login.example.org/")
///     .tenant("acme")
///     .scopes(["chat:write", "models:read"])
///     .key_id("2026-11-key")
///     .build()?;
/// assert!(principal.has_scope("chat:write"));
/// assert!(principal.has_all_scopes(["chat:write", "models:read"]));
/// assert!(!principal.has_scope("admin"));
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    inner: Arc<Fields>,
}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Fields {
    subject: String,
    method: AuthMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    scopes: BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    roles: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    claims: BTreeMap<String, serde_json::Value>,
}

impl Principal {
    /// Starts building a principal for `subject`, authenticated by `method`.
    pub fn builder(subject: impl Into<String>, method: AuthMethod) -> PrincipalBuilder {
        PrincipalBuilder {
            fields: Fields {
                subject: subject.into(),
                method,
                issuer: None,
                tenant: None,
                scopes: BTreeSet::new(),
                roles: BTreeSet::new(),
                key_id: None,
                claims: BTreeMap::new(),
            },
        }
    }

    /// The subject: the `sub` claim, the API key's owner, or the certificate's identity.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// How the caller authenticated.
    pub fn method(&self) -> AuthMethod {
        self.inner.method
    }

    /// The token issuer (`iss`), for JWTs.
    pub fn issuer(&self) -> Option<&str> {
        self.inner.issuer.as_deref()
    }

    /// The tenant the caller belongs to, when the policy maps one.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.inner.scopes
    }

    /// The granted roles.
    pub fn roles(&self) -> &BTreeSet<String> {
        &self.inner.roles
    }

    /// The id of the key that verified the credential: the JWT `kid`, or the API key's id
    /// (never the key itself).
    pub fn key_id(&self) -> Option<&str> {
        self.inner.key_id.as_deref()
    }

    /// The claims the policy selected to keep, by name.
    pub fn claims(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.inner.claims
    }

    /// One selected claim.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.inner.claims.get(name)
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.scopes.contains(scope)
    }

    /// Whether every one of `scopes` was granted.
    pub fn has_all_scopes<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> bool {
        scopes.into_iter().all(|s| self.has_scope(s))
    }

    /// Whether `role` was granted.
    pub fn has_role(&self, role: &str) -> bool {
        self.inner.roles.contains(role)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.inner.subject)
            .field("method", &self.inner.method)
            .field("issuer", &self.inner.issuer)
            .field("tenant", &self.inner.tenant)
            .field("scopes", &self.inner.scopes)
            .field("roles", &self.inner.roles)
            .field("key_id", &self.inner.key_id)
            .field("claims", &self.inner.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builder for [`Principal`]; see [`Principal::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PrincipalBuilder {
    fields: Fields,
}

impl PrincipalBuilder {
    /// The token issuer.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.fields.issuer = Some(issuer.into());
        self
    }

    /// The tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.fields.tenant = Some(tenant.into());
        self
    }

    /// Adds scopes (duplicates collapse).
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.fields
            .scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Adds roles (duplicates collapse).
    pub fn roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.fields.roles.extend(roles.into_iter().map(Into::into));
        self
    }

    /// The id of the key that verified the credential.
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.fields.key_id = Some(key_id.into());
        self
    }

    /// Keeps a claim (replacing one of the same name).
    pub fn claim(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.fields.claims.insert(name.into(), value);
        self
    }

    /// Checks the invariants and builds the principal.
    ///
    /// # Errors
    ///
    /// If a text field is empty, too long or holds control characters; a scope or role is
    /// not an RFC 6749 scope token (printable ASCII, no space, `"` or `\`); there are too many
    /// scopes, roles or claims; or a claim value is larger than [`MAX_CLAIM_LEN`].
    pub fn build(self) -> Result<Principal, ValueError> {
        let p = self.fields;
        check_text("principal subject", &p.subject, MAX_ID_LEN)?;
        if let Some(issuer) = &p.issuer {
            check_text("principal issuer", issuer, MAX_ID_LEN)?;
        }
        if let Some(tenant) = &p.tenant {
            check_text("principal tenant", tenant, MAX_ID_LEN)?;
        }
        if let Some(kid) = &p.key_id {
            check_text("principal key id", kid, MAX_ID_LEN)?;
        }
        for (what, set) in [("principal scope", &p.scopes), ("principal role", &p.roles)] {
            if set.len() > MAX_SCOPES {
                return Err(ValueError::new(
                    what,
                    format!("more than {MAX_SCOPES} were granted"),
                ));
            }
            for token in set {
                check_scope_token(what, token)?;
            }
        }
        if p.claims.len() > MAX_CLAIMS {
            return Err(ValueError::new(
                "principal claim",
                format!("more than {MAX_CLAIMS} were selected"),
            ));
        }
        for (name, value) in &p.claims {
            check_text("principal claim name", name, MAX_SCOPE_LEN)?;
            let size = serde_json::to_vec(value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_CLAIM_LEN {
                return Err(ValueError::new(
                    "principal claim",
                    format!("a value is larger than {MAX_CLAIM_LEN} bytes"),
                ));
            }
        }
        Ok(Principal { inner: Arc::new(p) })
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
/// Checks a scope or role token: RFC 6749 §3.3 `scope-token`, 1 to [`MAX_SCOPE_LEN`] bytes of
/// printable ASCII without spaces, `"` or `\`.
///
/// # Errors
///
/// If the token breaks that rule.
pub fn validate_scope_token(token: &str) -> Result<(), ValueError> {
    check_scope_token("scope token", token)
}

fn check_scope_token(what: &'static str, token: &str) -> Result<(), ValueError> {
    if token.is_empty() || token.len() > MAX_SCOPE_LEN {
        return Err(ValueError::new(
            what,
            format!("it must be 1 to {MAX_SCOPE_LEN} bytes"),
        ));
    }
    if !token
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        return Err(ValueError::new(
            what,
            "it may hold only printable ASCII without spaces, `\"` or `\\`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_with_every_field() {
        let p = Principal::builder("svc-a", AuthMethod::ApiKey)
            .tenant("acme")
            .scopes(["b", "a", "a"])
            .roles(["admin"])
            .key_id("key-7")
            .claim("org", json!("acme-inc"))
            .build()
            .unwrap();
        assert_eq!(p.subject(), "svc-a");
        assert_eq!(p.method(), AuthMethod::ApiKey);
        assert_eq!(p.issuer(), None);
        assert_eq!(p.tenant(), Some("acme"));
        assert_eq!(p.scopes().iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(p.has_role("admin"));
        assert!(!p.has_role("user"));
        assert_eq!(p.key_id(), Some("key-7"));
        assert_eq!(p.claim("org"), Some(&json!("acme-inc")));
        assert!(p.has_all_scopes([]));
        assert!(!p.has_all_scopes(["a", "c"]));
        let value = serde_json::to_value(&p).unwrap();
        assert_eq!(value["method"], "api-key");
        assert_eq!(value["scopes"], json!(["a", "b"]));
        assert!(value.get("issuer").is_none());
    }

    #[test]
    fn rejects_unsafe_text() {
        for subject in ["", "a\nb", "a\rb", "\u{1b}[31m"] {
            assert!(
                Principal::builder(subject, AuthMethod::Jwt)
                    .build()
                    .is_err(),
                "{subject:?}"
            );
        }
        assert!(
            Principal::builder("x".repeat(MAX_ID_LEN + 1), AuthMethod::Jwt)
                .build()
                .is_err()
        );
        assert!(
            Principal::builder("ok", AuthMethod::Jwt)
                .issuer("")
                .build()
                .is_err()
        );
        assert!(
            Principal::builder("ok", AuthMethod::Jwt)
                .tenant("t\n")
                .build()
                .is_err()
        );
        assert!(
            Principal::builder("ok", AuthMethod::Jwt)
                .key_id("k\u{0}")
                .build()
                .is_err()
        );
    }

    #[test]
    fn scopes_are_rfc6749_tokens() {
        for bad in ["", "has space", "quote\"", "back\\slash", "tab\t", "é"] {
            assert!(
                Principal::builder("s", AuthMethod::Jwt)
                    .scopes([bad])
                    .build()
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(
            Principal::builder("s", AuthMethod::Jwt)
                .scopes(["read:models", "https://api.example.org/write", "!#[]~"])
                .build()
                .is_ok()
        );
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(
            Principal::builder("s", AuthMethod::Jwt)
                .scopes(many.clone())
                .build()
                .is_err()
        );
        assert!(
            Principal::builder("s", AuthMethod::Jwt)
                .roles(many)
                .build()
                .is_err()
        );
    }

    #[test]
    fn claims_are_bounded() {
        let mut b = Principal::builder("s", AuthMethod::Jwt);
        for i in 0..=MAX_CLAIMS {
            b = b.claim(format!("c{i}"), json!(i));
        }
        assert!(b.build().is_err());
        assert!(
            Principal::builder("s", AuthMethod::Jwt)
                .claim("big", json!("x".repeat(MAX_CLAIM_LEN)))
                .build()
                .is_err()
        );
        assert!(
            Principal::builder("s", AuthMethod::Jwt)
                .claim("bad\nname", json!(1))
                .build()
                .is_err()
        );
    }

    #[test]
    fn debug_lists_claim_names_only() {
        let p = Principal::builder("s", AuthMethod::Jwt)
            .claim("email", json!("someone@example.org"))
            .build()
            .unwrap();
        let debug = format!("{p:?}");
        assert!(debug.contains("email"));
        assert!(!debug.contains("someone@example.org"));
    }

    #[test]
    fn auth_method_names() {
        assert_eq!(AuthMethod::Jwt.to_string(), "jwt");
        assert_eq!(AuthMethod::ApiKey.as_str(), "api-key");
        assert_eq!(
            serde_json::to_string(&AuthMethod::ClientCertificate).unwrap(),
            "\"client-certificate\""
        );
    }
}
