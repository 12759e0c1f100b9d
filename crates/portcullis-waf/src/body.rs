//! Request body parsers: form-urlencoded, multipart/form-data and JSON, flattened into named
//! arguments. Malformed input is reported as a [`BodyError`] (itself a finding for the rules),
//! never a panic, and the work is bounded by [`Limits`].

use std::borrow::Cow;

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

/// Parses JSON and flattens it: object members by key, array items by index, joined with
/// dots (`messages.0.content`), in the order the document gives them, every member of a
/// repeated key kept (a WAF sees each, whichever one the application reads); scalars become
/// their text (`null` is empty). Invalid JSON keeps no items.
pub fn parse_json(body: &[u8], limits: Limits) -> Parsed<Arg> {
    let mut parsed = Parsed::default();
    // serde_json's own recursion limit (128) guards the parse; ours bounds what is kept.
    let mut de = serde_json::Deserializer::from_slice(body);
    let flat = Flatten {
        name: String::new(),
        depth: 0,
        out: &mut parsed,
        limits,
    };
    if serde::de::DeserializeSeed::deserialize(flat, &mut de)
        .and_then(|()| de.end())
        .is_err()
    {
        parsed.items.clear();
        parsed.error = Some(BodyError::InvalidJson);
    }
    parsed
}

/// One JSON value being flattened into `out` under `name`, as it is read (no tree is built):
/// members in the order they come, every one of a repeated key.
struct Flatten<'p> {
    name: String,
    depth: usize,
    out: &'p mut Parsed<Arg>,
    limits: Limits,
}

impl Flatten<'_> {
    fn push(self, value: &[u8]) {
        if self.out.items.len() >= self.limits.max_args {
            self.out.error.get_or_insert(BodyError::TooComplex);
            return;
        }
        self.out.items.push(Arg {
            name: self.name,
            value: value.to_vec(),
        });
    }

    /// Whether a container here is deeper than the limits keep (then read and dropped).
    fn too_deep(&mut self) -> bool {
        let deep = self.depth >= self.limits.max_depth;
        if deep {
            self.out.error.get_or_insert(BodyError::TooComplex);
        }
        deep
    }

    /// The member `key` of this container, as a value to flatten.
    fn child(&mut self, key: impl std::fmt::Display) -> Flatten<'_> {
        use std::fmt::Write as _;
        let mut name = self.name.clone();
        if !name.is_empty() {
            name.push('.');
        }
        let _ = write!(name, "{key}");
        Flatten {
            name,
            depth: self.depth + 1,
            out: self.out,
            limits: self.limits,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(v.to_string().as_bytes());
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // (As serde_json writes numbers: `1.0`, `1e300` as `1e300`.)
        let text = serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string());
        self.push(text.as_bytes());
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(v.as_bytes());
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(b"");
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.too_deep() {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let mut index = 0_usize;
        while seq.next_element_seed(self.child(index))?.is_some() {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.too_deep() {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(());
        }
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            map.next_value_seed(self.child(&key))?;
        }
        Ok(())
    }
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
