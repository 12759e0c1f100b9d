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
        let mut seen = [0_u8; 256];
        for &b in value {
            if let Some(s) = seen.get_mut(usize::from(b)) {
                *s = 1;
            }
        }
        // Eight flags (0 or 1) read as one word, times this, leave their bits in its top byte,
        // the first flag lowest: each word of the set is eight multiplications.
        const PACK: u64 = 0x0102_0408_1020_4080;
        let mut out = Self::default();
        for (word, chunk) in out.0.iter_mut().zip(seen.chunks_exact(64)) {
            *word = chunk
                .chunks_exact(8)
                .zip((0..64).step_by(8))
                .fold(0, |w, (eight, shift)| {
                    let flags = <[u8; 8]>::try_from(eight).map_or(0, u64::from_le_bytes);
                    w | ((flags.wrapping_mul(PACK) >> 56) << shift)
                });
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

/// The shortest factor worth searching for: shorter ones are in most text.
const MIN_FACTOR: usize = 3;
/// The most strings a set of factors holds (a screen searches them all at once with SIMD
/// only while they are few).
const MAX_FACTORS: usize = 48;
/// The longest factor kept while strings are joined.
const MAX_FACTOR_LEN: usize = 24;

/// Strings (in ASCII lower case), one of which every match of `hir` contains without regard
/// to ASCII case, each at least [`MIN_FACTOR`] bytes long; `None` when there are no such.
pub(crate) fn factors(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    // Joined strings are longer, hence rarer, but more: when the branches of a large
    // alternation hold too many, fewer and shorter ones are tried (`require` rather than
    // each of `require.main`, `require.cache`, ...).
    [MAX_FACTORS, 4, 1].into_iter().find_map(|join_limit| {
        let part = part(hir, join_limit)?;
        (!part.set.is_empty()
            && part.set.len() <= MAX_FACTORS
            && part.set.iter().all(|s| s.len() >= MIN_FACTOR))
        .then_some(part.set)
    })
}

/// What a piece of a pattern tells of its matches: with `exact`, each match of the piece
/// is one of `set` (without regard to ASCII case; the empty string for a piece that matches
/// nothing, as an assertion); without, each contains one of `set`.
struct Part {
    set: Vec<Vec<u8>>,
    exact: bool,
}

impl Part {
    /// How well the set screens: its shortest string (longer is rarer), then fewer strings.
    fn score(&self) -> (usize, std::cmp::Reverse<usize>) {
        let shortest = self.set.iter().map(Vec::len).min().unwrap_or(0);
        (shortest, std::cmp::Reverse(self.set.len()))
    }
}

fn exact(set: Vec<Vec<u8>>) -> Part {
    Part { set, exact: true }
}

/// The bytes of a class of at most 8 bytes, as one-byte strings in lower case (an ASCII
/// letter in both cases counts once), when there are at most four such.
fn class_part(ranges: impl Iterator<Item = (u32, u32)> + Clone) -> Option<Part> {
    let size: u32 = ranges.clone().map(|(a, b)| b.saturating_sub(a) + 1).sum();
    if size > 8 {
        return None;
    }
    let mut set: Vec<Vec<u8>> = Vec::new();
    for c in ranges.flat_map(|(a, b)| a..=b) {
        let b = u8::try_from(c).ok()?.to_ascii_lowercase();
        if !set.iter().any(|s| s.as_slice() == [b]) {
            set.push(vec![b]);
        }
    }
    (set.len() <= 4).then(|| exact(set))
}

/// `join_limit`: the most strings a run of joined pieces may hold.
fn part(hir: &Hir, join_limit: usize) -> Option<Part> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(exact(vec![Vec::new()])),
        HirKind::Literal(lit) => Some(exact(vec![lit.0.to_ascii_lowercase()])),
        HirKind::Class(Class::Bytes(class)) => class_part(
            class
                .ranges()
                .iter()
                .map(|r| (u32::from(r.start()), u32::from(r.end()))),
        ),
        HirKind::Class(Class::Unicode(class)) => class_part(
            class
                .ranges()
                .iter()
                .map(|r| (u32::from(r.start()), u32::from(r.end()))),
        ),
        HirKind::Capture(cap) => part(&cap.sub, join_limit),
        HirKind::Repetition(rep) if rep.min == 1 && rep.max == Some(1) => {
            part(&rep.sub, join_limit)
        }
        // Every match holds at least one match of the repeated piece.
        HirKind::Repetition(rep) if rep.min >= 1 => Some(Part {
            set: part(&rep.sub, join_limit)?.set,
            exact: false,
        }),
        // An optional exact piece: one of its strings, or nothing.
        HirKind::Repetition(rep) if rep.max == Some(1) => {
            let sub = part(&rep.sub, join_limit)?;
            let mut set = sub.set;
            if !sub.exact || set.len() >= MAX_FACTORS {
                return None;
            }
            if !set.iter().any(Vec::is_empty) {
                set.push(Vec::new());
            }
            Some(exact(set))
        }
        HirKind::Repetition(_) => None,
        HirKind::Alternation(branches) => {
            let mut set: Vec<Vec<u8>> = Vec::new();
            let mut all_exact = true;
            for branch in branches {
                let p = part(branch, join_limit)?;
                all_exact &= p.exact;
                for s in p.set {
                    if !set.contains(&s) {
                        set.push(s);
                    }
                }
                if set.len() > MAX_FACTORS {
                    return None;
                }
            }
            Some(Part {
                set,
                exact: all_exact,
            })
        }
        HirKind::Concat(pieces) => concat_part(pieces, join_limit),
    }
}

/// A sequence: runs of exact pieces are joined (`u`, `n`, `i`, `o`, `n` make `union`); any
/// run, and any other piece's set, serves for the whole, and the best is kept.
fn concat_part(pieces: &[Hir], join_limit: usize) -> Option<Part> {
    let mut best: Option<Part> = None;
    let mut consider = |set: Vec<Vec<u8>>| {
        let candidate = Part { set, exact: false };
        let usable = !candidate.set.is_empty() && candidate.set.iter().all(|s| !s.is_empty());
        if usable && best.as_ref().is_none_or(|b| candidate.score() > b.score()) {
            best = Some(candidate);
        }
    };
    let mut run: Vec<Vec<u8>> = vec![Vec::new()];
    let mut whole = true;
    for piece in pieces {
        match part(piece, join_limit) {
            Some(p) if p.exact => {
                let longest = |set: &[Vec<u8>]| set.iter().map(Vec::len).max().unwrap_or(0);
                let fits = run.len() * p.set.len() <= join_limit
                    && longest(&run) + longest(&p.set) <= MAX_FACTOR_LEN;
                if fits {
                    run = run
                        .iter()
                        .flat_map(|a| p.set.iter().map(move |b| [a.as_slice(), b].concat()))
                        .collect();
                } else {
                    whole = false;
                    consider(std::mem::replace(&mut run, p.set));
                }
            }
            other => {
                whole = false;
                consider(std::mem::replace(&mut run, vec![Vec::new()]));
                if let Some(p) = other {
                    consider(p.set);
                }
            }
        }
    }
    if whole {
        return Some(exact(run));
    }
    consider(run);
    best
}

/// The shortest value a [`FactorScreen`] screens: a shorter one is searched as fast by the
/// pattern itself.
const FACTOR_MIN_LEN: usize = 64;
/// The bytes of a value put in lower case at a time by a [`FactorScreen`].
const FACTOR_CHUNK: usize = 1024;

/// A pattern's [`factors`], searched for all at once (SIMD, on the value in lower case)
/// before the pattern itself runs over a long value: a value with none of them is not
/// searched. Ordinary prose, such as a chat prompt, holds the bytes of most CRS patterns but
/// seldom their words, and a pattern that starts with a class has no prefix of literals for
/// its own search to skip text by.
#[derive(Debug, Clone)]
pub(crate) struct FactorScreen {
    /// Up to three bytes: a value holding one passes (an `@pm` list's phrases that hold
    /// punctuation need no string of their own).
    bytes: Vec<u8>,
    /// The strings, when there are any besides the bytes.
    strings: Option<aho_corasick::AhoCorasick>,
    /// The longest string, less one: chunks overlap by this much.
    overlap: usize,
}

impl FactorScreen {
    /// The screen of `pattern` (parsed as the searches compile it), when it has factors.
    #[cfg(test)]
    pub(crate) fn of(pattern: &str) -> Option<Self> {
        Self::of_hir(&parse(pattern)?)
    }

    /// The screen of an `@pm` phrase list: punctuation bytes that most phrases hold, and the
    /// other phrases' prefixes (any ASCII case), as long as they can be while few enough to
    /// search at once, when all are at least [`MIN_FACTOR`] long (a phrase holds its prefix).
    pub(crate) fn of_phrases<'a>(phrases: impl Iterator<Item = &'a str>) -> Option<Self> {
        // Up to three punctuation bytes, chosen greedily, stand for the phrases that hold
        // them (almost every PowerShell cmdlet name holds `-`); the others need strings.
        const RARE: &[u8] = b"/\\_-:~$%@[]{}()<>=;|&!*?\"'`^+#";
        let lower: Vec<Vec<u8>> = phrases
            .filter(|p| !p.is_empty())
            .map(|p| p.as_bytes().to_ascii_lowercase())
            .collect();
        let mut bytes = Vec::new();
        let mut lower: Vec<&Vec<u8>> = lower.iter().collect();
        while bytes.len() < 3 {
            let best = RARE
                .iter()
                .map(|&b| (lower.iter().filter(|p| p.contains(&b)).count(), b))
                .max();
            match best {
                Some((n, b)) if n > 0 => {
                    bytes.push(b);
                    lower.retain(|p| !p.contains(&b));
                }
                _ => break,
            }
        }
        if lower.is_empty() {
            return Self::of_bytes_and_strings(bytes, &[]);
        }
        if lower.iter().any(|p| p.len() < MIN_FACTOR) {
            return None;
        }
        let longest = lower.iter().map(|p| p.len()).max()?.min(FACTOR_CHUNK / 4);
        // The number of distinct prefixes only grows with their length: the longest length
        // that keeps them few is found going up.
        let prefixes = |k: usize| {
            let mut all: Vec<&[u8]> = lower.iter().map(|p| p.get(..k).unwrap_or(p)).collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let mut best = None;
        for k in MIN_FACTOR..=longest {
            let set = prefixes(k);
            if set.len() > MAX_FACTORS {
                break;
            }
            best = Some(set.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
        }
        Self::of_bytes_and_strings(bytes, &best?)
    }

    /// The screen of a parsed pattern, when it has factors.
    pub(crate) fn of_hir(hir: &Hir) -> Option<Self> {
        Self::of_bytes_and_strings(Vec::new(), &factors(hir)?)
    }

    fn of_bytes_and_strings(bytes: Vec<u8>, strings: &[Vec<u8>]) -> Option<Self> {
        let longest = strings.iter().map(Vec::len).max().unwrap_or(1);
        if longest > FACTOR_CHUNK / 4 || (strings.is_empty() && bytes.is_empty()) {
            return None;
        }
        let strings = match strings {
            [] => None,
            // (Leftmost-first: a standard automaton gets no SIMD prefilter, and any match
            // answers.)
            _ => Some(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(strings)
                    .ok()?,
            ),
        };
        Some(Self {
            bytes,
            strings,
            overlap: longest - 1,
        })
    }

    /// Whether the pattern may match `value`: `false` only for a long value that holds none
    /// of its factors.
    pub(crate) fn admits(&self, value: &[u8]) -> bool {
        if value.len() < FACTOR_MIN_LEN {
            return true;
        }
        let held = match *self.bytes.as_slice() {
            [a] => memchr::memchr(a, value).is_some(),
            [a, b] => memchr::memchr2(a, b, value).is_some(),
            [a, b, c, ..] => memchr::memchr3(a, b, c, value).is_some(),
            [] => false,
        };
        if held {
            return true;
        }
        let Some(strings) = &self.strings else {
            return false;
        };
        let mut lower = [0_u8; FACTOR_CHUNK];
        let mut start = 0;
        loop {
            let chunk = value.get(start..).unwrap_or_default();
            let chunk = chunk.get(..FACTOR_CHUNK).unwrap_or(chunk);
            let Some(dst) = lower.get_mut(..chunk.len()) else {
                return true;
            };
            for (d, s) in dst.iter_mut().zip(chunk) {
                *d = s.to_ascii_lowercase();
            }
            if strings.is_match(&*dst) {
                return true;
            }
            if start + chunk.len() >= value.len() {
                return false;
            }
            // (The next chunk starts early enough to hold any string cut by this one's end.)
            start += chunk.len() - self.overlap;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `pattern` compiled as the searches compile it.
    fn byte_regex(pattern: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::builder()
            .syntax(
                regex_automata::util::syntax::Config::new()
                    .utf8(false)
                    .unicode(false),
            )
            .build(pattern)
            .unwrap()
    }

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
        // Every byte alone, and sparse mixtures, in long values.
        for b in 0..=255_u8 {
            let mut one = ByteSet::default();
            one.insert(b);
            assert_eq!(ByteSet::of(&[b; 70]), one, "{b}");
        }
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..200 {
            let value: Vec<u8> = (0..100)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    // (A few dozen distinct bytes per value.)
                    ((state >> 16) % 256) as u8 & 0b1011_0111
                })
                .collect();
            let mut slow = ByteSet::default();
            for &b in &value {
                slow.insert(b);
            }
            assert_eq!(ByteSet::of(&value), slow);
        }
    }

    fn factored(pattern: &str) -> Option<Vec<String>> {
        let mut f: Vec<String> = factors(&parse(pattern)?)?
            .into_iter()
            .map(|s| String::from_utf8(s).unwrap())
            .collect();
        f.sort();
        Some(f)
    }

    #[test]
    fn factors_of_patterns() {
        let f = |p| factored(p);
        let v = |s: &[&str]| Some(s.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>());
        assert_eq!(f("(?i)union.*?select.*?from"), v(&["select"]));
        assert_eq!(f("abc|(?i)XyZ"), v(&["abc", "xyz"]));
        assert_eq!(f("(?:eval|new[ ]+func)\\("), v(&["eval", "func"]));
        assert_eq!(f("\\bwin(?:dows)?\\.ini"), v(&["win.ini", "windows.ini"]));
        assert_eq!(f("(?:abc)?def"), v(&["abcdef", "def"]));
        assert_eq!(f("a+bcd"), v(&["bcd"]));
        assert_eq!(f("ab"), None);
        assert_eq!(f("x*"), None);
        assert_eq!(f("(?:abc|d)"), None);
        assert_eq!(f("[a-z]+"), None);
    }

    #[test]
    fn a_factor_screen_passes_short_values_and_finds_strings_across_chunks() {
        let screen = FactorScreen::of("(?i)union.*?select").unwrap();
        assert!(screen.admits(b"short"));
        let plain = b"the quick brown fox ".repeat(200);
        assert!(!screen.admits(&plain));
        for at in [0, 1000, 1020, 1021, 1022, 1023, 1024, 2040, plain.len() - 6] {
            let mut v = plain.clone();
            v.splice(at..at + 6, b"SeLeCt".iter().copied());
            assert!(screen.admits(&v), "`select` at {at}");
        }
        assert!(FactorScreen::of("[a-z]+").is_none());
        let phrases = FactorScreen::of_phrases(
            ["java.lang.Runtime", "java.lang.Process", "javax.script"].into_iter(),
        )
        .unwrap();
        assert!(!phrases.admits(&plain));
        let mut v = plain.clone();
        v.extend_from_slice(b"JAVA.LANG.PROCESS");
        assert!(phrases.admits(&v));
        assert!(FactorScreen::of_phrases(["ab", "java.lang"].into_iter()).is_none());
        let cmdlets = FactorScreen::of_phrases(
            ["Get-ChildItem", "Invoke-Expression", "powershell", "ab/"].into_iter(),
        )
        .unwrap();
        assert!(!cmdlets.admits(&plain));
        for needle in [&b"x-y"[..], b"PowerShell", b"a/b"] {
            let mut v = plain.clone();
            v.extend_from_slice(needle);
            assert!(cmdlets.admits(&v), "{needle:?}");
        }
    }

    /// Every CRS pattern that has factors: each of its matches in CRS's own test payloads
    /// (every line of the test files, raw and URL-decoded) holds one of them, in any case.
    #[test]
    fn factors_hold_for_the_crs_patterns_on_crs_payloads() {
        let shared =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/crs");
        let mut patterns = Vec::new();
        for entry in std::fs::read_dir(shared.join("rules")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                let Some(at) = line.find("\"@rx ") else {
                    continue;
                };
                let rest = &line[at + 5..];
                let Some(end) = rest.rfind('"') else {
                    continue;
                };
                let pattern =
                    crate::operator::rewrite_hex_escapes(&rest[..end].replace("\\\"", "\""));
                if let Some(hir) = parse(&pattern)
                    && let Some(f) = factors(&hir)
                {
                    patterns.push((pattern, f));
                }
            }
        }
        assert!(
            patterns.len() > 100,
            "{} patterns with factors",
            patterns.len()
        );
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut stack = vec![shared.join("tests")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                for line in std::fs::read(&path).unwrap().split(|&b| b == b'\n') {
                    values.push(line.to_vec());
                    values.push(Transform::UrlDecodeUni.apply(line).into_owned());
                }
            }
        }
        let mut matched = 0;
        for (pattern, f) in &patterns {
            let re = byte_regex(pattern);
            let screen = FactorScreen::of(pattern).unwrap();
            for v in values.iter().filter(|v| re.is_match(v)) {
                matched += 1;
                let lower = v.to_ascii_lowercase();
                assert!(
                    f.iter()
                        .any(|s| lower.windows(s.len()).any(|w| w == s.as_slice())),
                    "{pattern} matches {:?} without any of its factors",
                    String::from_utf8_lossy(v)
                );
                // The screen lets the value through inside long text, wherever the chunks
                // of its search fall.
                let pad = [64, 500, 1000, 1019][matched % 4];
                let mut long = b"lorem ipsum ".repeat(120);
                long.truncate(pad);
                long.extend_from_slice(v);
                long.extend_from_slice(&b"dolor sit amet ".repeat(80));
                assert!(
                    !re.is_match(&long) || screen.admits(&long),
                    "the screen of {pattern} stops {:?} at {pad}",
                    String::from_utf8_lossy(v)
                );
            }
        }
        assert!(matched > 1_000, "{matched} matches");
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
            let re = byte_regex(p);
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
