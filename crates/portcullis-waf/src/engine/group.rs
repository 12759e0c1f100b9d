//! Regex rules that read the same targets through the same pipeline, matched together.
//!
//! A group holds two automata over the same patterns. The first answers only whether any
//! member matches, in leftmost-first mode, where the regex engine can use a literal prefilter
//! and stop at the first match: this is the whole cost for the common, benign value. Only when
//! it matches does the second, in overlapping mode (`MatchKind::All`), say which members
//! matched. An attack pays for two passes; everything else for one.

use regex_automata::meta::Regex;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::variable::Targets;

/// A compiled group.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) targets: Targets,
    pub(super) pipeline_id: u32,
    /// Pattern id → rule index in the rule set.
    pub(super) rules: Vec<usize>,
    any: Regex,
    which: Regex,
}

impl Group {
    /// Builds the group from its members' rule indices and regex sources (hex escapes already
    /// rewritten for byte mode).
    ///
    /// `None` when the combination does not fit in one automaton: the caller then runs the
    /// members one by one.
    pub(super) fn build(
        targets: Targets,
        pipeline_id: u32,
        rules: Vec<usize>,
        sources: &[String],
    ) -> Option<Self> {
        let syntax = syntax::Config::new().utf8(false).unicode(false);
        let any = Regex::builder().syntax(syntax).build_many(sources).ok()?;
        let which = Regex::builder()
            .configure(Regex::config().match_kind(MatchKind::All))
            .syntax(syntax)
            .build_many(sources)
            .ok()?;
        Some(Self {
            targets,
            pipeline_id,
            rules,
            any,
            which,
        })
    }

    /// How many members the group has.
    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Calls `hit` with the rule index of every member that matches `value`, each once.
    pub(super) fn scan(&self, value: &[u8], set: &mut PatternSet, mut hit: impl FnMut(usize)) {
        let input = Input::new(value);
        if !self.any.is_match(input.clone()) {
            return;
        }
        set.clear();
        self.which.which_overlapping_matches(&input, set);
        for pid in set.iter() {
            if let Some(&rule) = self.rules.get(pid.as_usize()) {
                hit(rule);
            }
        }
    }
}

/// How a regex rule is best searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Every match starts with a literal whose first byte is rare in text (punctuation, a
    /// control byte, a non-ASCII byte): alone, with its own prefilter, it costs next to nothing
    /// on benign values.
    Alone,
    /// It starts with common words: cheap alone only when few such rules share the targets
    /// and pipeline, otherwise one union automaton pass for all of them is cheaper.
    Words,
    /// No literal prefix at all: in a union, it costs no more than it would alone.
    Union,
}

/// Classifies the regex `source` (hex escapes already rewritten).
///
/// In a union, the members' literals are merged, and a merged set is usually too large or too
/// common for a prefilter, so the union runs its automaton over every byte. That is the right
/// price for rules that would do so anyway, or for many rules whose literals are words; rules
/// with rare literals are kept apart.
pub(super) fn plan(source: &str) -> Plan {
    let config = syntax::Config::new().utf8(false).unicode(false);
    let Ok(hir) = regex_automata::util::syntax::parse_with(source, &config) else {
        return Plan::Union;
    };
    if Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, &hir).is_none() {
        return Plan::Union;
    }
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    let rare = seq.literals().is_some_and(|lits| {
        !lits.is_empty()
            && lits.iter().all(|l| {
                l.as_bytes()
                    .first()
                    .is_some_and(|&b| !(b.is_ascii_alphanumeric() || b.is_ascii_whitespace()))
            })
    });
    if rare { Plan::Alone } else { Plan::Words }
}
