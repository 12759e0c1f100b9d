//! The WAF's serde configuration, shared by library users, manifest files and the
//! `PortcullisPolicy` resource.

use std::path::PathBuf;

use serde::Deserialize;

use crate::leak::LeakGuardConfig;

/// What the engine does with its verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// No inspection at all.
    Off,
    /// Rules run and verdicts are recorded, but nothing is blocked or redacted.
    DetectionOnly,
    /// Verdicts are enforced.
    #[default]
    Blocking,
}

/// What happens to a request body larger than the inspection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OverLimit {
    /// 413 problem response (fail closed).
    #[default]
    Reject,
    /// Inspect the first `limit` bytes and pass the whole body on.
    InspectPrefix,
}

/// What a body that does not parse (bad JSON, multipart or percent-encoding) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnMalformed {
    /// 400 problem response (fail closed).
    #[default]
    Reject,
    /// Adds a critical score (5) as rule 200002 would.
    Score,
    /// Only recorded (rule 200002 in the verdict).
    Log,
}

/// Request body handling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BodyConfig {
    /// The most bytes buffered for inspection (default 1 MiB).
    pub limit: usize,
    /// Bodies over the limit.
    pub over_limit: OverLimit,
    /// Malformed bodies.
    pub on_malformed: OnMalformed,
    /// The most arguments a body or query string yields (default 10,000).
    pub max_args: usize,
    /// The deepest JSON nesting followed (default 64).
    pub max_depth: usize,
}

impl Default for BodyConfig {
    fn default() -> Self {
        Self {
            limit: 1024 * 1024,
            over_limit: OverLimit::Reject,
            on_malformed: OnMalformed::Reject,
            max_args: 10_000,
            max_depth: 64,
        }
    }
}

/// The WAF configuration.
///
/// ```
/// use portcullis_waf::{Waf, WafConfig};
///
/// let config: WafConfig = serde_json::from_str(r#"{
///     "mode": "blocking",
///     "packs": ["ai-guard"],
///     "paranoiaLevel": 1,
///     "inboundThreshold": 5
/// }"#)?;
/// let waf = Waf::try_from(config)?;
/// assert!(waf.rules().rules().len() > 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WafConfig {
    /// Off, detection only, or blocking (the default).
    pub mode: Mode,
    /// Built-in rule packs by name (`ai-guard`).
    pub packs: Vec<String>,
    /// Rule pack files (YAML).
    pub rule_files: Vec<PathBuf>,
    /// The paranoia level (1–4): rules above it do not run.
    pub paranoia_level: u8,
    /// The request anomaly score at which a request is blocked.
    pub inbound_threshold: u32,
    /// Rules switched off by id.
    pub disabled_rules: Vec<u32>,
    /// Rules switched off by tag.
    pub disabled_tags: Vec<String>,
    /// Request body handling.
    pub body: BodyConfig,
    /// The response data-leak guard (off unless configured).
    pub leak_guard: Option<LeakGuardConfig>,
    /// The OWASP Core Rule Set, run on every request beside the packs (off unless
    /// configured). It runs at `paranoiaLevel` with `inboundThreshold` as its anomaly
    /// threshold.
    pub crs: Option<CrsConfig>,
}

/// Where the OWASP Core Rule Set is, and what to load after it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrsConfig {
    /// The CRS directory: `crs-setup.conf` (or `.example`) and `rules/`.
    pub dir: PathBuf,
    /// SecLang files loaded after the rules: exclusions and tuning.
    #[serde(default)]
    pub exclusions: Vec<PathBuf>,
    /// Whether CRS's response phases run: 3 (response headers) and 4 (response bodies, the
    /// 95x data-leak rules). On by default; a response they block becomes a 502
    /// `waf.response_blocked` problem.
    #[serde(default = "yes")]
    pub inspect_responses: bool,
    /// The response content types whose bodies phase 4 reads, as ModSecurity's
    /// `SecResponseBodyMimeType` (by default CRS's recommended `text/plain`, `text/html`,
    /// `text/xml`). Only these are held back until inspected; an event stream never is.
    #[serde(default = "default_response_types")]
    pub response_body_types: Vec<String>,
    /// The most response-body bytes held back for phase 4 (default 512 KiB); the rest of a
    /// longer body flows through uninspected, as ModSecurity's `ProcessPartial`.
    #[serde(default = "default_response_limit")]
    pub response_body_limit: usize,
    /// How many distinct header values, cookies, paths and argument names each worker thread
    /// keeps the rules' pattern verdicts of (default 512; 0 keeps none): a client sends the
    /// same headers on every request, and a value met again is not searched again. The
    /// verdicts depend on the value alone, so what the rules decide is the same either way.
    #[serde(default = "default_value_cache")]
    pub value_cache: usize,
}

impl CrsConfig {
    /// The CRS in `dir`, with no exclusions and the default response inspection.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            exclusions: Vec::new(),
            inspect_responses: true,
            response_body_types: default_response_types(),
            response_body_limit: default_response_limit(),
            value_cache: default_value_cache(),
        }
    }
}

fn default_value_cache() -> usize {
    crate::crs::DEFAULT_VALUE_CACHE
}

fn yes() -> bool {
    true
}

fn default_response_types() -> Vec<String> {
    ["text/plain", "text/html", "text/xml"]
        .map(String::from)
        .to_vec()
}

fn default_response_limit() -> usize {
    512 * 1024
}

impl Default for WafConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Blocking,
            packs: Vec::new(),
            rule_files: Vec::new(),
            paranoia_level: 1,
            inbound_threshold: 5,
            disabled_rules: Vec::new(),
            disabled_tags: Vec::new(),
            body: BodyConfig::default(),
            leak_guard: None,
            crs: None,
        }
    }
}
