//! Progress of a running `blast`, one line at a time, on a terminal or not (CI, logs): done
//! out of total, the rate over the last interval, errors, and an estimate of the time left
//! that never exceeds the run's own time limit.

use std::time::Duration;

/// What the progress line is made of.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub done: u64,
    pub total: u64,
    /// Units done during the last interval, and its length.
    pub interval_done: u64,
    pub interval: Duration,
    pub errors: u64,
    pub elapsed: Duration,
    /// Time left before the run's `--duration` stops it.
    pub time_left: Duration,
}

/// The time left: the remaining units at the last interval's rate, bounded by the time limit.
/// Unknown (None) until something has been done, unless the time limit alone bounds it.
pub fn eta(s: &Snapshot) -> Duration {
    let remaining = s.total.saturating_sub(s.done);
    if remaining == 0 {
        return Duration::ZERO;
    }
    let rate = s.interval_done as f64 / s.interval.as_secs_f64().max(1e-3);
    if rate <= 0.0 {
        return s.time_left;
    }
    Duration::from_secs_f64(remaining as f64 / rate).min(s.time_left)
}

/// `12s 1200/5000 240/s (last 5s) 0 errors eta 16s`.
pub fn line(s: &Snapshot, unit: &str) -> String {
    format!(
        "blast: {} {}/{} {unit}, {:.0}/s over the last {}, {} errors, eta {}",
        short(s.elapsed),
        s.done,
        s.total,
        s.interval_done as f64 / s.interval.as_secs_f64().max(1e-3),
        short(s.interval),
        s.errors,
        short(eta(s)),
    )
}

/// `7s`, `2m05s`, `1h02m`.
pub fn short(d: Duration) -> String {
    let s = crate::units::to_u64(d.as_secs_f64().round());
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            done: 0,
            total: 1_000_000,
            interval_done: 0,
            interval: Duration::from_secs(1),
            errors: 0,
            elapsed: Duration::ZERO,
            time_left: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_five_second_run_never_promises_more_than_five_seconds() {
        // At the start nothing is done: the old bar opened at "11m" here.
        let mut s = snapshot();
        assert_eq!(eta(&s), Duration::from_secs(5));
        assert!(
            line(&s, "messages").ends_with("eta 5s"),
            "{}",
            line(&s, "messages")
        );
        // A slow first interval would predict hours; the time limit bounds it.
        s.done = 10;
        s.interval_done = 10;
        s.elapsed = Duration::from_secs(1);
        s.time_left = Duration::from_secs(4);
        assert_eq!(eta(&s), Duration::from_secs(4));
    }

    #[test]
    fn the_rate_of_the_last_interval_drives_the_estimate() {
        let mut s = snapshot();
        s.total = 5000;
        s.done = 1200;
        s.interval_done = 1200;
        s.interval = Duration::from_secs(5);
        s.elapsed = Duration::from_secs(5);
        s.time_left = Duration::from_secs(55);
        s.errors = 3;
        assert_eq!(eta(&s).as_secs(), 15, "3800 left at 240/s");
        assert_eq!(
            line(&s, "messages"),
            "blast: 5s 1200/5000 messages, 240/s over the last 5s, 3 errors, eta 16s"
        );
        s.done = 5000;
        assert_eq!(eta(&s), Duration::ZERO);
        assert_eq!(short(Duration::from_secs(125)), "2m05s");
        assert_eq!(short(Duration::from_secs(3720)), "1h02m");
    }
}
