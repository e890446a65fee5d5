//! The Router: reads due messages from the queue, decides each recipient's next hop, hands
//! the work to per-destination actors, and writes the outcomes back — delivered and failed
//! recipients are completed (a message leaves the queue only when no recipient is pending),
//! failures produce one DSN per message per batch, and the rest is rescheduled by the retry
//! policy or, past the message's lifetime, bounced.
//!
//! This module is the actor and its I/O (leasing, destinations, queue writes; the DNS lookups
//! are in [`super::lookup`]). The decisions are pure and tested as tables elsewhere:
//! [`super::plan`] decides each recipient's
//! next hop (configured route; otherwise, for mail that did not arrive over a public
//! connection, `_amtp._tcp.<domain>` SRV, then MX when the SMTP fallback is enabled — never a
//! public hop for mail received publicly) and the MPC header rule; [`super::finalize`] decides
//! what the outcomes mean (states, DSN, retry). Every recipient's outcome passes through
//! [`log_outcomes`], the one place that knows it with its hop, cause, delay and attempt.

use super::bounce;
use super::destination::Destination;
use super::finalize::{self, Attempted, Decision, Verdict};
use super::fresh::Fresh;
use super::lookup;
use super::outbound::{HopTarget, Job, OutboundContext};
use super::plan::Plan;
use super::schedule::RetryPolicy;
use crate::config::{HopTls, RouteConfig};
use crate::messages::{DeliverJobs, JobResult, JobResults, Postponed, WakeRouter};
use crate::metrics::{self, pool::Meter};
use crate::resolver::ResolverHandle;
use actix::dev::SendError;
use actix::prelude::*;
use amtp_proto::client::{Cause, Disposition};
use amtp_storage::{Finish, MessageRecord, Queue, QueueId, StorageError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
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
    /// Messages per destination per unit of time (fleet-wide with `[cluster]`).
    pub message_rate: Option<crate::units::Rate>,
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
    outcomes: Vec<Attempted>,
    /// A destination's message rate handed (some of) its recipients back untried: not
    /// before this time (ms since the epoch).
    postponed: Option<u64>,
}

/// A message whose attempt is over, waiting for its results to be written.
struct Done {
    id: QueueId,
    record: MessageRecord,
    outcomes: Vec<Attempted>,
    /// See [`InFlight::postponed`]. With no outcomes, nothing was tried: the message is
    /// postponed ([`Queue::postpone`], no attempt counted); with some, the attempt is
    /// recorded and the retry is no earlier than this.
    postponed: Option<u64>,
}

/// Results waiting to be written, and how many writers are at work (see [`WRITERS`]).
#[derive(Default)]
struct Writes {
    ready: Vec<Done>,
    writers: usize,
}

/// See the module docs.
pub struct Router {
    shared: Arc<RouterShared>,
    destinations: HashMap<String, Addr<Destination>>,
    in_flight: HashMap<QueueId, InFlight>,
    ticking: bool,
    /// A wake-up came while a tick was running: tick again when it ends, so messages
    /// committed meanwhile do not wait for the poll.
    again: bool,
    /// Bodies of freshly committed messages, left by the commit (no read-back from the spool).
    fresh: Arc<Fresh>,
    /// Results ready to be written, shared with the writers.
    writes: Arc<std::sync::Mutex<Writes>>,
}

/// Writers of results at once. Each takes every result that is ready (up to
/// [`WRITE_BATCH`]) and writes them with one [`Queue::complete_batch`]: one sled batch and
/// one shared fsync for all. Two, so that one collects and writes while the other waits for
/// its fsync; more would only split the batches (and, unbounded, grew tokio's blocking pool to
/// about 270 threads and the relay to 1.3 GiB with 100,000 deferred messages, issue 4).
const WRITERS: usize = 2;

/// Most results in one write.
const WRITE_BATCH: usize = 256;

impl Router {
    /// A router over the shared settings, taking fresh bodies from `fresh`.
    pub fn new(shared: Arc<RouterShared>, fresh: Arc<Fresh>) -> Self {
        Self {
            shared,
            destinations: HashMap::new(),
            in_flight: HashMap::new(),
            ticking: false,
            again: false,
            fresh,
            writes: Arc::default(),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Backpressure: lease nothing while the destinations are this far behind.
        let room = self
            .shared
            .max_in_flight
            .saturating_sub(self.in_flight.len())
            .min(BATCH);
        if self.ticking {
            self.again = true;
            return;
        }
        if room == 0 {
            return;
        }
        self.ticking = true;
        self.again = false;
        let shared = self.shared.clone();
        let fresh = self.fresh.clone();
        let skip: HashSet<QueueId> = self.in_flight.keys().copied().collect();
        let meter = self.shared.meter.clone();
        let work = async move {
            let s = shared.clone();
            let leased = tokio::task::spawn_blocking(move || lease_due(&s, &fresh, &skip, room))
                .await
                .unwrap_or_default();
            // Unreadable messages are decided already; the others are routed.
            let mut plans = leased.unreadable;
            plans.reserve(leased.ready.len());
            for (id, record, body) in leased.ready {
                plans.push(lookup::plan_message(&shared, id, record, body).await);
            }
            plans
        };
        let work = async move { meter.timed(work).await };
        ctx.spawn(work.into_actor(self).map(|plans, act, ctx| {
            act.ticking = false;
            act.dispatch(plans, ctx);
            if act.again {
                act.tick(ctx);
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
        .with_message_rate(s.message_rate, ctx.address().recipient())
        .start();
        self.destinations.insert(key.to_string(), addr.clone());
        addr
    }

    /// Hand a tick's plans out: immediate outcomes are recorded at once, and each
    /// destination gets all of its jobs from this tick in one [`DeliverJobs`].
    fn dispatch(&mut self, plans: Vec<Plan>, ctx: &mut Context<Self>) {
        let mut batches: Vec<(String, Vec<HopTarget>, Vec<Job>)> = Vec::new();
        for plan in plans {
            let outstanding = plan.groups.len() + usize::from(!plan.immediate.is_empty());
            self.in_flight.insert(
                plan.id,
                InFlight {
                    record: plan.record,
                    outstanding,
                    outcomes: Vec::new(),
                    postponed: None,
                },
            );
            if !plan.immediate.is_empty() {
                self.record_result(
                    JobResult {
                        id: plan.id,
                        destination: "-".into(),
                        next_hop: None,
                        outcomes: plan.immediate,
                    },
                    ctx,
                );
            }
            for g in plan.groups {
                match batches.iter_mut().find(|(key, _, _)| *key == g.key) {
                    Some((_, _, jobs)) => jobs.push(g.job),
                    None => batches.push((g.key, g.targets, vec![g.job])),
                }
            }
        }
        for (key, targets, jobs) in batches {
            self.send_jobs(&key, &targets, jobs, ctx);
        }
    }

    /// One destination's jobs in one message. A destination that stopped meanwhile is
    /// replaced once; a full mailbox (or a second stop) defers every job as busy, so each
    /// message is finalized and retried, never left waiting for its lease to expire.
    fn send_jobs(
        &mut self,
        key: &str,
        targets: &[HopTarget],
        jobs: Vec<Job>,
        ctx: &mut Context<Self>,
    ) {
        let mut msg = DeliverJobs(jobs);
        for _ in 0..2 {
            let dest = self.destination(key, targets, ctx);
            match dest.try_send(msg) {
                Ok(()) => return,
                Err(SendError::Closed(m)) => {
                    self.destinations.remove(key);
                    msg = m;
                }
                Err(SendError::Full(m)) => {
                    msg = m;
                    break;
                }
            }
        }
        let busy = Cause::Busy(format!("{key}: destination busy"));
        for job in msg.0 {
            let outcomes = job
                .envelope
                .recipients
                .iter()
                .map(|r| (r.clone(), Disposition::Deferred(busy.clone())))
                .collect();
            self.record_result(
                JobResult {
                    id: job.id,
                    destination: key.to_string(),
                    next_hop: None,
                    outcomes,
                },
                ctx,
            );
        }
    }

    fn record_result(&mut self, result: JobResult, ctx: &mut Context<Self>) {
        let Some(entry) = self.in_flight.get_mut(&result.id) else {
            return;
        };
        let (destination, next_hop) = (result.destination, result.next_hop);
        entry
            .outcomes
            .extend(
                result
                    .outcomes
                    .into_iter()
                    .map(|(address, disposition)| Attempted {
                        address,
                        hop: destination.clone(),
                        next_hop: next_hop.clone(),
                        disposition,
                    }),
            );
        entry.outstanding = entry.outstanding.saturating_sub(1);
        if entry.outstanding == 0 {
            self.finished(result.id, ctx);
        }
    }

    /// A destination handed `id`'s recipients back untried, not to be tried before `until`.
    fn record_postponed(&mut self, id: QueueId, until: u64, ctx: &mut Context<Self>) {
        let Some(entry) = self.in_flight.get_mut(&id) else {
            return;
        };
        entry.postponed = Some(entry.postponed.map_or(until, |t| t.max(until)));
        entry.outstanding = entry.outstanding.saturating_sub(1);
        if entry.outstanding == 0 {
            self.finished(id, ctx);
        }
    }

    /// Every destination has answered for `id`: out of flight, and its results to a writer.
    fn finished(&mut self, id: QueueId, ctx: &mut Context<Self>) {
        let Some(done) = self.in_flight.remove(&id) else {
            return;
        };
        let start_writer = {
            let mut w = lock(&self.writes);
            w.ready.push(Done {
                id,
                record: done.record,
                outcomes: done.outcomes,
                postponed: done.postponed,
            });
            let start = w.writers < WRITERS;
            w.writers += usize::from(start);
            start
        };
        if !start_writer {
            // A running writer takes it with the next batch.
            return;
        }
        let shared = self.shared.clone();
        let writes = self.writes.clone();
        let writer = async move {
            loop {
                let batch: Vec<Done> = {
                    let mut w = lock(&writes);
                    if w.ready.is_empty() {
                        w.writers -= 1;
                        break;
                    }
                    let n = w.ready.len().min(WRITE_BATCH);
                    w.ready.drain(..n).collect()
                };
                let s = shared.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || write_results(&s, batch)).await
                {
                    tracing::error!(error = %e, "writing delivery results failed; their leases will expire and the messages are retried");
                }
            }
        };
        ctx.spawn(writer.into_actor(self));
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
        // Taken before the tick: a commit from now on wakes us again.
        self.fresh.woken();
        self.tick(ctx);
    }
}

impl Handler<Postponed> for Router {
    type Result = ();

    fn handle(&mut self, msg: Postponed, ctx: &mut Self::Context) {
        let meter = self.shared.meter.clone();
        let _busy = meter.busy();
        meter.add_handled(u64::try_from(msg.0.len()).unwrap_or(u64::MAX));
        for (id, until) in msg.0 {
            self.record_postponed(id, until, ctx);
        }
        // Room in flight again: lease what else is due (postponed mail is not, until its time).
        self.tick(ctx);
    }
}

impl Handler<JobResults> for Router {
    type Result = ();

    fn handle(&mut self, msg: JobResults, ctx: &mut Self::Context) {
        let meter = self.shared.meter.clone();
        let _busy = meter.busy();
        meter.add_handled(u64::try_from(msg.0.len()).unwrap_or(u64::MAX));
        for result in msg.0 {
            self.record_result(result, ctx);
        }
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

/// What [`lease_due`] leased.
#[derive(Default)]
struct Leased {
    /// Messages with their bodies, to be routed.
    ready: Vec<(QueueId, MessageRecord, Bytes)>,
    /// Messages whose body could not be read, decided without a connection (see
    /// [`unreadable`]).
    unreadable: Vec<Plan>,
}

/// Lease up to `room` due messages (not already in flight) with their bodies: from memory
/// when the commit left them in `fresh`, else read from the spool. A message whose body
/// cannot be read is planned at once by [`unreadable`].
fn lease_due(s: &RouterShared, fresh: &Fresh, skip: &HashSet<QueueId>, room: usize) -> Leased {
    let now = amtp_storage::now_ms();
    let until = now + u64::try_from(s.lease.as_millis()).unwrap_or(u64::MAX);
    let due = match s.queue.due_except(now, BATCH, skip) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read due messages");
            return Leased::default();
        }
    };
    let mut out = Leased::default();
    for id in due.into_iter().take(room) {
        match s.queue.lease(id, now, until) {
            Ok(Some(rec)) => match fresh
                .take(id)
                .map_or_else(|| s.queue.body(id).map(Bytes::from), Ok)
            {
                Ok(body) => out.ready.push((id, rec, body)),
                Err(e) => out.unreadable.extend(unreadable(id, rec, &e)),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(id = %id, error = %e, "cannot lease message"),
        }
    }
    out
}

/// The plan for a leased message whose body cannot be read: every pending recipient decided
/// at once, so that the message goes through the same results path as any attempt (the
/// per-recipient log trail and metrics, DSNs queued durably before the record changes).
///
/// A body that is gone ([`StorageError::BodyMissing`]) can never be delivered: every
/// recipient fails (`5.3.0`), the sender gets a DSN and the message leaves the queue. Any
/// other read error may pass: the attempt is counted as deferred and retried on the normal
/// schedule, so the message's lifetime still ends it. A message removed meanwhile is left
/// alone.
fn unreadable(id: QueueId, record: MessageRecord, e: &StorageError) -> Option<Plan> {
    let recipients = record.pending().count();
    let sender = format!("<{}>", record.envelope.sender);
    let disposition = match e {
        StorageError::NotFound(_) => return None,
        StorageError::BodyMissing { .. } => {
            tracing::error!(queue_id = %id, sender = %sender, recipients, error = %e, "message body missing from the spool; the message cannot be delivered: every pending recipient fails and the sender gets a DSN (none to a null sender)");
            Disposition::Failed(Cause::BodyLost)
        }
        _ => {
            tracing::error!(queue_id = %id, sender = %sender, recipients, error = %e, "cannot read message body; counted as a deferred attempt and retried on the retry schedule");
            Disposition::Deferred(Cause::QueueRead)
        }
    };
    let immediate = record
        .pending()
        .map(|r| (r.address.clone(), disposition.clone()))
        .collect();
    Some(Plan {
        id,
        record,
        groups: Vec::new(),
        immediate,
    })
}

fn lock(writes: &std::sync::Mutex<Writes>) -> std::sync::MutexGuard<'_, Writes> {
    writes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write the outcomes of finished attempts as [`finalize::decide`] says: the DSNs first (one
/// durable enqueue for all of them), then every message's recipient states and retry in one
/// [`Queue::complete_batch`]. A message whose DSN could not be queued is left alone: its lease
/// expires and it is tried again. Messages no destination tried (all postponed by a message
/// rate) are only postponed, with one [`Queue::postpone`]: no attempt, no log line.
fn write_results(s: &RouterShared, batch: Vec<Done>) {
    let now = amtp_storage::now_ms();
    let mut finishes = Vec::with_capacity(batch.len());
    let mut dsns = Vec::new();
    let mut postponed = Vec::new();
    for done in batch {
        let (id, record) = (done.id, &done.record);
        if let (true, Some(until)) = (done.outcomes.is_empty(), done.postponed) {
            postponed.push((id, until));
            continue;
        }
        let decision = finalize::decide(record, done.outcomes, &s.retry, now);
        log_outcomes(id, record, &decision, now);
        let finish = Finish {
            id,
            outcomes: decision.states,
            retry_at: Some(
                done.postponed
                    .map_or(decision.retry_at, |t| t.max(decision.retry_at)),
            ),
        };
        if decision.bounce.is_empty() {
            finishes.push(finish);
            continue;
        }
        let original = s.queue.body_prefix(id, 64 * 1024).unwrap_or_default();
        match bounce::dsn(
            &s.hostname,
            id,
            record,
            &decision.bounce,
            &original,
            now / 1000,
        ) {
            Some(dsn) => dsns.push((
                finish,
                decision.bounce.len(),
                record.envelope.sender.clone(),
                dsn,
            )),
            None => finishes.push(finish),
        }
    }
    if !dsns.is_empty() {
        let messages: Vec<_> = dsns.iter().map(|d| d.3.clone()).collect();
        match s.queue.enqueue_batch(&messages) {
            Ok(dsn_ids) => {
                for ((finish, recipients, to, _), dsn_id) in dsns.into_iter().zip(dsn_ids) {
                    metrics::dsn_generated();
                    tracing::info!(queue_id = %finish.id, dsn_queue_id = %dsn_id, recipients, to = %to, "bounce queued");
                    finishes.push(finish);
                }
            }
            Err(e) => {
                for (finish, ..) in &dsns {
                    tracing::error!(id = %finish.id, error = %format!("cannot queue the DSN: {e}"), "could not record delivery results; the lease will expire and the message is retried");
                }
            }
        }
    }
    if let Err(e) = s.queue.postpone(&postponed) {
        tracing::error!(messages = postponed.len(), error = %e, "could not postpone messages held back by a destination's message rate; their leases will expire and they are tried again");
    }
    match s.queue.complete_batch(&finishes) {
        Ok(results) => {
            for (finish, result) in finishes.iter().zip(results) {
                if let Err(e) = result {
                    tracing::error!(id = %finish.id, error = %e, "could not record delivery results; the lease will expire and the message is retried");
                }
            }
        }
        Err(e) => {
            for finish in &finishes {
                tracing::error!(id = %finish.id, error = %e, "could not record delivery results; the lease will expire and the message is retried");
            }
        }
    }
}

/// The route kind of a destination key (as `lookup`/`plan` make them: `route:…`, `amtp:…`,
/// `smtp:…`; `-` when the relay decided without a destination).
fn route_kind(key: &str) -> &'static str {
    match key.split(':').next() {
        Some("route") => "route",
        Some("amtp") => "amtp_srv",
        Some("smtp") => "smtp_mx",
        _ => "none",
    }
}

/// The one place every recipient's outcome of an attempt is known: the per-message trail's
/// delivery milestone (one line per recipient keyed by the queue id — `delivered`,
/// `deferred`, `bounced`, `expired` — with the route, destination, next hop and address,
/// status, reply or cause, delay since arrival and attempt number) and the delivery metrics.
/// Local configuration errors are logged at error level: they need the operator, and the
/// mail waits for them.
fn log_outcomes(id: QueueId, record: &MessageRecord, decision: &Decision, now: u64) {
    let attempt = record.attempts + 1;
    let delay = Duration::from_millis(now.saturating_sub(record.received_at));
    // Seconds with millisecond precision, like Postfix's delay=.
    #[allow(clippy::cast_precision_loss)]
    let delay_s = delay.as_millis() as f64 / 1000.0;
    for o in &decision.outcomes {
        let a = &o.attempted;
        let status = a.disposition.status();
        let route = route_kind(&a.hop);
        let (result, is_final) = match o.verdict {
            Verdict::Delivered => ("delivered", true),
            Verdict::Deferred => ("deferred", false),
            Verdict::Bounced | Verdict::Expired => ("failed", true),
        };
        metrics::delivery_outcome(result, route, is_final.then_some(delay));
        if o.verdict == Verdict::Expired {
            metrics::expired();
        }
        let next_hop = a.next_hop.as_ref().map_or("-", |h| h.name.as_str());
        let address = a
            .next_hop
            .as_ref()
            .map_or_else(|| "-".to_string(), |h| h.addr.to_string());
        if a.disposition.cause().is_some_and(Cause::is_local_config) {
            tracing::error!(queue_id = %id, rcpt = %a.address, route, destination = %a.hop, next_hop, address = %address, status = %status, reply = %a.disposition, delay_s, attempt, "{}", o.verdict.as_str());
        } else {
            tracing::info!(queue_id = %id, rcpt = %a.address, route, destination = %a.hop, next_hop, address = %address, status = %status, reply = %a.disposition, delay_s, attempt, "{}", o.verdict.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbound::tls_configs;
    use amtp_proto::client::{PeerReply, Stage};
    use amtp_proto::reply::Reply;
    use amtp_storage::{BodyType, Envelope, NewMessage, Origin};

    fn message(n: usize) -> NewMessage {
        NewMessage {
            id: None,
            envelope: Envelope {
                sender: "a@src.test".into(),
                mpc: None,
                origin: Origin::Smtp,
                listener: "mx".into(),
                client_ip: "127.0.0.1".into(),
                auth_user: None,
                message_id: None,
                body: BodyType::Unspecified,
                smtputf8: false,
            },
            recipients: if n == 3 {
                vec![format!("r{n}@dst.test"), format!("r{n}@other.test")]
            } else {
                vec![format!("r{n}@dst.test")]
            },
            body: format!("Subject: {n}\r\n\r\nbody\r\n").into_bytes().into(),
        }
    }

    /// Settings under which the router never leases by itself (`max_in_flight` 0), so the
    /// test alone decides what is in flight.
    fn shared(queue: Arc<Queue>) -> Arc<RouterShared> {
        Arc::new(settings(queue))
    }

    fn settings(queue: Arc<Queue>) -> RouterShared {
        RouterShared {
            queue,
            resolver: None,
            routes: HashMap::new(),
            outbound: OutboundContext {
                ehlo_name: "relay.test".into(),
                source: None,
                connect_timeout: Duration::from_secs(2),
                command_timeout: Duration::from_secs(2),
                amtp_tls: None,
                smtp_verified_tls: None,
                smtp_opportunistic_tls: tls_configs(None, None, None).unwrap().opportunistic,
            },
            smtp_fallback: false,
            smtp_fallback_tls: HopTls::None,
            smtp_fallback_port: 25,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(600),
            poll_interval: Duration::from_secs(3600),
            concurrency: 1,
            max_per_connection: 1,
            max_in_flight: 0,
            message_rate: None,
            hostname: "relay.test".into(),
            meter: Meter::new("router", 0),
            destination_meter: Meter::new("destination", 0),
        }
    }

    fn delivered(id: QueueId, rcpt: &str) -> JobResult {
        JobResult {
            id,
            destination: "route:sink.test:25".into(),
            next_hop: None,
            outcomes: vec![(
                rcpt.to_string(),
                Disposition::Delivered(PeerReply {
                    host: "sink.test".into(),
                    reply: Reply::new(250, "2.0.0", "ok"),
                    stage: Stage::Data,
                }),
            )],
        }
    }

    /// Messages the router holds (a destination throttled by a message rate keeps them in
    /// flight) can outlive their leases and become due again; however many they are, the
    /// other due messages must still be leased. Filtering after asking the queue for the
    /// first `BATCH` due ids found none of the others and leased nothing at all.
    #[test]
    fn held_messages_past_their_lease_do_not_keep_the_others_from_being_leased() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let queue = Arc::new(queue);
        let held = queue
            .enqueue_batch(&(0..BATCH + 4).map(message).collect::<Vec<_>>())
            .unwrap();
        let now = amtp_storage::now_ms();
        for &id in &held {
            assert!(queue.lease(id, now, now + 1).unwrap().is_some());
        }
        std::thread::sleep(Duration::from_millis(5));
        let other = queue.enqueue_batch(&[message(BATCH + 4)]).unwrap()[0];
        let skip: HashSet<QueueId> = held.iter().copied().collect();
        let leased = lease_due(&shared(queue), &Fresh::new(1 << 20), &skip, 10);
        let ids: Vec<QueueId> = leased.ready.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids, vec![other]);
    }

    /// Results arrive from a destination in batches: every message of a batch is finalized
    /// (here: delivered, so removed from the queue), and a message whose recipients went to
    /// two destinations only once both have answered, whichever batches carry the answers.
    #[actix_rt::test]
    async fn every_result_of_a_batch_is_finalized() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let queue = Arc::new(queue);
        let ids = queue
            .enqueue_batch(&(0..4).map(message).collect::<Vec<_>>())
            .unwrap();
        let now = amtp_storage::now_ms();
        let mut router = Router::new(shared(queue.clone()), Arc::new(Fresh::new(1 << 20)));
        for (n, id) in ids.iter().enumerate() {
            let record = queue.lease(*id, now, now + 600_000).unwrap().unwrap();
            // The last message waits for two destinations.
            let outstanding = if n == 3 { 2 } else { 1 };
            router.in_flight.insert(
                *id,
                InFlight {
                    record,
                    outstanding,
                    outcomes: Vec::new(),
                    postponed: None,
                },
            );
        }
        let addr = router.start();
        let first: Vec<JobResult> = (0..4)
            .map(|n| delivered(ids[n], &format!("r{n}@dst.test")))
            .collect();
        addr.send(JobResults(first)).await.unwrap();
        let gone = |id: &QueueId| queue.get(*id).unwrap().is_none();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ids[..3].iter().all(gone) {
            assert!(std::time::Instant::now() < deadline, "batch not finalized");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The fourth still waits for its second destination.
        assert!(!gone(&ids[3]));
        addr.send(JobResults(vec![delivered(ids[3], "r3@other.test")]))
            .await
            .unwrap();
        while !gone(&ids[3]) {
            assert!(
                std::time::Instant::now() < deadline,
                "last message not finalized"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A message a destination's message rate handed back untried leaves the in-flight set
    /// and is postponed: its lease released, due at the given time, no attempt counted. A
    /// message with recipients at two destinations, one tried and one postponed, records
    /// the attempt and is retried no earlier than the postponement.
    #[actix_rt::test]
    async fn postponed_messages_leave_flight_and_wait_without_an_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let queue = Arc::new(queue);
        let ids = queue.enqueue_batch(&[message(0), message(3)]).unwrap();
        let now = amtp_storage::now_ms();
        let mut router = Router::new(shared(queue.clone()), Arc::new(Fresh::new(1 << 20)));
        for (id, outstanding) in [(ids[0], 1), (ids[1], 2)] {
            let record = queue.lease(id, now, now + 600_000).unwrap().unwrap();
            router.in_flight.insert(
                id,
                InFlight {
                    record,
                    outstanding,
                    outcomes: Vec::new(),
                    postponed: None,
                },
            );
        }
        let addr = router.start();
        let until = now + 30_000;
        addr.send(Postponed(vec![(ids[0], until), (ids[1], until)]))
            .await
            .unwrap();
        addr.send(JobResults(vec![delivered(ids[1], "r3@dst.test")]))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let settled = |id: QueueId| queue.get(id).unwrap().unwrap().lease_until == 0;
        while !(settled(ids[0]) && settled(ids[1])) {
            assert!(std::time::Instant::now() < deadline, "not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let untried = queue.get(ids[0]).unwrap().unwrap();
        assert_eq!((untried.attempts, untried.next_attempt), (0, until));
        let mixed = queue.get(ids[1]).unwrap().unwrap();
        assert_eq!(mixed.attempts, 1, "one recipient was tried");
        assert!(mixed.next_attempt >= until, "not before the postponement");
        assert_eq!(
            mixed
                .pending()
                .map(|r| r.address.as_str())
                .collect::<Vec<_>>(),
            ["r3@other.test"]
        );
        assert!(queue.due(now + 1000, 10).unwrap().is_empty());
    }

    /// One message as an SMTP sink received it.
    #[derive(Debug, Clone)]
    struct Received {
        from: String,
        to: Vec<String>,
        data: String,
    }

    /// A minimal SMTP server on loopback that accepts everything and keeps what it got.
    async fn smtp_sink() -> (u16, Arc<std::sync::Mutex<Vec<Received>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 sink.test\r\n").await.unwrap();
                    let mut current = Received {
                        from: String::new(),
                        to: Vec::new(),
                        data: String::new(),
                    };
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-sink.test\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            current.from = line[10..].trim().to_string();
                            b"250 2.1.0 ok\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            current.to.push(line[8..].trim().to_string());
                            b"250 2.1.5 ok\r\n"
                        } else if upper == "DATA" {
                            write.write_all(b"354 go on\r\n").await.unwrap();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                current.data.push_str(&l);
                                current.data.push('\n');
                            }
                            let done = std::mem::replace(
                                &mut current,
                                Received {
                                    from: String::new(),
                                    to: Vec::new(),
                                    data: String::new(),
                                },
                            );
                            store.lock().unwrap().push(done);
                            b"250 2.0.0 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 ok\r\n"
                        };
                        if write.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, got)
    }

    /// A message whose body is gone from the spool (its segment file deleted) can never be
    /// delivered: its sender gets exactly one failure DSN naming its recipients and why, the
    /// message leaves the queue (one from the null sender too, without a DSN), and the other
    /// messages are delivered as usual. (It used to be skipped with "will retry" on every
    /// lease, for ever, with no attempt counted.)
    #[actix_rt::test]
    async fn a_message_whose_body_is_gone_is_bounced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let lost = {
            let (queue, _) = Queue::open(dir.path()).unwrap();
            // Two recipients at two domains; the body in its own segment (a reopened queue
            // never appends to an old segment).
            let mut from_null = message(4);
            from_null.envelope.sender = String::new();
            let ids = queue.enqueue_batch(&[message(3), from_null]).unwrap();
            [ids[0], ids[1]]
        };
        let [lost, lost_from_null] = lost;
        let (queue, report) = Queue::open(dir.path()).unwrap();
        assert!(report.missing_bodies.is_empty());
        let queue = Arc::new(queue);
        let other = queue.enqueue_batch(&[message(1)]).unwrap()[0];
        let segments: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('s'))
            })
            .collect();
        assert_eq!(segments.len(), 2, "{segments:?}");
        // The older segment holds the lost message (segment numbers grow).
        let oldest = segments.iter().min().unwrap();
        std::fs::remove_file(oldest).unwrap();
        assert!(matches!(
            queue.body(lost),
            Err(amtp_storage::StorageError::BodyMissing { .. })
        ));

        let (port, sink) = smtp_sink().await;
        let mut settings = settings(queue.clone());
        for domain in ["dst.test", "src.test"] {
            settings.routes.insert(
                domain.into(),
                RouteConfig {
                    domains: vec![domain.into()],
                    host: "127.0.0.1".into(),
                    port,
                    protocol: crate::config::HopProtocol::Smtp,
                    tls: HopTls::None,
                },
            );
        }
        settings.max_in_flight = 16;
        settings.poll_interval = Duration::from_millis(50);
        let _router = Router::new(Arc::new(settings), Arc::new(Fresh::new(1 << 20))).start();

        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !queue.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue keeps {:?}; the sink got {:?}",
                queue.list().unwrap(),
                sink.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(queue.get(lost).unwrap().is_none());
        assert!(
            queue.get(lost_from_null).unwrap().is_none(),
            "removed, no DSN"
        );
        assert!(queue.get(other).unwrap().is_none());
        let got = sink.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        let delivered: Vec<_> = got.iter().filter(|m| m.from == "<a@src.test>").collect();
        assert_eq!(delivered.len(), 1, "{got:?}");
        assert_eq!(delivered[0].to, ["<r1@dst.test>"]);
        assert!(delivered[0].data.contains("Subject: 1"), "{got:?}");
        let dsns: Vec<_> = got.iter().filter(|m| m.from == "<>").collect();
        assert_eq!(dsns.len(), 1, "exactly one DSN: {got:?}");
        assert_eq!(dsns[0].to, ["<a@src.test>"]);
        let text = &dsns[0].data;
        for needle in [
            "Final-Recipient: rfc822; r3@dst.test",
            "Final-Recipient: rfc822; r3@other.test",
            "Action: failed",
            "Status: 5.3.0",
            "message body lost in the relay's queue; please send it again",
        ] {
            assert!(text.contains(needle), "{needle:?} not in the DSN:\n{text}");
        }
        // Its segment slot was released: nothing counts the lost message any more.
        assert!(queue.spool_usage().unwrap().0 <= 1);
    }

    /// A body that cannot be read for another reason (here: an I/O error, the segment's name
    /// taken by a directory) is worth another try, but not silently for ever: the attempt is
    /// counted as deferred (`4.3.0`) and retried on the schedule, so the lifetime ends it.
    #[test]
    fn an_unreadable_body_counts_a_deferred_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let (queue, _) = Queue::open(dir.path()).unwrap();
            queue.enqueue_batch(&[message(3)]).unwrap()[0]
        };
        let spool = dir.path().join("spool");
        let segment = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with('s'))
            .unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        std::fs::remove_file(&segment).unwrap();
        std::fs::create_dir(&segment).unwrap();
        let s = shared(Arc::new(queue));
        let leased = lease_due(&s, &Fresh::new(1 << 20), &HashSet::new(), 10);
        assert!(leased.ready.is_empty());
        let [plan] = <[Plan; 1]>::try_from(leased.unreadable).unwrap();
        assert_eq!(plan.id, id);
        assert!(
            plan.immediate
                .iter()
                .all(|(_, d)| *d == Disposition::Deferred(Cause::QueueRead)),
            "{:?}",
            plan.immediate
        );
        let before = amtp_storage::now_ms();
        let outcomes = plan
            .immediate
            .into_iter()
            .map(|(address, disposition)| Attempted {
                address,
                hop: "-".into(),
                next_hop: None,
                disposition,
            })
            .collect();
        write_results(
            &s,
            vec![Done {
                id,
                record: plan.record,
                outcomes,
                postponed: None,
            }],
        );
        let rec = s.queue.get(id).unwrap().unwrap();
        assert_eq!((rec.attempts, rec.lease_until), (1, 0));
        assert!(rec.next_attempt > before, "retried later, on the schedule");
        assert_eq!(rec.pending().count(), 2);
        assert!(
            rec.recipients
                .iter()
                .all(|r| r.status.as_deref() == Some("4.3.0"))
        );
    }
}
