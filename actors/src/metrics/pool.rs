//! Pool meters: what an operator needs to see which actor pool is the bottleneck.
//!
//! Every actor and every member of a pool (connection workers, policy, resolver, queue actor,
//! committer, router, destinations in aggregate) gets a [`Meter`] labelled `pool` and `member`:
//! - `amtp_pool_mailbox_depth` — messages sent to it and not yet taken up (the sender counts
//!   [`Meter::queued`], the handler [`Meter::handled`]); a depth that keeps growing is a pool
//!   that cannot keep up;
//! - `amtp_pool_messages_handled_total` — messages it took up;
//! - `amtp_pool_busy_seconds_total` — time spent in its handlers and in polling the tasks it
//!   runs ([`Meter::timed`]); `rate()` of it is the member's utilisation, where 1.0 is a thread
//!   that never waits.
//!
//! A meter made while recording is off is inert: every method returns at once.

use prometheus::{Counter, IntCounter, IntGauge};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

struct Inner {
    depth: IntGauge,
    handled: IntCounter,
    busy: Counter,
}

/// One pool member's meter (cheap to clone; inert while metrics are off).
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<Inner>>);

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("enabled", &self.0.is_some())
            .finish()
    }
}

impl Meter {
    /// The meter of `member` in `pool` (inert while metrics are off).
    pub fn new(pool: &str, member: usize) -> Self {
        let Some(m) = super::get() else {
            return Self(None);
        };
        let member = member.to_string();
        let labels = [pool, member.as_str()];
        Self(Some(Arc::new(Inner {
            depth: m.pool_depth.with_label_values(&labels),
            handled: m.pool_handled.with_label_values(&labels),
            busy: m.pool_busy.with_label_values(&labels),
        })))
    }

    /// Record that `pool` has `members` members.
    pub fn pool_size(pool: &str, members: usize) {
        if let Some(m) = super::get() {
            m.pool_size
                .with_label_values(&[pool])
                .set(i64::try_from(members).unwrap_or(i64::MAX));
        }
    }

    /// A message was sent to this member's mailbox.
    #[inline]
    pub fn queued(&self) {
        if let Some(i) = &self.0 {
            i.depth.inc();
        }
    }

    /// A message counted by [`Meter::queued`] did not arrive (the send failed).
    #[inline]
    pub fn not_queued(&self) {
        if let Some(i) = &self.0 {
            i.depth.dec();
        }
    }

    /// The member took a queued message up: depth −1, handled +1. Returns a guard that adds
    /// the time until it is dropped to the busy counter.
    #[inline]
    #[must_use = "the guard measures the handler's time until it is dropped"]
    pub fn handled(&self) -> Busy {
        if let Some(i) = &self.0 {
            i.depth.dec();
            i.handled.inc();
        }
        self.busy()
    }

    /// A guard that adds the time until it is dropped to the busy counter.
    #[inline]
    #[must_use = "the guard measures time until it is dropped"]
    pub fn busy(&self) -> Busy {
        Busy {
            start: self.0.as_ref().map(|_| Instant::now()),
            meter: self.0.clone(),
        }
    }

    /// Count a message handled without a mailbox (e.g. a commit batch's messages).
    pub fn add_handled(&self, n: u64) {
        if let Some(i) = &self.0 {
            i.handled.inc_by(n);
        }
    }

    /// Set the depth directly (for channels whose length is known, like the committer's).
    pub fn set_depth(&self, depth: usize) {
        if let Some(i) = &self.0 {
            i.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    /// Add seconds of busy time measured elsewhere (e.g. on the commit thread).
    pub fn add_busy(&self, seconds: f64) {
        if let Some(i) = &self.0 {
            i.busy.inc_by(seconds);
        }
    }

    /// Run `f`, adding the time spent inside each of its polls to the busy counter. On a
    /// single-threaded arbiter, the sum over its tasks is the thread's busy time.
    pub async fn timed<F: Future>(&self, f: F) -> F::Output {
        let Some(inner) = self.0.clone() else {
            return f.await;
        };
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(move |cx| {
            let start = Instant::now();
            let r = f.as_mut().poll(cx);
            inner.busy.inc_by(start.elapsed().as_secs_f64());
            r
        })
        .await
    }
}

/// Adds the time from its creation to its drop to a meter's busy counter.
pub struct Busy {
    meter: Option<Arc<Inner>>,
    start: Option<Instant>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let (Some(m), Some(s)) = (&self.meter, self.start) {
            m.busy.inc_by(s.elapsed().as_secs_f64());
        }
    }
}

/// A recipient whose mailbox depth is metered: the sender counts a message as queued before
/// `try_send`, and the handler calls [`Meter::handled`] when it takes it up.
pub struct Metered<M>
where
    M: actix::Message + Send,
    M::Result: Send,
{
    /// Where the messages go.
    pub to: actix::Recipient<M>,
    /// The receiving member's meter.
    pub meter: Meter,
}

impl<M> Clone for Metered<M>
where
    M: actix::Message + Send,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Self {
            to: self.to.clone(),
            meter: self.meter.clone(),
        }
    }
}

impl<M> Metered<M>
where
    M: actix::Message + Send,
    M::Result: Send,
{
    /// `send`, counting the message in the receiver's depth. actix queues the message when
    /// `send` is called (a full mailbox parks the sender, it does not drop the message), so
    /// it is counted out by the handler even if the caller stops waiting for the answer.
    pub async fn send(&self, msg: M) -> Result<M::Result, actix::MailboxError> {
        self.meter.queued();
        let answer = self.to.send(msg).await;
        if matches!(answer, Err(actix::MailboxError::Closed)) {
            self.meter.not_queued();
        }
        answer
    }

    /// `try_send`, counting the message in the receiver's depth when it was queued.
    pub fn try_send(&self, msg: M) -> Result<(), actix::dev::SendError<M>> {
        self.meter.queued();
        let sent = self.to.try_send(msg);
        if sent.is_err() {
            self.meter.not_queued();
        }
        sent
    }
}
