//! The retry schedule: a pure function of the attempt count, so the whole schedule can be
//! tested at once.
//!
//! In the spirit of Postfix: the first retry after `first_retry` (5 minutes), each later wait
//! doubled up to `max_backoff` (about an hour), and the message given up (bounced) once it has
//! been queued longer than `max_lifetime` (5 days). A retry that would fall after expiry is
//! moved to the expiry instant, so the last attempt happens exactly at the deadline.

use std::time::Duration;

/// Retry settings (`[delivery]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry.
    pub first_retry: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Give up after the message has been queued this long.
    pub max_lifetime: Duration,
}

impl RetryPolicy {
    /// The policy `[delivery]` describes.
    pub fn from_config(c: &crate::config::DeliveryConfig) -> Self {
        Self {
            first_retry: c.first_retry.0,
            max_backoff: c.max_backoff.0,
            max_lifetime: c.max_lifetime.0,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(5 * 86_400),
        }
    }
}

/// What to do after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time (ms since epoch).
    RetryAt(u64),
    /// The message is too old: bounce the pending recipients.
    Expire,
}

impl RetryPolicy {
    /// The wait after `failed_attempts` failed attempts (1 = the first delivery failed).
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(31);
        self.first_retry
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// After a temporary failure at `now` (ms), for a message received at `received_at` (ms)
    /// that has now failed `failed_attempts` times.
    pub fn next(&self, received_at: u64, failed_attempts: u32, now: u64) -> Next {
        let deadline = received_at.saturating_add(ms(self.max_lifetime));
        if now >= deadline {
            return Next::Expire;
        }
        Next::RetryAt(
            now.saturating_add(ms(self.backoff(failed_attempts)))
                .min(deadline),
        )
    }

    /// The complete schedule for a message that fails every time an attempt is made, starting
    /// with an immediate first attempt at `received_at`: the attempt times, in ms.
    pub fn attempts(&self, received_at: u64) -> Vec<u64> {
        let mut times = vec![received_at];
        let mut failed = 0;
        loop {
            failed += 1;
            match self.next(received_at, failed, *times.last().unwrap_or(&received_at)) {
                Next::RetryAt(t) => times.push(t),
                Next::Expire => return times,
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn the_whole_default_schedule() {
        let p = RetryPolicy::default();
        let t0 = 1_000_000;
        let times = p.attempts(t0);
        let offsets_min: Vec<u64> = times.iter().map(|t| (t - t0) / MIN).collect();
        // Immediate, then 5, 10, 20, 40 minutes apart, then hourly until exactly 5 days.
        let mut expected = vec![0, 5, 15, 35, 75];
        let mut t = 75;
        while t + 60 < 5 * 24 * 60 {
            t += 60;
            expected.push(t);
        }
        expected.push(5 * 24 * 60);
        assert_eq!(offsets_min, expected);
        // 5 early attempts, 118 hourly ones (135 to 7,155 minutes), the last at the deadline.
        assert_eq!(times.len(), 124, "attempts over five days");
        assert_eq!(p.next(t0, 200, *times.last().unwrap()), Next::Expire);
        // Every gap is between the first retry and the maximum backoff.
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap <= 60 * MIN && gap > 0, "{gap}");
        }
    }

    #[test]
    fn short_schedules_and_edges() {
        let p = RetryPolicy {
            first_retry: Duration::from_secs(60),
            max_backoff: Duration::from_secs(240),
            max_lifetime: Duration::from_secs(900),
        };
        let offsets: Vec<u64> = p.attempts(0).iter().map(|t| t / 1000).collect();
        assert_eq!(offsets, vec![0, 60, 180, 420, 660, 900]);
        assert_eq!(p.backoff(0), Duration::from_secs(60));
        assert_eq!(p.backoff(1), Duration::from_secs(60));
        assert_eq!(p.backoff(3), Duration::from_secs(240));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(240), "no overflow");
        assert_eq!(
            p.next(0, 1, 899_999),
            Next::RetryAt(900_000),
            "clamped to the deadline"
        );
        assert_eq!(p.next(0, 1, 900_000), Next::Expire);
    }
}
