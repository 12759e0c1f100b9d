//! LLM token budgets: windows, reservations, estimates and usage parsing. No tower in here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::Key;

/// A budget window, aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Window {
    /// Calendar minutes.
    Minute,
    /// Calendar hours.
    Hour,
    /// UTC days.
    Day,
    /// UTC calendar months.
    Month,
}

/// Days since 1970-01-01 of the first day of the month containing `days` (civil calendar).
fn month_bounds(days: i64) -> (i64, i64) {
    // Howard Hinnant's civil_from_days / days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let from_civil = |y: i64, m: i64| {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    };
    let start = from_civil(y, m);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (start, from_civil(ny, nm))
}

impl Window {
    /// The window containing `now` (unix seconds): `(start, end)`.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        let span = |len: u64| {
            let start = now - now % len;
            (start, start + len)
        };
        match self {
            Self::Minute => span(60),
            Self::Hour => span(3600),
            Self::Day => span(86_400),
            Self::Month => {
                let days = i64::try_from(now / 86_400).unwrap_or(i64::MAX / 2);
                let (a, b) = month_bounds(days);
                let to_secs = |d: i64| u64::try_from(d).unwrap_or(0) * 86_400;
                (to_secs(a), to_secs(b))
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Account {
    window_start: u64,
    used: u64,
    reserved: u64,
}

/// Token accounts per key and window, bounded in number.
#[derive(Debug)]
pub struct BudgetStore {
    limits: Vec<(Window, u64)>,
    accounts: Mutex<HashMap<(Key, Window), Account>>,
    max_keys: usize,
}

/// A reservation made before forwarding; settle it with [`BudgetStore::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    key: Key,
    tokens: u64,
    at: u64,
}

impl Reservation {
    /// The tokens reserved.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

impl BudgetStore {
    /// Budgets of `limits` tokens per window, for at most about `max_keys` keys.
    pub fn new(limits: Vec<(Window, u64)>, max_keys: usize) -> Self {
        Self {
            limits,
            accounts: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// For each window: the tokens `key` has left in it at `now`, and when it ends.
    fn left<'a>(
        &'a self,
        accounts: &'a HashMap<(Key, Window), Account>,
        key: &'a Key,
        now: u64,
    ) -> impl Iterator<Item = (u64, u64)> + 'a {
        self.limits.iter().map(move |(window, limit)| {
            let (start, end) = window.bounds(now);
            let acc = accounts
                .get(&(key.clone(), *window))
                .filter(|a| a.window_start == start)
                .copied()
                .unwrap_or_default();
            (limit.saturating_sub(acc.used + acc.reserved), end)
        })
    }

    /// Tokens still available to `key` now (the tightest window), and when that window ends.
    pub fn available(&self, key: &Key, now: u64) -> (u64, u64) {
        let Ok(accounts) = self.accounts.lock() else {
            return (0, now + 1);
        };
        self.left(&accounts, key, now)
            .min_by_key(|(left, _)| *left)
            .unwrap_or((u64::MAX, now))
    }

    /// Reserves `tokens` for `key` in every window, or says how long until they could fit.
    ///
    /// # Errors
    ///
    /// The wait until the exhausted window ends (or the requested amount exceeds a whole
    /// window's budget, in which case the wait is until the window ends as well). When every
    /// account slot holds a live account, a new key is refused for a second (fail closed).
    pub fn reserve(&self, key: &Key, tokens: u64, now: u64) -> Result<Reservation, Duration> {
        let Ok(mut accounts) = self.accounts.lock() else {
            return Err(Duration::from_secs(1));
        };
        if let Some((_, end)) = self
            .left(&accounts, key, now)
            .find(|(left, _)| *left < tokens)
        {
            return Err(Duration::from_secs(end.saturating_sub(now).max(1)));
        }
        let capacity = self.max_keys * self.limits.len().max(1);
        let known = self
            .limits
            .first()
            .is_some_and(|(w, _)| accounts.contains_key(&(key.clone(), *w)));
        if !known && accounts.len() >= capacity {
            // Drop accounts of past windows first.
            accounts.retain(|(_, w), a| a.window_start == w.bounds(now).0);
            if accounts.len() >= capacity {
                tracing::warn!("token budget accounts full; refusing a new key");
                return Err(Duration::from_secs(1));
            }
        }
        for (window, _) in &self.limits {
            let start = window.bounds(now).0;
            let acc = accounts.entry((key.clone(), *window)).or_default();
            if acc.window_start != start {
                *acc = Account {
                    window_start: start,
                    ..Account::default()
                };
            }
            acc.reserved += tokens;
        }
        Ok(Reservation {
            key: key.clone(),
            tokens,
            at: now,
        })
    }

    /// Replaces a reservation by the tokens actually used.
    pub fn settle(&self, reservation: &Reservation, used: u64) {
        let Ok(mut accounts) = self.accounts.lock() else {
            return;
        };
        for (window, _) in &self.limits {
            let start = window.bounds(reservation.at).0;
            if let Some(acc) = accounts.get_mut(&(reservation.key.clone(), *window))
                && acc.window_start == start
            {
                acc.reserved = acc.reserved.saturating_sub(reservation.tokens);
                acc.used = acc.used.saturating_add(used);
            }
        }
    }
}

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI-compatible `/v1/chat/completions`.
    ChatCompletions,
    /// OpenAI-compatible `/v1/completions`.
    Completions,
    /// OpenAI-compatible `/v1/embeddings`.
    Embeddings,
    /// Anthropic-compatible `/v1/messages`.
    Messages,
}

impl Api {
    /// The API served at `path`, if it is one with token accounting.
    pub fn from_path(path: &str) -> Option<Self> {
        match path.trim_end_matches('/') {
            p if p.ends_with("/v1/chat/completions") => Some(Self::ChatCompletions),
            p if p.ends_with("/v1/completions") => Some(Self::Completions),
            p if p.ends_with("/v1/embeddings") => Some(Self::Embeddings),
            p if p.ends_with("/v1/messages") => Some(Self::Messages),
            _ => None,
        }
    }
}

/// Tokens in `text`, estimated at four characters a token (rounded up), the usual rule of
/// thumb for English with BPE tokenizers.
pub fn estimate_tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(4)).unwrap_or(u64::MAX)
}

fn text_of(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| text_of(i, out)),
        Value::Object(map) => {
            for key in ["text", "content", "input"] {
                if let Some(v) = map.get(key) {
                    text_of(v, out);
                }
            }
        }
        _ => {}
    }
}

/// The prompt estimate and the completion allowance of a request body; `None` if the body is
/// not a JSON object.
pub fn request_estimate(api: Api, body: &Value, default_max_tokens: u64) -> Option<(u64, u64)> {
    let obj = body.as_object()?;
    let mut text = String::new();
    let mut messages = 0u64;
    match api {
        Api::ChatCompletions | Api::Messages => {
            if let Some(Value::Array(list)) = obj.get("messages") {
                messages = u64::try_from(list.len()).unwrap_or(u64::MAX);
                for m in list {
                    if let Some(c) = m.get("content") {
                        text_of(c, &mut text);
                    }
                }
            }
            if let Some(system) = obj.get("system") {
                text_of(system, &mut text);
            }
        }
        Api::Completions => {
            if let Some(p) = obj.get("prompt") {
                text_of(p, &mut text);
            }
        }
        Api::Embeddings => {
            if let Some(i) = obj.get("input") {
                text_of(i, &mut text);
            }
        }
    }
    // A few tokens of framing per message, as chat templates add.
    let prompt = estimate_tokens(&text).saturating_add(messages.saturating_mul(4));
    let completion = match api {
        Api::Embeddings => 0,
        _ => ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64))
            .unwrap_or(default_max_tokens),
    };
    Some((prompt, completion))
}

/// The `usage` of a JSON response or SSE event: `(prompt, completion)` where present.
/// Understands OpenAI (`prompt_tokens`/`completion_tokens`) and Anthropic
/// (`input_tokens`/`output_tokens`, also under `message.usage` in `message_start`).
pub fn usage_of(value: &Value) -> (Option<u64>, Option<u64>) {
    let usage = value
        .get("usage")
        .or_else(|| value.pointer("/message/usage"))
        .filter(|u| u.is_object());
    let Some(u) = usage else {
        return (None, None);
    };
    let get = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64);
    (
        get("prompt_tokens", "input_tokens"),
        get("completion_tokens", "output_tokens"),
    )
}

/// The generated text in a streamed event (OpenAI deltas, Anthropic `content_block_delta`).
pub fn delta_text(value: &Value) -> Option<&str> {
    value
        .pointer("/choices/0/delta/content")
        .or_else(|| value.pointer("/choices/0/text"))
        .or_else(|| value.pointer("/delta/text"))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_align_to_utc() {
        let t = 1_764_166_245; // 2025-11-26T14:10:45Z
        assert_eq!(Window::Minute.bounds(t), (1_764_166_200, 1_764_166_260));
        assert_eq!(Window::Hour.bounds(t), (1_764_165_600, 1_764_169_200));
        assert_eq!(Window::Day.bounds(t), (1_764_115_200, 1_764_201_600));
        // November 2025: 2025-11-01 to 2025-12-01.
        assert_eq!(Window::Month.bounds(t), (1_761_955_200, 1_764_547_200));
        // February of a leap year: 2024-02-01 to 2024-03-01 (29 days).
        let (a, b) = Window::Month.bounds(1_707_000_000);
        assert_eq!((b - a) / 86_400, 29);
        // December rolls into January.
        let (a, b) = Window::Month.bounds(1_735_000_000); // 2024-12-24
        assert_eq!((a, b), (1_733_011_200, 1_735_689_600));
    }

    #[test]
    fn reservations_and_settlement() {
        let store = BudgetStore::new(vec![(Window::Minute, 100), (Window::Day, 150)], 10);
        let k = Key::Text("t".into());
        let now = 1_764_166_245;
        let r = store.reserve(&k, 60, now).unwrap();
        assert_eq!(store.available(&k, now).0, 40);
        assert_eq!(
            store.reserve(&k, 50, now).unwrap_err(),
            Duration::from_secs(15)
        );
        store.settle(&r, 20);
        assert_eq!(store.available(&k, now).0, 80);
        // The next minute frees the minute window but not the day's.
        let later = now + 60;
        assert_eq!(store.available(&k, later).0, 100);
        let r2 = store.reserve(&k, 100, later).unwrap();
        store.settle(&r2, 100);
        assert_eq!(store.available(&k, later).0, 0);
        let err = store.reserve(&k, 31, later + 60).unwrap_err();
        assert!(
            err > Duration::from_secs(3600),
            "the day window decides: {err:?}"
        );
        // Other keys have their own accounts.
        assert!(store.reserve(&Key::Text("u".into()), 100, later).is_ok());
    }

    #[test]
    fn the_account_table_is_bounded() {
        let store = BudgetStore::new(vec![(Window::Minute, 100)], 2);
        let now = 1_764_166_245;
        assert!(store.reserve(&Key::Text("a".into()), 1, now).is_ok());
        assert!(store.reserve(&Key::Text("b".into()), 1, now).is_ok());
        // Full of live accounts: a third key is refused, known keys still work.
        assert_eq!(
            store.reserve(&Key::Text("c".into()), 1, now),
            Err(Duration::from_secs(1))
        );
        assert!(store.reserve(&Key::Text("a".into()), 1, now).is_ok());
        // Next minute the old accounts are stale and make room.
        assert!(store.reserve(&Key::Text("c".into()), 1, now + 60).is_ok());
    }

    #[test]
    fn estimates() {
        let chat = json!({"messages": [{"role": "user", "content": "12345678"}, {"role": "system", "content": [{"type": "text", "text": "abcd"}]}], "max_tokens": 50});
        // "12345678 abcd " is 14 characters (a space follows each part): 4 tokens, plus 4 per message.
        assert_eq!(
            request_estimate(Api::ChatCompletions, &chat, 1000),
            Some((4 + 8, 50))
        );
        let no_max = json!({"messages": [], "system": "abcdefgh"});
        assert_eq!(
            request_estimate(Api::Messages, &no_max, 256),
            Some((3, 256))
        );
        let emb = json!({"input": ["abcd", "efgh"]});
        assert_eq!(request_estimate(Api::Embeddings, &emb, 256), Some((3, 0)));
        assert_eq!(
            request_estimate(Api::Completions, &json!({"prompt": "abc"}), 7),
            Some((1, 7))
        );
        assert!(request_estimate(Api::Completions, &json!([1]), 7).is_none());
        assert_eq!(
            Api::from_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(Api::from_path("/openai/v1/messages/"), Some(Api::Messages));
        assert_eq!(Api::from_path("/v1/models"), None);
    }

    #[test]
    fn usage_and_deltas() {
        assert_eq!(
            usage_of(&json!({"usage": {"prompt_tokens": 3, "completion_tokens": 5}})),
            (Some(3), Some(5))
        );
        assert_eq!(
            usage_of(&json!({"usage": {"input_tokens": 7, "output_tokens": 2}})),
            (Some(7), Some(2))
        );
        assert_eq!(
            usage_of(&json!({"type": "message_start", "message": {"usage": {"input_tokens": 9}}})),
            (Some(9), None)
        );
        assert_eq!(usage_of(&json!({"choices": []})), (None, None));
        assert_eq!(
            delta_text(&json!({"choices": [{"delta": {"content": "hi"}}]})),
            Some("hi")
        );
        assert_eq!(
            delta_text(&json!({"type": "content_block_delta", "delta": {"text": "yo"}})),
            Some("yo")
        );
    }
}
