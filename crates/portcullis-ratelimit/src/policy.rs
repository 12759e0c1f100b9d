//! Named GCRA policies and brute-force throttling, plain Rust (no tower).

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::{Quota, RateLimiter};
use http::{Extensions, HeaderMap, StatusCode};
use portcullis_core::{RateLimitDecision, ValueError, validate_policy_name};

use crate::global::{FailureMode, RedisLimiter, Verdict};
use crate::key::{Key, KeySpec};
use crate::store::{BoundedStore, SharedStore};

type Limiter<C, MW> = RateLimiter<Key, SharedStore<Key, C>, C, MW>;

/// A named GCRA quota on a key: `burst` requests at once, refilled at one per `interval`.
pub struct RateLimitPolicy<C: Clock> {
    name: Arc<str>,
    spec: KeySpec,
    burst: u32,
    interval: Duration,
    limiter: Limiter<C, StateInformationMiddleware>,
    store: Arc<BoundedStore<Key, C>>,
    clock: C,
    global: Option<Arc<RedisLimiter>>,
}

/// Redis gave no decision and the policy fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalUnavailable;

impl<C: Clock> std::fmt::Debug for RateLimitPolicy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitPolicy")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl<C: Clock + Clone> RateLimitPolicy<C> {
    /// `requests` per `period` on `spec`, allowing bursts of `burst`, tracking at most about
    /// `max_keys` keys, on `clock`.
    ///
    /// # Errors
    ///
    /// If the name is not a valid policy name, or `period / requests` is zero.
    pub fn new(
        name: &str,
        spec: KeySpec,
        requests: NonZeroU32,
        period: Duration,
        burst: NonZeroU32,
        max_keys: NonZeroUsize,
        clock: C,
    ) -> Result<Self, ValueError> {
        validate_policy_name(name)?;
        let interval = period / requests.get();
        let quota = Quota::with_period(interval)
            .ok_or_else(|| {
                ValueError::new(
                    "rate-limit quota",
                    "the period divided by the requests is zero",
                )
            })?
            .allow_burst(burst);
        let store = Arc::new(BoundedStore::new(max_keys.get(), clock.clone()));
        let limiter = RateLimiter::new(quota, SharedStore(Arc::clone(&store)), clock.clone());
        Ok(Self {
            name: name.into(),
            spec,
            burst: burst.get(),
            interval,
            limiter,
            store,
            clock,
            global: None,
        })
    }

    /// Decides this policy in Redis, shared by every replica using the same Redis and name
    /// (see [`RedisLimiter`] for what happens when Redis is unavailable).
    #[must_use]
    pub fn with_global(mut self, redis: Arc<RedisLimiter>) -> Self {
        self.global = Some(redis);
        self
    }

    /// Whether this policy is decided in Redis.
    pub fn is_global(&self) -> bool {
        self.global.is_some()
    }

    /// The key of a request for this policy.
    pub fn key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<Key> {
        self.spec.key(headers, extensions)
    }

    /// Counts one request for `key`, in Redis for a global policy. When Redis gives no
    /// decision, a fail-open policy decides locally and a fail-closed one returns
    /// [`GlobalUnavailable`].
    ///
    /// # Errors
    ///
    /// [`GlobalUnavailable`] as above.
    pub async fn count_key_global(&self, key: &Key) -> Result<Count, GlobalUnavailable> {
        let Some(redis) = &self.global else {
            return Ok(self.count_key(key));
        };
        match redis
            .check(&self.name, key, self.interval, self.burst, 1)
            .await
        {
            Ok(Verdict::Allowed { remaining }) => Ok(Count::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.burst),
            }),
            Ok(Verdict::Limited { wait }) => Ok(Count::Limited { wait }),
            Err(err) => {
                tracing::warn!(policy = %self.name, error = %err, mode = ?redis.failure_mode(), "global rate limit unavailable");
                match redis.failure_mode() {
                    FailureMode::FailClosed => Err(GlobalUnavailable),
                    _ => Ok(self.count_key(key)),
                }
            }
        }
    }

    /// [`count_key_global`](Self::count_key_global), as a decision record.
    ///
    /// # Errors
    ///
    /// [`GlobalUnavailable`] as there.
    pub async fn check_key_global(
        &self,
        key: &Key,
    ) -> Result<RateLimitDecision, GlobalUnavailable> {
        self.count_key_global(key).await.map(|c| self.decision(c))
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.store.len()
    }

    /// The most keys tracked.
    pub fn max_keys(&self) -> usize {
        self.store.capacity()
    }

    /// Drops idle keys now (the store also does this by itself when it fills up).
    pub fn prune_idle(&self) {
        self.store.prune();
    }

    /// Requests counted in an overflow bucket because their key did not fit.
    pub fn overflowed(&self) -> u64 {
        self.store
            .stats
            .overflowed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The window reported in `RateLimit-Policy` (`w`): the time to refill a whole burst.
    pub fn window(&self) -> Duration {
        self.interval * self.burst
    }

    /// The time one request's worth of quota takes to refill.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Counts one request; `None` if the request has no key for this policy.
    pub fn check(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<RateLimitDecision> {
        let key = self.spec.key(headers, extensions)?;
        Some(self.check_key(&key))
    }

    /// Counts one request for `key`: the hot path, which allocates nothing.
    pub fn count_key(&self, key: &Key) -> Count {
        match self.limiter.check_key(key) {
            Ok(snapshot) => Count::Allowed {
                remaining: snapshot.remaining_burst_capacity().min(self.burst),
            },
            Err(not_until) => Count::Limited {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// The decision record of a count by this policy, for the audit log and the headers.
    pub fn decision(&self, count: Count) -> RateLimitDecision {
        let limit = u64::from(self.burst);
        let decision = match count {
            Count::Allowed { remaining } => RateLimitDecision::allowed(
                Arc::clone(&self.name),
                self.spec.kind(),
                limit,
                u64::from(remaining).min(limit),
                self.window(),
            ),
            Count::Limited { wait } => RateLimitDecision::limited(
                Arc::clone(&self.name),
                self.spec.kind(),
                limit,
                self.window(),
                wait,
            ),
        };
        // The name was validated and the numbers are consistent by construction.
        decision.unwrap_or_else(|_| fallback(&self.name))
    }

    /// Counts one request for `key` and returns its decision record.
    pub fn check_key(&self, key: &Key) -> RateLimitDecision {
        self.decision(self.count_key(key))
    }

    /// How restrictive a count by this policy is (see [`Restrictiveness`]).
    pub(crate) fn severity(&self, count: Count) -> Restrictiveness {
        match count {
            Count::Limited { wait } => restrictiveness(Some(wait), 0, u64::from(self.burst)),
            Count::Allowed { remaining } => {
                restrictiveness(None, u64::from(remaining), u64::from(self.burst))
            }
        }
    }
}

/// The outcome of counting one request, before it becomes a [`RateLimitDecision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Within quota, with this much left.
    Allowed {
        /// Requests left in the burst.
        remaining: u32,
    },
    /// Over quota; retry after `wait`.
    Limited {
        /// How long until one more request fits.
        wait: Duration,
    },
}

fn fallback(name: &str) -> RateLimitDecision {
    // Unreachable in practice (see `check_key`); reporting a limited decision fails closed.
    RateLimitDecision::limited(
        if validate_policy_name(name).is_ok() {
            name
        } else {
            "invalid"
        },
        portcullis_core::KeyKind::Global,
        1,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap_or_else(|_| fallback("invalid"))
}

/// The order in which decisions decide: limited before allowed, then the longer wait, then
/// the smaller share of the quota left. Greater is more restrictive.
pub(crate) type Restrictiveness = (bool, Duration, std::cmp::Reverse<u128>);

fn restrictiveness(wait: Option<Duration>, remaining: u64, limit: u64) -> Restrictiveness {
    (
        wait.is_some(),
        wait.unwrap_or_default(),
        std::cmp::Reverse(u128::from(remaining) * 1_000_000 / u128::from(limit.max(1))),
    )
}

/// Of several decisions, the one that decides: a limited one with the longest wait, else the
/// allowed one with the least quota left (relative to its limit).
pub fn most_restrictive(decisions: &[RateLimitDecision]) -> Option<&RateLimitDecision> {
    decisions.iter().max_by_key(|d| {
        restrictiveness(
            d.is_limited().then(|| d.retry_after().unwrap_or_default()),
            d.remaining(),
            d.limit(),
        )
    })
}

/// Brute-force throttling: counts responses with chosen statuses per key and, past a
/// threshold, locks the key out for a cool-down, before its requests reach authentication.
pub struct BruteForcePolicy<C: Clock> {
    spec: KeySpec,
    statuses: Vec<StatusCode>,
    failures: Limiter<C, NoOpMiddleware<C::Instant>>,
    lockout: Duration,
    locked: Mutex<HashMap<Key, C::Instant>>,
    max_locked: usize,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for BruteForcePolicy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BruteForcePolicy")
            .field("spec", &self.spec)
            .field("statuses", &self.statuses)
            .field("lockout", &self.lockout)
            .finish_non_exhaustive()
    }
}

impl<C: Clock + Clone> BruteForcePolicy<C> {
    /// Locks a key out for `lockout` once it has had more than `failures` responses with one
    /// of `statuses` within `per`.
    ///
    /// # Errors
    ///
    /// If `per / failures` is zero or `statuses` is empty.
    pub fn new(
        spec: KeySpec,
        statuses: Vec<StatusCode>,
        failures: NonZeroU32,
        per: Duration,
        lockout: Duration,
        max_keys: NonZeroUsize,
        clock: C,
    ) -> Result<Self, ValueError> {
        if statuses.is_empty() {
            return Err(ValueError::new("brute-force policy", "no status to count"));
        }
        let quota = Quota::with_period(per / failures.get())
            .ok_or_else(|| {
                ValueError::new(
                    "brute-force policy",
                    "the period divided by the failures is zero",
                )
            })?
            .allow_burst(failures);
        let store = Arc::new(BoundedStore::new(max_keys.get(), clock.clone()));
        Ok(Self {
            spec,
            statuses,
            failures: RateLimiter::new(quota, SharedStore(store), clock.clone()),
            lockout,
            locked: Mutex::new(HashMap::new()),
            max_locked: max_keys.get(),
            clock,
        })
    }

    /// The key of a request.
    pub fn key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<Key> {
        self.spec.key(headers, extensions)
    }

    /// How much longer `key` is locked out, if it is.
    pub fn locked_for(&self, key: &Key) -> Option<Duration> {
        let now = self.clock.now();
        let mut locked = self.locked.lock().ok()?;
        let until = *locked.get(key)?;
        if until > now {
            return Some(Duration::from(until.duration_since(now)));
        }
        locked.remove(key);
        None
    }

    /// Records a response status for `key`; returns whether this locked the key out.
    pub fn record(&self, key: &Key, status: StatusCode) -> bool {
        if !self.statuses.contains(&status) || self.failures.check_key(key).is_ok() {
            return false;
        }
        let now = self.clock.now();
        let Ok(mut locked) = self.locked.lock() else {
            return false;
        };
        if locked.len() >= self.max_locked {
            locked.retain(|_, until| *until > now);
        }
        if locked.len() >= self.max_locked && !locked.contains_key(key) {
            // Every slot holds an active lock-out: this key stays subject to the ordinary
            // rate limits only. Documented; the table stays bounded.
            tracing::warn!("brute-force lock-out table full");
            return false;
        }
        locked.insert(
            key.clone(),
            now + governor::nanos::Nanos::from(self.lockout),
        );
        true
    }
}
