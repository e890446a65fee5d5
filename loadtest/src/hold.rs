//! `amtp-loadtest hold`: opens N sessions (connect, TLS, greeting, EHLO), keeps them idle, and
//! reports what they cost the relay — its resident memory before and after, read from
//! /proc/<pid>/status, divided by the connections held. This is how "memory per idle
//! connection" is measured.

use crate::client::Connection;
use crate::procfs::rss_kib;
use crate::stats::Recorder;
use crate::target::ConnectArgs;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 100)]
    pub open_concurrency: usize,
    /// How long to hold them once open (the relay's RSS is read after 2 s of it).
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub hold: Duration,
    /// The relay's process id, to read its resident memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HoldReport {
    pub protocol: String,
    pub requested: usize,
    pub opened: usize,
    pub open_s: f64,
    pub errors: BTreeMap<String, u64>,
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub kib_per_connection: Option<f64>,
}

pub fn run(args: HoldArgs) -> anyhow::Result<HoldReport> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let plans = Arc::new(crate::target::plans(&args.connect)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let rss_before = args.pid.map(rss_kib).transpose()?;
        let started = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(args.open_concurrency.max(1)));
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| {
                let (plans, gate) = (plans.clone(), gate.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await;
                    let mut rec = Recorder::new();
                    let conn = Connection::open(&plans[i % plans.len()], &mut rec).await;
                    conn.map_err(|f| f.key())
                })
            })
            .collect();
        let mut held = Vec::with_capacity(args.connections);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for task in tasks {
            match task.await {
                Ok(Ok(conn)) => held.push(conn),
                Ok(Err(key)) => *errors.entry(key).or_default() += 1,
                Err(_) => *errors.entry("aborted".into()).or_default() += 1,
            }
        }
        let open_s = started.elapsed().as_secs_f64();
        let settle = Duration::from_secs(2).min(args.hold);
        tokio::time::sleep(settle).await;
        let rss_held = args.pid.map(rss_kib).transpose()?;
        tokio::time::sleep(args.hold - settle).await;
        let opened = held.len();
        drop(held);
        let kib_per_connection = match (rss_before, rss_held) {
            (Some(b), Some(h)) if opened > 0 => Some(h.saturating_sub(b) as f64 / opened as f64),
            _ => None,
        };
        Ok(HoldReport {
            protocol: args.connect.protocol.name().to_string(),
            requested: args.connections,
            opened,
            open_s,
            errors,
            rss_before_kib: rss_before,
            rss_held_kib: rss_held,
            kib_per_connection,
        })
    })
}

impl HoldReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} of {} {} sessions open after {:.2} s",
            self.opened, self.requested, self.protocol, self.open_s
        );
        if let (Some(b), Some(h), Some(per)) = (
            self.rss_before_kib,
            self.rss_held_kib,
            self.kib_per_connection,
        ) {
            out.push_str(&format!(
                "\nrelay RSS {:.1} MiB before, {:.1} MiB holding them: {per:.1} KiB per idle connection",
                b as f64 / 1024.0,
                h as f64 / 1024.0
            ));
        }
        for (k, v) in &self.errors {
            out.push_str(&format!("\n  error {k}: {v}"));
        }
        out
    }
}
