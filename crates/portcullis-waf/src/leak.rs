//! The response data-leak guard: finds secrets (cloud and AI-provider keys, tokens, private
//! keys, credentials in URLs and command lines), personal data (payment cards, SSNs, IBANs,
//! national identifiers, emails, phone numbers, IP and MAC addresses, crypto wallets) and
//! configured canary strings in response bodies, whole or streamed, and redacts, blocks or logs
//! them per class.
//!
//! Detection is pattern + validation: a regex finds a candidate and a checksum (Luhn, mod 97,
//! Verhoeff, national check digits, Base58Check, bech32) or a randomness test confirms it, so
//! look-alikes (`ghp_xxxx...`, a card number with a wrong check digit) are not flagged.
//!
//! Streams are scanned through a [`LeakStream`], which holds back the last few hundred bytes of
//! what it has seen so that a secret split across chunks is still found whole.

mod check;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use portcullis_core::ConfigError;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use serde::Deserialize;

/// What the guard does with a class of findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeakAction {
    /// Replace the match with `[REDACTED:<kind>]` and let the rest through.
    Redact,
    /// Withhold the response (502 when not yet sent; a streamed response is cut off).
    Block,
    /// Only record it.
    Log,
}

/// The class of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakClass {
    /// Credentials and keys.
    Secret,
    /// Personal data.
    Pii,
    /// A configured canary string.
    Canary,
}

/// Leak guard configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LeakGuardConfig {
    /// What secrets do (default: redact).
    pub secrets: LeakAction,
    /// What personal data does (default: redact).
    pub pii: LeakAction,
    /// What canary strings do (default: block).
    pub canaries: LeakAction,
    /// Canary strings (e.g. planted in a system prompt); at least 8 bytes each.
    pub canary_strings: Vec<String>,
    /// The detector kinds to run (`secret.github_token`, `pii.card`, ..., or `all`); empty
    /// means the default set (every kind except `pii.ip_address`, `pii.mac_address` and
    /// `secret.gcp_api_key`, which are common in benign technical text).
    pub kinds: Vec<String>,
    /// Kinds switched off.
    pub disabled_kinds: Vec<String>,
    /// How many trailing bytes a stream holds back so matches that straddle chunks are found
    /// (default 256, at least 64).
    pub holdback: usize,
    /// The longest response, by its declared length, read whole and scanned before any of it
    /// is sent (default 64 KiB, at most 16 MiB; 0 streams every response). Such a response
    /// keeps an exact `Content-Length`, and one the guard blocks becomes a 502 problem
    /// instead of a body cut off after its headers. Event streams are always streamed. (A body
    /// CRS holds back whole for its phase 4 is treated the same, whatever its length.)
    pub whole_body_limit: usize,
}

/// The largest [`LeakGuardConfig::whole_body_limit`].
pub const MAX_WHOLE_BODY_LIMIT: usize = 16 * 1024 * 1024;

impl Default for LeakGuardConfig {
    fn default() -> Self {
        Self {
            secrets: LeakAction::Redact,
            pii: LeakAction::Redact,
            canaries: LeakAction::Block,
            canary_strings: Vec::new(),
            kinds: Vec::new(),
            disabled_kinds: Vec::new(),
            holdback: 256,
            whole_body_limit: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    None,
    /// Random-looking token of at least this many bits per byte (no long runs).
    Random(f32),
    Iban,
    Btc,
    Bech32,
    Ipv4,
    Ipv6,
    Mac,
    EsNif,
    FiHetu,
    ItFiscal,
    Phone,
    /// The credential after the last space/colon must look random.
    TailRandom(f32),
    /// URL userinfo whose password is not a placeholder.
    UrlPassword,
    /// `user:password` on a command line, not a variable or a placeholder.
    CliPassword,
    /// Not followed by a token character.
    EndBoundary,
    /// Random, and neither preceded nor followed by a token character.
    BoundedRandom(f32),
}

struct Spec {
    kind: &'static str,
    class: LeakClass,
    pattern: &'static str,
    check: Check,
    default_on: bool,
}

const fn secret(kind: &'static str, pattern: &'static str, check: Check) -> Spec {
    Spec {
        kind,
        class: LeakClass::Secret,
        pattern,
        check,
        default_on: true,
    }
}

const fn pii(kind: &'static str, pattern: &'static str, check: Check, default_on: bool) -> Spec {
    Spec {
        kind,
        class: LeakClass::Pii,
        pattern,
        check,
        default_on,
    }
}

const PRIVATE_KEY: &str = "secret.private_key";

/// The regex detectors. Numeric identifiers (cards, SSNs, national numbers) are found by the
/// digit-group scanner below instead, so one number is tried against every format.
const SPECS: &[Spec] = &[
    secret(
        PRIVATE_KEY,
        r"-----BEGIN[ A-Z0-9]{0,24}PRIVATE KEY(?: BLOCK)?-----(?:\\[nr]|[ \t\r\n])*(?:[A-Za-z0-9+/=:, -]{1,80}(?:\\[nr]|[\r\n])+){0,4}[A-Za-z0-9+/=]{16}",
        Check::None,
    ),
    secret(
        "secret.jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        Check::Random(3.5),
    ),
    secret(
        "secret.aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
        Check::Random(3.0),
    ),
    secret(
        "secret.aws_secret_key",
        r"(?i:aws)[A-Za-z0-9_ .-]{0,20}(?i:secret)[A-Za-z0-9_ .-]{0,20}[\x22']?\s*[=:]\s*[\x22']?[A-Za-z0-9/+]{40}\b",
        Check::TailRandom(4.0),
    ),
    secret(
        "secret.aws_bedrock_key",
        r"\bABSK[A-Za-z0-9+/]{109,269}={0,2}",
        Check::EndBoundary,
    ),
    secret(
        "secret.anthropic_key",
        r"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,110}AA\b",
        Check::EndBoundary,
    ),
    secret(
        "secret.openai_key",
        r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,200}",
        Check::Random(4.0),
    ),
    secret(
        "secret.openai_key",
        r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b",
        Check::None,
    ),
    secret(
        "secret.github_token",
        r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
        Check::Random(3.5),
    ),
    secret(
        "secret.github_token",
        r"\bgithub_pat_[A-Za-z0-9_]{82}\b",
        Check::Random(3.5),
    ),
    secret(
        "secret.gitlab_token",
        r"\bgl(?:pat|ptt|rt|cbt|dt|ft|oas|imt|agent|soat)-[A-Za-z0-9_-]{20,}",
        Check::Random(3.5),
    ),
    secret(
        "secret.slack_token",
        r"\bxox[abposre]-[0-9]{10,13}-[0-9]{10,13}[A-Za-z0-9-]{0,64}",
        Check::Random(3.0),
    ),
    secret(
        "secret.slack_webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{40,100}",
        Check::None,
    ),
    secret(
        "secret.stripe_key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,99}\b",
        Check::Random(3.5),
    ),
    secret(
        "secret.gcp_service_account",
        r#"\\?"type\\?"\s*:\s*\\?"service_account\\?""#,
        Check::None,
    ),
    Spec {
        kind: "secret.gcp_api_key",
        class: LeakClass::Secret,
        pattern: r"\bAIza[0-9A-Za-z_-]{35}\b",
        check: Check::Random(3.5),
        default_on: false,
    },
    secret(
        "secret.huggingface_token",
        r"\bhf_[A-Za-z]{34}\b",
        Check::Random(4.0),
    ),
    secret(
        "secret.url_credentials",
        r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:@/?#\x22'<>\\]{1,64}:[^\s@/?#\x22'<>\\]{3,128}@[A-Za-z0-9][A-Za-z0-9.-]*",
        Check::UrlPassword,
    ),
    secret(
        "secret.authorization_header",
        r"(?i:authorization)[\x22']?\s*:\s*(?:(?i:basic|bearer|token|api-token|apikey|digest)\s+)?[A-Za-z0-9._~+/=-]{8,}",
        Check::TailRandom(3.0),
    ),
    secret(
        "secret.cli_password",
        r"\bcurl\b[^\n]{0,200}?\s(?:-u|--user)\s*[\x22']?[^\s\x22':$]{1,64}:[\x22']?[^\s\x22']{4,128}",
        Check::CliPassword,
    ),
    secret(
        "secret.facebook_token",
        r"\b[0-9]{15,16}\|[A-Za-z0-9_-]{27}\b",
        Check::None,
    ),
    secret(
        "secret.facebook_token",
        r"\bEAA[MC][A-Za-z0-9]{100,}",
        Check::Random(4.0),
    ),
    secret(
        "secret.onepassword_token",
        r"\bops_eyJ[A-Za-z0-9+/_-]{200,}={0,3}",
        Check::Random(4.0),
    ),
    secret(
        "secret.intra42_secret",
        r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b",
        Check::None,
    ),
    secret(
        "secret.notion_token",
        r"\bntn_[0-9]{11}[A-Za-z0-9]{35}\b",
        Check::Random(4.0),
    ),
    secret(
        "secret.octopus_key",
        r"\bAPI-[A-Z0-9]{26}\b",
        Check::Random(3.5),
    ),
    secret(
        "secret.sourcegraph_token",
        r"\bsgp_(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}\b",
        Check::Random(3.2),
    ),
    secret(
        "secret.sourcegraph_token",
        r"(?i:sourcegraph)[^\n]{0,20}?\b[a-fA-F0-9]{40}\b",
        Check::TailRandom(3.2),
    ),
    secret(
        "secret.vault_token",
        r"\bhvs\.[A-Za-z0-9_-]{90,}",
        Check::Random(4.0),
    ),
    secret(
        "secret.vault_token",
        r"\bs\.[A-Za-z0-9]{24}\b",
        Check::Random(3.8),
    ),
    secret(
        "secret.azure_client_secret",
        r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}",
        Check::BoundedRandom(3.8),
    ),
    pii(
        "pii.email",
        r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,24}|xn--[A-Za-z0-9-]{1,59})\b",
        Check::None,
        true,
    ),
    pii(
        "pii.phone",
        r"\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,5}(?:[ .-]?[0-9]{1,5}){1,5}",
        Check::Phone,
        true,
    ),
    pii(
        "pii.phone",
        r"\([0-9]{3}\)[ ]?[0-9]{3}[-. ][0-9]{4}\b",
        Check::None,
        true,
    ),
    pii(
        "pii.phone",
        r"\b[0-9]{3}-[0-9]{3}-[0-9]{4}\b",
        Check::None,
        true,
    ),
    pii(
        "pii.phone",
        r"\b0[0-9]{1,3}-[0-9]{3,4}-?[0-9]{4}\b",
        Check::None,
        true,
    ),
    pii(
        "pii.ip_address",
        r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        Check::Ipv4,
        false,
    ),
    pii(
        "pii.ip_address",
        r"(?:[0-9A-Fa-f]{1,4}:|:){1,7}(?::|(?::?[0-9A-Fa-f]{1,4}){1,7}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})(?:%[A-Za-z0-9]+)?",
        Check::Ipv6,
        false,
    ),
    pii(
        "pii.mac_address",
        r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b",
        Check::Mac,
        false,
    ),
    pii(
        "pii.mac_address",
        r"\b[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\b",
        Check::Mac,
        false,
    ),
    pii(
        "pii.crypto_wallet",
        r"\b[13][1-9A-HJ-NP-Za-km-z]{25,34}\b",
        Check::Btc,
        true,
    ),
    pii(
        "pii.crypto_wallet",
        r"\b(?:bc|tb)1[02-9ac-hj-np-z]{11,71}\b",
        Check::Bech32,
        true,
    ),
    pii(
        "pii.crypto_wallet",
        r"\b0x[0-9a-fA-F]{40}\b",
        Check::Random(3.0),
        true,
    ),
    pii(
        "pii.iban",
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        Check::Iban,
        true,
    ),
    pii(
        "pii.national_id",
        r"\b(?:[XYZxyz][0-9]{7}|[0-9]{7,8})-?[A-Za-z]\b",
        Check::EsNif,
        true,
    ),
    pii(
        "pii.national_id",
        r"\b[0-9]{6}[-+A-FU-Ya-fu-y][0-9]{3}[0-9A-Ya-y]\b",
        Check::FiHetu,
        true,
    ),
    pii(
        "pii.national_id",
        r"\b[A-Za-z]{6}[0-9]{2}[A-Za-z][0-9]{2}[A-Za-z][0-9]{3}[A-Za-z]\b",
        Check::ItFiscal,
        true,
    ),
];

/// Kinds found by the digit-group scanner.
const NUMERIC_KINDS: [&str; 3] = ["pii.card", "pii.ssn", "pii.national_id"];

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The kind (`secret.github_token`, `pii.card`, `canary`).
    pub kind: &'static str,
    /// The class.
    pub class: LeakClass,
    /// Where it is in the scanned text.
    pub range: Range<usize>,
}

/// The compiled leak guard.
pub struct LeakGuard {
    specs: Vec<&'static Spec>,
    any: Regex,
    each: Vec<Regex>,
    /// Whether the digit-group scanner runs (any of [`NUMERIC_KINDS`] is on).
    numeric: bool,
    numeric_kinds: [bool; 3],
    canaries: Option<AhoCorasick>,
    secrets: LeakAction,
    pii: LeakAction,
    canary_action: LeakAction,
    holdback: usize,
    whole_body_limit: usize,
}

impl std::fmt::Debug for LeakGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakGuard")
            .field(
                "kinds",
                &self.specs.iter().map(|s| s.kind).collect::<Vec<_>>(),
            )
            .field(
                "canaries",
                &self.canaries.as_ref().map(AhoCorasick::patterns_len),
            )
            .field("holdback", &self.holdback)
            .field("whole_body_limit", &self.whole_body_limit)
            .finish_non_exhaustive()
    }
}

fn build(patterns: &[&str], kind: MatchKind) -> Result<Regex, ConfigError> {
    Regex::builder()
        .configure(Regex::config().match_kind(kind))
        .syntax(syntax::Config::new().utf8(false).unicode(false))
        .build_many(patterns)
        .map_err(|e| {
            ConfigError::new(
                "leakGuard",
                e.to_string(),
                "report this: a built-in pattern does not compile",
            )
        })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'~' | b'.' | b'+' | b'/' | b'=')
}

impl LeakGuard {
    /// Compiles the guard.
    ///
    /// # Errors
    ///
    /// An unknown kind, a canary shorter than 8 bytes, a holdback below 64 bytes, a whole-body
    /// limit above [`MAX_WHOLE_BODY_LIMIT`].
    pub fn new(config: &LeakGuardConfig) -> Result<Self, ConfigError> {
        let known =
            |k: &str| k == "all" || SPECS.iter().any(|s| s.kind == k) || NUMERIC_KINDS.contains(&k);
        for k in config.kinds.iter().chain(&config.disabled_kinds) {
            if !known(k) {
                return Err(ConfigError::new(
                    "leakGuard.kinds",
                    format!("unknown kind `{k}`"),
                    "use `all` or kinds such as secret.github_token, pii.card, pii.email",
                ));
            }
        }
        if config.holdback < 64 {
            return Err(ConfigError::new(
                "leakGuard.holdback",
                "below 64 bytes",
                "use at least 64 (the default is 256)",
            ));
        }
        if config.whole_body_limit > MAX_WHOLE_BODY_LIMIT {
            return Err(ConfigError::new(
                "leakGuard.wholeBodyLimit",
                format!("{} bytes is above 16 MiB", config.whole_body_limit),
                "use at most 16777216 (the default is 65536), or 0 to stream every response",
            ));
        }
        let enabled = |kind: &str, default_on: bool| {
            let on = if config.kinds.is_empty() {
                default_on
            } else {
                config.kinds.iter().any(|k| k == "all" || k == kind)
            };
            on && !config.disabled_kinds.iter().any(|k| k == kind)
        };
        let specs: Vec<&'static Spec> = SPECS
            .iter()
            .filter(|s| enabled(s.kind, s.default_on))
            .collect();
        let patterns: Vec<&str> = specs.iter().map(|s| s.pattern).collect();
        let any = build(&patterns, MatchKind::All)?;
        let each = patterns
            .iter()
            .map(|p| build(&[p], MatchKind::LeftmostFirst))
            .collect::<Result<Vec<_>, _>>()?;
        let numeric_kinds = NUMERIC_KINDS.map(|k| enabled(k, true));
        let numeric = numeric_kinds.iter().any(|&b| b);
        if let Some(short) = config.canary_strings.iter().find(|c| c.len() < 8) {
            return Err(ConfigError::new(
                "leakGuard.canaryStrings",
                format!(
                    "a canary of {} bytes would match ordinary text",
                    short.len()
                ),
                "use canaries of at least 8 bytes, e.g. random words",
            ));
        }
        let canaries = if config.canary_strings.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&config.canary_strings).map_err(|e| {
                ConfigError::new(
                    "leakGuard.canaryStrings",
                    e.to_string(),
                    "use fewer or shorter canaries",
                )
            })?)
        };
        Ok(Self {
            specs,
            any,
            each,
            numeric,
            numeric_kinds,
            canaries,
            secrets: config.secrets,
            pii: config.pii,
            canary_action: config.canaries,
            holdback: config.holdback,
            whole_body_limit: config.whole_body_limit,
        })
    }

    /// Every detector kind.
    pub fn kinds() -> impl Iterator<Item = &'static str> {
        let mut kinds: Vec<&'static str> =
            SPECS.iter().map(|s| s.kind).chain(NUMERIC_KINDS).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.into_iter()
    }

    /// The longest response, by its declared length, read whole before it is sent (see
    /// [`LeakGuardConfig::whole_body_limit`]).
    pub fn whole_body_limit(&self) -> usize {
        self.whole_body_limit
    }

    /// The action for a class.
    pub fn action(&self, class: LeakClass) -> LeakAction {
        match class {
            LeakClass::Secret => self.secrets,
            LeakClass::Pii => self.pii,
            LeakClass::Canary => self.canary_action,
        }
    }

    /// Finds every leak in `text`, in order, without overlaps.
    pub fn scan(&self, text: &[u8]) -> Vec<Finding> {
        without_overlaps(&self.scan_all(text))
    }

    /// Every finding in `text`, by start (the longest first), overlaps included.
    fn scan_all(&self, text: &[u8]) -> Vec<Finding> {
        let mut found = Vec::new();
        let mut set = PatternSet::new(self.any.pattern_len());
        // (Most text holds nothing: a search that stops at the first match, and runs the
        // faster loop of a non-overlapping search, says so before the overlapping one.)
        if self.any.is_match(text) {
            self.any
                .which_overlapping_matches(&Input::new(text), &mut set);
        }
        for pid in set.iter() {
            let i = pid.as_usize();
            let (Some(spec), Some(re)) = (self.specs.get(i), self.each.get(i)) else {
                continue;
            };
            for m in re.find_iter(text) {
                let hit = text.get(m.range()).unwrap_or_default();
                let before = m.start().checked_sub(1).and_then(|i| text.get(i)).copied();
                let after = text.get(m.end()).copied();
                if validate(spec.check, hit, before, after) {
                    let mut range = m.range();
                    if spec.kind == PRIVATE_KEY {
                        range.end = pem_end(text, range.end).unwrap_or(range.end);
                    }
                    found.push(Finding {
                        kind: spec.kind,
                        class: spec.class,
                        range,
                    });
                }
            }
        }
        if self.numeric {
            for m in numeric_runs(text) {
                let before = m.start.checked_sub(1).and_then(|i| text.get(i)).copied();
                let after = text.get(m.end).copied();
                if before.is_some_and(|b| b.is_ascii_alphanumeric())
                    || after.is_some_and(|b| b.is_ascii_alphanumeric())
                {
                    continue;
                }
                // (Every numeric format has at least nine digits.)
                let digits = text
                    .get(m.clone())
                    .unwrap_or_default()
                    .iter()
                    .filter(|b| b.is_ascii_digit())
                    .count();
                if digits < MIN_NUMERIC_DIGITS {
                    continue;
                }
                // A JSON number (`"created": 1701299883`) is a count, a time or an id of the
                // API, not an identity number someone wrote down.
                let head = text.get(..m.start).unwrap_or_default().trim_ascii_end();
                let json_number = head.ends_with(b"\":");
                let [card, ssn, ids] = self.numeric_kinds;
                let kinds = [card, ssn, ids && !json_number];
                numeric_findings(text, m, kinds, &mut found);
            }
        }
        if let Some(ac) = &self.canaries {
            for m in ac.find_iter(text) {
                found.push(Finding {
                    kind: "canary",
                    class: LeakClass::Canary,
                    range: m.range(),
                });
            }
        }
        found.sort_by(|a, b| {
            a.range
                .start
                .cmp(&b.range.start)
                .then(b.range.end.cmp(&a.range.end))
        });
        found
    }

    /// A scanner for one streamed body.
    pub fn stream(self: &Arc<Self>) -> LeakStream {
        LeakStream {
            guard: self.clone(),
            pending: Vec::new(),
            in_pem: false,
            counts: BTreeMap::new(),
            fresh: Vec::new(),
            blocked: false,
            carried: None,
        }
    }
}

/// `found` (ordered as [`LeakGuard::scan_all`] orders it) without the findings that overlap
/// an earlier one.
fn without_overlaps(found: &[Finding]) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        if out.last().is_some_and(|l| f.range.start < l.range.end) {
            continue;
        }
        out.push(f.clone());
    }
    out
}

/// The end of the `-----END ...-----` line after a private key header, within 16 KiB.
fn pem_end(text: &[u8], from: usize) -> Option<usize> {
    let rest = text.get(from..)?;
    let window = rest.get(..rest.len().min(16 * 1024))?;
    let at = window.windows(8).position(|w| w == b"-----END")?;
    let tail = window.get(at + 8..)?;
    let close = tail.windows(5).position(|w| w == b"-----")?;
    Some(from + at + 8 + close + 5)
}

fn validate(check: Check, hit: &[u8], before: Option<u8>, after: Option<u8>) -> bool {
    let boundary = || !after.is_some_and(is_token_byte);
    match check {
        Check::BoundedRandom(min) => {
            boundary()
                && !before.is_some_and(is_token_byte)
                && check::random_token(hit, f64::from(min))
        }
        Check::None => true,
        Check::EndBoundary => boundary(),
        Check::Random(min) => check::random_token(hit, f64::from(min)),
        Check::TailRandom(min) => {
            let tail = hit
                .rsplit(|&b| {
                    b.is_ascii_whitespace() || b == b':' || b == b'=' || b == b'"' || b == b'\''
                })
                .find(|t| !t.is_empty())
                .unwrap_or_default();
            tail.len() >= 8 && check::random_token(tail, f64::from(min))
        }
        Check::Iban => check::iban(hit),
        Check::Btc => check::btc_base58(hit),
        Check::Bech32 => check::bech32(hit),
        Check::Ipv4 => check::ipv4(hit),
        Check::Ipv6 => {
            let edge = |b: Option<u8>| {
                b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'.')
            };
            !edge(before) && !edge(after) && check::ipv6(hit)
        }
        Check::Mac => check::mac(hit),
        Check::EsNif => check::es_nif(hit),
        Check::FiHetu => check::fi_hetu(hit),
        Check::ItFiscal => check::it_fiscal(hit),
        Check::Phone => {
            let n = hit.iter().filter(|b| b.is_ascii_digit()).count();
            (8..=15).contains(&n)
        }
        Check::UrlPassword => {
            let Some(scheme_end) = hit.windows(3).position(|w| w == b"://") else {
                return false;
            };
            let userinfo = hit.get(scheme_end + 3..).unwrap_or_default();
            let userinfo = userinfo.split(|&b| b == b'@').next().unwrap_or_default();
            let mut parts = userinfo.splitn(2, |&b| b == b':');
            let (user, pass) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            credential_like(user, pass)
        }
        Check::CliPassword => {
            let cred = hit
                .rsplit(|&b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            let cred: Vec<u8> = cred
                .iter()
                .copied()
                .filter(|&b| b != b'"' && b != b'\'')
                .collect();
            let mut parts = cred.splitn(2, |&b| b == b':');
            let (user, pass) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            credential_like(user, pass)
        }
    }
}

/// A `user:password` pair that is not a placeholder or a variable reference.
fn credential_like(user: &[u8], pass: &[u8]) -> bool {
    let placeholder = |s: &[u8]| {
        s.is_empty()
            || matches!(s.first(), Some(b'$' | b'{' | b'<' | b'*' | b'%' | b'['))
            || s.chunk_by(|a, b| a == b).any(|run| run.len() >= 4)
            || [
                &b"password"[..],
                b"passwd",
                b"pass",
                b"secret",
                b"changeme",
                b"xxx",
                b"yyy",
                b"user",
                b"username",
            ]
            .iter()
            .any(|p| s.eq_ignore_ascii_case(p))
    };
    pass.len() >= 4 && !placeholder(pass) && !placeholder(user) && user != pass
}

/// Tries every window of digit groups in `range` against the numeric formats.
fn numeric_findings(text: &[u8], range: Range<usize>, kinds: [bool; 3], out: &mut Vec<Finding>) {
    let run = text.get(range.clone()).unwrap_or_default();
    // Groups: (start, end) offsets within the run, and the separator before each.
    let mut groups: Vec<(usize, usize, u8)> = Vec::new();
    let mut i = 0;
    let mut sep = 0u8;
    while i < run.len() {
        let start = i;
        while run.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        groups.push((start, i, sep));
        sep = run.get(i).copied().unwrap_or(0);
        i += 1;
        if groups.len() > 64 {
            break;
        }
    }
    let mut g = 0;
    while g < groups.len() {
        let mut matched = None;
        let mut digits = 0;
        for h in g..groups.len() {
            let Some(&(s, e, _)) = groups.get(h) else {
                break;
            };
            digits += e - s;
            if digits > 19 {
                break;
            }
            if digits < MIN_NUMERIC_DIGITS {
                continue;
            }
            let window = groups.get(g..=h).unwrap_or_default();
            let Some(&(ws, _, _)) = window.first() else {
                break;
            };
            let hit = run.get(ws..e).unwrap_or_default();
            if let Some(kind) = classify(hit, window, kinds) {
                matched = Some((h, kind, range.start + ws..range.start + e));
            }
        }
        match matched {
            Some((h, kind, r)) => {
                out.push(Finding {
                    kind,
                    class: LeakClass::Pii,
                    range: r,
                });
                g = h + 1;
            }
            None => g += 1,
        }
    }
}

/// The fewest digits of a number [`classify`] takes.
const MIN_NUMERIC_DIGITS: usize = 9;

/// The runs of digit groups in `text`, left to right: what `[0-9]+(?:[ .-][0-9]+)*` finds,
/// by hand (a number in JSON is short; a regex search costs more to start than to run).
fn numeric_runs(text: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let digit = |i: usize| text.get(i).is_some_and(u8::is_ascii_digit);
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = next_digit(text, at)?;
        let mut end = start;
        loop {
            while digit(end) {
                end += 1;
            }
            if matches!(text.get(end), Some(b' ' | b'.' | b'-')) && digit(end + 1) {
                end += 1;
            } else {
                break;
            }
        }
        at = end;
        Some(start..end)
    })
}

/// The first digit in `text` at or after `from`.
fn next_digit(text: &[u8], from: usize) -> Option<usize> {
    let mut base = from;
    // (Blocks tested whole, which vectorizes, then the block with a digit byte by byte.)
    for block in text.get(from..)?.chunks(32) {
        if block.iter().fold(false, |any, b| any | b.is_ascii_digit()) {
            return block.iter().position(u8::is_ascii_digit).map(|i| base + i);
        }
        base += block.len();
    }
    None
}

/// Which numeric format a window of digit groups is, if any.
fn classify(hit: &[u8], window: &[(usize, usize, u8)], kinds: [bool; 3]) -> Option<&'static str> {
    let [card_on, ssn_on, id_on] = kinds;
    let d = check::digits(hit);
    let lens: Vec<usize> = window.iter().map(|(s, e, _)| e - s).collect();
    let seps: Vec<u8> = window.iter().skip(1).map(|&(_, _, s)| s).collect();
    let one_sep = seps.windows(2).all(|w| w.first() == w.get(1));
    if card_on
        && (lens.len() == 1
            || (one_sep
                && (lens.iter().all(|&l| l == 4)
                    || lens.as_slice() == [4, 6, 5]
                    || lens.as_slice() == [4, 6, 4])))
        && check::card(&d)
    {
        return Some("pii.card");
    }
    if ssn_on && lens.as_slice() == [3, 2, 4] && one_sep && check::ssn(&d) {
        return Some("pii.ssn");
    }
    if !id_on || seps.iter().any(|&s| s != b' ' && s != b'-') {
        return None;
    }
    let dash = seps.iter().all(|&s| s == b'-');
    // Identifiers whose only check is a mod-10/11 digit would match one bare number in ten
    // (timestamps and ids in every JSON response): only their written, grouped form counts.
    let grouped = |want: &[usize]| lens.as_slice() == want && one_sep;
    let ok = match d.len() {
        9 => grouped(&[3, 3, 3]) && (check::ca_sin(&d) || check::au_tfn(&d)),
        10 => {
            (grouped(&[3, 3, 4]) && check::uk_nhs(&d))
                || ((lens.len() == 1 || (lens.as_slice() == [6, 4] && dash))
                    && check::se_personnummer(&d))
        }
        11 => {
            (lens.len() == 1 && (check::pl_pesel(&d) || check::tr_tckn(&d)))
                || (grouped(&[2, 3, 3, 3]) && check::au_abn(&d))
        }
        12 => {
            (grouped(&[4, 4, 4]) && check::in_aadhaar(&d))
                || ((lens.len() == 1 || (lens.as_slice() == [8, 4] && dash))
                    && check::se_personnummer(&d))
        }
        13 => {
            (lens.len() == 1 && check::za_id(&d))
                || ((lens.len() == 1 || (lens.as_slice() == [6, 7] && dash)) && check::kr_rrn(&d))
        }
        _ => false,
    };
    ok.then_some("pii.national_id")
}

/// Output of a [`LeakStream`] step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamOutput {
    /// Bytes safe to send on (with redactions applied).
    pub emit: Vec<u8>,
    /// A `block` finding was made: send nothing more.
    pub blocked: bool,
}

/// Findings a stream keeps for [`LeakStream::take_findings`]; past it only the counts grow.
const MAX_FRESH: usize = 1024;

/// Scans one streamed body chunk by chunk.
#[derive(Debug)]
pub struct LeakStream {
    guard: Arc<LeakGuard>,
    pending: Vec<u8>,
    in_pem: bool,
    counts: BTreeMap<&'static str, u32>,
    /// Findings not yet taken by [`LeakStream::take_findings`].
    fresh: Vec<(&'static str, LeakClass)>,
    blocked: bool,
    /// What the last scan found in the bytes still held back (offsets into `pending`), kept
    /// until more bytes come: the stream's end then needs no second scan of them.
    carried: Option<Vec<Finding>>,
}

impl LeakStream {
    /// Feeds the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> StreamOutput {
        self.pending.extend_from_slice(chunk);
        self.step(false)
    }

    /// Feeds the last chunk and ends the stream: one scan, with nothing held back (a body
    /// read whole).
    pub fn push_last(&mut self, chunk: &[u8]) -> StreamOutput {
        self.pending.extend_from_slice(chunk);
        self.step(true)
    }

    /// Ends the stream, releasing what was held back.
    pub fn finish(&mut self) -> StreamOutput {
        self.step(true)
    }

    /// Findings so far, by kind.
    pub fn counts(&self) -> &BTreeMap<&'static str, u32> {
        &self.counts
    }

    /// Whether a `block` finding was made.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The findings made since the last call, as (kind, class), in order (at most 1,024
    /// between calls; [`LeakStream::counts`] has them all).
    pub fn take_findings(&mut self) -> Vec<(&'static str, LeakClass)> {
        std::mem::take(&mut self.fresh)
    }

    fn step(&mut self, last: bool) -> StreamOutput {
        if self.blocked {
            self.pending.clear();
            return StreamOutput {
                emit: Vec::new(),
                blocked: true,
            };
        }
        let mut out = Vec::with_capacity(self.pending.len());
        // Inside a redacted private key: drop everything up to the END line.
        if self.in_pem {
            match pem_end(&self.pending, 0) {
                Some(end) => {
                    self.pending.drain(..end);
                    self.in_pem = false;
                }
                None => {
                    let keep = if last { 0 } else { 64.min(self.pending.len()) };
                    let cut = self.pending.len() - keep;
                    self.pending.drain(..cut);
                    return StreamOutput {
                        emit: out,
                        blocked: false,
                    };
                }
            }
        }
        // (Found with the bytes before them as context, as a scan of the whole body would.)
        let all = match self.carried.take() {
            Some(carried) if last => carried,
            _ => self.guard.scan_all(&self.pending),
        };
        let findings = without_overlaps(&all);
        let safe = if last {
            self.pending.len()
        } else {
            self.pending.len().saturating_sub(self.guard.holdback)
        };
        let mut boundary = safe;
        let mut cursor = 0;
        for f in findings.iter().filter(|f| f.range.start < safe) {
            *self.counts.entry(f.kind).or_insert(0) += 1;
            if self.fresh.len() < MAX_FRESH {
                self.fresh.push((f.kind, f.class));
            }
            match self.guard.action(f.class) {
                LeakAction::Block => {
                    self.blocked = true;
                    self.pending.clear();
                    return StreamOutput {
                        emit: Vec::new(),
                        blocked: true,
                    };
                }
                LeakAction::Log => {}
                LeakAction::Redact => {
                    out.extend_from_slice(
                        self.pending.get(cursor..f.range.start).unwrap_or_default(),
                    );
                    out.extend_from_slice(b"[REDACTED:");
                    out.extend_from_slice(f.kind.as_bytes());
                    out.push(b']');
                    cursor = f.range.end;
                    boundary = boundary.max(f.range.end);
                    if f.kind == PRIVATE_KEY
                        && !self
                            .pending
                            .get(f.range.clone())
                            .unwrap_or_default()
                            .windows(8)
                            .any(|w| w == b"-----END")
                    {
                        // The key body goes on past what we have: drop it as it comes.
                        self.in_pem = true;
                        boundary = self.pending.len();
                    }
                }
            }
        }
        let boundary = boundary.min(self.pending.len());
        if cursor < boundary {
            out.extend_from_slice(self.pending.get(cursor..boundary).unwrap_or_default());
        }
        if self.in_pem {
            self.pending.clear();
        } else {
            let sent = boundary.max(cursor).min(self.pending.len());
            self.pending.drain(..sent);
            if !last {
                self.carried = Some(
                    all.into_iter()
                        .filter(|f| f.range.start >= sent)
                        .map(|f| Finding {
                            range: f.range.start - sent..f.range.end - sent,
                            ..f
                        })
                        .collect(),
                );
            }
        }
        StreamOutput {
            emit: out,
            blocked: false,
        }
    }
}

#[cfg(test)]
mod tests;
