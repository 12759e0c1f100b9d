//! The verified-token cache: a hot client pays for one signature check, not one per request.
//!
//! Entries are keyed by the SHA-256 of the token (the token itself is never stored), expire no
//! later than the token's `exp` and no later than a configured maximum lifetime after they
//! were verified, and are bounded in number: when a shard is full its oldest entry is evicted
//! (first in, first out). An evicted or expired token is simply verified again.
//!
//! Only the outcome of verification is cached. Authorization rules and certificate binding
//! are checked again on every request, against the cached claims, so one cache can serve
//! routes with different rules and connections with different certificates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};
use portcullis_core::{Principal, Thumbprint};
use serde_json::Value;

const SHARDS: usize = 16;

/// A verified token's outcome.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    pub(crate) claims: Arc<Value>,
    /// Unix time after which the token is no longer valid (its `exp`), if it has one.
    pub(crate) exp: Option<u64>,
    /// The certificate the token is bound to (`cnf.x5t#S256`), if any.
    pub(crate) bound_to: Option<Thumbprint>,
}

#[derive(Debug)]
struct Entry {
    verified: Arc<Verified>,
    expires_at: u64,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<[u8; 32], Entry>,
    order: VecDeque<[u8; 32]>,
}

/// A bounded cache of verified tokens. Cheap to clone; clones share entries.
#[derive(Debug, Clone)]
pub struct TokenCache {
    shards: Arc<[Mutex<Shard>]>,
    per_shard: usize,
    max_ttl_secs: u64,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The cache key of a token.
pub(crate) fn token_key(token: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    key
}

impl TokenCache {
    /// A cache of about `capacity` entries (rounded up to a multiple of 16), each kept at most
    /// `max_ttl_secs` after verification.
    pub fn new(capacity: usize, max_ttl_secs: u64) -> Self {
        let shards: Vec<Mutex<Shard>> = (0..SHARDS).map(|_| Mutex::default()).collect();
        Self {
            shards: shards.into(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            max_ttl_secs,
            stats: Arc::default(),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> Option<&Mutex<Shard>> {
        self.shards.get(usize::from(key[0]) % SHARDS)
    }

    /// The entry for `key`, if present and not expired at `now`.
    pub(crate) fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<Verified>> {
        let found = self.lookup(key, now);
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn lookup(&self, key: &[u8; 32], now: u64) -> Option<Arc<Verified>> {
        let mut shard = self.shard(key)?.lock().ok()?;
        let entry = shard.map.get(key)?;
        if now < entry.expires_at {
            return Some(Arc::clone(&entry.verified));
        }
        shard.map.remove(key);
        None
    }

    /// Caches a verification made at `now`.
    pub(crate) fn insert(&self, key: [u8; 32], verified: Arc<Verified>, now: u64) {
        let ttl_end = now.saturating_add(self.max_ttl_secs);
        let expires_at = verified.exp.map_or(ttl_end, |exp| exp.min(ttl_end));
        if expires_at <= now {
            return;
        }
        let Some(Ok(mut shard)) = self.shard(&key).map(Mutex::lock) else {
            return;
        };
        while shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            shard.map.remove(&oldest);
        }
        if shard
            .map
            .insert(
                key,
                Entry {
                    verified,
                    expires_at,
                },
            )
            .is_none()
        {
            shard.order.push_back(key);
        }
        // `order` may hold keys already removed on expiry; keep it from growing without bound.
        if shard.order.len() > 2 * self.per_shard {
            let Shard { map, order } = &mut *shard;
            order.retain(|k| map.contains_key(k));
        }
    }

    /// The number of cached entries (expired ones included until they are touched).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.map.len()))
            .sum()
    }

    /// Lookups that found a live entry.
    pub fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::Relaxed)
    }

    /// Lookups that did not.
    pub fn misses(&self) -> u64 {
        self.stats.misses.load(Ordering::Relaxed)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every entry (used when keys are revoked).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                s.map.clear();
                s.order.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;

    fn verified(exp: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            principal: Principal::builder("u", AuthMethod::Jwt).build().unwrap(),
            claims: Arc::new(Value::Null),
            exp,
            bound_to: None,
        })
    }

    #[test]
    fn entries_expire_with_the_token_or_the_max_ttl() {
        let cache = TokenCache::new(100, 300);
        let a = token_key("a");
        cache.insert(a, verified(Some(1_100)), 1_000);
        assert!(cache.get(&a, 1_099).is_some());
        assert!(cache.get(&a, 1_100).is_none(), "never past the token's exp");
        assert!(cache.is_empty());

        let b = token_key("b");
        cache.insert(b, verified(Some(10_000)), 1_000);
        assert!(cache.get(&b, 1_299).is_some());
        assert!(cache.get(&b, 1_300).is_none(), "never past the max TTL");

        let c = token_key("c");
        cache.insert(c, verified(None), 1_000);
        assert!(cache.get(&c, 1_299).is_some());

        // An already-expired token is not cached.
        let d = token_key("d");
        cache.insert(d, verified(Some(999)), 1_000);
        assert!(cache.get(&d, 1_000).is_none());
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_tokens() {
        let cache = TokenCache::new(160, 3600);
        for i in 0..10_000 {
            cache.insert(token_key(&format!("t{i}")), verified(None), 0);
        }
        assert!(cache.len() <= 160, "{}", cache.len());
        // The newest survive, the oldest went first.
        assert!(cache.get(&token_key("t9999"), 1).is_some());
        assert!(cache.get(&token_key("t0"), 1).is_none());
        for shard in cache.shards.iter() {
            assert!(shard.lock().unwrap().order.len() <= 2 * cache.per_shard);
        }
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn keys_are_sha256() {
        assert_ne!(token_key("a"), token_key("b"));
        assert_eq!(token_key("a"), token_key("a"));
    }
}
