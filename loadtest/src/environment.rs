//! Where a run happened, so two reports can be compared: the machine (cores, CPU model,
//! kernel), the relay (version from its `/metrics`, the commit the operator names, its pool
//! sizes and any settings the run was made with), the generator's command line, and the date.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    /// UTC, `2026-12-01 01:23:45 UTC`.
    pub date: String,
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub relay_version: Option<String>,
    pub relay_commit: Option<String>,
    /// `amtp_pool_members` by pool, as the relay reported it.
    pub relay_pools: BTreeMap<String, u64>,
    /// Relay settings named on the command line (`--setting connection_workers=2`): what a
    /// sweep varies.
    pub settings: BTreeMap<String, String>,
    /// The generator's command line.
    pub generator: String,
}

impl Environment {
    /// This machine now; the relay's fields are filled in by the caller.
    pub fn here() -> Self {
        Self {
            date: utc_now(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| format!("Linux {}", k.trim()))
                .unwrap_or_else(|_| std::env::consts::OS.to_string()),
            generator: std::env::args().collect::<Vec<_>>().join(" "),
            ..Default::default()
        }
    }
}

/// The current time as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// Seconds since 1970 as a UTC date and time (civil-from-days, proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `key=value` from the command line.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_087_045), "2026-12-01 01:04:05 UTC");
        let here = Environment::here();
        assert!(here.cores >= 1);
        assert!(!here.cpu_model.is_empty());
    }

    #[test]
    fn settings_are_key_value_pairs() {
        assert_eq!(
            parse_setting("batch_wait = 2ms").unwrap(),
            ("batch_wait".into(), "2ms".into())
        );
        assert!(parse_setting("nothing").is_err());
        assert!(parse_setting("=1").is_err());
    }
}
