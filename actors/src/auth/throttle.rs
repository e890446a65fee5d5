//! Counting failures per key (client IP, user name and IP, user name) over a sliding window,
//! with lock-outs, and the growing delay for a user name under attack ([`user_delay`]).
//!
//! Pure: the caller passes the time. The table is bounded: past `capacity` keys, expired
//! entries are purged and then the stalest key is dropped, so a flood of distinct keys costs
//! memory proportional to the bound, not to the flood.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Failure tracker for one kind of key.
#[derive(Debug)]
pub struct FailureTracker<K> {
    window: Duration,
    max_failures: u32,
    lockout: Duration,
    capacity: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> FailureTracker<K> {
    /// `max_failures` within `window` locks the key for `lockout`.
    pub fn new(window: Duration, max_failures: u32, lockout: Duration, capacity: usize) -> Self {
        Self {
            window,
            max_failures: max_failures.max(1),
            lockout,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// Whether `key` is locked out at `now`.
    pub fn is_locked(&self, key: &K, now: Instant) -> bool {
        self.entries
            .get(key)
            .and_then(|e| e.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Failures recorded for `key` within the window before `now`.
    pub fn recent_failures(&self, key: &K, now: Instant) -> usize {
        self.entries.get(key).map_or(0, |e| {
            e.failures
                .iter()
                .filter(|&&t| now.duration_since(t) < self.window)
                .count()
        })
    }

    /// Record a failure; returns true when the key is (now) locked out.
    pub fn record_failure(&mut self, key: K, now: Instant) -> bool {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            failures: VecDeque::new(),
            locked_until: None,
            last: now,
        });
        entry.last = now;
        while entry
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now);
        if entry.failures.len() >= usize::try_from(self.max_failures).unwrap_or(usize::MAX) {
            entry.locked_until = Some(now + self.lockout);
            entry.failures.clear();
        }
        entry.locked_until.is_some_and(|until| now < until)
    }

    /// Purge expired entries; if still full, drop the stalest tenth in one pass, so that a
    /// flood of distinct keys costs amortised O(1) per key rather than a scan per key.
    fn make_room(&mut self, now: Instant) {
        let (window, lockout) = (self.window, self.lockout);
        self.entries.retain(|_, e| {
            now.duration_since(e.last) < window.max(lockout)
                || e.locked_until.is_some_and(|u| now < u)
        });
        if self.entries.len() >= self.capacity {
            let evict = (self.capacity / 10).max(1);
            let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last).collect();
            let (_, cutoff, _) = ages.select_nth_unstable(evict - 1);
            let cutoff = *cutoff;
            let mut removed = 0;
            self.entries.retain(|_, e| {
                let drop =
                    removed < evict && e.last <= cutoff && e.locked_until.is_none_or(|u| now >= u);
                removed += usize::from(drop);
                !drop
            });
            if self.entries.len() >= self.capacity {
                // Everything left is locked out: keep the lock-outs, forget the oldest anyway
                // rather than grow without bound.
                let mut ages: Vec<Instant> = self.entries.values().map(|e| e.last).collect();
                let (_, cutoff, _) = ages.select_nth_unstable(evict - 1);
                let cutoff = *cutoff;
                self.entries.retain(|_, e| e.last > cutoff);
            }
        }
    }

    /// Keys tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How long to hold an AUTH attempt for a user name that has drawn `failures` failures
/// (from any address) within the window: nothing for the first `free`, then 1 s, doubling
/// with each further failure, capped at `max`. A slowed name still authenticates with the
/// right password — an attacker who knows a user name can make that user's log-in slower,
/// never impossible — while guessing one name from many addresses costs ever longer waits.
pub fn user_delay(failures: usize, free: u32, max: Duration) -> Duration {
    let free = usize::try_from(free).unwrap_or(usize::MAX);
    if failures < free {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(failures - free).unwrap_or(u32::MAX).min(16);
    Duration::from_secs(1u64 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_delay_grows_with_failures_up_to_the_cap() {
        let max = Duration::from_secs(15);
        let table: &[(usize, u64)] = &[
            (0, 0),
            (4, 0),
            (5, 1),
            (6, 2),
            (7, 4),
            (8, 8),
            (9, 15),
            (40, 15),
            (usize::MAX, 15),
        ];
        for &(failures, secs) in table {
            assert_eq!(
                user_delay(failures, 5, max),
                Duration::from_secs(secs),
                "{failures} failures"
            );
        }
    }

    #[test]
    fn recent_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = FailureTracker::new(s(60), u32::MAX, s(300), 100);
        t.record_failure("u", t0);
        t.record_failure("u", t0 + s(30));
        assert_eq!(t.recent_failures(&"u", t0 + s(31)), 2);
        assert_eq!(t.recent_failures(&"u", t0 + s(61)), 1);
        assert_eq!(t.recent_failures(&"v", t0), 0);
        assert!(
            !t.is_locked(&"u", t0 + s(31)),
            "u32::MAX failures never lock"
        );
    }

    #[test]
    fn locks_after_max_failures_within_window_and_unlocks_after_lockout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = FailureTracker::new(s(60), 3, s(300), 100);
        assert!(!t.record_failure("ip", t0));
        assert!(!t.record_failure("ip", t0 + s(10)));
        assert!(!t.is_locked(&"ip", t0 + s(11)));
        assert!(
            t.record_failure("ip", t0 + s(20)),
            "third failure within a minute locks"
        );
        assert!(t.is_locked(&"ip", t0 + s(21)));
        assert!(t.is_locked(&"ip", t0 + s(319)));
        assert!(!t.is_locked(&"ip", t0 + s(320)), "lock-out expires");
        assert!(!t.is_locked(&"other", t0 + s(21)));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = FailureTracker::new(s(60), 3, s(300), 100);
        t.record_failure(1, t0);
        t.record_failure(1, t0 + s(50));
        assert!(
            !t.record_failure(1, t0 + s(70)),
            "the first failure slid out of the window"
        );
        assert!(t.record_failure(1, t0 + s(80)), "three within 60 s");
    }

    #[test]
    fn bounded_under_a_flood_of_keys() {
        let t0 = Instant::now();
        let mut t = FailureTracker::new(Duration::from_secs(60), 3, Duration::from_secs(300), 1000);
        for i in 0..100_000u32 {
            t.record_failure(i, t0 + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 1000);
        }
        // The newest keys survive eviction; the stalest were dropped.
        assert!(t.entries.contains_key(&99_999));
        assert!(!t.entries.contains_key(&0));
    }
}
