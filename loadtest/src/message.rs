//! Message sizes and bodies: `--size 10k` (fixed) or `--size 1k:60,10k:30,200k:10` (a weighted
//! distribution), and pre-built RFC 5322 bodies of about that size, so generating load costs
//! nothing per message.

use std::sync::Arc;

/// A weighted choice of message sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeDistribution {
    /// (size in bytes, weight)
    pub classes: Vec<(usize, u32)>,
}

/// Parses `10240`, `10k` (KiB), `1m` (MiB).
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("bad size {text:?}: expected e.g. 512, 10k or 1m"))?;
    let factor = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => anyhow::bail!("bad size unit in {text:?}: use k or m"),
    };
    let size = n * factor;
    anyhow::ensure!(
        (256..=64 * 1024 * 1024).contains(&size),
        "size {text:?} out of range: 256 bytes to 64 MiB"
    );
    Ok(size)
}

impl std::str::FromStr for SizeDistribution {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut classes = Vec::new();
        for part in text.split(',') {
            let (size, weight) = match part.split_once(':') {
                Some((s, w)) => (
                    parse_size(s)?,
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| anyhow::anyhow!("bad weight in {part:?}"))?,
                ),
                None => (parse_size(part)?, 1),
            };
            anyhow::ensure!(weight > 0, "weight 0 in {part:?}");
            classes.push((size, weight));
        }
        Ok(Self { classes })
    }
}

/// The command-line form: `10k`, or `1k:60,10k:30,200k:10`.
impl std::fmt::Display for SizeDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (size, weight)) in self.classes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match size {
                s if s % (1024 * 1024) == 0 => write!(f, "{}m", s / (1024 * 1024))?,
                s if s % 1024 == 0 => write!(f, "{}k", s / 1024)?,
                s => write!(f, "{s}")?,
            }
            if self.classes.len() > 1 {
                write!(f, ":{weight}")?;
            }
        }
        Ok(())
    }
}

impl SizeDistribution {
    /// The weighted mean size in bytes.
    pub fn mean(&self) -> f64 {
        let total: u64 = self.classes.iter().map(|c| u64::from(c.1)).sum();
        self.classes
            .iter()
            .map(|(s, w)| *s as f64 * f64::from(*w))
            .sum::<f64>()
            / total as f64
    }

    /// Index of the class chosen by `roll` in `0..total weight` (deterministic per message).
    pub fn pick(&self, n: u64) -> usize {
        let total: u64 = self.classes.iter().map(|c| u64::from(c.1)).sum();
        // Spread consecutive messages over the classes (a multiplicative hash of n).
        let mut roll = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
        for (i, (_, w)) in self.classes.iter().enumerate() {
            if roll < u64::from(*w) {
                return i;
            }
            roll -= u64::from(*w);
        }
        self.classes.len() - 1
    }
}

/// One pre-built body per size class: headers and 76-character lines, CRLF, no line starting
/// with a dot (no stuffing needed), ending in CRLF.
pub fn bodies(dist: &SizeDistribution, from: &str) -> Vec<Arc<Vec<u8>>> {
    dist.classes
        .iter()
        .map(|(size, _)| Arc::new(body(*size, from)))
        .collect()
}

fn body(size: usize, from: &str) -> Vec<u8> {
    let mut out = format!(
        "From: <{from}>\r\nTo: <load@sink.invalid>\r\nSubject: amtp-loadtest {size} bytes\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{size}.loadtest@amtp.invalid>\r\n\r\n"
    )
    .into_bytes();
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut i = 0usize;
    while out.len() + 2 < size {
        let line = (size - out.len() - 2).min(76);
        for _ in 0..line {
            out.push(ALPHABET[i % ALPHABET.len()]);
            i += 7;
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_distributions_parse() {
        assert_eq!(parse_size("10k").unwrap(), 10_240);
        assert_eq!(parse_size("1M").unwrap(), 1_048_576);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("10x").is_err());
        assert!(parse_size("1").is_err());
        let d: SizeDistribution = "1k:3,10k:1".parse().unwrap();
        assert_eq!(d.classes, vec![(1024, 3), (10_240, 1)]);
        assert_eq!(d.mean(), (3.0 * 1024.0 + 10_240.0) / 4.0);
        let picks: Vec<usize> = (0..4000).map(|n| d.pick(n)).collect();
        let small = picks.iter().filter(|&&i| i == 0).count();
        assert!((2800..3200).contains(&small), "{small}");
    }

    #[test]
    fn bodies_have_the_requested_size_and_never_need_dot_stuffing() {
        for size in [256, 1000, 10_240, 100_000] {
            let b = body(size, "a@b.test");
            assert!(
                b.len() <= size && b.len() + 80 > size,
                "{size}: {}",
                b.len()
            );
            assert!(b.ends_with(b"\r\n"));
            assert!(!b.windows(3).any(|w| w == b"\r\n."));
        }
    }
}
