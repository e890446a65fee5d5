//! The target relay's own costs, read from /proc when the operator gives its pid: resident
//! memory (for memory per connection), CPU time (for CPU per message, which is what sizes a
//! fleet) and context switches (how often its threads sleep and wake per message: the price
//! of hand-offs between threads). Linux only; the figures are absent elsewhere.

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

/// Context switches, voluntary and not, summed over every thread the process has now.
///
/// The process-wide `/proc/<pid>/status` counts only its main thread; each thread's own
/// `/proc/<pid>/task/<tid>/status` counts that thread. A thread that exits during a run takes
/// its count with it, so a run's figure is a lower bound when threads come and go (tokio's
/// blocking pool keeps idle threads for 10 s, so a steady run loses few).
pub fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("status");
        // A thread may exit between listing and reading: it no longer counts.
        if let Ok(status) = std::fs::read_to_string(&path) {
            total += switches_from_status(&status);
        }
    }
    Ok(total)
}

/// `voluntary_ctxt_switches` plus `nonvoluntary_ctxt_switches` of one status file.
fn switches_from_status(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
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

    #[test]
    fn context_switches_add_voluntary_and_nonvoluntary() {
        let status = "Name:\tamtp-relay\nvoluntary_ctxt_switches:\t120\n\
                      nonvoluntary_ctxt_switches:\t7\nVmRSS:\t1 kB\n";
        assert_eq!(switches_from_status(status), 127);
        assert_eq!(switches_from_status("Name:\tx\n"), 0);
    }

    #[test]
    fn context_switches_of_every_thread_are_counted() {
        let pid = std::process::id();
        let before = context_switches(pid).unwrap();
        // A thread that sleeps switches at least once; its count is in the sum while it lives.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            rx.recv().unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let during = context_switches(pid).unwrap();
        tx.send(()).unwrap();
        sleeper.join().unwrap();
        assert!(during > before, "{during} should exceed {before}");
    }
}
