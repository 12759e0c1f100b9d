//! `PortcullisPolicy`: the per-route security of Ingresses, as a custom resource.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The IngressClass controller name this ingress answers to.
pub const CONTROLLER: &str = "portcullis.dev/ingress-controller";

/// The security a set of Ingresses gets. Each section takes the configuration of its crate
/// (the same serde types library users configure the layers with); a section left out is off.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "PortcullisPolicy",
    plural = "portcullispolicies",
    shortname = "pcp",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The Ingresses (in the policy's namespace) this policy applies to.
    pub target_refs: Vec<TargetRef>,
    /// Client certificates: the CA that issues them (a Secret), whether they are required at
    /// the handshake, CRLs, and the identities allowed (`portcullis-ztls`'s
    /// `ZeroTrustPolicyConfig` under `policy`). See [`ZtlsSection`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub ztls: Option<serde_json::Value>,
    /// Authentication and authorization (`portcullis-authn`'s `AuthnConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub authn: Option<serde_json::Value>,
    /// Rate limits by client (`portcullis-ratelimit`'s `RateLimitConfig`), applied before
    /// authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub rate_limit: Option<serde_json::Value>,
    /// Rate limits by principal, applied after authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub principal_rate_limit: Option<serde_json::Value>,
    /// LLM token budgets (`portcullis-ratelimit`'s `TokenBudgetConfig`), applied after
    /// authentication (by default per subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub token_budget: Option<serde_json::Value>,
    /// The WAF (`portcullis-waf`'s `WafConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub waf: Option<serde_json::Value>,
    /// Whether the routes' requests are audited (default true when the ingress has an audit
    /// log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSection>,
}

/// The `ztls` section, checked when the routes are built.
///
/// ```yaml
/// ztls:
///   clientAuth: required          # required (default) | optional | off
///   caSecret: { name: clients-ca }                  # key `ca.crt` unless given
///   crlSecret: { name: clients-crl, key: ca.crl }   # optional
///   policy:                                         # who may call
///     spiffeIds: [{ prefix: spiffe://prod.example.org/ns/ml }]
/// ```
///
/// The CA is trusted on the TLS hosts of the policy's Ingresses (their `spec.tls`), so
/// client certificates are verified during the handshake for those names. The `policy` is
/// also enforced on every request of the routes, so a request that reaches them any other way
/// (another SNI name, the plain listener) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZtlsSection {
    /// Whether the handshake requires a client certificate.
    #[serde(default)]
    pub client_auth: portcullis_ztls::ClientAuth,
    /// The Secret holding the CA bundle (PEM) that issues client certificates.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
    /// The Secret holding CRLs (PEM).
    #[serde(default)]
    pub crl_secret: Option<SecretKeyRef>,
    /// Who may call, by certificate identity.
    #[serde(default)]
    pub policy: portcullis_ztls::ZeroTrustPolicyConfig,
}

/// A key of a Secret in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its `data` (defaults per use: `ca.crt`, `ca.crl`).
    #[serde(default)]
    pub key: Option<String>,
}

impl PolicySpec {
    /// The `ztls` section, parsed.
    ///
    /// # Errors
    ///
    /// The section does not deserialize; the message names the section.
    pub fn ztls(&self) -> Result<Option<ZtlsSection>, String> {
        self.ztls
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("ztls: {e}"))
    }
}

/// A reference to an Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `networking.k8s.io`.
    #[serde(default = "networking")]
    pub group: String,
    /// `Ingress`.
    #[serde(default = "ingress_kind")]
    pub kind: String,
    /// The Ingress's name.
    pub name: String,
}

fn networking() -> String {
    "networking.k8s.io".into()
}

fn ingress_kind() -> String {
    "Ingress".into()
}

/// The audit section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSection {
    /// Record the routes' requests.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// What the ingress made of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted` with `True`, or `False` and the reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What is wrong, and the fix.
    pub message: String,
}

/// Any JSON object, kept as the cluster received it; checked when the routes are built.
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The CustomResourceDefinition, as YAML.
///
/// # Errors
///
/// Serialisation failed (it does not, for this type).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&PortcullisPolicy::crd())
}
