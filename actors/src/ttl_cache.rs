//! A sharded TTL cache, shared by every core: DNS answers (the resolver) and verified AMTP
//! identities (the identity check) both live in one.
//!
//! Keys hash to one of N shards, each a `Mutex<HashMap>` held only for a lookup or insert, so
//! readers on different cores rarely meet. Entries expire at their own time (the time is
//! passed in, so the logic is testable without sleeping). Each shard is bounded: when full,
//! expired entries are purged and then the soonest-to-expire eighth is dropped in one pass.
//! Hit/miss/insert/eviction counters are atomics.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Entry<V> {
    value: V,
    expires: Instant,
}

/// Counters (monotonic).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Answers served from the cache (positive or negative).
    pub hits: AtomicU64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: AtomicU64,
    /// Answers stored.
    pub inserts: AtomicU64,
    /// Entries dropped to stay within the bound.
    pub evictions: AtomicU64,
}

/// See the module docs.
pub struct TtlCache<K, V> {
    shards: Vec<Mutex<HashMap<K, Entry<V>>>>,
    per_shard: usize,
    stats: CacheStats,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// A cache holding at most about `capacity` values in `shards` shards.
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            stats: CacheStats::default(),
        }
    }

    fn shard(&self, q: &K) -> &Mutex<HashMap<K, Entry<V>>> {
        let mut h = DefaultHasher::new();
        q.hash(&mut h);
        let i = usize::try_from(h.finish() % u64::try_from(self.shards.len()).unwrap_or(1))
            .unwrap_or(0);
        &self.shards[i]
    }

    /// The cached value, if present and not expired at `now`.
    pub fn get(&self, q: &K, now: Instant) -> Option<V> {
        let mut shard = self
            .shard(q)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match shard.get(q) {
            Some(e) if e.expires > now => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.value.clone())
            }
            Some(_) => {
                shard.remove(q);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// How long the entry for `q` still lives, if present and not expired.
    pub fn expires_in(&self, q: &K, now: Instant) -> Option<Duration> {
        let shard = self
            .shard(q)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shard
            .get(q)
            .and_then(|e| e.expires.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Store a value for `ttl` from `now`.
    pub fn insert(&self, q: K, value: V, ttl: Duration, now: Instant) {
        let mut shard = self
            .shard(&q)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&q) {
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.per_shard {
                let evict = (self.per_shard / 8).max(1);
                let mut expiries: Vec<Instant> = shard.values().map(|e| e.expires).collect();
                let (_, cutoff, _) = expiries.select_nth_unstable(evict - 1);
                let cutoff = *cutoff;
                let before = shard.len();
                shard.retain(|_, e| e.expires > cutoff);
                self.stats.evictions.fetch_add(
                    u64::try_from(before - shard.len()).unwrap_or(0),
                    Ordering::Relaxed,
                );
            }
        }
        shard.insert(
            q,
            Entry {
                value,
                expires: now + ttl,
            },
        );
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries currently held (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::{Answer, DnsQuery, LookupError, Records};

    type DnsCache = TtlCache<DnsQuery, Answer>;

    fn ptr(n: u8) -> DnsQuery {
        DnsQuery::Ptr(std::net::IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn hits_expire_with_their_ttl() {
        let c = DnsCache::new(100, 4);
        let t0 = Instant::now();
        let answer: Answer = Ok(Records::Names(vec!["host.test".into()]));
        assert_eq!(c.get(&ptr(1), t0), None);
        c.insert(ptr(1), answer.clone(), Duration::from_secs(30), t0);
        assert_eq!(c.get(&ptr(1), t0 + Duration::from_secs(29)), Some(answer));
        assert_eq!(
            c.get(&ptr(1), t0 + Duration::from_secs(30)),
            None,
            "expired"
        );
        assert_eq!(c.stats().hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats().misses.load(Ordering::Relaxed), 2);
        // Names are keys after normalisation.
        assert_eq!(
            DnsQuery::A("Host.TEST.".into()).normalized(),
            DnsQuery::A("host.test".into())
        );
    }

    #[test]
    fn bounded_and_evicts_soonest_to_expire() {
        let c = DnsCache::new(64, 1);
        let t0 = Instant::now();
        for n in 0..=255u8 {
            c.insert(
                ptr(n),
                Err(LookupError::NxDomain),
                Duration::from_secs(1000 + u64::from(n)),
                t0,
            );
            assert!(c.len() <= 64);
        }
        assert!(
            c.get(&ptr(255), t0).is_some(),
            "the newest, longest-lived entry stays"
        );
        assert!(c.get(&ptr(0), t0).is_none());
        assert!(c.stats().evictions.load(Ordering::Relaxed) > 0);
    }
}
