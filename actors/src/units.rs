//! Human units in the config file: durations like `"30s"` and sizes like `"25MB"`.
//!
//! Durations: an integer followed by `ms`, `s`, `m`, `h` or `d`. Sizes: an integer, or an
//! integer followed by `B`, `KB`/`MB`/`GB` (powers of 1000, as mail size limits are usually
//! quoted) or `KiB`/`MiB`/`GiB` (powers of 1024). Rates: a count per unit of time,
//! `"600/min"`, `"10/s"`, `"5000/h"`, `"20000/d"`.

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

/// A duration written as `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written as `"25MB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A rate written as `"600/min"`: `count` messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per period (at least 1).
    pub count: u32,
    /// The period (a second, a minute, an hour or a day).
    pub per: Duration,
}

impl Rate {
    /// Messages per millisecond.
    pub fn per_ms(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64() / 1000.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Parse `"600/min"`-style rates: a whole number above zero, `/`, and `s`, `min`, `h` or `d`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let (num, unit) = s.trim().split_once('/').ok_or_else(|| {
        format!("rate {s:?} must look like \"600/min\" (a count, '/', and s, min, h or d)")
    })?;
    let count: u32 = num
        .trim()
        .parse()
        .map_err(|_| format!("rate {s:?} must start with a whole number"))?;
    if count == 0 {
        return Err(format!(
            "rate {s:?} must be above zero (leave the key out for no limit)"
        ));
    }
    let per = match unit.trim() {
        "s" | "sec" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        u => {
            return Err(format!(
                "unknown rate unit {u:?} in {s:?} (use s, min, h or d)"
            ));
        }
    };
    Ok(Rate { count, per })
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rate(&s).map_err(de::Error::custom)
    }
}

/// Parse `"30s"`-style durations.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(d)
}

/// Parse `"25MB"`-style sizes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must start with a whole number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"25MB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("5d", 432_000_000),
            (" 2s ", 2000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["30", "s", "1.5s", "-1s", "3 weeks", "10y"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        let ok = [
            ("600/min", 600, 60),
            ("10/s", 10, 1),
            (" 5000 / h ", 5000, 3600),
            ("20000/d", 20_000, 86_400),
            ("3/m", 3, 60),
        ];
        for (s, count, secs) in ok {
            let r = parse_rate(s).unwrap();
            assert_eq!((r.count, r.per.as_secs()), (count, secs), "{s}");
        }
        assert_eq!(parse_rate("600/m").unwrap().to_string(), "600/min");
        assert!((parse_rate("10/s").unwrap().per_ms() - 0.01).abs() < 1e-12);
        for bad in ["600", "0/min", "-1/s", "1.5/s", "10/week", "/s", "ten/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("0/s").unwrap_err().contains("leave the key out"));
    }

    #[test]
    fn sizes() {
        let ok = [
            ("1000", 1000),
            ("25MB", 25_000_000),
            ("10KiB", 10_240),
            ("1GiB", 1 << 30),
            ("7B", 7),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["MB", "1.5MB", "10TB", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
