//! Transformation functions, with the semantics of ModSecurity's `t:` actions so that OWASP
//! CRS rules behave as their authors expect.
//!
//! Every function works on bytes, never fails and never panics: malformed escapes are left as
//! they are. A function that changes nothing returns its input borrowed, so a pipeline over a
//! clean value allocates nothing.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Transform {
    /// ASCII lowercase.
    Lowercase,
    /// `%XX` and `+` decoding; invalid sequences are kept.
    UrlDecode,
    /// [`UrlDecode`](Self::UrlDecode) plus IIS `%uHHHH` (low byte; full-width ASCII mapped back).
    UrlDecodeUni,
    /// Non-ASCII UTF-8 characters to `%uHHHH`.
    Utf8ToUnicode,
    /// HTML character references: `&#DD;`, `&#xHH;`, `&quot;` `&amp;` `&lt;` `&gt;` `&nbsp;`
    /// (the `;` is optional).
    HtmlEntityDecode,
    /// JavaScript escapes: `\xHH`, `\uHHHH`, octal, and the one-letter escapes.
    JsDecode,
    /// CSS escapes: `\` + 1–6 hex digits (one following space consumed), `\` + newline removed.
    CssDecode,
    /// ANSI C escapes: `\a \b \f \n \r \t \v \\ \? \' \"`, `\xHH`, octal.
    EscapeSeqDecode,
    /// Drops NUL bytes.
    RemoveNulls,
    /// NUL bytes to spaces.
    ReplaceNulls,
    /// Runs of whitespace (including NBSP) to one space.
    CompressWhitespace,
    /// Drops whitespace (including NBSP).
    RemoveWhitespace,
    /// Drops `/* */` and `<!-- -->` comments; `--` or `#` ends the value.
    RemoveComments,
    /// Drops the comment markers `/*`, `*/`, `<!--`, `-->`, `--` and `#`.
    RemoveCommentsChar,
    /// Replaces each `/* */` comment (unterminated: to the end) with one space.
    ReplaceComments,
    /// Collapses `//`, removes `./` and resolves `../` segments.
    NormalizePath,
    /// [`NormalizePath`](Self::NormalizePath) after turning `\` into `/`.
    NormalizePathWin,
    /// Command-line normalisation: drops `\ " ' ^`, spaces before `/` and `(`, turns `,` and
    /// `;` into spaces, compresses whitespace, lowercases.
    CmdLine,
    /// Base64 decoding (stops at the first character outside the alphabet).
    Base64Decode,
    /// Forgiving base64 decoding (skips characters outside the alphabet).
    Base64DecodeExt,
    /// Lowercase hex encoding.
    HexEncode,
    /// The SHA-1 digest (raw bytes).
    Sha1,
    /// The length, as decimal digits.
    Length,
    /// Strips leading and trailing whitespace.
    Trim,
    /// Strips leading whitespace.
    TrimLeft,
    /// Strips trailing whitespace.
    TrimRight,
    /// Prompt text normalisation (not in ModSecurity): drops invisible and format characters
    /// (zero-width, bidi controls, variation selectors, soft hyphen, combining marks), reveals
    /// Unicode tag characters as the ASCII they encode, maps full-width forms and Cyrillic and
    /// Greek look-alikes to ASCII letters.
    NormalizeText,
    /// Decodes embedded encoded blobs (not in ModSecurity): every base64 run of 16+ characters
    /// and hex run of 16+ digits that decodes to mostly printable text, one per line; empty when
    /// there is none.
    DecodeBlobs,
}

pub(crate) const NAMES: &[(&str, Transform)] = &[
    ("lowercase", Transform::Lowercase),
    ("urlDecode", Transform::UrlDecode),
    ("urlDecodeUni", Transform::UrlDecodeUni),
    ("utf8toUnicode", Transform::Utf8ToUnicode),
    ("htmlEntityDecode", Transform::HtmlEntityDecode),
    ("jsDecode", Transform::JsDecode),
    ("cssDecode", Transform::CssDecode),
    ("escapeSeqDecode", Transform::EscapeSeqDecode),
    ("removeNulls", Transform::RemoveNulls),
    ("replaceNulls", Transform::ReplaceNulls),
    ("compressWhitespace", Transform::CompressWhitespace),
    ("removeWhitespace", Transform::RemoveWhitespace),
    ("removeComments", Transform::RemoveComments),
    ("removeCommentsChar", Transform::RemoveCommentsChar),
    ("replaceComments", Transform::ReplaceComments),
    ("normalizePath", Transform::NormalizePath),
    ("normalisePath", Transform::NormalizePath),
    ("normalizePathWin", Transform::NormalizePathWin),
    ("normalisePathWin", Transform::NormalizePathWin),
    ("cmdLine", Transform::CmdLine),
    ("base64Decode", Transform::Base64Decode),
    ("base64DecodeExt", Transform::Base64DecodeExt),
    ("hexEncode", Transform::HexEncode),
    ("sha1", Transform::Sha1),
    ("length", Transform::Length),
    ("trim", Transform::Trim),
    ("trimLeft", Transform::TrimLeft),
    ("trimRight", Transform::TrimRight),
    ("normalizeText", Transform::NormalizeText),
    ("decodeBlobs", Transform::DecodeBlobs),
];

/// An unknown transformation name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transformation `{0}`")]
pub struct UnknownTransform(pub String);

impl FromStr for Transform {
    type Err = UnknownTransform;

    /// Parses a ModSecurity name (case-insensitive, as ModSecurity accepts `base64decode`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, t)| *t)
            .ok_or_else(|| UnknownTransform(s.to_owned()))
    }
}

impl Transform {
    /// The ModSecurity name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("unknown", |(n, _)| n)
    }

    /// A test for the bytes without which the transformation leaves a value as it is (each
    /// implementation below returns its input unchanged when the value has none of them), or
    /// `None` for those that change any value. Values go through a rule set's pipelines
    /// untouched when they hold none of the bytes of any of their transformations.
    pub(crate) fn trigger(self) -> Option<fn(u8) -> bool> {
        Some(match self {
            Self::Lowercase => |b: u8| b.is_ascii_uppercase(),
            Self::UrlDecode | Self::UrlDecodeUni => |b| matches!(b, b'%' | b'+'),
            Self::Utf8ToUnicode | Self::NormalizeText => |b| !b.is_ascii(),
            Self::HtmlEntityDecode => |b| b == b'&',
            Self::JsDecode | Self::CssDecode | Self::EscapeSeqDecode => |b| b == b'\\',
            Self::RemoveNulls | Self::ReplaceNulls => |b| b == 0,
            Self::CompressWhitespace
            | Self::RemoveWhitespace
            | Self::Trim
            | Self::TrimLeft
            | Self::TrimRight => is_space,
            Self::RemoveComments => |b| matches!(b, b'/' | b'<' | b'-' | b'#'),
            Self::RemoveCommentsChar => |b| matches!(b, b'/' | b'*' | b'<' | b'-' | b'#'),
            Self::ReplaceComments => |b| b == b'/',
            // Without `/`, a path is one segment, which changes only when it is `.` or `..`.
            Self::NormalizePath => |b| matches!(b, b'/' | b'.'),
            Self::NormalizePathWin => |b| matches!(b, b'/' | b'.' | b'\\'),
            Self::CmdLine => |b| {
                matches!(b, b'\\' | b'"' | b'\'' | b'^' | b',' | b';')
                    || is_space(b)
                    || b.is_ascii_uppercase()
            },
            Self::Base64Decode
            | Self::Base64DecodeExt
            | Self::HexEncode
            | Self::Sha1
            | Self::Length
            | Self::DecodeBlobs => return None,
        })
    }

    /// A test for the bytes the transformation may write that its input lacks (it writes
    /// them only when the input holds one of its [`trigger`](Self::trigger) bytes): decoders
    /// may write any byte, case and whitespace normalisers their letters and spaces, the
    /// filters none. With the trigger, this bounds what a pipeline can make of a value from
    /// the value's own bytes, before running it.
    pub(crate) fn creates(self) -> fn(u8) -> bool {
        match self {
            Self::Lowercase => |b: u8| b.is_ascii_lowercase(),
            Self::Utf8ToUnicode => |b| b == b'%' || b == b'u' || b.is_ascii_hexdigit(),
            Self::ReplaceNulls
            | Self::CompressWhitespace
            | Self::RemoveComments
            | Self::RemoveCommentsChar
            | Self::ReplaceComments => |b| b == b' ',
            Self::NormalizePath | Self::NormalizePathWin => |b| b == b'/',
            Self::CmdLine => |b| b == b' ' || b.is_ascii_lowercase(),
            Self::RemoveNulls
            | Self::RemoveWhitespace
            | Self::Trim
            | Self::TrimLeft
            | Self::TrimRight => |_| false,
            Self::UrlDecode
            | Self::UrlDecodeUni
            | Self::NormalizeText
            | Self::HtmlEntityDecode
            | Self::JsDecode
            | Self::CssDecode
            | Self::EscapeSeqDecode
            | Self::Base64Decode
            | Self::Base64DecodeExt
            | Self::HexEncode
            | Self::Sha1
            | Self::Length
            | Self::DecodeBlobs => |_| true,
        }
    }

    /// Applies the transformation: `Borrowed` (the input itself) when it leaves the value as
    /// it is, else `Owned`.
    pub fn apply(self, input: &[u8]) -> Cow<'_, [u8]> {
        match self {
            Self::Lowercase => {
                if any_byte(input, |b| b.is_ascii_uppercase()) {
                    Cow::Owned(input.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(input)
                }
            }
            Self::UrlDecode => url_decode(input, false),
            Self::UrlDecodeUni => url_decode(input, true),
            Self::Utf8ToUnicode => utf8_to_unicode(input),
            Self::HtmlEntityDecode => html_entity_decode(input),
            Self::JsDecode => backslash_decode(input, Dialect::Js),
            Self::CssDecode => css_decode(input),
            Self::EscapeSeqDecode => backslash_decode(input, Dialect::C),
            Self::RemoveNulls => filter(input, |b| b != 0),
            Self::ReplaceNulls => map_bytes(input, |b| if b == 0 { b' ' } else { b }),
            Self::CompressWhitespace => compress_whitespace(input),
            Self::RemoveWhitespace => filter(input, |b| !is_space(b)),
            Self::RemoveComments => remove_comments(input),
            Self::RemoveCommentsChar => remove_comment_chars(input),
            Self::ReplaceComments => replace_comments(input),
            Self::NormalizePath => normalize_path(input, false),
            Self::NormalizePathWin => normalize_path(input, true),
            Self::CmdLine => cmd_line(input),
            Self::Base64Decode => Cow::Owned(base64_decode(input, false)),
            Self::Base64DecodeExt => Cow::Owned(base64_decode(input, true)),
            Self::HexEncode => Cow::Owned(hex_encode(input)),
            Self::Sha1 => Cow::Owned(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, input)
                    .as_ref()
                    .to_vec(),
            ),
            Self::Length => Cow::Owned(input.len().to_string().into_bytes()),
            Self::Trim => trim(input, true, true),
            Self::TrimLeft => trim(input, true, false),
            Self::TrimRight => trim(input, false, true),
            Self::NormalizeText => crate::text::normalize_text(input),
            Self::DecodeBlobs => Cow::Owned(crate::text::decode_blobs(input)),
        }
    }
}

/// Applies `pipeline` in order.
pub fn apply_all<'a>(pipeline: &[Transform], input: &'a [u8]) -> Cow<'a, [u8]> {
    let mut value = Cow::Borrowed(input);
    for t in pipeline {
        if let Cow::Owned(changed) = t.apply(&value) {
            value = Cow::Owned(changed);
        }
    }
    value
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Transform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whitespace as ModSecurity counts it: space, `\t\n\v\f\r` and NBSP (0xA0).
fn is_space(b: u8) -> bool {
    // (A table: this runs for every byte of long values.)
    #[allow(clippy::indexing_slicing, reason = "b < 256, the table's length")]
    const SPACE: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = matches!(b, 0x20 | 0x09 | 0x0a | 0x0b | 0x0c | 0x0d | 0xa0);
            b += 1;
        }
        table
    };
    SPACE.get(usize::from(b)).copied().unwrap_or(false)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex2(a: u8, b: u8) -> Option<u8> {
    Some(hex(a)? << 4 | hex(b)?)
}

/// Two hex digits at `s[at..at + 2]` as a byte.
fn hex2_at(s: &[u8], at: usize) -> Option<u8> {
    match s.get(at..at + 2)? {
        [a, b] => hex2(*a, *b),
        _ => None,
    }
}

/// Four hex digits at `s[at..at + 4]` as a `%u`/`\u` escape byte.
fn unicode_at(s: &[u8], at: usize) -> Option<u8> {
    match s.get(at..at + 4)? {
        [a, b, c, d] => unicode_byte([*a, *b, *c, *d]),
        _ => None,
    }
}

/// Whether any byte of `input` passes `test`: a branch-free pass over blocks, which the
/// compiler vectorises, stopping at the first block with one.
fn any_byte(input: &[u8], test: impl Fn(u8) -> bool) -> bool {
    input
        .chunks(32)
        .any(|block| block.iter().fold(false, |found, &b| found | test(b)))
}

fn filter(input: &[u8], keep: impl Fn(u8) -> bool) -> Cow<'_, [u8]> {
    if !any_byte(input, |b| !keep(b)) {
        Cow::Borrowed(input)
    } else {
        // Every byte is written, and the end moves past the kept ones (no branch per byte).
        let mut out = vec![0; input.len()];
        let mut end = 0;
        for &b in input {
            if let Some(slot) = out.get_mut(end) {
                *slot = b;
            }
            end += usize::from(keep(b));
        }
        out.truncate(end);
        Cow::Owned(out)
    }
}

fn map_bytes(input: &[u8], f: impl Fn(u8) -> u8) -> Cow<'_, [u8]> {
    if !any_byte(input, |b| f(b) != b) {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(input.iter().map(|&b| f(b)).collect())
    }
}

/// The byte of a `%uHHHH`/`\uHHHH` escape, as ModSecurity computes it: the low byte, with
/// full-width ASCII (U+FF01–U+FF5E) mapped back to ASCII.
fn unicode_byte(h: [u8; 4]) -> Option<u8> {
    let [a, b, c, d] = h;
    hex(a)?;
    hex(b)?;
    let mut low = hex2(c, d)?;
    if low > 0 && low < 0x5f && a.eq_ignore_ascii_case(&b'f') && b.eq_ignore_ascii_case(&b'f') {
        low += 0x20;
    }
    Some(low)
}

fn url_decode(input: &[u8], unicode: bool) -> Cow<'_, [u8]> {
    let Some(first) = memchr::memchr2(b'%', b'+', input) else {
        return Cow::Borrowed(input);
    };
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(input.get(..first).unwrap_or_default());
    let mut i = first;
    while let Some(&b) = input.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let rest = input.get(i + 1..).unwrap_or_default();
                if unicode
                    && matches!(rest.first(), Some(b'u' | b'U'))
                    && let Some(byte) = unicode_at(rest, 1)
                {
                    out.push(byte);
                    i += 6;
                } else if let Some(byte) = hex2_at(rest, 0) {
                    out.push(byte);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn utf8_to_unicode(input: &[u8]) -> Cow<'_, [u8]> {
    if input.is_ascii() {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len() * 2);
    for chunk in input.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.push(c as u8);
            } else {
                out.extend_from_slice(format!("%u{:04x}", u32::from(c)).as_bytes());
            }
        }
        // Invalid sequences are kept as they are.
        out.extend_from_slice(chunk.invalid());
    }
    Cow::Owned(out)
}

/// Copies `input`, handing each `marker` byte to `decode`: it gets the input from the marker
/// on and the output buffer, appends what the escape stands for, and returns how many bytes it
/// consumed (at least the marker). The runs between markers are copied whole.
fn decode_escapes(
    input: &[u8],
    marker: u8,
    mut decode: impl FnMut(&[u8], &mut Vec<u8>) -> usize,
) -> Cow<'_, [u8]> {
    if memchr::memchr(marker, input).is_none() {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((plain, escape)) =
        memchr::memchr(marker, rest).and_then(|at| rest.split_at_checked(at))
    {
        out.extend_from_slice(plain);
        let used = decode(escape, &mut out).clamp(1, escape.len());
        rest = escape.get(used..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Up to `max` digits of `radix` at the start of `s`: their value and count.
fn digits_value(s: &[u8], radix: u32, max: usize) -> (u32, usize) {
    s.iter()
        .take(max)
        .map_while(|&d| char::from(d).to_digit(radix))
        .fold((0u32, 0), |(value, n), d| {
            (value.wrapping_mul(radix).wrapping_add(d), n + 1)
        })
}

/// `&...;` references, from the `&`: the decoded byte and the bytes consumed.
fn html_entity(escape: &[u8]) -> Option<(u8, usize)> {
    let rest = escape.get(1..)?;
    let (byte, mut used) = if rest.first() == Some(&b'#') {
        let (radix, digits_at) = match rest.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let (value, n) = digits_value(rest.get(digits_at..)?, radix, 8);
        if n == 0 {
            return None;
        }
        // ModSecurity keeps the low byte.
        ((value & 0xff) as u8, digits_at + n)
    } else {
        [
            (&b"quot"[..], b'"'),
            (b"amp", b'&'),
            (b"lt", b'<'),
            (b"gt", b'>'),
            (b"nbsp", 0xa0),
        ]
        .iter()
        .find(|(name, _)| {
            rest.get(..name.len())
                .is_some_and(|r| r.eq_ignore_ascii_case(name))
        })
        .map(|(name, byte)| (*byte, name.len()))?
    };
    if rest.get(used) == Some(&b';') {
        used += 1;
    }
    Some((byte, 1 + used))
}

fn html_entity_decode(input: &[u8]) -> Cow<'_, [u8]> {
    decode_escapes(input, b'&', |escape, out| match html_entity(escape) {
        Some((byte, used)) => {
            out.push(byte);
            used
        }
        None => {
            out.push(b'&');
            1
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Js,
    C,
}

fn backslash_decode(input: &[u8], dialect: Dialect) -> Cow<'_, [u8]> {
    decode_escapes(input, b'\\', |escape, out| {
        let Some(&next) = escape.get(1) else {
            out.push(b'\\');
            return 1;
        };
        let rest = escape.get(2..).unwrap_or_default();
        let simple = match next {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            2
        } else if next == b'x'
            && let Some(byte) = hex2_at(rest, 0)
        {
            out.push(byte);
            4
        } else if dialect == Dialect::Js
            && next == b'u'
            && let Some(byte) = unicode_at(rest, 0)
        {
            out.push(byte);
            6
        } else if (b'0'..=b'7').contains(&next) {
            let (value, n) = digits_value(escape.get(1..).unwrap_or_default(), 8, 3);
            out.push((value & 0xff) as u8);
            1 + n
        } else if dialect == Dialect::C && !matches!(next, b'\\' | b'?' | b'\'' | b'"') {
            // Unknown C escapes are kept whole.
            out.extend_from_slice(&[b'\\', next]);
            2
        } else {
            out.push(next);
            2
        }
    })
}

fn css_decode(input: &[u8]) -> Cow<'_, [u8]> {
    decode_escapes(input, b'\\', |escape, out| {
        let rest = escape.get(1..).unwrap_or_default();
        let digits = rest
            .iter()
            .take(6)
            .take_while(|d| d.is_ascii_hexdigit())
            .count();
        if digits == 0 {
            return match rest.first() {
                // An escaped newline is a line continuation: dropped.
                Some(b'\n') => 2,
                Some(&c) => {
                    out.push(c);
                    2
                }
                None => {
                    out.push(b'\\');
                    1
                }
            };
        }
        // ModSecurity keeps the last byte, mapping full-width ASCII back.
        let mut byte = if digits == 1 {
            rest.first().copied().and_then(hex).unwrap_or(0)
        } else {
            hex2_at(rest, digits - 2).unwrap_or(0)
        };
        let full_width = digits >= 4
            && rest
                .get(digits - 4..digits - 2)
                .is_some_and(|hi| hi.eq_ignore_ascii_case(b"ff"));
        if full_width && byte > 0 && byte < 0x5f {
            byte += 0x20;
        }
        out.push(byte);
        // One whitespace character after the hex digits belongs to the escape.
        let trailing = rest.get(digits).is_some_and(|&c| is_space(c) && c != 0xa0);
        1 + digits + usize::from(trailing)
    })
}

fn compress_whitespace(input: &[u8]) -> Cow<'_, [u8]> {
    // The first byte that changes: a whitespace byte other than a lone space.
    let first = input.iter().enumerate().position(|(i, &b)| {
        is_space(b) && (b != b' ' || input.get(i + 1).is_some_and(|&n| is_space(n)))
    });
    let Some(first) = first else {
        return Cow::Borrowed(input);
    };
    let (head, tail) = input.split_at(first);
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(head);
    let mut rest = tail;
    while !rest.is_empty() {
        let spaces = rest
            .iter()
            .position(|&b| !is_space(b))
            .unwrap_or(rest.len());
        if spaces > 0 {
            out.push(b' ');
        }
        let rest_of_run = rest.get(spaces..).unwrap_or_default();
        let word = rest_of_run
            .iter()
            .position(|&b| is_space(b))
            .unwrap_or(rest_of_run.len());
        out.extend_from_slice(rest_of_run.get(..word).unwrap_or_default());
        rest = rest_of_run.get(word..).unwrap_or_default();
    }
    Cow::Owned(out)
}

fn starts(input: &[u8], at: usize, pat: &[u8]) -> bool {
    input.get(at..at + pat.len()) == Some(pat)
}

fn remove_comments(input: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr3(b'/', b'<', b'-', input).is_none() && memchr::memchr(b'#', input).is_none() {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    let mut in_comment = false;
    while i < input.len() {
        if in_comment {
            if starts(input, i, b"*/") {
                in_comment = false;
                i += 2;
            } else if starts(input, i, b"-->") {
                in_comment = false;
                i += 3;
            } else {
                i += 1;
            }
        } else if starts(input, i, b"/*") {
            in_comment = true;
            i += 2;
        } else if starts(input, i, b"<!--") {
            in_comment = true;
            i += 4;
        } else if starts(input, i, b"--") || starts(input, i, b"#") {
            // SQL and shell line comments end the value, replaced by one space.
            out.push(b' ');
            break;
        } else {
            out.extend(input.get(i).copied());
            i += 1;
        }
    }
    Cow::Owned(out)
}

fn remove_comment_chars(input: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr3(b'/', b'*', b'<', input).is_none()
        && memchr::memchr2(b'-', b'#', input).is_none()
    {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if let Some(pat) = [&b"<!--"[..], b"-->", b"/*", b"*/", b"--", b"#"]
            .iter()
            .find(|p| starts(input, i, p))
        {
            i += pat.len();
        } else {
            out.extend(input.get(i).copied());
            i += 1;
        }
    }
    Cow::Owned(out)
}

fn replace_comments(input: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memmem::find(input, b"/*").is_none() {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if starts(input, i, b"/*") {
            out.push(b' ');
            match input
                .get(i + 2..)
                .and_then(|r| r.windows(2).position(|w| w == b"*/"))
            {
                Some(end) => i += 2 + end + 2,
                None => break,
            }
        } else {
            out.extend(input.get(i).copied());
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// Whether normalising `input` as a path leaves it as it is: no `.` or `..` segment, no
/// empty segment but at the ends (and, for Windows paths, no backslash).
fn normal_already(input: &[u8], windows: bool) -> bool {
    if windows && memchr::memchr(b'\\', input).is_some() {
        return false;
    }
    // Segment by segment, from slash to slash: no `.` or `..`, and no empty one but the
    // first and the last.
    let mut start = 0;
    let mut slashes = memchr::memchr_iter(b'/', input);
    loop {
        let end = slashes.next();
        let segment = input
            .get(start..end.unwrap_or(input.len()))
            .unwrap_or_default();
        match segment {
            b"." | b".." => return false,
            b"" if start != 0 && end.is_some() => return false,
            _ => {}
        }
        match end {
            Some(at) => start = at + 1,
            None => return true,
        }
    }
}

fn normalize_path(input: &[u8], windows: bool) -> Cow<'_, [u8]> {
    if normal_already(input, windows) {
        return Cow::Borrowed(input);
    }
    normalize_path_slow(input, windows)
}

fn normalize_path_slow(input: &[u8], windows: bool) -> Cow<'_, [u8]> {
    let path: Cow<'_, [u8]> = if windows {
        map_bytes(input, |b| if b == b'\\' { b'/' } else { b })
    } else {
        Cow::Borrowed(input)
    };
    let absolute = path.first() == Some(&b'/');
    let trailing = path.last() == Some(&b'/') || path.ends_with(b"/.") || path.ends_with(b"/..");
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segments.last().is_some_and(|s| *s != b"..") {
                    segments.pop();
                } else if !absolute {
                    segments.push(seg);
                }
            }
            _ => segments.push(seg),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if absolute {
        out.push(b'/');
    }
    out.extend_from_slice(&segments.join(&b'/'));
    if trailing && !segments.is_empty() {
        out.push(b'/');
    }
    if out.as_slice() == input {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(out)
    }
}

/// Whether `cmdLine` leaves `input` as it is: lowercase, with no byte it drops or replaces,
/// and only single spaces, none before a `/` or `(`.
fn cmd_line_already(input: &[u8]) -> bool {
    let mut bytes = input.iter().peekable();
    while let Some(&b) = bytes.next() {
        let changes = match b {
            b'\\' | b'"' | b'\'' | b'^' | b',' | b';' => true,
            b' ' => bytes
                .peek()
                .is_some_and(|&&n| n == b'/' || n == b'(' || is_space(n)),
            b => is_space(b) || b.is_ascii_uppercase(),
        };
        if changes {
            return false;
        }
    }
    true
}

fn cmd_line(input: &[u8]) -> Cow<'_, [u8]> {
    if cmd_line_already(input) {
        return Cow::Borrowed(input);
    }
    cmd_line_slow(input)
}

fn cmd_line_slow(input: &[u8]) -> Cow<'_, [u8]> {
    /// What `cmdLine` does with each byte (a table: this runs over every byte of long
    /// prose values, for several CRS pipelines).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Class {
        /// Kept, lowercased.
        Keep,
        /// Dropped: `\ " ' ^`.
        Drop,
        /// Whitespace, `,` and `;`: a run of them becomes one space.
        Space,
        /// `/` and `(`: kept, and a space before them is dropped.
        Close,
    }
    #[allow(clippy::indexing_slicing, reason = "b < 256, the table's length")]
    const CLASSES: [Class; 256] = {
        let mut table = [Class::Keep; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = match b as u8 {
                b'\\' | b'"' | b'\'' | b'^' => Class::Drop,
                b',' | b';' | 0x20 | 0x09 | 0x0a | 0x0b | 0x0c | 0x0d | 0xa0 => Class::Space,
                b'/' | b'(' => Class::Close,
                _ => Class::Keep,
            };
            b += 1;
        }
        table
    };
    // The output is never longer than the input: every byte is written at `end`, which
    // only moves past the bytes kept.
    let mut out = vec![0; input.len()];
    let mut end = 0;
    // Whether the last byte written is the space a run became (dropped bytes leave it so).
    let mut space = false;
    for &b in input {
        match CLASSES.get(usize::from(b)).copied().unwrap_or(Class::Keep) {
            Class::Keep => {
                if let Some(slot) = out.get_mut(end) {
                    *slot = b.to_ascii_lowercase();
                }
                end += 1;
                space = false;
            }
            Class::Space => {
                if let Some(slot) = out.get_mut(end) {
                    *slot = b' ';
                }
                end += usize::from(!space);
                space = true;
            }
            Class::Close => {
                end -= usize::from(space);
                if let Some(slot) = out.get_mut(end) {
                    *slot = b;
                }
                end += 1;
                space = false;
            }
            Class::Drop => {}
        }
    }
    out.truncate(end);
    if out.as_slice() == input {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(out)
    }
}

pub(crate) fn base64_decode(input: &[u8], forgiving: bool) -> Vec<u8> {
    /// Each byte's 6 bits, or `NONE` outside the alphabet (a table: this runs for every
    /// byte of every value some CRS pipelines read).
    const NONE: u8 = 0xff;
    #[allow(clippy::indexing_slicing, reason = "b < 256, the table's length")]
    const VALUES: [u8; 256] = {
        let mut table = [NONE; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = match b as u8 {
                c @ b'A'..=b'Z' => c - b'A',
                c @ b'a'..=b'z' => c - b'a' + 26,
                c @ b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => NONE,
            };
            b += 1;
        }
        table
    };
    let value = |b: u8| -> Option<u32> {
        let v = VALUES.get(usize::from(b)).copied().unwrap_or(NONE);
        (v != NONE).then_some(u32::from(v))
    };
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in input {
        if b == b'=' {
            break;
        }
        let Some(v) = value(b) else {
            if forgiving {
                continue;
            }
            break;
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    out
}

fn hex_encode(input: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(input.len() * 2);
    for &b in input {
        out.extend(DIGITS.get(usize::from(b >> 4)));
        out.extend(DIGITS.get(usize::from(b & 0xf)));
    }
    out
}

fn trim(input: &[u8], left: bool, right: bool) -> Cow<'_, [u8]> {
    let mut s = input;
    if left {
        while let Some((&b, rest)) = s.split_first() {
            if !is_space(b) {
                break;
            }
            s = rest;
        }
    }
    if right {
        while let Some((&b, rest)) = s.split_last() {
            if !is_space(b) {
                break;
            }
            s = rest;
        }
    }
    // `Borrowed` means unchanged (see `Transform::apply`).
    if s.len() == input.len() {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(s.to_vec())
    }
}

#[cfg(test)]
mod tests;
