//! Request body parsers: form-urlencoded, multipart/form-data and JSON, flattened into named
//! arguments. Malformed input is reported as a [`BodyError`] (itself a finding for the rules),
//! never a panic, and the work is bounded by [`Limits`].

use std::borrow::Cow;

use serde_json::Value;

use crate::transform::Transform;

/// Why a body could not be parsed completely. The arguments parsed before the problem are still
/// returned, so rules can inspect them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidUrlEncoding,
    /// Not valid JSON.
    #[error("invalid JSON")]
    InvalidJson,
    /// Malformed multipart (missing boundary, unterminated part, bad part headers).
    #[error("malformed multipart: {0}")]
    MalformedMultipart(&'static str),
    /// More arguments or deeper nesting than the limits allow.
    #[error("the body is more complex than the limits allow")]
    TooComplex,
}

/// Bounds on parsing work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most arguments produced.
    pub max_args: usize,
    /// The deepest JSON nesting followed.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args: 10_000,
            max_depth: 64,
        }
    }
}

/// One named argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The name (`q`, `messages.0.content`, a multipart field name).
    pub name: String,
    /// The value.
    pub value: Vec<u8>,
}

/// One multipart part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The field name.
    pub name: String,
    /// The file name, for file uploads.
    pub filename: Option<String>,
    /// The content.
    pub value: Vec<u8>,
}

/// Parsed arguments and the first problem met, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    /// What was parsed.
    pub items: Vec<T>,
    /// The first problem, if the input was not well-formed.
    pub error: Option<BodyError>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            error: None,
        }
    }
}

fn decode(component: &[u8], error: &mut Option<BodyError>) -> Vec<u8> {
    if crate::operator::Operator::ValidateUrlEncoding.matches(component) && error.is_none() {
        *error = Some(BodyError::InvalidUrlEncoding);
    }
    Transform::UrlDecode.apply(component).into_owned()
}

/// Parses `application/x-www-form-urlencoded` (also used for query strings).
pub fn parse_urlencoded(body: &[u8], limits: Limits) -> Parsed<Arg> {
    let mut parsed = Parsed::default();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        if parsed.items.len() == limits.max_args {
            parsed.error.get_or_insert(BodyError::TooComplex);
            break;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or_default(),
                pair.get(at + 1..).unwrap_or_default(),
            ),
            None => (pair, &b""[..]),
        };
        let name = decode(name, &mut parsed.error);
        let value = decode(value, &mut parsed.error);
        parsed.items.push(Arg {
            name: String::from_utf8_lossy(&name).into_owned(),
            value,
        });
    }
    parsed
}

/// Parses JSON and flattens it: object members by key (in key order), array items by index,
/// joined with dots (`messages.0.content`); scalars become their text (`null` is empty).
pub fn parse_json(body: &[u8], limits: Limits) -> Parsed<Arg> {
    let mut parsed = Parsed::default();
    // serde_json's own recursion limit (128) guards the parse; ours bounds the walk.
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            parsed.error = Some(BodyError::InvalidJson);
            return parsed;
        }
    };
    let mut stack: Vec<(String, &Value, usize)> = vec![(String::new(), &value, 0)];
    while let Some((name, value, depth)) = stack.pop() {
        if parsed.items.len() >= limits.max_args {
            parsed.error.get_or_insert(BodyError::TooComplex);
            break;
        }
        let child = |key: &str| {
            if name.is_empty() {
                key.to_owned()
            } else {
                format!("{name}.{key}")
            }
        };
        match value {
            Value::Object(_) | Value::Array(_) if depth >= limits.max_depth => {
                parsed.error.get_or_insert(BodyError::TooComplex);
            }
            Value::Object(map) => {
                // Reverse so that the stack yields members in key order.
                for (k, v) in map.iter().rev() {
                    stack.push((child(k), v, depth + 1));
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate().rev() {
                    stack.push((child(&i.to_string()), v, depth + 1));
                }
            }
            scalar => {
                let text: Cow<'_, str> = match scalar {
                    Value::String(s) => Cow::Borrowed(s),
                    Value::Null => Cow::Borrowed(""),
                    other => Cow::Owned(other.to_string()),
                };
                parsed.items.push(Arg {
                    name,
                    value: text.as_bytes().to_vec(),
                });
            }
        }
    }
    parsed
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then(|| v.to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A `name="value"` parameter of a Content-Disposition header.
fn disposition_param(header: &str, key: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Parses `multipart/form-data` with `boundary`.
pub fn parse_multipart(body: &[u8], boundary: &str, limits: Limits) -> Parsed<Part> {
    let mut parsed = Parsed::default();
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let Some(first) = find(body, delimiter, 0) else {
        parsed.error = Some(BodyError::MalformedMultipart("no boundary"));
        return parsed;
    };
    let mut at = first + delimiter.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return parsed;
        }
        if parsed.items.len() == limits.max_args {
            parsed.error = Some(BodyError::TooComplex);
            return parsed;
        }
        // Skip the line break after the delimiter.
        if body.get(at..at + 2) == Some(b"\r\n") {
            at += 2;
        } else if body.get(at..at + 1) == Some(b"\n") {
            at += 1;
        } else {
            parsed.error = Some(BodyError::MalformedMultipart(
                "no line break after a boundary",
            ));
            return parsed;
        }
        let Some(headers_end) = find(body, b"\r\n\r\n", at) else {
            parsed.error = Some(BodyError::MalformedMultipart("part headers do not end"));
            return parsed;
        };
        let headers =
            String::from_utf8_lossy(body.get(at..headers_end).unwrap_or_default()).into_owned();
        let content_start = headers_end + 4;
        let mut next_delim = Vec::with_capacity(delimiter.len() + 2);
        next_delim.extend_from_slice(b"\r\n");
        next_delim.extend_from_slice(delimiter);
        let Some(content_end) = find(body, &next_delim, content_start) else {
            parsed.error = Some(BodyError::MalformedMultipart("a part is not terminated"));
            return parsed;
        };
        let disposition = headers
            .split("\r\n")
            .find(|h| {
                h.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
            })
            .and_then(|h| h.split_once(':').map(|(_, v)| v.trim().to_owned()));
        let Some(disposition) = disposition else {
            parsed.error = Some(BodyError::MalformedMultipart(
                "a part has no Content-Disposition",
            ));
            return parsed;
        };
        let Some(name) = disposition_param(&disposition, "name") else {
            parsed.error = Some(BodyError::MalformedMultipart("a part has no name"));
            return parsed;
        };
        parsed.items.push(Part {
            name,
            filename: disposition_param(&disposition, "filename"),
            value: body
                .get(content_start..content_end)
                .unwrap_or_default()
                .to_vec(),
        });
        at = content_end + next_delim.len();
    }
}

#[cfg(test)]
mod tests;
