//! Measurements of a run: one HDR histogram per protocol phase (microseconds), errors by reply
//! code, counters — recorded per connection task without locks and merged at the end — and
//! the result a run prints as a table or as JSON (the input of `report`).

use crate::environment::Environment;
use crate::scrape::RelaySample;
use crate::timeline::{Second, Timeline};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The phases timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// TLS handshake (implicit TLS, AMTP, or STARTTLS command plus handshake).
    Tls,
    /// Greeting read plus EHLO answered (the AMTP identity check happens here).
    Ehlo,
    /// AUTH answered.
    Auth,
    /// MAIL FROM sent → 250.
    Mail,
    /// Every RCPT TO of a transaction, sent one at a time, until the last reply.
    Rcpt,
    /// DATA sent → 354.
    Data,
    /// End of DATA (`.`) sent → 250: the relay's durable commit.
    DataEnd,
    /// A whole transaction: MAIL → final 250 (from the scheduled start in open-loop runs).
    Message,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Connect,
        Phase::Tls,
        Phase::Ehlo,
        Phase::Auth,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
        Phase::DataEnd,
        Phase::Message,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Ehlo => "ehlo",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::DataEnd => "data_end",
            Phase::Message => "message",
        }
    }
}

/// What one connection task saw.
pub struct Recorder {
    histograms: Vec<Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub sessions: u64,
    pub bytes: u64,
    pub tls_full: u64,
    pub tls_resumed: u64,
    /// The run's shared per-second timeline, when there is one.
    timeline: Option<Arc<Mutex<Timeline>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            histograms: Phase::ALL
                .iter()
                // 1 µs to 1 hour at 3 significant digits.
                .map(|_| Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
                .collect(),
            errors: BTreeMap::new(),
            messages_ok: 0,
            messages_failed: 0,
            sessions: 0,
            bytes: 0,
            tls_full: 0,
            tls_resumed: 0,
            timeline: None,
        }
    }

    /// A recorder that also feeds the run's per-second `timeline`.
    pub fn with_timeline(timeline: Arc<Mutex<Timeline>>) -> Self {
        Self {
            timeline: Some(timeline),
            ..Self::new()
        }
    }

    fn timeline(&self) -> Option<std::sync::MutexGuard<'_, Timeline>> {
        self.timeline
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A message (or, in session-only runs, a session) accepted after `latency`.
    pub fn accepted(&mut self, latency: Duration) {
        self.messages_ok += 1;
        self.record(Phase::Message, latency);
        if let Some(mut t) = self.timeline() {
            t.accepted(latency);
        }
    }

    /// A message that was not accepted.
    pub fn failed(&mut self) {
        self.messages_failed += 1;
        if let Some(mut t) = self.timeline() {
            t.failed();
        }
    }

    /// Counts a completed TLS handshake.
    pub fn handshake(&mut self, resumed: bool) {
        if resumed {
            self.tls_resumed += 1;
        } else {
            self.tls_full += 1;
        }
    }

    pub fn record(&mut self, phase: Phase, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.histograms[phase as usize].saturating_record(us);
    }

    /// Counts an error under `key` (a reply code like `451`, or `connect`, `tls`, `timeout`).
    pub fn error(&mut self, key: impl Into<String>) {
        let key = key.into();
        if let Some(mut t) = self.timeline() {
            t.error(&key);
        }
        *self.errors.entry(key).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            mine.add(theirs).expect("same bounds");
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.messages_ok += other.messages_ok;
        self.messages_failed += other.messages_failed;
        self.sessions += other.sessions;
        self.bytes += other.bytes;
        self.tls_full += other.tls_full;
        self.tls_resumed += other.tls_resumed;
    }

    pub fn phases(&self) -> Vec<PhaseSummary> {
        Phase::ALL
            .iter()
            .zip(&self.histograms)
            .filter(|(_, h)| !h.is_empty())
            .map(|(p, h)| PhaseSummary {
                phase: p.name().to_string(),
                count: h.len(),
                mean_us: h.mean(),
                p50_us: h.value_at_quantile(0.50),
                p90_us: h.value_at_quantile(0.90),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            })
            .collect()
    }
}

/// Latency percentiles of one phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    pub phase: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The outcome of one `blast` run (`--json` prints this; `report` reads it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub label: String,
    pub protocol: String,
    pub target: String,
    pub connections: usize,
    pub messages_per_connection: u64,
    /// Open-loop target rate in messages/s; `None` for closed loop.
    pub rate: Option<f64>,
    pub mean_size_bytes: f64,
    pub recipients: usize,
    pub identities: usize,
    pub elapsed_s: f64,
    pub sessions: u64,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub bytes: u64,
    pub messages_per_s: f64,
    pub sessions_per_s: f64,
    pub mb_per_s: f64,
    /// Full TLS handshakes, and resumed ones.
    #[serde(default)]
    pub tls_full: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    /// CPU seconds the relay (`--pid`) used during the run.
    #[serde(default)]
    pub relay_cpu_s: Option<f64>,
    /// Relay CPU microseconds per accepted message (per session in session-only runs).
    #[serde(default)]
    pub relay_cpu_us_per_unit: Option<f64>,
    /// Context switches of the relay's threads (`--pid`) during the run.
    #[serde(default)]
    pub relay_context_switches: Option<u64>,
    /// Relay context switches per accepted message (per session in session-only runs).
    #[serde(default)]
    pub relay_context_switches_per_unit: Option<f64>,
    pub phases: Vec<PhaseSummary>,
    pub errors: BTreeMap<String, u64>,
    /// Where the run happened (absent in results from before reports had it).
    #[serde(default)]
    pub environment: Environment,
    /// The generator's view, second by second.
    #[serde(default)]
    pub timeline: Vec<Second>,
    /// The relay's `/metrics`, scraped during the run (`--metrics-url`).
    #[serde(default)]
    pub relay_samples: Vec<RelaySample>,
    /// Why a figure of this run should be read with care (a CPU figure from too few clock
    /// ticks, scrapes that failed).
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

impl RunResult {
    /// The human-readable summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{label}: {protocol} → {target}, {conns} connections, {mpc} messages/connection, {mode}\n\
             {ok} messages accepted, {failed} failed, {sessions} sessions in {secs:.2} s\n\
             throughput: {mps:.1} messages/s, {mbps:.2} MB/s, {sps:.1} sessions/s\n\
             TLS handshakes: {full} full, {resumed} resumed\n",
            label = self.label,
            protocol = self.protocol,
            target = self.target,
            conns = self.connections,
            mpc = self.messages_per_connection,
            mode = match self.rate {
                Some(r) => format!("open loop at {r} messages/s"),
                None => "closed loop".to_string(),
            },
            ok = self.messages_ok,
            failed = self.messages_failed,
            sessions = self.sessions,
            secs = self.elapsed_s,
            mps = self.messages_per_s,
            mbps = self.mb_per_s,
            sps = self.sessions_per_s,
            full = self.tls_full,
            resumed = self.tls_resumed,
        );
        if let (Some(cpu), Some(per)) = (self.relay_cpu_s, self.relay_cpu_us_per_unit) {
            let unit = if self.messages_per_connection == 0 {
                "session"
            } else {
                "message"
            };
            out.push_str(&format!(
                "relay CPU: {cpu:.2} s ({:.0} % of one core), {per:.0} µs per {unit}\n",
                cpu / self.elapsed_s * 100.0
            ));
        }
        if let (Some(n), Some(per)) = (
            self.relay_context_switches,
            self.relay_context_switches_per_unit,
        ) {
            let unit = if self.messages_per_connection == 0 {
                "session"
            } else {
                "message"
            };
            out.push_str(&format!(
                "relay context switches: {n} ({per:.1} per {unit}, all threads)\n"
            ));
        }
        out.push_str(&format!(
            "\n{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "phase", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
        for p in &self.phases {
            out.push_str(&format!(
                "{:<9} {:>9} {:>9.2} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                p.phase,
                p.count,
                p.mean_us / 1000.0,
                ms(p.p50_us),
                ms(p.p90_us),
                ms(p.p99_us),
                ms(p.p999_us),
                ms(p.max_us)
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}\n"));
        }
        if self.errors.is_empty() {
            out.push_str("\nerrors: none\n");
        } else {
            out.push_str("\nerrors by reply code:\n");
            for (k, v) in &self.errors {
                out.push_str(&format!("  {k:<12} {v}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_recorders_add_counts_histograms_and_errors() {
        let mut a = Recorder::new();
        a.record(Phase::Mail, Duration::from_millis(1));
        a.error("451");
        a.messages_ok = 2;
        let mut b = Recorder::new();
        b.record(Phase::Mail, Duration::from_millis(3));
        b.record(Phase::Connect, Duration::from_micros(10));
        b.error("451");
        b.error("timeout");
        b.messages_ok = 1;
        a.merge(&b);
        assert_eq!(a.messages_ok, 3);
        assert_eq!(a.errors["451"], 2);
        assert_eq!(a.errors["timeout"], 1);
        let phases = a.phases();
        let mail = phases.iter().find(|p| p.phase == "mail").unwrap();
        assert_eq!(mail.count, 2);
        assert!(
            mail.max_us >= 2990 && mail.max_us <= 3010,
            "{}",
            mail.max_us
        );
        assert!(
            phases.iter().all(|p| p.phase != "tls"),
            "empty phases are left out"
        );
    }
}
