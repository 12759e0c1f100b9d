//! SecLang, the ModSecurity rule language the OWASP Core Rule Set is written in: the syntax
//! only. This module turns configuration text into [`Directive`]s with their file and line;
//! what the directives mean is compiled elsewhere.
//!
//! The syntax follows what ModSecurity and Coraza accept from CRS v4:
//!
//! - a line ending in `\` continues on the next line (the backslash is removed and the lines
//!   are joined as they are, after trimming); lines starting with `#` are comments, also in
//!   the middle of a continued directive;
//! - a directive is its name and whitespace-separated arguments, each bare or in double
//!   quotes; inside quotes `\"` is a quote and every other backslash is kept as written (so
//!   regexes reach the regex compiler unchanged);
//! - actions are comma-separated `name` or `name:value`, a value optionally in single quotes
//!   (`msg:'a, b'`), where `\'` does not close the quote;
//! - variables are `|`-separated, each `[!|&]NAME[:key]`, the key a name, a `'quoted name'`, a
//!   `/regex/` (in which `\/` is a slash) or, for `XML`, an XPath expression.

use std::fmt;
use std::sync::Arc;

/// Where a directive starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as it was given to the loader.
    pub file: Arc<str>,
    /// The 1-based line of the directive's first line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A syntax error, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct SyntaxError {
    /// Where.
    pub origin: Origin,
    /// What is wrong, naming the construct.
    pub problem: String,
}

/// One action of a rule: `name` or `name:value`, the name lowercased, the value unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The action's name, lowercase (`id`, `setvar`, `t`, `ctl`, ...).
    pub name: String,
    /// Its value, without the single quotes around it.
    pub value: Option<String>,
}

/// How a variable selects members of its collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `NAME:member` or `NAME:'member'`.
    Name(String),
    /// `NAME:/regex/`.
    Regex(String),
    /// `XML:/xpath`.
    XPath(String),
}

/// One variable of a rule: `ARGS`, `!ARGS:password`, `&TX:foo`, `REQUEST_COOKIES:/^_ga/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The collection, uppercase.
    pub name: String,
    /// The member selection.
    pub key: Option<Key>,
    /// `&`: the count of members.
    pub count: bool,
    /// `!`: excluded from the rule's other variables.
    pub exclude: bool,
}

/// A rule's operator: `@name param` or `!@name param`; a bare string is `@rx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDecl {
    /// The operator name without `@` (`rx`, `pm`, `detectSQLi`, ...).
    pub name: String,
    /// `!`: the result is inverted.
    pub negated: bool,
    /// The parameter, as written (macros not expanded).
    pub param: String,
}

/// A directive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Directive {
    /// `SecRule VARIABLES OPERATOR [ACTIONS]`.
    Rule {
        /// The variables.
        variables: Vec<Variable>,
        /// The operator.
        operator: OperatorDecl,
        /// The actions.
        actions: Vec<Action>,
    },
    /// `SecAction ACTIONS`: a rule that always matches.
    Action(Vec<Action>),
    /// `SecMarker NAME`: a target for `skipAfter`.
    Marker(String),
    /// `SecDefaultAction ACTIONS`: defaults for the rules of one phase.
    DefaultAction(Vec<Action>),
    /// `SecComponentSignature TEXT`.
    ComponentSignature(String),
    /// `SecRuleUpdateTargetById ID[,ID|RANGE...] TARGETS [REPLACED]`.
    UpdateTargetById {
        /// The rule ids and id ranges.
        ids: Vec<(u32, u32)>,
        /// The variables to add (exclusions with `!`).
        variables: Vec<Variable>,
        /// The variable they replace, when given.
        replaced: Option<Vec<Variable>>,
    },
    /// `SecRuleUpdateTargetByTag TAG TARGETS`.
    UpdateTargetByTag {
        /// The tag (a regex in ModSecurity; matched as a literal or regex by the compiler).
        tag: String,
        /// The variables to add.
        variables: Vec<Variable>,
    },
    /// `SecRuleRemoveById ID|RANGE ...`.
    RemoveById(Vec<(u32, u32)>),
    /// `SecRuleRemoveByTag TAG`.
    RemoveByTag(String),
    /// `SecRuleRemoveByMsg MSG`.
    RemoveByMsg(String),
    /// `SecRuleEngine On|Off|DetectionOnly`.
    RuleEngine(String),
}

/// A directive and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Where.
    pub origin: Origin,
    /// What.
    pub directive: Directive,
}

/// Directives that only tune a server ModSecurity runs in, with no meaning here: accepted and
/// ignored, so configuration written for ModSecurity loads.
const IGNORED: &[&str] = &[
    "secrequestbodyaccess",
    "secresponsebodyaccess",
    "secauditengine",
    "secauditlog",
    "secauditlogparts",
    "secauditlogtype",
    "secauditlogrelevantstatus",
    "secdebuglog",
    "secdebugloglevel",
];

/// Parses configuration `text` read from `file`.
///
/// # Errors
///
/// The first directive that cannot be parsed, or one that is not supported, with its file and
/// line.
pub fn parse(file: &str, text: &str) -> Result<Vec<Located>, SyntaxError> {
    let file: Arc<str> = file.into();
    let mut out = Vec::new();
    let mut buffer = String::new();
    let mut start = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if buffer.is_empty() {
            start = n + 1;
        }
        if let Some(head) = line.strip_suffix('\\') {
            buffer.push_str(head);
            continue;
        }
        buffer.push_str(line);
        let origin = Origin {
            file: file.clone(),
            line: start,
        };
        if let Some(directive) = directive(&buffer).map_err(|problem| SyntaxError {
            origin: origin.clone(),
            problem,
        })? {
            out.push(Located { origin, directive });
        }
        buffer.clear();
    }
    if !buffer.is_empty() {
        return Err(SyntaxError {
            origin: Origin { file, line: start },
            problem: "the file ends inside a continued line (a trailing `\\`)".into(),
        });
    }
    Ok(out)
}

/// One directive line (continuations joined). `None` for accepted but ignored directives.
fn directive(line: &str) -> Result<Option<Directive>, String> {
    let (name, rest) = line
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((line, ""));
    let args = arguments(rest)?;
    let lower = name.to_ascii_lowercase();
    let want = |n: std::ops::RangeInclusive<usize>| {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` takes {} argument(s), found {}",
                if n.start() == n.end() {
                    n.start().to_string()
                } else {
                    format!("{} to {}", n.start(), n.end())
                },
                args.len()
            ))
        }
    };
    let arg = |i: usize| args.get(i).map_or("", |a| a.text.as_str());
    let directive = match lower.as_str() {
        "secrule" => {
            want(2..=3)?;
            Directive::Rule {
                variables: variables(arg(0))?,
                operator: operator(&unescape_quotes(arg(1)))?,
                actions: actions(arg(2))?,
            }
        }
        "secaction" => {
            want(1..=1)?;
            Directive::Action(actions(arg(0))?)
        }
        "secmarker" => {
            want(1..=1)?;
            Directive::Marker(arg(0).to_owned())
        }
        "secdefaultaction" => {
            want(1..=1)?;
            Directive::DefaultAction(actions(arg(0))?)
        }
        "seccomponentsignature" => {
            want(1..=1)?;
            Directive::ComponentSignature(arg(0).to_owned())
        }
        "secruleupdatetargetbyid" => {
            want(2..=3)?;
            Directive::UpdateTargetById {
                ids: id_ranges(arg(0))?,
                variables: variables(arg(1))?,
                replaced: args.get(2).map(|a| variables(&a.text)).transpose()?,
            }
        }
        "secruleupdatetargetbytag" => {
            want(2..=2)?;
            Directive::UpdateTargetByTag {
                tag: arg(0).to_owned(),
                variables: variables(arg(1))?,
            }
        }
        "secruleremovebyid" => {
            if args.is_empty() {
                return Err("`SecRuleRemoveById` needs at least one id".into());
            }
            let mut ids = Vec::new();
            for a in &args {
                ids.extend(id_ranges(&a.text)?);
            }
            Directive::RemoveById(ids)
        }
        "secruleremovebytag" => {
            want(1..=1)?;
            Directive::RemoveByTag(arg(0).to_owned())
        }
        "secruleremovebymsg" => {
            want(1..=1)?;
            Directive::RemoveByMsg(arg(0).to_owned())
        }
        "secruleengine" => {
            want(1..=1)?;
            Directive::RuleEngine(arg(0).to_owned())
        }
        ignored if IGNORED.contains(&ignored) => return Ok(None),
        _ => return Err(format!("unsupported directive `{name}`")),
    };
    Ok(Some(directive))
}

struct Argument {
    text: String,
}

/// Splits directive arguments: bare words (which may hold `'single quoted'` spaces), or
/// double-quoted strings in which a quote preceded by an odd number of backslashes does not end
/// the string. Quoted text is returned as written
/// between the quotes.
fn arguments(rest: &str) -> Result<Vec<Argument>, String> {
    let bytes = rest.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b) if b.is_ascii_whitespace() => i += 1,
            Some(b'"') => {
                let mut j = i + 1;
                let mut backslashes = 0;
                let end = loop {
                    match bytes.get(j) {
                        None => {
                            return Err(format!(
                                "unterminated quoted argument: {}",
                                excerpt(rest.get(i..).unwrap_or_default())
                            ));
                        }
                        Some(b'"') if backslashes % 2 == 0 => break j,
                        Some(b'\\') => backslashes += 1,
                        Some(_) => backslashes = 0,
                    }
                    j += 1;
                };
                out.push(Argument {
                    text: rest.get(i + 1..end).unwrap_or_default().to_owned(),
                });
                i = end + 1;
            }
            Some(_) => {
                // A bare word ends at whitespace outside single quotes (`ARGS:'a b'`).
                let mut quoted = false;
                let end = bytes
                    .iter()
                    .skip(i)
                    .position(|b| {
                        if *b == b'\'' {
                            quoted = !quoted;
                        }
                        !quoted && b.is_ascii_whitespace()
                    })
                    .map_or(bytes.len(), |p| i + p);
                out.push(Argument {
                    text: rest.get(i..end).unwrap_or_default().to_owned(),
                });
                i = end;
            }
            None => break,
        }
    }
    Ok(out)
}

fn excerpt(s: &str) -> String {
    let mut end = s.len().min(60);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("`{}`", s.get(..end).unwrap_or_default())
}

/// `\"` → `"`; every other backslash stays.
fn unescape_quotes(s: &str) -> String {
    s.replace("\\\"", "\"")
}

/// Parses an operator: `@name param`, `!@name param`, a bare regex, or `!` and a bare regex.
fn operator(text: &str) -> Result<OperatorDecl, String> {
    let (negated, rest) = match text.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let Some(named) = rest.strip_prefix('@') else {
        return Ok(OperatorDecl {
            name: "rx".into(),
            negated,
            param: rest.to_owned(),
        });
    };
    let (name, param) = named
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((named, ""));
    if name.is_empty() {
        return Err(format!("operator without a name: {}", excerpt(text)));
    }
    Ok(OperatorDecl {
        name: name.to_owned(),
        negated,
        param: param.trim().to_owned(),
    })
}

/// Parses an action list.
///
/// # Errors
///
/// An action with an empty name, or an unterminated single quote.
pub fn actions(text: &str) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut in_quote = false;
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let c = bytes.get(i).copied();
        let escaped = i > 0 && bytes.get(i - 1) == Some(&b'\\');
        match c {
            Some(b'\'') if !escaped => in_quote = !in_quote,
            Some(b',') | None if !in_quote => {
                let item = text.get(start..i).unwrap_or_default().trim();
                if !item.is_empty() {
                    out.push(action(item)?);
                } else if c.is_some() {
                    return Err(format!("an empty action in {}", excerpt(text)));
                }
                start = i + 1;
            }
            None => {
                return Err(format!(
                    "an unterminated `'` in the actions {}",
                    excerpt(text)
                ));
            }
            _ => {}
        }
        i += 1;
    }
    Ok(out)
}

fn action(item: &str) -> Result<Action, String> {
    let (name, value) = match item.split_once(':') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (item, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("`{item}` is not an action"));
    }
    let value = value.map(|v| {
        v.strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v)
            .to_owned()
    });
    Ok(Action {
        name: name.to_ascii_lowercase(),
        value,
    })
}

/// Parses a variable list.
///
/// # Errors
///
/// An empty variable, an unterminated regex or quote, or a malformed name.
pub fn variables(text: &str) -> Result<Vec<Variable>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let mut exclude = false;
        let mut count = false;
        loop {
            match bytes.get(i) {
                Some(b'!') => exclude = true,
                Some(b'&') => count = true,
                _ => break,
            }
            i += 1;
        }
        let name_start = i;
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            i += 1;
        }
        let name = text
            .get(name_start..i)
            .unwrap_or_default()
            .to_ascii_uppercase();
        if name.is_empty() {
            return Err(format!("a variable without a name in {}", excerpt(text)));
        }
        let key = if bytes.get(i) == Some(&b':') {
            i += 1;
            match bytes.get(i) {
                Some(b'/') if name == "XML" || name == "JSON" => {
                    let end = find_bar(bytes, i);
                    let path = text.get(i..end).unwrap_or_default().to_owned();
                    i = end;
                    Some(Key::XPath(path))
                }
                Some(b'/') => {
                    let mut j = i + 1;
                    let mut escaped = false;
                    loop {
                        match bytes.get(j) {
                            None => {
                                return Err(format!(
                                    "an unterminated `/regex/` in {}",
                                    excerpt(text)
                                ));
                            }
                            Some(b'/') if !escaped => break,
                            Some(b'\\') => escaped = !escaped,
                            Some(_) => escaped = false,
                        }
                        j += 1;
                    }
                    let re = text.get(i + 1..j).unwrap_or_default().to_owned();
                    i = j + 1;
                    Some(Key::Regex(re))
                }
                Some(b'\'') => {
                    let end = bytes
                        .iter()
                        .skip(i + 1)
                        .position(|b| *b == b'\'')
                        .map(|p| i + 1 + p)
                        .ok_or_else(|| format!("an unterminated `'` in {}", excerpt(text)))?;
                    let key = text.get(i + 1..end).unwrap_or_default().to_owned();
                    i = end + 1;
                    Some(Key::Name(key))
                }
                _ => {
                    let end = find_bar(bytes, i);
                    let key = text.get(i..end).unwrap_or_default().trim().to_owned();
                    i = end;
                    if key.is_empty() {
                        None
                    } else {
                        Some(Key::Name(key))
                    }
                }
            }
        } else {
            None
        };
        match bytes.get(i) {
            None => {}
            Some(b'|') => i += 1,
            Some(_) => {
                return Err(format!(
                    "unexpected `{}` after variable `{name}` in {}",
                    char::from(bytes.get(i).copied().unwrap_or(b'?')),
                    excerpt(text)
                ));
            }
        }
        out.push(Variable {
            name,
            key,
            count,
            exclude,
        });
    }
    if out.is_empty() {
        return Err("no variables".into());
    }
    Ok(out)
}

fn find_bar(bytes: &[u8], from: usize) -> usize {
    bytes
        .iter()
        .skip(from)
        .position(|b| *b == b'|')
        .map_or(bytes.len(), |p| from + p)
}

/// Parses `920100`, `920100-920199` and comma- or space-separated lists of them.
fn id_ranges(text: &str) -> Result<Vec<(u32, u32)>, String> {
    text.split([',', ' '])
        .filter(|s| !s.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let parse = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{part}` is not a rule id or id range"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse(a)?, parse(b)?);
                    if a > b {
                        return Err(format!("`{part}`: the range is backwards"));
                    }
                    Ok((a, b))
                }
                None => parse(part).map(|id| (id, id)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
