//! `amtp-loadtest report`: turns `blast --json` results into one self-contained HTML page a
//! capacity planner can act on — the relay's CPU per message and per session first, what the
//! run did over time (generator and relay side, one chart each on a shared time axis), the
//! phase breakdown, the environment, a pool-size sweep with the setting it would choose, and
//! the sizing answer. Charts are inline SVG (plotters) at the page's width; charts that need
//! several runs appear only when there are several.

use crate::scrape::RelaySample;
use crate::sizing::{SizingArgs, size};
use crate::stats::RunResult;
use anyhow::Context;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Result files from `blast --json` (one result, a JSON array, or one result per line).
    #[arg(required_unless_present = "compare")]
    pub results: Vec<PathBuf>,
    /// Two results side by side, A then B (before/after a change, two pool settings).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "results")]
    pub compare: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "loadtest-report.html")]
    pub out: PathBuf,
    /// Page title.
    #[arg(long, default_value = "amtp-loadtest report")]
    pub title: String,
    #[command(flatten)]
    pub sizing: SizingArgs,
}

/// Reads results in any of the accepted layouts.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            let many: Vec<RunResult> = serde_json::from_str(trimmed)
                .with_context(|| format!("parsing {}", path.display()))?;
            runs.extend(many);
        } else {
            for value in serde_json::Deserializer::from_str(trimmed).into_iter::<RunResult>() {
                runs.push(value.with_context(|| format!("parsing {}", path.display()))?);
            }
        }
    }
    anyhow::ensure!(!runs.is_empty(), "no results in the given files");
    Ok(runs)
}

/// How the page is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Any number of runs.
    Runs,
    /// Exactly two runs, A and B, side by side.
    Compare,
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em 2em;color:#222;max-width:1500px}\
table{border-collapse:collapse;margin:0.5em 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}\
td:first-child,th:first-child{text-align:left}figure{margin:0.5em 0;width:100%}\
figure svg{width:100%;height:auto;display:block}\
.big{font-size:1.6em;font-weight:bold}.cards{display:flex;flex-wrap:wrap;gap:1em}\
.card{border:1px solid #ccc;border-radius:6px;padding:0.6em 1em;min-width:15em}\
.warn{color:#a40}.note{color:#555}ol li,ul li{margin:0.2em 0}";

/// The whole page.
pub fn html(title: &str, runs: &[RunResult]) -> anyhow::Result<String> {
    page(title, runs, Layout::Runs, None)
}

/// The whole page, with a layout and optional sizing inputs.
pub fn page(
    title: &str,
    runs: &[RunResult],
    layout: Layout,
    sizing: Option<&SizingArgs>,
) -> anyhow::Result<String> {
    let mut page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n\
         <style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    let sweep = sweep_section(runs)?;
    let is_sweep = !sweep.is_empty();
    // A sweep's answer first; otherwise the per-run figures.
    page.push_str(&sweep);
    page.push_str(&summary(runs));
    if layout == Layout::Compare && runs.len() == 2 {
        page.push_str(&compare_table(&runs[0], &runs[1]));
    }
    if let Some(args) = sizing.filter(|a| !is_sweep || a.target_rate.is_some()) {
        page.push_str(&sizing_section(args, runs));
    }
    if runs.len() <= 2 || layout == Layout::Compare {
        page.push_str(&time_series(runs)?);
    } else {
        page.push_str(
            "<h2 id=\"over-time\">Over time</h2>\n<p class=\"note\">Several runs on one time \
             axis cannot be read: render one run alone (or two with <code>--compare</code>) for \
             its time series.</p>\n",
        );
    }
    page.push_str("<h2 id=\"phases\">Phase breakdown</h2>\n");
    page.push_str(&phase_table(runs));
    page.push_str("<h3>Latency percentiles (whole transaction, MAIL to final 250)</h3>\n<figure>");
    page.push_str(&latency_chart(runs, "message")?);
    page.push_str("</figure>\n");
    let concurrency: std::collections::BTreeSet<usize> =
        runs.iter().map(|r| r.connections).collect();
    if runs.len() > 1 && concurrency.len() > 1 && !is_sweep {
        for (sessions, what) in [(false, "Messages"), (true, "Sessions")] {
            if runs
                .iter()
                .any(|r| (r.messages_per_connection == 0) == sessions)
            {
                page.push_str(&format!(
                    "<h2>{what} per second against concurrency</h2>\n<figure>"
                ));
                page.push_str(&throughput_chart(runs, sessions)?);
                page.push_str("</figure>\n");
            }
        }
    }
    page.push_str(&environment_table(runs));
    page.push_str("<h2 id=\"runs\">Runs</h2>\n");
    page.push_str(&table(runs));
    page.push_str("</body></html>\n");
    Ok(page)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `12,345`.
fn thousands(x: f64) -> String {
    let digits = crate::units::to_u64(x.abs().round()).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x.round() < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The rate a run is judged by: messages/s, or sessions/s for session-only runs.
fn rate(run: &RunResult) -> f64 {
    if run.messages_per_connection == 0 {
        run.sessions_per_s
    } else {
        run.messages_per_s
    }
}

/// Relay CPU µs per accepted message (None for session-only runs or without a CPU figure).
pub fn cpu_per_message(run: &RunResult) -> Option<f64> {
    let cpu = run.relay_cpu_s?;
    (run.messages_per_connection > 0 && run.messages_ok > 0)
        .then(|| cpu * 1e6 / run.messages_ok as f64)
}

/// Relay CPU µs per session, from session-only runs (connect, TLS, EHLO, QUIT): what a new
/// session costs. In message runs the figure would be mostly the messages' cost, so it is
/// left out there.
pub fn cpu_per_session(run: &RunResult) -> Option<f64> {
    let cpu = run.relay_cpu_s?;
    (run.messages_per_connection == 0 && run.sessions > 0).then(|| cpu * 1e6 / run.sessions as f64)
}

/// Per pool over the whole run: (utilisation per member, 0..1, mean mailbox depth).
pub fn pool_use(samples: &[RelaySample]) -> BTreeMap<String, (f64, f64)> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return BTreeMap::new();
    };
    let dt = last.t - first.t;
    let mut out = BTreeMap::new();
    if dt <= 0.0 {
        return out;
    }
    for (name, end) in &last.pools {
        let start = first.pools.get(name).map_or(0.0, |p| p.busy_s);
        let members = end.members.max(1.0);
        let mailbox = samples
            .iter()
            .filter_map(|s| s.pools.get(name))
            .map(|p| p.mailbox)
            .sum::<f64>()
            / samples.len() as f64;
        out.insert(name.clone(), ((end.busy_s - start) / dt / members, mailbox));
    }
    out
}

/// The pool whose members were busiest, with its utilisation per member.
pub fn busiest_pool(samples: &[RelaySample]) -> Option<(String, f64)> {
    pool_use(samples)
        .into_iter()
        .map(|(name, (u, _))| (name, u))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn or_dash(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("–".into(), f)
}

/// The figures a fleet is sized by, first: one card per run.
fn summary(runs: &[RunResult]) -> String {
    let mut out = String::from("<h2 id=\"summary\">Summary</h2>\n");
    if runs.len() > 4 {
        out.push_str(&summary_table(runs));
    } else {
        out.push_str(&summary_cards(runs));
    }
    for r in runs {
        for w in &r.warnings {
            out.push_str(&format!(
                "<p class=\"warn\">{}: {}</p>\n",
                escape(&r.label),
                escape(w)
            ));
        }
    }
    if runs.iter().all(|r| r.relay_cpu_s.is_none()) {
        out.push_str(
            "<p class=\"warn\">No relay CPU figure: run blast with --pid or --metrics-url.</p>\n",
        );
    }
    out
}

/// Many runs: one row each.
fn summary_table(runs: &[RunResult]) -> String {
    let mut out = String::from(
        "<table><tr><th>run</th><th>relay CPU µs/message</th><th>relay CPU µs/session</th>\
         <th>rate/s</th><th>TLS full/resumed</th><th>p50 ms</th><th>p99 ms</th>\
         <th>busiest pool</th><th>errors</th></tr>\n",
    );
    for r in runs {
        let m = r.phases.iter().find(|p| p.phase == "message");
        out.push_str(&format!(
            "<tr><td>{}</td><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.label),
            or_dash(cpu_per_message(r), thousands),
            or_dash(cpu_per_session(r), thousands),
            thousands(rate(r)),
            r.tls_full,
            r.tls_resumed,
            m.map_or("–".into(), |p| ms(p.p50_us)),
            m.map_or("–".into(), |p| ms(p.p99_us)),
            busiest_pool(&r.relay_samples)
                .map_or("–".into(), |(p, u)| format!("{p} {:.0} %", u * 100.0)),
            r.errors.values().sum::<u64>(),
        ));
    }
    out.push_str("</table>\n");
    out
}

/// A few runs: one card each, the CPU figures large.
fn summary_cards(runs: &[RunResult]) -> String {
    let mut out = String::from("<div class=\"cards\">\n");
    for r in runs {
        let busiest = busiest_pool(&r.relay_samples).map_or(
            "– (run blast with --metrics-url)".to_string(),
            |(p, u)| format!("{p} ({:.0} % of a thread per member)", u * 100.0),
        );
        let p = |name: &str| r.phases.iter().find(|p| p.phase == name);
        let lat = p("message").map_or("–".into(), |m| {
            format!(
                "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms",
                ms(m.p50_us),
                ms(m.p90_us),
                ms(m.p99_us),
                ms(m.p999_us),
                ms(m.max_us)
            )
        });
        let errors: u64 = r.errors.values().sum();
        out.push_str(&format!(
            "<div class=\"card\"><b>{label}</b><br>\
             relay CPU per message<br><span class=\"big\">{cpm}</span><br>\
             relay CPU per session<br><span class=\"big\">{cps}</span><br>\
             {rate} {unit}/s · {mbps:.1} MB/s<br>\
             TLS handshakes: {full} full, {resumed} resumed<br>\
             latency {lat}<br>busiest pool: {busiest}<br>\
             {ok} accepted, {failed} failed, {errors} errors{cpu}</div>\n",
            label = escape(&r.label),
            cpm = or_dash(cpu_per_message(r), |v| format!("{} µs", thousands(v))),
            cps = cpu_per_session(r).map_or_else(
                || format!(
                    "</span><span>– ({} messages per session: a session-only run measures it)",
                    r.messages_per_connection
                ),
                |v| format!("{} µs", thousands(v))
            ),
            rate = thousands(rate(r)),
            unit = if r.messages_per_connection == 0 {
                "sessions"
            } else {
                "messages"
            },
            mbps = r.mb_per_s,
            full = r.tls_full,
            resumed = r.tls_resumed,
            ok = r.messages_ok,
            failed = r.messages_failed,
            cpu = r.relay_cpu_s.map_or(String::new(), |c| format!(
                "<br>relay used {:.2} cores on average",
                c / r.elapsed_s
            )),
        ));
    }
    out.push_str("</div>\n");
    out
}

fn compare_table(a: &RunResult, b: &RunResult) -> String {
    let p99 = |r: &RunResult, phase: &str| {
        r.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.p99_us as f64 / 1000.0)
    };
    let rows: Vec<(&str, Option<f64>, Option<f64>, &str)> = vec![
        (
            "messages/s (sessions/s in session runs)",
            Some(rate(a)),
            Some(rate(b)),
            "higher",
        ),
        (
            "relay CPU µs per message",
            cpu_per_message(a),
            cpu_per_message(b),
            "lower",
        ),
        (
            "relay CPU µs per session",
            cpu_per_session(a),
            cpu_per_session(b),
            "lower",
        ),
        (
            "transaction p99 ms",
            p99(a, "message"),
            p99(b, "message"),
            "lower",
        ),
        (
            "commit (end of DATA → 250) p99 ms",
            p99(a, "data_end"),
            p99(b, "data_end"),
            "lower",
        ),
        (
            "errors",
            Some(a.errors.values().sum::<u64>() as f64),
            Some(b.errors.values().sum::<u64>() as f64),
            "lower",
        ),
    ];
    let mut out = format!(
        "<h2 id=\"compare\">A against B</h2>\n<table><tr><th>figure</th><th>A: {}</th><th>B: {}</th>\
         <th>B − A</th><th>better is</th></tr>\n",
        escape(&a.label),
        escape(&b.label)
    );
    for (name, x, y, better) in rows {
        let change = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:+.1} %", (y - x) / x * 100.0),
            _ => "–".into(),
        };
        let f = |v: Option<f64>| {
            or_dash(v, |v| {
                if v < 100.0 {
                    format!("{v:.2}")
                } else {
                    thousands(v)
                }
            })
        };
        out.push_str(&format!(
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{change}</td><td>{better}</td></tr>\n",
            f(x),
            f(y)
        ));
    }
    out.push_str(
        "</table>\n<p class=\"note\">Figures on a shared machine vary by several per cent \
         between identical runs: repeat both before trusting a difference under 10 %.</p>\n",
    );
    out
}

fn sizing_section(args: &SizingArgs, runs: &[RunResult]) -> String {
    let mut out = String::from("<h2 id=\"sizing\">Sizing</h2>\n");
    match size(args, runs) {
        None if args.target_rate.is_none() => out.push_str(
            "<p class=\"note\">Give <code>--target-rate</code> (and the mix, AMTP share, new \
             sessions, cores per node) for the nodes a fleet needs.</p>\n",
        ),
        None => out.push_str(
            "<p class=\"warn\">No run has a relay CPU figure (blast --pid or --metrics-url): \
             nothing to size with.</p>\n",
        ),
        Some(s) => {
            out.push_str(&format!(
                "<p class=\"big\">{} nodes of {} cores; {} connections, {} MiB and {} commits/s \
                 per node (disk headroom {:.2}×)</p>\n<ol>\n",
                s.nodes,
                args.cores_per_node,
                thousands(s.connections_per_node as f64),
                thousands(s.memory_per_node_mib),
                thousands(s.commits_per_node),
                s.disk_headroom
            ));
            for step in &s.steps {
                out.push_str(&format!("<li>{}</li>\n", escape(step)));
            }
            out.push_str("</ol>\n");
            for c in &s.caveats {
                out.push_str(&format!("<p class=\"warn\">{}</p>\n", escape(c)));
            }
        }
    }
    out
}

/// A setting's value as a number for ordering (`2ms` → 2), when it has one.
fn numeric(value: &str) -> Option<f64> {
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    value[..end].parse().ok()
}

/// One point of a sweep: a setting's value and the runs made with it.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub value: String,
    pub messages_per_s: f64,
    pub cpu_us: Option<f64>,
}

/// For each setting that differs between runs: its points in order, and the choice.
pub fn sweeps(runs: &[RunResult]) -> Vec<(String, Vec<SweepPoint>, String)> {
    let mut keys: BTreeMap<&str, BTreeMap<&str, Vec<&RunResult>>> = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.environment.settings {
            keys.entry(k).or_default().entry(v).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (key, values) in keys {
        if values.len() < 2 {
            continue;
        }
        let mut points: Vec<SweepPoint> = values
            .into_iter()
            .map(|(value, rs)| {
                let n = rs.len() as f64;
                let cpus: Vec<f64> = rs.iter().filter_map(|r| cpu_per_unit(r)).collect();
                SweepPoint {
                    value: value.to_string(),
                    messages_per_s: rs.iter().map(|r| rate(r)).sum::<f64>() / n,
                    cpu_us: (!cpus.is_empty())
                        .then(|| cpus.iter().sum::<f64>() / cpus.len() as f64),
                }
            })
            .collect();
        points.sort_by(|a, b| match (numeric(&a.value), numeric(&b.value)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => a.value.cmp(&b.value),
        });
        let choice = choose(key, &points);
        out.push((key.to_string(), points, choice));
    }
    out
}

fn cpu_per_unit(r: &RunResult) -> Option<f64> {
    if r.messages_per_connection == 0 {
        cpu_per_session(r)
    } else {
        cpu_per_message(r)
    }
}

/// Which value to set, and why: the highest rate, unless a value within 5 % of it costs less
/// relay CPU per message (then that one; the smaller value when equal).
pub fn choose(key: &str, points: &[SweepPoint]) -> String {
    let Some(best) = points
        .iter()
        .max_by(|a, b| a.messages_per_s.total_cmp(&b.messages_per_s))
    else {
        return String::new();
    };
    let near: Vec<&SweepPoint> = points
        .iter()
        .filter(|p| p.messages_per_s >= best.messages_per_s * 0.95)
        .collect();
    let chosen = near
        .iter()
        .min_by(|a, b| {
            a.cpu_us
                .unwrap_or(f64::MAX)
                .total_cmp(&b.cpu_us.unwrap_or(f64::MAX))
        })
        .copied()
        .unwrap_or(best);
    let spread = points
        .iter()
        .map(|p| p.messages_per_s)
        .fold(f64::MIN, f64::max)
        / points
            .iter()
            .map(|p| p.messages_per_s)
            .fold(f64::MAX, f64::min)
            .max(1e-9);
    let cpu = chosen.cpu_us.map_or(String::new(), |c| {
        format!(", {} µs of relay CPU per message", thousands(c))
    });
    let mut why = if chosen.value == best.value {
        format!(
            "{key} = {}: the highest rate, {} messages/s{cpu}",
            chosen.value,
            thousands(chosen.messages_per_s)
        )
    } else {
        format!(
            "{key} = {}: {} messages/s, within 5 % of the highest ({} at {}), and the least \
             relay CPU per message among those{cpu}",
            chosen.value,
            thousands(chosen.messages_per_s),
            thousands(best.messages_per_s),
            best.value
        )
    };
    if near.len() > 1 {
        why.push_str(&format!(
            "; {} values are within 5 % of the best rate, so the cheaper one wins",
            near.len()
        ));
    }
    if spread < 1.1 {
        why.push_str(
            ". The rates differ by less than 10 %, within this machine's noise: this setting \
             hardly matters here; keep the default unless repeated runs agree",
        );
    }
    why.push('.');
    why
}

fn sweep_section(runs: &[RunResult]) -> anyhow::Result<String> {
    let sweeps = sweeps(runs);
    if sweeps.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from(
        "<h2 id=\"sweep\">Pool-size sweep</h2>\n<p class=\"note\">The same load against each \
         setting, one setting changed at a time, one run per value; messages/s (sessions/s for \
         session runs) and the relay's CPU per message. Repeat before acting on a difference \
         under 10 %.</p>\n",
    );
    for (key, points, choice) in sweeps {
        out.push_str(&format!(
            "<h3>{}</h3>\n<p><b>Choice:</b> {}</p>\n<figure>",
            escape(&key),
            escape(&choice)
        ));
        out.push_str(&sweep_chart(&key, &points)?);
        out.push_str("</figure>\n<table><tr><th>");
        out.push_str(&escape(&key));
        out.push_str("</th><th>messages/s</th><th>relay CPU µs/message</th></tr>\n");
        for p in &points {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&p.value),
                thousands(p.messages_per_s),
                or_dash(p.cpu_us, thousands)
            ));
        }
        out.push_str("</table>\n");
    }
    Ok(out)
}

/// Two panels side by side: messages/s and CPU per message against the setting's values.
fn sweep_chart(key: &str, points: &[SweepPoint]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1400, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let panels = root.split_evenly((1, 2));
        let labels: Vec<String> = points.iter().map(|p| p.value.clone()).collect();
        let n = points.len() as f64;
        for (i, panel) in panels.iter().enumerate() {
            let (desc, values): (&str, Vec<Option<f64>>) = if i == 0 {
                (
                    "messages/s",
                    points.iter().map(|p| Some(p.messages_per_s)).collect(),
                )
            } else {
                (
                    "relay CPU µs per message",
                    points.iter().map(|p| p.cpu_us).collect(),
                )
            };
            let max_y = values.iter().flatten().fold(1.0, |a: f64, b| a.max(*b));
            let mut chart = ChartBuilder::on(panel)
                .margin(15)
                .caption(format!("{desc} against {key}"), ("sans-serif", 18))
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5..n - 0.5, 0.0..max_y * 1.15)
                .map_err(plot_error)?;
            let formatter = |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels
                        .get(crate::units::to_usize(i))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .x_labels(points.len() * 2 + 1)
                .x_label_formatter(&formatter)
                .x_desc(key)
                .y_desc(desc)
                .draw()
                .map_err(plot_error)?;
            let pts: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter_map(|(x, v)| Some((x as f64, (*v)?)))
                .collect();
            draw_line(&mut chart, i, desc.to_string(), pts, 5)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(responsive(svg))
}

/// One series on a time chart.
type Series = (String, Vec<(f64, f64)>);

/// Derived relay series: rates between consecutive scrapes, gauges at each scrape.
fn relay_series(r: &RunResult, prefix: &str) -> BTreeMap<&'static str, Vec<Series>> {
    let mut out: BTreeMap<&'static str, Vec<Series>> = BTreeMap::new();
    let s = &r.relay_samples;
    if s.len() < 2 {
        return out;
    }
    let pairs = || s.windows(2).filter(|w| w[1].t > w[0].t);
    let rate = |f: &dyn Fn(&RelaySample) -> f64| -> Vec<(f64, f64)> {
        pairs()
            .map(|w| (w[1].t, ((f(&w[1]) - f(&w[0])) / (w[1].t - w[0].t)).max(0.0)))
            .collect()
    };
    let gauge = |f: &dyn Fn(&RelaySample) -> f64| -> Vec<(f64, f64)> {
        s.iter().map(|x| (x.t, f(x))).collect()
    };
    out.entry("cpu")
        .or_default()
        .push((format!("{prefix}relay CPU"), rate(&|x| x.cpu_s)));
    out.entry("rss").or_default().push((
        format!("{prefix}relay RSS"),
        gauge(&|x| x.rss_bytes / (1024.0 * 1024.0)),
    ));
    out.entry("rate").or_default().push((
        format!("{prefix}accepted by the relay"),
        rate(&|x| x.accepted),
    ));
    out.entry("errors").or_default().push((
        format!("{prefix}relay 4xx replies/s"),
        rate(&|x| x.replies_4xx),
    ));
    for state in ["ready", "deferred", "delivering"] {
        out.entry("queue").or_default().push((
            format!("{prefix}{state}"),
            gauge(&|x| x.queue.get(state).copied().unwrap_or(0.0)),
        ));
    }
    let pools: std::collections::BTreeSet<String> =
        s.iter().flat_map(|x| x.pools.keys().cloned()).collect();
    for pool in pools {
        let p = pool.clone();
        let util: Vec<(f64, f64)> = pairs()
            .map(|w| {
                let (a, b) = (w[0].pools.get(&p), w[1].pools.get(&p));
                let busy = b.map_or(0.0, |b| b.busy_s) - a.map_or(0.0, |a| a.busy_s);
                let members = b.map_or(1.0, |b| b.members.max(1.0));
                (
                    w[1].t,
                    (busy / (w[1].t - w[0].t) / members * 100.0).max(0.0),
                )
            })
            .collect();
        out.entry("pool_util")
            .or_default()
            .push((format!("{prefix}{pool}"), util));
        out.entry("pool_mailbox").or_default().push((
            format!("{prefix}{pool}"),
            gauge(&|x| x.pools.get(&pool).map_or(0.0, |p| p.mailbox)),
        ));
    }
    out
}

/// The generator's series.
fn generator_series(r: &RunResult, prefix: &str) -> BTreeMap<&'static str, Vec<Series>> {
    let mut out: BTreeMap<&'static str, Vec<Series>> = BTreeMap::new();
    if r.timeline.is_empty() {
        return out;
    }
    let mid = |t: u32| f64::from(t) + 0.5;
    // The last second is usually cut short by the end of the run: count it per its length.
    let span = |t: u32| (r.elapsed_s - f64::from(t)).clamp(0.05, 1.0);
    let unit = if r.messages_per_connection == 0 {
        "sessions/s"
    } else {
        "messages/s"
    };
    out.entry("rate").or_default().push((
        format!("{prefix}{unit} (generator)"),
        r.timeline
            .iter()
            .map(|s| (mid(s.t), s.messages as f64 / span(s.t)))
            .collect(),
    ));
    for (name, pick) in [("p50", 0usize), ("p99", 1)] {
        out.entry("latency").or_default().push((
            format!("{prefix}{name}"),
            r.timeline
                .iter()
                .filter_map(|s| {
                    let us = if pick == 0 { s.p50_us } else { s.p99_us }?;
                    Some((mid(s.t), us as f64 / 1000.0))
                })
                .collect(),
        ));
    }
    out.entry("errors").or_default().push((
        format!("{prefix}errors/s"),
        r.timeline
            .iter()
            .map(|s| (mid(s.t), s.errors as f64 / span(s.t)))
            .collect(),
    ));
    out.entry("errors").or_default().push((
        format!("{prefix}4xx/s"),
        r.timeline
            .iter()
            .map(|s| (mid(s.t), s.errors_4xx as f64 / span(s.t)))
            .collect(),
    ));
    out
}

/// The charts over time, one each, on one time axis.
fn time_series(runs: &[RunResult]) -> anyhow::Result<String> {
    let mut out = String::from("<h2 id=\"over-time\">Over time</h2>\n");
    let many = runs.len() > 1;
    let mut all: BTreeMap<&'static str, Vec<Series>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        let prefix = if many {
            format!(
                "{}: ",
                if runs.len() == 2 {
                    ["A", "B"][i].to_string()
                } else {
                    r.label.clone()
                }
            )
        } else {
            String::new()
        };
        for (k, v) in generator_series(r, &prefix)
            .into_iter()
            .chain(relay_series(r, &prefix))
        {
            all.entry(k).or_default().extend(v);
        }
    }
    let x_max = runs
        .iter()
        .map(|r| r.elapsed_s)
        .chain(
            runs.iter()
                .flat_map(|r| r.relay_samples.last().map(|s| s.t)),
        )
        .fold(1.0, f64::max);
    let charts = [
        ("rate", "Messages per second", "per second"),
        (
            "latency",
            "Transaction latency within each second (p50, p99)",
            "ms",
        ),
        ("cpu", "Relay CPU", "cores used"),
        ("rss", "Relay memory (RSS)", "MiB"),
        ("queue", "Queue depth", "messages"),
        (
            "pool_util",
            "Pool utilisation (busy time per member)",
            "% of a thread",
        ),
        (
            "pool_mailbox",
            "Pool mailbox depth (all members)",
            "messages waiting",
        ),
        ("errors", "Errors and 4xx over time", "per second"),
    ];
    let mut missing_relay = false;
    for (key, title, unit) in charts {
        match all.remove(key) {
            Some(series) if series.iter().any(|s| !s.1.is_empty()) => {
                out.push_str(&format!("<h3>{title}</h3>\n<figure>"));
                out.push_str(&time_chart(unit, x_max, series)?);
                out.push_str("</figure>\n");
            }
            _ => missing_relay = true,
        }
    }
    if missing_relay {
        out.push_str(
            "<p class=\"note\">Relay-side charts need the relay's metrics: run blast with \
             <code>--metrics-url http://127.0.0.1:9425/metrics</code> (a <code>[metrics]</code> \
             section in the relay's config).</p>\n",
        );
    }
    Ok(out)
}

fn time_chart(unit: &str, x_max: f64, series: Vec<Series>) -> anyhow::Result<String> {
    let max_y = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let max_y = if max_y <= 0.0 { 1.0 } else { max_y * 1.1 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1400, 220)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..max_y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start of the run")
            .y_desc(unit)
            .draw()
            .map_err(plot_error)?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let colour = colour(i);
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(responsive(svg))
}

/// Distinct, readable line colours (Tableau 10).
fn colour(index: usize) -> RGBAColor {
    const COLOURS: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = COLOURS[index % COLOURS.len()];
    RGBColor(r, g, b).to_rgba()
}

/// Lets an SVG take the page's width: a viewBox of its drawn size, no fixed width or height.
fn responsive(svg: String) -> String {
    let Some(open_end) = svg.find('>') else {
        return svg;
    };
    let open = &svg[..open_end];
    let attr = |name: &str| -> Option<String> {
        let start = open.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = open[start..].find('"')?;
        Some(open[start..start + len].to_string())
    };
    let (Some(w), Some(h)) = (attr("width"), attr("height")) else {
        return svg;
    };
    let mut head = open.replacen(&format!(" width=\"{w}\""), "", 1).replacen(
        &format!(" height=\"{h}\""),
        "",
        1,
    );
    if !head.contains("viewBox") {
        head.push_str(&format!(" viewBox=\"0 0 {w} {h}\""));
    }
    head.push_str(" preserveAspectRatio=\"xMinYMin meet\"");
    format!("{head}{}", &svg[open_end..])
}

fn phase_table(runs: &[RunResult]) -> String {
    const ORDER: [(&str, &str); 10] = [
        ("connect", "connect"),
        ("tls", "TLS handshake"),
        ("ehlo", "greeting + EHLO"),
        ("auth", "AUTH"),
        ("mail", "MAIL"),
        ("rcpt", "RCPT (all)"),
        ("data", "DATA → 354"),
        ("data_end", "commit (end of DATA → 250)"),
        ("message", "whole transaction"),
        ("", ""),
    ];
    let mut out = String::from(
        "<table><tr><th>run</th><th>phase</th><th>count</th><th>mean ms</th><th>p50 ms</th>\
         <th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>\n",
    );
    for r in runs {
        for (key, name) in ORDER.iter().filter(|(k, _)| !k.is_empty()) {
            if let Some(p) = r.phases.iter().find(|p| p.phase == *key) {
                out.push_str(&format!(
                    "<tr><td>{}</td><td style=\"text-align:left\">{name}</td><td>{}</td><td>{:.2}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    escape(&r.label),
                    p.count,
                    p.mean_us / 1000.0,
                    ms(p.p50_us),
                    ms(p.p90_us),
                    ms(p.p99_us),
                    ms(p.p999_us),
                    ms(p.max_us)
                ));
            }
        }
    }
    out.push_str("</table>\n");
    out
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn environment_table(runs: &[RunResult]) -> String {
    let mut out = String::from(
        "<h2 id=\"environment\">Environment</h2>\n<table><tr><th>run</th><th>date</th><th>cores</th>\
         <th>CPU</th><th>kernel</th><th>relay version</th><th>relay commit</th>\
         <th>relay pools (members)</th><th>settings</th><th>generator</th></tr>\n",
    );
    for r in runs {
        let e = &r.environment;
        let pools: Vec<String> = e
            .relay_pools
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let settings: Vec<String> = e.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let generator = format!(
            "{} → {}, {} connections, {} messages/connection, {}, {:.0} B mean, {} recipients, \
             {} identities; <code>{}</code>",
            r.protocol,
            r.target,
            r.connections,
            r.messages_per_connection,
            r.rate
                .map_or("closed loop".into(), |x| format!("open loop {x}/s")),
            r.mean_size_bytes,
            r.recipients,
            r.identities,
            escape(&e.generator)
        );
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td style=\"text-align:left\">{generator}</td></tr>\n",
            escape(&r.label),
            escape(&e.date),
            e.cores,
            escape(&e.cpu_model),
            escape(&e.kernel),
            escape(e.relay_version.as_deref().unwrap_or("–")),
            escape(e.relay_commit.as_deref().unwrap_or("–")),
            escape(&pools.join(", ")),
            escape(&settings.join(", ")),
        ));
    }
    out.push_str("</table>\n");
    out
}

/// One line per protocol: messages/s (or, with `sessions`, sessions/s of session-only runs)
/// against the number of concurrent connections.
fn throughput_chart(runs: &[RunResult], sessions: bool) -> anyhow::Result<String> {
    let runs: Vec<&RunResult> = runs
        .iter()
        .filter(|r| (r.messages_per_connection == 0) == sessions)
        .collect();
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for run in &runs {
        series
            .entry(run.protocol.clone())
            .or_default()
            .push((run.connections as f64, rate(run)));
    }
    let max_x = runs.iter().map(|r| r.connections).max().unwrap_or(1) as f64;
    let max_y = runs.iter().map(|r| rate(r)).fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1400, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.15)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("concurrent connections")
            .y_desc(if sessions { "sessions/s" } else { "messages/s" })
            .draw()
            .map_err(plot_error)?;
        for (i, (name, mut points)) in series.into_iter().enumerate() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            draw_line(&mut chart, i, name, points, 4)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(responsive(svg))
}

const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

fn latency_chart(runs: &[RunResult], phase: &str) -> anyhow::Result<String> {
    let lines: Vec<(String, Vec<f64>)> = runs
        .iter()
        .filter_map(|run| {
            let p = run.phases.iter().find(|p| p.phase == phase)?;
            let ms = [p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us]
                .map(|us| us as f64 / 1000.0)
                .to_vec();
            Some((run.label.clone(), ms))
        })
        .collect();
    if lines.is_empty() {
        return Ok(format!("<p>No run measured the {phase} phase.</p>"));
    }
    let max_y = lines
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.001, f64::max);
    let min_y = lines
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(max_y, f64::min)
        .max(0.001)
        / 2.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1400, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..4.2, (min_y..max_y * 2.0).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x: &f64| {
                PERCENTILES
                    .iter()
                    .enumerate()
                    .find(|(i, _)| (*x - *i as f64).abs() < 0.05)
                    .map_or(String::new(), |(_, name)| (*name).to_string())
            })
            .y_desc("milliseconds (log)")
            .draw()
            .map_err(plot_error)?;
        for (i, (label, values)) in lines.into_iter().enumerate() {
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(x, y)| (x as f64, y.max(min_y)))
                .collect();
            draw_line(&mut chart, i, label, points, 3)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(responsive(svg))
}

fn table(runs: &[RunResult]) -> String {
    let mut t = String::from(
        "<table><tr><th>run</th><th>protocol</th><th>connections</th><th>msgs/conn</th>\
         <th>rate target</th><th>size</th><th>ok</th><th>failed</th><th>messages/s</th>\
         <th>sessions/s</th><th>MB/s</th><th>p50 ms</th><th>p99 ms</th><th>errors</th></tr>\n",
    );
    for r in runs {
        let message = r.phases.iter().find(|p| p.phase == "message");
        let ms = |f: fn(&crate::stats::PhaseSummary) -> u64| {
            message.map_or("-".to_string(), |p| format!("{:.2}", f(p) as f64 / 1000.0))
        };
        let errors: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        t.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0} B</td><td>{}</td>\
             <td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.label),
            escape(&r.protocol),
            r.connections,
            r.messages_per_connection,
            r.rate.map_or("closed loop".to_string(), |x| format!("{x}/s")),
            r.mean_size_bytes,
            r.messages_ok,
            r.messages_failed,
            r.messages_per_s,
            r.sessions_per_s,
            r.mb_per_s,
            ms(|p| p.p50_us),
            ms(|p| p.p99_us),
            escape(&errors.join(", ")),
        ));
    }
    t.push_str("</table>\n");
    t
}

/// One labelled series: a line through `points` with a dot on each, in the `index`-th colour.
fn draw_line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    index: usize,
    label: String,
    points: Vec<(f64, f64)>,
    dot_radius: u32,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let colour = colour(index);
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, dot_radius, colour.filled())),
        )
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

/// `amtp-loadtest report` from the command line.
pub fn main(args: ReportArgs) -> anyhow::Result<()> {
    let (runs, layout) = if args.compare.is_empty() {
        (load(&args.results)?, Layout::Runs)
    } else {
        let runs = load(&args.compare)?;
        anyhow::ensure!(
            runs.len() == 2,
            "--compare takes two results (A and B), the files hold {}",
            runs.len()
        );
        (runs, Layout::Compare)
    };
    let page = page(&args.title, &runs, layout, Some(&args.sizing))?;
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("report: {} runs → {}", runs.len(), args.out.display());
    if let Some(s) = size(&args.sizing, &runs) {
        eprintln!(
            "sizing: {} nodes of {} cores ({:.1} cores busy, {:.1} needed at {:.0} %); {} connections, \
             {:.0} MiB, {:.0} commits/s per node (disk headroom {:.2}×)",
            s.nodes,
            args.sizing.cores_per_node,
            s.cores_busy,
            s.cores_needed,
            args.sizing.utilisation * 100.0,
            s.connections_per_node,
            s.memory_per_node_mib,
            s.commits_per_node,
            s.disk_headroom
        );
        for step in &s.steps {
            eprintln!("  {step}");
        }
        for c in &s.caveats {
            eprintln!("  caveat: {c}");
        }
    }
    Ok(())
}
