//! A sharded TTL cache for DNS answers.
//!
//! Keys hash to one of N shards, each a `Mutex<HashMap>` held only for a lookup or insert, so
//! readers on different cores rarely meet. Entries expire at their own time (the time is
//! passed in, so the logic is testable without sleeping). Each shard is bounded: when full,
//! expired entries are purged and then the soonest-to-expire eighth is dropped in one pass.
//! Hit/miss/insert/eviction counters are atomics.

use super::{Answer, DnsQuery};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Entry {
    answer: Answer,
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
pub struct DnsCache {
    shards: Vec<Mutex<HashMap<DnsQuery, Entry>>>,
    per_shard: usize,
    stats: CacheStats,
}

impl DnsCache {
    /// A cache holding at most about `capacity` answers in `shards` shards.
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            stats: CacheStats::default(),
        }
    }

    fn shard(&self, q: &DnsQuery) -> &Mutex<HashMap<DnsQuery, Entry>> {
        let mut h = DefaultHasher::new();
        q.hash(&mut h);
        let i = usize::try_from(h.finish() % u64::try_from(self.shards.len()).unwrap_or(1))
            .unwrap_or(0);
        &self.shards[i]
    }

    /// The cached answer, if present and not expired at `now`.
    pub fn get(&self, q: &DnsQuery, now: Instant) -> Option<Answer> {
        let mut shard = self
            .shard(q)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match shard.get(q) {
            Some(e) if e.expires > now => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.answer.clone())
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

    /// Store an answer for `ttl` from `now`.
    pub fn insert(&self, q: DnsQuery, answer: Answer, ttl: Duration, now: Instant) {
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
                answer,
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
    use super::super::{LookupError, Records, TtlPolicy};
    use super::*;

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

    #[test]
    fn ttl_policy_table() {
        let p = TtlPolicy::default();
        let ok: Answer = Ok(Records::Addrs(vec![]));
        let s = Duration::from_secs;
        let cases: [(Answer, Option<u32>, Option<Duration>); 7] = [
            (ok.clone(), Some(3600), Some(s(3600))),
            (ok.clone(), Some(0), Some(s(5))),
            (ok.clone(), Some(10_000_000), Some(s(86_400))),
            (Err(LookupError::NxDomain), Some(3600), Some(s(300))),
            (Err(LookupError::NoData), Some(30), Some(s(30))),
            (Err(LookupError::NxDomain), None, Some(s(60))),
            (Err(LookupError::Temporary("x".into())), Some(3600), None),
        ];
        for (answer, ttl, expected) in cases {
            assert_eq!(p.ttl_for(&answer, ttl), expected, "{answer:?} {ttl:?}");
        }
    }
}
