//! Errors shared by every Portcullis crate.
//!
//! Two kinds of error live here:
//!
//! - [`ValueError`]: a value handed to one of the vocabulary types broke that type's invariant
//!   (an empty subject, a policy name with a space in it, a SPIFFE ID with a query string).
//! - [`ConfigError`]: a configuration file or resource asked for something that cannot work. Its
//!   message always names the field at fault and says how to fix it, so that an operator reading
//!   `kubectl describe` or a start-up log can act on it without reading the source.

use std::borrow::Cow;
use std::fmt;

/// A value broke the invariant of the type it was meant for.
///
/// The message describes the rule that was broken, never the rejected value itself: values
/// reach these constructors from the network (token claims, certificate fields, headers), and
/// errors end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid {what}: {rule}")]
pub struct ValueError {
    what: &'static str,
    rule: Cow<'static, str>,
}

impl ValueError {
    /// A value of kind `what` (e.g. `"SPIFFE ID"`) broke `rule` (e.g. `"the trust domain is empty"`).
    pub fn new(what: &'static str, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            what,
            rule: rule.into(),
        }
    }

    /// What kind of value was rejected.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The rule the value broke.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// A configuration that cannot be used as written.
///
/// Every layer's `TryFrom<Config>` returns this error. Its [`Display`](fmt::Display) form is
/// `` `field.path`: problem; fix `` and is meant to be shown to the operator as is.
///
/// # Examples
///
/// ```
/// use portcullis_core::ConfigError;
///
/// let err = ConfigError::new(
///     "trusted_proxies[1]",
///     "`10.0.0.1/8` has host bits set",
///     "write the network address, `10.0.0.0/8`",
/// );
/// assert_eq!(
///     err.to_string(),
///     "`trusted_proxies[1]`: `10.0.0.1/8` has host bits set; write the network address, `10.0.0.0/8`"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigError {
    field: String,
    problem: String,
    fix: String,
}

impl ConfigError {
    /// A configuration error for `field` (a dotted path, with `[i]` for list items).
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The path of the offending field, e.g. `authn.issuers[0].audiences`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with the field.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// What the operator should do about it.
    pub fn fix(&self) -> &str {
        &self.fix
    }

    /// Places this error under a parent field: `at("authn")` turns `issuers[0]` into
    /// `authn.issuers[0]`. Used when a nested config is validated on its own and the error is
    /// reported from its container.
    #[must_use]
    pub fn at(mut self, parent: &str) -> Self {
        if !parent.is_empty() {
            self.field = if self.field.is_empty() {
                parent.to_owned()
            } else if self.field.starts_with('[') {
                format!("{parent}{}", self.field)
            } else {
                format!("{parent}.{}", self.field)
            };
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}; {}", self.field, self.problem, self.fix)
    }
}

/// Checks a short piece of text that will be written to logs and audit records: not empty, at
/// most `max` bytes, and free of control characters (which could forge log lines).
pub(crate) fn check_text(what: &'static str, value: &str, max: usize) -> Result<(), ValueError> {
    if value.is_empty() {
        return Err(ValueError::new(what, "it is empty"));
    }
    if value.len() > max {
        return Err(ValueError::new(
            what,
            format!("it is longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValueError::new(what, "it contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_field_problem_and_fix() {
        let err = ConfigError::new("max_hops", "0 is not allowed", "use a value from 1 to 64");
        assert_eq!(err.field(), "max_hops");
        assert_eq!(err.problem(), "0 is not allowed");
        assert_eq!(err.fix(), "use a value from 1 to 64");
        assert_eq!(
            err.to_string(),
            "`max_hops`: 0 is not allowed; use a value from 1 to 64"
        );
    }

    #[test]
    fn config_error_nests_under_parents() {
        let err = ConfigError::new("issuers[0].audiences", "empty", "add one").at("authn");
        assert_eq!(err.field(), "authn.issuers[0].audiences");
        let err = ConfigError::new("[2]", "bad", "fix").at("trusted_proxies");
        assert_eq!(err.field(), "trusted_proxies[2]");
        let err = ConfigError::new("", "bad", "fix").at("policy");
        assert_eq!(err.field(), "policy");
        let err = ConfigError::new("x", "bad", "fix").at("");
        assert_eq!(err.field(), "x");
    }

    #[test]
    fn value_error_does_not_carry_the_value() {
        let err = ValueError::new("subject", "it contains control characters");
        assert_eq!(
            err.to_string(),
            "invalid subject: it contains control characters"
        );
        assert_eq!(err.what(), "subject");
    }

    #[test]
    fn check_text_rules() {
        assert!(check_text("x", "ok", 8).is_ok());
        assert!(check_text("x", "", 8).is_err());
        assert!(check_text("x", "123456789", 8).is_err());
        assert!(check_text("x", "a\nb", 8).is_err());
        assert!(check_text("x", "a\u{7f}b", 8).is_err());
        // Multi-byte text is measured in bytes.
        assert!(check_text("x", "ééééé", 8).is_err());
        assert!(check_text("x", "éééé", 8).is_ok());
    }
}
