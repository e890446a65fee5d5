//! Durations on the command line: `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 500ms, 30s, 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s, m or h")),
    };
    if !(0.0..=7.0 * 86_400.0).contains(&secs) {
        return Err(format!("duration {text:?} out of range (up to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A non-negative figure rounded down to an integer; NaN and negatives give 0, values too
/// large give `u64::MAX` (Rust's float-to-integer casts saturate).
pub fn to_u64(x: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation)]
    let n = x as u64;
    n
}

/// As [`to_u64`], for counts and indexes.
pub fn to_usize(x: f64) -> usize {
    usize::try_from(to_u64(x)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("30d").is_err());
    }
}
