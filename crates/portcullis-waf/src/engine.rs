//! The rule engine: a compiled rule set and its evaluation over an [`Exchange`].
//!
//! Compilation interns transformation pipelines (a value is transformed once per pipeline;
//! results are cached per exchange) and plans how each regex rule is searched. A rule whose
//! every match starts with a rare literal (punctuation, a control or non-ASCII byte) is
//! searched alone, where its literal prefilter skips benign text almost for free. Rules with no
//! literal prefix, and rules starting with common words when enough of them share targets and
//! pipeline, are gathered into one multi-pattern `meta::Regex` per (targets, pipeline): one
//! automaton pass answers for all of them (see [`group`]).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use portcullis_core::ConfigError;

use self::group::Group;
use crate::request::Exchange;
use crate::rule::{Link, Phase, Rule, RuleAction, Severity};
use crate::transform::Transform;
use crate::variable::Targets;

/// One rule's match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule id.
    pub id: u32,
    /// The rule's message.
    pub msg: Arc<str>,
    /// Where it matched (`ARGS:q`, `PROMPT:messages.1.content`).
    pub variable: String,
    /// The score it adds (0 for `log` rules).
    pub score: u32,
    /// The rule's action.
    pub action: RuleAction,
    /// The rule's severity.
    pub severity: Severity,
}

/// The matches of one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// The matched rules, in rule-set order of evaluation.
    pub matches: Vec<RuleMatch>,
    /// The summed anomaly score.
    pub score: u32,
    /// Whether a `block` rule matched.
    pub block_rule: bool,
}

#[derive(Debug)]
enum Step {
    Single(usize),
    Group(Group),
}

/// A compiled rule set.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    pipelines: Vec<Arc<[Transform]>>,
    request: Vec<Step>,
    response: Vec<Step>,
    groups: usize,
    /// The most patterns in one group: one pattern set of this size serves every group.
    widest: usize,
}

fn intern(pipelines: &mut Vec<Arc<[Transform]>>, link: &mut Link) {
    let id = match pipelines.iter().position(|p| **p == *link.pipeline) {
        Some(i) => i,
        None => {
            pipelines.push(link.pipeline.clone());
            pipelines.len() - 1
        }
    };
    link.pipeline_id = u32::try_from(id).unwrap_or(u32::MAX);
}

impl RuleSet {
    /// Builds a rule set from compiled rules, keeping those at or below `paranoia`.
    ///
    /// # Errors
    ///
    /// Two rules with the same id.
    pub fn new(rules: impl IntoIterator<Item = Rule>, paranoia: u8) -> Result<Self, ConfigError> {
        let mut kept: Vec<Rule> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rule in rules {
            if !seen.insert(rule.id) {
                return Err(ConfigError::new(
                    format!("rules[id={}]", rule.id),
                    "the id is used twice",
                    "give every rule a unique id",
                ));
            }
            if rule.paranoia <= paranoia {
                kept.push(rule);
            }
        }
        let mut pipelines = vec![Arc::<[Transform]>::from(Vec::new())];
        for rule in &mut kept {
            intern(&mut pipelines, &mut rule.first);
            for link in &mut rule.chain {
                intern(&mut pipelines, link);
            }
        }
        let (request, g1) = plan(&kept, Phase::Request);
        let (response, g2) = plan(&kept, Phase::Response);
        let widest = request
            .iter()
            .chain(&response)
            .map(|s| match s {
                Step::Group(g) => g.len(),
                Step::Single(_) => 0,
            })
            .max()
            .unwrap_or(0);
        Ok(Self {
            rules: kept,
            pipelines,
            request,
            response,
            groups: g1 + g2,
            widest,
        })
    }

    /// The rules in the set.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many multi-pattern groups the regex rules were gathered into.
    pub fn group_count(&self) -> usize {
        self.groups
    }

    /// Whether the set has rules for `phase`.
    pub fn has_phase(&self, phase: Phase) -> bool {
        !self.steps(phase).is_empty()
    }

    fn steps(&self, phase: Phase) -> &[Step] {
        match phase {
            Phase::Request => &self.request,
            Phase::Response => &self.response,
        }
    }

    /// Evaluates the rules of `phase` over `exchange`.
    pub fn evaluate(&self, exchange: &Exchange, phase: Phase) -> Evaluation {
        let mut eval = Evaluation::default();
        let mut cache = Cache::default();
        let mut matched = vec![false; self.rules.len()];
        let mut set = regex_automata::PatternSet::new(self.widest);
        for step in self.steps(phase) {
            match step {
                Step::Single(i) => {
                    let Some(rule) = self.rules.get(*i) else {
                        continue;
                    };
                    let mut hit = None;
                    visit(&rule.first.targets, exchange, |v| {
                        let first = {
                            let value =
                                cache.get(&self.pipelines, rule.first.pipeline_id, v.key, v.raw);
                            rule.first.condition.matches(value)
                        };
                        if first && self.chain_holds(rule, exchange, &mut cache) {
                            hit = Some(v.label());
                            return false;
                        }
                        true
                    });
                    if let Some(variable) = hit {
                        record(&mut eval, rule, variable);
                    }
                }
                Step::Group(g) => {
                    let mut hits: Vec<(usize, String)> = Vec::new();
                    visit(&g.targets, exchange, |v| {
                        let value = cache.get(&self.pipelines, g.pipeline_id, v.key, v.raw);
                        g.scan(value, &mut set, |ri| {
                            if let Some(slot) = matched.get_mut(ri).filter(|s| !**s) {
                                *slot = true;
                                hits.push((ri, v.label()));
                            }
                        });
                        true
                    });
                    for (ri, variable) in hits {
                        let Some(rule) = self.rules.get(ri) else {
                            continue;
                        };
                        if rule.chain.is_empty() || self.chain_holds(rule, exchange, &mut cache) {
                            record(&mut eval, rule, variable);
                        }
                    }
                }
            }
        }
        eval
    }

    fn chain_holds(&self, rule: &Rule, exchange: &Exchange, cache: &mut Cache) -> bool {
        rule.chain.iter().all(|link| {
            let mut ok = false;
            visit(&link.targets, exchange, |v| {
                let value = cache.get(&self.pipelines, link.pipeline_id, v.key, v.raw);
                ok = link.condition.matches(value);
                !ok
            });
            ok
        })
    }
}

fn record(eval: &mut Evaluation, rule: &Rule, variable: String) {
    let score = if rule.action == RuleAction::Log {
        0
    } else {
        rule.score
    };
    eval.score = eval.score.saturating_add(score);
    eval.block_rule |= rule.action == RuleAction::Block;
    eval.matches.push(RuleMatch {
        id: rule.id,
        msg: rule.msg.clone(),
        variable,
        score,
        action: rule.action,
        severity: rule.severity,
    });
}

/// Rules starting with common words that justify one union pass (see [`group::Plan`]).
const WORD_UNION_MIN: usize = 6;

fn plan(rules: &[Rule], phase: Phase) -> (Vec<Step>, usize) {
    let mut steps = Vec::new();
    let mut keyed: HashMap<(String, u32), Vec<(usize, group::Plan)>> = HashMap::new();
    let mut order: Vec<(String, u32)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.phase != phase {
            continue;
        }
        let how = match rule.first.rx_source.as_deref() {
            Some(source) if !rule.first.targets.included().iter().any(|t| t.count) => {
                group::plan(&crate::operator::rewrite_hex_escapes(source))
            }
            _ => group::Plan::Alone,
        };
        if how == group::Plan::Alone {
            steps.push(Step::Single(i));
            continue;
        }
        let key = (rule.first.targets.canonical(), rule.first.pipeline_id);
        let entry = keyed.entry(key.clone()).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push((i, how));
    }
    let mut groups = 0;
    for key in order {
        let Some(planned) = keyed.remove(&key) else {
            continue;
        };
        let words = planned
            .iter()
            .filter(|(_, how)| *how == group::Plan::Words)
            .count();
        let mut members = Vec::new();
        for (i, how) in planned {
            if how == group::Plan::Words && words < WORD_UNION_MIN {
                steps.push(Step::Single(i));
            } else {
                members.push(i);
            }
        }
        if members.len() <= 1 {
            steps.extend(members.into_iter().map(Step::Single));
            continue;
        }
        let Some(first) = members.first().and_then(|&i| rules.get(i)) else {
            continue;
        };
        let sources: Vec<String> = members
            .iter()
            .filter_map(|&i| rules.get(i))
            .filter_map(|r| r.first.rx_source.as_deref())
            .map(crate::operator::rewrite_hex_escapes)
            .collect();
        let built = (sources.len() == members.len())
            .then(|| {
                Group::build(
                    first.first.targets.clone(),
                    first.first.pipeline_id,
                    members.clone(),
                    &sources,
                )
            })
            .flatten();
        match built {
            Some(group) => {
                groups += 1;
                steps.push(Step::Group(group));
            }
            // A combination too large for one automaton: run its members one by one.
            _ => steps.extend(members.into_iter().map(Step::Single)),
        }
    }
    (steps, groups)
}

/// One value offered to a rule.
struct Value<'a> {
    /// The cache key: the item's position and whether its name is the value.
    key: Option<u32>,
    raw: &'a [u8],
    collection: &'static str,
    name: &'a str,
}

impl Value<'_> {
    fn label(&self) -> String {
        if self.name.is_empty() {
            self.collection.to_owned()
        } else {
            format!("{}:{}", self.collection, self.name)
        }
    }
}

/// Calls `f` with every value the targets select, until `f` returns `false`.
fn visit(targets: &Targets, ex: &Exchange, mut f: impl FnMut(Value<'_>) -> bool) {
    for t in targets.included() {
        let items = ex.items(t.collection);
        let names = t.collection.names_of().is_some();
        if t.count {
            let n = items
                .iter()
                .filter(|i| {
                    t.selector.selects(i.name()) && !targets.is_excluded(t.collection, i.name())
                })
                .count();
            let text = n.to_string();
            if !f(Value {
                key: None,
                raw: text.as_bytes(),
                collection: t.collection.name(),
                name: "",
            }) {
                return;
            }
            continue;
        }
        let base = ex.base_index(t.collection);
        for (i, item) in items.iter().enumerate() {
            if !t.selector.selects(item.name()) || targets.is_excluded(t.collection, item.name()) {
                continue;
            }
            let key = u32::try_from((base + i) * 2 + usize::from(names)).ok();
            let raw = if names {
                item.name().as_bytes()
            } else {
                item.value()
            };
            let go_on = f(Value {
                key,
                raw,
                collection: t.collection.name(),
                name: item.name(),
            });
            if !go_on {
                return;
            }
        }
    }
}

/// Transformed values of one exchange, each computed once per pipeline.
#[derive(Default)]
struct Cache {
    arena: Vec<u8>,
    /// `None`: the pipeline left the value unchanged.
    entries: HashMap<(u32, u32), Option<Range<usize>>, foldhash::fast::RandomState>,
}

impl Cache {
    fn get<'a>(
        &'a mut self,
        pipelines: &[Arc<[Transform]>],
        pipeline: u32,
        key: Option<u32>,
        raw: &'a [u8],
    ) -> &'a [u8] {
        let Some(transforms) = pipelines.get(pipeline as usize).filter(|p| !p.is_empty()) else {
            return raw;
        };
        let Some(key) = key else {
            // Counts are computed on the spot and never cached; transform into the arena.
            let start = self.arena.len();
            let out = crate::transform::apply_all(transforms, raw);
            self.arena.extend_from_slice(&out);
            return self.arena.get(start..).unwrap_or_default();
        };
        let entry = match self.entries.get(&(key, pipeline)) {
            Some(e) => e.clone(),
            None => {
                let out = crate::transform::apply_all(transforms, raw);
                let e = match out {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(v) => {
                        let start = self.arena.len();
                        self.arena.extend_from_slice(&v);
                        Some(start..self.arena.len())
                    }
                };
                self.entries.insert((key, pipeline), e.clone());
                e
            }
        };
        match entry {
            None => raw,
            Some(r) => self.arena.get(r).unwrap_or_default(),
        }
    }
}

mod group;
#[cfg(test)]
mod tests;
