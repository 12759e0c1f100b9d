//! Running a compiled rule set over one exchange: phases, `TX`, macros, chains, markers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex_automata::util::captures::Captures;

use super::{CRule, Crs, Ctl, Disruptive, EngineMode, Link, Op, Select, SetVar, Source, Step, Var};
use crate::operator::Operator;
use crate::request::Exchange;
use crate::transform::apply_all;
use crate::variable::Collection;

/// The most bytes a `TX` variable holds; longer values are cut.
const MAX_TX_VALUE: usize = 64 * 1024;
/// The most `TX` variables a transaction holds.
const MAX_TX_VARS: usize = 1024;

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrsMatch {
    /// The rule id.
    pub id: u32,
    /// The phase it ran in.
    pub phase: u8,
    /// Its message, macros expanded.
    pub msg: Option<String>,
    /// Whether the rule logs (`nolog` rules match silently).
    pub logged: bool,
}

/// What a transaction decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrsOutcome {
    /// The rules that matched, in order.
    pub matches: Vec<CrsMatch>,
    /// The status of a disruptive action, when the engine is on and one ran.
    pub status: Option<u16>,
}

/// One exchange going through a rule set.
pub struct Transaction<'a> {
    crs: &'a Crs,
    ex: &'a Exchange,
    remote_addr: String,
    tx: BTreeMap<String, Vec<u8>>,
    engine: EngineMode,
    removed_ids: Vec<(u32, u32)>,
    removed_tags: Vec<String>,
    removed_targets_by_id: Vec<(Vec<(u32, u32)>, Var)>,
    removed_targets_by_tag: Vec<(String, Var)>,
    body_processor: Option<String>,
    matched_var: Option<(String, Vec<u8>)>,
    matched_vars: Vec<(String, Vec<u8>)>,
    outcome: CrsOutcome,
    allowed: bool,
    cache: std::cell::RefCell<Cache>,
    /// Per (exchange item, pipeline): which patterns of the pipeline's group match.
    sets: std::cell::RefCell<
        std::collections::HashMap<
            (u32, u32, u32),
            regex_automata::PatternSet,
            foldhash::fast::RandomState,
        >,
    >,
}

/// Transformed values of one transaction, by (exchange item, pipeline): a value goes through
/// a pipeline once however many rules read it that way.
#[derive(Default)]
struct Cache {
    arena: Vec<u8>,
    /// `None`: the pipeline left the value unchanged.
    entries:
        std::collections::HashMap<(u32, u32), Option<(usize, usize)>, foldhash::fast::RandomState>,
}

/// A member of a collection: its name, its value and, for exchange items, the cache key.
type Member<'v> = (Cow<'v, str>, Cow<'v, [u8]>, Option<u32>);

/// One value a link reads.
struct Val<'v> {
    var: &'v Var,
    member: Cow<'v, str>,
    value: Cow<'v, [u8]>,
    /// The exchange item it came from, for the transformation cache.
    key: Option<u32>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Crs {
    /// Starts a transaction over `ex`, from client address `remote_addr`.
    pub fn transaction<'a>(&'a self, ex: &'a Exchange, remote_addr: &str) -> Transaction<'a> {
        Transaction {
            crs: self,
            ex,
            remote_addr: remote_addr.to_owned(),
            tx: BTreeMap::new(),
            engine: self.engine,
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets_by_id: Vec::new(),
            removed_targets_by_tag: Vec::new(),
            body_processor: body_processor_of(ex),
            matched_var: None,
            matched_vars: Vec::new(),
            outcome: CrsOutcome::default(),
            allowed: false,
            cache: std::cell::RefCell::new(Cache {
                arena: Vec::with_capacity(4096),
                entries: std::collections::HashMap::with_capacity_and_hasher(
                    256,
                    Default::default(),
                ),
            }),
            sets: std::cell::RefCell::new(std::collections::HashMap::with_capacity_and_hasher(
                256,
                Default::default(),
            )),
        }
    }

    /// Runs all four phases over `ex`, whose response has been set
    /// ([`Exchange::set_response`]).
    pub fn evaluate_exchange(&self, ex: &Exchange, remote_addr: &str) -> CrsOutcome {
        let mut t = self.transaction(ex, remote_addr);
        for phase in 1..=4 {
            t.run(phase);
        }
        t.finish()
    }

    /// Runs the request phases (1 and 2) over `ex`.
    pub fn evaluate_request(&self, ex: &Exchange, remote_addr: &str) -> CrsOutcome {
        let mut t = self.transaction(ex, remote_addr);
        t.run(1);
        t.run(2);
        t.finish()
    }
}

fn body_processor_of(ex: &Exchange) -> Option<String> {
    let ct = ex
        .items(Collection::RequestHeaders)
        .iter()
        .find(|i| i.name().eq_ignore_ascii_case("content-type"))
        .map(|i| String::from_utf8_lossy(i.value()).to_ascii_lowercase())?;
    let essence = ct.split(';').next().unwrap_or_default().trim().to_owned();
    if essence == "application/x-www-form-urlencoded" {
        Some("URLENCODED".into())
    } else if essence.starts_with("multipart/form-data") {
        Some("MULTIPART".into())
    } else if essence == "application/json" || essence.ends_with("+json") {
        Some("JSON".into())
    } else if essence == "application/xml"
        || essence == "text/xml"
        || essence.starts_with("application/soap+xml")
    {
        Some("XML".into())
    } else {
        None
    }
}

impl Transaction<'_> {
    /// Runs phase `phase` (1-4). Does nothing once a disruptive action has run.
    pub fn run(&mut self, phase: u8) {
        if self.outcome.status.is_some() || self.allowed {
            return;
        }
        let crs = self.crs;
        let Some(steps) = crs.phases.get(usize::from(phase.saturating_sub(1))) else {
            return;
        };
        let mut i = 0;
        while let Some(step) = steps.get(i) {
            i += 1;
            if self.engine == EngineMode::Off {
                return;
            }
            let Step::Rule(ri) = step else { continue };
            let Some(rule) = crs.rules.get(*ri) else {
                continue;
            };
            if self.is_removed(rule) || !self.eval_rule(rule) {
                continue;
            }
            let msg = rule.msg.as_deref().map(|m| self.expand(m, rule));
            self.outcome.matches.push(super::CrsMatch {
                id: rule.id,
                phase,
                msg,
                logged: rule.log,
            });
            let disruptive = match rule.disruptive {
                Disruptive::Block => crs
                    .block_means
                    .get(usize::from(phase.saturating_sub(1)))
                    .copied()
                    .unwrap_or(Disruptive::Pass),
                d => d,
            };
            if self.engine == EngineMode::On {
                match disruptive {
                    Disruptive::Deny | Disruptive::Drop => {
                        self.outcome.status = Some(rule.status.unwrap_or(403));
                        return;
                    }
                    Disruptive::Allow => {
                        self.allowed = true;
                        return;
                    }
                    Disruptive::Pass | Disruptive::Block => {}
                }
            }
            if let Some(marker) = &rule.skip_after {
                i = steps
                    .iter()
                    .skip(i)
                    .position(|s| matches!(s, Step::Marker(m) if m == marker))
                    .map_or(steps.len(), |p| i + p + 1);
            } else if rule.skip > 0 {
                let mut left = rule.skip;
                while left > 0 && i < steps.len() {
                    if matches!(steps.get(i), Some(Step::Rule(_))) {
                        left -= 1;
                    }
                    i += 1;
                }
            }
        }
    }

    /// The outcome so far.
    pub fn finish(self) -> CrsOutcome {
        self.outcome
    }

    /// A `TX` variable.
    pub fn tx(&self, name: &str) -> Option<&[u8]> {
        self.tx.get(&name.to_ascii_lowercase()).map(Vec::as_slice)
    }

    fn is_removed(&self, rule: &CRule) -> bool {
        self.removed_ids
            .iter()
            .any(|(a, b)| (*a..=*b).contains(&rule.id))
            || self.removed_tags.iter().any(|t| rule.tags.contains(t))
    }

    fn eval_rule(&mut self, rule: &CRule) -> bool {
        // Each link's actions run as soon as it matches, before the next link is tested (a
        // chained rule may read what its parent set, as CRS's 931130 does).
        for link in &rule.links {
            if !self.eval_link(rule, link) {
                return false;
            }
            for sv in &link.setvars {
                self.setvar(sv, rule);
            }
            for ctl in &link.ctls {
                self.ctl(ctl);
            }
        }
        true
    }

    fn eval_link(&mut self, rule: &CRule, link: &Link) -> bool {
        if link.always {
            return true;
        }
        let mut matched = Vec::new();
        let mut captured = None;
        self.for_each_value(rule, link, |val| {
            // MATCHED_VAR(S) hold the transformed value (a chained rule reads it as the
            // parent saw it).
            let (hit, caps, seen) = if link.multi_match {
                // `multiMatch`: the operator sees the value before and after each
                // transformation.
                let mut value = val.value.to_vec();
                let mut result = self.test(link, &value);
                for t in link.transforms.iter() {
                    if result.0 != link.negated {
                        break;
                    }
                    value = t.apply(&value).into_owned();
                    result = self.test(link, &value);
                }
                (result.0, result.1, Some(value))
            } else {
                self.with_transformed(&val, link, |value| {
                    let grouped = match (link.slot, val.key) {
                        (Some(slot), Some(key)) => self.group_hit(key, link.pipeline, slot, value),
                        _ => None,
                    };
                    let (hit, caps) = match grouped {
                        Some(false) => (false, None),
                        Some(true) if !link.capture => (true, None),
                        _ => self.test(link, value),
                    };
                    let keep = (hit != link.negated).then(|| value.to_vec());
                    (hit, caps, keep)
                })
            };
            if hit != link.negated {
                let name = if val.member.is_empty() {
                    val.var.name.to_string()
                } else if val.var.count {
                    format!("&{}", val.var.name)
                } else {
                    format!("{}:{}", val.var.name, val.member)
                };
                matched.push((name, seen.unwrap_or_default()));
                if caps.is_some() {
                    captured = caps;
                }
            }
        });
        if matched.is_empty() {
            return false;
        }
        if let Some(groups) = captured {
            for (group, text) in groups.into_iter().enumerate() {
                let key = group.to_string();
                match text {
                    Some(text) => self.set_tx(key, text),
                    None => {
                        self.tx.remove(&key);
                    }
                }
            }
        }
        self.matched_var = matched.last().cloned();
        self.matched_vars = matched;
        true
    }

    /// Whether pattern `slot` of `pipeline`'s group matches `value` (exchange item `key`),
    /// searching the value once for the whole group. `None` when the pipeline has no group.
    fn group_hit(&self, key: u32, pipeline: u32, slot: u32, value: &[u8]) -> Option<bool> {
        let chunk = slot as usize / super::GROUP_SIZE;
        let group = self
            .crs
            .groups
            .get(pipeline as usize)?
            .get(chunk)?
            .as_ref()?;
        let chunk_key = u32::try_from(chunk).ok()?;
        let mut sets = self.sets.borrow_mut();
        let set = sets.entry((key, pipeline, chunk_key)).or_insert_with(|| {
            let mut set = regex_automata::PatternSet::new(group.pattern_len());
            group.which_overlapping_matches(&regex_automata::Input::new(value), &mut set);
            set
        });
        let id = regex_automata::PatternID::new(slot as usize % super::GROUP_SIZE).ok()?;
        Some(set.contains(id))
    }

    /// Calls `f` with `val` through the link's pipeline, from the cache when the value is an
    /// exchange item.
    fn with_transformed<R>(&self, val: &Val<'_>, link: &Link, f: impl FnOnce(&[u8]) -> R) -> R {
        if link.transforms.is_empty() {
            return f(&val.value);
        }
        let Some(key) = val.key else {
            return f(&apply_all(&link.transforms, &val.value));
        };
        let mut cache = self.cache.borrow_mut();
        let entry = match cache.entries.get(&(key, link.pipeline)) {
            Some(e) => *e,
            None => {
                let out = apply_all(&link.transforms, &val.value);
                let e = match out {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(v) => {
                        let start = cache.arena.len();
                        cache.arena.extend_from_slice(&v);
                        Some((start, cache.arena.len()))
                    }
                };
                cache.entries.insert((key, link.pipeline), e);
                e
            }
        };
        match entry {
            None => {
                drop(cache);
                f(&val.value)
            }
            Some((a, b)) => {
                // `f` only tests the value: it never touches the cache.
                drop(cache);
                let cache = self.cache.borrow();
                f(cache.arena.get(a..b).unwrap_or_default())
            }
        }
    }

    /// Whether `value` passes the link's operator, with the capture groups when the link
    /// captures.
    fn test(&self, link: &Link, value: &[u8]) -> (bool, Option<Vec<Option<Vec<u8>>>>) {
        match &link.op {
            Op::Static(Operator::Rx(re)) if link.capture => {
                if !re.is_match(value) {
                    return (false, None);
                }
                let mut caps = Captures::all(re.group_info().clone());
                re.captures(value, &mut caps);
                if !caps.is_match() {
                    return (false, None);
                }
                let groups = (0..10)
                    .map(|g| {
                        caps.get_group(g)
                            .map(|span| value.get(span.range()).unwrap_or_default().to_vec())
                    })
                    .collect();
                (true, Some(groups))
            }
            Op::Static(op) => (op.matches(value), None),
            Op::Macro { name, param } => {
                let expanded = self.expand(param, &NO_RULE);
                (
                    Operator::compile(name, &expanded).is_ok_and(|op| op.matches(value)),
                    None,
                )
            }
            Op::DetectSqli => (
                guarded(|| {
                    libinjectionrs::SqliState::new(value, libinjectionrs::SqliFlags::FLAG_NONE)
                        .detect()
                }),
                None,
            ),
            Op::DetectXss => (
                guarded(|| libinjectionrs::detect_xss(value).is_injection()),
                None,
            ),
        }
    }

    /// Calls `f` with every value a link reads.
    fn for_each_value<'v>(&'v self, rule: &CRule, link: &'v Link, mut f: impl FnMut(Val<'v>)) {
        let mut removed: Vec<&Var> = Vec::new();
        if !self.removed_targets_by_id.is_empty() || !self.removed_targets_by_tag.is_empty() {
            removed.extend(
                self.removed_targets_by_id
                    .iter()
                    .filter(|(ids, _)| ids.iter().any(|(a, b)| (*a..=*b).contains(&rule.id)))
                    .map(|(_, v)| v),
            );
            removed.extend(
                self.removed_targets_by_tag
                    .iter()
                    .filter(|(tag, _)| rule.tags.contains(tag))
                    .map(|(_, v)| v),
            );
        }
        for var in &link.vars {
            let removed_here: Vec<&Select> = removed
                .iter()
                .filter(|x| x.name == var.name)
                .map(|x| &x.select)
                .collect();
            let keep = |member: &str| {
                var.select.selects(member)
                    && !var.excluded.iter().any(|x| x.selects(member))
                    && !removed_here.iter().any(|x| x.selects(member))
            };
            let mut count = 0_usize;
            self.for_each_member(var, |member, value, key| {
                if !keep(&member) {
                    return;
                }
                if var.count {
                    count += 1;
                } else {
                    f(Val {
                        var,
                        member,
                        value,
                        key,
                    });
                }
            });
            if var.count {
                f(Val {
                    var,
                    member: Cow::Borrowed("&"),
                    value: Cow::Owned(count.to_string().into_bytes()),
                    key: None,
                });
            }
        }
    }

    /// Calls `f` with every member of a variable's collection, unselected.
    fn for_each_member<'v>(
        &'v self,
        var: &Var,
        mut f: impl FnMut(Cow<'v, str>, Cow<'v, [u8]>, Option<u32>),
    ) {
        // A named TX variable: one lookup, not a scan of every TX variable.
        if let (Source::Tx, Select::Name(name)) = (&var.source, &var.select) {
            if let Some((k, v)) = self.tx.get_key_value(name.as_str()) {
                f(Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_slice()), None);
            }
            return;
        }
        if let Source::Exchange(c) = &var.source {
            // ModSecurity fills REQUEST_BODY for URL-encoded bodies and bodies no processor
            // parsed, not for JSON, XML or multipart ones.
            let skip_body = *c == Collection::RequestBody
                && matches!(
                    self.body_processor.as_deref(),
                    Some("JSON" | "XML" | "MULTIPART")
                );
            if !skip_body {
                let names = c.names_of().is_some();
                let base = self.ex.base_index(*c);
                let single = single_valued(*c);
                for (n, i) in self.ex.items(*c).iter().enumerate() {
                    let value = if names {
                        i.name().as_bytes()
                    } else {
                        i.value()
                    };
                    let member = if single { "" } else { i.name() };
                    let key = u32::try_from((base + n) * 2 + usize::from(names)).ok();
                    f(Cow::Borrowed(member), Cow::Borrowed(value), key);
                }
            }
            return;
        }
        for (member, value, key) in self.members(var) {
            f(member, value, key);
        }
    }

    /// Every member of a collection that is not an exchange item, unselected.
    fn members<'v>(&'v self, var: &Var) -> Vec<Member<'v>> {
        let one = |v: Vec<u8>| vec![(Cow::Borrowed(""), Cow::Owned(v), None)];
        match &var.source {
            // Exchange items are visited in place by `for_each_member`.
            Source::Exchange(_) => Vec::new(),
            Source::Tx => self
                .tx
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_slice()), None))
                .collect(),
            Source::MatchedVar => self
                .matched_var
                .iter()
                .map(|(_, v)| (Cow::Borrowed(""), Cow::Borrowed(v.as_slice()), None))
                .collect(),
            Source::MatchedVarName => self
                .matched_var
                .iter()
                .map(|(n, _)| (Cow::Borrowed(""), Cow::Borrowed(n.as_bytes()), None))
                .collect(),
            Source::MatchedVars => self
                .matched_vars
                .iter()
                .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_slice()), None))
                .collect(),
            Source::MatchedVarsNames => self
                .matched_vars
                .iter()
                .map(|(n, _)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(n.as_bytes()), None))
                .collect(),
            Source::RequestUriRaw => self
                .ex
                .items(Collection::RequestUri)
                .iter()
                .map(|i| (Cow::Borrowed(""), Cow::Borrowed(i.value()), None))
                .collect(),
            Source::RemoteAddr => one(self.remote_addr.clone().into_bytes()),
            Source::UniqueId => one(b"portcullis".to_vec()),
            Source::RequestBodyLength => one(self
                .ex
                .items(Collection::RequestBody)
                .first()
                .map_or(0, |i| i.value().len())
                .to_string()
                .into_bytes()),
            Source::FilesCombinedSize => one(b"0".to_vec()),
            Source::ArgsCombinedSize => one(self
                .ex
                .items(Collection::Args)
                .iter()
                .map(|i| i.name().len() + i.value().len())
                .sum::<usize>()
                .to_string()
                .into_bytes()),
            Source::ReqbodyProcessor => self
                .body_processor
                .iter()
                .map(|p| (Cow::Borrowed(""), Cow::Borrowed(p.as_bytes()), None))
                .collect(),
            Source::Xml { attributes } => {
                if self.body_processor.as_deref() != Some("XML") {
                    return Vec::new();
                }
                let body = self
                    .ex
                    .items(Collection::RequestBody)
                    .first()
                    .map_or(&b""[..], |i| i.value());
                xml_values(body, *attributes)
                    .into_iter()
                    .map(|v| (Cow::Borrowed(""), Cow::Owned(v), None))
                    .collect()
            }
            Source::Empty => Vec::new(),
        }
    }

    fn set_tx(&mut self, name: String, mut value: Vec<u8>) {
        value.truncate(MAX_TX_VALUE);
        if self.tx.len() >= MAX_TX_VARS && !self.tx.contains_key(&name) {
            return;
        }
        self.tx.insert(name, value);
    }

    fn setvar(&mut self, sv: &SetVar, rule: &CRule) {
        let int = |t: &Self, name: &str| -> i64 {
            t.tx.get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        match sv {
            SetVar::Set(name, value) => {
                let name = self.expand(name, rule).to_ascii_lowercase();
                let value = self.expand(value, rule).into_bytes();
                self.set_tx(name, value);
            }
            SetVar::Add(name, value) | SetVar::Sub(name, value) => {
                let name = self.expand(name, rule).to_ascii_lowercase();
                let delta: i64 = self.expand(value, rule).trim().parse().unwrap_or(0);
                let now = int(self, &name);
                let next = if matches!(sv, SetVar::Add(..)) {
                    now.saturating_add(delta)
                } else {
                    now.saturating_sub(delta)
                };
                self.set_tx(name, next.to_string().into_bytes());
            }
            SetVar::Delete(name) => {
                let name = self.expand(name, rule).to_ascii_lowercase();
                self.tx.remove(&name);
            }
        }
    }

    fn ctl(&mut self, ctl: &Ctl) {
        match ctl {
            Ctl::RuleEngine(mode) => self.engine = *mode,
            Ctl::RemoveById(ids) => self.removed_ids.extend(ids.iter().copied()),
            Ctl::RemoveByTag(tag) => self.removed_tags.push(tag.clone()),
            Ctl::RemoveTargetById(ids, var) => {
                self.removed_targets_by_id.push((ids.clone(), var.clone()));
            }
            Ctl::RemoveTargetByTag(tag, var) => {
                self.removed_targets_by_tag.push((tag.clone(), var.clone()));
            }
            Ctl::RequestBodyProcessor(p) => self.body_processor = Some(p.clone()),
            Ctl::ForceRequestBodyVariable | Ctl::Ignored => {}
        }
    }

    /// Expands `%{...}` macros.
    fn expand(&self, text: &str, rule: &CRule) -> String {
        if !text.contains("%{") {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            out.push_str(rest.get(..start).unwrap_or_default());
            let after = rest.get(start + 2..).unwrap_or_default();
            let Some(end) = after.find('}') else {
                out.push_str(rest.get(start..).unwrap_or_default());
                return out;
            };
            let name = after.get(..end).unwrap_or_default().to_ascii_lowercase();
            out.push_str(&self.macro_value(&name, rule));
            rest = after.get(end + 1..).unwrap_or_default();
        }
        out.push_str(rest);
        out
    }

    fn macro_value(&self, name: &str, rule: &CRule) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if let Some(var) = name.strip_prefix("tx.") {
            return self.tx.get(var).map(|v| text(v)).unwrap_or_default();
        }
        match name {
            "matched_var" => self
                .matched_var
                .as_ref()
                .map(|(_, v)| text(v))
                .unwrap_or_default(),
            "matched_var_name" => self
                .matched_var
                .as_ref()
                .map(|(n, _)| n.clone())
                .unwrap_or_default(),
            "rule.id" => rule.id.to_string(),
            "rule.msg" => rule.msg.clone().unwrap_or_default(),
            "remote_addr" => self.remote_addr.clone(),
            "unique_id" => "portcullis".into(),
            "reqbody_error_msg" => self
                .ex
                .body_error()
                .map(ToString::to_string)
                .unwrap_or_default(),
            "request_line" => self
                .ex
                .items(Collection::RequestLine)
                .first()
                .map(|i| text(i.value()))
                .unwrap_or_default(),
            other => {
                let collection_member = |prefix: &str, c: Collection| {
                    other.strip_prefix(prefix).and_then(|member| {
                        self.ex
                            .items(c)
                            .iter()
                            .find(|i| i.name().eq_ignore_ascii_case(member))
                            .map(|i| text(i.value()))
                    })
                };
                collection_member("request_headers.", Collection::RequestHeaders)
                    .or_else(|| collection_member("args.", Collection::Args))
                    .unwrap_or_default()
            }
        }
    }
}

/// A rule with no id, for macros expanded outside a rule's own actions.
static NO_RULE: std::sync::LazyLock<CRule> = std::sync::LazyLock::new(|| CRule {
    id: 0,
    phase: 0,
    origin: crate::seclang::Origin {
        file: "".into(),
        line: 0,
    },
    msg: None,
    tags: Vec::new(),
    log: false,
    disruptive: Disruptive::Pass,
    status: None,
    skip_after: None,
    skip: 0,
    links: Vec::new(),
});

fn single_valued(c: Collection) -> bool {
    !matches!(
        c,
        Collection::Args
            | Collection::ArgsGet
            | Collection::ArgsPost
            | Collection::ArgsNames
            | Collection::ArgsGetNames
            | Collection::ArgsPostNames
            | Collection::RequestHeaders
            | Collection::RequestHeadersNames
            | Collection::RequestCookies
            | Collection::RequestCookiesNames
            | Collection::Files
            | Collection::FilesNames
            | Collection::Prompt
            | Collection::ResponseHeaders
            | Collection::ResponseHeadersNames
    )
}

/// Runs a third-party detector; if it panics on some input, the input counts as an attack
/// (fail closed) rather than taking the process down.
fn guarded(f: impl FnOnce() -> bool + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).unwrap_or(true)
}

/// The text content (or, with `attributes`, the attribute values) of an XML document, by a
/// tolerant scan: enough for rules that look for attack text in XML bodies. Bounded by the
/// body, which is bounded by the inspection limit.
fn xml_values(body: &[u8], attributes: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let Some(open) = body.iter().skip(i).position(|b| *b == b'<').map(|p| i + p) else {
            if !attributes {
                push_text(&mut out, body.get(i..).unwrap_or_default());
            }
            break;
        };
        if !attributes {
            push_text(&mut out, body.get(i..open).unwrap_or_default());
        }
        let close = body
            .iter()
            .skip(open)
            .position(|b| *b == b'>')
            .map_or(body.len(), |p| open + p);
        if attributes {
            let tag = body.get(open..close).unwrap_or_default();
            let mut rest = tag;
            while let Some(q) = rest.iter().position(|b| *b == b'"' || *b == b'\'') {
                let quote = rest.get(q).copied().unwrap_or(b'"');
                let after = rest.get(q + 1..).unwrap_or_default();
                let Some(end) = after.iter().position(|b| *b == quote) else {
                    break;
                };
                out.push(after.get(..end).unwrap_or_default().to_vec());
                rest = after.get(end + 1..).unwrap_or_default();
            }
        }
        i = close + 1;
    }
    out
}

fn push_text(out: &mut Vec<Vec<u8>>, text: &[u8]) {
    if text.iter().any(|b| !b.is_ascii_whitespace()) {
        out.push(text.to_vec());
    }
}
