//! What the WAF decided about a request and its response.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::error::{ValueError, check_text};

/// The most matched rule ids a verdict records; later matches only set
/// [`WafVerdict::rules_truncated`].
pub const MAX_MATCHED_RULES: usize = 128;
/// The most distinct redaction kinds a verdict records.
pub const MAX_REDACTION_KINDS: usize = 64;

/// A random identifier of one blocked exchange, shown to the client (as the problem's
/// `instance`) and written to the audit log, so support can find the record without the client
/// learning which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IncidentId(u128);

impl IncidentId {
    /// An incident id from 128 random bits.
    pub fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// The `urn:` form used as the problem's `instance`.
    pub fn urn(&self) -> String {
        format!("urn:portcullis:incident:{self}")
    }
}

impl std::fmt::Display for IncidentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for IncidentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the WAF did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WafAction {
    /// Nothing matched, or nothing that counts.
    #[default]
    Allow,
    /// Rules matched, but the WAF only observes (detection-only mode, or below threshold).
    Detect,
    /// Parts of the response were masked and it was let through.
    Redact,
    /// The request or response was blocked.
    Block,
}

/// The WAF's verdict on one exchange, left in extensions for the audit log.
///
/// The verdict grows as the WAF inspects the request and then the response; its action only
/// ever escalates (`Allow` < `Detect` < `Redact` < `Block`), so a later, milder phase cannot
/// undo an earlier block.
///
/// # Examples
///
/// ```
/// use portcullis_core::{WafAction, WafVerdict};
///
/// let mut verdict = WafVerdict::new(1)?;
/// verdict.record_match(942100);
/// verdict.add_inbound_score(5);
/// verdict.escalate(WafAction::Block);
/// verdict.escalate(WafAction::Detect); // cannot downgrade
/// assert_eq!(verdict.action(), WafAction::Block);
/// assert_eq!(verdict.matched_rules(), [942100]);
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WafVerdict {
    action: WafAction,
    paranoia_level: u8,
    inbound_score: u32,
    outbound_score: u32,
    matched_rules: Vec<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rules_truncated: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    redactions: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    detections: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<IncidentId>,
}

impl WafVerdict {
    /// An empty verdict (`Allow`) evaluated at `paranoia_level`.
    ///
    /// # Errors
    ///
    /// If `paranoia_level` is not 1 to 4 (the OWASP CRS levels).
    pub fn new(paranoia_level: u8) -> Result<Self, ValueError> {
        if !(1..=4).contains(&paranoia_level) {
            return Err(ValueError::new("paranoia level", "it must be 1, 2, 3 or 4"));
        }
        Ok(Self {
            action: WafAction::Allow,
            paranoia_level,
            inbound_score: 0,
            outbound_score: 0,
            matched_rules: Vec::new(),
            rules_truncated: false,
            redactions: BTreeMap::new(),
            detections: BTreeMap::new(),
            incident: None,
        })
    }

    /// Raises the action to `action` if it is stronger than the current one.
    pub fn escalate(&mut self, action: WafAction) {
        self.action = self.action.max(action);
    }

    /// Records that rule `id` matched. Ids stay sorted and unique; past
    /// [`MAX_MATCHED_RULES`] only the truncation flag is set.
    pub fn record_match(&mut self, id: u32) {
        match self.matched_rules.binary_search(&id) {
            Ok(_) => {}
            Err(at) if self.matched_rules.len() < MAX_MATCHED_RULES => {
                self.matched_rules.insert(at, id);
            }
            Err(_) => self.rules_truncated = true,
        }
    }

    /// Adds to the inbound (request) anomaly score, saturating.
    pub fn add_inbound_score(&mut self, points: u32) {
        self.inbound_score = self.inbound_score.saturating_add(points);
    }

    /// Adds to the outbound (response) anomaly score, saturating.
    pub fn add_outbound_score(&mut self, points: u32) {
        self.outbound_score = self.outbound_score.saturating_add(points);
    }

    /// Records `count` redactions of `kind` (e.g. `secret.aws_access_key`, `pii.email`) and
    /// escalates the action to at least `Redact`.
    ///
    /// # Errors
    ///
    /// If `kind` is empty, longer than 64 bytes or holds control characters, or if it would be
    /// a new kind beyond [`MAX_REDACTION_KINDS`].
    pub fn add_redaction(&mut self, kind: &str, count: u32) -> Result<(), ValueError> {
        count_kind(&mut self.redactions, kind, count)?;
        self.escalate(WafAction::Redact);
        Ok(())
    }

    /// Records `count` response findings of `kind` that were not redacted: logged only, or
    /// the one that blocked the response. The action is left to the caller.
    ///
    /// # Errors
    ///
    /// As [`WafVerdict::add_redaction`].
    pub fn add_detection(&mut self, kind: &str, count: u32) -> Result<(), ValueError> {
        count_kind(&mut self.detections, kind, count)
    }

    /// Sets the incident id that a blocked client was given, so the audit record and the
    /// client's problem response can be matched.
    pub fn set_incident(&mut self, incident: IncidentId) {
        self.incident = Some(incident);
    }

    /// The incident id, when the exchange was blocked.
    pub fn incident(&self) -> Option<IncidentId> {
        self.incident
    }

    /// What the WAF did.
    pub fn action(&self) -> WafAction {
        self.action
    }

    /// The paranoia level the rules ran at.
    pub fn paranoia_level(&self) -> u8 {
        self.paranoia_level
    }

    /// The request anomaly score.
    pub fn inbound_score(&self) -> u32 {
        self.inbound_score
    }

    /// The response anomaly score.
    pub fn outbound_score(&self) -> u32 {
        self.outbound_score
    }

    /// The ids of the rules that matched, sorted.
    pub fn matched_rules(&self) -> &[u32] {
        &self.matched_rules
    }

    /// Whether more rules matched than were recorded.
    pub fn rules_truncated(&self) -> bool {
        self.rules_truncated
    }

    /// Redaction counts by kind.
    pub fn redactions(&self) -> &BTreeMap<String, u32> {
        &self.redactions
    }

    /// Findings in the response that were not redacted, by kind.
    pub fn detections(&self) -> &BTreeMap<String, u32> {
        &self.detections
    }
}

fn count_kind(map: &mut BTreeMap<String, u32>, kind: &str, count: u32) -> Result<(), ValueError> {
    check_text("finding kind", kind, 64)?;
    if let Some(n) = map.get_mut(kind) {
        *n = n.saturating_add(count);
    } else if map.len() >= MAX_REDACTION_KINDS {
        return Err(ValueError::new(
            "finding kind",
            format!("more than {MAX_REDACTION_KINDS} kinds"),
        ));
    } else {
        map.insert(kind.to_owned(), count);
    }
    Ok(())
}

/// A [`WafVerdict`] that keeps growing after the response head has gone out.
///
/// A streamed response body is scanned as it flows, long after the layer returned the
/// response, so what the scan finds (redactions, a block) cannot go into the `WafVerdict` the
/// response's extensions hold. The WAF puts this handle in the response's extensions too and
/// updates it as the body streams; a layer further out (the audit log) reads it once the body
/// has ended, for the exchange's final verdict.
///
/// ```
/// use portcullis_core::{SharedVerdict, WafAction, WafVerdict};
///
/// let shared = SharedVerdict::new(WafVerdict::new(1)?);
/// let reader = shared.clone();
/// shared.update(|v| v.add_redaction("pii.email", 2))?;
/// assert_eq!(reader.snapshot().action(), WafAction::Redact);
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SharedVerdict(Arc<Mutex<WafVerdict>>);

impl SharedVerdict {
    /// A handle starting from `verdict`.
    pub fn new(verdict: WafVerdict) -> Self {
        Self(Arc::new(Mutex::new(verdict)))
    }

    /// Changes the verdict. A panic while the lock was held elsewhere does not lose it: the
    /// verdict is only ever grown, so whatever was recorded stays valid.
    pub fn update<R>(&self, f: impl FnOnce(&mut WafVerdict) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the verdict as it stands.
    pub fn snapshot(&self) -> WafVerdict {
        self.update(|v| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paranoia_level_is_one_to_four() {
        for pl in 1..=4 {
            assert_eq!(WafVerdict::new(pl).unwrap().paranoia_level(), pl);
        }
        assert!(WafVerdict::new(0).is_err());
        assert!(WafVerdict::new(5).is_err());
    }

    #[test]
    fn action_only_escalates() {
        let mut v = WafVerdict::new(1).unwrap();
        assert_eq!(v.action(), WafAction::Allow);
        v.escalate(WafAction::Detect);
        assert_eq!(v.action(), WafAction::Detect);
        v.escalate(WafAction::Allow);
        assert_eq!(v.action(), WafAction::Detect);
        v.escalate(WafAction::Block);
        v.escalate(WafAction::Redact);
        assert_eq!(v.action(), WafAction::Block);
    }

    #[test]
    fn matched_rules_are_sorted_unique_and_bounded() {
        let mut v = WafVerdict::new(2).unwrap();
        for id in [942100, 920100, 942100, 930110] {
            v.record_match(id);
        }
        assert_eq!(v.matched_rules(), [920100, 930110, 942100]);
        assert!(!v.rules_truncated());
        for id in 0..(MAX_MATCHED_RULES as u32 * 2) {
            v.record_match(id);
        }
        assert_eq!(v.matched_rules().len(), MAX_MATCHED_RULES);
        assert!(v.rules_truncated());
        assert!(v.matched_rules().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn scores_saturate() {
        let mut v = WafVerdict::new(1).unwrap();
        v.add_inbound_score(5);
        v.add_inbound_score(u32::MAX);
        assert_eq!(v.inbound_score(), u32::MAX);
        v.add_outbound_score(4);
        assert_eq!(v.outbound_score(), 4);
    }

    #[test]
    fn redactions_merge_by_kind_and_escalate() {
        let mut v = WafVerdict::new(1).unwrap();
        v.add_redaction("pii.email", 2).unwrap();
        v.add_redaction("pii.email", 3).unwrap();
        v.add_redaction("secret.aws_access_key", 1).unwrap();
        assert_eq!(v.redactions()["pii.email"], 5);
        assert_eq!(v.action(), WafAction::Redact);
        assert!(v.add_redaction("", 1).is_err());
        assert!(v.add_redaction("bad\nkind", 1).is_err());
        let mut v = WafVerdict::new(1).unwrap();
        for i in 0..MAX_REDACTION_KINDS {
            v.add_redaction(&format!("k{i}"), 1).unwrap();
        }
        assert!(v.add_redaction("one.more", 1).is_err());
        // Existing kinds still count.
        v.add_redaction("k0", 1).unwrap();
        assert_eq!(v.redactions()["k0"], 2);
    }

    #[test]
    fn serializes_compactly() {
        let mut v = WafVerdict::new(1).unwrap();
        v.record_match(1);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["action"], "allow");
        assert_eq!(json["matched_rules"], serde_json::json!([1]));
        assert!(json.get("rules_truncated").is_none());
        assert!(json.get("redactions").is_none());
    }
}
