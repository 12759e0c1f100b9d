//! The per-route zero-trust policy: who may call, by client certificate identity.

use std::collections::HashSet;

use portcullis_core::{
    ConfigError, PeerCertificate, Reason, SpiffeId, Thumbprint, validate_trust_domain,
};
use serde::{Deserialize, Serialize};

use crate::server::host_matches;

/// A rule on the client's SPIFFE ID: exactly one of `exact`, `trustDomain`, `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpiffeRule {
    /// This SPIFFE ID only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Any ID in this trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// IDs under this one, on segment boundaries (`spiffe://td/ns/ml` allows
    /// `spiffe://td/ns/ml/sa/x`, not `spiffe://td/ns/mlops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// The policy as configured.
///
/// ```yaml
/// requireClientCertificate: true
/// spiffeIds:
///   - { prefix: spiffe://prod.example.org/ns/ml }
///   - { exact: spiffe://prod.example.org/ns/batch/sa/scorer }
/// dnsSans: ["*.clients.example.org"]
/// issuers: ["O=Example, CN=Workload CA"]
/// thumbprints: ["9f:86:d0:..."]
/// ```
///
/// Every non-empty list is a condition, and all conditions must hold (a certificate matches a
/// list if it matches any entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZeroTrustPolicyConfig {
    /// Reject requests whose connection presented no client certificate (default true).
    #[serde(default = "yes")]
    pub require_client_certificate: bool,
    /// Allowed SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<SpiffeRule>,
    /// Allowed DNS SANs (exact, or `*.suffix` for one label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    /// Allowed issuers, as the issuer DN string (`O=Example, CN=Workload CA`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Allowed certificates, by SHA-256 thumbprint (hex, colons allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbprints: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for ZeroTrustPolicyConfig {
    fn default() -> Self {
        Self {
            require_client_certificate: true,
            spiffe_ids: Vec::new(),
            dns_sans: Vec::new(),
            issuers: Vec::new(),
            thumbprints: Vec::new(),
        }
    }
}

/// A compiled zero-trust policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZeroTrustPolicy {
    require_certificate: bool,
    spiffe_exact: HashSet<String>,
    trust_domains: Vec<String>,
    prefixes: Vec<SpiffeId>,
    dns_sans: Vec<String>,
    issuers: Vec<String>,
    thumbprints: HashSet<Thumbprint>,
}

impl ZeroTrustPolicy {
    /// A policy that only requires a (verified) client certificate.
    pub fn require_certificate() -> Self {
        Self {
            require_certificate: true,
            ..Self::default()
        }
    }

    /// Allows this SPIFFE ID.
    #[must_use]
    pub fn allow_spiffe_id(mut self, id: &SpiffeId) -> Self {
        self.spiffe_exact.insert(id.as_str().to_owned());
        self
    }

    /// Allows any SPIFFE ID in `trust_domain`.
    ///
    /// # Errors
    ///
    /// If `trust_domain` is not a valid trust domain name.
    pub fn allow_trust_domain(
        mut self,
        trust_domain: &str,
    ) -> Result<Self, portcullis_core::ValueError> {
        validate_trust_domain(trust_domain)?;
        self.trust_domains.push(trust_domain.to_owned());
        Ok(self)
    }

    /// Allows SPIFFE IDs at or under `prefix`.
    #[must_use]
    pub fn allow_spiffe_prefix(mut self, prefix: SpiffeId) -> Self {
        self.prefixes.push(prefix);
        self
    }

    /// Allows a DNS SAN (exact, or `*.suffix`).
    #[must_use]
    pub fn allow_dns_san(mut self, name: &str) -> Self {
        self.dns_sans.push(name.to_ascii_lowercase());
        self
    }

    /// Allows an issuer DN.
    #[must_use]
    pub fn allow_issuer(mut self, issuer: &str) -> Self {
        self.issuers.push(issuer.to_owned());
        self
    }

    /// Allows a certificate by thumbprint.
    #[must_use]
    pub fn pin(mut self, thumbprint: Thumbprint) -> Self {
        self.thumbprints.insert(thumbprint);
        self
    }

    fn spiffe_ok(&self, cert: &PeerCertificate) -> bool {
        if self.spiffe_exact.is_empty() && self.trust_domains.is_empty() && self.prefixes.is_empty()
        {
            return true;
        }
        let Some(id) = cert.spiffe_id() else {
            return false;
        };
        self.spiffe_exact.contains(id.as_str())
            || self.trust_domains.iter().any(|td| id.is_member_of(td))
            || self
                .prefixes
                .iter()
                .any(|p| id.is_member_of(p.trust_domain()) && id.path_starts_with(p.path()))
    }

    /// Checks the connection's certificate against the policy.
    ///
    /// # Errors
    ///
    /// [`Reason::CertificateRequired`] without a certificate when one is required;
    /// [`Reason::CertificateDenied`] when a condition fails.
    pub fn check(&self, cert: Option<&PeerCertificate>) -> Result<(), Reason> {
        let Some(cert) = cert else {
            return if self.require_certificate {
                Err(Reason::CertificateRequired)
            } else {
                Ok(())
            };
        };
        let ok = self.spiffe_ok(cert)
            && (self.dns_sans.is_empty()
                || cert.dns_sans().iter().any(|san| {
                    let san = san.to_ascii_lowercase();
                    self.dns_sans.iter().any(|rule| host_matches(rule, &san))
                }))
            && (self.issuers.is_empty() || self.issuers.iter().any(|i| i == cert.issuer()))
            && (self.thumbprints.is_empty() || self.thumbprints.contains(&cert.thumbprint()));
        if ok {
            Ok(())
        } else {
            Err(Reason::CertificateDenied)
        }
    }
}

impl TryFrom<&ZeroTrustPolicyConfig> for ZeroTrustPolicy {
    type Error = ConfigError;

    fn try_from(config: &ZeroTrustPolicyConfig) -> Result<Self, ConfigError> {
        let mut policy = Self {
            require_certificate: config.require_client_certificate,
            ..Self::default()
        };
        for (i, rule) in config.spiffe_ids.iter().enumerate() {
            let field = format!("spiffeIds[{i}]");
            let bad = |e: portcullis_core::ValueError| {
                ConfigError::new(
                    field.clone(),
                    e.to_string(),
                    "write a SPIFFE ID such as `spiffe://example.org/ns/ml/sa/api`, or a trust domain such as `example.org`",
                )
            };
            policy = match (&rule.exact, &rule.trust_domain, &rule.prefix) {
                (Some(id), None, None) => {
                    policy.allow_spiffe_id(&SpiffeId::parse(id).map_err(bad)?)
                }
                (None, Some(td), None) => policy.allow_trust_domain(td).map_err(bad)?,
                (None, None, Some(p)) => {
                    policy.allow_spiffe_prefix(SpiffeId::parse(p).map_err(bad)?)
                }
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "a SPIFFE rule needs exactly one of `exact`, `trustDomain` and `prefix`",
                        "set one of them",
                    ));
                }
            };
        }
        for (i, name) in config.dns_sans.iter().enumerate() {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            if bare.is_empty()
                || bare.contains('*')
                || !bare.contains('.') && name.starts_with("*.")
            {
                return Err(ConfigError::new(
                    format!("dnsSans[{i}]"),
                    format!("`{name}` is not a DNS name"),
                    "write `client.example.org` or `*.example.org`",
                ));
            }
            policy = policy.allow_dns_san(name);
        }
        for (i, issuer) in config.issuers.iter().enumerate() {
            if issuer.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("issuers[{i}]"),
                    "empty",
                    "write the issuer DN as the audit log shows it",
                ));
            }
            policy = policy.allow_issuer(issuer);
        }
        for (i, t) in config.thumbprints.iter().enumerate() {
            let t: Thumbprint = t.parse().map_err(|e: portcullis_core::ValueError| {
                ConfigError::new(
                    format!("thumbprints[{i}]"),
                    e.to_string(),
                    "write the SHA-256 fingerprint as 64 hex digits",
                )
            })?;
            policy = policy.pin(t);
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn cert(spiffe: Option<&str>, dns: &[&str], issuer: &str, thumb: u8) -> PeerCertificate {
        let mut b = PeerCertificate::builder(vec![1, 2, 3], Thumbprint::from_bytes([thumb; 32]))
            .issuer(issuer)
            .serial(vec![1])
            .validity(SystemTime::UNIX_EPOCH, SystemTime::now());
        if let Some(s) = spiffe {
            b = b.uri_san(s);
        }
        for d in dns {
            b = b.dns_san(*d);
        }
        b.build().unwrap()
    }

    fn policy(config: serde_json::Value) -> ZeroTrustPolicy {
        let config: ZeroTrustPolicyConfig = serde_json::from_value(config).unwrap();
        ZeroTrustPolicy::try_from(&config).unwrap()
    }

    #[test]
    fn certificate_requirement() {
        let p = policy(serde_json::json!({}));
        assert_eq!(p.check(None), Err(Reason::CertificateRequired));
        assert_eq!(p.check(Some(&cert(None, &[], "CN=x", 1))), Ok(()));
        let lax = policy(serde_json::json!({"requireClientCertificate": false}));
        assert_eq!(lax.check(None), Ok(()));
    }

    #[test]
    fn spiffe_rules() {
        let p = policy(serde_json::json!({"spiffeIds": [
            {"exact": "spiffe://a.test/ns/x/sa/y"},
            {"trustDomain": "b.test"},
            {"prefix": "spiffe://c.test/ns/ml"},
        ]}));
        let ok = |id: &str| p.check(Some(&cert(Some(id), &[], "CN=x", 1))).is_ok();
        assert!(ok("spiffe://a.test/ns/x/sa/y"));
        assert!(!ok("spiffe://a.test/ns/x/sa/z"));
        assert!(ok("spiffe://b.test/anything"));
        assert!(!ok("spiffe://bb.test/anything"));
        assert!(ok("spiffe://c.test/ns/ml"));
        assert!(ok("spiffe://c.test/ns/ml/sa/api"));
        assert!(!ok("spiffe://c.test/ns/mlops"));
        assert!(!ok("spiffe://d.test/ns/ml/sa/api"));
        assert_eq!(
            p.check(Some(&cert(None, &[], "CN=x", 1))),
            Err(Reason::CertificateDenied)
        );
    }

    #[test]
    fn san_issuer_and_pin_rules_all_apply() {
        let p = policy(serde_json::json!({
            "dnsSans": ["*.clients.test", "exact.test"],
            "issuers": ["CN=Good CA"],
            "thumbprints": ["07".repeat(32)],
        }));
        assert!(
            p.check(Some(&cert(None, &["a.clients.test"], "CN=Good CA", 7)))
                .is_ok()
        );
        assert!(
            p.check(Some(&cert(None, &["EXACT.test"], "CN=Good CA", 7)))
                .is_ok()
        );
        assert!(
            p.check(Some(&cert(None, &["a.b.clients.test"], "CN=Good CA", 7)))
                .is_err()
        );
        assert!(
            p.check(Some(&cert(None, &["a.clients.test"], "CN=Bad CA", 7)))
                .is_err()
        );
        assert!(
            p.check(Some(&cert(None, &["a.clients.test"], "CN=Good CA", 8)))
                .is_err()
        );
        assert!(p.check(Some(&cert(None, &[], "CN=Good CA", 7))).is_err());
    }

    #[test]
    fn config_errors() {
        let err = |v: serde_json::Value| {
            let c: ZeroTrustPolicyConfig = serde_json::from_value(v).unwrap();
            ZeroTrustPolicy::try_from(&c).unwrap_err()
        };
        assert_eq!(
            err(serde_json::json!({"spiffeIds": [{"exact": "spiffe://a/"}]})).field(),
            "spiffeIds[0]"
        );
        assert_eq!(
            err(serde_json::json!({"spiffeIds": [{}]})).field(),
            "spiffeIds[0]"
        );
        assert_eq!(
            err(serde_json::json!({"spiffeIds": [{"trustDomain": "A.test"}]})).field(),
            "spiffeIds[0]"
        );
        assert_eq!(
            err(serde_json::json!({"dnsSans": ["*.com", "x"]})).field(),
            "dnsSans[0]"
        );
        assert_eq!(
            err(serde_json::json!({"thumbprints": ["abc"]})).field(),
            "thumbprints[0]"
        );
        assert_eq!(
            err(serde_json::json!({"issuers": [" "]})).field(),
            "issuers[0]"
        );
    }
}
