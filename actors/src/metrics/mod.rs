//! Metrics: every figure the relay exports to Prometheus, in one table, and the functions that
//! record them at the existing choke points.
//!
//! Why one module: an operator reading `/metrics` and a developer adding a counter should find
//! the same list. Each family is declared once in [`Metrics::new`] with its help text, and the
//! recording functions below are what the rest of the crate calls — a new counter is one field,
//! one line in `new`, and a one-line call at the place where the work already passes.
//!
//! Cost: recording is off until [`enable`] is called (the binary does so when the config file
//! has a `[metrics]` section). Off, every recording function is one atomic load and a branch;
//! on, it is an atomic add (plus a label lookup for labelled families — labels are bounded:
//! listener names, reply codes, fixed reasons, pool members; never a client address, sender or
//! queue id).
//!
//! Built on the `prometheus` crate (tikv): its text encoder writes the 0.0.4 exposition format
//! that `promtool check metrics` lints, and its counters are `f64`, which the pool busy-time
//! counters need (seconds with sub-millisecond resolution, so `rate()` is utilisation).
//!
//! # Layout
//! - this file — the catalog ([`Metrics`]), [`enable`]/[`get`], recording functions, [`render`].
//! - [`pool`] — per-actor/pool-member meters: mailbox depth, messages handled, busy seconds.
//! - [`process`] — the process collector (CPU, RSS, file descriptors, threads) from `/proc`.
//! - [`http`] — the HTTP endpoint: `/metrics`, `/healthz/live`, `/healthz/ready`.

pub mod http;
pub mod pool;
pub mod process;

use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets (seconds) for sub-second operations: TLS handshakes, DNS, commits.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for delivery delays (seconds since arrival): seconds to days.
const DELAY_BUCKETS: &[f64] = &[
    1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432_000.0,
];
/// Buckets for the messages in one group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Refreshes scrape-time gauges (see [`Metrics::on_scrape`]).
type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric family the relay exports. Field docs say what each counts; the exported
/// names and help texts are in [`Metrics::new`], and docs/OPERATIONS.md explains each.
#[allow(missing_docs)]
pub struct Metrics {
    registry: Registry,
    // Connections and sessions.
    pub connections_accepted: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub proxy_refused: IntCounterVec,
    // Cluster.
    pub cluster_redis_up: IntGauge,
    pub cluster_fallbacks: IntCounterVec,
    pub sessions_open: IntGaugeVec,
    pub sessions: IntCounterVec,
    pub replies: IntCounterVec,
    pub commands_refused: IntCounterVec,
    pub slow_clients: IntCounterVec,
    // TLS.
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_seconds: HistogramVec,
    pub tls_chain_cache_lookups: IntCounterVec,
    pub tls_chain_cache_entries: IntGauge,
    pub tls_tickets_declined: IntCounterVec,
    pub tls_classical_resumptions: IntCounter,
    // AMTP.
    pub identity_checks: IntCounterVec,
    pub mpc_refusals: IntCounterVec,
    pub public_relay_refusals: IntCounter,
    pub rate_limited: IntCounter,
    // AUTH.
    pub auth_attempts: IntCounterVec,
    pub auth_lockouts: IntCounterVec,
    pub auth_delayed: IntCounter,
    // Queue.
    pub messages_accepted: IntCounterVec,
    pub bytes_accepted: IntCounterVec,
    pub enqueue_refused: IntCounterVec,
    pub commit_seconds: Histogram,
    pub commit_batch: Histogram,
    pub commit_failures: IntCounter,
    pub compaction_copied_bytes: IntCounter,
    pub compaction_freed_bytes: IntCounter,
    pub queue_messages: IntGaugeVec,
    pub queue_oldest_age: Gauge,
    pub storage_healthy: IntGauge,
    // Delivery.
    pub delivery_attempts: IntCounterVec,
    pub delivery_delay: Histogram,
    pub outbound_connections: IntGauge,
    pub outbound_connects: IntCounterVec,
    pub dsns: IntCounter,
    pub expired: IntCounter,
    pub destinations: IntGauge,
    pub delivery_rate_limited: IntCounterVec,
    pub delivery_rate_waiting: IntGauge,
    pub delivery_rate_postponed: IntCounter,
    // Resolver.
    pub dns_cache_lookups: IntCounterVec,
    pub dns_cache_entries: IntGauge,
    pub dns_queries: IntCounterVec,
    pub dns_seconds: HistogramVec,
    // Actor pools.
    pub pool_size: IntGaugeVec,
    pub pool_depth: IntGaugeVec,
    pub pool_handled: IntCounterVec,
    pub pool_busy: CounterVec,
    // Logging and process.
    pub log_lines_dropped: IntCounter,
    pub ready: IntGauge,
    process: process::ProcessMetrics,
    /// Refreshed before each scrape: gauges read from the queue, committer, caches.
    collectors: Mutex<Vec<Collector>>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl Metrics {
    /// Register every family in a fresh registry.
    fn new() -> Self {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "amtp_build_info",
                "Always 1; the labels name the running relay's version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let pool_busy = CounterVec::new(
            Opts::new(
                "amtp_pool_busy_seconds_total",
                "Seconds a pool member spent handling messages or running its tasks; rate() is its utilisation (1.0 = one core's thread always busy).",
            ),
            &["pool", "member"],
        )
        .expect("valid metric");
        r.register(Box::new(pool_busy.clone()))
            .expect("unique metric");
        let queue_oldest_age = Gauge::new(
            "amtp_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when empty).",
        )
        .expect("valid metric");
        r.register(Box::new(queue_oldest_age.clone()))
            .expect("unique metric");
        let process = process::ProcessMetrics::register(&r);
        Self {
            connections_accepted: counter_vec(
                &r,
                "amtp_connections_accepted_total",
                "Connections accepted and handed to a connection worker, by listener.",
                &["listener"],
            ),
            connections_refused: counter_vec(
                &r,
                "amtp_connections_refused_total",
                "Connections refused at accept, by listener and reason (limit, per_ip_limit, pool_full, draining).",
                &["listener", "reason"],
            ),
            proxy_refused: counter_vec(
                &r,
                "amtp_proxy_refused_total",
                "Connections closed unanswered on a proxy_protocol listener, by listener and reason (untrusted, timeout, bad_header).",
                &["listener", "reason"],
            ),
            cluster_redis_up: {
                let g = IntGauge::new(
                    "amtp_cluster_redis_up",
                    "1 while Redis answers within the [cluster] deadline (limits shared fleet-wide), 0 while the node decides on local limits.",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            cluster_fallbacks: counter_vec(
                &r,
                "amtp_cluster_fallbacks_total",
                "Shared-limit decisions taken locally because Redis was away, late or failing, by operation (auth_check, auth_failure, rate, lease, destination_rate, heartbeat).",
                &["operation"],
            ),
            sessions_open: gauge_vec(
                &r,
                "amtp_sessions_open",
                "Sessions open now, by listener.",
                &["listener"],
            ),
            sessions: counter_vec(
                &r,
                "amtp_sessions_total",
                "Sessions ended, by listener and how they ended (closed, disconnected, timeout, tls-failed, ...).",
                &["listener", "outcome"],
            ),
            replies: counter_vec(
                &r,
                "amtp_replies_total",
                "SMTP replies sent, by listener and reply code.",
                &["listener", "code"],
            ),
            commands_refused: counter_vec(
                &r,
                "amtp_commands_refused_total",
                "Commands answered with a 4xx or 5xx reply, by listener and command verb.",
                &["listener", "verb"],
            ),
            slow_clients: counter_vec(
                &r,
                "amtp_slow_clients_total",
                "Sessions closed with 421 4.4.2 for being too slow, by listener and deadline (idle, command_line, data_idle, data_rate).",
                &["listener", "deadline"],
            ),
            tls_handshakes: counter_vec(
                &r,
                "amtp_tls_handshakes_total",
                "Inbound TLS handshakes by listener and result (full, resumed, or failed_<reason>).",
                &["listener", "result"],
            ),
            tls_handshake_seconds: histogram_vec(
                &r,
                "amtp_tls_handshake_duration_seconds",
                "Inbound TLS handshake duration (successful handshakes), by listener.",
                &["listener"],
                LATENCY_BUCKETS,
            ),
            tls_chain_cache_lookups: counter_vec(
                &r,
                "amtp_tls_chain_cache_lookups_total",
                "AMTP client chains looked up in the verified-chain cache (full handshakes and ticket re-checks), by result (hit: CA signatures and CRLs not checked again; miss: verified in full).",
                &["result"],
            ),
            tls_chain_cache_entries: int_gauge(
                &r,
                "amtp_tls_chain_cache_entries",
                "Verified AMTP client chains held for the current trust generation (emptied by every reload).",
            ),
            tls_tickets_declined: counter_vec(
                &r,
                "amtp_tls_tickets_declined_total",
                "Session tickets decrypted but not resumed (the client does a full handshake instead), by reason (expired: older than the ticket lifetime; chain: the stored client chain no longer verifies against the current trust sets and CRLs; unreadable).",
                &["reason"],
            ),
            tls_classical_resumptions: counter(
                &r,
                "amtp_tls_classical_resumptions_total",
                "AMTP handshakes answered from the classical-groups configuration because the client offered a ticket the relay honours ([amtp] resumption_kx = \"classical\"); the rest of amtp_tls_handshakes_total{result=\"resumed\"} used the full handshake's groups.",
            ),
            identity_checks: counter_vec(
                &r,
                "amtp_identity_checks_total",
                "AMTP identity checks by result (verified, cache_hit, ehlo_mismatch, ptr_mismatch, no_ptr, not_forward_confirmed, no_certificate_name, dns_temporary).",
                &["result"],
            ),
            mpc_refusals: counter_vec(
                &r,
                "amtp_mpc_refusals_total",
                "MAIL/RCPT refused by Mail Policy Code rules, by reason (missing, malformed, published_policy, sender_rule, recipient_rule).",
                &["reason"],
            ),
            public_relay_refusals: counter(
                &r,
                "amtp_public_relay_refusals_total",
                "Recipients refused because mail from a public AMTP peer may not be relayed to a non-local domain.",
            ),
            rate_limited: counter(
                &r,
                "amtp_rate_limit_hits_total",
                "MAIL commands refused by the per-identity AMTP rate limit.",
            ),
            auth_attempts: counter_vec(
                &r,
                "amtp_auth_attempts_total",
                "SMTP AUTH attempts by mechanism and outcome (success, failed, locked, unavailable, not_bound).",
                &["mechanism", "outcome"],
            ),
            auth_lockouts: counter_vec(
                &r,
                "amtp_auth_lockouts_total",
                "AUTH lock-outs started, by kind (ip: the address; user_ip: that user name from that address).",
                &["kind"],
            ),
            auth_delayed: counter(
                &r,
                "amtp_auth_delayed_total",
                "AUTH attempts slowed down because their user name failed repeatedly (from any address).",
            ),
            messages_accepted: counter_vec(
                &r,
                "amtp_messages_accepted_total",
                "Messages made durable and answered 250, by listener.",
                &["listener"],
            ),
            bytes_accepted: counter_vec(
                &r,
                "amtp_accepted_bytes_total",
                "Bytes of messages made durable (including our Received header), by listener.",
                &["listener"],
            ),
            enqueue_refused: counter_vec(
                &r,
                "amtp_enqueue_refused_total",
                "Messages refused with 451 at the queue, by reason (busy, unavailable, failed).",
                &["reason"],
            ),
            commit_seconds: histogram(
                &r,
                "amtp_queue_commit_duration_seconds",
                "End of DATA to durable commit (body and envelope fsynced), as the session waits for it.",
                LATENCY_BUCKETS,
            ),
            commit_batch: histogram(
                &r,
                "amtp_queue_commit_batch_messages",
                "Messages per group commit.",
                BATCH_BUCKETS,
            ),
            commit_failures: counter(
                &r,
                "amtp_queue_commit_failures_total",
                "Group commits that failed (every message in them was answered 451).",
            ),
            compaction_copied_bytes: counter(
                &r,
                "amtp_queue_compaction_copied_bytes_total",
                "Message body bytes copied out of sparse spool segments by compaction.",
            ),
            compaction_freed_bytes: counter(
                &r,
                "amtp_queue_compaction_freed_bytes_total",
                "Spool segment bytes deleted because compaction moved their last live messages.",
            ),
            queue_messages: gauge_vec(
                &r,
                "amtp_queue_messages",
                "Messages in the queue by state: ready (never tried, waiting), deferred (waiting for a retry), delivering (leased).",
                &["state"],
            ),
            queue_oldest_age,
            storage_healthy: int_gauge(
                &r,
                "amtp_queue_storage_healthy",
                "1 when the last queue commit succeeded, 0 after a failed one.",
            ),
            delivery_attempts: counter_vec(
                &r,
                "amtp_delivery_attempts_total",
                "Per-recipient delivery outcomes by result (delivered, deferred, failed) and route (route, amtp_srv, smtp_mx, none).",
                &["result", "route"],
            ),
            delivery_delay: histogram(
                &r,
                "amtp_delivery_delay_seconds",
                "Time from arrival to the final outcome of a recipient (delivered or failed).",
                DELAY_BUCKETS,
            ),
            outbound_connections: int_gauge(
                &r,
                "amtp_outbound_connections_open",
                "Outbound connections open now.",
            ),
            outbound_connects: counter_vec(
                &r,
                "amtp_outbound_connections_total",
                "Outbound connection attempts by result (ok, failed).",
                &["result"],
            ),
            dsns: counter(
                &r,
                "amtp_dsn_generated_total",
                "Delivery status notifications (bounces) queued.",
            ),
            expired: counter(
                &r,
                "amtp_messages_expired_total",
                "Recipients failed because the message outlived the queue lifetime.",
            ),
            destinations: int_gauge(
                &r,
                "amtp_destinations_active",
                "Destination actors (one per next hop) alive now.",
            ),
            delivery_rate_limited: counter_vec(
                &r,
                "amtp_delivery_rate_limited_total",
                "Messages that waited for their destination's message rate (max_messages_per_destination), each counted once, by whose budget ran out (fleet: the fleet's in Redis; node: this node's, without [cluster] or while Redis is away).",
                &["scope"],
            ),
            delivery_rate_waiting: int_gauge(
                &r,
                "amtp_delivery_rate_waiting",
                "Messages waiting now for their destination's message rate (leased, not attempted).",
            ),
            delivery_rate_postponed: counter(
                &r,
                "amtp_delivery_rate_postponed_total",
                "Messages handed back to the queue untried (no attempt counted) because their destination already held as many as its message rate sends in the next few seconds; each is due again when a token is expected.",
            ),
            dns_cache_lookups: counter_vec(
                &r,
                "amtp_resolver_cache_lookups_total",
                "Resolver cache lookups by result (hit, miss).",
                &["result"],
            ),
            dns_cache_entries: int_gauge(
                &r,
                "amtp_resolver_cache_entries",
                "Entries in the resolver cache.",
            ),
            dns_queries: counter_vec(
                &r,
                "amtp_dns_queries_total",
                "DNS queries sent, by record type and result (ok, nxdomain, nodata, temporary).",
                &["type", "result"],
            ),
            dns_seconds: histogram_vec(
                &r,
                "amtp_dns_query_duration_seconds",
                "DNS query duration by record type.",
                &["type"],
                LATENCY_BUCKETS,
            ),
            pool_size: gauge_vec(
                &r,
                "amtp_pool_members",
                "Members in each actor pool (from [pools] and the wiring).",
                &["pool"],
            ),
            pool_depth: gauge_vec(
                &r,
                "amtp_pool_mailbox_depth",
                "Messages waiting in a pool member's mailbox (or the committer's channel).",
                &["pool", "member"],
            ),
            pool_handled: counter_vec(
                &r,
                "amtp_pool_messages_handled_total",
                "Messages a pool member has handled.",
                &["pool", "member"],
            ),
            pool_busy,
            log_lines_dropped: counter(
                &r,
                "amtp_log_lines_dropped_total",
                "Log lines dropped because the log output (stderr) could not be written.",
            ),
            ready: int_gauge(
                &r,
                "amtp_ready",
                "1 when /healthz/ready answers 200 (listeners bound, storage healthy, not draining).",
            ),
            process,
            registry: r,
            collectors: Mutex::new(Vec::new()),
        }
    }

    /// Add a function that refreshes gauges before each scrape (queue depth, cache sizes…).
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.collectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(f));
    }

    /// Refresh scrape-time gauges, then encode every family in the Prometheus text format.
    pub fn render(&self) -> String {
        self.process.refresh();
        for f in self
            .collectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            f(self);
        }
        let mut out = Vec::with_capacity(32 * 1024);
        // Encoding our own registry cannot fail (every family is well formed).
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turn recording on (idempotent) and return the catalog.
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The catalog, when recording is on.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// `text/plain` exposition of every family, or `None` while recording is off.
pub fn render() -> Option<String> {
    get().map(Metrics::render)
}

// ---- Recording functions: one line at each choke point. ----

/// A reply was written to a client.
#[inline]
pub fn reply_sent(listener: &str, code: u16) {
    if let Some(m) = get() {
        let mut digits = [0u8; 5];
        m.replies
            .with_label_values(&[listener, code_label(code, &mut digits)])
            .inc();
    }
}

/// `code` as decimal text in `buf`, without allocating (reply codes are on every reply).
fn code_label(code: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = code;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[start..]).unwrap_or("0")
}

/// A command was answered 4xx/5xx.
#[inline]
pub fn command_refused(listener: &str, verb: &str) {
    if let Some(m) = get() {
        m.commands_refused
            .with_label_values(&[listener, verb])
            .inc();
    }
}

/// A session was closed for being too slow: `deadline` is `idle` (no command within
/// `command_timeout`), `command_line` (a line begun but not finished in time), `data_idle` (no
/// DATA bytes within `data_timeout`) or `data_rate` (DATA slower than `min_data_rate`).
pub fn client_too_slow(listener: &str, deadline: &str) {
    if let Some(m) = get() {
        m.slow_clients
            .with_label_values(&[listener, deadline])
            .inc();
    }
}

/// A connection was accepted by a listener.
#[inline]
pub fn connection_accepted(listener: &str) {
    if let Some(m) = get() {
        m.connections_accepted.with_label_values(&[listener]).inc();
    }
}

/// A connection was refused at accept.
#[inline]
pub fn connection_refused(listener: &str, reason: &str) {
    if let Some(m) = get() {
        m.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }
}

/// A connection on a `proxy_protocol` listener was closed before its session (see
/// [`crate::proxy::ProxyRefusal`]).
pub fn proxy_refused(listener: &str, reason: &str) {
    if let Some(m) = get() {
        m.proxy_refused.with_label_values(&[listener, reason]).inc();
    }
}

/// Redis became reachable (`true`) or away (`false`) for the shared limits.
pub fn cluster_redis_up(up: bool) {
    if let Some(m) = get() {
        m.cluster_redis_up.set(i64::from(up));
    }
}

/// A shared-limit operation was decided locally (Redis away, late or failing).
pub fn cluster_fallback(operation: &str) {
    if let Some(m) = get() {
        m.cluster_fallbacks.with_label_values(&[operation]).inc();
    }
}

/// A session started (`+1`) or ended (`-1` with its outcome).
pub fn session_started(listener: &str) {
    if let Some(m) = get() {
        m.sessions_open.with_label_values(&[listener]).inc();
    }
}

/// A session ended.
pub fn session_ended(listener: &str, outcome: &str) {
    if let Some(m) = get() {
        m.sessions_open.with_label_values(&[listener]).dec();
        m.sessions.with_label_values(&[listener, outcome]).inc();
    }
}

/// An inbound TLS handshake finished: `Ok(resumed)` or `Err(reason)`.
pub fn tls_handshake(listener: &str, result: Result<bool, &str>, took: Duration) {
    if let Some(m) = get() {
        match result {
            Ok(resumed) => {
                let r = if resumed { "resumed" } else { "full" };
                m.tls_handshakes.with_label_values(&[listener, r]).inc();
                m.tls_handshake_seconds
                    .with_label_values(&[listener])
                    .observe(took.as_secs_f64());
            }
            Err(reason) => {
                m.tls_handshakes
                    .with_label_values(&[listener, &format!("failed_{reason}")])
                    .inc();
            }
        }
    }
}

/// An AMTP handshake answered from the classical-groups configuration for returning peers.
#[inline]
pub fn tls_classical_resumption() {
    if let Some(m) = get() {
        m.tls_classical_resumptions.inc();
    }
}

/// A lookup in the verified-chain cache.
#[inline]
pub fn chain_cache(hit: bool) {
    if let Some(m) = get() {
        m.tls_chain_cache_lookups
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }
}

/// A session ticket was declined (`reason`: expired, chain, unreadable).
pub fn ticket_declined(reason: &str) {
    if let Some(m) = get() {
        m.tls_tickets_declined.with_label_values(&[reason]).inc();
    }
}

/// An AMTP identity check finished with `result` (a fixed word, see the family's help).
pub fn identity_check(result: &str) {
    if let Some(m) = get() {
        m.identity_checks.with_label_values(&[result]).inc();
    }
}

/// An MPC rule refused a command.
pub fn mpc_refused(reason: &str) {
    if let Some(m) = get() {
        m.mpc_refusals.with_label_values(&[reason]).inc();
    }
}

/// A public AMTP peer tried to relay to a non-local domain.
pub fn public_relay_refused() {
    if let Some(m) = get() {
        m.public_relay_refusals.inc();
    }
}

/// The AMTP per-identity rate limit refused a MAIL.
pub fn rate_limited() {
    if let Some(m) = get() {
        m.rate_limited.inc();
    }
}

/// An AUTH attempt finished.
pub fn auth_attempt(mechanism: &str, outcome: &str) {
    if let Some(m) = get() {
        m.auth_attempts
            .with_label_values(&[mechanism, outcome])
            .inc();
    }
}

/// An AUTH attempt was delayed: its user name failed repeatedly (from any address).
pub fn auth_delayed() {
    if let Some(m) = get() {
        m.auth_delayed.inc();
    }
}

/// A lock-out started (`kind`: `ip` or `user_ip`).
pub fn auth_lockout(kind: &str) {
    if let Some(m) = get() {
        m.auth_lockouts.with_label_values(&[kind]).inc();
    }
}

/// A message was made durable and acknowledged; `waited` is end of DATA → durable.
pub fn message_accepted(listener: &str, bytes: usize, waited: Duration) {
    if let Some(m) = get() {
        m.messages_accepted.with_label_values(&[listener]).inc();
        m.bytes_accepted
            .with_label_values(&[listener])
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
        m.commit_seconds.observe(waited.as_secs_f64());
    }
}

/// The queue refused a message (451).
pub fn enqueue_refused(reason: &str) {
    if let Some(m) = get() {
        m.enqueue_refused.with_label_values(&[reason]).inc();
    }
}

/// A per-recipient delivery outcome.
pub fn delivery_outcome(result: &str, route: &str, delay: Option<Duration>) {
    if let Some(m) = get() {
        m.delivery_attempts
            .with_label_values(&[result, route])
            .inc();
        if let Some(d) = delay {
            m.delivery_delay.observe(d.as_secs_f64());
        }
    }
}

/// A DSN was queued.
pub fn dsn_generated() {
    if let Some(m) = get() {
        m.dsns.inc();
    }
}

/// A recipient expired (queue lifetime over).
pub fn expired() {
    if let Some(m) = get() {
        m.expired.inc();
    }
}

/// An outbound connection attempt finished.
pub fn outbound_connect(ok: bool) {
    if let Some(m) = get() {
        m.outbound_connects
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        if ok {
            m.outbound_connections.inc();
        }
    }
}

/// An outbound connection that [`outbound_connect`] counted as open was closed.
pub fn outbound_closed() {
    if let Some(m) = get() {
        m.outbound_connections.dec();
    }
}

/// A destination actor started (`+1`) or stopped (`-1`).
pub fn destinations_changed(delta: i64) {
    if let Some(m) = get() {
        m.destinations.add(delta);
    }
}

/// `n` more messages wait for their destination's message rate (`scope`: `fleet` or `node`).
pub fn delivery_rate_limited(scope: &str, n: usize) {
    if n == 0 {
        return;
    }
    if let Some(m) = get() {
        m.delivery_rate_limited
            .with_label_values(&[scope])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

/// Messages started (`+`) or stopped (`-`) waiting for their destination's message rate.
pub fn delivery_rate_waiting(delta: i64) {
    if let Some(m) = get() {
        m.delivery_rate_waiting.add(delta);
    }
}

/// `n` messages were handed back to the queue by their destination's message rate.
pub fn delivery_rate_postponed(n: usize) {
    if n == 0 {
        return;
    }
    if let Some(m) = get() {
        m.delivery_rate_postponed
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}

/// A resolver cache lookup.
#[inline]
pub fn dns_cache(hit: bool) {
    if let Some(m) = get() {
        m.dns_cache_lookups
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }
}

/// A DNS query went to the wire.
pub fn dns_query(record_type: &str, result: &str, took: Duration) {
    if let Some(m) = get() {
        m.dns_queries
            .with_label_values(&[record_type, result])
            .inc();
        m.dns_seconds
            .with_label_values(&[record_type])
            .observe(took.as_secs_f64());
    }
}

/// A log line could not be written.
pub fn log_line_dropped() {
    if let Some(m) = get() {
        m.log_lines_dropped.inc();
    }
}

#[cfg(test)]
mod tests;
