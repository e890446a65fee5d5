//! The answer to "how many nodes": from the relay CPU a run measured per message and per new
//! session, a target peak rate, the share of AMTP and of new sessions, and the cores of a
//! node, the nodes needed at a chosen utilisation, connections and memory per node, and the
//! disk commit headroom — every step written out, so a planner can check the arithmetic.

use crate::message::SizeDistribution;
use crate::stats::RunResult;

/// The planner's inputs (`report --target-rate …`).
#[derive(Debug, Clone, clap::Args)]
pub struct SizingArgs {
    /// Peak messages per second the fleet must accept: enables the sizing section.
    #[arg(long)]
    pub target_rate: Option<f64>,
    /// The production message-size mix, e.g. `2k:50,20k:40,500k:10`.
    #[arg(long, default_value = "10k")]
    pub size_mix: SizeDistribution,
    /// Share of messages arriving over AMTP (0 to 1); the rest over SMTP.
    #[arg(long, default_value_t = 0.0)]
    pub amtp_share: f64,
    /// Share of messages that open a new session (1 / messages per session).
    #[arg(long, default_value_t = 0.05)]
    pub new_session_share: f64,
    /// Cores per relay node.
    #[arg(long, default_value_t = 8)]
    pub cores_per_node: u32,
    /// CPU utilisation to plan for (headroom for bursts and retries).
    #[arg(long, default_value_t = 0.6)]
    pub utilisation: f64,
    /// Concurrent inbound connections across the fleet at peak.
    #[arg(long, default_value_t = 0)]
    pub connections: u64,
    /// Relay memory without sessions, MiB (docs/PERFORMANCE.md: about 60).
    #[arg(long, default_value_t = 60.0)]
    pub base_mib: f64,
    /// Memory per idle SMTP session, KiB (`amtp-loadtest hold`; 21.3 on the reference machine).
    #[arg(long, default_value_t = 21.3)]
    pub kib_per_smtp_connection: f64,
    /// Memory per idle AMTP session, KiB (`amtp-loadtest hold`; 30.1 on the reference machine).
    #[arg(long, default_value_t = 30.1)]
    pub kib_per_amtp_connection: f64,
    /// Durable commits per second the node's disk sustains (`cargo bench --bench
    /// queue_commit`); default: the highest rate a run here committed (a lower bound).
    #[arg(long)]
    pub disk_commit_rate: Option<f64>,
}

/// A measured figure and the run it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub us: f64,
    pub source: String,
}

/// The outcome, with the arithmetic behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub per_message_us: f64,
    pub cores_busy: f64,
    pub cores_needed: f64,
    pub nodes: u64,
    pub connections_per_node: u64,
    pub memory_per_node_mib: f64,
    pub commits_per_node: f64,
    pub disk_headroom: f64,
    /// Each step as a line of text: inputs, measured figures, arithmetic, results.
    pub steps: Vec<String>,
    /// What makes the answer less certain.
    pub caveats: Vec<String>,
}

fn cpu_per_unit(run: &RunResult) -> Option<f64> {
    run.relay_cpu_us_per_unit
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The relay CPU per message of `protocol` message runs: the run with the highest rate (the
/// most loaded, which is what a node at peak sees).
fn message_cost(runs: &[RunResult], protocol: &str) -> Option<Figure> {
    runs.iter()
        .filter(|r| r.protocol == protocol && r.messages_per_connection > 0)
        .filter_map(|r| Some((r, cpu_per_unit(r)?)))
        .max_by(|a, b| a.0.messages_per_s.total_cmp(&b.0.messages_per_s))
        .map(|(r, us)| Figure {
            us,
            source: format!("run \"{}\" ({:.0} messages/s)", r.label, r.messages_per_s),
        })
}

/// The relay CPU per new session of `protocol`: session-only runs, full handshakes preferred
/// (the cost a new peer brings).
fn session_cost(runs: &[RunResult], protocol: &str) -> Option<Figure> {
    runs.iter()
        .filter(|r| r.protocol == protocol && r.messages_per_connection == 0)
        .filter_map(|r| Some((r, cpu_per_unit(r)?)))
        .max_by(|a, b| {
            let full =
                |r: &RunResult| r.tls_full as f64 / (r.tls_full + r.tls_resumed).max(1) as f64;
            full(a.0)
                .total_cmp(&full(b.0))
                .then(a.0.sessions.cmp(&b.0.sessions))
        })
        .map(|(r, us)| Figure {
            us,
            source: format!("run \"{}\" ({} sessions)", r.label, r.sessions),
        })
}

/// Sizes a fleet; None without `--target-rate` or without any run with a relay CPU figure.
pub fn size(args: &SizingArgs, runs: &[RunResult]) -> Option<Sizing> {
    let rate = args.target_rate?;
    let a = args.amtp_share.clamp(0.0, 1.0);
    let n = args.new_session_share.clamp(0.0, 1.0);
    let mut caveats = Vec::new();
    let smtp = message_cost(runs, "smtp");
    let amtp = message_cost(runs, "amtp");
    let any = || {
        runs.iter()
            .filter(|r| r.messages_per_connection > 0)
            .filter_map(|r| Some((r, cpu_per_unit(r)?)))
            .max_by(|a, b| a.0.messages_per_s.total_cmp(&b.0.messages_per_s))
            .map(|(r, us)| Figure {
                us,
                source: format!("run \"{}\" ({}; no smtp/amtp run)", r.label, r.protocol),
            })
    };
    let (c_smtp, c_amtp) = match (smtp, amtp) {
        (Some(s), Some(m)) => (s, m),
        (Some(s), None) => {
            if a > 0.0 {
                caveats.push("no AMTP message run: AMTP messages costed as SMTP ones".into());
            }
            (s.clone(), s)
        }
        (None, Some(m)) => {
            if a < 1.0 {
                caveats.push("no SMTP message run: SMTP messages costed as AMTP ones".into());
            }
            (m.clone(), m)
        }
        (None, None) => {
            let f = any()?;
            (f.clone(), f)
        }
    };
    let zero = |what: &str, caveats: &mut Vec<String>| {
        if n > 0.0 {
            caveats.push(format!(
                "no session-only {what} run (--messages-per-connection 0): new {what} sessions \
                 are costed only as far as the message runs include them"
            ));
        }
        Figure {
            us: 0.0,
            source: "not measured".into(),
        }
    };
    let s_smtp = session_cost(runs, "smtp").unwrap_or_else(|| {
        if a < 1.0 {
            zero("SMTP", &mut caveats)
        } else {
            Figure {
                us: 0.0,
                source: "not needed".into(),
            }
        }
    });
    let s_amtp = session_cost(runs, "amtp").unwrap_or_else(|| {
        if a > 0.0 {
            zero("AMTP", &mut caveats)
        } else {
            Figure {
                us: 0.0,
                source: "not needed".into(),
            }
        }
    });
    let measured_size = runs
        .iter()
        .filter(|r| r.messages_per_connection > 0)
        .map(|r| r.mean_size_bytes)
        .fold(0.0, f64::max);
    let mix = args.size_mix.mean();
    if measured_size > 0.0 && (mix / measured_size > 1.5 || measured_size / mix > 1.5) {
        caveats.push(format!(
            "the runs sent {:.0} KB messages, the mix averages {:.0} KB: CPU per message grows \
             with size, measure with `blast --size {}`",
            measured_size / 1000.0,
            mix / 1000.0,
            args.size_mix
        ));
    }
    let per_message =
        (1.0 - a) * c_smtp.us + a * c_amtp.us + n * ((1.0 - a) * s_smtp.us + a * s_amtp.us);
    let cores_busy = rate * per_message / 1e6;
    let utilisation = args.utilisation.clamp(0.05, 1.0);
    let cores_needed = cores_busy / utilisation;
    let cpu_nodes =
        crate::units::to_u64((cores_needed / f64::from(args.cores_per_node.max(1))).ceil()).max(1);
    // A disk ceiling the operator measured bounds the nodes too: each node commits its share.
    let disk_nodes = args
        .disk_commit_rate
        .filter(|d| *d > 0.0)
        .map(|d| crate::units::to_u64((rate / d).ceil()).max(1));
    let nodes = cpu_nodes.max(disk_nodes.unwrap_or(1));
    let connections_per_node = args.connections.div_ceil(nodes);
    let kib_per_conn = (1.0 - a) * args.kib_per_smtp_connection + a * args.kib_per_amtp_connection;
    let memory = args.base_mib + connections_per_node as f64 * kib_per_conn / 1024.0;
    let commits_per_node = rate / nodes as f64;
    let (disk, disk_source) = match args.disk_commit_rate {
        Some(d) => (d, "--disk-commit-rate".to_string()),
        None => runs
            .iter()
            .map(|r| (r.messages_per_s, r.label.as_str()))
            .max_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(d, l)| {
                caveats.push(
                    "disk: the highest rate a run here committed is a lower bound of what the \
                     disk can do; give --disk-commit-rate from `cargo bench --bench queue_commit`"
                        .into(),
                );
                (d, format!("measured in run \"{l}\", a lower bound"))
            })?,
    };
    let headroom = disk / commits_per_node;
    if headroom < 1.5 {
        caveats.push(format!(
            "disk headroom {headroom:.2}× is thin: more nodes, a faster disk, or a longer \
             [queue] batch_wait"
        ));
    }
    let steps = vec![
        format!(
            "Inputs: {rate:.0} messages/s at peak, size mix {} (mean {:.1} KB), {:.0} % AMTP, \
             {:.1} % of messages on a new session, {} cores per node, planned utilisation {:.0} %, \
             {} concurrent connections.",
            args.size_mix,
            mix / 1000.0,
            a * 100.0,
            n * 100.0,
            args.cores_per_node,
            utilisation * 100.0,
            args.connections
        ),
        format!(
            "Relay CPU per SMTP message c_smtp = {:.0} µs, from {}.",
            c_smtp.us, c_smtp.source
        ),
        format!(
            "Relay CPU per AMTP message c_amtp = {:.0} µs, from {}.",
            c_amtp.us, c_amtp.source
        ),
        format!(
            "Relay CPU per new SMTP session s_smtp = {:.0} µs, {}.",
            s_smtp.us, s_smtp.source
        ),
        format!(
            "Relay CPU per new AMTP session s_amtp = {:.0} µs, {}.",
            s_amtp.us, s_amtp.source
        ),
        format!(
            "Per message: (1 − {a:.2}) × {:.0} + {a:.2} × {:.0} + {n:.3} × ((1 − {a:.2}) × {:.0} + {a:.2} × {:.0}) = {per_message:.0} µs.",
            c_smtp.us, c_amtp.us, s_smtp.us, s_amtp.us
        ),
        format!(
            "Cores busy: {rate:.0} × {per_message:.0} µs = {cores_busy:.1} cores; at {:.0} %: {cores_busy:.1} / {utilisation:.2} = {cores_needed:.1} cores.",
            utilisation * 100.0
        ),
        match disk_nodes {
            Some(d) => format!(
                "Nodes: for CPU ⌈{cores_needed:.1} / {}⌉ = {cpu_nodes}; for the disk ⌈{rate:.0} / {:.0}⌉ = {d}; the larger: {nodes}.",
                args.cores_per_node,
                args.disk_commit_rate.unwrap_or_default()
            ),
            None => format!(
                "Nodes: ⌈{cores_needed:.1} / {}⌉ = {nodes}.",
                args.cores_per_node
            ),
        },
        format!(
            "Connections per node: ⌈{} / {nodes}⌉ = {connections_per_node}.",
            args.connections
        ),
        format!(
            "Memory per node: {:.0} MiB + {connections_per_node} × {kib_per_conn:.1} KiB = {memory:.0} MiB (KiB per connection: (1 − {a:.2}) × {:.1} + {a:.2} × {:.1}).",
            args.base_mib, args.kib_per_smtp_connection, args.kib_per_amtp_connection
        ),
        format!(
            "Disk: {commits_per_node:.0} messages committed/s per node ({:.1} MB/s of bodies) against {disk:.0}/s ({disk_source}): headroom {headroom:.2}×.",
            commits_per_node * mix / 1e6
        ),
    ];
    Some(Sizing {
        per_message_us: per_message,
        cores_busy,
        cores_needed,
        nodes,
        connections_per_node,
        memory_per_node_mib: memory,
        commits_per_node,
        disk_headroom: headroom,
        steps,
        caveats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::RunResult;

    fn run(label: &str, protocol: &str, per_conn: u64, rate: f64, cpu_us: f64) -> RunResult {
        RunResult {
            label: label.into(),
            protocol: protocol.into(),
            target: "127.0.0.1:25".into(),
            connections: 20,
            messages_per_connection: per_conn,
            rate: None,
            mean_size_bytes: 20_000.0,
            recipients: 1,
            identities: 1,
            elapsed_s: 10.0,
            sessions: 100,
            messages_ok: 1000,
            messages_failed: 0,
            bytes: 0,
            messages_per_s: rate,
            sessions_per_s: rate,
            mb_per_s: 0.0,
            tls_full: 100,
            tls_resumed: 0,
            relay_cpu_s: Some(1.0),
            relay_cpu_us_per_unit: Some(cpu_us),
            relay_context_switches: None,
            relay_context_switches_per_unit: None,
            phases: Vec::new(),
            errors: Default::default(),
            environment: Default::default(),
            timeline: Vec::new(),
            relay_samples: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn args() -> SizingArgs {
        SizingArgs {
            target_rate: Some(50_000.0),
            size_mix: "20k".parse().unwrap(),
            amtp_share: 0.8,
            new_session_share: 0.05,
            cores_per_node: 8,
            utilisation: 0.6,
            connections: 40_000,
            base_mib: 60.0,
            kib_per_smtp_connection: 21.3,
            kib_per_amtp_connection: 30.1,
            disk_commit_rate: Some(5874.0),
        }
    }

    #[test]
    fn the_worked_example_of_performance_md_comes_out_as_written() {
        // docs/PERFORMANCE.md: c = 900 µs, s = 625 µs → 925 µs, 46.3 cores busy, 77 needed,
        // ten 8-core nodes with 4,000 connections each.
        let runs = [
            run("smtp", "smtp", 100, 1000.0, 900.0),
            run("amtp", "amtp", 100, 900.0, 900.0),
            run("amtp sessions", "amtp", 0, 1400.0, 625.0),
        ];
        let mut a = args();
        a.amtp_share = 1.0;
        a.new_session_share = 0.8 / 20.0;
        let s = size(&a, &runs).unwrap();
        assert!(
            (s.per_message_us - 925.0).abs() < 0.01,
            "{}",
            s.per_message_us
        );
        assert!((s.cores_busy - 46.25).abs() < 0.01);
        assert!((s.cores_needed - 77.08).abs() < 0.01);
        assert_eq!(s.nodes, 10);
        assert_eq!(s.connections_per_node, 4000);
        assert!((s.memory_per_node_mib - (60.0 + 4000.0 * 30.1 / 1024.0)).abs() < 0.01);
        assert!((s.disk_headroom - 5874.0 / 5000.0).abs() < 1e-9);
        assert!(
            s.caveats.iter().any(|c| c.contains("headroom")),
            "{:?}",
            s.caveats
        );
        assert!(
            s.steps.iter().any(|l| l.ends_with("the larger: 10.")),
            "{:?}",
            s.steps
        );
    }

    #[test]
    fn the_most_loaded_run_gives_the_cost_and_missing_runs_are_said() {
        let runs = [
            run("smtp c1", "smtp", 100, 400.0, 1600.0),
            run("smtp c20", "smtp", 100, 1300.0, 770.0),
        ];
        let s = size(&args(), &runs).unwrap();
        assert!(s.steps[1].contains("770") && s.steps[1].contains("smtp c20"));
        assert!(s.caveats.iter().any(|c| c.contains("no AMTP message run")));
        assert!(s.caveats.iter().any(|c| c.contains("no session-only")));
        let mut no_target = args();
        no_target.target_rate = None;
        assert!(size(&no_target, &runs).is_none());
    }
}
