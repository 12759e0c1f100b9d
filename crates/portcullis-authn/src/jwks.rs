//! A JWKS with its source, cache lifetime and refresh rules.
//!
//! - Keys come from a fixed set, a file, a URL, or OIDC discovery
//!   (`{issuer}/.well-known/openid-configuration` → `jwks_uri`).
//! - A fetched set lives for its `Cache-Control: max-age`, clamped to
//!   [`CachePolicy::min_ttl`]..[`CachePolicy::max_ttl`] ([`CachePolicy::default_ttl`] without
//!   one). Past that, the next request triggers one background refresh and is served with the
//!   keys in hand.
//! - A token with an unknown `kid` triggers a refresh at most once per
//!   [`CachePolicy::min_refresh_interval`], single-flight: however many requests are waiting,
//!   one fetch is made and all of them use its result.
//! - When a fetch fails, the last good keys stay in force (stale-if-error), the failure is
//!   logged and counted in [`JwksStatus`], and a failed attempt also waits out the minimum
//!   interval, so a dead endpoint is not hammered.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::fetch::HttpFetch;
use crate::keys::{JwksError, KeySet};

/// How long fetched keys are kept and how often they may be refetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// The shortest a fetched set is kept, whatever its `max-age` says (default 5 minutes).
    pub min_ttl: Duration,
    /// The longest a fetched set is kept, whatever its `max-age` says (default 24 hours).
    pub max_ttl: Duration,
    /// How long a set without `max-age` is kept (default 10 minutes).
    pub default_ttl: Duration,
    /// The least time between two fetches triggered by unknown key ids or failures
    /// (default 30 seconds).
    pub min_refresh_interval: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(86_400),
            default_ttl: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(30),
        }
    }
}

impl CachePolicy {
    fn ttl(&self, max_age: Option<Duration>) -> Duration {
        match max_age {
            Some(age) => age.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl)),
            None => self.default_ttl,
        }
    }
}

/// Where keys come from.
#[derive(Debug, Clone)]
enum Source {
    Fixed,
    File(PathBuf),
    Url(String),
    Discovery { issuer: String },
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// Completed fetch attempts, successful or not.
    attempts: u64,
    expires_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<JwksError>,
    consecutive_failures: u32,
}

/// The health of a JWKS, for metrics and readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwksStatus {
    /// Keys in force.
    pub keys: usize,
    /// Fetches made so far.
    pub fetches: u64,
    /// Failed fetches since the last success.
    pub consecutive_failures: u32,
    /// The most recent failure, if the last attempt failed.
    pub last_error: Option<JwksError>,
    /// Whether the keys in force are past their lifetime (being served stale).
    pub stale: bool,
}

/// A refreshable set of verification keys. Share it by `Arc`.
#[derive(Debug)]
pub struct Jwks {
    source: Source,
    fetcher: Option<Arc<dyn HttpFetch>>,
    policy: CachePolicy,
    state: RwLock<State>,
    refresh_lock: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    fetches: AtomicU64,
    jwks_uri: Mutex<Option<String>>,
}

impl Jwks {
    fn with_source(
        source: Source,
        fetcher: Option<Arc<dyn HttpFetch>>,
        policy: CachePolicy,
    ) -> Self {
        Self {
            source,
            fetcher,
            policy,
            state: RwLock::new(State::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
            jwks_uri: Mutex::new(None),
        }
    }

    /// A fixed key set that is never refreshed (inline configuration).
    pub fn fixed(keys: KeySet) -> Self {
        let jwks = Self::with_source(Source::Fixed, None, CachePolicy::default());
        if let Ok(mut state) = jwks.state.write() {
            state.keys = Some(Arc::new(keys));
        }
        jwks
    }

    /// Keys read from a JWKS file, re-read when they expire or an unknown `kid` appears.
    pub fn file(path: impl Into<PathBuf>, policy: CachePolicy) -> Self {
        Self::with_source(Source::File(path.into()), None, policy)
    }

    /// Keys fetched from a JWKS URL.
    pub fn url(url: impl Into<String>, fetcher: Arc<dyn HttpFetch>, policy: CachePolicy) -> Self {
        Self::with_source(Source::Url(url.into()), Some(fetcher), policy)
    }

    /// Keys found by OIDC discovery from `issuer`: its `/.well-known/openid-configuration`
    /// names the `jwks_uri`. The discovery document's `issuer` must equal `issuer` exactly.
    pub fn discovery(
        issuer: impl Into<String>,
        fetcher: Arc<dyn HttpFetch>,
        policy: CachePolicy,
    ) -> Self {
        Self::with_source(
            Source::Discovery {
                issuer: issuer.into(),
            },
            Some(fetcher),
            policy,
        )
    }

    /// Whether the set can change (anything but a fixed set).
    pub fn refreshable(&self) -> bool {
        !matches!(self.source, Source::Fixed)
    }

    /// The keys in force, without any I/O. `None` before the first successful load.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.state.read().ok().and_then(|s| s.keys.clone())
    }

    /// The number of completed fetch attempts; pass it to [`refresh`](Self::refresh).
    pub fn epoch(&self) -> u64 {
        self.state.read().map_or(0, |s| s.attempts)
    }

    /// Whether the keys in force are past their lifetime.
    pub fn is_stale(&self) -> bool {
        self.state
            .read()
            .ok()
            .and_then(|s| s.expires_at)
            .is_some_and(|at| Instant::now() >= at)
    }

    /// The health of the set.
    pub fn status(&self) -> JwksStatus {
        let stale = self.is_stale();
        let state = self.state.read();
        let fetches = self.fetches.load(Ordering::SeqCst);
        match state {
            Ok(s) => JwksStatus {
                keys: s.keys.as_ref().map_or(0, |k| k.len()),
                fetches,
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error.clone(),
                stale,
            },
            Err(_) => JwksStatus {
                keys: 0,
                fetches,
                consecutive_failures: 0,
                last_error: None,
                stale,
            },
        }
    }

    /// Refreshes the set, single-flight: if another refresh completed since `seen_epoch` (from
    /// [`epoch`](Self::epoch)), or the last attempt was less than the minimum interval ago,
    /// no fetch is made and the keys in force are returned.
    pub async fn refresh(&self, seen_epoch: u64) -> Option<Arc<KeySet>> {
        if !self.refreshable() {
            return self.keys();
        }
        let _guard = self.refresh_lock.lock().await;
        {
            let state = self.state.read().ok()?;
            let recent = state
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.policy.min_refresh_interval);
            if state.attempts != seen_epoch || recent {
                return state.keys.clone();
            }
        }
        let started = Instant::now();
        let result = self.fetch_once().await;
        let mut state = self.state.write().ok()?;
        state.attempts += 1;
        state.last_attempt = Some(started);
        match result {
            Ok((keys, max_age)) => {
                state.keys = Some(Arc::new(keys));
                state.expires_at = Some(started + self.policy.ttl(max_age));
                state.last_error = None;
                state.consecutive_failures = 0;
            }
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    serving_stale = state.keys.is_some(),
                    "JWKS refresh failed"
                );
                state.last_error = Some(err);
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            }
        }
        state.keys.clone()
    }

    /// Starts one background refresh if the keys are stale and none is running.
    pub fn refresh_in_background(self: &Arc<Self>) {
        if !self.refreshable() || !self.is_stale() {
            return;
        }
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::SeqCst);
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            let epoch = this.epoch();
            this.refresh(epoch).await;
            this.refreshing.store(false, Ordering::SeqCst);
        });
    }

    async fn fetch_once(&self) -> Result<(KeySet, Option<Duration>), JwksError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        match &self.source {
            Source::Fixed => Err(JwksError::Fetch("a fixed key set is never fetched".into())),
            Source::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| JwksError::Fetch(format!("{}: {e}", path.display())))?;
                Ok((KeySet::from_jwks_json(&bytes)?, None))
            }
            Source::Url(url) => self.fetch_url(url).await,
            Source::Discovery { issuer } => {
                let uri = self.jwks_uri(issuer).await?;
                let result = self.fetch_url(&uri).await;
                if result.is_err() {
                    // Rediscover next time: the provider may have moved its keys.
                    if let Ok(mut cached) = self.jwks_uri.lock() {
                        *cached = None;
                    }
                }
                result
            }
        }
    }

    async fn fetch_url(&self, url: &str) -> Result<(KeySet, Option<Duration>), JwksError> {
        let fetcher = self
            .fetcher
            .as_ref()
            .ok_or_else(|| JwksError::Fetch("no HTTP client configured".into()))?;
        let fetched = fetcher.get(url).await.map_err(JwksError::Fetch)?;
        if !(200..300).contains(&fetched.status) {
            return Err(JwksError::Status(fetched.status));
        }
        Ok((KeySet::from_jwks_json(&fetched.body)?, fetched.max_age))
    }

    async fn jwks_uri(&self, issuer: &str) -> Result<String, JwksError> {
        if let Some(uri) = self.jwks_uri.lock().ok().and_then(|u| u.clone()) {
            return Ok(uri);
        }
        let fetcher = self
            .fetcher
            .as_ref()
            .ok_or_else(|| JwksError::Fetch("no HTTP client configured".into()))?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let fetched = fetcher.get(&url).await.map_err(JwksError::Discovery)?;
        if !(200..300).contains(&fetched.status) {
            return Err(JwksError::Discovery(format!(
                "the discovery endpoint answered {}",
                fetched.status
            )));
        }
        let doc: Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| JwksError::Discovery(format!("not JSON: {e}")))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(JwksError::Discovery(
                "the document's `issuer` differs from the configured issuer".into(),
            ));
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| JwksError::Discovery("no `jwks_uri`".into()))?
            .to_owned();
        if let Ok(mut cached) = self.jwks_uri.lock() {
            *cached = Some(uri.clone());
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests;
