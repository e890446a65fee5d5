//! Compaction: moving the last live bodies out of sparse spool segments.
//!
//! Why it exists: a segment is deleted with its last message, so one long-deferred message
//! (a dead next hop, days of retries) would keep its whole segment (up to
//! [`crate::spool::SEGMENT_BYTES`], 8 MiB) on disk long after everything else in it was
//! delivered. A relay whose traffic mixes a few dead destinations into a healthy stream would
//! pin one segment per few deferred messages. Compaction copies the live bodies of such
//! segments to the open segment and points their records there; the old segment then leaves
//! with its last message, as always.
//!
//! # What is a victim
//! A closed segment (never the open one) whose live bytes are below
//! [`CompactionPolicy::max_live_percent`] of its file, and that nothing was appended to for
//! [`CompactionPolicy::min_age`] (fresh segments whose mail is still being delivered empty
//! by themselves). A pass copies about [`CompactionPolicy::max_bytes_per_pass`], in chunks of
//! at most [`CHUNK_BYTES`] (one append, one sled batch, one fsync each), so that a commit
//! waits behind at most one chunk's append. Finding the victims' messages scans the in-memory
//! index once per pass under its lock: commits (their index insert before the `250`), leases
//! and completions wait for that scan (68 ms for a whole pass over 1,000,000 messages on the
//! reference machine; it runs only when a victim exists, at most once a minute). A body larger
//! than a chunk is a chunk of its own.
//!
//! Spool errors in a pass (a full disk) mark storage unhealthy like a failed commit, and a
//! segment's name is made durable (directory fsync) before any record points into it, by
//! whichever writer appended to it first (see `Spool::sync_dir_of`).
//!
//! # The move (per victim, holding the store's read lock throughout, so that a database
//! reopen and its recount of the segments never fall inside it)
//! a. Under the index lock: the victim's messages that are not leased are marked *moving*;
//!    [`Queue::lease`] refuses them (and they are not due) until the move ends. Leased ones
//!    stay where they are: the segment waits for their completion or a later pass.
//! b. Their bodies are read from the victim and appended as one batch to the open segment
//!    with one `fdatasync` (and the directory fsync when that created a segment).
//! c. Under the locks of their records (the locks every completion, reschedule, postponement
//!    and admin change takes): each record that still exists and still points into the victim
//!    at the same place is rewritten with the new location, every other field as it is; one
//!    sled batch, then flush and fsync. The index follows. Only then is each moved message
//!    released from the victim (which is deleted by the usual rule when none is left); a
//!    message completed or removed meanwhile gets its new slot released instead.
//!
//! # Crashes
//! - Before (c)'s batch is durable: the records still point into the victim, which was not
//!   touched; the copies appended in (b) are bytes no record refers to, not counted at open
//!   (counts come from the records), so they are reclaimed with their segment.
//! - After (c)'s fsync, before the victim's deletion: no record refers to the victim, so
//!   [`Queue::open`] deletes it (the rule for segments without records).
//! - sled applies a batch atomically: a record points at the old copy or the new one, and
//!   both are on disk until (c) is durable.
//!
//! # Readers
//! Delivery and DSN generation read bodies of leased messages, which are never moved. Reads of
//! unleased messages (`queue show`, admin bounces) may look up the old location just before
//! a move deletes it: [`Queue::body_prefix`] then reads again at the new location.
//!
//! # Failures
//! A failed step leaves every moved message counted in both segments (never released below
//! what the records say): space comes back later, never a body too early. A database
//! failure marks the store for the reopen that recounts everything from the records.

use super::{Queue, message_key, stored};
use crate::error::StorageError;
use crate::record::BodyAt;
use crate::spool::Victim;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most bytes copied per chunk (one append and one sled batch).
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Most messages per chunk.
pub const CHUNK_MESSAGES: usize = 1024;

/// What compaction moves, and how much per pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A closed segment is compacted when its live bytes are below this percentage of its
    /// file's length.
    pub max_live_percent: u64,
    /// ...and nothing was appended to it for this long.
    pub min_age: Duration,
    /// About this many bytes are copied per pass (at least one segment's when any qualifies).
    pub max_bytes_per_pass: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            max_live_percent: 25,
            min_age: Duration::from_secs(60),
            max_bytes_per_pass: 64 << 20,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    /// Sparse segments found and worked on.
    pub segments: usize,
    /// Of these, segments deleted (no message left in them).
    pub segments_deleted: usize,
    /// Messages whose bodies were moved.
    pub messages: usize,
    /// Body bytes copied.
    pub bytes_copied: u64,
    /// File bytes of the deleted segments.
    pub bytes_freed: u64,
    /// Messages left in place because a delivery held them.
    pub leased_skipped: usize,
    /// How long the pass took.
    pub duration: Duration,
}

/// Points of a move, for tests (see [`Queue::set_compaction_hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    /// Step a: a chunk's messages are marked moving; nothing read or written yet.
    Marked,
    /// Step b: the chunk's bodies are appended and durable; no record changed yet.
    Appended,
    /// Step c: the chunk's records point at the new copies, durably; the victim not yet
    /// released.
    Synced,
}

/// Called at each [`MoveStep`] (tests only: crash and race points).
pub type MoveHook = Arc<dyn Fn(MoveStep) + Send + Sync>;

/// Compaction's own state in a [`Queue`].
#[derive(Default)]
pub(super) struct Compactor {
    /// Held by a pass: passes never overlap.
    running: Mutex<()>,
    hook: Mutex<Option<MoveHook>>,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unmarks the messages of a move however it ends.
struct Moving<'a> {
    queue: &'a Queue,
    ids: Vec<u64>,
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        let mut index = self.queue.index();
        for &id in &self.ids {
            index.stop_moving(id);
        }
    }
}

impl Queue {
    /// One compaction pass with the default [`CompactionPolicy`] (see
    /// [`compaction`](crate::queue::compaction)). Does nothing while storage is unhealthy.
    pub fn compact(&self) -> Result<CompactionReport, StorageError> {
        self.compact_with(&CompactionPolicy::default())
    }

    /// One compaction pass with `policy`.
    pub fn compact_with(
        &self,
        policy: &CompactionPolicy,
    ) -> Result<CompactionReport, StorageError> {
        let started = Instant::now();
        let _running = lock(&self.compactor.running);
        let mut report = CompactionReport::default();
        if !self.is_healthy() {
            return Ok(report);
        }
        let victims = self.spool.victims(
            policy.max_live_percent,
            policy.min_age,
            policy.max_bytes_per_pass,
        );
        if victims.is_empty() {
            return Ok(report);
        }
        // One scan of the index for every victim of the pass (the candidates are checked
        // again when marked).
        let mut candidates: HashMap<u64, Vec<(u64, BodyAt)>> =
            victims.iter().map(|v| (v.segment, Vec::new())).collect();
        for (id, slot) in self.index().iter() {
            if let BodyAt::Segment { segment, .. } = slot.body
                && let Some(list) = candidates.get_mut(&segment)
            {
                list.push((id, slot.body));
            }
        }
        let mut result = Ok(());
        for victim in victims {
            let mut ids = candidates.remove(&victim.segment).unwrap_or_default();
            report.segments += 1;
            result = self.compact_segment(victim, &mut ids, &mut report);
            if result.is_err() {
                break;
            }
        }
        report.duration = started.elapsed();
        if report.messages > 0 {
            tracing::info!(
                segments = report.segments,
                segments_deleted = report.segments_deleted,
                messages = report.messages,
                bytes_copied = report.bytes_copied,
                bytes_freed = report.bytes_freed,
                leased_skipped = report.leased_skipped,
                ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
                "spool compacted"
            );
        }
        result.map(|()| report)
    }

    /// Install (or remove) a function called at each step of a move. For tests: crash
    /// points and races; production code never sets one.
    #[doc(hidden)]
    pub fn set_compaction_hook(&self, hook: Option<MoveHook>) {
        *lock(&self.compactor.hook) = hook;
    }

    fn compaction_step(&self, step: MoveStep) {
        let hook = lock(&self.compactor.hook).clone();
        if let Some(hook) = hook {
            hook(step);
        }
    }

    /// Move `victim`'s unleased messages (`candidates`, found by the pass's index scan).
    fn compact_segment(
        &self,
        victim: Victim,
        candidates: &mut [(u64, BodyAt)],
        report: &mut CompactionReport,
    ) -> Result<(), StorageError> {
        let store = self.store()?;
        let moved_before = report.messages;
        // Read in file order.
        candidates.sort_unstable_by_key(|&(_, at)| match at {
            BodyAt::Segment { offset, .. } => offset,
            BodyAt::File => 0,
        });
        let mut chunk: Vec<(u64, BodyAt)> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut rest = candidates.iter().copied().peekable();
        while rest.peek().is_some() || !chunk.is_empty() {
            if let Some(&(id, at)) = rest.peek()
                && (chunk.is_empty()
                    || (chunk.len() < CHUNK_MESSAGES && chunk_bytes + body_len(at) <= CHUNK_BYTES))
            {
                chunk.push((id, at));
                chunk_bytes += body_len(at);
                rest.next();
                continue;
            }
            self.move_chunk(&store, std::mem::take(&mut chunk), report)?;
            chunk_bytes = 0;
        }
        drop(store);
        // Deleted by this pass's releases (not by completions that emptied it first).
        if report.messages > moved_before && !self.spool.has_segment(victim.segment) {
            report.segments_deleted += 1;
            report.bytes_freed += victim.len;
        }
        Ok(())
    }

    /// Steps a to c for one chunk of one victim's messages.
    fn move_chunk(
        &self,
        store: &super::Store,
        chunk: Vec<(u64, BodyAt)>,
        report: &mut CompactionReport,
    ) -> Result<(), StorageError> {
        // a. Mark the ones that are still there, unleased, and not moving already.
        let mut moving = Moving {
            queue: self,
            ids: Vec::with_capacity(chunk.len()),
        };
        let mut marked: Vec<(u64, BodyAt)> = Vec::with_capacity(chunk.len());
        {
            let mut index = self.index();
            for (id, at) in chunk {
                let Some(slot) = index.get(id) else { continue };
                if slot.body != at || index.is_moving(id) {
                    continue;
                }
                if slot.lease_until != 0 {
                    report.leased_skipped += 1;
                    continue;
                }
                index.start_moving(id);
                moving.ids.push(id);
                marked.push((id, at));
            }
        }
        self.compaction_step(MoveStep::Marked);
        // b. Read them (a message removed meanwhile may have taken its segment with it) and
        // append them to the open segment, durably.
        let mut bodies: Vec<(u64, BodyAt, Vec<u8>)> = Vec::with_capacity(marked.len());
        for (id, at) in marked {
            match self.spool.read(id, at) {
                Ok(body) => bodies.push((id, at, body)),
                Err(e) => {
                    if self.index().get(id).is_some_and(|s| s.body == at) {
                        tracing::warn!(id = %super::QueueId(id), error = %e, "compaction cannot read a body; left in place");
                    }
                }
            }
        }
        if bodies.is_empty() {
            return Ok(());
        }
        let number = store.db.generate_id().map_err(|e| self.failed(e.into()))?;
        let contents: Vec<&[u8]> = bodies.iter().map(|b| &b.2[..]).collect();
        let (new_at, dir_owed) = self
            .spool
            .append_batch(number, &contents)
            .map_err(|e| self.failed(e))?;
        if dir_owed && let Err(e) = self.spool.sync_dir_of(&new_at) {
            // No record refers to the copies: take them back.
            self.spool.abandon(&new_at);
            return Err(self.failed(e));
        }
        self.compaction_step(MoveStep::Appended);
        // c. Point the records that still point into the victim at their copies.
        let guards = self.lock_records(bodies.iter().map(|b| super::QueueId(b.0)));
        let mut batch = sled::Batch::default();
        let mut moved: Vec<(u64, BodyAt, BodyAt)> = Vec::with_capacity(bodies.len());
        let mut unused: Vec<(u64, BodyAt)> = Vec::new();
        for ((id, old, _), &new) in bodies.iter().zip(&new_at) {
            match self.get_in(store, super::QueueId(*id))? {
                Some((mut rec, at)) if at == *old => {
                    batch.insert(&message_key(*id)[..], stored(&mut rec, new));
                    moved.push((*id, *old, new));
                }
                _ => unused.push((*id, new)),
            }
        }
        if !moved.is_empty() {
            store
                .tree
                .apply_batch(batch)
                .map_err(|e| self.failed(e.into()))?;
            let mut index = self.index();
            for &(id, _, new) in &moved {
                index.update(id, |slot| slot.body = new);
            }
        }
        drop(guards);
        if !moved.is_empty() {
            self.sync(store)?;
        }
        self.compaction_step(MoveStep::Synced);
        drop(moving);
        // d. The victim loses the moved messages (and is deleted when none is left); copies
        // of messages that left meanwhile are released from the new segment.
        let released: Vec<(u64, BodyAt)> = moved
            .iter()
            .map(|&(id, old, _)| (id, old))
            .chain(unused)
            .collect();
        report.messages += moved.len();
        report.bytes_copied += moved.iter().map(|m| body_len(m.2)).sum::<u64>();
        self.spool.release(&released)
    }
}

fn body_len(at: BodyAt) -> u64 {
    match at {
        BodyAt::Segment { len, .. } => len,
        BodyAt::File => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{NewMessage, QueueId};
    use crate::record::{BodyType, Envelope, Origin, RecipientState, RecipientStatus};

    fn message(n: u8) -> NewMessage {
        NewMessage {
            id: None,
            envelope: Envelope {
                sender: "s@a.test".into(),
                mpc: None,
                origin: Origin::Smtp,
                listener: "mx".into(),
                client_ip: "127.0.0.1".into(),
                auth_user: None,
                message_id: None,
                body: BodyType::Unspecified,
                smtputf8: false,
            },
            recipients: vec!["r@b.test".into()],
            body: vec![n; 64 << 10].into(),
        }
    }

    /// A reader that looked up a body's location just before a move deleted that segment
    /// (`queue show` of an unleased message) reads the body at its new location.
    #[test]
    fn a_read_from_a_segment_deleted_by_a_move_is_retried_where_the_body_went() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let mut kept = None;
        for b in 0..9u8 {
            let batch: Vec<NewMessage> = (0..16).map(|i| message(b * 16 + i)).collect();
            for (i, id) in queue.enqueue_batch(&batch).unwrap().into_iter().enumerate() {
                if b == 0 && i == 1 {
                    kept = Some(id);
                } else if b < 8 {
                    let done = RecipientStatus {
                        address: "r@b.test".into(),
                        state: RecipientState::Delivered,
                        last_reply: None,
                        status: None,
                    };
                    queue.complete(id, &[done]).unwrap();
                }
            }
        }
        let kept: QueueId = kept.unwrap();
        let looked_up = queue.body_at(kept).unwrap();
        let report = queue
            .compact_with(&CompactionPolicy {
                min_age: Duration::ZERO,
                ..CompactionPolicy::default()
            })
            .unwrap();
        assert_eq!(report.segments_deleted, 1, "{report:?}");
        assert_ne!(queue.body_at(kept).unwrap(), looked_up, "moved");
        assert!(
            queue.spool.read(kept.0, looked_up).is_err(),
            "old segment gone"
        );
        assert_eq!(
            queue.read_body(kept, looked_up, usize::MAX).unwrap(),
            vec![1u8; 64 << 10]
        );
    }

    /// Per segment, the live messages and bytes the records (the index) point at.
    fn live_from_records(queue: &Queue) -> std::collections::BTreeMap<u64, (u64, u64)> {
        let mut live = std::collections::BTreeMap::new();
        for (_, slot) in queue.index().iter() {
            if let BodyAt::Segment { segment, len, .. } = slot.body {
                let e = live.entry(segment).or_insert((0, 0));
                e.0 += 1;
                e.1 += len;
            }
        }
        live
    }

    /// The spool's counts match the records exactly: a segment counted for a message that no
    /// longer points into it is deleted late (space), one not counted for a message that does
    /// is deleted early (a lost body).
    fn assert_counts_match_records(queue: &Queue, when: &str) {
        let records = live_from_records(queue);
        let spool: std::collections::BTreeMap<u64, (u64, u64)> = queue
            .spool
            .live_segments()
            .into_iter()
            .filter(|(_, l)| l.count > 0)
            .map(|(n, l)| (n, (l.count, l.bytes)))
            .collect();
        assert_eq!(spool, records, "{when}: spool counts vs records");
    }

    /// A victim keeps a leased message (not moved), loses one to a removal in the middle of
    /// the move (its copy is released, not the victim's slot twice), and moves the rest: every
    /// segment's live count and bytes still equal what the records point at, and the leased
    /// message's body is still readable where it is.
    #[test]
    fn live_counts_match_the_records_after_a_move_with_a_lease_and_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let done = || RecipientStatus {
            address: "r@b.test".into(),
            state: RecipientState::Delivered,
            last_reply: None,
            status: None,
        };
        let (mut leased, mut removed, mut moved) = (None, None, None);
        for b in 0..9u8 {
            let batch: Vec<NewMessage> = (0..16).map(|i| message(b * 16 + i)).collect();
            for (i, id) in queue.enqueue_batch(&batch).unwrap().into_iter().enumerate() {
                match (b, i) {
                    (0, 1) => leased = Some(id),
                    (0, 2) => removed = Some(id),
                    (0, 3) => moved = Some(id),
                    (b, _) if b < 8 => {
                        queue.complete(id, &[done()]).unwrap();
                    }
                    _ => {}
                }
            }
        }
        let (leased, removed, moved) = (leased.unwrap(), removed.unwrap(), moved.unwrap());
        assert_counts_match_records(&queue, "before");
        let now = crate::now_ms();
        assert!(queue.lease(leased, now, now + 600_000).unwrap().is_some());
        let victim_at = queue.body_at(leased).unwrap();
        let q = std::sync::Arc::new(queue);
        let hook_queue = std::sync::Arc::downgrade(&q);
        q.set_compaction_hook(Some(std::sync::Arc::new(move |step| {
            if step == MoveStep::Appended
                && let Some(q) = hook_queue.upgrade()
            {
                q.complete(removed, &[done()]).unwrap();
            }
        })));
        let report = q
            .compact_with(&CompactionPolicy {
                min_age: Duration::ZERO,
                ..CompactionPolicy::default()
            })
            .unwrap();
        q.set_compaction_hook(None);
        assert!(report.messages >= 1, "{report:?}");
        assert_eq!(
            q.body_at(leased).unwrap(),
            victim_at,
            "the leased message stays"
        );
        assert_ne!(q.body_at(moved).unwrap(), victim_at, "the other one moved");
        assert!(
            q.body_at(removed).is_err(),
            "removed in the middle of the move"
        );
        assert_counts_match_records(&q, "after the move");
        assert_eq!(
            q.read_body(leased, victim_at, usize::MAX).unwrap(),
            vec![1u8; 64 << 10]
        );
        assert_eq!(
            q.read_body(moved, q.body_at(moved).unwrap(), usize::MAX)
                .unwrap(),
            vec![3u8; 64 << 10]
        );
        // The lease ends with a delivery: the victim goes with its last message.
        q.complete(leased, &[done()]).unwrap();
        assert_counts_match_records(&q, "after the leased message left");
    }
}
