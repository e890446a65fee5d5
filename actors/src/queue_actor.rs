//! The queue actor: the sessions' door to durable storage.
//!
//! It hands each message to the group committer without blocking (a full commit backlog or
//! unhealthy storage is answered at once, and becomes 451 4.3.0), and answers the admin
//! socket's read-only queries off the reactor.

use crate::admin;
use crate::messages::{AdminQuery, Enqueue, EnqueueError, WakeRouter};
use crate::metrics::pool::Meter;
use actix::prelude::*;
use amtp_storage::{Committer, Queue, QueueId, SubmitError};
use std::sync::Arc;

/// See the module docs.
pub struct QueueActor {
    queue: Arc<Queue>,
    /// Our host name (DSNs from `queue bounce`).
    hostname: Arc<str>,
    committer: Committer,
    /// Woken after each durable enqueue, so delivery starts without waiting for its poll.
    router: Option<Recipient<WakeRouter>>,
    /// Mailbox depth (counted by the sessions' `Metered` sender), handled messages, busy time.
    meter: Meter,
}

impl QueueActor {
    /// Over an open queue and its committer.
    pub fn new(
        queue: Arc<Queue>,
        hostname: Arc<str>,
        committer: Committer,
        router: Option<Recipient<WakeRouter>>,
        meter: Meter,
    ) -> Self {
        Self {
            queue,
            hostname,
            committer,
            router,
            meter,
        }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Handlers only do a non-blocking channel send, so a deep mailbox drains fast.
        ctx.set_mailbox_capacity(8192);
    }
}

impl Handler<Enqueue> for QueueActor {
    type Result = ResponseFuture<Result<QueueId, EnqueueError>>;

    fn handle(&mut self, msg: Enqueue, _ctx: &mut Self::Context) -> Self::Result {
        let _busy = self.meter.handled();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let submitted = self.committer.submit(
            *msg.0,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        match submitted {
            Err(SubmitError::Full) => Box::pin(std::future::ready(Err(EnqueueError::Busy))),
            Err(SubmitError::Unavailable) => {
                Box::pin(std::future::ready(Err(EnqueueError::Unavailable)))
            }
            Ok(()) => {
                let router = self.router.clone();
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok(id)) => {
                            // A full router mailbox means it is busy anyway: it will poll.
                            if let Some(r) = router {
                                let _ = r.try_send(WakeRouter);
                            }
                            Ok(id)
                        }
                        Ok(Err(e)) => Err(EnqueueError::Failed(e.0)),
                        Err(_) => Err(EnqueueError::Unavailable),
                    }
                })
            }
        }
    }
}

impl Handler<AdminQuery> for QueueActor {
    type Result = ResponseFuture<Result<String, String>>;

    fn handle(&mut self, msg: AdminQuery, _ctx: &mut Self::Context) -> Self::Result {
        let queue = self.queue.clone();
        let hostname = self.hostname.clone();
        let router = self.router.clone();
        Box::pin(async move {
            let answer =
                tokio::task::spawn_blocking(move || admin::answer(&queue, &msg.0, &hostname)).await;
            // retry/bounce may have made messages due: let delivery look now.
            if let Some(r) = router {
                let _ = r.try_send(WakeRouter);
            }
            answer.unwrap_or_else(|e| Err(format!("query failed: {e}")))
        })
    }
}
