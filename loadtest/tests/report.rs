//! The report rendered from recorded runs (tests/data: real `blast --json` results against the
//! release relay on loopback, with its `/metrics` scraped): every section a capacity planner
//! reads is there, and the sizing answer for docs/PERFORMANCE.md's worked example is computed
//! from the recorded figures.

use amtp_loadtest::report::{self, Layout};
use amtp_loadtest::sizing::{self, SizingArgs};
use amtp_loadtest::stats::RunResult;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn runs(names: &[&str]) -> Vec<RunResult> {
    report::load(&names.iter().map(|n| data(n)).collect::<Vec<_>>()).unwrap()
}

/// docs/PERFORMANCE.md's worked example: 50,000 messages/s, 20 KB, 80 % AMTP in sessions of 20
/// messages, 40,000 connections, 8-core nodes.
fn worked_example() -> SizingArgs {
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

const ONE_RUN: &str = "amtp-messages.json";
const SIZING_RUNS: [&str; 3] = [
    "amtp-messages.json",
    "smtp-messages.json",
    "amtp-sessions.json",
];

#[test]
fn a_one_run_report_has_every_section_and_hides_multi_run_charts() {
    let one = runs(&[ONE_RUN]);
    assert_eq!(one.len(), 1);
    let run = &one[0];
    assert!(
        run.relay_samples.len() >= 3,
        "the recorded run scraped the relay"
    );
    assert!(!run.timeline.is_empty());
    assert!(run.environment.relay_version.is_some());
    let page = report::page("one run", &one, Layout::Runs, Some(&worked_example())).unwrap();
    for section in [
        "id=\"summary\"",
        "relay CPU per message",
        "relay CPU per session",
        "TLS handshakes:",
        "busiest pool:",
        "id=\"sizing\"",
        "id=\"over-time\"",
        "Messages per second</h3>",
        "Transaction latency within each second (p50, p99)</h3>",
        "Relay CPU</h3>",
        "Relay memory (RSS)</h3>",
        "Queue depth</h3>",
        "Pool utilisation (busy time per member)</h3>",
        "Pool mailbox depth (all members)</h3>",
        "Errors and 4xx over time</h3>",
        "id=\"phases\"",
        "RCPT (all)",
        "DATA → 354",
        "commit (end of DATA → 250)",
        "id=\"environment\"",
        "relay version",
        "id=\"runs\"",
    ] {
        assert!(page.contains(section), "missing {section}");
    }
    assert!(
        !page.contains("against concurrency"),
        "one run: no chart with a single dot"
    );
    assert!(
        !page.contains("Relay-side charts need"),
        "all relay charts drawn"
    );
    assert!(
        page.contains("viewBox=") && !page.contains("<svg width="),
        "charts take the page's width"
    );
}

#[test]
fn a_sweep_report_draws_each_setting_and_says_what_it_would_choose() {
    let mut names: Vec<String> = std::fs::read_dir(data("sweep"))
        .unwrap()
        .map(|e| format!("sweep/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    names.sort();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sweep = runs(&names);
    let page = report::page("sweep", &sweep, Layout::Runs, None).unwrap();
    assert!(page.contains("id=\"sweep\""));
    for key in [
        "connection_workers",
        "batch_wait",
        "concurrency_per_destination",
    ] {
        assert!(
            page.contains(&format!("<h3>{key}</h3>")),
            "no sweep of {key}"
        );
        assert!(
            page.contains(&format!("messages/s against {key}")),
            "no chart of {key}"
        );
    }
    assert_eq!(page.matches("<b>Choice:</b>").count(), 3);
    let sweeps = report::sweeps(&sweep);
    assert_eq!(sweeps.len(), 3);
    for (key, points, choice) in &sweeps {
        assert!(points.len() >= 2, "{key}");
        assert!(
            points.iter().all(|p| p.cpu_us.is_some()),
            "{key}: CPU per message"
        );
        assert!(choice.starts_with(&format!("{key} = ")), "{choice}");
    }
}

#[test]
fn two_runs_compare_side_by_side() {
    let ab = runs(&["smtp-messages.json", "amtp-messages.json"]);
    let page = report::page("a/b", &ab, Layout::Compare, None).unwrap();
    assert!(page.contains("id=\"compare\""));
    assert!(page.contains("A: smtp-messages") && page.contains("B: amtp-messages"));
    assert!(page.contains("B − A"));
    assert!(
        page.contains("A: relay CPU"),
        "time series of both runs, labelled"
    );
}

#[test]
fn the_worked_example_is_sized_from_the_recorded_figures() {
    let recorded = runs(&SIZING_RUNS);
    let s = sizing::size(&worked_example(), &recorded).unwrap();
    let page = report::page("sizing", &recorded, Layout::Runs, Some(&worked_example())).unwrap();
    assert!(page.contains(&format!("{} nodes of 8 cores", s.nodes)));
    // The arithmetic is consistent: nodes cover the cores needed at 60 %.
    assert!((s.cores_busy - 50_000.0 * s.per_message_us / 1e6).abs() < 1e-6);
    assert!(s.nodes as f64 * 8.0 >= s.cores_needed);
    assert!(
        s.nodes >= 9,
        "50,000 / 5,874 commits per node need 9 nodes for the disk alone"
    );
    assert_eq!(s.connections_per_node, 40_000_u64.div_ceil(s.nodes));
    assert!(
        s.steps
            .iter()
            .any(|l| l.starts_with("Relay CPU per new AMTP session"))
    );
    // The measured AMTP session cost comes from a session-only run, not a default.
    assert!(s.steps[4].contains("amtp-sessions"), "{}", s.steps[4]);
    eprintln!("worked example: {s:#?}");
}
