//! A destination's message rate (`[delivery] max_messages_per_destination`): which of the
//! jobs handed to a destination may go to its connections now, and which wait.
//!
//! Why here: a job that is over the rate must not be sent, deferred, counted as an attempt or
//! bounced — it waits, still leased and in the router's in-flight set (so the router never
//! dispatches it twice), and goes when tokens return. The destination is the one place that
//! sees every job for its next hop, so it holds them: a job enters [`Throttle::waiting`] and
//! moves to the connections' queue only with a token.
//!
//! But only a few: at most [`hold_at_most`] jobs (about the next five seconds of the rate)
//! wait here. A job beyond that is *postponed*: handed back to the router untried (no attempt
//! counted, no DSN, no log line of its own), which releases its lease and makes it due again
//! when the bucket is expected to have a token for it (now + its place in line / the rate).
//! Held jobs count towards `[delivery] max_in_flight` and keep their bodies in memory; without
//! the cap, a backlog to one throttled hop filled the in-flight set and the router leased
//! nothing for any other hop. The queue keeps postponed mail on disk instead.
//!
//! Tokens come from a local token bucket ([`Bucket`]: `burst` at most, refilled at the rate),
//! or with `[cluster]` from the fleet's bucket in Redis ([`crate::cluster::destination_rate`]),
//! claimed in batches for jobs already waiting. When Redis is away the local bucket decides
//! at once (the fleet-wide rate becomes per node); it is debited for fleet tokens too, so it is
//! warm when that happens. An empty bucket says when the next batch is due, and the destination
//! looks again then (one timer, no polling). Each throttling episode is logged once when it
//! starts and once when the held mail has gone; the metrics count held messages by scope.

use super::{Destination, Job};
use crate::cluster::destination_rate::burst;
use crate::messages::Postponed;
use crate::metrics;
use crate::units::Rate;
use actix::prelude::*;
use amtp_storage::QueueId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Jobs waiting for a destination's message rate in this process (`queue stats`).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many jobs wait for their destination's message rate now, in this process.
pub fn held_now() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Most jobs a throttled destination holds, however slow its rate (each keeps its body in
/// memory and a place in `[delivery] max_in_flight`).
const HOLD_CEILING: usize = 500;

/// How many jobs may wait for `rate`'s tokens at one destination: enough for the next five
/// seconds of the rate and two bursts (so a burst never finds the line empty), at least one,
/// at most [`HOLD_CEILING`]. The rest are postponed (see the module docs).
pub fn hold_at_most(rate: Rate) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let five_seconds = (rate.per_ms() * 5000.0).ceil() as usize;
    (2 * burst(rate)).max(five_seconds).clamp(1, HOLD_CEILING)
}

/// A token bucket: at most `capacity` tokens, refilled at the rate.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket for `rate`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let capacity = burst(rate) as f64;
        Self {
            capacity,
            per_ms: rate.per_ms(),
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.at).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + ms * self.per_ms).min(self.capacity);
        self.at = now.max(self.at);
    }

    /// Take up to `want` whole tokens; how many were taken.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor().max(0.0) as usize;
        let n = whole.min(want);
        #[allow(clippy::cast_precision_loss)]
        {
            self.tokens -= n as f64;
        }
        n
    }

    /// Spend `n` tokens taken elsewhere (the fleet's), down to empty.
    pub fn debit(&mut self, n: usize, now: Instant) {
        self.refill(now);
        #[allow(clippy::cast_precision_loss)]
        {
            self.tokens = (self.tokens - n as f64).max(0.0);
        }
    }

    /// How long until `want` tokens (at most the capacity) are there.
    pub fn wait_for(&mut self, want: usize, now: Instant) -> Duration {
        self.refill(now);
        #[allow(clippy::cast_precision_loss)]
        let need = (want as f64).min(self.capacity) - self.tokens;
        if need <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(need / self.per_ms / 1000.0)
    }
}

/// Whose budget held mail back (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The fleet's, in Redis.
    Fleet,
    /// This node's (no `[cluster]`, or Redis away).
    Node,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fleet => "fleet",
            Self::Node => "node",
        }
    }
}

/// Jobs waiting for the destination's message rate, and its tokens.
#[derive(Debug)]
pub struct Throttle {
    rate: Rate,
    local: Bucket,
    waiting: VecDeque<Job>,
    /// Of `waiting` (the oldest first), how many are already counted as held.
    counted: usize,
    /// A fleet claim is in flight: its answer calls [`Destination::release`].
    claiming: bool,
    /// A timer will call [`Destination::release`].
    timer: bool,
    /// Since when mail has been held back (the current episode), and how many messages.
    episode: Option<(Instant, usize)>,
    /// Most jobs in `waiting`; see [`hold_at_most`].
    cap: usize,
    /// Tokens are promised to postponed jobs up to this time (ms since the epoch): the next
    /// one is due after it, so postponed mail comes back spread at the rate, in order.
    promised: u64,
    /// Jobs postponed in the current episode (for its closing log line).
    postponed: usize,
}

impl Throttle {
    /// No job waiting; a full local bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            local: Bucket::new(rate, Instant::now()),
            waiting: VecDeque::new(),
            counted: 0,
            claiming: false,
            timer: false,
            episode: None,
            cap: hold_at_most(rate),
            promised: 0,
            postponed: 0,
        }
    }

    /// When a job that finds `waiting` full, at `now` (ms since the epoch), is expected to
    /// have a token: after every waiting job and every one postponed before it.
    fn postpone_until(&mut self, now: u64) -> u64 {
        let gap = 1.0 / self.rate.per_ms();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let (ahead, gap) = (
            (self.waiting.len() as f64 * gap).ceil() as u64,
            gap.ceil() as u64,
        );
        let until = self
            .promised
            .max(now.saturating_add(ahead))
            .saturating_add(gap);
        self.promised = until;
        self.postponed += 1;
        until
    }

    /// Jobs waiting for tokens.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The oldest `n` waiting jobs, which now have tokens.
    fn pop(&mut self, n: usize) -> Vec<Job> {
        let n = n.min(self.waiting.len());
        self.counted = self.counted.saturating_sub(n);
        metrics::delivery_rate_waiting(-i64::try_from(n).unwrap_or(0));
        HELD.fetch_sub(n, Ordering::Relaxed);
        self.waiting.drain(..n).collect()
    }

    /// Jobs are still waiting after a release: count the newly held ones, and log when an
    /// episode starts.
    fn held(&mut self, scope: Scope, destination: &str) {
        let new = self.waiting.len().saturating_sub(self.counted);
        self.counted = self.waiting.len();
        metrics::delivery_rate_limited(scope.as_str(), new);
        match &mut self.episode {
            Some((_, n)) => *n += new,
            None => {
                self.episode = Some((Instant::now(), new));
                tracing::info!(destination, rate = %self.rate, scope = scope.as_str(), waiting = self.waiting.len(), "destination message rate reached: mail waits in the queue for the budget (no attempt is counted)");
            }
        }
    }

    /// Nothing waits any more: log the end of an episode.
    fn drained(&mut self, destination: &str) {
        if let Some((since, held)) = self.episode.take() {
            let waited_s = since.elapsed().as_secs_f64();
            let postponed = std::mem::take(&mut self.postponed);
            tracing::info!(
                destination,
                rate = %self.rate,
                held,
                postponed,
                waited_s,
                "destination message rate: the held mail has gone to the connections"
            );
        }
    }
}

/// What became of a job handed to a destination.
pub(super) enum Held {
    /// No message rate: to the connections now.
    Ready(Job),
    /// Waiting here for a token (or already gone to the connections with one).
    Waiting,
    /// Too many wait already: back to the queue untried, due again at this time (ms since
    /// the epoch).
    Postponed(QueueId, u64),
}

impl Destination {
    /// With a message rate: hold `job` until it has a token, or postpone it when
    /// [`hold_at_most`] jobs wait already.
    pub(super) fn hold(&mut self, job: Job, ctx: &mut Context<Self>) -> Held {
        let Some(t) = self.throttle.as_mut() else {
            return Held::Ready(job);
        };
        if t.waiting.len() >= t.cap {
            return Held::Postponed(job.id, t.postpone_until(amtp_storage::now_ms()));
        }
        t.waiting.push_back(job);
        metrics::delivery_rate_waiting(1);
        HELD.fetch_add(1, Ordering::Relaxed);
        self.release(ctx);
        Held::Waiting
    }

    /// Hand `postponed` jobs back to the router, which releases their leases and writes
    /// their next attempts. Waits for room in its mailbox rather than dropping any (a
    /// dropped one would stay in flight until the relay restarts).
    pub(super) fn postpone(&mut self, postponed: Vec<(QueueId, u64)>) {
        if postponed.is_empty() {
            return;
        }
        metrics::delivery_rate_postponed(postponed.len());
        let Some(router) = self.postpone_to.clone() else {
            return;
        };
        actix::spawn(async move {
            let _ = router.send(Postponed(postponed)).await;
        });
    }

    /// Give waiting jobs the tokens there are (the fleet's with `[cluster]` and Redis up,
    /// else this node's); when some must still wait, look again when tokens are due.
    fn release(&mut self, ctx: &mut Context<Self>) {
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        if t.waiting.is_empty() {
            t.drained(&self.name);
            return;
        }
        if t.claiming {
            return;
        }
        let Some(cluster) = crate::cluster::get().cloned() else {
            self.release_local(ctx);
            return;
        };
        t.claiming = true;
        let want = t.waiting.len().min(burst(t.rate));
        let (rate, name) = (t.rate, self.name.clone());
        let claim = async move { cluster.destination_tokens(&name, rate, want).await };
        ctx.spawn(claim.into_actor(self).map(move |answer, act, ctx| {
            let Some(t) = act.throttle.as_mut() else {
                return;
            };
            t.claiming = false;
            let Some((granted, wait)) = answer else {
                // Redis away, late or failing: this node's bucket, at once.
                act.release_local(ctx);
                return;
            };
            t.local.debit(granted, Instant::now());
            let jobs = t.pop(granted);
            if granted < want && !t.waiting.is_empty() {
                t.held(Scope::Fleet, &act.name);
                act.send(jobs, ctx);
                act.look_again(wait, ctx);
            } else {
                // All granted: release what arrived meanwhile, or end the episode.
                act.send(jobs, ctx);
                act.release(ctx);
            }
        }));
    }

    fn release_local(&mut self, ctx: &mut Context<Self>) {
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        let now = Instant::now();
        let granted = t.local.take(t.waiting.len(), now);
        let jobs = t.pop(granted);
        if t.waiting.is_empty() {
            t.drained(&self.name);
            self.send(jobs, ctx);
            return;
        }
        t.held(Scope::Node, &self.name);
        let wait = t.local.wait_for(t.waiting.len(), now);
        self.send(jobs, ctx);
        self.look_again(wait, ctx);
    }

    /// Call [`release`](Self::release) after `wait` (at least 5 ms, so an answer of "now"
    /// cannot spin), unless a timer is already set.
    fn look_again(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        let Some(t) = self.throttle.as_mut() else {
            return;
        };
        if t.timer {
            return;
        }
        t.timer = true;
        ctx.run_later(wait.max(Duration::from_millis(5)), |act, ctx| {
            if let Some(t) = act.throttle.as_mut() {
                t.timer = false;
            }
            act.release(ctx);
        });
    }

    /// Hand `jobs` (with tokens) to the connections.
    fn send(&mut self, jobs: Vec<Job>, ctx: &mut Context<Self>) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut q = self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for job in jobs {
                q.push_back(job);
                self.arrived.notify_one();
            }
        }
        self.maybe_connect(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_rate;

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate_and_says_when_the_next_tokens_are_due() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 600/min: 10 a second, bursts of 6.
        let mut b = Bucket::new(parse_rate("600/min").unwrap(), t0);
        assert_eq!(b.take(100, t0), 6, "a full bucket: one burst");
        assert_eq!(b.take(100, t0), 0);
        assert_eq!(b.wait_for(1, t0), Duration::from_millis(100));
        assert_eq!(b.wait_for(100, t0), Duration::from_millis(600), "a batch");
        assert_eq!(b.take(100, ms(250)), 2, "10 a second");
        assert_eq!(b.take(1, ms(299)), 0, "half a token is not a token");
        assert_eq!(b.take(100, ms(10_000)), 6, "never more than a burst");
        // Over any interval: at most a burst plus the rate.
        let mut b = Bucket::new(parse_rate("10/s").unwrap(), t0);
        let sent: usize = (0..=3000).map(|i| b.take(5, ms(i))).sum();
        assert_eq!(sent, 1 + 30, "one burst (1) + 3 s × 10/s");
        // Tokens taken from the fleet are spent here too, down to empty.
        let mut b = Bucket::new(parse_rate("600/min").unwrap(), t0);
        b.debit(4, t0);
        assert_eq!(b.take(100, t0), 2);
        b.debit(10, t0);
        assert_eq!(b.take(100, t0), 0);
        assert_eq!(
            b.take(100, ms(100)),
            1,
            "refills from empty, not from below"
        );
    }

    #[test]
    fn held_messages_are_counted_once_and_an_episode_is_logged_once() {
        let rate = parse_rate("10/s").unwrap();
        let mut t = Throttle::new(rate);
        for _ in 0..3 {
            t.waiting.push_back(super::super::tests::job(1));
        }
        t.held(Scope::Node, "d");
        assert_eq!(t.counted, 3);
        assert_eq!(t.episode.map(|e| e.1), Some(3));
        assert_eq!(t.pop(1).len(), 1);
        assert_eq!(t.counted, 2, "the oldest went: two counted ones wait");
        t.waiting.push_back(super::super::tests::job(2));
        t.held(Scope::Node, "d");
        assert_eq!(t.episode.map(|e| e.1), Some(4), "only the new one counted");
        assert_eq!(t.pop(10).len(), 3);
        t.drained("d");
        assert!(t.episode.is_none());
    }

    #[test]
    fn a_destination_holds_a_few_seconds_of_its_rate_and_postpones_the_rest_in_order() {
        let at_most = |r: &str| hold_at_most(parse_rate(r).unwrap());
        assert_eq!(at_most("1/s"), 5, "five seconds' worth");
        assert_eq!(at_most("1/h"), 2, "two bursts");
        assert_eq!(at_most("1000/s"), 500, "never more than the ceiling");
        assert_eq!(at_most("60/s"), 300);
        let mut t = Throttle::new(parse_rate("2/s").unwrap());
        for id in 0..3 {
            t.waiting.push_back(super::super::tests::job(id));
        }
        // After the three waiting (1.5 s at 2/s), half a second each, in order.
        assert_eq!(t.postpone_until(10_000), 12_000);
        assert_eq!(t.postpone_until(10_000), 12_500);
        assert_eq!(t.postpone_until(11_000), 13_000);
        // Once the promised time has passed, from the line that waits now.
        assert_eq!(t.postpone_until(20_000), 22_000);
        assert_eq!(t.postponed, 4);
    }
}
