//! The bytes every match of a pattern contains: when a value has none of them, the pattern
//! cannot match it, and the search is skipped. Most CRS patterns need a quote, a bracket or
//! some other punctuation that ordinary values lack.

use crate::transform::Transform;
use regex_syntax::hir::{Class, Hir, HirKind};

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        if let Some(word) = self.0.get_mut(usize::from(b >> 6)) {
            *word |= 1 << (b & 63);
        }
    }

    fn contains(self, b: u8) -> bool {
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|w| w & (1 << (b & 63)) != 0)
    }

    fn bytes(self) -> impl Iterator<Item = u8> {
        (0..=255_u8).filter(move |&b| self.contains(b))
    }

    /// The bytes that pass `test`.
    pub(crate) fn matching(test: impl Fn(u8) -> bool) -> Self {
        let mut out = Self::default();
        for b in (0..=255_u8).filter(|b| test(*b)) {
            out.insert(b);
        }
        out
    }

    /// The union of two sets.
    pub(crate) fn union(self, other: Self) -> Self {
        let mut out = self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        out
    }

    /// Whether the sets share a byte.
    pub(crate) fn intersects(self, other: Self) -> bool {
        // (Branch-free: this runs for every value and pipeline.)
        let [a0, a1, a2, a3] = self.0;
        let [b0, b1, b2, b3] = other.0;
        (a0 & b0) | (a1 & b1) | (a2 & b2) | (a3 & b3) != 0
    }

    /// The bytes of `value`.
    pub(crate) fn of(value: &[u8]) -> Self {
        if value.len() < 64 {
            let mut out = Self::default();
            for &b in value {
                out.insert(b);
            }
            return out;
        }
        // Long values: one independent store per byte, then the table packed into words
        // (setting bits in place chains every byte on the word before).
        let mut seen = [false; 256];
        for &b in value {
            if let Some(s) = seen.get_mut(usize::from(b)) {
                *s = true;
            }
        }
        let mut out = Self::default();
        for (word, chunk) in out.0.iter_mut().zip(seen.chunks_exact(64)) {
            *word = chunk
                .iter()
                .enumerate()
                .fold(0, |w, (i, &s)| w | (u64::from(s) << i));
        }
        out
    }

    /// How likely an ordinary value is to hold one of the bytes (smaller is better).
    pub(crate) fn cost(self) -> u32 {
        self.bytes().map(weight).sum()
    }
}

/// How common a byte is in ordinary request values.
fn weight(b: u8) -> u32 {
    match b {
        b'a'..=b'z' | b' ' => 20,
        b'A'..=b'Z' | b'0'..=b'9' => 10,
        b'.' | b'-' | b'_' | b'/' | b':' | b';' | b',' | b'(' | b')' | b'=' | b'&' | b'+' => 5,
        _ => 1,
    }
}

/// The bytes one of which every match of any of `phrases` contains, matched without case
/// (as `@pm` matches): per phrase, its least common byte in both cases.
pub(crate) fn phrases_need<'a>(phrases: impl IntoIterator<Item = &'a str>) -> Option<ByteSet> {
    let mut set = ByteSet::default();
    let mut any = false;
    for phrase in phrases {
        let folded = |b: u8| {
            let mut one = ByteSet::default();
            one.insert(b.to_ascii_lowercase());
            one.insert(b.to_ascii_uppercase());
            one
        };
        // (An empty phrase is dropped by `@pm`: it needs nothing.)
        if let Some(best) = phrase.bytes().map(folded).min_by_key(|s| s.cost()) {
            set = set.union(best);
            any = true;
        }
    }
    any.then_some(set)
}

/// The bytes one of which a value must hold for `pipeline` to make of it a value holding
/// one of `needs` (each transformation writes only its input's bytes and those it
/// [`creates`](Transform::creates), and creates only from a [`trigger`](Transform::trigger)
/// byte), or `None` when the pipeline may make any value of any other.
pub(crate) fn needs_before(pipeline: &[Transform], needs: ByteSet) -> Option<ByteSet> {
    pipeline.iter().rev().try_fold(needs, |after, t| {
        let trigger = ByteSet::matching(t.trigger()?);
        Some(if ByteSet::matching(t.creates()).intersects(after) {
            after.union(trigger)
        } else {
            after
        })
    })
}

/// The bytes every match of `pattern` contains (see [`need`]).
#[cfg(test)]
pub(crate) fn needed(pattern: &str) -> Option<ByteSet> {
    need(&parse(pattern)?)
}

/// `pattern` parsed as the group searches compile it: bytes, no Unicode.
pub(crate) fn parse(pattern: &str) -> Option<Hir> {
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .unicode(false)
        .build()
        .parse(pattern)
        .ok()
}

/// The bytes every match of `hir` contains, or `None` when it can match without any
/// particular byte.
pub(crate) fn need(hir: &Hir) -> Option<ByteSet> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => None,
        // Any byte of a literal is in every match: the least common one serves.
        HirKind::Literal(lit) => {
            let b = lit.0.iter().copied().min_by_key(|&b| weight(b))?;
            let mut set = ByteSet::default();
            set.insert(b);
            Some(set)
        }
        HirKind::Class(Class::Bytes(class)) => {
            let mut set = ByteSet::default();
            for r in class.ranges() {
                for b in r.start()..=r.end() {
                    set.insert(b);
                }
            }
            Some(set)
        }
        HirKind::Class(Class::Unicode(class)) => {
            let mut set = ByteSet::default();
            for r in class.ranges() {
                let (start, end) = (u32::from(r.start()), u32::from(r.end()));
                if end > 0x7f {
                    return None;
                }
                for c in start..=end {
                    set.insert(u8::try_from(c).ok()?);
                }
            }
            Some(set)
        }
        HirKind::Repetition(rep) if rep.min >= 1 => need(&rep.sub),
        HirKind::Repetition(_) => None,
        HirKind::Capture(cap) => need(&cap.sub),
        // Every part is matched: the part with the rarest bytes serves.
        HirKind::Concat(parts) => parts.iter().filter_map(need).min_by_key(|set| set.cost()),
        // One branch is matched: each must need something.
        HirKind::Alternation(branches) => branches
            .iter()
            .map(need)
            .try_fold(ByteSet::default(), |acc, set| Some(acc.union(set?))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(bytes: &[u8]) -> ByteSet {
        ByteSet::of(bytes)
    }

    #[test]
    fn byte_sets_of_short_and_long_values_agree() {
        let long: Vec<u8> = (0..=255_u8).cycle().step_by(7).take(300).collect();
        let mut slow = ByteSet::default();
        for &b in &long {
            slow.insert(b);
        }
        assert_eq!(ByteSet::of(&long), slow);
        assert!(ByteSet::of(&long).contains(0) && ByteSet::of(&long).contains(255));
        assert_eq!(ByteSet::of(b"ab"), ByteSet::of(&b"ab".repeat(40)));
    }

    #[test]
    fn needed_bytes() {
        assert_eq!(needed("abc<d"), Some(set(b"<")));
        assert_eq!(needed("(?:a'|b\")"), Some(set(b"'\"")));
        assert_eq!(needed("x*"), None);
        assert_eq!(needed("^$"), None);
        assert_eq!(needed("(?:<|x?)"), None);
        assert_eq!(needed("[<>]+script"), Some(set(b"<>")));
        assert_eq!(needed("(?i)on"), Some(set(b"Oo")));
    }

    #[test]
    fn a_value_without_the_bytes_never_matches() {
        // Every pattern here, on every short value over the alphabet: where the value has
        // none of the needed bytes, the pattern does not match it.
        let patterns = [
            "a<b",
            "(?i)ab+c",
            "[<>](?:x|y')",
            "(?:\\bor\\b|'--)",
            "a(?:b|c)*d",
            "(?:ab|a\\.)+",
            "x{2,}",
            "(?s).<",
        ];
        let alphabet = b"abcdxyABXY<>'-.o r";
        let mut values = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = values
                .iter()
                .flat_map(|v| {
                    alphabet.iter().map(move |&b| {
                        let mut w: Vec<u8> = v.clone();
                        w.push(b);
                        w
                    })
                })
                .collect();
            values.extend(longer);
        }
        for p in patterns {
            let needs = needed(p).unwrap();
            let re = regex_automata::meta::Regex::builder()
                .syntax(
                    regex_automata::util::syntax::Config::new()
                        .utf8(false)
                        .unicode(false),
                )
                .build(p)
                .unwrap();
            for v in &values {
                if !ByteSet::of(v).intersects(needs) {
                    assert!(!re.is_match(v.as_slice()), "{p} matched {v:?}");
                }
            }
        }
    }

    #[test]
    fn a_value_without_a_phrase_list_needed_bytes_never_matches_it() {
        // Every phrase list of CRS's `@pm` and `@pmFromFile` rules: each phrase, in its own
        // case, upper case, and inside other text, holds a needed byte (and matches); a value
        // made of the other bytes only never matches.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs/rules");
        let mut lists: Vec<Vec<String>> = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("data") => lists.push(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned)
                        .collect(),
                ),
                Some("conf") => {
                    for part in text.split("\"@pm ").skip(1) {
                        let param = part.split('"').next().unwrap_or_default();
                        lists.push(param.split_whitespace().map(str::to_owned).collect());
                    }
                }
                _ => {}
            }
        }
        assert!(lists.len() > 20, "{}", lists.len());
        let mut next = crate::testing::xorshift(0x5851_f42d_4c95_7f2d);
        for phrases in &lists {
            let needs = phrases_need(phrases.iter().map(String::as_str)).unwrap();
            let op =
                crate::operator::Operator::phrases(phrases.iter().map(String::as_str)).unwrap();
            for (i, p) in phrases.iter().enumerate() {
                for v in [p.clone(), p.to_ascii_uppercase(), format!("x {p} y")] {
                    assert!(ByteSet::of(v.as_bytes()).intersects(needs), "{p}");
                    // (A sample: the operator is slow to run in debug builds.)
                    if i % 16 == 0 {
                        assert!(op.matches(v.as_bytes()), "{p}");
                    }
                }
            }
            let quiet: Vec<u8> = (0..=255_u8)
                .filter(|b| !ByteSet::of(&[*b]).intersects(needs))
                .collect();
            for _ in 0..200 {
                let len = (next() % 40) as usize;
                let v: Vec<u8> = (0..len)
                    .map(|_| quiet[(next() % quiet.len() as u64) as usize])
                    .collect();
                assert!(!op.matches(&v), "{v:?}");
            }
        }
    }

    #[test]
    fn a_pipeline_makes_needed_bytes_only_from_the_bytes_before_it() {
        // Random pipelines of up to four transformations (of those with triggers), random
        // needed sets and values: whenever the pipeline's output holds a needed byte, the
        // value held one of `needs_before`.
        let mut next = crate::testing::xorshift(0x7f4a_7c15_9e37_79b9);
        let with_trigger: Vec<Transform> = crate::transform::NAMES
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| t.trigger().is_some())
            .collect();
        let alphabet: &[u8] = b"%+u\\&#;x/.-*<>' \t\0\xa0\xc3\xa9AaZz09()\"^,";
        let pick = |n: u64, from: &[u8]| from[(n % from.len() as u64) as usize];
        let (mut checked, mut made) = (0, 0);
        for _ in 0..20_000 {
            let len = 1 + (next() % 4) as usize;
            let pipeline: Vec<Transform> = (0..len)
                .map(|_| with_trigger[(next() % with_trigger.len() as u64) as usize])
                .collect();
            let needs = set(&[pick(next(), alphabet), pick(next(), alphabet)]);
            let before = needs_before(&pipeline, needs).unwrap();
            for _ in 0..20 {
                let value: Vec<u8> = (0..next() % 12).map(|_| pick(next(), alphabet)).collect();
                let out = crate::transform::apply_all(&pipeline, &value);
                if ByteSet::of(&out).intersects(needs) {
                    assert!(
                        ByteSet::of(&value).intersects(before),
                        "{pipeline:?} made one of {needs:?} from {value:?}"
                    );
                    made += u32::from(!ByteSet::of(&value).intersects(needs));
                }
                checked += 1;
            }
        }
        // (Many outputs hold needed bytes their values lacked: the test has teeth.)
        assert!(checked == 400_000 && made > 1_000, "{checked} {made}");
        let lower = [Transform::Lowercase, Transform::UrlDecodeUni];
        assert_eq!(needs_before(&lower, set(b"<")), Some(set(b"<%+")));
        assert_eq!(
            needs_before(&lower, set(b"a")),
            Some(set(b"a%+").union(ByteSet::matching(|b| b.is_ascii_uppercase())))
        );
        assert_eq!(needs_before(&[Transform::Base64Decode], set(b"<")), None);
    }
}
