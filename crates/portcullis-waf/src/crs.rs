//! The OWASP Core Rule Set (and other SecLang rule sets) on the portcullis engine.
//!
//! [`Crs::load_dir`] reads a CRS directory the way CRS is installed: `crs-setup.conf` (or the
//! `.example`), then `rules/*.conf` in name order, with `.data` files beside them for
//! `@pmFromFile`. Each directive is compiled once; a construct this engine does not support is
//! a load error naming the file, the line and the construct, never silently skipped.
//!
//! Rules run with ModSecurity semantics: phases 1-4 in order, the `TX` collection with
//! `setvar` and `%{...}` macros, chains, `skipAfter` to markers, captures, `ctl:` changes for
//! the rest of the transaction, and the rule set's own anomaly scoring and blocking
//! evaluation (rules 949110/959100).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;

use crate::operator::Operator;
use crate::seclang::{self, Action, Directive, Key, Located, Origin, Variable};
use crate::transform::Transform;
use crate::variable::Collection;

mod exec;
pub mod ftw;
mod gate;
mod needs;

pub use exec::{CrsMatch, CrsOutcome, Suspended, Transaction};

/// Why a rule set did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct CrsError {
    /// Where.
    pub origin: Origin,
    /// What, naming the construct and, where there is one, the fix.
    pub problem: String,
}

impl From<seclang::SyntaxError> for CrsError {
    fn from(e: seclang::SyntaxError) -> Self {
        Self {
            origin: e.origin,
            problem: e.problem,
        }
    }
}

/// What a rule does when it matches (and the engine is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disruptive {
    Pass,
    /// `block`: whatever the phase's default action says.
    Block,
    Deny,
    Drop,
    Allow,
}

/// A variable a rule reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A collection of the exchange.
    Exchange(Collection),
    Tx,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
    RequestUriRaw,
    RemoteAddr,
    UniqueId,
    RequestBodyLength,
    FilesCombinedSize,
    ArgsCombinedSize,
    ReqbodyProcessor,
    /// `XML:/*` (text content) or `XML://@*` (attribute values) of an XML body.
    Xml {
        attributes: bool,
    },
    /// Collections this engine does not fill (`MULTIPART_PART_HEADERS`, ...): empty.
    Empty,
}

/// Selection of members.
#[derive(Debug, Clone)]
pub(crate) enum Select {
    All,
    Name(String),
    /// A key regex, with a literal every matching name holds (see [`name_literal`]).
    Regex(Arc<Regex>, Option<NameLiteral>),
}

/// A literal that a key regex needs in a name: at its start, or anywhere in it. Names are
/// tested against it (without case) before the regex runs.
#[derive(Debug, Clone)]
pub(crate) struct NameLiteral {
    anchored: bool,
    text: Box<[u8]>,
    /// Whether the regex is this literal and nothing more (`^header_name_920450_`): then the
    /// literal decides alone.
    whole: bool,
}

impl NameLiteral {
    #[inline]
    fn admits(&self, name: &[u8]) -> bool {
        let n = self.text.len();
        if self.anchored {
            name.get(..n)
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.text))
        } else {
            name.windows(n).any(|w| w.eq_ignore_ascii_case(&self.text))
        }
    }
}

/// The literal a key regex needs in every name it matches: its leading run of letters,
/// digits and `_` (after a `^`, at the name's start), without a last character that a
/// quantifier makes optional; none for a regex with an alternation or a run shorter than
/// three bytes.
fn name_literal(src: &str) -> Option<NameLiteral> {
    if src.contains('|') {
        return None;
    }
    let (anchored, rest) = match src.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, src),
    };
    let bytes = rest.as_bytes();
    let run = bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let optional_last = matches!(bytes.get(run), Some(b'*' | b'?' | b'{'));
    let len = if optional_last {
        run.checked_sub(1)?
    } else {
        run
    };
    let text = bytes.get(..len).filter(|t| t.len() >= 3)?;
    Some(NameLiteral {
        anchored,
        text: text.into(),
        whole: len == bytes.len(),
    })
}

impl Select {
    #[inline]
    pub(crate) fn selects(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Name(n) => n.eq_ignore_ascii_case(name),
            Self::Regex(re, literal) => match literal {
                // (Key regexes match without case, as the literal does.)
                Some(l) if l.whole => l.admits(name.as_bytes()),
                Some(l) => l.admits(name.as_bytes()) && re.is_match(name.as_bytes()),
                None => re.is_match(name.as_bytes()),
            },
        }
    }
}

/// One compiled variable.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    pub(crate) source: Source,
    /// The collection's name, uppercase.
    pub(crate) name: Arc<str>,
    pub(crate) select: Select,
    pub(crate) count: bool,
    pub(crate) exclude: bool,
    /// The link's exclusions of this variable's collection (filled once the set is loaded).
    pub(crate) excluded: Vec<Select>,
}

/// An operator, compiled at load time or, when its parameter holds macros, at run time.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Static(Operator),
    /// A parameter with `%{...}`: expanded, then compiled, per evaluation.
    Macro {
        name: String,
        param: String,
        /// For a parameter that is one `%{tx.NAME}`: the operator built, at load, from the
        /// value the rule set's static start gives that variable, used while it still holds
        /// that value (CRS's `@within %{tx.allowed_methods}` and the like).
        preset: Option<Box<Preset>>,
    },
    DetectSqli,
    DetectXss,
}

/// A macro operator built ahead for one value of the `TX` variable its parameter names.
#[derive(Debug, Clone)]
pub(crate) struct Preset {
    /// The variable (lowercase, without `tx.`).
    pub(crate) tx: String,
    pub(crate) value: Vec<u8>,
    pub(crate) op: Operator,
}

/// `setvar`: the `TX` variable's name (lowercase, without `tx.`; shared with the
/// transactions' `TX` maps, so setting it allocates no name) and the value's text.
#[derive(Debug, Clone)]
pub(crate) enum SetVar {
    Set(MacroText, MacroText),
    Add(MacroText, MacroText),
    Sub(MacroText, MacroText),
    Delete(MacroText),
}

/// A text that may hold `%{...}` macros, split into its pieces at load (so a transaction
/// expands it without searching it).
#[derive(Debug, Clone)]
pub(crate) struct MacroText {
    pub(crate) text: Arc<str>,
    /// `None`: no macro, the text is used as it is.
    pub(crate) pieces: Option<Box<[exec::Piece]>>,
}

impl MacroText {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: Arc::from(text),
            pieces: exec::pieces(text),
        }
    }
}

impl std::ops::Deref for MacroText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl SetVar {
    /// The variable's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Set(name, _) | Self::Add(name, _) | Self::Sub(name, _) | Self::Delete(name) => {
                name
            }
        }
    }
}

/// `ctl:`.
#[derive(Debug, Clone)]
pub(crate) enum Ctl {
    RuleEngine(EngineMode),
    RemoveById(Vec<(u32, u32)>),
    RemoveByTag(String),
    RemoveTargetById(Vec<(u32, u32)>, Var),
    RemoveTargetByTag(String, Var),
    ForceRequestBodyVariable,
    RequestBodyProcessor(String),
    /// `auditEngine`, `auditLogParts`: about the audit log of ModSecurity, nothing here.
    Ignored,
}

/// `SecRuleEngine` / `ctl:ruleEngine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    /// Rules run and disrupt.
    On,
    /// Rules run and are logged; nothing is disrupted.
    DetectionOnly,
    /// No rules run.
    Off,
}

/// One link of a rule (the rule itself, or a rule chained to it).
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) vars: Vec<Var>,
    pub(crate) excludes: Vec<Var>,
    pub(crate) transforms: Arc<[Transform]>,
    /// The interned pipeline (transformed values are cached per transaction by it).
    pub(crate) pipeline: u32,
    /// For `@rx`: the pattern (hex escapes rewritten), and its place in its pipeline's
    /// multi-pattern group once the set is built.
    pub(crate) rx: Option<String>,
    /// For `@pm` and `@pmFromFile`: the phrases, while the groups are built (grouped like
    /// `@rx` patterns, see [`Search::Phrases`]); dropped once they are.
    pub(crate) phrases: Option<Arc<[String]>>,
    /// For `@rx` and `@pm`: bytes one of which every match contains (see [`needs`]). A value
    /// with none of them is not searched.
    pub(crate) screen: Option<needs::ByteSet>,
    /// For `@rx`: strings one of which every match contains (see [`needs::FactorScreen`]):
    /// a long value with none of them is not searched.
    pub(crate) factors: Option<Arc<needs::FactorScreen>>,
    /// The link's pattern in the multi-pattern groups: (group, bit of the pattern in the
    /// group's match mask).
    pub(crate) slot: Option<(u32, u16)>,
    /// Whether the link's pattern is `^.*$`, which matches a value with no line feed, all of
    /// it (`.` is any byte but `\n`, `$` the end of the value): decided without the regex.
    pub(crate) whole_line: bool,
    /// Whether a group miss over the link's collections can prove it does not match: a
    /// grouped, non-negated `@rx` (with `multiMatch`, one whose bit reads every stage).
    pub(crate) prefilter: bool,
    pub(crate) op: Op,
    pub(crate) negated: bool,
    /// `SecAction`: no variables, always matches.
    pub(crate) always: bool,
    pub(crate) capture: bool,
    pub(crate) multi_match: bool,
    /// For `multiMatch`: the pipeline of each prefix of its transformations, shortest first
    /// (the values it tests after each one).
    pub(crate) stages: Box<[u32]>,
    pub(crate) setvars: Vec<SetVar>,
    pub(crate) ctls: Vec<Ctl>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct CRule {
    pub(crate) id: u32,
    pub(crate) phase: u8,
    pub(crate) origin: Origin,
    pub(crate) msg: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) log: bool,
    pub(crate) disruptive: Disruptive,
    pub(crate) status: Option<u16>,
    pub(crate) skip_after: Option<String>,
    pub(crate) skip: u32,
    pub(crate) links: Vec<Link>,
}

/// A step of a phase.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Rule(usize),
    Marker(String),
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Crs {
    pub(crate) rules: Vec<CRule>,
    /// Steps of phases 1 to 5.
    pub(crate) phases: [Vec<Step>; 5],
    /// What `block` means per phase (from `SecDefaultAction`).
    pub(crate) block_means: [Disruptive; 5],
    pub(crate) engine: EngineMode,
    /// The `@rx` patterns of the links, by pipeline, in overlapping multi-pattern searches of
    /// up to [`GROUP_SIZE`] patterns: a value is searched once per group for all of them.
    pub(crate) groups: Vec<Group>,
    /// The interned transformation pipelines, with every prefix of each.
    pub(crate) pipelines: Vec<Arc<[Transform]>>,
    /// Per pipeline of two or more transformations: the pipeline without its last one (so a
    /// value goes through each shared prefix once).
    pub(crate) parents: Vec<Option<u32>>,
    /// Per pipeline of two or more transformations: the pipeline without its next-to-last
    /// one, when the rules have that one too. When the step left out leaves a value as it
    /// is, the pipeline's value is its skip's, so pipelines that differ only in steps a
    /// value passes through unchanged transform it once (a prose value goes through
    /// `cmdLine` once, not once per such pipeline). (Pipelines the rules do not have are not
    /// added: each one widens every item's row in a transaction's memo.)
    pub(crate) skips: Vec<Option<u32>>,
    /// Per pipeline: the bytes without which it leaves a value as it is (the union of its
    /// transformations' [`Transform::trigger`]s), when each of them has such bytes.
    pub(crate) triggers: Vec<Option<needs::ByteSet>>,
    /// Per phase and step: for a rule with `skipAfter`, the step after its marker.
    pub(crate) jumps: [Vec<usize>; 5],
    /// The static start of phase 1, run once at load.
    pub(crate) prelude: Option<exec::Prelude>,
    /// Per phase and step: what is known of its rule before it runs.
    pub(crate) gates: [Vec<gate::Gate>; 5],
    /// The collection of each bit of a gate's mask.
    pub(crate) by_bit: [Option<crate::variable::Collection>; 64],
    /// The `MATCHED_VARS` of the rules whose gate is [`gate::Gate::Always`].
    pub(crate) fixed: Vec<exec::MatchedVars>,
    /// This rule set's identity, for the per-thread cache of header verdicts (a clone keeps
    /// it: it holds the same rules).
    pub(crate) id: u64,
    /// How many distinct values (of headers, cookies, paths, argument names) a thread keeps
    /// the group verdicts of, for this rule set (0: none).
    pub(crate) value_cache: usize,
}

/// The next rule set's [`Crs::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How many distinct values a thread keeps the verdicts of, per rule set, by default.
pub const DEFAULT_VALUE_CACHE: usize = 512;

/// A multi-pattern search over up to [`GROUP_SIZE`] `@rx` patterns of rules that read the same
/// collections, whatever their pipelines: an item is searched once per distinct value the
/// members' pipelines make of it (for ordinary values, mostly one), and each pattern's bit is
/// taken from the search of its own pipeline's value.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) search: Search,
    /// Whether the group holds one pattern. Its regex is then a leftmost-first search,
    /// which can stop at the first match; a larger group's searches all matches, overlapping.
    pub(crate) single: bool,
    /// Per distinct pipeline of its patterns: the bits of those patterns in the group's
    /// mask, the pipeline, and the raw bytes they need.
    pub(crate) members: Vec<GroupMember>,
    /// Bytes one of which an item's value must hold, before any pipeline, for any pattern of
    /// the group to match (the union of the members' screens), when known: a collection
    /// whose values hold none of them is not searched at all.
    pub(crate) screen: Option<needs::ByteSet>,
    /// Bytes one of which every match of every pattern contains, when there are such: a
    /// value with none of them is not searched.
    pub(crate) needs: Option<needs::ByteSet>,
    /// Per pattern, in bit order: the bytes one of which each of its matches contains (when
    /// known), and the pattern on its own. A value that only one pattern of the group could
    /// match is searched by that pattern alone, which is faster than the whole group and
    /// can skip text by its own literals.
    pub(crate) solo: Vec<(Option<needs::ByteSet>, Option<Arc<Regex>>)>,
    /// Per pattern, in bit order: its [`needs::FactorScreen`], run before the pattern is
    /// searched alone over a long value.
    pub(crate) solo_screens: Vec<Option<Arc<needs::FactorScreen>>>,
}

/// How a [`Group`] searches a value for all its patterns at once.
#[derive(Debug, Clone)]
pub(crate) enum Search {
    /// `@rx` patterns, one regex pattern each.
    Patterns(Regex),
    /// `@pm` and `@pmFromFile` links: one automaton over all their phrases (without ASCII
    /// case), with the bits of the links holding each phrase.
    Phrases {
        automaton: aho_corasick::AhoCorasick,
        bits: Vec<u32>,
    },
    /// `@detectSQLi` or `@detectXSS` links: every bit is set when libinjection finds an
    /// injection.
    Detect(Detector),
}

/// The libinjection check of a [`Search::Detect`] group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    Sqli,
    Xss,
}

impl Detector {
    pub(crate) fn detects(self, value: &[u8]) -> bool {
        match self {
            Self::Sqli => exec::detect_sqli(value),
            Self::Xss => exec::detect_xss(value),
        }
    }
}

impl Group {
    /// The bits of the group's patterns that match `value`, all of them (`None` when the
    /// search fails, which a well-built group does not).
    pub(crate) fn all_matches(
        &self,
        value: &[u8],
        set: &mut regex_automata::PatternSet,
    ) -> Option<u32> {
        let mut mask = 0;
        match &self.search {
            Search::Patterns(regex) => {
                set.clear();
                regex.which_overlapping_matches(&regex_automata::Input::new(value), set);
                for p in set.iter() {
                    mask |= 1 << p.as_usize();
                }
            }
            Search::Phrases { automaton, bits } => {
                let all = bits.iter().fold(0, |all, b| all | b);
                for m in automaton
                    .try_find_overlapping_iter(aho_corasick::Input::new(value))
                    .ok()?
                {
                    mask |= bits.get(m.pattern().as_usize()).copied().unwrap_or(0);
                    if mask == all {
                        break;
                    }
                }
            }
            Search::Detect(detector) => {
                if detector.detects(value) {
                    mask = (1 << self.solo.len()) - 1;
                }
            }
        }
        Some(mask)
    }

    /// Works out the members' screens, and the group's, from the patterns' needs.
    fn screen_members(&mut self, pipelines: &[Arc<[Transform]>]) {
        for member in &mut self.members {
            let needs = self
                .solo
                .iter()
                .enumerate()
                .filter(|(i, _)| member.bits & (1 << i) != 0)
                .try_fold(needs::ByteSet::default(), |acc, (_, (n, _))| {
                    Some(acc.union((*n)?))
                });
            member.screen = needs
                .and_then(|n| needs::needs_before(pipelines.get(member.pipeline as usize)?, n));
        }
        self.screen = self
            .members
            .iter()
            .try_fold(needs::ByteSet::default(), |acc, m| {
                Some(acc.union(m.screen?))
            });
    }
}

/// The patterns of a [`Group`] that read one pipeline's values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupMember {
    /// The bits of those patterns in the group's mask.
    pub(crate) bits: u32,
    pub(crate) pipeline: u32,
    /// Bytes one of which an item's value must hold, before the pipeline, for one of the
    /// patterns to match what the pipeline makes of it (see [`needs::needs_before`]), when
    /// known: the pipeline is not run on a value without them.
    pub(crate) screen: Option<needs::ByteSet>,
}

impl GroupMember {
    /// The members of a group whose patterns, in bit order, read these pipelines (a
    /// `multiMatch` pattern reads several: its bit is set when it matches any of their
    /// values).
    fn by_pipeline<'p>(pipelines: impl Iterator<Item = &'p [u32]>) -> Vec<Self> {
        let mut members: Vec<Self> = Vec::new();
        for (i, reads) in pipelines.enumerate() {
            for &pipeline in reads {
                match members.iter_mut().find(|m| m.pipeline == pipeline) {
                    Some(m) => m.bits |= 1 << i,
                    None => members.push(Self {
                        bits: 1 << i,
                        pipeline,
                        // (Worked out once the pipelines are known: see `screen_members`.)
                        screen: None,
                    }),
                }
            }
        }
        members
    }
}

/// Per-phase defaults from `SecDefaultAction`.
#[derive(Debug, Clone)]
struct Defaults {
    disruptive: Disruptive,
    log: bool,
    transforms: Vec<Transform>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            disruptive: Disruptive::Pass,
            log: true,
            transforms: Vec::new(),
        }
    }
}

struct Loader<'a> {
    data_dir: &'a Path,
    rules: Vec<CRule>,
    steps: Vec<(u8, Step)>,
    defaults: [Defaults; 5],
    engine: EngineMode,
    /// A rule whose last link asked for a chain, still open.
    open_chain: Option<usize>,
    data: HashMap<String, Vec<String>>,
    pipelines: Vec<Arc<[Transform]>>,
}

fn err(origin: &Origin, problem: impl Into<String>) -> CrsError {
    CrsError {
        origin: origin.clone(),
        problem: problem.into(),
    }
}

impl Crs {
    /// Loads a CRS directory as CRS is installed: `before` (SecLang text, e.g. a test set-up
    /// or engine settings), `crs-setup.conf` (or `crs-setup.conf.example`), `rules/*.conf` in
    /// name order, then `after` (e.g. exclusion rules), with `@pmFromFile` data read from
    /// `rules/`.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, or the first directive that does not compile.
    pub fn load_dir(dir: &Path, before: &str, after: &str) -> Result<Self, CrsError> {
        let origin = |file: &Path| Origin {
            file: file.display().to_string().into(),
            line: 0,
        };
        let rules_dir = dir.join("rules");
        let mut files = Vec::new();
        for setup in ["crs-setup.conf", "crs-setup.conf.example"] {
            let path = dir.join(setup);
            if path.is_file() {
                files.push(path);
                break;
            }
        }
        let mut confs: Vec<_> = std::fs::read_dir(&rules_dir)
            .map_err(|e| {
                err(
                    &origin(&rules_dir),
                    format!("cannot read the rules directory: {e}"),
                )
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        confs.sort();
        files.extend(confs);
        let mut sources = Vec::new();
        if !before.is_empty() {
            sources.push(("(set-up)".to_owned(), before.to_owned()));
        }
        for path in &files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(&origin(path), format!("cannot read: {e}")))?;
            sources.push((path.display().to_string(), text));
        }
        if !after.is_empty() {
            sources.push(("(after)".to_owned(), after.to_owned()));
        }
        Self::load(&sources, &rules_dir)
    }

    /// Loads rule text: `(file name, text)` in order, `@pmFromFile` paths relative to
    /// `data_dir`.
    ///
    /// # Errors
    ///
    /// The first directive that does not parse or compile.
    pub fn load(sources: &[(String, String)], data_dir: &Path) -> Result<Self, CrsError> {
        let mut loader = Loader {
            data_dir,
            rules: Vec::new(),
            steps: Vec::new(),
            defaults: Default::default(),
            engine: EngineMode::On,
            open_chain: None,
            data: HashMap::new(),
            pipelines: Vec::new(),
        };
        for (file, text) in sources {
            for located in seclang::parse(file, text)? {
                loader.directive(located)?;
            }
        }
        if let Some(open) = loader.open_chain.and_then(|i| loader.rules.get(i)) {
            return Err(err(
                &open.origin,
                "the rule asks for a chain, but no rule follows",
            ));
        }
        let mut phases: [Vec<Step>; 5] = Default::default();
        for (phase, step) in loader.steps {
            match step {
                // A marker exists in every phase.
                Step::Marker(name) => {
                    for p in &mut phases {
                        p.push(Step::Marker(name.clone()));
                    }
                }
                Step::Rule(i) => {
                    if let Some(p) = phases.get_mut(usize::from(phase.saturating_sub(1))) {
                        p.push(Step::Rule(i));
                    }
                }
            }
        }
        let block_means = loader.defaults.clone().map(|d| d.disruptive);
        let mut rules = loader.rules;
        for link in rules.iter_mut().flat_map(|r| r.links.iter_mut()) {
            let excludes = &link.excludes;
            for var in &mut link.vars {
                var.excluded = excludes
                    .iter()
                    .filter(|x| x.name == var.name)
                    .map(|x| x.select.clone())
                    .collect();
            }
        }
        // (The empty pipeline is the raw value, which a `multiMatch` link tests first.)
        let mut pipelines = loader.pipelines;
        if !pipelines.iter().any(|p| p.is_empty()) {
            pipelines.push(Arc::from(Vec::new()));
        }
        let raw = pipelines
            .iter()
            .position(|p| p.is_empty())
            .and_then(|at| u32::try_from(at).ok());
        let (pipelines, parents, skips) = with_prefixes(pipelines);
        for link in rules.iter_mut().flat_map(|r| r.links.iter_mut()) {
            if link.multi_match {
                link.stages = (1..=link.transforms.len())
                    .filter_map(|n| {
                        let prefix = link.transforms.get(..n)?;
                        let at = pipelines.iter().position(|p| **p == *prefix)?;
                        u32::try_from(at).ok()
                    })
                    .collect();
            }
        }
        let mut groups = build_groups(&mut rules, raw);
        build_phrase_groups(&mut rules, &mut groups);
        build_detect_groups(&mut rules, &mut groups, raw);
        let jumps = phases.clone().map(|steps| {
            steps
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let marker = match step {
                        Step::Rule(r) => rules.get(*r).and_then(|r| r.skip_after.as_ref()),
                        Step::Marker(_) => None,
                    };
                    marker.map_or(0, |m| {
                        steps
                            .iter()
                            .skip(i + 1)
                            .position(|s| matches!(s, Step::Marker(n) if n == m))
                            .map_or(steps.len(), |p| i + p + 2)
                    })
                })
                .collect()
        });
        let triggers = pipelines
            .iter()
            .map(|p| {
                p.iter().try_fold(needs::ByteSet::default(), |set, t| {
                    Some(set.union(needs::ByteSet::matching(t.trigger()?)))
                })
            })
            .collect();
        for group in &mut groups {
            group.screen_members(&pipelines);
        }
        let mut crs = Self {
            groups,
            pipelines,
            parents,
            skips,
            triggers,
            jumps,
            rules,
            phases,
            block_means,
            engine: loader.engine,
            prelude: None,
            gates: Default::default(),
            fixed: Vec::new(),
            by_bit: gate::by_bit(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            value_cache: DEFAULT_VALUE_CACHE,
        };
        let prelude = crs.prelude();
        for link in crs.rules.iter_mut().flat_map(|r| r.links.iter_mut()) {
            if let Op::Macro {
                name,
                param,
                preset,
            } = &mut link.op
            {
                *preset = prelude.preset(name, param).map(Box::new);
            }
        }
        crs.prelude = Some(prelude);
        (crs.gates, crs.fixed) = gate::gates(&crs);
        Ok(crs)
    }

    /// Sets how many distinct values each thread keeps the verdicts of the rule set's pattern
    /// searches for ([`DEFAULT_VALUE_CACHE`] unless set; 0 keeps none): request and response
    /// header names and values, cookie names and values, the method, the protocol, the path
    /// and its last segment, and argument names, not argument values or bodies. A client
    /// sends the same headers on every request, so each distinct value is searched once per
    /// thread instead of once per request. The verdicts depend on nothing but the value, so
    /// the outcome is the same either way. Values over 1 KiB are not kept; a full cache is
    /// emptied and starts again.
    pub fn set_value_cache(&mut self, entries: usize) {
        self.value_cache = entries;
    }

    /// How many rules (chains count once) the set holds.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// A rule's paranoia level (from its `paranoia-level/N` tag) and phase.
    pub fn rule_level(&self, id: u32) -> Option<(Option<u8>, u8)> {
        let rule = self.rules.iter().find(|r| r.id == id)?;
        let level = rule
            .tags
            .iter()
            .find_map(|t| t.strip_prefix("paranoia-level/")?.parse().ok());
        Some((level, rule.phase))
    }

    /// The rule ids, in load order.
    pub fn rule_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.rules.iter().map(|r| r.id)
    }
}

/// A rule's variables and operator, as loaded.
struct Test {
    vars: Vec<Var>,
    op: Op,
    negated: bool,
    /// For `@rx`: the pattern.
    rx: Option<String>,
    /// See [`Link::phrases`].
    phrases: Option<Arc<[String]>>,
    /// See [`Link::screen`].
    screen: Option<needs::ByteSet>,
}

impl Loader<'_> {
    fn directive(&mut self, located: Located) -> Result<(), CrsError> {
        let origin = located.origin;
        match located.directive {
            Directive::Rule {
                variables,
                operator,
                actions,
            } => {
                let op = self.operator(&origin, &operator.name, &operator.param)?;
                let vars = self.vars(&origin, &variables)?;
                let rx = (operator.name == "rx" && matches!(op, Op::Static(_)))
                    .then(|| crate::operator::rewrite_hex_escapes(&operator.param));
                // (An `@rx` link's screen is set with the groups, which parse its pattern.)
                let phrases: Option<Arc<[String]>> = match (&op, operator.name.as_str()) {
                    (Op::Static(_), "pm") => Some(
                        operator
                            .param
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect(),
                    ),
                    (Op::Static(_), "pmFromFile" | "pmf") => Some(
                        operator
                            .param
                            .split_whitespace()
                            .filter_map(|file| self.data.get(file))
                            .flatten()
                            .cloned()
                            .collect(),
                    ),
                    _ => None,
                };
                let screen = phrases
                    .as_deref()
                    .and_then(|p| needs::phrases_need(p.iter().map(String::as_str)));
                let test = Test {
                    vars,
                    op,
                    negated: operator.negated,
                    rx,
                    phrases,
                    screen,
                };
                self.rule(&origin, Some(test), &actions)
            }
            Directive::Action(actions) => self.rule(&origin, None, &actions),
            Directive::Marker(name) => {
                self.close_chain_check(&origin)?;
                self.steps.push((0, Step::Marker(name)));
                Ok(())
            }
            Directive::DefaultAction(actions) => self.default_action(&origin, &actions),
            Directive::ComponentSignature(_) => Ok(()),
            Directive::UpdateTargetById {
                ids,
                variables,
                replaced,
            } => {
                if replaced.is_some() {
                    return Err(err(
                        &origin,
                        "`SecRuleUpdateTargetById` with a replaced target is not supported: remove the third argument and exclude the old target with `!`",
                    ));
                }
                self.update_targets(&origin, &variables, |r| in_ranges(&ids, r.id))
            }
            Directive::UpdateTargetByTag { tag, variables } => {
                self.update_targets(&origin, &variables, |r| r.tags.contains(&tag))
            }
            Directive::RemoveById(ids) => {
                self.remove_rules(|r| in_ranges(&ids, r.id));
                Ok(())
            }
            Directive::RemoveByTag(tag) => {
                self.remove_rules(|r| r.tags.contains(&tag));
                Ok(())
            }
            Directive::RemoveByMsg(msg) => {
                self.remove_rules(|r| r.msg.as_deref() == Some(msg.as_str()));
                Ok(())
            }
            Directive::RuleEngine(mode) => {
                self.engine = engine_mode(&origin, &mode)?;
                Ok(())
            }
        }
    }

    /// Adds variables (and exclusions) to the rules already loaded that `which` selects.
    fn update_targets(
        &mut self,
        origin: &Origin,
        variables: &[Variable],
        which: impl Fn(&CRule) -> bool,
    ) -> Result<(), CrsError> {
        let (vars, excludes) = self.split_vars(origin, variables)?;
        for rule in self.rules.iter_mut().filter(|r| which(r)) {
            if let Some(first) = rule.links.first_mut() {
                first.vars.extend(vars.iter().cloned());
                first.excludes.extend(excludes.iter().cloned());
            }
        }
        Ok(())
    }

    /// Drops the rules already loaded that `which` selects.
    fn remove_rules(&mut self, which: impl Fn(&CRule) -> bool) {
        let rules = &self.rules;
        self.steps.retain(|(_, s)| match s {
            Step::Rule(i) => !rules.get(*i).is_some_and(&which),
            Step::Marker(_) => true,
        });
    }

    fn close_chain_check(&self, origin: &Origin) -> Result<(), CrsError> {
        if self.open_chain.is_some() {
            return Err(err(
                origin,
                "a rule asked for a chain, but the next directive is not a rule",
            ));
        }
        Ok(())
    }

    fn default_action(&mut self, origin: &Origin, actions: &[Action]) -> Result<(), CrsError> {
        let mut d = Defaults::default();
        let mut phase = None;
        for a in actions {
            match a.name.as_str() {
                "phase" => phase = Some(parse_phase(origin, a.value.as_deref())?),
                "log" => d.log = true,
                "nolog" => d.log = false,
                "auditlog" | "noauditlog" => {}
                "pass" => d.disruptive = Disruptive::Pass,
                "deny" => d.disruptive = Disruptive::Deny,
                "drop" => d.disruptive = Disruptive::Drop,
                "block" => {}
                "t" => push_transform(origin, &mut d.transforms, a.value.as_deref())?,
                "status" | "tag" | "redirect" => {}
                other => {
                    return Err(err(
                        origin,
                        format!("`SecDefaultAction` with the action `{other}` is not supported"),
                    ));
                }
            }
        }
        let phase = phase.ok_or_else(|| err(origin, "`SecDefaultAction` needs a `phase`"))?;
        if let Some(slot) = self.defaults.get_mut(usize::from(phase - 1)) {
            *slot = d;
        }
        Ok(())
    }

    fn rule(
        &mut self,
        origin: &Origin,
        test: Option<Test>,
        actions: &[Action],
    ) -> Result<(), CrsError> {
        let chained_to = self.open_chain.take();
        let mut phase = None;
        let mut id = None;
        let mut msg = None;
        let mut tags = Vec::new();
        let mut log = None;
        let mut disruptive = None;
        let mut status = None;
        let mut skip_after = None;
        let mut skip = 0;
        let mut chain = false;
        let mut transforms: Option<Vec<Transform>> = None;
        let mut capture = false;
        let mut multi_match = false;
        let mut setvars = Vec::new();
        let mut ctls = Vec::new();
        for a in actions {
            let value = a.value.as_deref();
            match a.name.as_str() {
                "id" => {
                    id = Some(
                        value
                            .and_then(|v| v.trim().parse::<u32>().ok())
                            .filter(|id| *id > 0)
                            .ok_or_else(|| {
                                err(
                                    origin,
                                    format!("`id:{}` is not a rule id", value.unwrap_or("")),
                                )
                            })?,
                    );
                }
                "phase" => phase = Some(parse_phase(origin, value)?),
                "msg" => msg = value.map(str::to_owned),
                "tag" => tags.extend(value.map(str::to_owned)),
                "log" => log = Some(true),
                "nolog" => log = Some(false),
                "pass" => disruptive = Some(Disruptive::Pass),
                "block" => disruptive = Some(Disruptive::Block),
                "deny" => disruptive = Some(Disruptive::Deny),
                "drop" => disruptive = Some(Disruptive::Drop),
                "allow" => disruptive = Some(Disruptive::Allow),
                "status" => {
                    status = value.and_then(|v| v.trim().parse::<u16>().ok());
                    if status.is_none() {
                        return Err(err(origin, "`status` needs an HTTP status code"));
                    }
                }
                "chain" => chain = true,
                "skipafter" => skip_after = value.map(str::to_owned),
                "skip" => {
                    skip = value
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        .ok_or_else(|| err(origin, "`skip` needs a number"))?;
                }
                "t" => {
                    let list = transforms.get_or_insert_with(Vec::new);
                    push_transform(origin, list, value)?;
                }
                "capture" => capture = true,
                "multimatch" => multi_match = true,
                "setvar" => setvars.push(parse_setvar(origin, value.unwrap_or(""))?),
                "ctl" => ctls.push(self.parse_ctl(origin, value.unwrap_or(""))?),
                // Metadata and logging details with no effect on matching.
                "ver" | "rev" | "severity" | "logdata" | "auditlog" | "noauditlog" | "accuracy"
                | "maturity" => {}
                // Persistent collections (IP, GLOBAL): CRS opens them only when
                // `tx.enable_default_collections` is 1 (off by default). They are not kept here:
                // `initcol` opens nothing, and rules reading them see empty collections.
                "initcol" => {}
                "expirevar" | "setuid" | "setsid" | "exec" | "append" | "prepend" | "proxy"
                | "redirect" | "pause" | "sanitisearg" | "sanitisematched" | "sanitiseresponse"
                | "deprecatevar" | "setenv" => {
                    return Err(err(
                        origin,
                        format!("the action `{}` is not supported", a.name),
                    ));
                }
                other => return Err(err(origin, format!("unknown action `{other}`"))),
            }
        }
        let (always, test) = match test {
            Some(test) => (false, test),
            None => (
                true,
                Test {
                    vars: Vec::new(),
                    op: Op::Static(Operator::Unconditional),
                    negated: false,
                    rx: None,
                    phrases: None,
                    screen: None,
                },
            ),
        };
        let Test {
            vars,
            op,
            negated,
            rx,
            phrases,
            screen,
        } = test;
        let (vars, excludes): (Vec<Var>, Vec<Var>) =
            vars.into_iter().partition(|v| !is_exclusion(v));
        let excludes = excludes.into_iter().map(|mut v| {
            v.count = false;
            v
        });
        let default_phase = match chained_to {
            Some(parent) => self.rules.get(parent).map_or(2, |r| r.phase),
            None => phase.unwrap_or(2),
        };
        let defaults = self
            .defaults
            .get(usize::from(default_phase.saturating_sub(1)))
            .cloned()
            .unwrap_or_default();
        let transforms: Arc<[Transform]> = transforms.unwrap_or(defaults.transforms).into();
        let pipeline = match self.pipelines.iter().position(|p| *p == transforms) {
            Some(i) => i,
            None => {
                self.pipelines.push(transforms.clone());
                self.pipelines.len() - 1
            }
        };
        let link = Link {
            vars,
            excludes: excludes.collect(),
            pipeline: u32::try_from(pipeline).unwrap_or(u32::MAX),
            // (Worked out with the groups, from the pattern as they parse it.)
            factors: None,
            whole_line: rx.as_deref() == Some("^.*$"),
            rx,
            phrases,
            screen,
            slot: None,
            prefilter: false,
            transforms,
            op,
            negated,
            always,
            capture,
            multi_match,
            stages: Box::default(),
            setvars,
            ctls,
        };
        if let Some(parent) = chained_to {
            // A chained link: its own test and effects; the rule's metadata stays the parent's.
            if id.is_some()
                || phase.is_some()
                || disruptive.is_some() && disruptive != Some(Disruptive::Pass)
            {
                return Err(err(
                    origin,
                    "a chained rule cannot set `id`, `phase` or a disruptive action: put them on the chain's first rule",
                ));
            }
            let rule = self
                .rules
                .get_mut(parent)
                .ok_or_else(|| err(origin, "internal: a chain without its rule"))?;
            rule.links.push(link);
            if chain {
                self.open_chain = Some(parent);
            }
            return Ok(());
        }
        let id = id.ok_or_else(|| err(origin, "a rule needs an `id`"))?;
        let phase = phase.unwrap_or(2);
        let index = self.rules.len();
        self.rules.push(CRule {
            id,
            phase,
            origin: origin.clone(),
            msg,
            tags,
            log: log.unwrap_or(defaults.log),
            disruptive: disruptive.unwrap_or(defaults.disruptive),
            status,
            skip_after,
            skip,
            links: vec![link],
        });
        self.steps.push((phase, Step::Rule(index)));
        if chain {
            self.open_chain = Some(index);
        }
        Ok(())
    }

    fn operator(&mut self, origin: &Origin, name: &str, param: &str) -> Result<Op, CrsError> {
        match name {
            "detectSQLi" => return Ok(Op::DetectSqli),
            "detectXSS" => return Ok(Op::DetectXss),
            _ => {}
        }
        if param.contains("%{") {
            if matches!(name, "rx" | "pm" | "pmFromFile" | "ipMatch") {
                return Err(err(
                    origin,
                    format!(
                        "`@{name}` with a macro in its parameter is not supported (it would compile per request)"
                    ),
                ));
            }
            // Checked now with the macro text, so an unknown operator fails at load time.
            Operator::compile(name, "0").map_err(|e| err(origin, e.to_string()))?;
            return Ok(Op::Macro {
                name: name.to_owned(),
                param: param.to_owned(),
                preset: None,
            });
        }
        if name == "pmFromFile" || name == "pmf" {
            let mut phrases = Vec::new();
            for file in param.split_whitespace() {
                if !self.data.contains_key(file) {
                    let path = self.data_dir.join(file);
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        err(
                            origin,
                            format!("`@pmFromFile {file}`: cannot read {}: {e}", path.display()),
                        )
                    })?;
                    let lines = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned)
                        .collect();
                    self.data.insert(file.to_owned(), lines);
                }
                phrases.extend(self.data.get(file).into_iter().flatten().cloned());
            }
            return Operator::phrases(phrases.iter().map(String::as_str))
                .map(Op::Static)
                .map_err(|e| err(origin, e.to_string()));
        }
        Operator::compile(name, param)
            .map(Op::Static)
            .map_err(|e| err(origin, e.to_string()))
    }

    fn vars(&self, origin: &Origin, variables: &[Variable]) -> Result<Vec<Var>, CrsError> {
        variables.iter().map(|v| compile_var(origin, v)).collect()
    }

    fn split_vars(
        &self,
        origin: &Origin,
        variables: &[Variable],
    ) -> Result<(Vec<Var>, Vec<Var>), CrsError> {
        let all = self.vars(origin, variables)?;
        Ok(all.into_iter().partition(|v| !is_exclusion(v)))
    }

    fn parse_ctl(&self, origin: &Origin, text: &str) -> Result<Ctl, CrsError> {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| err(origin, format!("`ctl:{text}` needs `name=value`")))?;
        let target = |spec: &str| -> Result<Var, CrsError> {
            let vars = seclang::variables(spec).map_err(|e| err(origin, e))?;
            let [v] = vars.as_slice() else {
                return Err(err(origin, format!("`ctl:{text}` takes one target")));
            };
            compile_var(origin, v)
        };
        Ok(match name.trim() {
            "ruleEngine" => Ctl::RuleEngine(engine_mode(origin, value)?),
            "ruleRemoveById" => Ctl::RemoveById(
                parse_ranges(value)
                    .ok_or_else(|| err(origin, format!("`ctl:{text}`: bad id or range")))?,
            ),
            "ruleRemoveByTag" => Ctl::RemoveByTag(value.to_owned()),
            "ruleRemoveTargetById" => {
                let (ids, spec) = value
                    .split_once(';')
                    .ok_or_else(|| err(origin, format!("`ctl:{text}` needs `ID;TARGET`")))?;
                Ctl::RemoveTargetById(
                    parse_ranges(ids)
                        .ok_or_else(|| err(origin, format!("`ctl:{text}`: bad id")))?,
                    target(spec)?,
                )
            }
            "ruleRemoveTargetByTag" => {
                let (tag, spec) = value
                    .split_once(';')
                    .ok_or_else(|| err(origin, format!("`ctl:{text}` needs `TAG;TARGET`")))?;
                Ctl::RemoveTargetByTag(tag.to_owned(), target(spec)?)
            }
            "forceRequestBodyVariable" => Ctl::ForceRequestBodyVariable,
            "requestBodyProcessor" => Ctl::RequestBodyProcessor(value.trim().to_ascii_uppercase()),
            "auditEngine" | "auditLogParts" | "requestBodyAccess" | "responseBodyAccess" => {
                Ctl::Ignored
            }
            other => return Err(err(origin, format!("`ctl:{other}` is not supported"))),
        })
    }
}

fn is_exclusion(v: &Var) -> bool {
    v.exclude
}

/// Patterns per multi-pattern search: large enough to answer for many rules in one pass,
/// small enough that the lazy DFA of CRS's large alternations stays in its cache.
pub(crate) const GROUP_SIZE: usize = 16;
const _: () = assert!(GROUP_SIZE <= 16, "a group's matches are a u16 mask");

/// The key of the links searched together: the phase and paranoia level of their rule (CRS
/// skips the levels above the configured one as a block, so a search holds no pattern that
/// will not run) and the collections they read (so a collection's search serves the rules
/// reading it).
fn bundle_key(rule: &CRule, link: &Link) -> String {
    let mut sources: Vec<String> = link
        .vars
        .iter()
        .map(|v| format!("{:?}", v.source))
        .collect();
    sources.sort();
    sources.dedup();
    let level = rule
        .tags
        .iter()
        .find(|t| t.starts_with("paranoia-level/"))
        .map_or("", String::as_str);
    format!("{}|{level}|{}", rule.phase, sources.join("|"))
}

/// A pattern of a group, with the pipelines whose values it reads.
type Pattern = (String, Vec<u32>);

/// For a `multiMatch` link whose stages are all pipelines: the raw value's pipeline
/// (`raw`), which its pattern reads with the stages'.
fn multi_stage_raw(link: &Link, raw: Option<u32>) -> Option<u32> {
    raw.filter(|_| link.multi_match && link.stages.len() == link.transforms.len())
}

/// The pipelines whose values a link's pattern reads in its group: its own, or for
/// `multiMatch` the raw value's and each of its stages'.
fn reads_of(link: &Link, raw: Option<u32>) -> Vec<u32> {
    match multi_stage_raw(link, raw) {
        Some(raw) => std::iter::once(raw)
            .chain(link.stages.iter().copied())
            .collect(),
        None => vec![link.pipeline],
    }
}

/// Whether a link's group bit decides it: always, but for a `multiMatch` link whose stages
/// are not all pipelines (its bit then reads only its final value).
fn bit_decides(link: &Link, raw: Option<u32>) -> bool {
    !link.multi_match || multi_stage_raw(link, raw).is_some()
}

/// Gathers the `@rx` links into multi-pattern searches of [`GROUP_SIZE`] patterns, by the
/// collections their rules read (so a collection's search serves the rules reading it), and
/// gives each link its place. Patterns that do not build together keep no group (their links
/// are tested alone).
///
/// A `multiMatch` link's pattern reads the raw value (pipeline `raw`) and the value after
/// each of its transformations (its stages): its bit says whether any of them matches, so a
/// miss rules the link out as it does any other (a hit is tested stage by stage for the
/// value and captures ModSecurity reports).
fn build_groups(rules: &mut [CRule], raw: Option<u32>) -> Vec<Group> {
    // Per bundle key (the sources a link reads): its patterns as (source, pipeline).
    let mut bundles: Vec<(String, Vec<Pattern>)> = Vec::new();
    // Per bundle, in the same order: each pattern's own compiled regex.
    let mut alone: Vec<Vec<Option<Arc<Regex>>>> = Vec::new();
    let mut places: Vec<Option<(usize, usize)>> = Vec::new();
    let links = rules
        .iter()
        .flat_map(|r| r.links.iter().map(move |l| (r, l)));
    for (rule, link) in links {
        let Some(rx) = &link.rx else {
            places.push(None);
            continue;
        };
        let key = bundle_key(rule, link);
        let at = match bundles.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                bundles.push((key, Vec::new()));
                alone.push(Vec::new());
                bundles.len() - 1
            }
        };
        if let Some(a) = alone.get_mut(at) {
            a.push(match &link.op {
                Op::Static(crate::operator::Operator::Rx(re)) => Some(Arc::clone(re)),
                _ => None,
            });
        }
        let list = bundles.get_mut(at).map(|(_, l)| l);
        places.push(list.map(|l| {
            l.push((rx.clone(), reads_of(link, raw)));
            (at, l.len() - 1)
        }));
    }
    let mut groups = Vec::new();
    // Per bundle and chunk: the group's index, when the chunk built.
    let mut index: Vec<Vec<Option<u32>>> = Vec::new();
    // Per bundle: each pattern's position once sorted.
    let mut positions: Vec<Vec<usize>> = Vec::new();
    // Per bundle, in the bundle's order: each pattern's needed bytes.
    let mut screens: Vec<Vec<Option<needs::ByteSet>>> = Vec::new();
    // Per bundle, in the bundle's order: each pattern's factor screen.
    let mut factor_screens: Vec<Vec<Option<Arc<needs::FactorScreen>>>> = Vec::new();
    for ((_, list), alone) in bundles.iter_mut().zip(&alone) {
        // Patterns that need rare bytes go together, so that their groups skip ordinary
        // values; the patterns that can match plain words share the other groups.
        // Each pattern is parsed once, for its needed bytes and for its group's search.
        let hirs: Vec<Option<regex_syntax::hir::Hir>> =
            list.iter().map(|(rx, _)| needs::parse(rx)).collect();
        let needed: Vec<Option<needs::ByteSet>> = hirs
            .iter()
            .map(|h| h.as_ref().and_then(needs::need))
            .collect();
        screens.push(needed.clone());
        let bundle_screens: Vec<Option<Arc<needs::FactorScreen>>> = hirs
            .iter()
            .map(|h| {
                h.as_ref()
                    .and_then(needs::FactorScreen::of_hir)
                    .map(Arc::new)
            })
            .collect();
        let mut order: Vec<(u32, usize)> = needed
            .iter()
            .enumerate()
            .map(|(n, need)| (need.map_or(u32::MAX, needs::ByteSet::cost), n))
            .collect();
        order.sort();
        let mut position = vec![0; list.len()];
        for (at, &(_, n)) in order.iter().enumerate() {
            if let Some(p) = position.get_mut(n) {
                *p = at;
            }
        }
        let sorted: Vec<Pattern> = order
            .iter()
            .filter_map(|&(_, n)| list.get(n).cloned())
            .collect();
        let sorted_needs: Vec<Option<needs::ByteSet>> = order
            .iter()
            .map(|&(_, n)| needed.get(n).copied().flatten())
            .collect();
        let sorted_alone: Vec<Option<Arc<Regex>>> = order
            .iter()
            .map(|&(_, n)| alone.get(n).cloned().flatten())
            .collect();
        let sorted_screens: Vec<Option<Arc<needs::FactorScreen>>> = order
            .iter()
            .map(|&(_, n)| bundle_screens.get(n).cloned().flatten())
            .collect();
        factor_screens.push(bundle_screens);
        let sorted_hirs: Vec<Option<&regex_syntax::hir::Hir>> = order
            .iter()
            .map(|&(_, n)| hirs.get(n).and_then(Option::as_ref))
            .collect();
        *list = sorted;
        positions.push(position);
        let mut chunks = Vec::new();
        for ((((chunk, chunk_needs), chunk_hirs), chunk_alone), chunk_screens) in list
            .chunks(GROUP_SIZE)
            .zip(sorted_needs.chunks(GROUP_SIZE))
            .zip(sorted_hirs.chunks(GROUP_SIZE))
            .zip(sorted_alone.chunks(GROUP_SIZE))
            .zip(sorted_screens.chunks(GROUP_SIZE))
        {
            // A pattern that does not parse leaves its chunk without a group.
            let patterns: Option<Vec<&regex_syntax::hir::Hir>> =
                chunk_hirs.iter().copied().collect();
            let build = |kind| {
                Regex::builder()
                    .configure(Regex::config().match_kind(kind))
                    .build_many_from_hir(patterns.as_deref()?)
                    .ok()
            };
            let single = chunk.len() == 1;
            let built = build(if single {
                regex_automata::MatchKind::LeftmostFirst
            } else {
                regex_automata::MatchKind::All
            });
            chunks.push(built.and_then(|regex| {
                let at = u32::try_from(groups.len()).ok()?;
                let needs = chunk_needs
                    .iter()
                    .try_fold(needs::ByteSet::default(), |acc, n| Some(acc.union((*n)?)));
                groups.push(Group {
                    search: Search::Patterns(regex),
                    single,
                    needs,
                    solo: chunk_needs
                        .iter()
                        .copied()
                        .zip(chunk_alone.iter().cloned())
                        .collect(),
                    solo_screens: chunk_screens.to_vec(),
                    members: GroupMember::by_pipeline(chunk.iter().map(|(_, p)| &p[..])),
                    // (Worked out once the pipelines are known: see `screen_members`.)
                    screen: None,
                });
                Some(at)
            }));
        }
        index.push(chunks);
    }
    let links = rules.iter_mut().flat_map(|r| r.links.iter_mut());
    for (link, place) in links.zip(places) {
        if let Some((bundle, n)) = place {
            link.screen = screens
                .get(bundle)
                .and_then(|s| s.get(n).copied().flatten());
            link.factors = factor_screens
                .get(bundle)
                .and_then(|s| s.get(n).cloned().flatten());
        }
        link.slot = place.and_then(|(bundle, n)| {
            let n = *positions.get(bundle)?.get(n)?;
            let group = (*index.get(bundle)?.get(n / GROUP_SIZE)?)?;
            Some((group, 1_u16 << (n % GROUP_SIZE)))
        });
        link.prefilter = link.slot.is_some() && !link.negated && bit_decides(link, raw);
    }
    groups
}

/// The largest phrase automaton (as an NFA, in bytes) built as a DFA instead.
const DFA_PHRASES_NFA_LIMIT: usize = 128 * 1024;

/// Gathers the `@pm` and `@pmFromFile` links of each phase and paranoia level into groups of
/// [`GROUP_SIZE`], each searched by one automaton over all their phrases: a value is scanned
/// once for all of them (CRS's phrase files are read by rules over the same arguments), and
/// a link's verdict is its bit. Links with `multiMatch` keep their own search.
fn build_phrase_groups(rules: &mut [CRule], groups: &mut Vec<Group>) {
    let chunks = link_chunks(rules, |rule, link| {
        let own = link.phrases.is_none() || link.multi_match || link.slot.is_some();
        (!own).then(|| bundle_key(rule, link))
    });
    for chunk in &chunks {
        let links = links_at(rules, chunk);
        // Each distinct phrase (without ASCII case) once, with the bits of its links.
        let mut phrases: Vec<Vec<u8>> = Vec::new();
        let mut bits: Vec<u32> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, link) in links.iter().enumerate() {
            for phrase in link.phrases.iter().flat_map(|p| p.iter()) {
                let folded = phrase.as_bytes().to_ascii_lowercase();
                if folded.is_empty() {
                    continue;
                }
                let at = *index.entry(folded.clone()).or_insert_with(|| {
                    phrases.push(folded);
                    bits.push(0);
                    bits.len() - 1
                });
                if let Some(b) = bits.get_mut(at) {
                    *b |= 1 << i;
                }
            }
        }
        let build = |kind| {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::Standard)
                .kind(kind)
                .build(&phrases)
        };
        let Ok(mut automaton) = build(None) else {
            // (Too large for an automaton: the links keep their own searches.)
            continue;
        };
        // A mid-sized set (a few hundred phrases) is searched about twice as fast
        // by a DFA, at 15 to 20 times the memory; larger sets keep the NFA.
        if automaton.kind() != aho_corasick::AhoCorasickKind::DFA
            && automaton.memory_usage() <= DFA_PHRASES_NFA_LIMIT
            && let Ok(dfa) = build(Some(aho_corasick::AhoCorasickKind::DFA))
        {
            automaton = dfa;
        }
        let Ok(at) = u32::try_from(groups.len()) else {
            continue;
        };
        let members =
            GroupMember::by_pipeline(links.iter().map(|l| std::slice::from_ref(&l.pipeline)));
        let solo: Vec<(Option<needs::ByteSet>, Option<Arc<Regex>>)> = links
            .iter()
            .map(|link| {
                let own = match &link.op {
                    Op::Static(Operator::Pm(re)) => Some(Arc::clone(re)),
                    _ => None,
                };
                (link.screen, own)
            })
            .collect();
        let needs = solo
            .iter()
            .try_fold(needs::ByteSet::default(), |acc, (n, _)| {
                Some(acc.union((*n)?))
            });
        let solo_screens = links
            .iter()
            .map(|link| {
                let phrases = link.phrases.as_ref()?;
                needs::FactorScreen::of_phrases(phrases.iter().map(String::as_str)).map(Arc::new)
            })
            .collect();
        groups.push(Group {
            search: Search::Phrases { automaton, bits },
            single: false,
            solo_screens,
            members,
            screen: None,
            needs,
            solo,
        });
        for (i, &(r, l)) in chunk.iter().enumerate() {
            if let Some(link) = rules.get_mut(r).and_then(|rule| rule.links.get_mut(l)) {
                link.slot = Some((at, 1 << i));
                link.prefilter = !link.negated;
            }
        }
    }
    // (The phrases are read only here: a link's own search is its compiled operator.)
    for link in rules.iter_mut().flat_map(|r| r.links.iter_mut()) {
        link.phrases = None;
    }
}

/// The (rule, link) places of the links `key` gives a bundle key, by key in order of first
/// appearance, in chunks of [`GROUP_SIZE`] (a group each).
fn link_chunks(
    rules: &[CRule],
    key: impl Fn(&CRule, &Link) -> Option<String>,
) -> Vec<Vec<(usize, usize)>> {
    let mut bundles: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        for (l, link) in rule.links.iter().enumerate() {
            let Some(key) = key(rule, link) else {
                continue;
            };
            match bundles.iter_mut().find(|(k, _)| *k == key) {
                Some((_, places)) => places.push((r, l)),
                None => bundles.push((key, vec![(r, l)])),
            }
        }
    }
    bundles
        .iter()
        .flat_map(|(_, places)| places.chunks(GROUP_SIZE).map(<[_]>::to_vec))
        .collect()
}

/// The links at `places`.
fn links_at<'r>(rules: &'r [CRule], places: &[(usize, usize)]) -> Vec<&'r Link> {
    places
        .iter()
        .filter_map(|&(r, l)| rules.get(r)?.links.get(l))
        .collect()
}

/// Gathers the `@detectSQLi` and `@detectXSS` links into groups as [`build_groups`] does the
/// `@rx` ones (by operator and by the collections their rules read): a value is run through
/// libinjection once per distinct transformed value, however many links read it, and the
/// verdicts on the values the thread's value cache keeps (headers, cookies, names) are kept
/// across transactions like any group's.
fn build_detect_groups(rules: &mut [CRule], groups: &mut Vec<Group>, raw: Option<u32>) {
    let chunks = link_chunks(rules, |rule, link| {
        let kind = match link.op {
            Op::DetectSqli => "sqli",
            Op::DetectXss => "xss",
            _ => return None,
        };
        Some(format!("{kind}|{}", bundle_key(rule, link)))
    });
    for chunk in &chunks {
        let links = links_at(rules, chunk);
        let detector = match links.first().map(|l| &l.op) {
            Some(Op::DetectSqli) => Detector::Sqli,
            Some(Op::DetectXss) => Detector::Xss,
            _ => continue,
        };
        let Ok(at) = u32::try_from(groups.len()) else {
            continue;
        };
        let reads: Vec<Vec<u32>> = links.iter().map(|l| reads_of(l, raw)).collect();
        groups.push(Group {
            search: Search::Detect(detector),
            single: false,
            solo_screens: vec![None; links.len()],
            members: GroupMember::by_pipeline(reads.iter().map(Vec::as_slice)),
            screen: None,
            needs: None,
            solo: vec![(None, None); links.len()],
        });
        for (i, &(r, l)) in chunk.iter().enumerate() {
            if let Some(link) = rules.get_mut(r).and_then(|rule| rule.links.get_mut(l)) {
                link.slot = Some((at, 1 << i));
                link.prefilter = !link.negated && bit_decides(link, raw);
            }
        }
    }
}

/// Per pipeline: another pipeline's index, or none.
type PipelineLinks = Vec<Option<u32>>;

/// Adds every prefix of the pipelines to them; gives each pipeline its parent (itself without
/// its last transformation) and its skip, when there is one (see [`Crs::skips`]).
fn with_prefixes(
    mut pipelines: Vec<Arc<[Transform]>>,
) -> (Vec<Arc<[Transform]>>, PipelineLinks, PipelineLinks) {
    let mut i = 0;
    while let Some(p) = pipelines.get(i).cloned() {
        if let Some((_, prefix)) = p.split_last()
            && !prefix.is_empty()
            && !pipelines.iter().any(|q| **q == *prefix)
        {
            pipelines.push(prefix.into());
        }
        i += 1;
    }
    let find = |q: &[Transform]| {
        let at = pipelines.iter().position(|p| **p == *q)?;
        u32::try_from(at).ok()
    };
    let parents = pipelines
        .iter()
        .map(|p| {
            let (_, prefix) = p.split_last()?;
            if prefix.is_empty() {
                return None;
            }
            find(prefix)
        })
        .collect();
    let skips = pipelines
        .iter()
        .map(|p| {
            let (last, prefix) = p.split_last()?;
            let (_, before) = prefix.split_last()?;
            find(&before.iter().chain([last]).copied().collect::<Vec<_>>())
        })
        .collect();
    (pipelines, parents, skips)
}

fn in_ranges(ranges: &[(u32, u32)], id: u32) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&id))
}

fn engine_mode(origin: &Origin, text: &str) -> Result<EngineMode, CrsError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" => Ok(EngineMode::On),
        "off" => Ok(EngineMode::Off),
        "detectiononly" => Ok(EngineMode::DetectionOnly),
        _ => Err(err(
            origin,
            format!("rule engine `{text}`: use On, Off or DetectionOnly"),
        )),
    }
}

fn parse_ranges(text: &str) -> Option<Vec<(u32, u32)>> {
    text.split([',', ' '])
        .filter(|s| !s.trim().is_empty())
        .map(|p| match p.trim().split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.trim().parse().ok().map(|id| (id, id)),
        })
        .collect()
}

fn parse_phase(origin: &Origin, value: Option<&str>) -> Result<u8, CrsError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("1") => Ok(1),
        Some("2" | "request") => Ok(2),
        Some("3") => Ok(3),
        Some("4" | "response") => Ok(4),
        Some("5" | "logging") => Ok(5),
        other => Err(err(
            origin,
            format!("`phase:{}`: use 1 to 5", other.unwrap_or("")),
        )),
    }
}

fn push_transform(
    origin: &Origin,
    list: &mut Vec<Transform>,
    value: Option<&str>,
) -> Result<(), CrsError> {
    let name = value.unwrap_or("").trim();
    if name.eq_ignore_ascii_case("none") {
        list.clear();
        return Ok(());
    }
    let t = name
        .parse::<Transform>()
        .map_err(|e| err(origin, format!("{e} (in `t:{name}`)")))?;
    list.push(t);
    Ok(())
}

fn parse_setvar(origin: &Origin, text: &str) -> Result<SetVar, CrsError> {
    let text = text.trim();
    let name_of = |n: &str| -> Result<MacroText, CrsError> {
        let n = n.trim();
        let lower = n.to_ascii_lowercase();
        let Some(var) = lower.strip_prefix("tx.") else {
            return Err(err(
                origin,
                format!("`setvar:{text}`: only the `tx` collection is supported"),
            ));
        };
        Ok(MacroText::new(var))
    };
    if let Some(name) = text.strip_prefix('!') {
        return Ok(SetVar::Delete(name_of(name)?));
    }
    match text.split_once('=') {
        None => Ok(SetVar::Set(name_of(text)?, MacroText::new("1"))),
        Some((name, value)) => {
            let name = name_of(name)?;
            Ok(if let Some(v) = value.strip_prefix('+') {
                SetVar::Add(name, MacroText::new(v))
            } else if let Some(v) = value.strip_prefix('-') {
                SetVar::Sub(name, MacroText::new(v))
            } else {
                SetVar::Set(name, MacroText::new(value))
            })
        }
    }
}

fn compile_var(origin: &Origin, v: &Variable) -> Result<Var, CrsError> {
    let source = match v.name.as_str() {
        "TX" => Source::Tx,
        "MATCHED_VAR" => Source::MatchedVar,
        "MATCHED_VAR_NAME" => Source::MatchedVarName,
        "MATCHED_VARS" => Source::MatchedVars,
        "MATCHED_VARS_NAMES" => Source::MatchedVarsNames,
        "REQUEST_URI_RAW" => Source::RequestUriRaw,
        "REMOTE_ADDR" => Source::RemoteAddr,
        "UNIQUE_ID" => Source::UniqueId,
        "REQUEST_BODY_LENGTH" => Source::RequestBodyLength,
        "FILES_COMBINED_SIZE" => Source::FilesCombinedSize,
        "ARGS_COMBINED_SIZE" => Source::ArgsCombinedSize,
        "REQBODY_PROCESSOR" => Source::ReqbodyProcessor,
        "XML" => Source::Xml {
            attributes: matches!(&v.key, Some(Key::XPath(p)) if p.contains('@')),
        },
        "MULTIPART_PART_HEADERS" => Source::Empty,
        "MULTIPART_STRICT_ERROR" => Source::Empty,
        "MULTIPART_UNMATCHED_BOUNDARY" => Source::Empty,
        name => {
            let target: crate::variable::Target = name
                .parse()
                .map_err(|_| err(origin, format!("the variable `{name}` is not supported")))?;
            Source::Exchange(target.collection)
        }
    };
    let select = match &v.key {
        None => Select::All,
        // Member names compare without case; TX names are stored lowercase.
        Some(Key::Name(n)) => Select::Name(n.to_ascii_lowercase()),
        Some(Key::XPath(_)) => Select::All,
        Some(Key::Regex(src)) => Select::Regex(
            Arc::new(
                Regex::builder()
                    .syntax(
                        syntax::Config::new()
                            .case_insensitive(true)
                            .utf8(false)
                            .unicode(false),
                    )
                    .build(&crate::operator::rewrite_hex_escapes(src))
                    .map_err(|e| err(origin, format!("the key regex of `{}`: {e}", v.name)))?,
            ),
            name_literal(src),
        ),
    };
    Ok(Var {
        source,
        name: v.name.as_str().into(),
        select,
        count: v.count,
        exclude: v.exclude,
        excluded: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
