//! Variables: what a rule inspects. A target names a collection (`ARGS`, `REQUEST_HEADERS`,
//! `PROMPT`, ...), optionally selects members by name (`ARGS:q`) or by regex (`ARGS:/^user/`),
//! can be excluded (`!ARGS:password`) or counted (`&ARGS`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;

/// A collection of values in a request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Collection {
    /// Query and body arguments.
    Args,
    /// Query arguments.
    ArgsGet,
    /// Body arguments (form fields, flattened JSON, multipart fields).
    ArgsPost,
    /// Names of query and body arguments.
    ArgsNames,
    /// Names of query arguments.
    ArgsGetNames,
    /// Names of body arguments.
    ArgsPostNames,
    /// Request header values, by lowercase name.
    RequestHeaders,
    /// Request header names (lowercase).
    RequestHeadersNames,
    /// Cookie values, by name.
    RequestCookies,
    /// Cookie names.
    RequestCookiesNames,
    /// Uploaded file names, by field name.
    Files,
    /// Field names of uploaded files.
    FilesNames,
    /// The method.
    RequestMethod,
    /// The request target as received (path and query).
    RequestUri,
    /// The path, without the query.
    RequestFilename,
    /// The last path segment.
    RequestBasename,
    /// The query string, without the `?`.
    QueryString,
    /// `METHOD target PROTOCOL`.
    RequestLine,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    RequestProtocol,
    /// The raw request body (as much as was buffered).
    RequestBody,
    /// `1` when the body could not be parsed completely, else `0`.
    ReqbodyError,
    /// The text of the user and tool messages of a chat request (OpenAI or Anthropic JSON),
    /// by argument name (`messages.3.content`). The system prompt is not in it.
    Prompt,
    /// The response status code.
    ResponseStatus,
    /// Response header values, by lowercase name.
    ResponseHeaders,
    /// Response header names.
    ResponseHeadersNames,
    /// The response body (as much as was buffered).
    ResponseBody,
}

const COLLECTIONS: &[(&str, Collection)] = &[
    ("ARGS", Collection::Args),
    ("ARGS_GET", Collection::ArgsGet),
    ("ARGS_POST", Collection::ArgsPost),
    ("ARGS_NAMES", Collection::ArgsNames),
    ("ARGS_GET_NAMES", Collection::ArgsGetNames),
    ("ARGS_POST_NAMES", Collection::ArgsPostNames),
    ("REQUEST_HEADERS", Collection::RequestHeaders),
    ("REQUEST_HEADERS_NAMES", Collection::RequestHeadersNames),
    ("REQUEST_COOKIES", Collection::RequestCookies),
    ("REQUEST_COOKIES_NAMES", Collection::RequestCookiesNames),
    ("FILES", Collection::Files),
    ("FILES_NAMES", Collection::FilesNames),
    ("REQUEST_METHOD", Collection::RequestMethod),
    ("REQUEST_URI", Collection::RequestUri),
    ("REQUEST_URI_RAW", Collection::RequestUri),
    ("REQUEST_FILENAME", Collection::RequestFilename),
    ("REQUEST_BASENAME", Collection::RequestBasename),
    ("QUERY_STRING", Collection::QueryString),
    ("REQUEST_LINE", Collection::RequestLine),
    ("REQUEST_PROTOCOL", Collection::RequestProtocol),
    ("REQUEST_BODY", Collection::RequestBody),
    ("REQBODY_ERROR", Collection::ReqbodyError),
    ("PROMPT", Collection::Prompt),
    ("RESPONSE_STATUS", Collection::ResponseStatus),
    ("RESPONSE_HEADERS", Collection::ResponseHeaders),
    ("RESPONSE_HEADERS_NAMES", Collection::ResponseHeadersNames),
    ("RESPONSE_BODY", Collection::ResponseBody),
];

impl Collection {
    /// Every collection (one with two names, twice).
    pub(crate) fn all() -> impl Iterator<Item = Self> {
        COLLECTIONS.iter().map(|(_, c)| *c)
    }

    /// The ModSecurity-style name.
    pub fn name(self) -> &'static str {
        COLLECTIONS
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("UNKNOWN", |(n, _)| n)
    }

    /// Whether this collection's values are the names of another's members.
    pub(crate) fn names_of(self) -> Option<Self> {
        Some(match self {
            Self::ArgsNames => Self::Args,
            Self::ArgsGetNames => Self::ArgsGet,
            Self::ArgsPostNames => Self::ArgsPost,
            Self::RequestHeadersNames => Self::RequestHeaders,
            Self::RequestCookiesNames => Self::RequestCookies,
            Self::FilesNames => Self::Files,
            Self::ResponseHeadersNames => Self::ResponseHeaders,
            _ => return None,
        })
    }

    /// Whether the collection belongs to the response.
    pub fn is_response(self) -> bool {
        matches!(
            self,
            Self::ResponseStatus
                | Self::ResponseHeaders
                | Self::ResponseHeadersNames
                | Self::ResponseBody
        )
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which members of a collection a target takes.
#[derive(Clone)]
pub enum Selector {
    /// Every member.
    All,
    /// Members with this name (ASCII case-insensitive).
    Name(Arc<str>),
    /// Members whose name matches this regex (case-insensitive).
    Regex(Arc<Regex>, Arc<str>),
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("All"),
            Self::Name(n) => write!(f, "Name({n:?})"),
            Self::Regex(_, src) => write!(f, "Regex(/{src}/)"),
        }
    }
}

impl Selector {
    /// Whether a member called `name` is selected.
    pub fn selects(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Name(n) => n.eq_ignore_ascii_case(name),
            Self::Regex(re, _) => re.is_match(name.as_bytes()),
        }
    }

    fn canonical(&self) -> String {
        match self {
            Self::All => String::new(),
            Self::Name(n) => format!(":{}", n.to_ascii_lowercase()),
            Self::Regex(_, src) => format!(":/{src}/"),
        }
    }
}

/// One target of a rule, as written: `ARGS`, `ARGS:q`, `ARGS:/^id_/`, `!ARGS:password`,
/// `&ARGS`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The collection.
    pub collection: Collection,
    /// Which members.
    pub selector: Selector,
    /// `&`: the number of selected members instead of their values.
    pub count: bool,
    /// `!`: removes members from the other targets of the same collection.
    pub exclude: bool,
}

/// Why a target could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The collection is not known.
    #[error("unknown variable `{0}`")]
    Unknown(String),
    /// The selector regex does not compile.
    #[error("the selector regex of `{target}` does not compile: {problem}")]
    BadRegex {
        /// The target.
        target: String,
        /// The compiler's message.
        problem: String,
    },
    /// A target that is both counted and excluded, or an exclusion with no selector.
    #[error("`{0}` is not a valid target")]
    Invalid(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (exclude, rest) = match text.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (count, rest) = match rest.strip_prefix('&') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if exclude && count {
            return Err(TargetError::Invalid(text.to_owned()));
        }
        let (name, key) = match rest.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (rest, None),
        };
        let collection = COLLECTIONS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
            .ok_or_else(|| TargetError::Unknown(name.to_owned()))?;
        let selector = match key {
            None => Selector::All,
            Some(k) if k.len() >= 2 && k.starts_with('/') && k.ends_with('/') => {
                let src = k.get(1..k.len() - 1).unwrap_or_default();
                let re = Regex::builder()
                    .syntax(
                        syntax::Config::new()
                            .case_insensitive(true)
                            .utf8(false)
                            .unicode(false),
                    )
                    .build(src)
                    .map_err(|e| TargetError::BadRegex {
                        target: text.to_owned(),
                        problem: e.to_string(),
                    })?;
                Selector::Regex(Arc::new(re), src.into())
            }
            Some(k) => Selector::Name(k.trim_matches('\'').into()),
        };
        if exclude && matches!(selector, Selector::All) {
            return Err(TargetError::Invalid(text.to_owned()));
        }
        Ok(Self {
            collection,
            selector,
            count,
            exclude,
        })
    }
}

/// The targets of one rule: the members taken, minus the exclusions.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    include: Vec<Target>,
    exclude: Vec<Target>,
}

impl Targets {
    /// Builds a target set from parsed targets.
    pub fn new(targets: impl IntoIterator<Item = Target>) -> Self {
        let (exclude, include) = targets.into_iter().partition(|t| t.exclude);
        Self { include, exclude }
    }

    /// Parses targets written as `ARGS|REQUEST_HEADERS:user-agent|!ARGS:password`.
    ///
    /// # Errors
    ///
    /// The first target that does not parse.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        text.split('|')
            .filter(|t| !t.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Target>, _>>()
            .map(Self::new)
    }

    /// The included targets.
    pub fn included(&self) -> &[Target] {
        &self.include
    }

    /// Whether a member `name` of `collection` is excluded.
    pub(crate) fn is_excluded(&self, collection: Collection, name: &str) -> bool {
        self.exclude
            .iter()
            .any(|t| t.collection == collection && t.selector.selects(name))
    }

    /// Adds an exclusion (used by rule tuning: `SecRuleUpdateTargetById`-style).
    pub fn push(&mut self, target: Target) {
        if target.exclude {
            self.exclude.push(target);
        } else {
            self.include.push(target);
        }
    }

    /// Whether any target reads the response.
    pub fn reads_response(&self) -> bool {
        self.include.iter().any(|t| t.collection.is_response())
    }

    /// A canonical text form: equal for target sets that select the same values.
    pub(crate) fn canonical(&self) -> String {
        let mut inc: Vec<String> = self
            .include
            .iter()
            .map(|t| {
                format!(
                    "{}{}{}",
                    if t.count { "&" } else { "" },
                    t.collection.name(),
                    t.selector.canonical()
                )
            })
            .collect();
        let mut exc: Vec<String> = self
            .exclude
            .iter()
            .map(|t| format!("!{}{}", t.collection.name(), t.selector.canonical()))
            .collect();
        inc.sort();
        exc.sort();
        inc.extend(exc);
        inc.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Targets::parse("ARGS|!ARGS:password|&REQUEST_HEADERS:host|ARGS_NAMES:/^id_/")
            .unwrap_or_default();
        assert_eq!(t.included().len(), 3);
        assert!(t.is_excluded(Collection::Args, "PASSWORD"));
        assert!(!t.is_excluded(Collection::Args, "user"));
        assert!(t.included().iter().any(|x| x.count));
        let Some(re) = t
            .included()
            .iter()
            .find(|x| x.collection == Collection::ArgsNames)
        else {
            panic!("ARGS_NAMES missing");
        };
        assert!(re.selector.selects("ID_x"));
        assert!(!re.selector.selects("xid_"));
    }

    #[test]
    fn rejects_bad_targets() {
        assert!(matches!(
            Targets::parse("ARGZ"),
            Err(TargetError::Unknown(_))
        ));
        assert!(matches!(
            Targets::parse("ARGS:/(/"),
            Err(TargetError::BadRegex { .. })
        ));
        assert!(matches!(
            Targets::parse("!ARGS"),
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            Targets::parse("!&ARGS:x"),
            Err(TargetError::Invalid(_))
        ));
    }

    #[test]
    fn canonical_form_ignores_order_and_case() {
        let a = Targets::parse("ARGS|REQUEST_HEADERS:User-Agent").unwrap_or_default();
        let b = Targets::parse("REQUEST_HEADERS:user-agent|ARGS").unwrap_or_default();
        assert_eq!(a.canonical(), b.canonical());
    }
}
