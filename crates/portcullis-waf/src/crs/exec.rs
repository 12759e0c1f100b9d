//! Running a compiled rule set over one exchange: phases, `TX`, macros, chains, markers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use regex_automata::util::captures::Captures;

use super::gate::{self, Gate};
use super::needs::ByteSet;
use super::{CRule, Crs, Ctl, Disruptive, EngineMode, Link, Op, Select, SetVar, Source, Step, Var};
use crate::operator::Operator;
use crate::request::Exchange;
use crate::transform::{Transform, apply_all};
use crate::variable::Collection;

/// The hasher of the transaction's maps (`TX` names, value spans): SipHash costs more than
/// the lookups it serves; foldhash is seeded per process.
type TxHash = foldhash::fast::RandomState;

/// A `TX` variable's value: most are short (numbers, flags, names), held inline, so a
/// transaction starting from the prelude's variables copies them without allocating.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TxValue(smallvec::SmallVec<[u8; 24]>);

impl TxValue {
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        Self(smallvec::SmallVec::from_slice(bytes))
    }
}

impl Clone for TxValue {
    /// (A copy of the bytes: `SmallVec`'s own clone pushes them one at a time.)
    fn clone(&self) -> Self {
        Self::from_slice(&self.0)
    }

    fn clone_from(&mut self, source: &Self) {
        self.0.clear();
        self.0.extend_from_slice(&source.0);
    }
}

impl std::ops::Deref for TxValue {
    type Target = smallvec::SmallVec<[u8; 24]>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TxValue {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The most bytes a `TX` variable holds; longer values are cut.
const MAX_TX_VALUE: usize = 64 * 1024;
/// The most `TX` variables a transaction holds.
const MAX_TX_VARS: usize = 1024;

/// `MATCHED_VARS`: each matched variable's name and (transformed) value, in order.
pub(crate) type MatchedVars = Vec<(String, Vec<u8>)>;

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
    pub(super) state: Suspended,
    matched_vars: Vec<(String, Vec<u8>)>,
    /// When the last link to match was decided at load ([`Gate::Always`]) and ran no
    /// `setvar`: its matched variables, as the rule set holds them (`matched_vars` is then
    /// empty and unused), so a fixed match copies nothing.
    fixed_vars: Option<u32>,
    memo: std::cell::RefCell<Pooled>,
    /// The collections of the exchange that hold items ([`gate::bit`]).
    filled: u64,
    /// Whether phase 1 may start from the rule set's [`Prelude`] (a new transaction).
    pub(super) fresh: bool,
    /// Buffers for `setvar`'s expanded name and value.
    scratch: (String, String),
}

/// The start of phase 1 worked out once at load time: the rules there that read only `TX`
/// (CRS's initialisation: defaults, paranoia levels, score counters) decide the same way for
/// every exchange, since every transaction starts with an empty `TX`. A transaction starts
/// from their outcome and runs the rest.
#[derive(Debug, Clone)]
pub(crate) struct Prelude {
    tx: HashMap<Arc<str>, TxValue, TxHash>,
    pub(super) outcome: CrsOutcome,
    allowed: bool,
    matched_vars: Vec<(String, Vec<u8>)>,
    /// The first step of phase 1 not decided by the prelude.
    pub(super) resume: usize,
}

impl Prelude {
    /// The operator `name` built from the value the prelude leaves in the `TX` variable that
    /// `param` is made of (`%{tx.NAME}` and nothing else), when it has one and it builds.
    pub(crate) fn preset(&self, name: &str, param: &str) -> Option<super::Preset> {
        let var = param.strip_prefix("%{")?.strip_suffix('}')?;
        let var = var
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("tx."))
            .and_then(|_| var.get(3..))?;
        if var.contains(['%', '{', '}']) {
            return None;
        }
        let var = var.to_ascii_lowercase();
        let value = self.tx.get(var.as_str())?;
        let op = Operator::compile(name, std::str::from_utf8(value).ok()?).ok()?;
        Some(super::Preset {
            tx: var,
            value: value.to_vec(),
            op,
        })
    }
}

/// Whether `rule` decides the same way for every exchange when it runs at the start of
/// phase 1: it reads only `TX`, its macros name only `TX` and the rule's own match, and it
/// has no `ctl` (its `setvar`s and disruptive action then follow from `TX` alone).
pub(crate) fn is_static(rule: &CRule) -> bool {
    reads_static(rule) && rule_static(rule)
}

/// Whether the test of `rule`'s first link depends on `TX` alone.
fn reads_static(rule: &CRule) -> bool {
    rule.links.first().is_some_and(link_reads_static)
}

/// Whether `link`'s test depends on `TX` alone: its variables and its operator's macros.
fn link_reads_static(link: &Link) -> bool {
    link.vars.iter().all(|v| matches!(v.source, Source::Tx))
        && match &link.op {
            Op::Macro { param, .. } => macros_static(param),
            _ => true,
        }
}

/// Whether `text`'s macros name only `TX` and the rule's own match.
fn macros_static(text: &str) -> bool {
    pieces(text).iter().flatten().all(|piece| match piece {
        Piece::Text(_) | Piece::Tx(_) => true,
        Piece::Macro(name) => ["matched_var", "matched_var_name", "rule.id", "rule.msg"]
            .iter()
            .any(|known| name.eq_ignore_ascii_case(known)),
    })
}

/// Whether every link of `rule` and its message depend on `TX` alone, and it has no `ctl`.
fn rule_static(rule: &CRule) -> bool {
    rule.msg.as_deref().is_none_or(macros_static)
        && rule.links.iter().all(|link| {
            link.ctls.is_empty()
                && link_reads_static(link)
                && link.setvars.iter().all(|sv| match sv {
                    SetVar::Set(name, value)
                    | SetVar::Add(name, value)
                    | SetVar::Sub(name, value) => macros_static(name) && macros_static(value),
                    SetVar::Delete(name) => macros_static(name),
                })
        })
}

/// What a transaction has worked out about the exchange's items, by item key (`2 × item +
/// 1 for its name`): each value goes through a pipeline once, and is searched by a group once,
/// however many rules read it.
struct Memo {
    /// Transformed values.
    arena: Vec<u8>,
    /// Per (key, pipeline): the transformed value's span in `arena`, [`UNSET`] until
    /// computed, [`SAME`] when the pipeline leaves the value as it is.
    spans: Vec<(u32, u32)>,
    /// Per key: its row in `spans` and `masks`, once it has one ([`NO_ROW`] until then):
    /// most items are read by few pipelines and groups, so rows are made when first used.
    rows: Vec<u32>,
    /// Per (key, group): [`DONE`] and the mask of the group's patterns that match.
    masks: Vec<u32>,
    /// Per (collection, group): [`DONE`] and the union of the masks of its items.
    unions: Vec<u32>,
    /// The slots of `unions` set by this transaction: the next one zeroes those alone (the
    /// table is zero elsewhere), not the whole table.
    unions_set: Vec<u32>,
    /// Per group: the collections (gate bits) its gates last asked about, and [`DONE`] with
    /// the union of their unions: the rules of a group read the same collections, so each
    /// gate after the first is one lookup.
    gate_unions: Vec<(u64, u32)>,
    pipelines: usize,
    groups: usize,
    set: regex_automata::PatternSet,
    /// Per key: the bytes of its raw value, once computed.
    raw_bytes: Vec<Option<ByteSet>>,
    /// Per collection: the bytes of its items' raw values, once computed.
    collection_bytes: Vec<Option<ByteSet>>,
    /// Per transformed value, by its span in `arena`: its bytes, once computed.
    arena_bytes: HashMap<(u32, u32), ByteSet, TxHash>,
    /// Per long value (a key and its span) and transformation: the span of the result.
    /// Pipelines that differ only in steps that leave a value as it is end in the same
    /// transformation of the same value, which is then worked out once.
    applied: HashMap<Applied, (u32, u32), TxHash>,
    /// Per key, for the thread's [`ValueCache`]: [`UNCACHED`] for an item it does not keep,
    /// else [`UNSEEN`], [`SEEN`] once the cached masks are in the item's row, or [`DIRTY`]
    /// once the transaction has worked out a mask the cache lacks. Empty when the rule set
    /// keeps none.
    cache_state: Vec<u8>,
    /// Matched variables' buffers, handed back when `MATCHED_VARS` moves on, for the next
    /// matches to fill: a match costs a copy, not an allocation.
    spare: Spare,
}

/// Buffers of matched variables: names, values and a list of matches (at most
/// [`SPARE_MAX`] names and values, each of at most [`SPARE_BYTES`]).
#[derive(Default)]
struct Spare {
    names: Vec<String>,
    values: Vec<Vec<u8>>,
    matched: Vec<Matched>,
}

/// A value a link matched, before its actions run: the variable's name, the value, and
/// the captures when the link keeps them.
type Matched = (String, Vec<u8>, Option<Groups>);

/// The most buffers of each kind [`Spare`] keeps.
const SPARE_MAX: usize = 64;
/// The largest buffer [`Spare`] keeps, in bytes.
const SPARE_BYTES: usize = 4096;

impl Spare {
    fn name(&mut self) -> String {
        let mut name = self.names.pop().unwrap_or_default();
        name.clear();
        name
    }

    /// A buffer holding a copy of `value`.
    fn value(&mut self, value: &[u8]) -> Vec<u8> {
        let mut v = self.values.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(value);
        v
    }

    fn keep(&mut self, name: String, value: Vec<u8>) {
        if self.names.len() < SPARE_MAX && name.capacity() <= SPARE_BYTES {
            self.names.push(name);
        }
        if self.values.len() < SPARE_MAX && value.capacity() <= SPARE_BYTES {
            self.values.push(value);
        }
    }

    fn retained_bytes(&self) -> usize {
        self.names.iter().map(String::capacity).sum::<usize>()
            + self.values.iter().map(Vec::capacity).sum::<usize>()
            + self.matched.capacity() * std::mem::size_of::<Matched>()
    }
}

/// A transformation of a long value, in [`Memo::applied`]: the item's key, the span of the
/// value transformed, the transformation.
type Applied = (u32, (u32, u32), Transform);

/// The shortest value whose transformations [`Memo::applied`] keeps: a shorter one is
/// transformed again sooner than looked up.
const APPLIED_MIN: usize = 64;

const UNCACHED: u8 = 0;
const UNSEEN: u8 = 1;
const SEEN: u8 = 2;
const DIRTY: u8 = 3;

/// The collections whose values (`true`) or only names (`false`) a [`ValueCache`] keeps:
/// what a client sends the same on every request (its headers and cookies, the method and
/// protocol, the API's paths and argument names), not the arguments' values or the body.
const CACHED: [(Collection, bool); 9] = [
    (Collection::RequestHeaders, true),
    (Collection::RequestCookies, true),
    (Collection::ResponseHeaders, true),
    (Collection::ArgsGet, false),
    (Collection::ArgsPost, false),
    (Collection::RequestMethod, true),
    (Collection::RequestProtocol, true),
    (Collection::RequestFilename, true),
    (Collection::RequestBasename, true),
];

/// The longest value whose masks a [`ValueCache`] keeps.
const MAX_CACHED_VALUE: usize = 1024;

/// The most rule sets a thread keeps a [`ValueCache`] for (the least recently used goes).
const CACHED_SETS: usize = 4;

/// The group masks ([`Memo::mask`]) of the values [`CACHED`] lists that the thread's
/// earlier transactions worked out, for one rule set. A mask depends only on the value and
/// the group (never on the item's collection or the transaction), so a value met again takes
/// its masks from here instead of being transformed and searched again: clients send the
/// same headers on every request.
struct ValueCache {
    crs: u64,
    groups: usize,
    /// Per value: its entry, whose masks are `masks[entry * groups..][..groups]`.
    index: HashMap<Box<[u8]>, u32, TxHash>,
    masks: Vec<u32>,
}

impl ValueCache {
    fn new(crs: &Crs) -> Self {
        Self {
            crs: crs.id,
            groups: crs.groups.len(),
            index: HashMap::with_hasher(TxHash::default()),
            masks: Vec::new(),
        }
    }
}

thread_local! {
    /// The thread's value caches, the most recently used rule set's last.
    static VALUE_CACHES: std::cell::RefCell<Vec<ValueCache>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How many values the thread's value cache of `crs` holds.
#[cfg(test)]
pub(crate) fn cached_values(crs: &Crs) -> usize {
    with_value_cache(crs, |cache| cache.index.len())
}

/// Runs `f` on the thread's value cache of `crs` (made when missing).
fn with_value_cache<R>(crs: &Crs, f: impl FnOnce(&mut ValueCache) -> R) -> R {
    VALUE_CACHES.with(|caches| {
        let mut caches = caches.borrow_mut();
        match caches.iter().position(|c| c.crs == crs.id) {
            Some(at) if at + 1 != caches.len() => {
                let cache = caches.remove(at);
                caches.push(cache);
            }
            Some(_) => {}
            None => {
                if caches.len() >= CACHED_SETS {
                    caches.remove(0);
                }
                caches.push(ValueCache::new(crs));
            }
        }
        match caches.last_mut() {
            Some(cache) => f(cache),
            // (Not reached: the rule set's cache is last.)
            None => f(&mut ValueCache::new(crs)),
        }
    })
}

/// The bytes `span` names in `arena`, or `raw` when the pipeline left the value unchanged.
fn spanned<'v>(arena: &'v [u8], span: (u32, u32), raw: &'v [u8]) -> &'v [u8] {
    if span == SAME {
        raw
    } else {
        arena
            .get(span.0 as usize..span.1 as usize)
            .unwrap_or_default()
    }
}

const UNSET: (u32, u32) = (u32::MAX, 0);
const SAME: (u32, u32) = (u32::MAX - 1, 0);
const DONE: u32 = 1 << 16;
const NO_ROW: u32 = u32::MAX;
/// The most patterns of a group that a value is searched by one at a time rather than by the
/// group's search.
const SOLO_MAX: u32 = 2;

/// The largest memo kept for the thread's next transaction, in bytes (transformed text and
/// per-item tables): a transaction over a large body does not pin its memory afterwards.
const MAX_POOLED_BYTES: usize = 1024 * 1024;

thread_local! {
    /// The memo of the thread's last transaction, kept so the next one reuses its buffers.
    static MEMO_POOL: std::cell::Cell<Option<Memo>> = const { std::cell::Cell::new(None) };
}

/// A transaction's memo, handed back to [`MEMO_POOL`] when the transaction ends.
struct Pooled(Memo);

impl std::ops::Deref for Pooled {
    type Target = Memo;
    fn deref(&self) -> &Memo {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Memo {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.0.retained_bytes() <= MAX_POOLED_BYTES {
            let memo = std::mem::replace(&mut self.0, Memo::empty());
            MEMO_POOL.with(|pool| pool.set(Some(memo)));
        }
    }
}

impl Memo {
    fn empty() -> Self {
        Self {
            arena: Vec::new(),
            spans: Vec::new(),
            rows: Vec::new(),
            masks: Vec::new(),
            unions: Vec::new(),
            unions_set: Vec::new(),
            gate_unions: Vec::new(),
            pipelines: 0,
            groups: 0,
            set: regex_automata::PatternSet::new(super::GROUP_SIZE),
            raw_bytes: Vec::new(),
            collection_bytes: Vec::new(),
            arena_bytes: HashMap::with_hasher(TxHash::default()),
            applied: HashMap::with_hasher(TxHash::default()),
            cache_state: Vec::new(),
            spare: Spare::default(),
        }
    }

    /// The bytes its buffers hold on to.
    fn retained_bytes(&self) -> usize {
        self.arena.capacity()
            + self.spans.capacity() * std::mem::size_of::<(u32, u32)>()
            + (self.rows.capacity()
                + self.masks.capacity()
                + self.unions.capacity()
                + self.unions_set.capacity())
                * 4
            + self.gate_unions.capacity() * std::mem::size_of::<(u64, u32)>()
            + (self.raw_bytes.capacity() + self.collection_bytes.capacity())
                * std::mem::size_of::<Option<ByteSet>>()
            + self.arena_bytes.capacity() * std::mem::size_of::<((u32, u32), ByteSet)>()
            + self.applied.capacity() * std::mem::size_of::<(Applied, (u32, u32))>()
            + self.cache_state.capacity()
            + self.spare.retained_bytes()
    }

    /// A memo for `ex`, reusing the buffers of the thread's last one.
    fn new(crs: &Crs, ex: &Exchange) -> Self {
        let keys = ex.item_count() * 2;
        let (pipelines, groups) = (crs.pipelines.len(), crs.groups.len());
        let mut memo = MEMO_POOL
            .with(std::cell::Cell::take)
            .unwrap_or_else(Self::empty);
        memo.arena.clear();
        memo.spans.clear();
        memo.masks.clear();
        memo.rows.clear();
        memo.rows.resize(keys, NO_ROW);
        let Memo {
            unions, unions_set, ..
        } = &mut memo;
        for &at in unions_set.iter() {
            if let Some(slot) = unions.get_mut(at as usize) {
                *slot = 0;
            }
        }
        unions_set.clear();
        memo.gate_unions.clear();
        memo.gate_unions.resize(groups, (0, 0));
        memo.pipelines = pipelines;
        memo.groups = groups;
        memo.set.clear();
        memo.raw_bytes.clear();
        memo.raw_bytes.resize(keys, None);
        memo.collection_bytes.clear();
        memo.arena_bytes.clear();
        memo.applied.clear();
        memo.cache_state.clear();
        if crs.value_cache > 0 {
            memo.cache_state.resize(keys, UNCACHED);
            let short = |raw: &[u8]| raw.len() <= MAX_CACHED_VALUE;
            for (c, values) in CACHED {
                let start = ex.base_index(c);
                for (n, item) in ex.items(c).iter().enumerate() {
                    let (value, name) = ((start + n) * 2, (start + n) * 2 + 1);
                    if let Some(state) = memo.cache_state.get_mut(value)
                        && values
                        && short(item.value())
                    {
                        *state = UNSEEN;
                    }
                    if let Some(state) = memo.cache_state.get_mut(name)
                        && short(item.name().as_bytes())
                    {
                        *state = UNSEEN;
                    }
                }
            }
        }
        memo
    }

    /// The first time item `key` (value `raw`) is asked for a mask: its row takes the masks
    /// the thread's value cache holds for `raw`.
    fn load_cached(&mut self, crs: &Crs, key: u32, raw: &[u8]) {
        let Some(state) = self.cache_state.get_mut(key as usize) else {
            return;
        };
        *state = SEEN;
        let row = self.row(key);
        let groups = self.groups;
        let Some(to) = self.masks.get_mut(row * groups..(row + 1) * groups) else {
            return;
        };
        with_value_cache(crs, |cache| {
            let from = cache.index.get(raw).and_then(|&entry| {
                cache
                    .masks
                    .get(entry as usize * groups..(entry as usize + 1) * groups)
            });
            if let (Some(from), true) = (from, cache.groups == groups) {
                to.copy_from_slice(from);
            }
        });
    }

    /// Hands the masks this transaction worked out for cached items to the thread's value
    /// cache.
    fn store_cached(&mut self, crs: &Crs, ex: &Exchange) {
        if !self.cache_state.contains(&DIRTY) {
            return;
        }
        let groups = self.groups;
        with_value_cache(crs, |cache| {
            for (key, state) in self.cache_state.iter_mut().enumerate() {
                if *state != DIRTY {
                    continue;
                }
                *state = SEEN;
                let raw = match ex.item_at(key / 2) {
                    Some(item) if key % 2 == 1 => item.name().as_bytes(),
                    Some(item) => item.value(),
                    None => continue,
                };
                let Some(&row) = self.rows.get(key) else {
                    continue;
                };
                let Some(found) = self
                    .masks
                    .get(row as usize * groups..(row as usize + 1) * groups)
                else {
                    continue;
                };
                let entry = match cache.index.get(raw) {
                    Some(&entry) => entry as usize,
                    None => {
                        if cache.index.len() >= crs.value_cache {
                            cache.index.clear();
                            cache.masks.clear();
                        }
                        let entry = cache.index.len();
                        let Ok(at) = u32::try_from(entry) else {
                            continue;
                        };
                        cache.index.insert(raw.into(), at);
                        cache.masks.resize((entry + 1) * groups, 0);
                        entry
                    }
                };
                if let Some(to) = cache.masks.get_mut(entry * groups..(entry + 1) * groups) {
                    for (to, &m) in to.iter_mut().zip(found) {
                        if m & DONE != 0 {
                            *to = m;
                        }
                    }
                }
            }
        });
    }

    /// Item `key`'s row in `spans` and `masks`, when it has been made.
    #[inline]
    fn made_row(&self, key: u32) -> Option<usize> {
        match self.rows.get(key as usize) {
            Some(&row) if row != NO_ROW => Some(row as usize),
            _ => None,
        }
    }

    /// Item `key`'s row in `spans` and `masks`, made when first asked for.
    fn row(&mut self, key: u32) -> usize {
        if let Some(row) = self.made_row(key) {
            return row;
        }
        match self.rows.get(key as usize) {
            Some(_) => {
                let row = self.spans.len() / self.pipelines.max(1);
                self.spans.resize(self.spans.len() + self.pipelines, UNSET);
                self.masks.resize(self.masks.len() + self.groups, 0);
                if let (Some(slot), Ok(r)) = (self.rows.get_mut(key as usize), u32::try_from(row)) {
                    *slot = r;
                }
                row
            }
            // Not an item of the exchange: a row no lookup finds.
            None => usize::MAX / 2 / self.pipelines.max(self.groups).max(1),
        }
    }

    /// The bytes of item `key`'s value through a pipeline, as `span` (its value `raw`)
    /// names it: computed once per distinct value.
    fn bytes_of(&mut self, key: u32, span: (u32, u32), raw: &[u8]) -> ByteSet {
        if span == SAME {
            let slot = self.raw_bytes.get_mut(key as usize);
            return match slot {
                Some(Some(bytes)) => *bytes,
                Some(slot) => *slot.insert(ByteSet::of(raw)),
                None => ByteSet::of(raw),
            };
        }
        if let Some(bytes) = self.arena_bytes.get(&span) {
            return *bytes;
        }
        let bytes = ByteSet::of(spanned(&self.arena, span, raw));
        self.arena_bytes.insert(span, bytes);
        bytes
    }

    /// The span of item `key`'s value `raw` through pipeline `pipeline`: its parent's value
    /// (cached, so shared prefixes run once) through its last transformation.
    fn span(&mut self, crs: &Crs, key: u32, pipeline: u32, raw: &[u8]) -> (u32, u32) {
        // A value with none of the bytes the pipeline's transformations act on passes
        // through it as it is.
        if let Some(Some(trigger)) = crs.triggers.get(pipeline as usize)
            && !self.bytes_of(key, SAME, raw).intersects(*trigger)
        {
            return SAME;
        }
        let at = self.row(key) * self.pipelines + pipeline as usize;
        if let Some(&span) = self.spans.get(at).filter(|s| **s != UNSET) {
            return span;
        }
        let transforms = crs
            .pipelines
            .get(pipeline as usize)
            .map_or(&[][..], |t| &t[..]);
        let parent = crs.parents.get(pipeline as usize).copied().flatten();
        let (base, last) = match (parent, transforms.split_last()) {
            (Some(parent), Some((last, _))) => (self.span(crs, key, parent, raw), Some(last)),
            // (A pipeline of one transformation: the raw value through it.)
            (None, Some((last, []))) => (SAME, Some(last)),
            _ => (SAME, None),
        };
        // When the next-to-last transformation left the value as it was, the value is the
        // pipeline's without it (worked out once for both).
        if let (Some(parent), Some(Some(skip))) = (parent, crs.skips.get(pipeline as usize)) {
            let before = match crs.parents.get(parent as usize).copied().flatten() {
                Some(grandparent) => self.span(crs, key, grandparent, raw),
                None => SAME,
            };
            if before == base {
                let span = self.span(crs, key, *skip, raw);
                return self.keep_span(at, span);
            }
        }
        // A long value's last step (`long`) is looked up first: another pipeline may have made it.
        let long = last
            .filter(|_| spanned(&self.arena, base, raw).len() >= APPLIED_MIN)
            .copied();
        if let Some(t) = long
            && let Some(&span) = self.applied.get(&(key, base, t))
        {
            return self.keep_span(at, span);
        }
        let changed = match last {
            Some(t) => {
                let before = spanned(&self.arena, base, raw);
                match t.apply(before) {
                    // (Some transformations copy values they leave as they are: such a copy
                    // keeps its parent's span, so equal values share one.)
                    Cow::Owned(v) if v != before => Some(v),
                    _ => None,
                }
            }
            None => match apply_all(transforms, raw) {
                Cow::Borrowed(_) => None,
                Cow::Owned(v) => Some(v),
            },
        };
        let span = match changed {
            None => base,
            Some(v) => {
                let start = self.arena.len();
                self.arena.extend_from_slice(&v);
                match (u32::try_from(start), u32::try_from(self.arena.len())) {
                    (Ok(a), Ok(b)) if b < SAME.0 => (a, b),
                    // Beyond 4 GiB of transformed text, which bounded bodies never reach.
                    _ => {
                        self.arena.truncate(start);
                        return SAME;
                    }
                }
            }
        };
        if let Some(t) = long {
            self.applied.insert((key, base, t), span);
        }
        self.keep_span(at, span)
    }

    /// Keeps `span` in slot `at` of `spans`, and returns it.
    fn keep_span(&mut self, at: usize, span: (u32, u32)) -> (u32, u32) {
        if let Some(slot) = self.spans.get_mut(at) {
            *slot = span;
        }
        span
    }

    fn value<'v>(&'v self, span: (u32, u32), raw: &'v [u8]) -> &'v [u8] {
        spanned(&self.arena, span, raw)
    }

    /// Which patterns of `group` match item `key` (raw value `raw`), each on its own
    /// pipeline's value: one search per distinct value the members' pipelines make.
    #[inline]
    fn mask(&mut self, crs: &Crs, key: u32, group: u32, raw: &[u8]) -> u32 {
        // (Most calls find the mask made: that path is kept small, the search apart.)
        if let Some(row) = self.made_row(key)
            && let Some(&m) = self
                .masks
                .get(row * self.groups + group as usize)
                .filter(|m| **m & DONE != 0)
        {
            return m;
        }
        self.search(crs, key, group, raw)
    }

    /// [`Self::mask`] when it is not made yet: loads the value's cached verdicts, or searches.
    #[inline(never)]
    fn search(&mut self, crs: &Crs, key: u32, group: u32, raw: &[u8]) -> u32 {
        let at = if self.cache_state.get(key as usize) == Some(&UNSEEN) {
            self.load_cached(crs, key, raw);
            let at = self.row(key) * self.groups + group as usize;
            // (The cache may have held it.)
            if let Some(&m) = self.masks.get(at).filter(|m| **m & DONE != 0) {
                return m;
            }
            at
        } else {
            self.row(key) * self.groups + group as usize
        };
        if let Some(state) = self.cache_state.get_mut(key as usize)
            && *state != UNCACHED
        {
            *state = DIRTY;
        }
        let mut mask = DONE;
        // A value with none of the bytes a pipeline needs to make what a pattern needs is
        // not run through the pipeline, nor searched.
        let raw_bytes = self.bytes_of(key, SAME, raw);
        if let Some(g) = crs.groups.get(group as usize)
            && g.screen.is_none_or(|s| raw_bytes.intersects(s))
        {
            // The distinct values, by span, with the bits of the patterns that see each.
            // (Not zeroed first, as an array would be.)
            let mut classes: smallvec::SmallVec<[((u32, u32), u32); super::GROUP_SIZE]> =
                smallvec::SmallVec::new();
            for member in &g.members {
                if member.screen.is_some_and(|s| !raw_bytes.intersects(s)) {
                    continue;
                }
                let (bits, pipeline) = (member.bits, member.pipeline);
                let span = self.span(crs, key, pipeline, raw);
                let value = spanned(&self.arena, span, raw);
                let seen = classes
                    .iter_mut()
                    .find(|(s, _)| *s == span || spanned(&self.arena, *s, raw) == value);
                match seen {
                    Some((_, seen_bits)) => *seen_bits |= bits,
                    None => classes.push((span, bits)),
                }
            }
            for &(span, bits) in &classes {
                if let super::Search::Detect(detector) = &g.search {
                    if detector.detects(spanned(&self.arena, span, raw)) {
                        mask |= bits;
                    }
                    continue;
                }
                // (Needed by the group's screen, and by the per-pattern one below.)
                let bytes = if g.needs.is_some() || !g.single {
                    self.bytes_of(key, span, raw)
                } else {
                    ByteSet::default()
                };
                // A value with none of the bytes every match needs is not searched.
                if g.needs.is_some_and(|needs| !bytes.intersects(needs)) {
                    continue;
                }
                let value = spanned(&self.arena, span, raw);
                // (A long value is searched by a pattern alone only when it holds one of the
                // pattern's factors.)
                let admits = |i: usize| {
                    g.solo_screens
                        .get(i)
                        .and_then(Option::as_ref)
                        .is_none_or(|s| s.admits(value))
                };
                if let (true, super::Search::Patterns(regex)) = (g.single, &g.search) {
                    if admits(0) && regex.is_match(value) {
                        mask |= bits;
                    }
                    continue;
                }
                // The patterns that could match: those with one of the bytes they need.
                let live = g
                    .solo
                    .iter()
                    .enumerate()
                    .filter(|(i, (needs, _))| {
                        bits & (1 << i) != 0 && needs.is_none_or(|n| n.intersects(bytes))
                    })
                    .fold(0_u32, |live, (i, _)| live | 1 << i);
                if live.count_ones() <= SOLO_MAX {
                    // Few enough to search each alone (with its own literals), when each has
                    // its own regex.
                    let alone = g
                        .solo
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| live & (1 << i) != 0)
                        .try_fold(0_u32, |found, (i, (_, re))| {
                            re.as_ref()
                                .map(|re| found | u32::from(admits(i) && re.is_match(value)) << i)
                        });
                    if let Some(alone) = alone {
                        mask |= alone;
                        continue;
                    }
                }
                match g.all_matches(value, &mut self.set) {
                    Some(found) => mask |= found & live,
                    // (A search that fails, which a built group's does not: each pattern on
                    // its own, and one without its own search counts as matching.)
                    None => {
                        for (i, (_, re)) in g.solo.iter().enumerate() {
                            if live & (1 << i) != 0
                                && re.as_ref().is_none_or(|re| re.is_match(value))
                            {
                                mask |= 1 << i;
                            }
                        }
                    }
                }
            }
        } else if crs.groups.get(group as usize).is_none() {
            // No such group: every pattern may match (the link's own test decides).
            mask |= 0xffff;
        }
        if let Some(slot) = self.masks.get_mut(at) {
            *slot = mask;
        }
        mask
    }
}

/// The capture groups 0-9 of a match, for `TX.0`-`TX.9`.
/// (As many as the pattern has, up to ten; held inline for a pattern with none but the
/// whole match, the common case.)
type Groups = smallvec::SmallVec<[Option<TxValue>; 1]>;

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
            .field("outcome", &self.state.outcome)
            .finish_non_exhaustive()
    }
}

/// A transaction between its request and response phases: its `TX` variables, exclusions
/// and outcome so far, owned, so it can wait for the response ([`Crs::resume`]).
#[derive(Debug, Clone)]
pub struct Suspended {
    tx: HashMap<Arc<str>, TxValue, TxHash>,
    engine: EngineMode,
    removed_ids: Vec<(u32, u32)>,
    pub(super) removed_tags: Vec<String>,
    pub(super) removed_targets_by_id: Vec<(Vec<(u32, u32)>, Var)>,
    pub(super) removed_targets_by_tag: Vec<(String, Var)>,
    body_processor: Option<String>,
    outcome: CrsOutcome,
    allowed: bool,
    /// Whether the transaction started from the rule set's [`Prelude`] (so the `TX`
    /// variables no later rule sets hold the prelude's values).
    pub(super) from_prelude: bool,
    /// Which of `TX.0`-`TX.9` may be set (a capture clears the others: only these are
    /// looked up).
    captured: u16,
}

impl Suspended {
    /// The outcome so far.
    pub fn outcome(&self) -> &CrsOutcome {
        &self.outcome
    }
}

impl Crs {
    /// Resumes a suspended transaction over `ex`, the same exchange with its response set
    /// ([`Exchange::set_response`]). The matches of earlier phases stay in the outcome.
    pub fn resume<'a>(
        &'a self,
        state: Suspended,
        ex: &'a Exchange,
        remote_addr: &str,
    ) -> Transaction<'a> {
        let mut t = self.transaction_from(ex, remote_addr, state);
        t.fresh = false;
        t
    }

    /// Starts a transaction over `ex`, from client address `remote_addr`.
    pub fn transaction<'a>(&'a self, ex: &'a Exchange, remote_addr: &str) -> Transaction<'a> {
        let state = Suspended {
            tx: HashMap::with_capacity_and_hasher(64, TxHash::default()),
            engine: self.engine,
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets_by_id: Vec::new(),
            removed_targets_by_tag: Vec::new(),
            body_processor: body_processor_of(ex),
            outcome: CrsOutcome::default(),
            allowed: false,
            from_prelude: false,
            captured: ALL_CAPTURES,
        };
        self.transaction_from(ex, remote_addr, state)
    }

    /// A transaction over `ex` in `state` (a new one's, or a suspended one's: its `TX`
    /// table is not allocated only to be dropped).
    fn transaction_from<'a>(
        &'a self,
        ex: &'a Exchange,
        remote_addr: &str,
        state: Suspended,
    ) -> Transaction<'a> {
        Transaction {
            crs: self,
            ex,
            remote_addr: remote_addr.to_owned(),
            state,
            matched_vars: Vec::new(),
            fixed_vars: None,
            memo: std::cell::RefCell::new(Pooled(Memo::new(self, ex))),
            filled: gate::filled(ex),
            fresh: true,
            scratch: Default::default(),
        }
    }

    /// Runs the static start of phase 1 (see [`Prelude`]) over an empty exchange.
    pub(crate) fn prelude(&self) -> Prelude {
        let (parts, ()) = http::Request::new(()).into_parts();
        let ex = Exchange::from_request(&parts, &[], crate::ParseOptions::default());
        let mut t = self.transaction(&ex, "");
        t.fresh = false;
        let resume = t.run_from(1, 0, true);
        let matched_vars = t.matched().to_vec();
        Prelude {
            tx: t.state.tx,
            outcome: t.state.outcome,
            allowed: t.state.allowed,
            matched_vars,
            resume,
        }
    }

    /// The verdicts of the first links of rules `candidates` (indexes), each tested in a
    /// transaction over an empty exchange at the end of the prelude: per rule, the matched
    /// variables when it matches. Empty without a prelude.
    pub(crate) fn verdicts(&self, candidates: &[usize]) -> HashMap<usize, Option<MatchedVars>> {
        let mut out = HashMap::new();
        let Some(prelude) = &self.prelude else {
            return out;
        };
        let (parts, ()) = http::Request::new(()).into_parts();
        let ex = Exchange::from_request(&parts, &[], crate::ParseOptions::default());
        let mut t = self.transaction(&ex, "");
        t.fresh = false;
        let mut dirty = true;
        for &r in candidates {
            let Some((rule, link)) = self.rules.get(r).and_then(|x| Some((x, x.links.first()?)))
            else {
                continue;
            };
            if dirty {
                // A link that matched ran its actions: start the next from the prelude again.
                t.state.tx.clone_from(&prelude.tx);
                t.state.outcome.clone_from(&prelude.outcome);
                t.matched_vars.clone_from(&prelude.matched_vars);
                t.fixed_vars = None;
            }
            dirty = t.eval_link(rule, link);
            out.insert(r, dirty.then(|| t.matched().to_vec()));
        }
        out
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
        let mut start = 0;
        if phase == 1 && std::mem::take(&mut self.fresh) {
            // Every transaction starts with the same `TX`, so the static start of phase 1
            // ends the same way: take its outcome.
            if let Some(prelude) = &self.crs.prelude
                && self.state.engine == self.crs.engine
                && self.state.tx.is_empty()
            {
                self.state.tx.clone_from(&prelude.tx);
                self.state.outcome.clone_from(&prelude.outcome);
                self.state.allowed = prelude.allowed;
                self.matched_vars.clone_from(&prelude.matched_vars);
                self.fixed_vars = None;
                self.state.from_prelude = true;
                start = prelude.resume;
            }
        }
        self.run_from(phase, start, false);
        self.memo.borrow_mut().store_cached(self.crs, self.ex);
    }

    /// Runs phase `phase` from step `start`; with `static_only`, stops before the first
    /// rule that is not [`is_static`]. Returns the step it stopped at.
    fn run_from(&mut self, phase: u8, start: usize, static_only: bool) -> usize {
        if self.state.outcome.status.is_some() || self.state.allowed {
            return start;
        }
        let crs = self.crs;
        let p = usize::from(phase.saturating_sub(1));
        let (Some(steps), Some(jumps)) = (crs.phases.get(p), crs.jumps.get(p)) else {
            return start;
        };
        let gates = crs.gates.get(p).map_or(&[][..], Vec::as_slice);
        let mut i = start;
        while let Some(step) = steps.get(i) {
            i += 1;
            if self.state.engine == EngineMode::Off {
                return i - 1;
            }
            let Step::Rule(ri) = step else { continue };
            let gate = gates.get(i - 1).copied().unwrap_or(Gate::Open);
            let xml = || self.state.body_processor.as_deref() == Some("XML");
            match gate {
                Gate::Reads(bits) | Gate::Grouped { reads: bits, .. }
                    if bits & self.filled == 0 && (bits & gate::XML == 0 || !xml()) =>
                {
                    // Nothing to read: the rule cannot match.
                    continue;
                }
                Gate::Grouped { reads, group, bit }
                    if (reads & gate::XML == 0 || !xml())
                        && !self.group_may_match(reads, group, bit) =>
                {
                    // No item has the pattern's bit: the rule cannot match.
                    continue;
                }
                _ => {}
            }
            // (Fixed verdicts are for links that read only `TX`: a removed target of another
            // collection, such as CRS's `ctl:ruleRemoveTargetByTag=xss-perf-disable;
            // REQUEST_FILENAME` on most requests, leaves them as they are.)
            let decided = self.state.from_prelude && !self.removes_tx_targets();
            if gate == Gate::Never && decided {
                continue;
            }
            let Some(rule) = crs.rules.get(*ri) else {
                continue;
            };
            if static_only && !is_static(rule) {
                if !reads_static(rule) {
                    return i - 1;
                }
                // A rule whose first link reads only `TX` and does not match is decided too
                // (its actions never run). A link runs its actions only when it matches.
                let saved = (
                    self.state.clone(),
                    self.matched_vars.clone(),
                    self.fixed_vars,
                );
                if rule.links.first().is_some_and(|l| !self.eval_link(rule, l)) {
                    continue;
                }
                (self.state, self.matched_vars, self.fixed_vars) = saved;
                return i - 1;
            }
            let matched = match gate {
                Gate::Always(at) if decided => {
                    match (crs.fixed.get(at as usize), rule.links.split_first()) {
                        (Some(fixed), Some((first, rest))) if !self.is_removed(rule) => {
                            self.matched_fixed(rule, first, at, fixed);
                            rest.iter().all(|link| self.eval_link(rule, link))
                        }
                        _ => false,
                    }
                }
                _ => !self.is_removed(rule) && self.eval_rule(rule),
            };
            if !matched {
                continue;
            }
            let msg = rule
                .msg
                .as_deref()
                .map(|m| self.expand(m, rule).into_owned());
            self.state.outcome.matches.push(super::CrsMatch {
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
            if self.state.engine == EngineMode::On {
                match disruptive {
                    Disruptive::Deny | Disruptive::Drop => {
                        self.state.outcome.status = Some(rule.status.unwrap_or(403));
                        return i;
                    }
                    Disruptive::Allow => {
                        self.state.allowed = true;
                        return i;
                    }
                    Disruptive::Pass | Disruptive::Block => {}
                }
            }
            if rule.skip_after.is_some() {
                i = jumps.get(i - 1).copied().unwrap_or(steps.len());
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
        i
    }

    /// The outcome so far.
    pub fn finish(self) -> CrsOutcome {
        self.state.outcome
    }

    /// The outcome so far, without ending the transaction.
    pub fn outcome(&self) -> &CrsOutcome {
        &self.state.outcome
    }

    /// Keeps the transaction's state for its response phases ([`Crs::resume`]).
    pub fn suspend(self) -> Suspended {
        self.state
    }

    /// A `TX` variable.
    pub fn tx(&self, name: &str) -> Option<&[u8]> {
        self.state
            .tx
            .get(name.to_ascii_lowercase().as_str())
            .map(|v| v.as_slice())
    }

    /// Whether a `ctl` has removed some `TX` target from some rules.
    pub(super) fn removes_tx_targets(&self) -> bool {
        let tx = |v: &Var| matches!(v.source, Source::Tx);
        self.state.removed_targets_by_id.iter().any(|(_, v)| tx(v))
            || self.state.removed_targets_by_tag.iter().any(|(_, v)| tx(v))
    }

    fn is_removed(&self, rule: &CRule) -> bool {
        self.state
            .removed_ids
            .iter()
            .any(|(a, b)| (*a..=*b).contains(&rule.id))
            || self
                .state
                .removed_tags
                .iter()
                .any(|t| rule.tags.contains(t))
    }

    fn eval_rule(&mut self, rule: &CRule) -> bool {
        // Each link's actions run as soon as it matches (see `eval_link`), before the next
        // link is tested: a chained rule may read what its parent set, as CRS's 931130 and
        // 920450 do.
        rule.links.iter().all(|link| self.eval_link(rule, link))
    }

    /// Tests a link and, when it matches, runs its non-disruptive actions as ModSecurity
    /// does: `setvar` once per matched value, with `MATCHED_VAR` and the captures (`TX.0`-`9`)
    /// of that value (so a rule can set one `TX` variable per matching header, as 920450
    /// does); `ctl` once.
    fn eval_link(&mut self, rule: &CRule, link: &Link) -> bool {
        if link.always {
            for sv in &link.setvars {
                self.setvar(sv, rule);
            }
            for ctl in &link.ctls {
                self.ctl(ctl);
            }
            return true;
        }
        if link.prefilter && !self.may_match(link) {
            return false;
        }
        let mut matched = std::mem::take(&mut self.memo.borrow_mut().spare.matched);
        // A macro operator is expanded and built once per evaluation, not once per value,
        // and not at all while its variable holds the value it was built for at load.
        let built;
        let expanded = match &link.op {
            Op::Macro {
                preset: Some(p), ..
            } if self.state.tx.get(p.tx.as_str()).map(|v| v.as_slice())
                == Some(p.value.as_slice()) =>
            {
                Some(&p.op)
            }
            Op::Macro { name, param, .. } => {
                built = Operator::compile(name, &self.expand(param, &NO_RULE)).ok();
                built.as_ref()
            }
            _ => None,
        };
        self.for_each_value(rule, link, |val| {
            // MATCHED_VAR(S) hold the transformed value (a chained rule reads it as the
            // parent saw it).
            let (hit, caps, seen) = if link.multi_match {
                // `multiMatch`: the operator sees the value before the transformations and
                // after each one that changes it (as ModSecurity runs it).
                // (A value with none of the bytes every match needs is not searched.)
                let test = |value: &[u8]| match link.screen {
                    Some(screen) if !ByteSet::of(value).intersects(screen) => (false, None),
                    _ => self.test(link, expanded, value),
                };
                if let Some(key) = val.key
                    && link.stages.len() == link.transforms.len()
                {
                    // An exchange item: its values after each step are the memo's values
                    // through the pipeline's prefixes (made once for every rule).
                    let mut memo = self.memo.borrow_mut();
                    // The group's bit says whether any stage matches (see `build_groups`):
                    // a miss is not tested stage by stage.
                    if let (Some((group, bit)), true) = (link.slot, link.prefilter)
                        && memo.mask(self.crs, key, group, &val.value) & u32::from(bit) == 0
                    {
                        return;
                    }
                    let screened = |memo: &mut Memo, span: (u32, u32)| {
                        link.screen
                            .is_some_and(|s| !memo.bytes_of(key, span, &val.value).intersects(s))
                    };
                    let mut span = SAME;
                    let mut result = if screened(&mut memo, span) {
                        (false, None)
                    } else {
                        self.test(link, expanded, &val.value)
                    };
                    for &stage in &link.stages {
                        if result.0 != link.negated {
                            break;
                        }
                        let next = memo.span(self.crs, key, stage, &val.value);
                        if next == span
                            || memo.value(next, &val.value) == memo.value(span, &val.value)
                        {
                            continue;
                        }
                        span = next;
                        result = if screened(&mut memo, span) {
                            (false, None)
                        } else {
                            self.test(link, expanded, memo.value(span, &val.value))
                        };
                    }
                    // (Copied only for a match: `MATCHED_VAR` is all it is kept for.)
                    let m: &mut Memo = &mut memo;
                    let seen = (result.0 != link.negated)
                        .then(|| m.spare.value(spanned(&m.arena, span, &val.value)));
                    (result.0, result.1, seen)
                } else {
                    let mut value: Cow<'_, [u8]> = Cow::Borrowed(&val.value);
                    let mut result = test(&value);
                    for t in link.transforms.iter() {
                        if result.0 != link.negated {
                            break;
                        }
                        if let Cow::Owned(changed) = t.apply(&value)
                            && changed.as_slice() != &*value
                        {
                            value = Cow::Owned(changed);
                            result = test(&value);
                        }
                    }
                    let seen = (result.0 != link.negated).then(|| value.into_owned());
                    (result.0, result.1, seen)
                }
            } else {
                let decide = |value: &[u8], grouped: Option<bool>, spare: &mut Spare| {
                    let (hit, caps) = match grouped {
                        Some(false) => (false, None),
                        Some(true) if !link.capture => (true, None),
                        _ => self.test(link, expanded, value),
                    };
                    let keep = (hit != link.negated).then(|| spare.value(value));
                    (hit, caps, keep)
                };
                match val.key {
                    Some(key)
                        if !link.transforms.is_empty()
                            || link.slot.is_some()
                            || link.screen.is_some() =>
                    {
                        let mut memo = self.memo.borrow_mut();
                        // The group's search decides (a value it rules out is not even
                        // transformed, unless a negated link keeps it); else a value with
                        // none of the bytes every match needs does not match.
                        if let Some((group, bit)) = link.slot
                            && !link.negated
                            && memo.mask(self.crs, key, group, &val.value) & u32::from(bit) == 0
                        {
                            return;
                        }
                        let span = memo.span(self.crs, key, link.pipeline, &val.value);
                        let grouped = match (link.slot, link.screen) {
                            (Some((group, bit)), _) => Some(
                                memo.mask(self.crs, key, group, &val.value) & u32::from(bit) != 0,
                            ),
                            (None, Some(screen))
                                if !memo.bytes_of(key, span, &val.value).intersects(screen) =>
                            {
                                Some(false)
                            }
                            _ => None,
                        };
                        // `decide` tests the value, and copies it into a spare buffer.
                        let m: &mut Memo = &mut memo;
                        decide(spanned(&m.arena, span, &val.value), grouped, &mut m.spare)
                    }
                    _ if link.transforms.is_empty() => {
                        decide(&val.value, None, &mut self.memo.borrow_mut().spare)
                    }
                    _ => decide(
                        &apply_all(&link.transforms, &val.value),
                        None,
                        &mut self.memo.borrow_mut().spare,
                    ),
                }
            };
            if hit != link.negated {
                // (Built by hand: `format!` costs more than the copies.)
                let mut name = self.memo.borrow_mut().spare.name();
                if val.member.is_empty() {
                    name.push_str(&val.var.name);
                } else if val.var.count {
                    name.push('&');
                    name.push_str(&val.var.name);
                } else {
                    name.push_str(&val.var.name);
                    name.push(':');
                    name.push_str(&val.member);
                }
                matched.push((name, seen.unwrap_or_default(), caps));
            }
        });
        if matched.is_empty() {
            self.memo.borrow_mut().spare.matched = matched;
            return false;
        }
        // `MATCHED_VARS` grows match by match; `MATCHED_VAR` is the last so far.
        self.recycle_matched();
        self.fixed_vars = None;
        for (name, value, caps) in matched.drain(..) {
            if let Some(groups) = caps {
                for (n, key) in CAPTURE_NAMES.iter().enumerate() {
                    let bit = 1_u16 << n;
                    match groups.get(n).and_then(Option::as_ref) {
                        Some(text) => self.set_tx(key, None, text),
                        None if self.state.captured & bit != 0 => {
                            self.state.tx.remove(*key);
                            self.state.captured &= !bit;
                        }
                        None => {}
                    }
                }
            }
            self.matched_vars.push((name, value));
            for sv in &link.setvars {
                self.setvar(sv, rule);
            }
        }
        self.memo.borrow_mut().spare.matched = matched;
        for ctl in &link.ctls {
            self.ctl(ctl);
        }
        true
    }

    /// Empties `MATCHED_VARS`, keeping its buffers for the next matches.
    fn recycle_matched(&mut self) {
        let spare = &mut self.memo.get_mut().spare;
        for (name, value) in self.matched_vars.drain(..) {
            spare.keep(name, value);
        }
    }

    /// `MATCHED_VARS`: the variables the last link to match matched.
    fn matched(&self) -> &[(String, Vec<u8>)] {
        match self.fixed_vars {
            Some(at) => self.crs.fixed.get(at as usize).map_or(&[], Vec::as_slice),
            None => &self.matched_vars,
        }
    }

    /// Runs the actions of `link`, which matched with the values `fixed` (its verdict fixed
    /// at load, see [`Gate::Always`]), as [`Self::eval_link`] runs them.
    fn matched_fixed(&mut self, rule: &CRule, link: &Link, at: u32, fixed: &MatchedVars) {
        self.recycle_matched();
        if link.setvars.is_empty() {
            self.fixed_vars = Some(at);
        } else {
            self.fixed_vars = None;
            for (name, value) in fixed {
                let spare = &mut self.memo.get_mut().spare;
                let mut copy = (spare.name(), spare.value(value));
                copy.0.push_str(name);
                self.matched_vars.push(copy);
                for sv in &link.setvars {
                    self.setvar(sv, rule);
                }
            }
        }
        for ctl in &link.ctls {
            self.ctl(ctl);
        }
    }

    /// Whether any item of the link's collections matches its pattern, by the group
    /// searches (each collection's items searched once per group, for every rule that reads
    /// them). `false` proves the link cannot match: exclusions only remove values.
    fn may_match(&self, link: &Link) -> bool {
        let Some((group, bit)) = link.slot else {
            return true;
        };
        link.vars.iter().any(|var| match var.source {
            _ if var.count => true,
            Source::Exchange(c) if !matches!(var.select, Select::All) => {
                self.selected_union(c, Some(&var.select), group) & u32::from(bit) != 0
            }
            Source::Exchange(c) => self.union(c, group) & u32::from(bit) != 0,
            // The same values as `REQUEST_URI`, which ModSecurity leaves undecoded too.
            Source::RequestUriRaw => {
                self.union(Collection::RequestUri, group) & u32::from(bit) != 0
            }
            // No values unless the body is XML.
            Source::Xml { .. } => self.state.body_processor.as_deref() == Some("XML"),
            Source::Empty => false,
            _ => true,
        })
    }

    /// The union of the group masks of the items of collection `c` that `select` selects
    /// (by name, as [`Self::for_each_member`] names them; every item without `select`): a
    /// rule that reads one header is not decided by searching the others.
    fn selected_union(&self, c: Collection, select: Option<&Select>, group: u32) -> u32 {
        if self.crs.groups.get(group as usize).is_none() {
            return u32::MAX;
        }
        // (Items no rule reads are not searched.)
        if self.hides(c) {
            return 0;
        }
        let names = c.names_of().is_some();
        let single = single_valued(c);
        let base = self.ex.base_index(c);
        let mut memo = self.memo.borrow_mut();
        let mut union = 0;
        for (n, item) in self.ex.items(c).iter().enumerate() {
            if select.is_some_and(|s| !s.selects(if single { "" } else { item.name() })) {
                continue;
            }
            let raw = if names {
                item.name().as_bytes()
            } else {
                item.value()
            };
            let Ok(key) = u32::try_from((base + n) * 2 + usize::from(names)) else {
                return u32::MAX;
            };
            union |= memo.mask(self.crs, key, group, raw);
        }
        union
    }

    /// Whether an item of the collections of `reads` ([`gate::bit`]) has `bit` in the
    /// search of `group`.
    fn group_may_match(&self, reads: u64, group: u32, bit: u16) -> bool {
        let reads = reads & self.filled & !gate::XML;
        let cached = self.memo.borrow().gate_unions.get(group as usize).copied();
        if let Some((of, union)) = cached
            && of == reads
            && union & DONE != 0
        {
            return union & u32::from(bit) != 0;
        }
        let mut union = DONE;
        let mut left = reads;
        while left != 0 {
            let at = left.trailing_zeros();
            left &= left - 1;
            let Some(Some(c)) = self.crs.by_bit.get(at as usize) else {
                return true;
            };
            union |= self.union(*c, group);
        }
        if let Some(slot) = self.memo.borrow_mut().gate_unions.get_mut(group as usize) {
            *slot = (reads, union);
        }
        union & u32::from(bit) != 0
    }

    /// The union of the group masks of every item of collection `c`, kept for the
    /// transaction.
    fn union(&self, c: Collection, group: u32) -> u32 {
        let at = c as usize * self.memo.borrow().groups + group as usize;
        if let Some(&m) = self
            .memo
            .borrow()
            .unions
            .get(at)
            .filter(|m| **m & DONE != 0)
        {
            return m;
        }
        // A collection whose values hold none of the bytes the group's pipelines need is not
        // searched item by item.
        let screened = self.hides(c)
            || self
                .crs
                .groups
                .get(group as usize)
                .and_then(|g| g.screen)
                .is_some_and(|s| !self.collection_bytes(c).intersects(s));
        let union = if screened {
            DONE
        } else {
            DONE | self.selected_union(c, None, group)
        };
        let mut memo = self.memo.borrow_mut();
        if memo.unions.len() <= at {
            memo.unions.resize(at + 1, 0);
        }
        // (Kept only where `Memo::new` will find it to zero it.)
        if let (Ok(set), Some(slot)) = (u32::try_from(at), memo.unions.get_mut(at)) {
            *slot = union;
            memo.unions_set.push(set);
        }
        union
    }

    /// Whether collection `c` shows no items though the exchange has them: ModSecurity fills
    /// `REQUEST_BODY` for URL-encoded bodies and bodies no processor parsed, not for JSON, XML
    /// or multipart ones.
    fn hides(&self, c: Collection) -> bool {
        c == Collection::RequestBody
            && matches!(
                self.state.body_processor.as_deref(),
                Some("JSON" | "XML" | "MULTIPART")
            )
    }

    /// The bytes of the values of collection `c`'s items, kept for the transaction.
    fn collection_bytes(&self, c: Collection) -> ByteSet {
        if let Some(Some(bytes)) = self.memo.borrow().collection_bytes.get(c as usize) {
            return *bytes;
        }
        let names = c.names_of().is_some();
        let base = self.ex.base_index(c);
        let mut memo = self.memo.borrow_mut();
        let mut bytes = ByteSet::default();
        for (n, item) in self.ex.items(c).iter().enumerate() {
            let raw = if names {
                item.name().as_bytes()
            } else {
                item.value()
            };
            let key = u32::try_from((base + n) * 2 + usize::from(names)).unwrap_or(u32::MAX);
            bytes = bytes.union(memo.bytes_of(key, SAME, raw));
        }
        let at = c as usize;
        if memo.collection_bytes.len() <= at {
            memo.collection_bytes.resize(at + 1, None);
        }
        if let Some(slot) = memo.collection_bytes.get_mut(at) {
            *slot = Some(bytes);
        }
        bytes
    }

    /// Whether `value` passes the link's operator, with the capture groups when the link
    /// captures. `expanded` is the link's macro operator as built for this evaluation (`None`
    /// when it did not build: nothing matches it).
    fn test(
        &self,
        link: &Link,
        expanded: Option<&Operator>,
        value: &[u8],
    ) -> (bool, Option<Groups>) {
        match &link.op {
            Op::Static(Operator::Rx(_)) if link.whole_line => {
                if memchr::memchr(b'\n', value).is_some() {
                    return (false, None);
                }
                let whole = link
                    .capture
                    .then(|| smallvec::smallvec![Some(TxValue::from_slice(value))]);
                (true, whole)
            }
            // A long value without any of the pattern's factors does not match it.
            Op::Static(Operator::Rx(_))
                if link.factors.as_ref().is_some_and(|s| !s.admits(value)) =>
            {
                (false, None)
            }
            Op::Static(Operator::Rx(re)) if link.capture => {
                if re.group_info().all_group_len() == 1 {
                    // No groups but the whole match: a plain search finds it.
                    let Some(m) = re.find(value) else {
                        return (false, None);
                    };
                    let whole = TxValue::from_slice(value.get(m.range()).unwrap_or_default());
                    return (true, Some(smallvec::smallvec![Some(whole)]));
                }
                if !re.is_match(value) {
                    return (false, None);
                }
                let mut caps = Captures::all(re.group_info().clone());
                re.captures(value, &mut caps);
                if !caps.is_match() {
                    return (false, None);
                }
                let groups = (0..CAPTURE_NAMES.len())
                    .map(|g| {
                        caps.get_group(g).map(|span| {
                            TxValue::from_slice(value.get(span.range()).unwrap_or_default())
                        })
                    })
                    .collect();
                (true, Some(groups))
            }
            Op::Static(op) => (op.matches(value), None),
            Op::Macro { .. } => (expanded.is_some_and(|op| op.matches(value)), None),
            Op::DetectSqli => (detect_sqli(value), None),
            Op::DetectXss => (detect_xss(value), None),
        }
    }

    /// Calls `f` with every value a link reads.
    fn for_each_value<'v>(&'v self, rule: &CRule, link: &'v Link, mut f: impl FnMut(Val<'v>)) {
        let mut removed: Vec<&Var> = Vec::new();
        if !self.state.removed_targets_by_id.is_empty()
            || !self.state.removed_targets_by_tag.is_empty()
        {
            removed.extend(
                self.state
                    .removed_targets_by_id
                    .iter()
                    .filter(|(ids, _)| ids.iter().any(|(a, b)| (*a..=*b).contains(&rule.id)))
                    .map(|(_, v)| v),
            );
            removed.extend(
                self.state
                    .removed_targets_by_tag
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
            // (`TX` members come selected: see `for_each_member`.)
            let selected = matches!(var.source, Source::Tx);
            let keep = |member: &str| {
                (selected || var.select.selects(member))
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
            if let Some((k, v)) = self.state.tx.get_key_value(name.as_str()) {
                f(Cow::Borrowed(&**k), Cow::Borrowed(v.as_slice()), None);
            }
            return;
        }
        if let Source::Exchange(c) = &var.source {
            if !self.hides(*c) {
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

    /// Every member of a collection that is not an exchange item (of `TX`, only the selected
    /// ones).
    fn members<'v>(&'v self, var: &Var) -> Vec<Member<'v>> {
        let one = |v: Vec<u8>| vec![(Cow::Borrowed(""), Cow::Owned(v), None)];
        match &var.source {
            // Exchange items are visited in place by `for_each_member`.
            Source::Exchange(_) => Vec::new(),
            Source::Tx => {
                // The selected ones, in name order, as ModSecurity lists them.
                let mut all: Vec<Member<'v>> = self
                    .state
                    .tx
                    .iter()
                    .filter(|(k, _)| var.select.selects(k))
                    .map(|(k, v)| (Cow::Borrowed(&**k), Cow::Borrowed(v.as_slice()), None))
                    .collect();
                all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                all
            }
            Source::MatchedVar => self
                .matched()
                .last()
                .iter()
                .map(|(_, v)| (Cow::Borrowed(""), Cow::Borrowed(v.as_slice()), None))
                .collect(),
            Source::MatchedVarName => self
                .matched()
                .last()
                .iter()
                .map(|(n, _)| (Cow::Borrowed(""), Cow::Borrowed(n.as_bytes()), None))
                .collect(),
            Source::MatchedVars => self
                .matched()
                .iter()
                .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_slice()), None))
                .collect(),
            Source::MatchedVarsNames => self
                .matched()
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
                .state
                .body_processor
                .iter()
                .map(|p| (Cow::Borrowed(""), Cow::Borrowed(p.as_bytes()), None))
                .collect(),
            Source::Xml { attributes } => {
                if self.state.body_processor.as_deref() != Some("XML") {
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

    /// Sets `TX` variable `name` (lowercase) to `value`, in place when it exists; `interned`
    /// is the name as an `Arc` when the caller has one.
    fn set_tx(&mut self, name: &str, interned: Option<&Arc<str>>, value: &[u8]) {
        let value = value.get(..MAX_TX_VALUE).unwrap_or(value);
        if let [digit @ b'0'..=b'9'] = name.as_bytes() {
            self.state.captured |= 1 << (digit - b'0');
        }
        if let Some(slot) = self.state.tx.get_mut(name) {
            slot.clear();
            slot.extend_from_slice(value);
            return;
        }
        if self.state.tx.len() >= MAX_TX_VARS {
            return;
        }
        let key = interned.cloned().unwrap_or_else(|| Arc::from(name));
        self.state.tx.insert(key, TxValue::from_slice(value));
    }

    fn setvar(&mut self, sv: &SetVar, rule: &CRule) {
        let (SetVar::Set(name, _)
        | SetVar::Add(name, _)
        | SetVar::Sub(name, _)
        | SetVar::Delete(name)) = sv;
        // (Expanded into the transaction's buffers: no allocation per setvar.)
        let (mut key_buf, mut value_buf) = std::mem::take(&mut self.scratch);
        key_buf.clear();
        value_buf.clear();
        // A name with no macro is used as parsed (lowercase, interned).
        let (key, interned): (&str, _) = if self.expand_pieces(name, rule, &mut key_buf) {
            key_buf.make_ascii_lowercase();
            (&key_buf, None)
        } else {
            (name, Some(&name.text))
        };
        let expanded = |t: &Self, value: &super::MacroText, buf: &mut String| -> bool {
            t.expand_pieces(value, rule, buf)
        };
        match sv {
            SetVar::Set(_, value) => {
                let value: &str = if expanded(self, value, &mut value_buf) {
                    &value_buf
                } else {
                    value
                };
                self.set_tx(key, interned, value.as_bytes());
            }
            SetVar::Add(_, value) | SetVar::Sub(_, value) => {
                let value: &str = if expanded(self, value, &mut value_buf) {
                    &value_buf
                } else {
                    value
                };
                let delta: i64 = value.trim().parse().unwrap_or(0);
                let now: i64 = self
                    .state
                    .tx
                    .get(key)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let next = if matches!(sv, SetVar::Add(..)) {
                    now.saturating_add(delta)
                } else {
                    now.saturating_sub(delta)
                };
                let mut digits = [0_u8; 24];
                let len = {
                    let mut out = &mut digits[..];
                    // 24 bytes hold any i64.
                    let _ = std::io::Write::write_fmt(&mut out, format_args!("{next}"));
                    24 - out.len()
                };
                self.set_tx(key, interned, digits.get(..len).unwrap_or_default());
            }
            SetVar::Delete(_) => {
                self.state.tx.remove(key);
            }
        }
        self.scratch = (key_buf, value_buf);
    }

    fn ctl(&mut self, ctl: &Ctl) {
        match ctl {
            Ctl::RuleEngine(mode) => self.state.engine = *mode,
            Ctl::RemoveById(ids) => self.state.removed_ids.extend(ids.iter().copied()),
            Ctl::RemoveByTag(tag) => self.state.removed_tags.push(tag.clone()),
            Ctl::RemoveTargetById(ids, var) => {
                self.state
                    .removed_targets_by_id
                    .push((ids.clone(), var.clone()));
            }
            Ctl::RemoveTargetByTag(tag, var) => {
                self.state
                    .removed_targets_by_tag
                    .push((tag.clone(), var.clone()));
            }
            Ctl::RequestBodyProcessor(p) => self.state.body_processor = Some(p.clone()),
            Ctl::ForceRequestBodyVariable | Ctl::Ignored => {}
        }
    }

    /// Expands `%{...}` macros; text with none is returned as it is.
    fn expand<'t>(&self, text: &'t str, rule: &CRule) -> Cow<'t, str> {
        match pieces(text) {
            Some(pieces) => {
                let mut out = String::with_capacity(text.len() + 16);
                self.push_pieces(&pieces, rule, &mut out);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(text),
        }
    }

    /// Appends `text` with its `%{...}` macros (split at load) expanded to `out`, when it
    /// has macros (and says whether it had: text without leaves `out` as it is).
    fn expand_pieces(&self, text: &super::MacroText, rule: &CRule, out: &mut String) -> bool {
        let Some(pieces) = &text.pieces else {
            return false;
        };
        self.push_pieces(pieces, rule, out);
        true
    }

    fn push_pieces(&self, pieces: &[Piece], rule: &CRule, out: &mut String) {
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Tx(var) => {
                    if let Some(v) = self.state.tx.get(&**var) {
                        out.push_str(&String::from_utf8_lossy(v));
                    }
                }
                Piece::Macro(name) => self.push_macro(name, rule, out),
            }
        }
    }

    /// Appends the value of macro `name` (any case; `tx.` macros are [`Piece::Tx`]) to `out`.
    fn push_macro(&self, name: &str, rule: &CRule, out: &mut String) {
        let mut text = |b: &[u8]| out.push_str(&String::from_utf8_lossy(b));
        let prefixed = |prefix: &str| {
            name.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .and_then(|_| name.get(prefix.len()..))
        };
        let is = |m: &str| name.eq_ignore_ascii_case(m);
        if is("matched_var") {
            if let Some((_, v)) = self.matched().last() {
                text(v);
            }
        } else if is("matched_var_name") {
            if let Some((n, _)) = self.matched().last() {
                text(n.as_bytes());
            }
        } else if is("rule.id") {
            text(rule.id.to_string().as_bytes());
        } else if is("rule.msg") {
            text(rule.msg.as_deref().unwrap_or_default().as_bytes());
        } else if is("remote_addr") {
            text(self.remote_addr.as_bytes());
        } else if is("unique_id") {
            text(b"portcullis");
        } else if is("reqbody_error_msg") {
            if let Some(e) = self.ex.body_error() {
                text(e.to_string().as_bytes());
            }
        } else if is("request_line") {
            if let Some(i) = self.ex.items(Collection::RequestLine).first() {
                text(i.value());
            }
        } else {
            let member = prefixed("request_headers.")
                .map(|m| (m, Collection::RequestHeaders))
                .or_else(|| prefixed("args.").map(|m| (m, Collection::Args)));
            if let Some((member, c)) = member
                && let Some(i) = self
                    .ex
                    .items(c)
                    .iter()
                    .find(|i| i.name().eq_ignore_ascii_case(member))
            {
                text(i.value());
            }
        }
    }
}

/// A piece of a [`super::MacroText`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(Box<str>),
    /// `%{tx.NAME}`, the name lowercase.
    Tx(Box<str>),
    /// Any other macro, by its name as written.
    Macro(Box<str>),
}

/// The pieces of `text`: its literal text and its macros, `%{` to the next `}` (a `%{` with
/// no `}` after it is text); `None` without a macro.
pub(crate) fn pieces(text: &str) -> Option<Box<[Piece]>> {
    let first = macro_start(text)?;
    let mut out = Vec::new();
    let mut literal = text.get(..first).unwrap_or_default().to_owned();
    let mut rest = text.get(first..).unwrap_or_default();
    while let Some(start) = macro_start(rest) {
        literal.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 2..).unwrap_or_default();
        let Some(end) = after.find('}') else {
            literal.push_str(rest.get(start..).unwrap_or_default());
            rest = "";
            break;
        };
        if !literal.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut literal).into()));
        }
        let name = after.get(..end).unwrap_or_default();
        let tx = name
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("tx."))
            .and_then(|_| name.get(3..));
        out.push(match tx {
            Some(var) => Piece::Tx(var.to_ascii_lowercase().into()),
            None => Piece::Macro(name.into()),
        });
        rest = after.get(end + 1..).unwrap_or_default();
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Piece::Text(literal.into()));
    }
    Some(out.into())
}

/// Where the first `%{` of `text` is (`str::find` with a string builds a searcher per call).
fn macro_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'%', bytes).find(|&at| bytes.get(at + 1) == Some(&b'{'))
}

/// Every bit of [`Suspended::captured`].
const ALL_CAPTURES: u16 = (1 << 10) - 1;

/// The `TX` names of the capture groups.
const CAPTURE_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

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

/// libinjection's SQLi verdict on `value`.
pub(crate) fn detect_sqli(value: &[u8]) -> bool {
    if one_plain_token(value) || plain_words(value) {
        return false;
    }
    guarded(|| crate::sqli::is_sqli(value))
}

/// Whether libinjection reads `value` as at most one token that cannot be SQLi: nothing;
/// digits only (one number); or a letter followed by letters, digits and `_` (one word, with
/// no quote, `.` or backtick to split or re-type it). A single token's fingerprint is one
/// character, and the only one-character fingerprint on libinjection's list is `X`, the type
/// of characters these values do not have. The shortcut is checked against libinjection on
/// every word of its keyword table (see the tests).
pub(crate) fn one_plain_token(value: &[u8]) -> bool {
    match value.split_first() {
        None => true,
        Some((first, rest)) if first.is_ascii_digit() => rest.iter().all(u8::is_ascii_digit),
        Some((first, rest)) if first.is_ascii_alphabetic() => {
            rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        _ => false,
    }
}

/// Whether libinjection reads `value` as barewords alone, which it never flags: words
/// separated by spaces, each an ASCII letter followed by letters, digits, `_` and `.` (one
/// word token to libinjection's tokenizer, which splits a word at a dot only after a keyword),
/// where no word, no part of a word before a dot, and no two neighbouring words joined by a
/// space (libinjection merges such pairs into one token, as `ORDER BY`) is a word of its
/// keyword table. Its folding rules change barewords only by that merging, so the
/// fingerprint is `n` to `nnnnn`, none of which is on its list. The tests check the
/// shortcut against libinjection on words from its keyword table and on ordinary text.
pub(crate) fn plain_words(value: &[u8]) -> bool {
    let mut previous: Option<&[u8]> = None;
    let mut any = false;
    for word in value.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let plain = word.len() < 32
            && word.first().is_some_and(u8::is_ascii_alphabetic)
            && word
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.');
        if !plain || crate::sqli::is_keyword(word) {
            return false;
        }
        if memchr::memchr_iter(b'.', word)
            .any(|at| crate::sqli::is_keyword(word.get(..at).unwrap_or_default()))
        {
            return false;
        }
        if let Some(before) = previous {
            let mut pair = [0_u8; 64];
            if let Some((a, rest)) = pair.split_at_mut_checked(before.len())
                && let Some((space, b)) = rest.split_first_mut()
                && let Some(b) = b.get_mut(..word.len())
            {
                a.copy_from_slice(before);
                *space = b' ';
                b.copy_from_slice(word);
            }
            let joined = before.len() + 1 + word.len();
            if crate::sqli::is_keyword(pair.get(..joined).unwrap_or_default()) {
                return false;
            }
        }
        previous = Some(word);
        any = true;
    }
    any
}

/// libinjection's XSS verdict on `value`. A value with neither `<` nor `=` is not XSS to it in
/// any of its five contexts: tags, comments and doctypes start at `<`, and an attribute value
/// is judged by the attribute named before it, which only `=` gives it (the value a quoted or
/// unquoted context starts with follows no name). The tests check this against libinjection.
pub(crate) fn detect_xss(value: &[u8]) -> bool {
    if memchr::memchr2(b'<', b'=', value).is_none() {
        return false;
    }
    guarded(|| libinjectionrs::detect_xss(value).is_injection())
}

/// Runs a detector; if it panics on some input, the input counts as an attack
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::request::ParseOptions;

    fn form(body: &[u8]) -> Exchange {
        let (parts, ()) = http::Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(())
            .unwrap()
            .into_parts();
        Exchange::from_request(&parts, body, ParseOptions::default())
    }

    #[test]
    fn macros_expand_as_modsecurity_reads_them() {
        let c = Crs::load(
            &[(
                "t.conf".to_owned(),
                "SecRule ARGS \"@rx ^(a)(b)\" \"id:7,phase:2,pass,capture,msg:'m'\"".to_owned(),
            )],
            std::path::Path::new("."),
        )
        .unwrap();
        let ex = form(b"x=ab");
        let mut t = c.transaction(&ex, "192.0.2.1");
        t.run(1);
        t.run(2);
        t.set_tx("score", None, b"5");
        t.set_tx("mixed_case", None, "caf\u{e9}".as_bytes());
        let rule = c.rules.first().unwrap();
        for (text, want) in [
            ("plain", None),
            ("", None),
            ("100%", None),
            ("%{tx.0}", Some("ab")),
            ("/%{tx.0}/", Some("/ab/")),
            (
                "%{TX.Score}%{tx.score}x%{tx.mixed_case}",
                Some("55xcaf\u{e9}"),
            ),
            ("a%{tx.missing}b", Some("ab")),
            (
                "%{matched_var}=%{MATCHED_VAR_NAME};%{rule.id}/%{remote_addr}/%{unknown.thing}",
                Some("ab=ARGS:x;7/192.0.2.1/"),
            ),
            ("%{tx.1}%{tx.2}%{tx.3}", Some("ab")),
            ("%{", Some("%{")),
            ("a%{tx.score", Some("a%{tx.score")),
            ("%{tx.score}%{", Some("5%{")),
            ("%%{tx.score}}", Some("%5}")),
            ("%{}%{tx.}", Some("")),
        ] {
            let mut got = String::new();
            let split = crate::crs::MacroText::new(text);
            assert_eq!(
                t.expand_pieces(&split, rule, &mut got),
                want.is_some(),
                "{text:?}"
            );
            assert_eq!(got, want.unwrap_or_default(), "{text:?}");
            assert_eq!(t.expand(text, rule), want.unwrap_or(text), "{text:?}");
        }
    }

    #[test]
    fn a_large_transaction_does_not_leave_its_memo_to_the_thread() {
        let rules = r#"SecRule ARGS "@rx zz" "id:1,phase:2,pass,t:lowercase""#;
        let c = Crs::load(
            &[("t.conf".to_owned(), rules.to_owned())],
            std::path::Path::new("."),
        )
        .unwrap();
        let pooled = || MEMO_POOL.with(|p| p.take()).map(|m| m.retained_bytes());
        c.evaluate_request(&form(b"a=ABC"), "127.0.0.1");
        assert!(pooled().is_some_and(|b| b <= MAX_POOLED_BYTES));
        // Lowercasing 2 MiB of arguments fills the arena beyond the bound.
        let big = format!("a={}", "X".repeat(2 << 20));
        c.evaluate_request(&form(big.as_bytes()), "127.0.0.1");
        assert_eq!(pooled(), None);
    }
}
