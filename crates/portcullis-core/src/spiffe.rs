//! SPIFFE IDs (`spiffe://trust-domain/path`), validated per the SPIFFE-ID specification.

use std::fmt;
use std::str::FromStr;

use crate::error::ValueError;

const SCHEME: &str = "spiffe://";
/// The longest SPIFFE ID accepted, in bytes (SPIFFE-ID §2.3 asks for 2048 at most).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain accepted, in bytes (SPIFFE-ID §2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE ID.
///
/// The rules are those of the SPIFFE-ID specification, as go-spiffe enforces them: the scheme
/// is lowercase `spiffe`; the trust domain is non-empty and made of lowercase letters, digits,
/// `.`, `-` and `_` (no port, no user info); the path is empty or a sequence of `/segment`s,
/// each non-empty, made of letters, digits, `.`, `-` and `_`, and neither `.` nor `..`; there is
/// no trailing slash, query or fragment.
///
/// # Examples
///
/// ```
/// use portcullis_core::SpiffeId;
///
/// let id: SpiffeId = "spiffe://prod.example.org/ns/ml/sa/inference".parse()?;
/// assert_eq!(id.trust_domain(), "prod.example.org");
/// assert_eq!(id.path(), "/ns/ml/sa/inference");
/// assert!(id.is_member_of("prod.example.org"));
/// assert!(id.path_starts_with("/ns/ml"));
/// assert!(!id.path_starts_with("/ns/m"));
/// assert!("spiffe://Prod.example.org/x".parse::<SpiffeId>().is_err());
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Box<str>,
    /// Byte offset where the path starts (== id.len() when the path is empty).
    path_at: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// # Errors
    ///
    /// If `id` breaks any rule of the specification; the error names the rule.
    pub fn parse(id: &str) -> Result<Self, ValueError> {
        let err = |rule: &'static str| ValueError::new("SPIFFE ID", rule);
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(err("it is longer than 2048 bytes"));
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("it does not start with `spiffe://`"))?;
        let path_at_rest = rest.find('/').unwrap_or(rest.len());
        let (domain, path) = rest.split_at(path_at_rest);
        validate_trust_domain(domain)?;
        if !path.is_empty() {
            validate_path(path)?;
        }
        Ok(Self {
            id: id.into(),
            path_at: SCHEME.len() + domain.len(),
        })
    }

    /// The trust domain (`prod.example.org`).
    pub fn trust_domain(&self) -> &str {
        self.id.get(SCHEME.len()..self.path_at).unwrap_or_default()
    }

    /// The path (`/ns/ml/sa/inference`), empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        self.id.get(self.path_at..).unwrap_or_default()
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &str) -> bool {
        self.trust_domain() == trust_domain
    }

    /// Whether the path starts with `prefix` on a segment boundary: `/ns/ml` matches
    /// `/ns/ml` and `/ns/ml/sa/x`, not `/ns/mlops`.
    pub fn path_starts_with(&self, prefix: &str) -> bool {
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        match self.path().strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Validates a trust domain name on its own (as written in policies).
///
/// # Errors
///
/// If the name is empty, too long, or has a character other than lowercase letters, digits,
/// `.`, `-` and `_`.
pub fn validate_trust_domain(domain: &str) -> Result<(), ValueError> {
    let err = |rule: &'static str| ValueError::new("SPIFFE trust domain", rule);
    if domain.is_empty() {
        return Err(err("it is empty"));
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(err("it is longer than 255 bytes"));
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(err(
            "only lowercase letters, digits, `.`, `-` and `_` are allowed (no port, user info or uppercase)",
        ));
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), ValueError> {
    let err = |rule: &'static str| ValueError::new("SPIFFE ID", rule);
    // `path` starts with '/', so the first split item is empty.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(err("the path has an empty segment or a trailing slash"));
        }
        if segment == "." || segment == ".." {
            return Err(err("the path has a `.` or `..` segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(err(
                "the path may hold only letters, digits, `.`, `-` and `_` between slashes (no query, fragment or percent-encoding)",
            ));
        }
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

serde_via_str!(SpiffeId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for (id, domain, path) in [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://prod-1.example_org/ns/A.b-c_d/sa/X9",
                "prod-1.example_org",
                "/ns/A.b-c_d/sa/X9",
            ),
            ("spiffe://td/...", "td", "/..."),
        ] {
            let parsed = SpiffeId::parse(id).unwrap();
            assert_eq!(parsed.trust_domain(), domain, "{id}");
            assert_eq!(parsed.path(), path, "{id}");
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.to_string(), id);
        }
    }

    #[test]
    fn invalid_ids() {
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let long_domain = format!("spiffe://{}", "a".repeat(256));
        for id in [
            "",
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://example.org/x",
            "Spiffe://example.org/x",
            "https://example.org/x",
            "spiffe:/example.org/x",
            "spiffe://Example.org/x",
            "spiffe://example.org:443/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/",
            "spiffe://example.org/./a",
            "spiffe://example.org/a/..",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#frag",
            "spiffe://example.org/a%20b",
            "spiffe://example.org/a b",
            "spiffe://exa mple.org/a",
            "spiffe://example.org/ä",
            long_path.as_str(),
            long_domain.as_str(),
        ] {
            assert!(SpiffeId::parse(id).is_err(), "{id:?} should be rejected");
        }
    }

    #[test]
    fn trust_domain_rules() {
        assert!(validate_trust_domain("example.org").is_ok());
        assert!(validate_trust_domain("").is_err());
        assert!(validate_trust_domain("Example.org").is_err());
        assert!(validate_trust_domain("example.org:8443").is_err());
        assert!(validate_trust_domain(&"a".repeat(255)).is_ok());
        assert!(validate_trust_domain(&"a".repeat(256)).is_err());
    }

    #[test]
    fn membership_and_prefixes() {
        let id = SpiffeId::parse("spiffe://example.org/ns/ml/sa/api").unwrap();
        assert!(id.is_member_of("example.org"));
        assert!(!id.is_member_of("example.com"));
        assert!(!id.is_member_of("ample.org"));
        assert!(id.path_starts_with("/ns/ml"));
        assert!(id.path_starts_with("/ns/ml/"));
        assert!(id.path_starts_with("/ns/ml/sa/api"));
        assert!(id.path_starts_with(""));
        assert!(!id.path_starts_with("/ns/m"));
        assert!(!id.path_starts_with("/ns/ml/sa/api/more"));
        let root = SpiffeId::parse("spiffe://example.org").unwrap();
        assert!(root.path_starts_with(""));
        assert!(!root.path_starts_with("/ns"));
    }

    #[test]
    fn serde_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/a\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/a\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a/\"").is_err());
    }
}
