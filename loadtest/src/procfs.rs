//! The target relay's own costs, read from /proc when the operator gives its pid: resident
//! memory (for memory per connection) and CPU time (for CPU per message, which is what sizes a
//! fleet). Linux only; the figures are absent elsewhere.

use anyhow::Context;

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_from_stat(&stat).with_context(|| format!("unexpected /proc/{pid}/stat"))
}

/// utime and stime are fields 14 and 15, counted after the parenthesised command name (which
/// may itself contain spaces), in clock ticks: USER_HZ, which Linux fixes at 100 for /proc.
fn cpu_from_stat(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "4242 (amtp relay) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 9 0";
        assert_eq!(cpu_from_stat(stat), Some(3.8));
        assert_eq!(cpu_from_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_can_be_read() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
    }
}
