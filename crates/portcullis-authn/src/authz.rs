//! Authorization rules: required scopes and roles, and conditions on claims.

use portcullis_core::{ConfigError, Principal, validate_scope_token};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AuthnError;

/// Which of a list is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Requirement {
    /// Every item.
    All(Vec<String>),
    /// At least one item.
    Any(Vec<String>),
}

/// A condition on a claim of the token. Exactly one of `equals`, `oneOf` and `contains` is set.
///
/// `claim` is a dotted path (`realm_access.roles`, `org.0.id`) or, for claim names that contain
/// dots or slashes, an RFC 6901 JSON pointer (`/https:~1~1example.org~1tier`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimCondition {
    /// The claim's path.
    pub claim: String,
    /// The claim must equal this JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// The claim must equal one of these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// The claim (an array, or a space-separated string) must contain this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
}

/// Authorization rules as configured.
///
/// ```yaml
/// authorization:
///   scopes: { all: [chat:write] }
///   roles: { any: [ml-engineer, admin] }
///   claims:
///     - { claim: tier, oneOf: [pro, enterprise] }
///     - { claim: realm_access.roles, contains: inference }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzConfig {
    /// Required scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Requirement>,
    /// Required roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Requirement>,
    /// Conditions on claims (all must hold). Principals without claims (API keys, client
    /// certificates) fail every claim condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimCondition>,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Contains(Value),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    pointer: String,
    test: Test,
}

/// Compiled authorization rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthzRules {
    scopes: Option<Requirement>,
    roles: Option<Requirement>,
    claims: Vec<Condition>,
}

/// Turns a claim path into a JSON pointer.
pub(crate) fn claim_pointer(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if path.starts_with('/') {
        return Some(path.to_owned());
    }
    let mut pointer = String::with_capacity(path.len() + 1);
    for segment in path.split('.') {
        if segment.is_empty() {
            return None;
        }
        pointer.push('/');
        pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    Some(pointer)
}

fn check_tokens(field: &str, req: &Requirement) -> Result<(), ConfigError> {
    let (Requirement::All(items) | Requirement::Any(items)) = req;
    if items.is_empty() {
        return Err(ConfigError::new(
            field,
            "the list is empty",
            "list at least one value, or remove the rule",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        validate_scope_token(item).map_err(|_| {
            ConfigError::new(
                format!("{field}[{i}]"),
                "not a valid scope or role token",
                "use printable ASCII without spaces, `\"` or `\\`",
            )
        })?;
    }
    Ok(())
}

impl TryFrom<&AuthzConfig> for AuthzRules {
    type Error = ConfigError;

    fn try_from(config: &AuthzConfig) -> Result<Self, ConfigError> {
        if let Some(req) = &config.scopes {
            check_tokens("scopes", req)?;
        }
        if let Some(req) = &config.roles {
            check_tokens("roles", req)?;
        }
        let mut claims = Vec::with_capacity(config.claims.len());
        for (i, c) in config.claims.iter().enumerate() {
            let pointer = claim_pointer(&c.claim).ok_or_else(|| {
                ConfigError::new(
                    format!("claims[{i}].claim"),
                    "not a claim path",
                    "write a dotted path (`realm_access.roles`) or a JSON pointer (`/a~1b`)",
                )
            })?;
            let test = match (&c.equals, &c.one_of, &c.contains) {
                (Some(v), None, None) => Test::Equals(v.clone()),
                (None, Some(v), None) if !v.is_empty() => Test::OneOf(v.clone()),
                (None, None, Some(v)) => Test::Contains(v.clone()),
                _ => {
                    return Err(ConfigError::new(
                        format!("claims[{i}]"),
                        "a claim condition needs exactly one test",
                        "set one of `equals`, `oneOf` (non-empty) or `contains`",
                    ));
                }
            };
            claims.push(Condition { pointer, test });
        }
        Ok(Self {
            scopes: config.scopes.clone(),
            roles: config.roles.clone(),
            claims,
        })
    }
}

fn satisfied(req: &Requirement, has: impl Fn(&str) -> bool) -> bool {
    match req {
        Requirement::All(items) => items.iter().all(|i| has(i)),
        Requirement::Any(items) => items.iter().any(|i| has(i)),
    }
}

impl AuthzRules {
    /// No rules: every authenticated principal is authorized.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_none() && self.roles.is_none() && self.claims.is_empty()
    }

    /// The required scopes as a space-separated list, for the `scope` challenge parameter.
    pub(crate) fn required_scopes(&self) -> Option<String> {
        match &self.scopes {
            Some(Requirement::All(s) | Requirement::Any(s)) => Some(s.join(" ")),
            None => None,
        }
    }

    /// Checks `principal` (and its token's `claims`, when it has a token).
    ///
    /// # Errors
    ///
    /// [`AuthnError::InsufficientScope`] if the scope rule fails, else
    /// [`AuthnError::Forbidden`] naming the failing rule.
    pub fn check(&self, principal: &Principal, claims: Option<&Value>) -> Result<(), AuthnError> {
        if let Some(req) = &self.scopes
            && !satisfied(req, |s| principal.has_scope(s))
        {
            return Err(AuthnError::InsufficientScope);
        }
        if let Some(req) = &self.roles
            && !satisfied(req, |r| principal.has_role(r))
        {
            return Err(AuthnError::Forbidden("roles"));
        }
        for condition in &self.claims {
            let value = claims.and_then(|c| c.pointer(&condition.pointer));
            let ok = match (&condition.test, value) {
                (_, None) => false,
                (Test::Equals(want), Some(v)) => v == want,
                (Test::OneOf(options), Some(v)) => options.contains(v),
                (Test::Contains(want), Some(Value::Array(items))) => items.contains(want),
                (Test::Contains(Value::String(want)), Some(Value::String(s))) => {
                    s.split(' ').any(|t| t == want)
                }
                (Test::Contains(_), Some(_)) => false,
            };
            if !ok {
                return Err(AuthnError::Forbidden("claims"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;
    use serde_json::json;

    fn principal() -> Principal {
        Principal::builder("u", AuthMethod::Jwt)
            .scopes(["chat:write", "models:read"])
            .roles(["engineer"])
            .build()
            .unwrap()
    }

    fn rules(config: serde_json::Value) -> AuthzRules {
        let config: AuthzConfig = serde_json::from_value(config).unwrap();
        AuthzRules::try_from(&config).unwrap()
    }

    #[test]
    fn scope_rules() {
        let p = principal();
        assert!(
            rules(json!({"scopes": {"all": ["chat:write", "models:read"]}}))
                .check(&p, None)
                .is_ok()
        );
        assert_eq!(
            rules(json!({"scopes": {"all": ["chat:write", "admin"]}})).check(&p, None),
            Err(AuthnError::InsufficientScope)
        );
        assert!(
            rules(json!({"scopes": {"any": ["admin", "models:read"]}}))
                .check(&p, None)
                .is_ok()
        );
        assert_eq!(
            rules(json!({"scopes": {"any": ["admin"]}})).check(&p, None),
            Err(AuthnError::InsufficientScope)
        );
        assert_eq!(
            rules(json!({"scopes": {"all": ["a", "b"]}}))
                .required_scopes()
                .as_deref(),
            Some("a b")
        );
        assert!(AuthzRules::allow_all().check(&p, None).is_ok());
        assert!(AuthzRules::allow_all().is_empty());
    }

    #[test]
    fn role_rules() {
        let p = principal();
        assert!(
            rules(json!({"roles": {"any": ["admin", "engineer"]}}))
                .check(&p, None)
                .is_ok()
        );
        assert_eq!(
            rules(json!({"roles": {"all": ["admin", "engineer"]}})).check(&p, None),
            Err(AuthnError::Forbidden("roles"))
        );
    }

    #[test]
    fn claim_conditions() {
        let p = principal();
        let claims = json!({
            "tier": "pro",
            "realm_access": {"roles": ["inference", "billing"]},
            "scope": "a b c",
            "org": [{"id": 7}],
            "https://example.org/plan": "gold",
        });
        let ok = |c: serde_json::Value| rules(json!({"claims": [c]})).check(&p, Some(&claims));
        assert!(ok(json!({"claim": "tier", "equals": "pro"})).is_ok());
        assert!(ok(json!({"claim": "tier", "equals": "free"})).is_err());
        assert!(ok(json!({"claim": "tier", "oneOf": ["pro", "enterprise"]})).is_ok());
        assert!(ok(json!({"claim": "tier", "oneOf": ["free"]})).is_err());
        assert!(ok(json!({"claim": "realm_access.roles", "contains": "inference"})).is_ok());
        assert!(ok(json!({"claim": "realm_access.roles", "contains": "admin"})).is_err());
        assert!(ok(json!({"claim": "scope", "contains": "b"})).is_ok());
        assert!(ok(json!({"claim": "scope", "contains": "a b"})).is_err());
        assert!(ok(json!({"claim": "tier", "contains": 1})).is_err());
        assert!(ok(json!({"claim": "org.0.id", "equals": 7})).is_ok());
        assert!(ok(json!({"claim": "/https:~1~1example.org~1plan", "equals": "gold"})).is_ok());
        assert_eq!(
            ok(json!({"claim": "missing.path", "equals": 1})),
            Err(AuthnError::Forbidden("claims"))
        );
        // No claims at all (API keys, certificates) fails closed.
        assert!(
            rules(json!({"claims": [{"claim": "tier", "equals": "pro"}]}))
                .check(&p, None)
                .is_err()
        );
    }

    #[test]
    fn config_errors() {
        let bad = |c: serde_json::Value| {
            let config: AuthzConfig = serde_json::from_value(c).unwrap();
            AuthzRules::try_from(&config).unwrap_err()
        };
        assert_eq!(bad(json!({"scopes": {"all": []}})).field(), "scopes");
        assert_eq!(
            bad(json!({"roles": {"any": ["has space"]}})).field(),
            "roles[0]"
        );
        assert_eq!(
            bad(json!({"claims": [{"claim": "a"}]})).field(),
            "claims[0]"
        );
        assert_eq!(
            bad(json!({"claims": [{"claim": "a", "equals": 1, "contains": 1}]})).field(),
            "claims[0]"
        );
        assert_eq!(
            bad(json!({"claims": [{"claim": "a", "oneOf": []}]})).field(),
            "claims[0]"
        );
        assert_eq!(
            bad(json!({"claims": [{"claim": "a..b", "equals": 1}]})).field(),
            "claims[0].claim"
        );
        assert!(serde_json::from_value::<AuthzConfig>(json!({"scope": {}})).is_err());
    }

    #[test]
    fn pointers() {
        assert_eq!(claim_pointer("a.b").as_deref(), Some("/a/b"));
        assert_eq!(claim_pointer("a~b").as_deref(), Some("/a~0b"));
        assert_eq!(claim_pointer("/x~1y").as_deref(), Some("/x~1y"));
        assert_eq!(claim_pointer(""), None);
        assert_eq!(claim_pointer(".a"), None);
    }
}
