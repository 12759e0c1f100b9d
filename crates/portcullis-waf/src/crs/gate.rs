//! Gates: what is known about a rule before a transaction reaches it, so that a rule which
//! cannot match is passed over without reading it.
//!
//! Three things are known at load time:
//! - which collections of the exchange a rule's first link reads: a link that reads only
//!   empty collections has no value to test, so it cannot match (negated or not);
//! - for a first link that reads only `TX` variables that no rule sets after the rule set's
//!   static start (see [`Prelude`](super::exec::Prelude)), its verdict: those variables hold,
//!   in every transaction that starts from the prelude, the values the prelude gave them.
//!   CRS's per-file paranoia-level checks (`TX:DETECTION_PARANOIA_LEVEL "@lt 2"`) and its
//!   score sums (`TX:BLOCKING_PARANOIA_LEVEL "@ge 1"`) are such links;
//! - for a grouped `@rx` over whole collections, the group and bit whose per-collection
//!   unions dismiss it.

use std::collections::HashSet;

use super::exec::MatchedVars;
use super::{Crs, Link, Op, Select, Source, Step};
use crate::variable::Collection;

/// What a phase step's rule needs to be worth evaluating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Evaluate it.
    Open,
    /// Its first link reads only the collections of these bits ([`bit`]): when the exchange
    /// has no item in any of them, the rule does not match.
    Reads(u64),
    /// As [`Gate::Reads`], and the link is a grouped, non-negated `@rx` over whole collections:
    /// when no item of them has the pattern's bit in the group's search, the rule does not
    /// match (the transaction's per-collection unions answer without reading the rule).
    Grouped {
        /// The collections ([`bit`]).
        reads: u64,
        /// The group.
        group: u32,
        /// The pattern's bit in the group's mask.
        bit: u16,
    },
    /// Its first link's verdict is fixed in a transaction that starts from the prelude: it
    /// does not match.
    Never,
    /// Its first link's verdict is fixed in a transaction that starts from the prelude: it
    /// matches, with the `MATCHED_VARS` at this index of [`Crs::fixed`]; its actions run and
    /// the rest of its chain is evaluated. (A link with `capture` is not fixed: its captures
    /// would have to be kept too.)
    Always(u32),
}

/// The bit of `XML`'s values in a [`Gate::Reads`] mask: a transaction has them only while
/// its body processor is XML.
pub(crate) const XML: u64 = 1 << 63;

/// A collection's bit in a [`Gate::Reads`] mask (each collection has its own: see the test).
pub(crate) fn bit(c: Collection) -> u64 {
    1 << (c as u32 % 63)
}

/// The collection of each bit ([`bit`]).
pub(crate) fn by_bit() -> [Option<Collection>; 64] {
    let mut out = [None; 64];
    for c in Collection::all() {
        if let Some(slot) = out.get_mut((c as u32 % 63) as usize) {
            *slot = Some(c);
        }
    }
    out
}

/// The bits of the collections of `ex` that hold at least one item.
pub(crate) fn filled(ex: &crate::Exchange) -> u64 {
    Collection::all()
        .filter(|c| !ex.items(*c).is_empty())
        .fold(0, |bits, c| bits | bit(c))
}

/// The `TX` variables some rule may set after the prelude.
struct Written {
    names: HashSet<String>,
    /// Literal starts of names built by macros (`tx.header_name_920450_%{tx.0}`).
    prefixes: Vec<String>,
    /// Whether some rule captures (sets `TX.0`-`TX.9`).
    captures: bool,
}

impl Written {
    fn of(crs: &Crs, resume: usize) -> Self {
        let mut written = Self {
            names: HashSet::new(),
            prefixes: Vec::new(),
            captures: false,
        };
        for (p, steps) in crs.phases.iter().enumerate() {
            for (i, step) in steps.iter().enumerate() {
                let Step::Rule(r) = step else { continue };
                // The prelude's own rules have run and do not run again.
                if p == 0 && i < resume {
                    continue;
                }
                let Some(rule) = crs.rules.get(*r) else {
                    continue;
                };
                for link in &rule.links {
                    written.captures |= link.capture;
                    for sv in &link.setvars {
                        let name = sv.name().to_ascii_lowercase();
                        match name.find("%{") {
                            Some(at) => written
                                .prefixes
                                .push(name.get(..at).unwrap_or_default().to_owned()),
                            None => {
                                written.names.insert(name);
                            }
                        }
                    }
                }
            }
        }
        written
    }

    /// Whether no rule after the prelude may set `name`.
    fn fixed(&self, name: &str) -> bool {
        let captured = name.len() == 1 && name.bytes().all(|b| b.is_ascii_digit());
        let set = (self.captures && captured)
            || self.names.contains(name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()));
        !set
    }
}

/// Whether `link`'s test depends only on `TX` variables that `written` says keep their
/// prelude values.
fn reads_fixed(link: &Link, written: &Written) -> bool {
    !link.always
        && !link.vars.is_empty()
        && link.vars.iter().all(|v| {
            matches!(v.source, Source::Tx)
                && v.excluded.is_empty()
                && matches!(&v.select, Select::Name(n) if written.fixed(n))
        })
        && match &link.op {
            Op::Macro {
                preset: Some(p), ..
            } => written.fixed(&p.tx),
            Op::Macro { .. } => false,
            Op::Static(_) | Op::DetectSqli | Op::DetectXss => true,
        }
}

/// The collections `link` reads, when it reads only collections of the exchange (and no
/// `&` count, which has a value even for an empty collection).
fn reads(link: &Link) -> Option<u64> {
    if link.always {
        return None;
    }
    link.vars.iter().try_fold(0, |bits, v| match v.source {
        _ if v.count => None,
        Source::Exchange(c) => Some(bits | bit(c)),
        // The same items as `REQUEST_URI`.
        Source::RequestUriRaw => Some(bits | bit(Collection::RequestUri)),
        Source::Empty => Some(bits),
        Source::Xml { .. } => Some(bits | XML),
        _ => None,
    })
}

/// The gates of every phase's steps, and the fixed `MATCHED_VARS` of [`Gate::Always`]. The
/// prelude must be set.
pub(crate) fn gates(crs: &Crs) -> ([Vec<Gate>; 5], Vec<MatchedVars>) {
    let resume = crs.prelude.as_ref().map_or(usize::MAX, |p| p.resume);
    let written = Written::of(crs, resume);
    // (The prelude's own steps never run in a transaction that starts from it.)
    let candidates: Vec<usize> = crs
        .phases
        .iter()
        .enumerate()
        .flat_map(|(p, steps)| steps.iter().skip(if p == 0 { resume } else { 0 }))
        .filter_map(|step| match step {
            Step::Rule(r) => Some(*r),
            Step::Marker(_) => None,
        })
        .filter(|r| {
            crs.rules
                .get(*r)
                .and_then(|rule| rule.links.first())
                .is_some_and(|link| reads_fixed(link, &written))
        })
        .collect();
    let verdicts = crs.verdicts(&candidates);
    let mut fixed = Vec::new();
    let gates = crs.phases.each_ref().map(|steps| {
        steps
            .iter()
            .map(|step| {
                let Step::Rule(r) = step else {
                    return Gate::Open;
                };
                let Some(rule) = crs.rules.get(*r) else {
                    return Gate::Open;
                };
                let Some(first) = rule.links.first() else {
                    return Gate::Open;
                };
                match verdicts.get(r) {
                    Some(None) => return Gate::Never,
                    Some(Some(matched)) if !first.capture => {
                        if let Ok(at) = u32::try_from(fixed.len()) {
                            fixed.push(matched.clone());
                            return Gate::Always(at);
                        }
                    }
                    _ => {}
                }
                // (Exclusions and named members only narrow a collection: a union over all
                // its items is a superset, which the link's own test then narrows.)
                match (reads(first), first.slot) {
                    (Some(reads), Some((group, bit))) if first.prefilter => {
                        Gate::Grouped { reads, group, bit }
                    }
                    (Some(reads), _) => Gate::Reads(reads),
                    (None, _) => Gate::Open,
                }
            })
            .collect()
    });
    (gates, fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_collection_has_its_own_bit() {
        let mut seen = 0_u64;
        let mut all: Vec<Collection> = Collection::all().collect();
        // (Some collections have two names.)
        all.sort_by_key(|c| *c as u32);
        all.dedup();
        for c in all {
            assert_eq!(seen & bit(c), 0, "{c:?}");
            assert_ne!(bit(c), XML, "{c:?}");
            assert_eq!(
                by_bit().get(bit(c).trailing_zeros() as usize),
                Some(&Some(c))
            );
            seen |= bit(c);
        }
    }
}
