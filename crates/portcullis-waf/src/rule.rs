//! The rule format: YAML rule packs (serde, unknown fields rejected) and their compiled form.
//!
//! ```yaml
//! name: my-pack
//! rules:
//!   - id: 100001
//!     msg: Path traversal in an argument
//!     targets: [ARGS, "!ARGS:comment"]
//!     transforms: [urlDecodeUni, normalizePath]
//!     operator: { rx: '(?:^|/)\.\./' }
//!     severity: critical
//!     tags: [attack-lfi]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_core::ConfigError;
use serde::Deserialize;

use crate::operator::{Condition, Operator};
use crate::transform::Transform;
use crate::variable::Targets;

/// A rule pack as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PackSpec {
    /// The pack's name.
    pub name: String,
    /// What the pack is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The rules.
    pub rules: Vec<RuleSpec>,
}

/// How bad a match is; sets the rule's default anomaly score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Score 0.
    Info,
    /// Score 2.
    Notice,
    /// Score 3.
    Warning,
    /// Score 4.
    Error,
    /// Score 5.
    #[default]
    Critical,
}

impl Severity {
    /// The anomaly score a match adds by default (the OWASP CRS values).
    pub fn score(self) -> u32 {
        match self {
            Self::Info => 0,
            Self::Notice => 2,
            Self::Warning => 3,
            Self::Error => 4,
            Self::Critical => 5,
        }
    }
}

/// When a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// On the request, before the upstream is called (headers and buffered body).
    #[default]
    Request,
    /// On the response head and buffered body.
    Response,
}

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleAction {
    /// Adds the rule's score to the anomaly score; the request is blocked when the total reaches
    /// the threshold.
    #[default]
    Score,
    /// Blocks on its own (in blocking mode), whatever the score.
    Block,
    /// Only recorded.
    Log,
}

/// An operator as written: `{ rx: '...' }`, `{ pm: [a, b] }`, `validateUtf8Encoding`, ...
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[non_exhaustive]
pub enum OperatorSpec {
    /// A regular expression over bytes.
    Rx(String),
    /// Any of these phrases (ASCII case-insensitive).
    Pm(Vec<String>),
    /// Any of the phrases in this file (one per line, `#` comments), relative to the pack.
    PmFromFile(PathBuf),
    /// Equal to.
    Streq(String),
    /// Contains.
    Contains(String),
    /// Begins with.
    BeginsWith(String),
    /// Ends with.
    EndsWith(String),
    /// Occurs within.
    Within(String),
    /// Numerically equal.
    Eq(i64),
    /// Numerically greater or equal.
    Ge(i64),
    /// Numerically greater.
    Gt(i64),
    /// Numerically less or equal.
    Le(i64),
    /// Numerically less.
    Lt(i64),
    /// An address in one of these networks.
    IpMatch(Vec<String>),
    /// A byte outside these ranges (`1-255`, `9,10,13,32-126`).
    ValidateByteRange(String),
    /// Invalid UTF-8.
    ValidateUtf8Encoding,
    /// Invalid percent-encoding.
    ValidateUrlEncoding,
    /// Always.
    UnconditionalMatch,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// A unique id.
    pub id: u32,
    /// What a match means (for logs; never sent to the client).
    pub msg: String,
    /// When the rule runs.
    #[serde(default)]
    pub phase: Phase,
    /// What the rule inspects (`ARGS`, `REQUEST_HEADERS:user-agent`, `!ARGS:pw`, `&ARGS`).
    pub targets: Vec<String>,
    /// Transformations applied to each value before the operator.
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// The test.
    pub operator: OperatorSpec,
    /// Inverts the test.
    #[serde(default)]
    pub negate: bool,
    /// The severity (default critical).
    #[serde(default)]
    pub severity: Severity,
    /// The anomaly score, overriding the severity's.
    #[serde(default)]
    pub score: Option<u32>,
    /// The lowest paranoia level at which the rule runs (1–4).
    #[serde(default = "default_paranoia")]
    pub paranoia: u8,
    /// Tags, for tuning and reports.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What a match does.
    #[serde(default)]
    pub action: RuleAction,
    /// Further conditions that must all hold too.
    #[serde(default)]
    pub chain: Vec<ConditionSpec>,
}

fn default_paranoia() -> u8 {
    1
}

/// A chained condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    /// What it inspects.
    pub targets: Vec<String>,
    /// Transformations.
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// The test.
    pub operator: OperatorSpec,
    /// Inverts the test.
    #[serde(default)]
    pub negate: bool,
}

/// A compiled test on one set of targets.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) targets: Targets,
    pub(crate) pipeline: Arc<[Transform]>,
    /// The interned pipeline, set when the rule joins a rule set.
    pub(crate) pipeline_id: u32,
    pub(crate) condition: Condition,
    /// The regex source, for rules that can join a multi-pattern search.
    pub(crate) rx_source: Option<String>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) id: u32,
    pub(crate) msg: Arc<str>,
    pub(crate) phase: Phase,
    pub(crate) severity: Severity,
    pub(crate) score: u32,
    pub(crate) paranoia: u8,
    pub(crate) tags: Arc<[String]>,
    pub(crate) action: RuleAction,
    pub(crate) first: Link,
    pub(crate) chain: Vec<Link>,
}

impl Rule {
    /// The rule id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The message.
    pub fn msg(&self) -> &str {
        &self.msg
    }

    /// The severity.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The anomaly score of a match.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// The paranoia level.
    pub fn paranoia(&self) -> u8 {
        self.paranoia
    }

    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// What a match does.
    pub fn action(&self) -> RuleAction {
        self.action
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

fn rule_error(id: u32, field: &str, problem: impl Into<String>, fix: &str) -> ConfigError {
    ConfigError::new(format!("rules[id={id}].{field}"), problem, fix)
}

fn compile_operator(
    id: u32,
    spec: &OperatorSpec,
    base: Option<&Path>,
) -> Result<(Operator, Option<String>), ConfigError> {
    let fail = |e: crate::operator::OperatorError| {
        rule_error(
            id,
            "operator",
            e.to_string(),
            "fix the operator's parameter",
        )
    };
    let phrases =
        |list: &[String]| Operator::phrases(list.iter().map(String::as_str)).map_err(fail);
    let op = match spec {
        OperatorSpec::Rx(p) => {
            return Operator::compile("rx", p)
                .map(|op| (op, Some(p.clone())))
                .map_err(fail);
        }
        OperatorSpec::Pm(list) => phrases(list)?,
        OperatorSpec::PmFromFile(path) => {
            let path = match base {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.clone(),
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                rule_error(
                    id,
                    "operator.pmFromFile",
                    format!("cannot read `{}`: {e}", path.display()),
                    "give a readable file, relative to the pack",
                )
            })?;
            let list: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            phrases(&list)?
        }
        OperatorSpec::Streq(s) => Operator::compile("streq", s).map_err(fail)?,
        OperatorSpec::Contains(s) => Operator::compile("contains", s).map_err(fail)?,
        OperatorSpec::BeginsWith(s) => Operator::compile("beginsWith", s).map_err(fail)?,
        OperatorSpec::EndsWith(s) => Operator::compile("endsWith", s).map_err(fail)?,
        OperatorSpec::Within(s) => Operator::compile("within", s).map_err(fail)?,
        OperatorSpec::Eq(n) => Operator::compile("eq", &n.to_string()).map_err(fail)?,
        OperatorSpec::Ge(n) => Operator::compile("ge", &n.to_string()).map_err(fail)?,
        OperatorSpec::Gt(n) => Operator::compile("gt", &n.to_string()).map_err(fail)?,
        OperatorSpec::Le(n) => Operator::compile("le", &n.to_string()).map_err(fail)?,
        OperatorSpec::Lt(n) => Operator::compile("lt", &n.to_string()).map_err(fail)?,
        OperatorSpec::IpMatch(nets) => {
            Operator::compile("ipMatch", &nets.join(",")).map_err(fail)?
        }
        OperatorSpec::ValidateByteRange(r) => {
            Operator::compile("validateByteRange", r).map_err(fail)?
        }
        OperatorSpec::ValidateUtf8Encoding => Operator::ValidateUtf8Encoding,
        OperatorSpec::ValidateUrlEncoding => Operator::ValidateUrlEncoding,
        OperatorSpec::UnconditionalMatch => Operator::Unconditional,
    };
    Ok((op, None))
}

fn compile_link(
    id: u32,
    targets: &[String],
    transforms: &[Transform],
    operator: &OperatorSpec,
    negate: bool,
    base: Option<&Path>,
) -> Result<Link, ConfigError> {
    if targets.is_empty() {
        return Err(rule_error(
            id,
            "targets",
            "no target",
            "name at least one variable, e.g. ARGS",
        ));
    }
    let targets = Targets::parse(&targets.join("|")).map_err(|e| {
        rule_error(
            id,
            "targets",
            e.to_string(),
            "use a known variable such as ARGS, REQUEST_HEADERS:name or PROMPT",
        )
    })?;
    if targets.included().is_empty() {
        return Err(rule_error(
            id,
            "targets",
            "only exclusions",
            "name a variable to inspect",
        ));
    }
    let (operator, rx_source) = compile_operator(id, operator, base)?;
    Ok(Link {
        targets,
        pipeline: transforms.into(),
        pipeline_id: 0,
        condition: Condition::new(operator, negate),
        rx_source: if negate { None } else { rx_source },
    })
}

impl RuleSpec {
    /// Compiles the rule; `base` is the directory relative file names are resolved against.
    ///
    /// # Errors
    ///
    /// A config error naming the rule id and what does not compile.
    pub fn compile(&self, base: Option<&Path>) -> Result<Rule, ConfigError> {
        let id = self.id;
        if !(1..=4).contains(&self.paranoia) {
            return Err(rule_error(
                id,
                "paranoia",
                format!("{} is out of range", self.paranoia),
                "use 1, 2, 3 or 4",
            ));
        }
        let first = compile_link(
            id,
            &self.targets,
            &self.transforms,
            &self.operator,
            self.negate,
            base,
        )?;
        let chain = self
            .chain
            .iter()
            .map(|c| compile_link(id, &c.targets, &c.transforms, &c.operator, c.negate, base))
            .collect::<Result<Vec<_>, _>>()?;
        let reads_response =
            first.targets.reads_response() || chain.iter().any(|l| l.targets.reads_response());
        if reads_response && self.phase == Phase::Request {
            return Err(rule_error(
                id,
                "phase",
                "a request rule reads the response",
                "set `phase: response`",
            ));
        }
        Ok(Rule {
            id,
            msg: self.msg.as_str().into(),
            phase: self.phase,
            severity: self.severity,
            score: self.score.unwrap_or_else(|| self.severity.score()),
            paranoia: self.paranoia,
            tags: self.tags.clone().into(),
            action: self.action,
            first,
            chain,
        })
    }
}

impl PackSpec {
    /// Parses a pack from YAML.
    ///
    /// # Errors
    ///
    /// A config error saying where the YAML is wrong.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| {
            ConfigError::new(
                "rules",
                e.to_string(),
                "fix the rule pack YAML (unknown fields are rejected)",
            )
        })
    }

    /// Reads and parses a pack file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or its YAML is wrong.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "rules",
                format!("cannot read `{}`: {e}", path.display()),
                "give a readable rule pack file",
            )
        })?;
        Self::from_yaml(&text).map_err(|e| e.at(&path.display().to_string()))
    }
}
