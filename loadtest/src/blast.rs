//! `amtp-loadtest blast`: N concurrent connections, each running sequential transactions
//! against the target, in closed loop (as fast as the relay answers) or open loop (messages
//! scheduled at a fixed rate, latency measured from the scheduled time so a stalled relay
//! cannot hide its backlog). A run is bounded by its message count and by its duration, and
//! stops by itself at whichever comes first.

use crate::client::{Connection, ConnectionPlan, Protocol, Transaction};
use crate::environment::Environment;
use crate::message::{SizeDistribution, bodies};
use crate::progress::Snapshot;
use crate::scrape::Scraper;
use crate::stats::{Recorder, RunResult};
use crate::target::ConnectArgs;
use crate::timeline::Timeline;
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BlastArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Transactions per connection before QUIT and a new connection; 0 = sessions only
    /// (connect, TLS, EHLO, QUIT: a handshake-rate test, and --messages counts sessions).
    #[arg(long, default_value_t = 10)]
    pub messages_per_connection: u64,
    /// Total messages (or sessions with --messages-per-connection 0).
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Hard time limit: the run stops after this even if messages remain.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Open loop: messages per second, scheduled evenly. Without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Message size: `10k`, or a distribution `1k:60,10k:30,200k:10`.
    #[arg(long, default_value = "10k")]
    pub size: SizeDistribution,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Envelope sender.
    #[arg(long, default_value = "loadtest@load.test")]
    pub from: String,
    /// Recipient domain (recipients are u<N>@<domain>).
    #[arg(long, default_value = "sink.load.test")]
    pub rcpt_domain: String,
    /// The Mail Policy Code sent as MAIL MPC= (amtp only).
    #[arg(long, default_value = "per/individual")]
    pub mpc: String,
    /// Name of this run in reports (default: protocol and concurrency).
    #[arg(long)]
    pub label: Option<String>,
    /// Before the measured run, open one session (TLS, greeting, EHLO, QUIT) per identity or
    /// source address, not counted: the relay's caches are warm and, unless --no-resumption,
    /// every peer holds a session ticket, so the run measures returning peers.
    #[arg(long)]
    pub warm_up: bool,
    /// Print the result as JSON (for `report`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Generator threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The relay's process id: report the CPU time it spent during the run, per message.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The relay's metrics endpoint (`http://127.0.0.1:9425/metrics`): scraped during the run
    /// for its CPU, memory, queue and pool figures over time.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// How often to scrape --metrics-url.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
    pub scrape_every: Duration,
    /// The relay's commit (e.g. `git rev-parse --short HEAD`), recorded with the run.
    #[arg(long)]
    pub relay_commit: Option<String>,
    /// A relay setting this run was made with, KEY=VALUE (repeatable): recorded with the run,
    /// and what `report` compares in a sweep (`--setting connection_workers=2`).
    #[arg(long = "setting", value_parser = crate::environment::parse_setting)]
    pub settings: Vec<(String, String)>,
    /// Print a progress line this often (default: every second on a terminal, every 5 s
    /// otherwise; 0 = never).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub progress_every: Option<Duration>,
}

impl BlastArgs {
    /// The command line's defaults for `--target target --protocol protocol`: for driving a
    /// run from Rust (tests, tools) without restating every default.
    pub fn defaults(target: std::net::SocketAddr, protocol: Protocol) -> Self {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: BlastArgs,
        }
        let target = target.to_string();
        let mut args =
            <Command as clap::Parser>::parse_from(["blast", "--target", target.as_str()]).args;
        args.connect.protocol = protocol;
        args
    }
}

/// Everything the connection tasks share.
struct Shared {
    plans: Vec<ConnectionPlan>,
    bodies: Vec<Arc<Vec<u8>>>,
    args: BlastArgs,
    next_message: AtomicU64,
    started: Instant,
    deadline: Instant,
    /// Units finished (messages, or sessions in session-only runs), and errors: for progress.
    done: AtomicU64,
    errors: AtomicU64,
    timeline: Arc<Mutex<Timeline>>,
    totals: Mutex<Recorder>,
}

impl Shared {
    /// Claims the next message number, if the run has budget and time left.
    fn claim(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        (n < self.args.messages).then_some(n)
    }
}

/// Validates the arguments, runs the load, returns the merged result.
pub fn run(args: BlastArgs) -> anyhow::Result<RunResult> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(args.recipients > 0, "--recipients must be at least 1");
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    let plans = crate::target::plans(&args.connect)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build().context("starting the generator runtime")?;
    let result = runtime.block_on(blast(args, plans));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn blast(args: BlastArgs, plans: Vec<ConnectionPlan>) -> anyhow::Result<RunResult> {
    let mut environment = Environment::here();
    environment.relay_commit = args.relay_commit.clone();
    environment.settings = args.settings.iter().cloned().collect();
    let plans = if args.warm_up {
        warm_up(plans, args.connections).await?
    } else {
        plans
    };
    let cpu_before = args.pid.map(crate::procfs::cpu_seconds).transpose()?;
    let switches_before = args.pid.map(crate::procfs::context_switches).transpose()?;
    let started = Instant::now();
    let scraper = match &args.metrics_url {
        Some(url) => {
            let (scraper, first) = Scraper::start(url, args.scrape_every, started)?;
            environment.relay_version = crate::scrape::version(&first);
            environment.relay_pools = first
                .iter()
                .filter(|s| s.name == "amtp_pool_members")
                .map(|s| {
                    (
                        s.label("pool").unwrap_or("?").to_string(),
                        crate::units::to_u64(s.value),
                    )
                })
                .collect::<BTreeMap<_, _>>();
            Some(scraper)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        bodies: bodies(&args.size, &args.from),
        plans,
        next_message: AtomicU64::new(0),
        started,
        deadline: started + args.duration,
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        timeline: Arc::new(Mutex::new(Timeline::new(started))),
        totals: Mutex::new(Recorder::new()),
        args: args.clone(),
    });
    let progress = tokio::spawn(progress(shared.clone()));
    let tasks: Vec<_> = (0..args.connections)
        .map(|slot| tokio::spawn(connection_loop(shared.clone(), slot)))
        .collect();
    // Every step has its own timeout, so tasks end soon after the deadline; this bound is the
    // backstop that makes the run stop by itself whatever the target does.
    let hard_stop = tokio::time::Instant::from_std(shared.deadline) + args.connect.timeout * 2;
    let mut aborted = 0u64;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(hard_stop, task).await.is_err() {
            abort.abort();
            aborted += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    let mut relay_cpu_s = match (args.pid, cpu_before) {
        (Some(pid), Some(before)) => Some(crate::procfs::cpu_seconds(pid)? - before),
        _ => None,
    };
    let relay_switches = match (args.pid, switches_before) {
        (Some(pid), Some(before)) => {
            Some(crate::procfs::context_switches(pid)?.saturating_sub(before))
        }
        _ => None,
    };
    let relay_samples = match scraper {
        Some(s) => tokio::task::spawn_blocking(move || s.finish())
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut warnings = Vec::new();
    if relay_cpu_s.is_none() && relay_samples.len() >= 2 {
        // Without --pid, the relay's own process_cpu_seconds_total over the run.
        let first = &relay_samples[0];
        let last = &relay_samples[relay_samples.len() - 1];
        relay_cpu_s = Some(last.cpu_s - first.cpu_s);
    }
    if let Some(w) = relay_cpu_s.and_then(|cpu| cpu_warning(cpu, elapsed)) {
        eprintln!("blast: warning: {w}");
        warnings.push(w);
    }
    if args.metrics_url.is_some() {
        let expected = crate::units::to_usize(elapsed / args.scrape_every.as_secs_f64());
        if relay_samples.len() + 1 < expected {
            warnings.push(format!(
                "only {} of about {expected} scrapes of the relay's metrics succeeded",
                relay_samples.len()
            ));
        }
    }
    let mut totals = std::mem::take(&mut *shared.totals.lock().expect("not poisoned"));
    if aborted > 0 {
        *totals.errors.entry("aborted".into()).or_default() += aborted;
    }
    let timeline = shared
        .timeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .seconds();
    Ok(RunResult {
        label: args
            .label
            .clone()
            .unwrap_or_else(|| format!("{} c{}", args.connect.protocol.name(), args.connections)),
        protocol: args.connect.protocol.name().to_string(),
        target: args.connect.target.to_string(),
        connections: args.connections,
        messages_per_connection: args.messages_per_connection,
        rate: args.rate,
        mean_size_bytes: args.size.mean(),
        recipients: args.recipients,
        identities: shared.plans.len(),
        elapsed_s: elapsed,
        sessions: totals.sessions,
        messages_ok: totals.messages_ok,
        messages_failed: totals.messages_failed,
        bytes: totals.bytes,
        messages_per_s: totals.messages_ok as f64 / elapsed,
        sessions_per_s: totals.sessions as f64 / elapsed,
        mb_per_s: totals.bytes as f64 / 1e6 / elapsed,
        tls_full: totals.tls_full,
        tls_resumed: totals.tls_resumed,
        relay_cpu_s,
        relay_cpu_us_per_unit: relay_cpu_s.map(|cpu| {
            let units = if args.messages_per_connection == 0 {
                totals.sessions
            } else {
                totals.messages_ok
            };
            cpu * 1e6 / units.max(1) as f64
        }),
        relay_context_switches: relay_switches,
        relay_context_switches_per_unit: relay_switches.map(|n| {
            let units = if args.messages_per_connection == 0 {
                totals.sessions
            } else {
                totals.messages_ok
            };
            n as f64 / units.max(1) as f64
        }),
        phases: totals.phases(),
        errors: totals.errors,
        environment,
        timeline,
        relay_samples,
        warnings,
    })
}

/// One session per plan, `connections` at a time, before the measured run (`--warm-up`).
async fn warm_up(
    plans: Vec<ConnectionPlan>,
    connections: usize,
) -> anyhow::Result<Vec<ConnectionPlan>> {
    let plans = Arc::new(plans);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..connections.min(plans.len()))
        .map(|_| {
            let (plans, next) = (plans.clone(), next.clone());
            tokio::spawn(async move {
                let mut rec = Recorder::new();
                let mut failed = 0u64;
                while let Some(plan) = plans.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match Connection::open(plan, &mut rec).await {
                        Ok(conn) => conn.quit().await,
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.context("warm-up task")?;
    }
    anyhow::ensure!(
        failed == 0,
        "warm-up: {failed} of {} sessions failed",
        plans.len()
    );
    Arc::into_inner(plans).context("warm-up tasks still hold the plans")
}

/// /proc counts CPU time in clock ticks of 10 ms (USER_HZ = 100): a figure made of few ticks,
/// or taken over a run too short to reach a steady state, cannot size anything.
pub fn cpu_warning(cpu_s: f64, elapsed_s: f64) -> Option<String> {
    let ticks = (cpu_s * 100.0).round();
    if ticks < 100.0 {
        let error = if ticks > 0.0 { 100.0 / ticks } else { 100.0 };
        Some(format!(
            "the relay's CPU time is counted in 10 ms clock ticks: {ticks:.0} ticks make the CPU \
             figure uncertain by about ±{error:.1} %; run longer (at least 1 s of relay CPU) \
             before sizing with it"
        ))
    } else if elapsed_s < 5.0 {
        Some(format!(
            "a {elapsed_s:.1} s run is mostly start-up and ramp-down: the CPU figure is not a \
             steady state; run for at least 10 s before sizing with it"
        ))
    } else {
        None
    }
}

/// Prints a progress line every interval until aborted.
async fn progress(shared: Arc<Shared>) {
    let terminal = std::io::stderr().is_terminal();
    let every = shared.args.progress_every.unwrap_or(if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    if every.is_zero() {
        return;
    }
    let unit = if shared.args.messages_per_connection == 0 {
        "sessions"
    } else {
        "messages"
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let done = shared.done.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            done,
            total: shared.args.messages,
            interval_done: done - last.1,
            interval: now - last.0,
            errors: shared.errors.load(Ordering::Relaxed),
            elapsed: now - shared.started,
            time_left: shared.deadline.saturating_duration_since(now),
        };
        last = (now, done);
        let line = crate::progress::line(&snapshot, unit);
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// One connection slot: opens connections one after another until the run's budget or time
/// is spent. Identities rotate across slots and reconnections.
async fn connection_loop(shared: Arc<Shared>, slot: usize) {
    let mut rec = Recorder::with_timeline(shared.timeline.clone());
    let args = &shared.args;
    let mut round = 0usize;
    while let Some(mut n) = shared.claim() {
        let plan = &shared.plans[(slot + round * args.connections) % shared.plans.len()];
        round += 1;
        let session_started = Instant::now();
        let mut conn = match Connection::open(plan, &mut rec).await {
            Ok(conn) => conn,
            Err(failure) => {
                rec.error(failure.key());
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if args.messages_per_connection > 0 {
                    rec.failed();
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
                // Do not spin against a relay that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        rec.sessions += 1;
        if args.messages_per_connection == 0 {
            shared
                .timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .accepted(session_started.elapsed());
            shared.done.fetch_add(1, Ordering::Relaxed);
            conn.quit().await;
            continue;
        }
        let mut sent = 0;
        let mut alive = true;
        loop {
            let scheduled = match args.rate {
                Some(rate) => {
                    let at = shared.started + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    at
                }
                None => Instant::now(),
            };
            let body = &shared.bodies[args.size.pick(n)];
            let recipients: Vec<String> = (0..args.recipients)
                .map(|r| {
                    format!(
                        "u{}@{}",
                        (n * args.recipients as u64 + r as u64) % 10_000,
                        args.rcpt_domain
                    )
                })
                .collect();
            let tx = Transaction {
                from: &args.from,
                recipients: &recipients,
                mpc: (args.connect.protocol == Protocol::Amtp).then_some(args.mpc.as_str()),
                body,
            };
            let errors_before: u64 = rec.errors.values().sum();
            match conn.send(&tx, &mut rec).await {
                Ok(true) => rec.accepted(scheduled.elapsed()),
                Ok(false) => rec.failed(),
                Err(failure) => {
                    rec.error(failure.key());
                    rec.failed();
                    alive = false;
                }
            }
            let new_errors = rec.errors.values().sum::<u64>() - errors_before;
            shared.errors.fetch_add(new_errors, Ordering::Relaxed);
            shared.done.fetch_add(1, Ordering::Relaxed);
            sent += 1;
            if !alive || sent >= args.messages_per_connection {
                break;
            }
            match shared.claim() {
                Some(next) => n = next,
                None => break,
            }
        }
        if alive {
            conn.quit().await;
        }
    }
    shared.totals.lock().expect("not poisoned").merge(&rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_figure_from_too_few_ticks_or_too_short_a_run_is_flagged() {
        // 5 ticks of 10 ms: ±20 %.
        let w = cpu_warning(0.05, 30.0).unwrap();
        assert!(w.contains("5 ticks") && w.contains("±20.0 %"), "{w}");
        let w = cpu_warning(3.0, 1.5).unwrap();
        assert!(w.contains("1.5 s run"), "{w}");
        assert_eq!(cpu_warning(3.0, 12.0), None);
    }
}
