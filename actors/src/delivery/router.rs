//! The Router: reads due messages from the queue, decides each recipient's next hop, hands
//! the work to per-destination actors, and writes the outcomes back — delivered and failed
//! recipients are completed (a message leaves the queue only when no recipient is pending),
//! failures produce one DSN per message per batch, and the rest is rescheduled by the retry
//! policy or, past the message's lifetime, bounced.
//!
//! Next hops per recipient domain: a configured route (`[[delivery.route]]`, e.g. local domains
//! to the mailbox store); otherwise, for mail that did not arrive over a public connection,
//! `_amtp._tcp.<domain>` SRV (RFC 2782); without an SRV record, MX and SMTP when the fallback is
//! enabled. Mail received over public AMTP (or unauthenticated SMTP) is never sent to a public hop.

use super::bounce;
use super::destination::Destination;
use super::outbound::{HopTarget, Job, OutboundContext};
use super::route::{Hop, Route, order_mx, order_srv};
use super::schedule::{Next, RetryPolicy};
use crate::config::{HopProtocol, HopTls, RouteConfig};
use crate::messages::NextHop;
use crate::messages::{DeliverJob, JobResult, WakeRouter};
use crate::metrics::{self, pool::Meter};
use crate::resolver::{DnsQuery, LookupError, Records, ResolverHandle};
use actix::dev::SendError;
use actix::prelude::*;
use amtp_proto::client::{Disposition, Envelope, TlsPolicy};
use amtp_storage::{Completion, MessageRecord, Origin, Queue, QueueId, RecipientState};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Most messages leased per router tick.
const BATCH: usize = 256;

/// What the router needs; shared with its planning futures.
pub struct RouterShared {
    /// The queue.
    pub queue: Arc<Queue>,
    /// DNS (SRV, MX, A).
    pub resolver: Option<ResolverHandle>,
    /// Configured routes by recipient domain (normalised).
    pub routes: HashMap<String, RouteConfig>,
    /// Outbound connection settings.
    pub outbound: OutboundContext,
    /// SMTP fallback via MX for remote domains without SRV.
    pub smtp_fallback: bool,
    /// TLS for the fallback.
    pub smtp_fallback_tls: HopTls,
    /// Port for the fallback.
    pub smtp_fallback_port: u16,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Lease per attempt.
    pub lease: Duration,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Connections per destination.
    pub concurrency: usize,
    /// Messages per connection.
    pub max_per_connection: usize,
    /// Most messages in flight at once.
    pub max_in_flight: usize,
    /// Our host name (DSNs).
    pub hostname: String,
    /// The router's meter (handled messages, time on its thread).
    pub meter: Meter,
    /// One meter for all destinations together: queued jobs, jobs taken, time spent.
    pub destination_meter: Meter,
}

struct InFlight {
    record: MessageRecord,
    outstanding: usize,
    outcomes: Vec<(String, Disposition)>,
    trail: Trail,
}

/// Per recipient, how it was routed and which next hop answered: for the per-message log
/// and the delivery metrics.
#[derive(Default)]
struct Trail {
    /// Recipient → route kind (`route`, `amtp_srv`, `smtp_mx`; absent: `none`).
    routes: HashMap<String, &'static str>,
    /// Recipient → the next hop that gave its outcome.
    hops: HashMap<String, NextHop>,
}

/// The route kind of a destination key (as made by `route_domain`).
fn route_kind(key: &str) -> &'static str {
    match key.split(':').next() {
        Some("route") => "route",
        Some("amtp") => "amtp_srv",
        Some("smtp") => "smtp_mx",
        _ => "none",
    }
}

/// One destination's share of a message.
struct Group {
    key: String,
    targets: Vec<HopTarget>,
    job: Job,
}

struct Plan {
    id: QueueId,
    record: MessageRecord,
    groups: Vec<Group>,
    immediate: Vec<(String, Disposition)>,
}

/// See the module docs.
pub struct Router {
    shared: Arc<RouterShared>,
    destinations: HashMap<String, Addr<Destination>>,
    in_flight: HashMap<QueueId, InFlight>,
    ticking: bool,
    /// Bounds the results being written at once (see [`FINALIZE_CONCURRENCY`]).
    finalizers: Arc<tokio::sync::Semaphore>,
}

/// Results written to the queue at once. Each write holds a blocking-pool thread for a sled
/// batch and a (shared) fsync; more of them do not make the disk faster, they only grow
/// tokio's blocking pool. Unbounded, 2,000 deferrals in flight grew it to about 270 threads
/// and the relay to about 1.3 GiB (measured with 100,000 deferred messages, issue 4).
const FINALIZE_CONCURRENCY: usize = 8;

impl Router {
    /// A router over the shared settings.
    pub fn new(shared: Arc<RouterShared>) -> Self {
        Self {
            shared,
            destinations: HashMap::new(),
            in_flight: HashMap::new(),
            ticking: false,
            finalizers: Arc::new(tokio::sync::Semaphore::new(FINALIZE_CONCURRENCY)),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Backpressure: lease nothing while the destinations are this far behind.
        let room = self
            .shared
            .max_in_flight
            .saturating_sub(self.in_flight.len())
            .min(BATCH);
        if self.ticking || room == 0 {
            return;
        }
        self.ticking = true;
        let shared = self.shared.clone();
        let skip: HashSet<QueueId> = self.in_flight.keys().copied().collect();
        let meter = self.shared.meter.clone();
        let work = async move {
            let s = shared.clone();
            let leased = tokio::task::spawn_blocking(move || lease_due(&s, &skip, room))
                .await
                .unwrap_or_default();
            let mut plans = Vec::with_capacity(leased.len());
            for (id, record, body) in leased {
                plans.push(plan(&shared, id, record, Arc::new(body)).await);
            }
            plans
        };
        let work = async move { meter.timed(work).await };
        ctx.spawn(work.into_actor(self).map(|plans, act, ctx| {
            act.ticking = false;
            for p in plans {
                act.dispatch(p, ctx);
            }
        }));
    }

    fn destination(
        &mut self,
        key: &str,
        targets: &[HopTarget],
        ctx: &mut Context<Self>,
    ) -> Addr<Destination> {
        if let Some(addr) = self.destinations.get(key).filter(|a| a.connected()) {
            return addr.clone();
        }
        let s = &self.shared;
        let addr = Destination::new(
            key.to_string(),
            targets.to_vec(),
            s.outbound.clone(),
            s.concurrency,
            s.max_per_connection,
            ctx.address().recipient(),
            s.destination_meter.clone(),
        )
        .start();
        self.destinations.insert(key.to_string(), addr.clone());
        addr
    }

    fn dispatch(&mut self, plan: Plan, ctx: &mut Context<Self>) {
        let outstanding = plan.groups.len() + usize::from(!plan.immediate.is_empty());
        let mut trail = Trail::default();
        for g in &plan.groups {
            for r in &g.job.envelope.recipients {
                trail.routes.insert(r.clone(), route_kind(&g.key));
            }
        }
        self.in_flight.insert(
            plan.id,
            InFlight {
                record: plan.record,
                outstanding,
                outcomes: Vec::new(),
                trail,
            },
        );
        if !plan.immediate.is_empty() {
            self.record_result(
                JobResult {
                    id: plan.id,
                    outcomes: plan.immediate,
                    hop: None,
                },
                ctx,
            );
        }
        for g in plan.groups {
            let mut msg = DeliverJob(g.job);
            for _ in 0..2 {
                let dest = self.destination(&g.key, &g.targets, ctx);
                match dest.try_send(msg) {
                    Ok(()) => break,
                    Err(SendError::Closed(m)) => {
                        self.destinations.remove(&g.key);
                        msg = m;
                    }
                    Err(SendError::Full(m)) => {
                        let outcomes = m
                            .0
                            .envelope
                            .recipients
                            .iter()
                            .map(|r| {
                                (
                                    r.clone(),
                                    Disposition::Deferred(format!("{}: destination busy", g.key)),
                                )
                            })
                            .collect();
                        self.record_result(
                            JobResult {
                                id: m.0.id,
                                outcomes,
                                hop: None,
                            },
                            ctx,
                        );
                        break;
                    }
                }
            }
        }
    }

    fn record_result(&mut self, result: JobResult, ctx: &mut Context<Self>) {
        let Some(entry) = self.in_flight.get_mut(&result.id) else {
            return;
        };
        if let Some(hop) = &result.hop {
            for (r, _) in &result.outcomes {
                entry.trail.hops.insert(r.clone(), hop.clone());
            }
        }
        entry.outcomes.extend(result.outcomes);
        entry.outstanding = entry.outstanding.saturating_sub(1);
        if entry.outstanding > 0 {
            return;
        }
        let Some(done) = self.in_flight.remove(&result.id) else {
            return;
        };
        let shared = self.shared.clone();
        let id = result.id;
        let finalizers = self.finalizers.clone();
        let finish = async move {
            let s = shared.clone();
            // Never closed, so acquiring cannot fail; waiting here keeps the write queued in
            // this actor's task list, not in a thread.
            let _permit = finalizers.acquire_owned().await;
            if let Err(e) = tokio::task::spawn_blocking(move || {
                finalize(&s, id, &done.record, &done.outcomes, &done.trail)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            {
                tracing::error!(id = %id, error = %e, "could not record delivery results; the lease will expire and the message is retried");
            }
        };
        ctx.spawn(finish.into_actor(self));
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16_384);
        ctx.run_interval(self.shared.poll_interval, |act, ctx| act.tick(ctx));
        self.tick(ctx);
    }
}

impl Handler<WakeRouter> for Router {
    type Result = ();

    fn handle(&mut self, _: WakeRouter, ctx: &mut Self::Context) {
        let meter = self.shared.meter.clone();
        let _busy = meter.busy();
        meter.add_handled(1);
        self.tick(ctx);
    }
}

impl Handler<JobResult> for Router {
    type Result = ();

    fn handle(&mut self, msg: JobResult, ctx: &mut Self::Context) {
        let meter = self.shared.meter.clone();
        let _busy = meter.busy();
        meter.add_handled(1);
        self.record_result(msg, ctx);
    }
}

/// A reload: route with these settings from now on. Destinations already running finish the
/// jobs they hold under the settings they started with and stop when idle; new jobs go to
/// new destinations built from `0` (outbound TLS, concurrency, routes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplaceShared(pub Arc<RouterShared>);

impl Handler<ReplaceShared> for Router {
    type Result = ();

    fn handle(&mut self, msg: ReplaceShared, _ctx: &mut Self::Context) {
        self.shared = msg.0;
        self.destinations.clear();
    }
}

/// Lease up to `room` due messages (not already in flight) and read their bodies.
fn lease_due(
    s: &RouterShared,
    skip: &HashSet<QueueId>,
    room: usize,
) -> Vec<(QueueId, MessageRecord, Vec<u8>)> {
    let now = amtp_storage::now_ms();
    let until = now + u64::try_from(s.lease.as_millis()).unwrap_or(u64::MAX);
    let due = match s.queue.due(now, BATCH) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read due messages");
            return vec![];
        }
    };
    let mut out = Vec::new();
    for id in due.into_iter().filter(|id| !skip.contains(id)).take(room) {
        match s.queue.lease(id, now, until) {
            Ok(Some(rec)) => match s.queue.body(id) {
                Ok(body) => out.push((id, rec, body)),
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "cannot read message body; will retry")
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(id = %id, error = %e, "cannot lease message"),
        }
    }
    out
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn xorshift(seed: u64) -> impl FnMut(u32) -> u32 {
    let mut x = seed | 1;
    move |max| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        u32::try_from(x % (u64::from(max) + 1)).unwrap_or(0)
    }
}

async fn addresses(
    s: &RouterShared,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Disposition> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let Some(resolver) = &s.resolver else {
        return Err(Disposition::Deferred(format!(
            "cannot resolve {host}: no resolver configured"
        )));
    };
    let mut addrs = Vec::new();
    let mut temporary = None;
    for q in [
        DnsQuery::A(host.to_string()),
        DnsQuery::Aaaa(host.to_string()),
    ] {
        match resolver.resolve(q).await {
            Ok(Records::Addrs(a)) => {
                addrs.extend(a.into_iter().map(|ip| SocketAddr::new(ip, port)))
            }
            Err(LookupError::Temporary(e)) => temporary = Some(e),
            _ => {}
        }
    }
    match (addrs.is_empty(), temporary) {
        (false, _) => Ok(addrs),
        (true, Some(e)) => Err(Disposition::Deferred(format!(
            "DNS lookup of {host} failed: {e}"
        ))),
        (true, None) => Err(Disposition::Failed(format!(
            "550 5.1.2 {host} has no address"
        ))),
    }
}

async fn targets(
    s: &RouterShared,
    hops: &[Hop],
    amtp: bool,
    tls: TlsPolicy,
) -> Result<Vec<HopTarget>, Disposition> {
    let mut out = Vec::new();
    let mut last = None;
    for h in hops {
        match addresses(s, &h.host, h.port).await {
            Ok(addrs) => out.extend(addrs.into_iter().map(|addr| HopTarget {
                host: h.host.clone(),
                addr,
                amtp,
                tls,
            })),
            Err(d) => last = Some(d),
        }
    }
    if out.is_empty() {
        Err(last.unwrap_or_else(|| Disposition::Failed("550 5.4.4 no next hop".into())))
    } else {
        Ok(out)
    }
}

fn tls_policy(t: HopTls) -> TlsPolicy {
    match t {
        HopTls::None => TlsPolicy::Never,
        HopTls::Opportunistic => TlsPolicy::Opportunistic,
        HopTls::Required => TlsPolicy::Required,
    }
}

/// Key, targets and protocol (true = AMTP) for a recipient domain.
async fn route_domain(
    s: &RouterShared,
    domain: &str,
    origin: Origin,
) -> Result<(String, Vec<HopTarget>, bool), Disposition> {
    if let Some(r) = s.routes.get(domain) {
        let amtp = r.protocol == HopProtocol::Amtp;
        let hop = Hop {
            host: r.host.clone(),
            port: r.port,
        };
        let t = targets(s, &[hop], amtp, tls_policy(r.tls)).await?;
        return Ok((format!("route:{}:{}", r.host, r.port), t, amtp));
    }
    if matches!(origin, Origin::AmtpPublic | Origin::Smtp) {
        return Err(Disposition::Failed(
            "550 5.7.1 mail received over a public connection is not relayed to a public next hop"
                .into(),
        ));
    }
    let Some(resolver) = &s.resolver else {
        return Err(Disposition::Deferred(format!(
            "no route for {domain} and no resolver configured"
        )));
    };
    let seed = amtp_storage::now_ms() ^ (domain.len() as u64).rotate_left(32);
    let mut rng = xorshift(seed);
    match resolver
        .resolve(DnsQuery::Srv(format!("_amtp._tcp.{domain}")))
        .await
    {
        Ok(Records::Srv(records)) => match order_srv(&records, &mut rng) {
            Route::NoService => Err(Disposition::Failed(format!(
                "550 5.1.10 {domain} offers no AMTP service"
            ))),
            Route::Hops(h) => Ok((
                format!("amtp:{domain}"),
                targets(s, &h, true, TlsPolicy::Implicit).await?,
                true,
            )),
        },
        Err(LookupError::Temporary(e)) => Err(Disposition::Deferred(format!(
            "DNS SRV lookup for {domain} failed: {e}"
        ))),
        Ok(_) | Err(LookupError::NxDomain | LookupError::NoData) if s.smtp_fallback => {
            let mx = match resolver.resolve(DnsQuery::Mx(domain.to_string())).await {
                Ok(Records::Mx(m)) => Some(m),
                Err(LookupError::NoData) => None,
                Err(LookupError::NxDomain) => {
                    return Err(Disposition::Failed(format!(
                        "550 5.1.2 {domain} does not exist"
                    )));
                }
                Err(LookupError::Temporary(e)) => {
                    return Err(Disposition::Deferred(format!(
                        "DNS MX lookup for {domain} failed: {e}"
                    )));
                }
                Ok(_) => None,
            };
            match order_mx(domain, mx.as_deref(), s.smtp_fallback_port, &mut rng) {
                Route::NoService => Err(Disposition::Failed(format!(
                    "556 5.1.10 {domain} accepts no mail (null MX)"
                ))),
                Route::Hops(h) => Ok((
                    format!("smtp:{domain}"),
                    targets(s, &h, false, tls_policy(s.smtp_fallback_tls)).await?,
                    false,
                )),
            }
        }
        Ok(_) | Err(_) => Err(Disposition::Failed(format!(
            "550 5.4.4 {domain} has no _amtp._tcp SRV record (SMTP fallback disabled)"
        ))),
    }
}

/// Decide where each pending recipient goes.
async fn plan(s: &RouterShared, id: QueueId, record: MessageRecord, body: Arc<Vec<u8>>) -> Plan {
    let mut by_domain: HashMap<String, Vec<String>> = HashMap::new();
    for r in record.pending() {
        by_domain
            .entry(domain_of(&r.address))
            .or_default()
            .push(r.address.clone());
    }
    let mpc = record.envelope.mpc.as_deref().and_then(|m| m.parse().ok());
    // Leaving AMTP (SMTP hops): a message that already has an MPC header is refused (spec §6);
    // otherwise the header is prepended. Both are decided once per message, and the body with
    // the header is made once, when the first SMTP hop needs it.
    let smtp_header = record
        .envelope
        .mpc
        .as_ref()
        .map(|m| (m, amtp_proto::headers::find(&body, "MPC").is_some()));
    let mut smtp_body: Option<Arc<Vec<u8>>> = None;
    let mut groups: Vec<Group> = Vec::new();
    let mut immediate = Vec::new();
    for (domain, rcpts) in by_domain {
        match route_domain(s, &domain, record.envelope.origin).await {
            Ok((key, targets, amtp)) => {
                if !amtp && matches!(smtp_header, Some((_, true))) {
                    let why = Disposition::Failed("550 5.7.1 message already carries an MPC header; not delivered outside AMTP".into());
                    immediate.extend(rcpts.into_iter().map(|r| (r, why.clone())));
                    continue;
                }
                if let Some(g) = groups.iter_mut().find(|g| g.key == key) {
                    g.job.envelope.recipients.extend(rcpts);
                } else {
                    // AMTP hops carry the code as MPC= on MAIL, never as a header.
                    let wire = match (amtp, smtp_header) {
                        (false, Some((m, _))) => smtp_body
                            .get_or_insert_with(|| {
                                let mut b = format!("MPC: {m}\r\n").into_bytes();
                                b.extend_from_slice(&body);
                                Arc::new(b)
                            })
                            .clone(),
                        _ => body.clone(),
                    };
                    let envelope = Envelope {
                        from: record.envelope.sender.clone(),
                        recipients: rcpts,
                        mpc,
                        size: u64::try_from(wire.len()).unwrap_or(u64::MAX),
                    };
                    groups.push(Group {
                        key,
                        targets,
                        job: Job {
                            id,
                            envelope,
                            body: wire,
                        },
                    });
                }
            }
            Err(d) => immediate.extend(rcpts.into_iter().map(|r| (r, d.clone()))),
        }
    }
    Plan {
        id,
        record,
        groups,
        immediate,
    }
}

/// Write the outcomes of one attempt: DSN first (durable), then complete; reschedule or expire
/// what is deferred.
fn finalize(
    s: &RouterShared,
    id: QueueId,
    record: &MessageRecord,
    outcomes: &[(String, Disposition)],
    trail: &Trail,
) -> Result<(), String> {
    let now = amtp_storage::now_ms();
    let deferred: Vec<&(String, Disposition)> = outcomes
        .iter()
        .filter(|(_, d)| matches!(d, Disposition::Deferred(_)))
        .collect();
    let next =
        (!deferred.is_empty()).then(|| s.retry.next(record.received_at, record.attempts + 1, now));
    let expired = next == Some(Next::Expire);
    let mut failed: Vec<(String, String)> = outcomes
        .iter()
        .filter_map(|(r, d)| {
            if let Disposition::Failed(t) = d {
                Some((r.clone(), t.clone()))
            } else {
                None
            }
        })
        .collect();
    if expired {
        failed.extend(deferred.iter().map(|(r, d)| {
            (
                r.clone(),
                format!("4.4.7 delivery time expired; last error: {}", text(d)),
            )
        }));
    }
    let original = if failed.is_empty() {
        Vec::new()
    } else {
        s.queue.body_prefix(id, 64 * 1024).unwrap_or_default()
    };
    if !failed.is_empty()
        && let Some(dsn) = bounce::dsn(&s.hostname, id, record, &failed, &original, now / 1000)
    {
        let dsn_id = s
            .queue
            .enqueue_batch(&[dsn])
            .map_err(|e| format!("cannot queue the DSN: {e}"))?;
        metrics::dsn_generated();
        tracing::info!(queue_id = %id, dsn_queue_id = %dsn_id.first().map(ToString::to_string).unwrap_or_default(), recipients = failed.len(), to = %record.envelope.sender, "bounce queued");
    }
    let states: Vec<(String, RecipientState, Option<String>)> = outcomes
        .iter()
        .map(|(r, d)| {
            let state = match d {
                Disposition::Delivered(_) => RecipientState::Delivered,
                Disposition::Failed(_) => RecipientState::Failed,
                Disposition::Deferred(_) if expired => RecipientState::Failed,
                Disposition::Deferred(_) => RecipientState::Pending,
            };
            (r.clone(), state, Some(text(d)))
        })
        .collect();
    log_outcomes(id, record, outcomes, trail, expired, now);
    match s.queue.complete(id, &states).map_err(|e| e.to_string())? {
        Completion::Removed => Ok(()),
        Completion::Pending => {
            let at = match next {
                Some(Next::RetryAt(t)) => t,
                _ => now,
            };
            s.queue
                .reschedule(id, at)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// The per-message trail's delivery milestones (one line per recipient, keyed by the queue id:
/// `delivered`, `deferred`, `bounced`, `expired`) and the delivery metrics.
fn log_outcomes(
    id: QueueId,
    record: &MessageRecord,
    outcomes: &[(String, Disposition)],
    trail: &Trail,
    expired: bool,
    now: u64,
) {
    let delay = Duration::from_millis(now.saturating_sub(record.received_at));
    for (r, d) in outcomes {
        let (event, result) = match d {
            Disposition::Delivered(_) => ("delivered", "delivered"),
            Disposition::Failed(_) => ("bounced", "failed"),
            Disposition::Deferred(_) if expired => ("expired", "failed"),
            Disposition::Deferred(_) => ("deferred", "deferred"),
        };
        let route = trail.routes.get(r).copied().unwrap_or("none");
        let is_final = result != "deferred";
        metrics::delivery_outcome(result, route, is_final.then_some(delay));
        if expired && matches!(d, Disposition::Deferred(_)) {
            metrics::expired();
        }
        let hop = trail.hops.get(r);
        tracing::info!(
            queue_id = %id,
            rcpt = %r,
            route,
            next_hop = hop.map_or("-", |h| h.name.as_str()),
            address = %hop.map_or_else(|| "-".to_string(), |h| h.addr.to_string()),
            reply = %text(d),
            delay_s = delay.as_secs(),
            attempt = record.attempts + 1,
            "{event}"
        );
    }
}

fn text(d: &Disposition) -> String {
    match d {
        Disposition::Delivered(r) => r.to_string(),
        Disposition::Deferred(t) | Disposition::Failed(t) => t.clone(),
    }
}
