//! The values of one exchange, extracted once and laid out for the rules: every collection is a
//! contiguous run of named items, so `ARGS` is `ARGS_GET` followed by `ARGS_POST`.

use std::ops::Range;

use http::HeaderMap;

use crate::body::{self, BodyError, Limits};
use crate::variable::Collection;

/// One named value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    name: Box<str>,
    value: Box<[u8]>,
}

impl Item {
    fn new(name: impl Into<Box<str>>, value: impl Into<Box<[u8]>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The member name (empty for single-valued variables).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Storage order of the collections that hold values (the `_NAMES` and union collections are
/// views of these).
const STORED: [Collection; 18] = [
    Collection::ArgsGet,
    Collection::ArgsPost,
    Collection::RequestHeaders,
    Collection::RequestCookies,
    Collection::Files,
    Collection::RequestMethod,
    Collection::RequestUri,
    Collection::RequestFilename,
    Collection::RequestBasename,
    Collection::QueryString,
    Collection::RequestLine,
    Collection::RequestProtocol,
    Collection::RequestBody,
    Collection::ReqbodyError,
    Collection::Prompt,
    Collection::ResponseStatus,
    Collection::ResponseHeaders,
    Collection::ResponseBody,
];

fn slot(c: Collection) -> Option<usize> {
    STORED.iter().position(|s| *s == c)
}

/// The extracted values of a request (and, once known, its response).
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    items: Vec<Item>,
    ranges: [Range<u32>; STORED.len()],
    body_error: Option<BodyError>,
}

/// A request head as received, for [`Exchange::from_head`].
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method (`GET`).
    pub method: &'a str,
    /// The request target (`/path?query`, or an absolute URI).
    pub target: &'a str,
    /// The protocol (`HTTP/1.1`).
    pub protocol: &'a str,
    /// The header fields in order, names as sent.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// How request bodies are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Bounds on the parsers' work.
    pub limits: Limits,
}

/// Whether a content type is JSON (`application/json`, `application/*+json`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

impl Exchange {
    /// Extracts the values of a request whose head is `parts` and whose (buffered) body is
    /// `body`. Bodies are parsed by content type; a body that does not parse sets
    /// `REQBODY_ERROR` and keeps what was parsed before the problem.
    pub fn from_request(parts: &http::request::Parts, body: &[u8], options: ParseOptions) -> Self {
        let target = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), http::uri::PathAndQuery::as_str);
        let headers: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let protocol = match parts.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        let head = RequestHead {
            method: parts.method.as_str(),
            target,
            protocol,
            headers: &headers,
        };
        Self::from_head(&head, body, options)
    }

    /// Extracts the values of a request from its head as received: the method, request
    /// target and protocol as text and the headers in order, unvalidated (for requests an
    /// HTTP library would refuse, as test suites send them).
    pub fn from_head(head: &RequestHead<'_>, body: &[u8], options: ParseOptions) -> Self {
        let mut ex = Self::default();
        let limits = options.limits;
        let target = head.target;
        // The path of an absolute-form target (`http://host/p?q`) starts after the authority.
        let origin_form = ["http://", "https://"]
            .iter()
            .find_map(|scheme| {
                let rest = target
                    .get(..scheme.len())?
                    .eq_ignore_ascii_case(scheme)
                    .then(|| target.get(scheme.len()..))??;
                Some(rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/"))
            })
            .unwrap_or(target);
        let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
        let header = |name: &'static str| {
            head.headers
                .iter()
                .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };

        // ARGS_GET
        let parsed = body::parse_urlencoded(query.as_bytes(), limits);
        ex.note_error(parsed.error);
        ex.push_all(
            Collection::ArgsGet,
            parsed.items.into_iter().map(|a| Item::new(a.name, a.value)),
        );

        // ARGS_POST and FILES, by content type.
        let content_type = header("content-type")
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        let mut files = Vec::new();
        let mut prompt = Vec::new();
        let start = ex.items.len();
        if !body.is_empty() {
            if is_json(content_type) {
                let parsed = body::parse_json(body, limits);
                ex.note_error(parsed.error);
                prompt = prompt_items(&parsed.items);
                ex.items
                    .extend(parsed.items.into_iter().map(|a| Item::new(a.name, a.value)));
            } else if let Some(boundary) = body::multipart_boundary(content_type) {
                let parsed = body::parse_multipart(body, &boundary, limits);
                ex.note_error(parsed.error);
                for part in parsed.items {
                    if let Some(filename) = part.filename {
                        files.push(Item::new(part.name.clone(), filename.into_bytes()));
                    }
                    ex.items.push(Item::new(part.name, part.value));
                }
            } else if content_type.split(';').next().is_some_and(|e| {
                e.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            }) {
                let parsed = body::parse_urlencoded(body, limits);
                ex.note_error(parsed.error);
                ex.items
                    .extend(parsed.items.into_iter().map(|a| Item::new(a.name, a.value)));
            }
        }
        ex.close(Collection::ArgsPost, start);

        // REQUEST_HEADERS and REQUEST_COOKIES
        ex.push_all(
            Collection::RequestHeaders,
            head.headers.iter().map(|(k, v)| Item::new(*k, *v)),
        );
        let cookies: Vec<Item> = header("cookie")
            .flat_map(|v| v.split(|&b| b == b';'))
            .filter_map(|pair| {
                let pair = trim_bytes(pair);
                if pair.is_empty() {
                    return None;
                }
                let (name, value) = match pair.iter().position(|&b| b == b'=') {
                    Some(at) => (pair.get(..at)?, pair.get(at + 1..)?),
                    None => (pair, &b""[..]),
                };
                Some(Item::new(String::from_utf8_lossy(name), value))
            })
            .take(limits.max_args)
            .collect();
        ex.push_all(Collection::RequestCookies, cookies);
        ex.push_all(Collection::Files, files);

        let method = head.method;
        let protocol = head.protocol;
        ex.push_one(Collection::RequestMethod, method.as_bytes());
        ex.push_one(Collection::RequestUri, target.as_bytes());
        ex.push_one(Collection::RequestFilename, path.as_bytes());
        let basename = path.rsplit('/').next().unwrap_or_default();
        ex.push_one(Collection::RequestBasename, basename.as_bytes());
        ex.push_one(Collection::QueryString, query.as_bytes());
        let line = format!("{method} {target} {protocol}");
        ex.push_one(Collection::RequestLine, line.as_bytes());
        ex.push_one(Collection::RequestProtocol, protocol.as_bytes());
        ex.push_one(Collection::RequestBody, body);
        let error: &[u8] = if ex.body_error.is_some() { b"1" } else { b"0" };
        ex.push_one(Collection::ReqbodyError, error);
        ex.push_all(Collection::Prompt, prompt);
        ex.close(Collection::ResponseStatus, ex.items.len());
        ex.close(Collection::ResponseHeaders, ex.items.len());
        ex.close(Collection::ResponseBody, ex.items.len());
        ex
    }

    /// Adds the response's status, headers and (buffered) body.
    pub fn set_response(&mut self, status: http::StatusCode, headers: &HeaderMap, body: &[u8]) {
        self.push_one(Collection::ResponseStatus, status.as_str().as_bytes());
        self.push_all(
            Collection::ResponseHeaders,
            headers
                .iter()
                .map(|(k, v)| Item::new(k.as_str(), v.as_bytes())),
        );
        self.push_one(Collection::ResponseBody, body);
    }

    /// The first problem met while parsing the body, if any.
    pub fn body_error(&self) -> Option<&BodyError> {
        self.body_error.as_ref()
    }

    /// The items of `collection` (for `_NAMES` collections, the items whose names they are).
    pub fn items(&self, collection: Collection) -> &[Item] {
        let range = match collection.names_of().unwrap_or(collection) {
            Collection::Args => {
                let (Some(get), Some(post)) =
                    (slot(Collection::ArgsGet), slot(Collection::ArgsPost))
                else {
                    return &[];
                };
                match (self.ranges.get(get), self.ranges.get(post)) {
                    (Some(g), Some(p)) => g.start..p.end,
                    _ => return &[],
                }
            }
            c => match slot(c).and_then(|s| self.ranges.get(s)) {
                Some(r) => r.clone(),
                None => return &[],
            },
        };
        self.items
            .get(range.start as usize..range.end as usize)
            .unwrap_or_default()
    }

    /// The index of the first item of `collection` in the exchange (for cache keys).
    /// How many items the exchange holds (keys of the per-item caches are below twice this).
    /// The item at `index` among all the exchange's items (as [`Self::base_index`] counts
    /// them).
    pub(crate) fn item_at(&self, index: usize) -> Option<&Item> {
        self.items.get(index)
    }

    pub(crate) fn item_count(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn base_index(&self, collection: Collection) -> usize {
        let c = collection.names_of().unwrap_or(collection);
        let c = if c == Collection::Args {
            Collection::ArgsGet
        } else {
            c
        };
        slot(c)
            .and_then(|s| self.ranges.get(s))
            .map_or(0, |r| r.start as usize)
    }

    fn note_error(&mut self, error: Option<BodyError>) {
        if self.body_error.is_none() {
            self.body_error = error;
        }
    }

    fn push_one(&mut self, collection: Collection, value: &[u8]) {
        let start = self.items.len();
        self.items.push(Item::new("", value));
        self.close(collection, start);
    }

    fn push_all(&mut self, collection: Collection, items: impl IntoIterator<Item = Item>) {
        let start = self.items.len();
        self.items.extend(items);
        self.close(collection, start);
    }

    fn close(&mut self, collection: Collection, start: usize) {
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(r) = slot(collection).and_then(|s| self.ranges.get_mut(s)) {
            *r = to_u32(start)..to_u32(self.items.len());
        }
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// Roles whose messages are the operator's or the model's, not the caller's input.
const TRUSTED_ROLES: [&str; 4] = ["system", "developer", "assistant", "model"];

/// The user and tool message text of a chat request, from its flattened JSON arguments:
/// OpenAI chat (`messages.N.content`, `messages.N.content.M.text`), the Responses API
/// (`input`, `input.N.content...`), Anthropic (`messages.N.content.M.text`, tool results) and
/// legacy completions (`prompt`). The system prompt (`system`, system/developer messages) and
/// assistant turns are left out.
fn prompt_items(args: &[body::Arg]) -> Vec<Item> {
    // `messages.3` -> its role, gathered in one pass (roles sort after `content`).
    let roles: std::collections::HashMap<&str, &[u8]> = args
        .iter()
        .filter_map(|a| Some((a.name.strip_suffix(".role")?, a.value.as_slice())))
        .collect();
    let mut out = Vec::new();
    for arg in args {
        let name = arg.name.as_str();
        if name == "prompt" || name == "input" || name.starts_with("prompt.") {
            out.push(Item::new(name, arg.value.as_slice()));
            continue;
        }
        let mut parts = name.split('.');
        let (Some(list), Some(index), Some(field)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(list, "messages" | "input" | "contents")
            || !index.bytes().all(|b| b.is_ascii_digit())
            || !matches!(field, "content" | "parts")
        {
            continue;
        }
        let last = name.rsplit('.').next().unwrap_or_default();
        let leaf_is_text =
            matches!(last, "content" | "text") || last.bytes().all(|b| b.is_ascii_digit());
        if !leaf_is_text {
            continue;
        }
        let message = name.get(..list.len() + 1 + index.len()).unwrap_or_default();
        let role = roles.get(message);
        let trusted = role.is_some_and(|r| {
            TRUSTED_ROLES
                .iter()
                .any(|t| t.as_bytes().eq_ignore_ascii_case(r))
        });
        if !trusted {
            out.push(Item::new(name, arg.value.as_slice()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Exchange {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        Exchange::from_request(&parts, body, ParseOptions::default())
    }

    fn names(ex: &Exchange, c: Collection) -> Vec<String> {
        ex.items(c).iter().map(|i| i.name().to_owned()).collect()
    }

    #[test]
    fn extracts_query_body_headers_and_cookies() {
        let ex = exchange(
            "POST",
            "/search?q=1&lang=en",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", "session=abc; theme=dark"),
            ],
            b"user=bob&pw=x",
        );
        assert_eq!(names(&ex, Collection::ArgsGet), ["q", "lang"]);
        assert_eq!(names(&ex, Collection::ArgsPost), ["user", "pw"]);
        assert_eq!(names(&ex, Collection::Args), ["q", "lang", "user", "pw"]);
        assert_eq!(
            names(&ex, Collection::ArgsNames),
            ["q", "lang", "user", "pw"]
        );
        assert_eq!(names(&ex, Collection::RequestCookies), ["session", "theme"]);
        assert_eq!(ex.items(Collection::RequestHeaders).len(), 2);
        assert_eq!(ex.items(Collection::QueryString)[0].value(), b"q=1&lang=en");
        assert_eq!(ex.items(Collection::RequestFilename)[0].value(), b"/search");
        assert_eq!(
            ex.items(Collection::RequestLine)[0].value(),
            b"POST /search?q=1&lang=en HTTP/1.1"
        );
        assert_eq!(ex.items(Collection::ReqbodyError)[0].value(), b"0");
        assert!(ex.items(Collection::ResponseBody).is_empty());
    }

    #[test]
    fn prompt_holds_user_and_tool_text_only() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"SYSTEM SECRET"},
            {"role":"user","content":"hello"},
            {"role":"assistant","content":"hi"},
            {"role":"user","content":[{"type":"text","text":"part two"},{"type":"image_url","image_url":{"url":"data:x"}}]},
            {"role":"tool","tool_call_id":"t1","content":"tool output"}]}"#;
        let ex = exchange(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body,
        );
        let texts: Vec<&[u8]> = ex
            .items(Collection::Prompt)
            .iter()
            .map(Item::value)
            .collect();
        assert_eq!(texts, [&b"hello"[..], b"part two", b"tool output"]);
        // The whole body is still in ARGS.
        assert!(
            ex.items(Collection::Args)
                .iter()
                .any(|i| i.value() == b"SYSTEM SECRET")
        );
    }

    #[test]
    fn anthropic_system_is_not_prompt() {
        let body = br#"{"system":"be nice","messages":[{"role":"user","content":[{"type":"text","text":"q"},{"type":"tool_result","tool_use_id":"x","content":"r"}]}]}"#;
        let ex = exchange(
            "POST",
            "/v1/messages",
            &[("content-type", "application/json")],
            body,
        );
        let texts: Vec<&[u8]> = ex
            .items(Collection::Prompt)
            .iter()
            .map(Item::value)
            .collect();
        assert_eq!(texts, [&b"q"[..], b"r"]);
    }

    #[test]
    fn malformed_bodies_set_reqbody_error() {
        let ex = exchange(
            "POST",
            "/",
            &[("content-type", "application/json")],
            b"{\"a\":",
        );
        assert_eq!(ex.items(Collection::ReqbodyError)[0].value(), b"1");
        assert_eq!(ex.body_error(), Some(&BodyError::InvalidJson));
        let ex = exchange("GET", "/?a=%zz", &[], b"");
        assert_eq!(ex.body_error(), Some(&BodyError::InvalidUrlEncoding));
        let ex = exchange(
            "POST",
            "/",
            &[("content-type", "multipart/form-data; boundary=xyz")],
            b"--xyz\r\nContent-Disposition: form-data; name=\"f\"",
        );
        assert!(matches!(
            ex.body_error(),
            Some(BodyError::MalformedMultipart(_))
        ));
    }

    #[test]
    fn multipart_files() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.php\"\r\n\r\n<?php\r\n--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n";
        let ex = exchange(
            "POST",
            "/up",
            &[("content-type", "multipart/form-data; boundary=b")],
            body,
        );
        assert_eq!(names(&ex, Collection::FilesNames), ["doc"]);
        assert_eq!(ex.items(Collection::Files)[0].value(), b"a.php");
        assert_eq!(names(&ex, Collection::ArgsPost), ["doc", "x"]);
    }
}
