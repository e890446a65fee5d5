//! The process collector: CPU seconds, resident memory, open file descriptors, threads and
//! start time, read from `/proc/self` at each scrape.
//!
//! Exported under the names every Prometheus client library uses (`process_*`), so standard
//! dashboards and alerts work unchanged. Hand-written rather than the `prometheus` crate's
//! `process` feature, which pulls in `procfs` and its dependency tree for five numbers.
//! On systems without `/proc` the gauges stay at 0.

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// The process gauges.
pub struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    /// Clock ticks per second and page size: fixed for the process.
    ticks_per_second: f64,
    page_size: i64,
    boot_time: f64,
}

/// What `/proc/self/stat` tells, in the units the metrics need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: i64,
    /// Start time, clock ticks after boot.
    pub start_ticks: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: i64,
    /// Resident set size, pages.
    pub rss_pages: i64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may contain
/// spaces and parentheses itself, so fields are counted after the last `)`.
pub fn parse_stat(text: &str, ticks_per_second: f64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0 here.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let utime = num(11)?; // field 14
    let stime = num(12)?; // field 15
    let threads = num(17)?; // field 20
    let start_ticks = num(19)?; // field 22
    let vsize = num(20)?; // field 23
    let rss = f.get(21)?.parse::<i64>().ok()?; // field 24
    #[allow(clippy::cast_precision_loss)]
    let cpu_seconds = (utime + stime) as f64 / ticks_per_second;
    Some(Stat {
        cpu_seconds,
        threads: i64::try_from(threads).ok()?,
        start_ticks,
        virtual_bytes: i64::try_from(vsize).ok()?,
        rss_pages: rss,
    })
}

/// The soft `Max open files` limit from `/proc/<pid>/limits`.
pub fn parse_max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessMetrics {
    /// Register the gauges.
    pub fn register(r: &Registry) -> Self {
        let g = |name: &str, help: &str| {
            let m = Gauge::new(name, help).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let i = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        Self {
            cpu_seconds: {
                let m = Counter::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )
                .expect("valid metric");
                r.register(Box::new(m.clone())).expect("unique metric");
                m
            },
            resident_bytes: i(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_bytes: i(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: i("process_open_fds", "Number of open file descriptors."),
            max_fds: i(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            threads: i("process_threads", "Number of OS threads in the process."),
            start_time: g(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
            // The kernel's USER_HZ is 100 on every Linux architecture we run on; sysconf
            // would need libc (unsafe) for a constant.
            ticks_per_second: 100.0,
            page_size: 4096,
            boot_time: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_boot_time(&s))
                .unwrap_or(0.0),
        }
    }

    /// Read `/proc/self` and set the gauges.
    pub fn refresh(&self) {
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s, self.ticks_per_second))
        {
            // A counter follows the kernel's figure: add what it grew since the last scrape.
            let grown = stat.cpu_seconds - self.cpu_seconds.get();
            if grown > 0.0 {
                self.cpu_seconds.inc_by(grown);
            }
            self.threads.set(stat.threads);
            self.virtual_bytes.set(stat.virtual_bytes);
            self.resident_bytes
                .set(stat.rss_pages.saturating_mul(self.page_size));
            #[allow(clippy::cast_precision_loss)]
            self.start_time
                .set(self.boot_time + stat.start_ticks as f64 / self.ticks_per_second);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| parse_max_fds(&s))
        {
            self.max_fds.set(max);
        }
    }
}
