//! A Destination actor per next hop: its own job queue, concurrency limit (simultaneous
//! connections), connection reuse (each connection takes jobs until `max_messages_per_connection`
//! is reached, and waits up to [`CONNECTION_LINGER`] for more when the queue runs dry), and
//! failover across the hop's ordered targets. With `[cluster]` the concurrency limit is
//! fleet-wide: each connection first takes a lease ([`crate::cluster::lease`]). Jobs arrive in
//! batches ([`DeliverJobs`], one per router tick). With `max_messages_per_destination`, a job
//! reaches the connections only with a token of the destination's message rate; until then it
//! waits here ([`throttle`]), or — when a few seconds' worth wait already — goes back to the
//! queue untried ([`Postponed`]). Results go back to the router as they happen, through one
//! forwarder per destination that sends whatever results are ready together as one
//! [`JobResults`] (one router wake-up for many messages). An idle destination stops itself;
//! the router makes a new one on demand.
//!
//! Why the linger: mail arrives in small bursts (one per group commit, each waking the router,
//! which dispatches what it leased at once), so a connection that quits as soon as the queue is
//! momentarily empty carries only one burst. Without it, a 5,000-message AMTP load run averaged
//! about 4 messages per connection (`max_messages_per_connection = 100`); with a linger the next
//! burst finds the open connection (Postfix keeps idle connections for the same reason,
//! `smtp_connection_cache_time_limit`, 2 s).

use super::outbound::{HopTarget, Job, OutboundContext, run_connection};
use crate::cluster::lease::LeaseOutcome;
use crate::messages::{DeliverJobs, JobResult, JobResults, NextHop, Postponed};
use crate::metrics::{self, pool::Meter};
use actix::prelude::*;
use amtp_proto::client::{Cause, Disposition};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod throttle;
pub use throttle::held_now;

/// How long a destination with nothing to do lives on.
const IDLE_STOP: Duration = Duration::from_secs(60);

/// How long an open connection waits for the next job before saying QUIT. Well below any
/// server's idle timeout (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
pub const CONNECTION_LINGER: Duration = Duration::from_secs(2);

/// Open another connection only when this many jobs wait per open one: a slow start that
/// prefers reusing connections (one TLS handshake for many messages) over opening many.
const JOBS_PER_EXTRA_CONNECTION: usize = 4;

/// With `[cluster]`, how soon a destination whose fleet-wide slots are all taken asks again.
const LEASE_RETRY: Duration = Duration::from_millis(200);

/// Most results in one [`JobResults`].
const RESULTS_BATCH: usize = 256;

/// See the module docs.
pub struct Destination {
    name: String,
    targets: Vec<HopTarget>,
    ctx: OutboundContext,
    concurrency: usize,
    max_per_connection: usize,
    jobs: Arc<Mutex<VecDeque<Job>>>,
    /// Wakes a lingering connection when a job arrives.
    arrived: Arc<tokio::sync::Notify>,
    active: usize,
    /// With `[cluster]`: every fleet slot was taken; no new lease request before this.
    fleet_full_until: Option<Instant>,
    router: Recipient<JobResults>,
    /// Results from every connection, to the forwarder (started on first use). Bounded:
    /// see [`send_result`].
    results: Option<tokio::sync::mpsc::Sender<JobResult>>,
    last_busy: Instant,
    /// Shared by every destination: jobs waiting (depth), jobs taken, time in connections.
    meter: Meter,
    /// With a message rate: the jobs waiting for its tokens.
    throttle: Option<throttle::Throttle>,
    /// With a message rate: where postponed jobs go (the router).
    postpone_to: Option<Recipient<Postponed>>,
}

impl Destination {
    /// A destination for `name` (for logs) trying `targets` in order.
    pub fn new(
        name: String,
        targets: Vec<HopTarget>,
        ctx: OutboundContext,
        concurrency: usize,
        max_per_connection: usize,
        router: Recipient<JobResults>,
        meter: Meter,
    ) -> Self {
        Self {
            name,
            targets,
            ctx,
            concurrency: concurrency.max(1),
            max_per_connection: max_per_connection.max(1),
            jobs: Arc::default(),
            arrived: Arc::default(),
            active: 0,
            fleet_full_until: None,
            router,
            results: None,
            last_busy: Instant::now(),
            meter,
            throttle: None,
            postpone_to: None,
        }
    }

    /// Send at most `rate` messages (`None`: no limit), handing the jobs it will not hold
    /// back to `router`; see [`throttle`].
    #[must_use]
    pub fn with_message_rate(
        mut self,
        rate: Option<crate::units::Rate>,
        router: Recipient<Postponed>,
    ) -> Self {
        self.throttle = rate.map(throttle::Throttle::new);
        self.postpone_to = rate.map(|_| router);
        self
    }

    /// The sender connections report into, with the forwarder behind it started on first use.
    fn results(&mut self) -> tokio::sync::mpsc::Sender<JobResult> {
        if let Some(tx) = &self.results {
            return tx.clone();
        }
        // Room for every result the open connections can owe at once; a connection that
        // still finds it full waits for room in a task of its own (see `send_result`).
        // (Clamped: tokio refuses absurd capacities, and slots cost memory only when used.)
        let capacity = self
            .concurrency
            .saturating_mul(self.max_per_connection.saturating_add(1))
            .min(1 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel::<JobResult>(capacity);
        actix::spawn(forward_results(rx, self.router.clone()));
        self.results = Some(tx.clone());
        tx
    }

    fn queued(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn maybe_connect(&mut self, ctx: &mut Context<Self>) {
        while self.active < self.concurrency
            && self.queued() > self.active * JOBS_PER_EXTRA_CONNECTION
            && self.fleet_full_until.is_none_or(|t| Instant::now() >= t)
        {
            self.active += 1;
            let tx = self.results();
            let (targets, octx, jobs, max, name, arrived) = (
                self.targets.clone(),
                self.ctx.clone(),
                self.jobs.clone(),
                self.max_per_connection,
                self.name.clone(),
                self.arrived.clone(),
            );
            let meter = self.meter.clone();
            let timing = meter.clone();
            let work = async move {
                let mut last_failure: Option<Cause> = None;
                let mut last_hop: Option<NextHop> = None;
                for target in &targets {
                    let next = || {
                        let (jobs, arrived, meter) = (jobs.clone(), arrived.clone(), meter.clone());
                        async move {
                            let job = next_job(jobs, arrived, CONNECTION_LINGER).await;
                            if job.is_some() {
                                meter.not_queued();
                            }
                            job
                        }
                    };
                    let tx = tx.clone();
                    let destination = name.clone();
                    let hop = NextHop {
                        name: target.host.clone(),
                        addr: target.addr,
                    };
                    let report = move |id, outcomes| {
                        send_result(
                            &tx,
                            JobResult {
                                id,
                                destination: destination.clone(),
                                next_hop: Some(hop.clone()),
                                outcomes,
                            },
                        );
                    };
                    match run_connection(target, &octx, max, next, report).await {
                        Ok(()) => {
                            last_failure = None;
                            break;
                        }
                        Err(cause) => {
                            last_hop = Some(NextHop {
                                name: target.host.clone(),
                                addr: target.addr,
                            });
                            // `next_hop`, not `target`: JSON logs already use `target` for the
                            // event's module, and a repeated key loses one of them.
                            if cause.is_local_config() {
                                tracing::error!(destination = %name, next_hop = %target.host, address = %target.addr, reason = %cause, "cannot deliver: local configuration error; mail is deferred until it is fixed");
                                last_failure = Some(cause);
                                break;
                            }
                            tracing::info!(destination = %name, next_hop = %target.host, address = %target.addr, reason = %cause, "next hop failed");
                            let permanent = cause.status().class == 5;
                            last_failure = Some(cause);
                            if permanent {
                                break;
                            }
                        }
                    }
                }
                // Every target failed: what is still queued shares the failure.
                if let Some(cause) = last_failure {
                    let left: Vec<Job> = jobs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .drain(..)
                        .collect();
                    for job in left {
                        meter.not_queued();
                        let d = Disposition::from_cause(cause.clone());
                        let outcomes = job
                            .envelope
                            .recipients
                            .iter()
                            .map(|r| (r.clone(), d.clone()))
                            .collect();
                        // More jobs may be queued than the channel holds: wait for room (the
                        // forwarder drains it) rather than drop a result, which would strand
                        // the message until its lease expired.
                        let _ = tx
                            .send(JobResult {
                                id: job.id,
                                destination: name.clone(),
                                next_hop: last_hop.clone(),
                                outcomes,
                            })
                            .await;
                    }
                }
                drop(tx);
            };
            // With `[cluster]`, a fleet-wide slot first (see `crate::cluster::lease`).
            let (lease_key, cap) = (self.name.clone(), self.concurrency);
            let work = async move {
                let _lease = match crate::cluster::get() {
                    Some(c) => match c.acquire_lease(&lease_key, cap).await {
                        LeaseOutcome::Granted(l) => Some(l),
                        LeaseOutcome::Full => return false,
                        LeaseOutcome::Away => None,
                    },
                    None => None,
                };
                timing.timed(work).await;
                true
            };
            ctx.spawn(work.into_actor(self).map(|opened, act, ctx| {
                act.active -= 1;
                act.last_busy = Instant::now();
                if !opened {
                    act.fleet_full_until = Some(Instant::now() + LEASE_RETRY);
                }
                act.maybe_connect(ctx);
                if act.active == 0 && act.queued() > 0 {
                    // Nothing could open: every fleet slot was taken a moment ago (also when
                    // this connection ended just after another request was refused). Ask
                    // again shortly; open connections here would call back when they end.
                    ctx.run_later(LEASE_RETRY, |act, ctx| act.maybe_connect(ctx));
                }
            }));
        }
    }
}

/// A connection's result, into the destination's channel without waiting (the connection is
/// not async there). The channel holds what every open connection can owe, so it is full only
/// when the router has stopped taking results for a long time; then a task of its own waits
/// for room: a result is never dropped (that would strand its message until its lease
/// expired), and at most one such task exists per job in flight.
fn send_result(tx: &tokio::sync::mpsc::Sender<JobResult>, result: JobResult) {
    if let Err(tokio::sync::mpsc::error::TrySendError::Full(result)) = tx.try_send(result) {
        let tx = tx.clone();
        actix::spawn(async move {
            let _ = tx.send(result).await;
        });
    }
}

/// Sends results to the router: the first that arrives, with every other one already waiting
/// (up to [`RESULTS_BATCH`]), as one [`JobResults`]. Waits for room in the router's bounded
/// mailbox rather than dropping results. Ends when the destination and all its connections
/// are gone.
async fn forward_results(
    mut rx: tokio::sync::mpsc::Receiver<JobResult>,
    router: Recipient<JobResults>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < RESULTS_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let _ = router.send(JobResults(batch)).await;
    }
}

fn pop(jobs: &Mutex<VecDeque<Job>>) -> Option<Job> {
    jobs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop_front()
}

/// The next job for an open connection: at once when one is queued, else the first to arrive
/// within `linger`, else `None` (the connection says QUIT).
async fn next_job(
    jobs: Arc<Mutex<VecDeque<Job>>>,
    arrived: Arc<tokio::sync::Notify>,
    linger: Duration,
) -> Option<Job> {
    let deadline = tokio::time::Instant::now() + linger;
    loop {
        if let Some(job) = pop(&jobs) {
            return Some(job);
        }
        // Register before looking again, so a job pushed in between is not missed.
        let notified = arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(job) = pop(&jobs) {
            return Some(job);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}

impl Actor for Destination {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::destinations_changed(1);
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(IDLE_STOP / 4, |act, ctx| {
            let held = act.throttle.as_ref().map_or(0, throttle::Throttle::waiting);
            if act.active == 0
                && act.queued() == 0
                && held == 0
                && act.last_busy.elapsed() >= IDLE_STOP
            {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::destinations_changed(-1);
    }
}

impl Handler<DeliverJobs> for Destination {
    type Result = ();

    fn handle(&mut self, msg: DeliverJobs, ctx: &mut Self::Context) {
        let _busy = self.meter.busy();
        let n = msg.0.len();
        self.meter.add_handled(u64::try_from(n).unwrap_or(u64::MAX));
        self.last_busy = Instant::now();
        // With a message rate, each job waits for its token in the throttle first.
        let mut ready = Vec::with_capacity(n);
        let mut postponed = Vec::new();
        for job in msg.0 {
            self.meter.queued();
            match self.hold(job, ctx) {
                throttle::Held::Ready(job) => ready.push(job),
                throttle::Held::Waiting => {}
                throttle::Held::Postponed(id, until) => {
                    self.meter.not_queued();
                    postponed.push((id, until));
                }
            }
        }
        self.postpone(postponed);
        if !ready.is_empty() {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for job in ready {
                jobs.push_back(job);
                // One waiting connection per job (a permit is stored when none waits).
                self.arrived.notify_one();
            }
        }
        self.maybe_connect(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amtp_proto::client::{BodyType, Envelope};
    use amtp_storage::QueueId;

    pub(super) fn job(id: u64) -> Job {
        Job {
            id: QueueId(id),
            envelope: Envelope {
                from: "a@src.test".into(),
                recipients: vec!["b@dst.test".into()],
                mpc: None,
                size: 1,
                body: BodyType::Unspecified,
                eight_bit: false,
                smtputf8: false,
                utf8_headers: false,
            },
            body: bytes::Bytes::from_static(b"x\r\n"),
        }
    }

    struct Batches(Arc<Mutex<Vec<Vec<QueueId>>>>);

    impl Actor for Batches {
        type Context = Context<Self>;
    }

    impl Handler<JobResults> for Batches {
        type Result = ();
        fn handle(&mut self, msg: JobResults, _: &mut Context<Self>) {
            self.0
                .lock()
                .unwrap()
                .push(msg.0.into_iter().map(|r| r.id).collect());
        }
    }

    fn result(id: u64) -> JobResult {
        JobResult {
            id: QueueId(id),
            destination: "route:sink.test:25".into(),
            next_hop: None,
            outcomes: Vec::new(),
        }
    }

    /// Results that are ready together reach the router as one message, and a full channel
    /// never drops a result (it waits for room in a task of its own).
    #[actix_rt::test]
    async fn results_ready_together_go_to_the_router_as_one_batch() {
        let seen: Arc<Mutex<Vec<Vec<QueueId>>>> = Arc::default();
        let router = Batches(seen.clone()).start().recipient();
        // Room for two: the other three wait in tasks of their own.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        for id in 1..=5 {
            send_result(&tx, result(id));
        }
        let forwarder = actix::spawn(forward_results(rx, router));
        // Let the forwarder take the first batch before the next result arrives.
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        send_result(&tx, result(6));
        drop(tx);
        forwarder.await.unwrap();
        // The forwarder ends once its last result is sent; the router handles it right after.
        while seen.lock().unwrap().iter().map(Vec::len).sum::<usize>() < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let batches = seen.lock().unwrap().clone();
        let all: Vec<u64> = batches.iter().flatten().map(|id| id.0).collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3, 4, 5, 6], "{batches:?}");
        // The first two were in the channel together when the forwarder started.
        assert_eq!(batches[0], [QueueId(1), QueueId(2)], "{batches:?}");
    }

    /// A connection takes a queued job at once, waits for one that arrives while it lingers,
    /// and gives up (QUIT) when none arrives in time.
    #[actix_rt::test]
    async fn an_open_connection_lingers_for_the_next_job() {
        let jobs: Arc<Mutex<VecDeque<Job>>> = Arc::default();
        let arrived: Arc<tokio::sync::Notify> = Arc::default();
        jobs.lock().unwrap().push_back(job(1));
        let got = next_job(jobs.clone(), arrived.clone(), Duration::from_secs(30)).await;
        assert_eq!(got.map(|j| j.id), Some(QueueId(1)));
        // Nothing queued: a job pushed while waiting is taken (long linger: no race with time).
        let waiting = tokio::spawn(next_job(
            jobs.clone(),
            arrived.clone(),
            Duration::from_secs(30),
        ));
        tokio::task::yield_now().await;
        jobs.lock().unwrap().push_back(job(2));
        arrived.notify_one();
        assert_eq!(waiting.await.unwrap().map(|j| j.id), Some(QueueId(2)));
        // Nothing arrives: None once the linger is over.
        assert!(
            next_job(jobs.clone(), arrived.clone(), Duration::from_millis(20))
                .await
                .is_none()
        );
    }
}
