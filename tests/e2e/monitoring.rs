//! The operator material in docs/monitoring is real: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), every dashboard query parses as PromQL, and
//! every metric family the rules and dashboard name is one the relay exports.

use std::path::Path;
use std::process::Command;

fn monitoring() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring"))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool not found: install the Debian package `prometheus` (.ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// Every `amtp_…`/`process_…` family named in `text` (histogram suffixes stripped).
fn families(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("amtp_") || w.starts_with("process_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"], monitoring());
    promtool(&["test", "rules", "alerts.test.yml"], monitoring());
}

#[test]
fn dashboard_queries_parse_and_name_exported_families() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 30, "{} queries", exprs.len());
    // promtool parses PromQL in rule files: one recording rule per dashboard query, with
    // Grafana's variables replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("${1}", "$1");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard-rules.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard-rules.yml"], dir.path());

    // Every family the dashboard and the alerts use is documented in OPERATIONS.md, which
    // lists what the relay exports (the e2e metrics test checks the exposition itself).
    let operations =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
            .unwrap();
    let alerts = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    for family in families(&format!("{}\n{alerts}", exprs.join("\n"))) {
        assert!(
            operations.contains(&format!("`{family}`")),
            "{family} is used by docs/monitoring but not documented in docs/OPERATIONS.md"
        );
    }
}
