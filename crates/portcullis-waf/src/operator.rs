//! Operators: how a rule tests a (transformed) value, with ModSecurity semantics.
//!
//! Every operator is compiled once (regexes, phrase sets, CIDR lists, byte ranges) and then
//! tests byte values without allocating. Each can be negated.

use std::fmt;
use std::sync::Arc;

use portcullis_core::IpCidr;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;

/// Why an operator could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The operator name is not supported.
    #[error("unknown operator `@{0}`")]
    Unknown(String),
    /// The parameter is not valid for the operator.
    #[error("`@{operator}`: {problem}")]
    BadParameter {
        /// The operator.
        operator: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn bad(operator: &'static str, problem: impl Into<String>) -> OperatorError {
    OperatorError::BadParameter {
        operator,
        problem: problem.into(),
    }
}

/// A compiled operator.
#[derive(Clone)]
#[non_exhaustive]
pub enum Operator {
    /// `@rx`: a regular expression over bytes.
    Rx(Arc<Regex>),
    /// `@pm`: any of a set of phrases, case-insensitive.
    Pm(Arc<Regex>),
    /// `@streq`: equal to.
    StrEq(Vec<u8>),
    /// `@contains`.
    Contains(Vec<u8>),
    /// `@beginsWith`.
    BeginsWith(Vec<u8>),
    /// `@endsWith`.
    EndsWith(Vec<u8>),
    /// `@within`: the value occurs in the parameter.
    Within(Arc<Haystack>),
    /// `@eq`, `@ge`, `@gt`, `@le`, `@lt`: the value as an integer compared with the parameter.
    Numeric(Comparison, i64),
    /// `@ipMatch`: the value is an address in one of the networks.
    IpMatch(Arc<[IpCidr]>),
    /// `@validateByteRange`: matches when a byte lies outside the allowed ranges.
    ValidateByteRange(Box<ByteRange>),
    /// `@validateUtf8Encoding`: matches invalid UTF-8 (including overlong forms and surrogates).
    ValidateUtf8Encoding,
    /// `@validateUrlEncoding`: matches a `%` not followed by two hex digits.
    ValidateUrlEncoding,
    /// `@unconditionalMatch`.
    Unconditional,
    /// `@noMatch`.
    Never,
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `@eq`.
    Eq,
    /// `@ge`.
    Ge,
    /// `@gt`.
    Gt,
    /// `@le`.
    Le,
    /// `@lt`.
    Lt,
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Rx(_) => "rx",
            Self::Pm(_) => "pm",
            Self::StrEq(_) => "streq",
            Self::Contains(_) => "contains",
            Self::BeginsWith(_) => "beginsWith",
            Self::EndsWith(_) => "endsWith",
            Self::Within(_) => "within",
            Self::Numeric(..) => "numeric",
            Self::IpMatch(_) => "ipMatch",
            Self::ValidateByteRange(_) => "validateByteRange",
            Self::ValidateUtf8Encoding => "validateUtf8Encoding",
            Self::ValidateUrlEncoding => "validateUrlEncoding",
            Self::Unconditional => "unconditionalMatch",
            Self::Never => "noMatch",
        };
        write!(f, "@{name}")
    }
}

/// Rewrites `\x{hh}` (one or two hex digits) to `\xhh`, which byte-mode regexes accept, leaving
/// longer code points as they are.
pub(crate) fn rewrite_hex_escapes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find("\\x{") {
        // An escaped backslash before `x{` is a literal backslash, not an escape.
        let before = rest.get(..at).unwrap_or_default();
        let backslashes = before.bytes().rev().take_while(|&b| b == b'\\').count();
        let tail = rest.get(at + 3..).unwrap_or_default();
        let close = tail.find('}');
        let digits = close.and_then(|c| tail.get(..c)).unwrap_or_default();
        out.push_str(before);
        if backslashes % 2 == 0
            && (1..=2).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            out.push_str("\\x");
            if digits.len() == 1 {
                out.push('0');
            }
            out.push_str(digits);
            rest = tail.get(digits.len() + 1..).unwrap_or_default();
        } else {
            out.push_str("\\x{");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// ModSecurity's integer conversion: optional sign and leading digits; anything else is 0.
fn to_int(value: &[u8]) -> i64 {
    if value.is_ascii() {
        to_int_ascii(value)
    } else {
        to_int_text(&String::from_utf8_lossy(value))
    }
}

/// [`to_int_text`] on ASCII, without making a string of it (most values compared are short
/// ASCII numbers).
fn to_int_ascii(value: &[u8]) -> i64 {
    let space = |b: &u8| char::from(*b).is_whitespace();
    let start = value.iter().position(|b| !space(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |e| e + 1);
    let text = value.get(start..end).unwrap_or_default();
    let (sign, digits) = match text.split_first() {
        Some((b'-', rest)) => (-1, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, text),
    };
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits
        .get(..end)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<i64>().ok())
        .map_or(0, |n| n * sign)
}

/// The integer `text` starts with once trimmed (`0` when it starts with none).
fn to_int_text(text: &str) -> i64 {
    let text = text.trim();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits
        .get(..end)
        .and_then(|d| d.parse::<i64>().ok())
        .map_or(0, |n| n * sign)
}

fn byte_ranges(param: &str) -> Result<Box<ByteRange>, OperatorError> {
    let mut allowed = [false; 256];
    for part in param.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim().parse::<u8>().map_err(|_| {
                bad(
                    "validateByteRange",
                    format!("`{part}` is not a byte or a range of bytes (0-255)"),
                )
            })
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(bad(
                "validateByteRange",
                format!("`{part}` is an empty range"),
            ));
        }
        for b in lo..=hi {
            if let Some(slot) = allowed.get_mut(usize::from(b)) {
                *slot = true;
            }
        }
    }
    let mut forbidden = [0_u8; 3];
    let mut count = 0;
    for (b, _) in (0..=255_u8).zip(allowed).filter(|(_, ok)| !ok) {
        if let Some(slot) = forbidden.get_mut(count) {
            *slot = b;
        }
        count += 1;
    }
    Ok(Box::new(ByteRange {
        allowed,
        forbidden: (count <= forbidden.len()).then_some((count, forbidden)),
    }))
}

/// `@validateByteRange`'s allowed bytes, and the forbidden ones when there are at most
/// three (CRS's `1-255` forbids only NUL): a value is then searched for them with `memchr`.
#[derive(Debug, Clone)]
pub struct ByteRange {
    allowed: [bool; 256],
    forbidden: Option<(usize, [u8; 3])>,
}

impl ByteRange {
    /// Whether `value` holds a byte outside the ranges.
    fn violated_by(&self, value: &[u8]) -> bool {
        match self.forbidden {
            Some((0, _)) => false,
            Some((1, [a, ..])) => memchr::memchr(a, value).is_some(),
            Some((2, [a, b, _])) => memchr::memchr2(a, b, value).is_some(),
            Some((_, [a, b, c])) => memchr::memchr3(a, b, c, value).is_some(),
            None => value
                .iter()
                .any(|&b| !self.allowed.get(usize::from(b)).copied().unwrap_or(false)),
        }
    }
}

impl Operator {
    /// Compiles operator `name` (without the `@`) with its parameter.
    ///
    /// # Errors
    ///
    /// An unknown operator, or a parameter the operator cannot use (a regex that does not
    /// compile, a bad CIDR, a bad byte range, a non-numeric comparison operand).
    pub fn compile(name: &str, param: &str) -> Result<Self, OperatorError> {
        let op = match name {
            "rx" => {
                let pattern = rewrite_hex_escapes(param);
                let regex = Regex::builder()
                    .syntax(syntax::Config::new().utf8(false).unicode(false))
                    .build(&pattern)
                    .map_err(|e| bad("rx", e.to_string()))?;
                Self::Rx(Arc::new(regex))
            }
            "pm" => Self::phrases(param.split_whitespace())?,
            "streq" => Self::StrEq(param.as_bytes().to_vec()),
            "contains" => Self::Contains(param.as_bytes().to_vec()),
            "beginsWith" => Self::BeginsWith(param.as_bytes().to_vec()),
            "endsWith" => Self::EndsWith(param.as_bytes().to_vec()),
            "within" => Self::Within(Arc::new(Haystack::new(param.as_bytes()))),
            "eq" | "ge" | "gt" | "le" | "lt" => {
                let cmp = match name {
                    "eq" => Comparison::Eq,
                    "ge" => Comparison::Ge,
                    "gt" => Comparison::Gt,
                    "le" => Comparison::Le,
                    _ => Comparison::Lt,
                };
                let n = param
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| bad("eq", format!("`{param}` is not an integer")))?;
                Self::Numeric(cmp, n)
            }
            "ipMatch" => {
                let nets = param
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<IpCidr>()
                            .or_else(|_| {
                                // ModSecurity accepts networks with host bits set: keep the network.
                                let (addr, prefix) = p.split_once('/').ok_or(())?;
                                let addr: std::net::IpAddr = addr.parse().map_err(|_| ())?;
                                let prefix: u8 = prefix.parse().map_err(|_| ())?;
                                let max = if addr.is_ipv4() { 32 } else { 128 };
                                if prefix > max {
                                    return Err(());
                                }
                                Ok(IpCidr::containing(addr, prefix))
                            })
                            .map_err(|()| {
                                bad("ipMatch", format!("`{p}` is not an address or network"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if nets.is_empty() {
                    return Err(bad("ipMatch", "no network"));
                }
                Self::IpMatch(nets.into())
            }
            "validateByteRange" => Self::ValidateByteRange(byte_ranges(param)?),
            "validateUtf8Encoding" => Self::ValidateUtf8Encoding,
            "validateUrlEncoding" => Self::ValidateUrlEncoding,
            "unconditionalMatch" => Self::Unconditional,
            "noMatch" => Self::Never,
            other => return Err(OperatorError::Unknown(other.to_owned())),
        };
        Ok(op)
    }

    /// `@pm`: any of `phrases` (empty ones ignored), ASCII case-insensitive.
    ///
    /// # Errors
    ///
    /// No phrase, or a set too large for the automaton.
    pub fn phrases<'a>(phrases: impl IntoIterator<Item = &'a str>) -> Result<Self, OperatorError> {
        let phrases: Vec<&str> = phrases.into_iter().filter(|p| !p.is_empty()).collect();
        if phrases.is_empty() {
            return Err(bad("pm", "no phrase"));
        }
        // A literal alternation, not a bare aho-corasick automaton: the regex engine picks
        // the best literal searcher for the set (SIMD Teddy for small sets, aho-corasick for
        // large ones), which is several times faster on text where no phrase occurs.
        let mut pattern = String::new();
        for (i, phrase) in phrases.iter().enumerate() {
            if i > 0 {
                pattern.push('|');
            }
            for b in phrase.bytes() {
                if b.is_ascii_alphanumeric() || b == b' ' {
                    pattern.push(char::from(b));
                } else {
                    pattern.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
        let regex = Regex::builder()
            .syntax(
                syntax::Config::new()
                    .utf8(false)
                    .unicode(false)
                    .case_insensitive(true),
            )
            .build(&pattern)
            .map_err(|e| bad("pm", e.to_string()))?;
        Ok(Self::Pm(Arc::new(regex)))
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Rx(re) => re.is_match(value),
            Self::Pm(re) => re.is_match(value),
            Self::StrEq(p) => value == p.as_slice(),
            Self::Contains(p) => p.is_empty() || value.windows(p.len()).any(|w| w == p.as_slice()),
            Self::BeginsWith(p) => value.starts_with(p),
            Self::EndsWith(p) => value.ends_with(p),
            Self::Within(p) => !value.is_empty() && p.contains(value),
            Self::Numeric(cmp, n) => {
                let v = to_int(value);
                match cmp {
                    Comparison::Eq => v == *n,
                    Comparison::Ge => v >= *n,
                    Comparison::Gt => v > *n,
                    Comparison::Le => v <= *n,
                    Comparison::Lt => v < *n,
                }
            }
            Self::IpMatch(nets) => std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Self::ValidateByteRange(range) => range.violated_by(value),
            Self::ValidateUtf8Encoding => std::str::from_utf8(value).is_err(),
            Self::ValidateUrlEncoding => {
                let mut i = 0;
                while let Some(at) = value
                    .get(i..)
                    .and_then(|r| r.iter().position(|&b| b == b'%'))
                {
                    let p = i + at;
                    let ok = value
                        .get(p + 1..p + 3)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                    if !ok {
                        return true;
                    }
                    i = p + 3;
                }
                false
            }
            Self::Unconditional => true,
            Self::Never => false,
        }
    }
}

/// An operator and whether it is negated (`!@rx ...`).
#[derive(Debug, Clone)]
pub struct Condition {
    operator: Operator,
    negated: bool,
}

impl Condition {
    /// A condition from a compiled operator.
    pub fn new(operator: Operator, negated: bool) -> Self {
        Self { operator, negated }
    }

    /// Parses `@name param`, `!@name param`, or a bare regex (ModSecurity's default `@rx`).
    ///
    /// # Errors
    ///
    /// As for [`Operator::compile`].
    pub fn parse(text: &str) -> Result<Self, OperatorError> {
        let (negated, rest) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let operator = match rest.strip_prefix('@') {
            Some(spec) => {
                let (name, param) = spec.split_once(' ').unwrap_or((spec, ""));
                Operator::compile(name, param)?
            }
            None => Operator::compile("rx", rest)?,
        };
        Ok(Self { operator, negated })
    }

    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &[u8]) -> bool {
        self.operator.matches(value) != self.negated
    }

    /// The operator.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Whether the condition is negated.
    pub fn is_negated(&self) -> bool {
        self.negated
    }
}

/// `@within`'s parameter, with the places of each pair of adjacent bytes in it: a value is
/// looked for only where its first two bytes occur. (CRS's lists, such as
/// `/content-encoding/ /proxy/ ...`, start every entry with the same byte, so a search by
/// the first byte alone stops at every entry.)
#[derive(Debug, Clone)]
pub struct Haystack {
    text: Vec<u8>,
    /// Each pair of adjacent bytes, big-endian, with where it starts, sorted.
    pairs: Vec<(u16, u32)>,
}

impl Haystack {
    /// Indexes `text`.
    pub fn new(text: &[u8]) -> Self {
        let mut pairs: Vec<(u16, u32)> = text
            .windows(2)
            .zip(0_u32..)
            .filter_map(|(w, at)| match w {
                [a, b] => Some((u16::from_be_bytes([*a, *b]), at)),
                _ => None,
            })
            .collect();
        pairs.sort_unstable();
        Self {
            text: text.to_vec(),
            pairs,
        }
    }

    /// The parameter.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Whether `needle` occurs in the parameter (the empty needle does). Compares the needle
    /// only where its first two bytes occur: at most `text.len()` comparisons of at most
    /// `needle.len() <= text.len()` bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        match needle {
            [] => true,
            _ if needle.len() > self.text.len() => false,
            [b] => memchr::memchr(*b, &self.text).is_some(),
            [a, b, ..] => {
                let pair = u16::from_be_bytes([*a, *b]);
                let from = self.pairs.partition_point(|&(p, _)| p < pair);
                self.pairs
                    .get(from..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|&&(p, _)| p == pair)
                    .any(|&(_, at)| {
                        let at = at as usize;
                        self.text.get(at..at + needle.len()) == Some(needle)
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests;
