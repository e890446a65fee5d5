//! A Destination actor per next hop: its own job queue, concurrency limit (simultaneous
//! connections), connection reuse (each connection takes jobs until the queue is empty or
//! `max_messages_per_connection` is reached), and failover across the hop's ordered targets.
//! Results go back to the router as they happen. An idle destination stops itself; the router
//! makes a new one on demand.

use super::outbound::{HopTarget, Job, OutboundContext, run_connection};
use crate::messages::{DeliverJob, JobResult};
use actix::prelude::*;
use amtp_proto::client::{Cause, Disposition};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a destination with nothing to do lives on.
const IDLE_STOP: Duration = Duration::from_secs(60);

/// Open another connection only when this many jobs wait per open one: a slow start that
/// prefers reusing connections (one TLS handshake for many messages) over opening many.
const JOBS_PER_EXTRA_CONNECTION: usize = 4;

/// See the module docs.
pub struct Destination {
    name: String,
    targets: Vec<HopTarget>,
    ctx: OutboundContext,
    concurrency: usize,
    max_per_connection: usize,
    jobs: Arc<Mutex<VecDeque<Job>>>,
    active: usize,
    router: Recipient<JobResult>,
    last_busy: Instant,
}

impl Destination {
    /// A destination for `name` (for logs) trying `targets` in order.
    pub fn new(
        name: String,
        targets: Vec<HopTarget>,
        ctx: OutboundContext,
        concurrency: usize,
        max_per_connection: usize,
        router: Recipient<JobResult>,
    ) -> Self {
        Self {
            name,
            targets,
            ctx,
            concurrency: concurrency.max(1),
            max_per_connection: max_per_connection.max(1),
            jobs: Arc::default(),
            active: 0,
            router,
            last_busy: Instant::now(),
        }
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
        {
            self.active += 1;
            let (targets, octx, jobs, router, max, name) = (
                self.targets.clone(),
                self.ctx.clone(),
                self.jobs.clone(),
                self.router.clone(),
                self.max_per_connection,
                self.name.clone(),
            );
            let work = async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<JobResult>(max + 1);
                let forward = {
                    let router = router.clone();
                    actix::spawn(async move {
                        while let Some(r) = rx.recv().await {
                            // The router's mailbox is bounded; wait for room rather than drop a result.
                            let _ = router.send(r).await;
                        }
                    })
                };
                let mut last_failure: Option<Cause> = None;
                for target in &targets {
                    let next = || {
                        let job = jobs
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .pop_front();
                        std::future::ready(job)
                    };
                    let tx = tx.clone();
                    // At most `max` results per connection and the channel holds `max + 1`:
                    // try_send cannot fail here.
                    let hop = name.clone();
                    let report = move |id, outcomes| {
                        let _ = tx.try_send(JobResult {
                            id,
                            hop: hop.clone(),
                            outcomes,
                        });
                    };
                    match run_connection(target, &octx, max, next, report).await {
                        Ok(()) => {
                            last_failure = None;
                            break;
                        }
                        Err(cause) => {
                            if cause.is_local_config() {
                                tracing::error!(destination = %name, target = %target.host, reason = %cause, "cannot deliver: local configuration error; mail is deferred until it is fixed");
                                last_failure = Some(cause);
                                break;
                            }
                            tracing::info!(destination = %name, target = %target.host, reason = %cause, "next hop failed");
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
                                hop: name.clone(),
                                outcomes,
                            })
                            .await;
                    }
                }
                drop(tx);
                let _ = forward.await;
            };
            ctx.spawn(work.into_actor(self).map(|(), act, ctx| {
                act.active -= 1;
                act.last_busy = Instant::now();
                act.maybe_connect(ctx);
            }));
        }
    }
}

impl Actor for Destination {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(IDLE_STOP / 4, |act, ctx| {
            if act.active == 0 && act.queued() == 0 && act.last_busy.elapsed() >= IDLE_STOP {
                ctx.stop();
            }
        });
    }
}

impl Handler<DeliverJob> for Destination {
    type Result = ();

    fn handle(&mut self, msg: DeliverJob, ctx: &mut Self::Context) {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(msg.0);
        self.last_busy = Instant::now();
        self.maybe_connect(ctx);
    }
}
