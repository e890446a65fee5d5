//! The sessions' door to durable storage, and the queue actor behind the admin socket.
//!
//! [`Intake`] hands each message to the group committer without blocking, from the
//! session's own thread (a full commit backlog or unhealthy storage is answered at once, and
//! becomes 451 4.3.0). When a message is durable, the commit thread itself leaves its body for
//! the router and wakes the router once per commit batch ([`Handoff`]); a failed commit leaves
//! nothing and wakes nobody. The session's future is woken by the commit thread directly: no
//! actor in between, so no other thread wakes per message.
//!
//! The queue actor answers the admin socket's read-only queries off the reactor, and runs
//! the spool's compaction every [`COMPACT_EVERY`] on the blocking pool (see
//! `amtp_storage::queue::compaction`): off the sessions' and the committer's threads.

use crate::admin;
use crate::delivery::fresh::Handoff;
use crate::messages::{AdminQuery, Enqueue, EnqueueError, WakeRouter};
use crate::metrics::pool::Meter;
use actix::prelude::*;
use amtp_storage::{Committer, NewMessage, Queue, QueueId, SubmitError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the spool's sparse segments are compacted.
pub const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// See the module docs.
#[derive(Clone)]
pub struct Intake {
    committer: Committer,
    /// Told about each durable enqueue (and woken once per batch), so delivery starts
    /// without waiting for its poll or reading the body back; absent without delivery.
    handoff: Option<Handoff>,
    /// Messages handed in and the time spent handing them (the `queue` pool's figures).
    meter: Meter,
}

impl Intake {
    /// Over the committer, with the router's hand-off when delivery is enabled.
    pub fn new(committer: Committer, handoff: Option<Handoff>, meter: Meter) -> Self {
        Self {
            committer,
            handoff,
            meter,
        }
    }

    /// Hand `msg` to the committer; the future is ready once it is durable or refused.
    pub fn enqueue(
        &self,
        msg: Box<NewMessage>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<QueueId, EnqueueError>> + Send>> {
        // No mailbox in between: the pool's depth stays 0 (the committer's backlog is its own
        // gauge); handled messages and the time spent handing them in are counted.
        self.meter.add_handled(1);
        let _busy = self.meter.busy();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The same shared bytes the spool writes (a reference, not a copy).
        let handoff = self.handoff.clone().map(|h| (h, msg.body.clone()));
        let submitted = self.committer.submit(
            *msg,
            // Runs on the commit thread, once per message, in commit order.
            Box::new(move |result| {
                if let (Ok(id), Some((handoff, body))) = (&result, handoff) {
                    handoff.committed(*id, body);
                }
                let _ = tx.send(result);
            }),
        );
        match submitted {
            Err(SubmitError::Full) => Box::pin(std::future::ready(Err(EnqueueError::Busy))),
            Err(SubmitError::Unavailable) => {
                Box::pin(std::future::ready(Err(EnqueueError::Unavailable)))
            }
            Ok(()) => Box::pin(async move {
                match rx.await {
                    Ok(Ok(id)) => Ok(id),
                    Ok(Err(e)) => Err(EnqueueError::Failed(e.0)),
                    Err(_) => Err(EnqueueError::Unavailable),
                }
            }),
        }
    }

    /// As the sessions hold it.
    pub fn door(self) -> Enqueue {
        Arc::new(move |msg| self.enqueue(msg))
    }
}

/// Answers the admin socket (`list`, `show`, `retry`, `bounce`, ...).
pub struct QueueActor {
    queue: Arc<Queue>,
    /// Our host name (DSNs from `queue bounce`).
    hostname: Arc<str>,
    /// Woken after `retry`/`bounce` may have made messages due.
    router: Option<Recipient<WakeRouter>>,
    /// A compaction pass is running (a slow one is never doubled by the next tick).
    compacting: Arc<AtomicBool>,
}

impl QueueActor {
    /// Over an open queue.
    pub fn new(
        queue: Arc<Queue>,
        hostname: Arc<str>,
        router: Option<Recipient<WakeRouter>>,
    ) -> Self {
        Self {
            queue,
            hostname,
            router,
            compacting: Arc::default(),
        }
    }

    /// One compaction pass on the blocking pool, unless one is still running. The pass logs
    /// what it moved; the metrics count it.
    fn compact(&self) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (queue, busy) = (self.queue.clone(), self.compacting.clone());
        actix::spawn(async move {
            let pass = tokio::task::spawn_blocking(move || queue.compact()).await;
            busy.store(false, Ordering::Release);
            match pass {
                Ok(Ok(report)) => {
                    if let Some(m) = crate::metrics::get() {
                        m.compaction_copied_bytes.inc_by(report.bytes_copied);
                        m.compaction_freed_bytes.inc_by(report.bytes_freed);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "spool compaction failed; retried next pass")
                }
                Err(e) => tracing::error!(error = %e, "spool compaction stopped"),
            }
        });
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(COMPACT_EVERY, |act, _| act.compact());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::fresh::Fresh;
    use amtp_storage::{BodyType, CommitterConfig, Envelope, Origin};
    use std::time::Duration;

    /// Stands in for the router: counts wake-ups.
    struct Wakes(Arc<std::sync::atomic::AtomicUsize>);

    impl Actor for Wakes {
        type Context = Context<Self>;
    }

    impl Handler<WakeRouter> for Wakes {
        type Result = ();
        fn handle(&mut self, _: WakeRouter, _: &mut Context<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn message(n: usize) -> Box<NewMessage> {
        Box::new(NewMessage {
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
            recipients: vec![format!("r{n}@dst.test")],
            body: format!("Subject: {n}\r\n\r\nbody {n}\r\n")
                .into_bytes()
                .into(),
        })
    }

    /// An intake over a real queue whose committer waits long enough to gather every
    /// message of a test into one commit batch.
    fn start(
        dir: &std::path::Path,
    ) -> (
        Intake,
        Arc<Queue>,
        Arc<Fresh>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (queue, _) = Queue::open(dir).unwrap();
        let queue = Arc::new(queue);
        let committer = Committer::start(
            queue.clone(),
            CommitterConfig {
                batch_max: 64,
                batch_wait: Duration::from_millis(300),
                capacity: 64,
                observer: None,
            },
        )
        .unwrap();
        let fresh = Arc::new(Fresh::new(1 << 20));
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = Wakes(wakes.clone()).start();
        let intake = Intake::new(
            committer,
            Some(Handoff {
                fresh: fresh.clone(),
                router: router.recipient(),
            }),
            Meter::new("queue", 0),
        );
        (intake, queue, fresh, wakes)
    }

    /// The periodic pass compacts with the default policy: a segment that has not been
    /// written for over a minute and holds one live message of 128 is emptied and deleted,
    /// and the message keeps its exact body.
    #[actix_rt::test]
    async fn the_periodic_pass_reclaims_a_segment_pinned_by_one_message() {
        use amtp_storage::{RecipientState, RecipientStatus};
        let dir = tempfile::tempdir().unwrap();
        // Distinct bytes per message (a simple LCG from its number).
        let body = |n: u64| -> Vec<u8> {
            let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..64 << 10)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (x >> 56) as u8
                })
                .collect()
        };
        let mut pinned = None;
        {
            let (queue, _) = Queue::open(dir.path()).unwrap();
            for b in 0..9u64 {
                let batch: Vec<NewMessage> = (0..16)
                    .map(|i| NewMessage {
                        body: body(b * 16 + i).into(),
                        ..*message(0)
                    })
                    .collect();
                for (i, id) in queue.enqueue_batch(&batch).unwrap().into_iter().enumerate() {
                    if b * 16 + i as u64 == 7 {
                        pinned = Some(id);
                    } else if b < 8 {
                        let done = RecipientStatus {
                            address: "r0@dst.test".into(),
                            state: RecipientState::Delivered,
                            last_reply: None,
                            status: None,
                        };
                        queue.complete(id, &[done]).unwrap();
                    }
                }
            }
            // Nothing written to the segments for two minutes.
            let old = std::time::SystemTime::now() - Duration::from_secs(120);
            for e in std::fs::read_dir(dir.path().join("spool")).unwrap() {
                let f = std::fs::File::options()
                    .write(true)
                    .open(e.unwrap().path())
                    .unwrap();
                f.set_modified(old).unwrap();
            }
        }
        let pinned = pinned.unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let queue = Arc::new(queue);
        let before = queue.spool_usage().unwrap().1;
        let actor = QueueActor::new(queue.clone(), Arc::from("relay.test"), None);
        actor.compact();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while queue.spool_usage().unwrap().1 + (7 << 20) > before {
            assert!(
                std::time::Instant::now() < deadline,
                "not compacted: {before} bytes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue.body(pinned).unwrap(), body(7));
        assert_eq!(queue.len(), 1 + 16);
    }

    /// Every message handed in before any is awaited, as concurrent sessions do.
    async fn enqueue_all(intake: &Intake, n: usize) -> Vec<Result<QueueId, EnqueueError>> {
        let door = intake.clone().door();
        let sends: Vec<_> = (0..n).map(|i| door(message(i))).collect();
        futures_util::future::join_all(sends).await
    }

    /// A commit batch hands every body to the router in memory (the same bytes the spool
    /// has) and wakes the router once, not once per message; the next batch wakes it again
    /// only after the router took the first wake-up.
    #[actix_rt::test]
    async fn a_commit_batch_hands_its_bodies_over_with_one_wake_up() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue, fresh, wakes) = start(dir.path());
        let ids: Vec<QueueId> = enqueue_all(&intake, 5)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(fresh.held().0, 5);
        for id in &ids {
            assert_eq!(fresh.take(*id).unwrap(), queue.body(*id).unwrap());
        }
        // The router took its wake-up: the next batch wakes it once more.
        fresh.woken();
        enqueue_all(&intake, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A commit that fails answers every message of its batch with an error (each session
    /// says 451 4.3.0), hands nothing to the router and wakes nobody.
    #[actix_rt::test]
    async fn a_failed_commit_answers_every_message_of_the_batch_and_hands_nothing_over() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, _queue, fresh, wakes) = start(dir.path());
        // Break the spool: its directory becomes a file, so no body can be written.
        std::fs::remove_dir_all(dir.path().join("spool")).unwrap();
        std::fs::write(dir.path().join("spool"), b"not a directory").unwrap();
        let results = enqueue_all(&intake, 5).await;
        assert_eq!(results.len(), 5);
        for r in &results {
            assert!(
                matches!(r, Err(EnqueueError::Failed(_) | EnqueueError::Unavailable)),
                "{r:?}"
            );
        }
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(EnqueueError::Failed(_)))),
            "the batch's commit was attempted and failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fresh.held(), (0, 0));
        assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
