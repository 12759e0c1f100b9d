//! A bounded keyed state store for governor.
//!
//! governor's own keyed store grows with every distinct key until the user prunes it. This one
//! holds at most a configured number of keys, in 64 shards, and looks after itself:
//!
//! Keys are hashed with a per-process random seed (foldhash), so clients cannot choose keys
//! that collide, and only the 64-bit hash and the GCRA state are kept: 16 bytes a slot.
//!
//! - When a shard is full and a new key arrives, the shard first drops its idle keys: keys whose
//!   bucket has fully refilled (their theoretical arrival time is in the past), which are
//!   indistinguishable from keys never seen. Evicting them changes no decision.
//! - If nothing idle can be dropped (a flood of distinct keys, all active), the new key shares
//!   the shard's single overflow bucket with every other key that did not fit. The limiter keeps
//!   limiting: keys already tracked keep their own buckets, and the flood is limited as a group.
//!   After a prune that freed little, the next prune of that shard waits a moment, so a flood
//!   does not turn every request into a scan.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use governor::state::StateStore;

const SHARDS: usize = 64;
/// How long a shard waits before pruning again after a prune that freed little.
const PRUNE_BACKOFF_NANOS: u64 = 100_000_000;

/// An open-addressing table of `(fingerprint, TAT)` slots with linear probing, at most 7/8
/// full and grown by a quarter at a time, so it stays dense (memory latency, not arithmetic,
/// dominates a lookup among a million keys). A fingerprint
/// is the key's 64-bit keyed hash (never 0, which marks an empty slot); keys themselves are not
/// stored, so a slot is 16 bytes and a lookup usually touches one cache line. Two keys with the
/// same fingerprint would share a bucket: with a per-process random seed, the chance among a
/// million keys is about 3 in 100 million, and clients cannot aim for it.
#[derive(Debug, Default)]
struct Table {
    slots: Vec<[u64; 2]>,
    len: usize,
}

impl Table {
    /// The home slot of `fp`: its hash scaled onto the table (any table size works, so the
    /// table can grow by a quarter at a time and stay dense).
    fn home(&self, fp: u64) -> usize {
        // The top six bits chose the shard, so they are the same for every key here: scale
        // the remaining bits.
        ((u128::from(fp << 6) * self.slots.len() as u128) >> 64) as usize
    }

    /// `Ok(index)` of the slot holding `fp`, or `Err(index)` of the empty slot where it goes.
    fn find(&self, fp: u64) -> Result<usize, usize> {
        let cap = self.slots.len();
        let mut i = self.home(fp);
        // The table is never more than 7/8 full, so an empty slot ends every probe.
        for _ in 0..cap {
            match self.slots.get(i) {
                Some([f, _]) if *f == fp => return Ok(i),
                Some([0, _]) | None => return Err(i),
                _ => {
                    i += 1;
                    if i == cap {
                        i = 0;
                    }
                }
            }
        }
        Err(usize::MAX)
    }

    fn get_mut(&mut self, fp: u64) -> Option<&mut u64> {
        let i = self.find(fp).ok()?;
        self.slots.get_mut(i).map(|s| &mut s[1])
    }

    fn insert(&mut self, fp: u64, tat: u64) {
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        if let Err(i) = self.find(fp)
            && let Some(slot) = self.slots.get_mut(i)
        {
            *slot = [fp, tat];
            self.len += 1;
        }
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() + self.slots.len() / 4 + 1).max(16);
        let old = std::mem::replace(&mut self.slots, vec![[0, 0]; cap]);
        self.len = 0;
        for [fp, tat] in old {
            if fp != 0 {
                self.insert(fp, tat);
            }
        }
    }

    /// Keeps the slots whose TAT passes `keep`; returns how many were dropped.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) -> usize {
        let before = self.len;
        let live: Vec<[u64; 2]> = self
            .slots
            .iter()
            .copied()
            .filter(|[fp, tat]| *fp != 0 && keep(*tat))
            .collect();
        for slot in &mut self.slots {
            *slot = [0, 0];
        }
        self.len = 0;
        for [fp, tat] in live {
            self.insert(fp, tat);
        }
        before - self.len
    }
}

#[derive(Debug)]
struct Shard {
    table: Table,
    overflow: Option<u64>,
    no_prune_before: u64,
}

/// Counters of a [`BoundedStore`].
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    pub(crate) evicted: AtomicU64,
    pub(crate) overflowed: AtomicU64,
}

/// A keyed GCRA state store holding at most about `capacity` keys.
#[derive(Debug)]
pub(crate) struct BoundedStore<K, C: Clock> {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    clock: C,
    start: C::Instant,
    pub(crate) stats: StoreStats,
    _keys: std::marker::PhantomData<fn(&K)>,
}

impl<K: Hash + Eq + Clone, C: Clock> BoundedStore<K, C> {
    /// A store for about `capacity` keys (rounded up to a multiple of 64), measuring idleness
    /// on `clock` from now. Create the limiter with the same clock right after, so its time
    /// origin is (up to nanoseconds) the same.
    pub(crate) fn new(capacity: usize, clock: C) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    table: Table::default(),
                    overflow: None,
                    no_prune_before: 0,
                })
            })
            .collect();
        let start = clock.now();
        Self {
            shards,
            per_shard,
            hasher: RandomState::default(),
            clock,
            start,
            stats: StoreStats::default(),
            _keys: std::marker::PhantomData,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// The key's fingerprint (never 0) and its shard (picked by the top bits; the table
    /// index uses the low bits).
    fn locate(&self, key: &K) -> Option<(u64, &Mutex<Shard>)> {
        let fp = self.hasher.hash_one(key).max(1);
        self.shards
            .get((fp >> 58) as usize % SHARDS)
            .map(|s| (fp, s))
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.table.len))
            .sum()
    }

    /// The most keys held.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Drops every idle key now.
    pub(crate) fn prune(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                let dropped = s.table.retain(|tat| tat > now);
                self.stats
                    .evicted
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
        }
    }
}

/// A [`BoundedStore`] shared between its limiter and the code that reports on it.
#[derive(Debug)]
pub(crate) struct SharedStore<K, C: Clock>(pub(crate) Arc<BoundedStore<K, C>>);

impl<K: Hash + Eq + Clone, C: Clock> StateStore for SharedStore<K, C> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone, C: Clock> BoundedStore<K, C> {
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A poisoned shard lock means a panic elsewhere while holding it; the table itself is
        // still consistent (every update is a single slot write), so keep using it.
        let Some((fp, shard)) = self.locate(key) else {
            return f(None).map(|(t, _)| t);
        };
        let mut s = match shard.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tat) = s.table.get_mut(fp) {
            let (t, new) = f(Some(Nanos::new(*tat)))?;
            *tat = new.as_u64();
            return Ok(t);
        }
        if s.table.len >= self.per_shard {
            let now = self.now();
            if now >= s.no_prune_before {
                let freed = s.table.retain(|tat| tat > now);
                self.stats
                    .evicted
                    .fetch_add(freed as u64, Ordering::Relaxed);
                if freed < self.per_shard / 8 {
                    s.no_prune_before = now.saturating_add(PRUNE_BACKOFF_NANOS);
                }
            }
        }
        if s.table.len >= self.per_shard {
            self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
            let (t, new) = f(s.overflow.map(Nanos::new))?;
            s.overflow = Some(new.as_u64());
            return Ok(t);
        }
        let (t, new) = f(None)?;
        s.table.insert(fp, new.as_u64());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::middleware::NoOpMiddleware;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    use std::time::Duration;

    type Limiter = RateLimiter<
        u32,
        SharedStore<u32, FakeRelativeClock>,
        FakeRelativeClock,
        NoOpMiddleware<Nanos>,
    >;

    fn limiter(
        capacity: usize,
        clock: &FakeRelativeClock,
        burst: u32,
    ) -> (Limiter, Arc<BoundedStore<u32, FakeRelativeClock>>) {
        let quota = Quota::per_second(NonZeroU32::new(burst).unwrap());
        let store = Arc::new(BoundedStore::new(capacity, clock.clone()));
        (
            RateLimiter::new(quota, SharedStore(Arc::clone(&store)), clock.clone()),
            store,
        )
    }

    #[test]
    fn the_table_finds_grows_and_retains() {
        let mut t = Table::default();
        assert!(t.get_mut(5).is_none());
        for fp in 1..=10_000u64 {
            t.insert(fp.wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1), fp);
        }
        assert_eq!(t.len, 10_000);
        assert!(t.len * 8 <= t.slots.len() * 7);
        for fp in 1..=10_000u64 {
            assert_eq!(
                t.get_mut(fp.wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1))
                    .copied(),
                Some(fp)
            );
        }
        assert_eq!(t.retain(|tat| tat % 2 == 0), 5_000);
        assert_eq!(t.len, 5_000);
        assert_eq!(
            t.get_mut(2u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)).copied(),
            Some(2)
        );
        assert!(
            t.get_mut(3u64.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .is_none()
        );
    }

    #[test]
    fn behaves_like_a_keyed_gcra() {
        let clock = FakeRelativeClock::default();
        let (l, _) = limiter(1000, &clock, 2);
        assert!(l.check_key(&1).is_ok());
        assert!(l.check_key(&1).is_ok());
        assert!(l.check_key(&1).is_err());
        assert!(l.check_key(&2).is_ok(), "keys are independent");
        clock.advance(Duration::from_millis(500));
        assert!(l.check_key(&1).is_ok(), "one cell refilled after 1/2 s");
        assert!(l.check_key(&1).is_err());
    }

    #[test]
    fn idle_keys_are_evicted_to_make_room() {
        let clock = FakeRelativeClock::default();
        let (l, store) = limiter(64 * 64, &clock, 1);
        for k in 0..10_000 {
            let _ = l.check_key(&k);
        }
        assert!(store.len() <= store.capacity());
        clock.advance(Duration::from_secs(2));
        let overflowed = store.stats.overflowed.load(Ordering::Relaxed);
        // Every bucket has refilled: new keys push idle ones out instead of overflowing (100
        // new keys cannot fill a 64-key shard that has just been emptied).
        for k in 20_000..20_100 {
            assert!(l.check_key(&k).is_ok());
        }
        assert_eq!(store.stats.overflowed.load(Ordering::Relaxed), overflowed);
        assert!(store.stats.evicted.load(Ordering::Relaxed) > 0);
        store.prune();
        assert!(store.len() <= 100);
    }

    #[test]
    fn a_flood_of_active_keys_is_limited_as_a_group() {
        let clock = FakeRelativeClock::default();
        let (l, store) = limiter(64, &clock, 1);
        let mut allowed = 0;
        for k in 0..100_000u32 {
            if l.check_key(&k).is_ok() {
                allowed += 1;
            }
        }
        // At most one cell per tracked key plus one per shard's overflow bucket.
        assert!(allowed <= 64 + SHARDS, "{allowed}");
        assert!(store.len() <= store.capacity());
        assert!(store.stats.overflowed.load(Ordering::Relaxed) > 0);
    }
}
