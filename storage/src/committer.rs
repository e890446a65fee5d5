//! Group commit: one thread takes pending enqueues from many sessions and commits them with a
//! single directory fsync, sled batch and flush+fsync, then answers each.
//!
//! The submission channel is bounded: when it is full, [`Committer::submit`] fails at once
//! and the session answers 451 4.3.0 instead of buffering without limit. A commit failure
//! marks storage unhealthy (a flag read without I/O on every new message, see
//! [`Queue::health`]): submissions are refused at once until storage works again. The commit
//! thread does not wait for traffic to find out: while storage is unhealthy it calls
//! [`Queue::recover`] every [`PROBE_INTERVAL`], which reopens a broken database and proves a
//! write can be made durable.

use crate::queue::{Health, NewMessage, Queue, QueueId};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the commit thread tries to bring unhealthy storage back.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A commit failed; cloneable so one failure can answer a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue commit failed: {0}")]
pub struct CommitError(pub String);

/// Why a message was not accepted for commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The commit queue is full (backpressure).
    #[error("commit queue full")]
    Full,
    /// Storage failed recently or the committer stopped.
    #[error("storage unavailable")]
    Unavailable,
}

/// Called once with the outcome of a submitted message.
pub type Responder = Box<dyn FnOnce(Result<QueueId, CommitError>) + Send>;

/// Told after every commit: messages in the batch, time spent committing, and whether it
/// succeeded (for metrics; must be cheap — it runs on the commit thread).
pub type CommitObserver = std::sync::Arc<dyn Fn(usize, Duration, bool) + Send + Sync>;

/// Tuning for the committer (from the config file's `[queue]` section).
#[derive(Clone)]
pub struct CommitterConfig {
    /// Most messages in one commit.
    pub batch_max: usize,
    /// How long to wait for more messages after the first before committing
    /// (latency traded for fewer fsyncs under load; 0 commits whatever is already waiting).
    pub batch_wait: Duration,
    /// Pending messages allowed before submit reports `Full`.
    pub capacity: usize,
    /// Told about every commit (metrics), if set.
    pub observer: Option<CommitObserver>,
}

impl std::fmt::Debug for CommitterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitterConfig")
            .field("batch_max", &self.batch_max)
            .field("batch_wait", &self.batch_wait)
            .field("capacity", &self.capacity)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Counters for logs and benches.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commits performed.
    pub commits: AtomicU64,
    /// Messages committed.
    pub messages: AtomicU64,
    /// Failed commits.
    pub failures: AtomicU64,
}

/// Handle to the commit thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct Committer {
    tx: Sender<(NewMessage, Responder)>,
    /// Read for its health flag only (no I/O); the commit thread owns the writes.
    queue: Arc<Queue>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl Committer {
    /// Start the commit thread over `queue`. It stops when every handle is dropped.
    pub fn start(queue: Arc<Queue>, config: CommitterConfig) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(config.capacity.max(1));
        let stats = Arc::new(CommitStats::default());
        let (q, s) = (queue.clone(), stats.clone());
        std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || run(&q, &rx, &config, &s))?;
        Ok(Self { tx, queue, stats })
    }

    /// Hand a message to the committer; `respond` is called once it is durable (or failed).
    pub fn submit(&self, msg: NewMessage, respond: Responder) -> Result<(), SubmitError> {
        if !self.is_healthy() {
            return Err(SubmitError::Unavailable);
        }
        self.tx.try_send((msg, respond)).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Unavailable,
        })
    }

    /// Why storage is unhealthy, or `None` when the last write succeeded (no I/O): the
    /// readiness check's view of [`Committer::health`].
    pub fn last_failure(&self) -> Option<String> {
        match self.health() {
            Health::Healthy => None,
            Health::Unhealthy(reason) => Some(reason),
        }
    }

    /// Whether storage works, as last seen (no I/O).
    pub fn is_healthy(&self) -> bool {
        self.queue.is_healthy()
    }

    /// Storage health with the reason when unhealthy (no I/O); see [`Queue::health`].
    pub fn health(&self) -> Health {
        self.queue.health()
    }

    /// Messages waiting for the next commit.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    /// Commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn run(
    queue: &Queue,
    rx: &Receiver<(NewMessage, Responder)>,
    config: &CommitterConfig,
    stats: &CommitStats,
) {
    loop {
        let first = match rx.recv_timeout(PROBE_INTERVAL) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                if !queue.is_healthy() {
                    match queue.recover() {
                        Ok(()) => tracing::info!("queue storage works again; accepting messages"),
                        Err(e) => tracing::debug!(error = %e, "queue storage still failing"),
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + config.batch_wait;
        while batch.len() < config.batch_max {
            let next = if config.batch_wait.is_zero() {
                rx.try_recv().ok()
            } else {
                rx.recv_deadline(deadline).ok()
            };
            match next {
                Some(item) => batch.push(item),
                None => break,
            }
        }
        let (messages, responders): (Vec<NewMessage>, Vec<Responder>) = batch.into_iter().unzip();
        let started = Instant::now();
        let result = queue.enqueue_batch(&messages);
        if let Some(observe) = &config.observer {
            observe(messages.len(), started.elapsed(), result.is_ok());
        }
        match result {
            Ok(ids) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .messages
                    .fetch_add(u64::try_from(ids.len()).unwrap_or(0), Ordering::Relaxed);
                for (respond, id) in responders.into_iter().zip(ids) {
                    respond(Ok(id));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = messages.len(), "queue commit failed; answering 451 until storage works again");
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let err = CommitError(e.to_string());
                for respond in responders {
                    respond(Err(err.clone()));
                }
            }
        }
    }
}
