//! `amtp-loadtest report`: turns `blast --json` results into one self-contained HTML page —
//! throughput against concurrency per protocol, latency percentiles per run, and a table of
//! every figure — so a planner can look instead of read. Charts are inline SVG (plotters).

use crate::stats::RunResult;
use anyhow::Context;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Result files from `blast --json` (one result, a JSON array, or one result per line).
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "loadtest-report.html")]
    pub out: PathBuf,
    /// Page title.
    #[arg(long, default_value = "amtp-loadtest report")]
    pub title: String,
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

/// The whole page.
pub fn html(title: &str, runs: &[RunResult]) -> anyhow::Result<String> {
    let mut page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#eee}}\
         td:first-child{{text-align:left}} figure{{margin:1em 0}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    page.push_str("<h2>Messages per second against concurrency</h2>\n<figure>");
    page.push_str(&throughput_chart(runs, false)?);
    page.push_str(
        "</figure>\n<h2>Sessions per second against concurrency (session-only runs)</h2>\n<figure>",
    );
    page.push_str(&throughput_chart(runs, true)?);
    page.push_str(
        "</figure>\n<h2>Latency percentiles (whole transaction, MAIL to final 250)</h2>\n<figure>",
    );
    page.push_str(&latency_chart(runs, "message")?);
    page.push_str("</figure>\n<h2>Latency percentiles (end of DATA to 250: the relay's commit)</h2>\n<figure>");
    page.push_str(&latency_chart(runs, "data_end")?);
    page.push_str("</figure>\n<h2>Runs</h2>\n");
    page.push_str(&table(runs));
    page.push_str("</body></html>\n");
    Ok(page)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The rate a run is judged by: messages/s, or sessions/s for session-only runs.
fn rate(run: &RunResult) -> f64 {
    if run.messages_per_connection == 0 {
        run.sessions_per_s
    } else {
        run.messages_per_s
    }
}

/// One line per protocol: messages/s (or, with `sessions`, sessions/s of session-only runs)
/// against the number of concurrent connections.
fn throughput_chart(runs: &[RunResult], sessions: bool) -> anyhow::Result<String> {
    let runs: Vec<&RunResult> = runs
        .iter()
        .filter(|r| (r.messages_per_connection == 0) == sessions)
        .collect();
    if runs.is_empty() {
        return Ok("<p>No runs of this kind.</p>".to_string());
    }
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
        let root = SVGBackend::with_string(&mut svg, (800, 420)).into_drawing_area();
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
    Ok(svg)
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
        let root = SVGBackend::with_string(&mut svg, (800, 420)).into_drawing_area();
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
    Ok(svg)
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
    let colour = Palette99::pick(index).to_rgba();
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
    let runs = load(&args.results)?;
    let page = html(&args.title, &runs)?;
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("report: {} runs → {}", runs.len(), args.out.display());
    Ok(())
}
