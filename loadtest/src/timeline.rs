//! What a run did second by second, as the generator saw it: messages accepted, refused and
//! failed, errors (4xx apart, so a saturation point shows), and the transaction latency's p50
//! and p99 within each second. Shared by the connection tasks behind one lock (one update per
//! message), so a run costs one small histogram per second, not one per connection.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The longest run the timeline follows; later seconds are folded into the last one.
const MAX_SECONDS: usize = 3600;

struct Bucket {
    ok: u64,
    failed: u64,
    errors: u64,
    errors_4xx: u64,
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            errors: 0,
            errors_4xx: 0,
            // 1 µs to 10 minutes, 2 significant digits: small enough for one per second.
            latency: Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"),
        }
    }
}

/// Per-second counters of one run.
pub struct Timeline {
    started: Instant,
    seconds: Vec<Bucket>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            seconds: Vec::new(),
        }
    }

    fn bucket(&mut self, at: Instant) -> &mut Bucket {
        let second = usize::try_from(at.saturating_duration_since(self.started).as_secs())
            .unwrap_or(usize::MAX)
            .min(MAX_SECONDS - 1);
        while self.seconds.len() <= second {
            self.seconds.push(Bucket::new());
        }
        &mut self.seconds[second]
    }

    /// A message accepted now after `latency`.
    pub fn accepted(&mut self, latency: Duration) {
        let b = self.bucket(Instant::now());
        b.ok += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        b.latency.saturating_record(us);
    }

    /// A message that was not accepted.
    pub fn failed(&mut self) {
        self.bucket(Instant::now()).failed += 1;
    }

    /// An error counted under `key` (a reply code or a kind such as `timeout`).
    pub fn error(&mut self, key: &str) {
        let b = self.bucket(Instant::now());
        b.errors += 1;
        if key.starts_with('4') {
            b.errors_4xx += 1;
        }
    }

    /// The finished series, one entry per second from the start.
    pub fn seconds(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, b)| Second {
                t: u32::try_from(t).unwrap_or(u32::MAX),
                messages: b.ok,
                failed: b.failed,
                errors: b.errors,
                errors_4xx: b.errors_4xx,
                p50_us: (!b.latency.is_empty()).then(|| b.latency.value_at_quantile(0.5)),
                p99_us: (!b.latency.is_empty()).then(|| b.latency.value_at_quantile(0.99)),
            })
            .collect()
    }
}

/// One second of a run (from `t` to `t + 1` seconds after the start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Second {
    pub t: u32,
    /// Messages accepted (or sessions, in session-only runs).
    pub messages: u64,
    pub failed: u64,
    /// Errors of any kind, and those that were 4xx replies.
    pub errors: u64,
    pub errors_4xx: u64,
    /// Transaction latency within this second; absent when nothing was accepted.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_their_second_and_4xx_are_counted_apart() {
        let started = Instant::now() - Duration::from_millis(2500);
        let mut t = Timeline::new(started);
        t.accepted(Duration::from_millis(2));
        t.accepted(Duration::from_millis(4));
        t.error("451");
        t.error("timeout");
        t.failed();
        let s = t.seconds();
        assert_eq!(s.len(), 3, "seconds 0 and 1 exist, empty");
        assert_eq!(s[0].messages, 0);
        assert_eq!(s[0].p50_us, None);
        assert_eq!((s[2].messages, s[2].failed), (2, 1));
        assert_eq!((s[2].errors, s[2].errors_4xx), (2, 1));
        let p99 = s[2].p99_us.unwrap();
        assert!((3900..=4100).contains(&p99), "{p99}");
    }
}
