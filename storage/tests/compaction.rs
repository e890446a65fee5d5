//! Compaction of sparse spool segments, on real sled files and a real spool directory: a
//! segment pinned by a few deferred messages is reclaimed, leased messages stay where they
//! are, and completions racing a move neither lose nor resurrect a message.

use amtp_storage::queue::compaction::{MoveHook, MoveStep};
use amtp_storage::{
    CompactionPolicy, Finish, NewMessage, Queue, QueueId, RecipientState, RecipientStatus,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod common;

fn message(n: u64, len: usize) -> NewMessage {
    common::message(
        format!("s{n}@a.test"),
        vec![format!("r{n}@b.test"), format!("q{n}@c.test")],
        body(n, len),
    )
}

fn body(n: u64, len: usize) -> Vec<u8> {
    common::random_body(n, len)
}

fn delivered(queue: &Queue, id: QueueId) -> Finish {
    let rec = queue.get(id).unwrap().unwrap();
    Finish {
        id,
        outcomes: rec
            .recipients
            .iter()
            .map(|r| RecipientStatus {
                state: RecipientState::Delivered,
                last_reply: Some("250 ok".into()),
                status: Some("2.0.0".into()),
                ..r.clone()
            })
            .collect(),
        retry_at: None,
    }
}

/// Compact every closed segment with dead bytes, however young.
fn eager() -> CompactionPolicy {
    CompactionPolicy {
        max_live_percent: 25,
        min_age: Duration::ZERO,
        max_bytes_per_pass: 64 << 20,
    }
}

/// `batches` batches of 16 × 64 KiB: a segment closes after 8 batches (8 MiB). Returns the
/// ids with their seeds.
fn fill(queue: &Queue, batches: u64) -> Vec<(QueueId, u64)> {
    let mut out = Vec::new();
    for b in 0..batches {
        let msgs: Vec<NewMessage> = (0..16).map(|i| message(b * 16 + i, 64 << 10)).collect();
        let ids = queue.enqueue_batch(&msgs).unwrap();
        out.extend(ids.into_iter().zip((0..16).map(|i| b * 16 + i)));
    }
    out
}

fn spool_bytes(queue: &Queue) -> u64 {
    queue.spool_usage().unwrap().1
}

#[test]
fn a_segment_pinned_by_one_deferred_message_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    // 10 MiB: the first segment (8 MiB) closed, the second open.
    let all = fill(&queue, 10);
    let (pinned, seed) = all[5];
    // Every message but one of the first segment is delivered; the one left is deferred
    // (a dead next hop).
    let done: Vec<Finish> = all[..128]
        .iter()
        .filter(|(id, _)| *id != pinned)
        .map(|(id, _)| delivered(&queue, *id))
        .collect();
    queue.complete_batch(&done).unwrap();
    let now = amtp_storage::now_ms();
    queue.lease(pinned, now, now + 60_000).unwrap().unwrap();
    let deferred = queue.reschedule(pinned, now + 3_600_000).unwrap();
    let before = spool_bytes(&queue);
    assert!(before >= 10 << 20, "two segments on disk: {before}");

    // A fresh segment is left alone by the default policy (its mail may still be moving).
    assert_eq!(queue.compact().unwrap().messages, 0);

    let report = queue.compact_with(&eager()).unwrap();
    let after = spool_bytes(&queue);
    assert!(
        after <= before - (8 << 20) + (64 << 10),
        "the pinned segment's space is back: {before} -> {after}"
    );
    assert_eq!(report.messages, 1, "{report:?}");
    assert_eq!(report.segments_deleted, 1, "{report:?}");
    assert_eq!(report.bytes_copied, 64 << 10);
    assert_eq!(queue.spool_usage().unwrap().0, 1, "one segment left");
    // Nothing else changed: same record (schedule, attempts, recipients), same body.
    assert_eq!(queue.get(pinned).unwrap().unwrap(), deferred);
    assert_eq!(queue.body(pinned).unwrap(), body(seed, 64 << 10));
    assert_eq!(
        queue.compact_with(&eager()).unwrap().messages,
        0,
        "nothing left to do"
    );

    // After a restart the message is still there, byte for byte, and is delivered.
    drop(queue);
    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert!(report.missing_bodies.is_empty());
    assert_eq!(report.segments_removed, 0);
    assert_eq!(queue.get(pinned).unwrap().unwrap(), deferred);
    let later = now + 3_600_000;
    let rec = queue.lease(pinned, later, later + 60_000).unwrap().unwrap();
    assert_eq!(rec.attempts, 1);
    assert_eq!(queue.body(pinned).unwrap(), body(seed, 64 << 10));
    queue.complete_batch(&[delivered(&queue, pinned)]).unwrap();
    assert!(queue.get(pinned).unwrap().is_none());
    for &(id, seed) in &all[128..] {
        assert_eq!(queue.body(id).unwrap(), body(seed, 64 << 10));
    }
}

#[test]
fn leased_messages_stay_and_their_segment_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let all = fill(&queue, 9);
    let (leased, leased_seed) = all[3];
    let (idle, idle_seed) = all[100];
    let done: Vec<Finish> = all[..128]
        .iter()
        .filter(|(id, _)| *id != leased && *id != idle)
        .map(|(id, _)| delivered(&queue, *id))
        .collect();
    queue.complete_batch(&done).unwrap();
    let now = amtp_storage::now_ms();
    queue.lease(leased, now, now + 60_000).unwrap().unwrap();
    let before = queue.spool_usage().unwrap();

    let report = queue.compact_with(&eager()).unwrap();
    assert_eq!(report.messages, 1, "only the idle one moves: {report:?}");
    assert_eq!(report.leased_skipped, 1);
    assert_eq!(report.segments_deleted, 0, "the leased message keeps it");
    assert_eq!(queue.spool_usage().unwrap().0, before.0, "segment survives");
    // The delivery holding the lease reads its body where it was.
    assert_eq!(queue.body(leased).unwrap(), body(leased_seed, 64 << 10));
    assert_eq!(queue.body(idle).unwrap(), body(idle_seed, 64 << 10));
    assert!(
        queue.lease(leased, now, now + 1).unwrap().is_none(),
        "its lease is intact"
    );

    // Once it is rescheduled (lease released), a later pass moves it and the segment goes.
    queue.reschedule(leased, now + 1_000_000).unwrap();
    let report = queue.compact_with(&eager()).unwrap();
    assert_eq!(report.messages, 1, "{report:?}");
    assert_eq!(report.segments_deleted, 1);
    assert!(queue.spool_usage().unwrap().1 < before.1 - (7 << 20));
    assert_eq!(queue.body(leased).unwrap(), body(leased_seed, 64 << 10));
    drop(queue);
    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert!(report.missing_bodies.is_empty());
    assert_eq!(report.messages, 128 - 126 + 16);
    assert_eq!(queue.body(leased).unwrap(), body(leased_seed, 64 << 10));
}

/// A completion at each point of a move (via the test hook): the message is gone for good,
/// nothing points at a deleted segment, and nothing comes back after a restart.
#[test]
fn a_completion_at_each_step_of_a_move_is_neither_lost_nor_resurrected() {
    for step in [MoveStep::Marked, MoveStep::Appended, MoveStep::Synced] {
        let dir = tempfile::tempdir().unwrap();
        let (queue, _) = Queue::open(dir.path()).unwrap();
        let queue = Arc::new(queue);
        let all = fill(&queue, 9);
        let (gone, _) = all[7];
        let (kept, kept_seed) = all[9];
        let done: Vec<Finish> = all[..128]
            .iter()
            .filter(|(id, _)| *id != gone && *id != kept)
            .map(|(id, _)| delivered(&queue, *id))
            .collect();
        queue.complete_batch(&done).unwrap();
        let finish = delivered(&queue, gone);
        let q = queue.clone();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fired.clone();
        let hook: MoveHook = Arc::new(move |at| {
            if at == step && !f.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // From another thread, as a delivery's results arrive, and waited for, so
                // that it lands exactly here (the move holds no record lock at any step).
                let (q, finish) = (q.clone(), finish.clone());
                std::thread::spawn(move || q.complete_batch(&[finish]).unwrap())
                    .join()
                    .unwrap();
            }
        });
        queue.set_compaction_hook(Some(hook));
        let report = queue.compact_with(&eager()).unwrap();
        queue.set_compaction_hook(None);
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
        assert!(queue.get(gone).unwrap().is_none(), "{step:?}: completed");
        assert!(queue.body(gone).is_err());
        assert_eq!(queue.body(kept).unwrap(), body(kept_seed, 64 << 10));
        assert_eq!(report.segments_deleted, 1, "{step:?}: {report:?}");
        let queue = Arc::into_inner(queue).unwrap();
        drop(queue);
        let (queue, report) = Queue::open(dir.path()).unwrap();
        assert!(report.missing_bodies.is_empty(), "{step:?}");
        assert!(
            queue.get(gone).unwrap().is_none(),
            "{step:?}: not resurrected"
        );
        assert_eq!(queue.body(kept).unwrap(), body(kept_seed, 64 << 10));
        assert_eq!(report.messages, 1 + 16, "{step:?}");
    }
}

/// Compaction, completions, leases, reschedules and body reads from several threads at once,
/// many times: every message not completed keeps its exact body, every completed one stays
/// gone, and a restart finds every record's body.
#[test]
fn compaction_racing_completions_loses_and_resurrects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let queue = Arc::new(queue);
    let mut expected: HashMap<QueueId, u64> = HashMap::new();
    let mut total_moved = 0;
    for round in 0..6u64 {
        // 8 MiB+ of small messages per round: at least one closed segment each time.
        let mut fresh = Vec::new();
        for b in 0..40u64 {
            let msgs: Vec<NewMessage> = (0..64)
                .map(|i| message(round << 32 | b << 16 | i, 4096))
                .collect();
            let ids = queue.enqueue_batch(&msgs).unwrap();
            fresh.extend(
                ids.into_iter()
                    .zip((0..64).map(|i| round << 32 | b << 16 | i)),
            );
        }
        // Most are delivered at once; one in 16 waits, some of those are completed while
        // compaction runs.
        let (waiting, now_done): (Vec<_>, Vec<_>) =
            fresh.into_iter().partition(|(id, _)| id.0 % 16 == 0);
        let done: Vec<Finish> = now_done
            .iter()
            .map(|(id, _)| delivered(&queue, *id))
            .collect();
        queue.complete_batch(&done).unwrap();
        expected.extend(waiting.iter().copied());
        let ids: Vec<(QueueId, u64)> = expected.iter().map(|(a, b)| (*a, *b)).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compactor = {
            let (q, stop) = (queue.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut moved = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    moved += q
                        .compact_with(&CompactionPolicy {
                            max_live_percent: 100,
                            min_age: Duration::ZERO,
                            max_bytes_per_pass: 1 << 20,
                        })
                        .unwrap()
                        .messages;
                }
                moved
            })
        };
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                let (q, mine) = (queue.clone(), ids.clone());
                std::thread::spawn(move || {
                    let mut removed = Vec::new();
                    let mut rng = fastrand::Rng::with_seed(round * 7 + t);
                    for (i, &(id, seed)) in mine.iter().enumerate() {
                        if i as u64 % 3 != t {
                            continue;
                        }
                        // Every read of a live message finds its exact body.
                        assert_eq!(q.body(id).unwrap(), body(seed, 4096), "{id}");
                        match rng.u8(..4) {
                            0 => {
                                q.complete_batch(&[delivered(&q, id)])
                                    .unwrap()
                                    .pop()
                                    .unwrap()
                                    .unwrap();
                                removed.push(id);
                            }
                            1 => {
                                let now = amtp_storage::now_ms();
                                if q.lease(id, now, now + 5).unwrap().is_some() {
                                    assert_eq!(q.body(id).unwrap(), body(seed, 4096));
                                    q.reschedule(id, now + 1_000_000).unwrap();
                                }
                            }
                            _ => {}
                        }
                    }
                    removed
                })
            })
            .collect();
        let mut removed = Vec::new();
        for w in workers {
            removed.extend(w.join().unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        total_moved += compactor.join().unwrap();
        for id in removed {
            expected.remove(&id);
        }
        for (&id, &seed) in &expected {
            assert_eq!(queue.body(id).unwrap(), body(seed, 4096), "{id}");
        }
        assert_eq!(queue.len(), expected.len());
    }
    assert!(total_moved > 0, "the passes raced the completions");
    // A last pass with nothing racing it packs what is left.
    queue.compact_with(&eager()).unwrap();
    let queue = Arc::into_inner(queue).unwrap();
    drop(queue);
    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert!(report.missing_bodies.is_empty());
    assert_eq!(report.messages, expected.len());
    for (&id, &seed) in &expected {
        assert_eq!(queue.body(id).unwrap(), body(seed, 4096), "{id}");
    }
    let (_, bytes) = queue.spool_usage().unwrap();
    assert!(
        bytes < 4 * 4096 * expected.len() as u64 + (16 << 20),
        "sparse segments were compacted: {bytes} bytes for {} messages",
        expected.len()
    );
}

/// While its body is being moved, a message is neither due nor leasable (a delivery would
/// read it from a segment about to go); once the move ends it is both again.
#[test]
fn a_message_being_moved_is_not_leased() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let queue = Arc::new(queue);
    let all = fill(&queue, 9);
    let (moving, seed) = all[2];
    let done: Vec<Finish> = all[..128]
        .iter()
        .filter(|(id, _)| *id != moving)
        .map(|(id, _)| delivered(&queue, *id))
        .collect();
    queue.complete_batch(&done).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (q, s) = (queue.clone(), seen.clone());
    queue.set_compaction_hook(Some(Arc::new(move |step| {
        let q = q.clone();
        let (leased, due) = std::thread::spawn(move || {
            let now = amtp_storage::now_ms();
            let due = q.due(now, usize::MAX).unwrap().contains(&moving);
            (q.lease(moving, now, now + 1_000).unwrap().is_some(), due)
        })
        .join()
        .unwrap();
        s.lock().unwrap().push((step, leased, due));
    })));
    let report = queue.compact_with(&eager()).unwrap();
    queue.set_compaction_hook(None);
    assert_eq!(report.messages, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (MoveStep::Marked, false, false),
            (MoveStep::Appended, false, false),
            (MoveStep::Synced, false, false),
        ]
    );
    let now = amtp_storage::now_ms();
    assert!(queue.due(now, usize::MAX).unwrap().contains(&moving));
    assert!(queue.lease(moving, now, now + 1_000).unwrap().is_some());
    assert_eq!(queue.body(moving).unwrap(), body(seed, 64 << 10));
}
