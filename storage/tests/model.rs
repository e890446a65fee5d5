//! Model test: random operation sequences against the real queue and an in-memory model,
//! compared after every step, including across close/reopen (leases live in memory only, so a
//! reopen has none, and the schedule underneath them is what the records say).

use amtp_storage::{
    BodyType, Completion, Envelope, NewMessage, Origin, Queue, QueueId, RecipientState,
    RecipientStatus,
};
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct ModelMsg {
    body: Vec<u8>,
    recipients: Vec<(String, RecipientState)>,
    /// The record's schedule; `None`: due since before the test's time base (enqueue time).
    due_at: Option<u64>,
    attempts: u32,
    lease_until: u64,
}

fn new_message(rng: &mut fastrand::Rng) -> NewMessage {
    let n = rng.usize(1..4);
    let size = if rng.u8(..10) == 0 {
        rng.usize(130_000..200_000)
    } else {
        rng.usize(0..5000)
    };
    NewMessage {
        id: None,
        envelope: Envelope {
            sender: if rng.bool() {
                String::new()
            } else {
                format!("s{}@a.test", rng.u32(..))
            },
            mpc: rng.bool().then(|| "com/optin".to_string()),
            origin: Origin::Submission,
            listener: "submission".into(),
            client_ip: "127.0.0.1".into(),
            auth_user: None,
            message_id: Some(format!("<{}@a.test>", rng.u64(..))),
            body: BodyType::Unspecified,
            smtputf8: false,
        },
        recipients: (0..n).map(|i| format!("r{i}@b.test")).collect(),
        body: {
            let mut v = vec![0u8; size];
            rng.fill(&mut v);
            v.into()
        },
    }
}

fn check(queue: &Queue, model: &HashMap<QueueId, ModelMsg>, base: u64, rng: &mut fastrand::Rng) {
    let listed = queue.list().unwrap();
    assert_eq!(listed.len(), model.len(), "message count");
    for (id, rec) in &listed {
        let m = model
            .get(id)
            .unwrap_or_else(|| panic!("{id} in queue but not in model"));
        let states: Vec<(String, RecipientState)> = rec
            .recipients
            .iter()
            .map(|r| (r.address.clone(), r.state))
            .collect();
        assert_eq!(states, m.recipients, "{id} recipients");
        assert_eq!(rec.attempts, m.attempts, "{id} attempts");
        assert_eq!(rec.lease_until, m.lease_until, "{id} lease");
        if let Some(due) = m.due_at {
            assert_eq!(rec.next_attempt, due, "{id} next attempt");
        } else {
            assert!(rec.next_attempt < base, "{id} due before base");
        }
        assert_eq!(queue.body(*id).unwrap(), m.body, "{id} body");
    }
    // The census (read by metrics without a scan) agrees with the records, and so does the
    // oldest-message lookup.
    let census = queue.census();
    let count = |f: &dyn Fn(&amtp_storage::MessageRecord) -> bool| {
        u64::try_from(listed.iter().filter(|(_, r)| f(r)).count()).unwrap()
    };
    assert_eq!(
        census.delivering,
        count(&|r| r.lease_until != 0),
        "census delivering"
    );
    assert_eq!(
        census.deferred,
        count(&|r| r.lease_until == 0 && r.attempts > 0),
        "census deferred"
    );
    assert_eq!(
        census.total(),
        u64::try_from(listed.len()).unwrap(),
        "census total"
    );
    assert_eq!(
        queue.oldest_received_at(),
        listed.iter().map(|(_, r)| r.received_at).min(),
        "oldest message"
    );
    let t = base + rng.u64(0..2_000);
    let mut due = queue.due(t, usize::MAX).unwrap();
    due.sort();
    let mut expected: Vec<QueueId> = model
        .iter()
        .filter(|(_, m)| {
            // A lease hides a message until it expires; the schedule underneath stays.
            let due = if m.lease_until != 0 {
                Some(m.lease_until)
            } else {
                m.due_at
            };
            due.is_none_or(|d| d <= t)
        })
        .map(|(id, _)| *id)
        .collect();
    expected.sort();
    assert_eq!(due, expected, "due at base+{}", t - base);
}

#[test]
fn random_operations_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("MODEL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = amtp_storage::now_ms() + 1_000_000_000;
    let mut model: HashMap<QueueId, ModelMsg> = HashMap::new();
    let (mut queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.messages, 0);
    let mut moved = 0;
    for step in 0..400 {
        let ids: Vec<QueueId> = model.keys().copied().collect();
        let pick = |rng: &mut fastrand::Rng| (!ids.is_empty()).then(|| ids[rng.usize(..ids.len())]);
        match rng.u8(..100) {
            0..=29 => {
                let batch: Vec<NewMessage> = (0..rng.usize(1..5))
                    .map(|_| new_message(&mut rng))
                    .collect();
                let new_ids = queue.enqueue_batch(&batch).unwrap();
                assert_eq!(new_ids.len(), batch.len());
                for (id, m) in new_ids.into_iter().zip(batch) {
                    let recipients = m
                        .recipients
                        .iter()
                        .map(|r| (r.clone(), RecipientState::Pending))
                        .collect();
                    assert!(
                        model
                            .insert(
                                id,
                                ModelMsg {
                                    body: m.body.to_vec(),
                                    recipients,
                                    due_at: None,
                                    attempts: 0,
                                    lease_until: 0
                                }
                            )
                            .is_none(),
                        "id reused"
                    );
                }
            }
            30..=44 => {
                if let Some(id) = pick(&mut rng) {
                    let now = base + rng.u64(0..1000);
                    let until = now + rng.u64(1..1000);
                    let m = model.get_mut(&id).unwrap();
                    let got = queue.lease(id, now, until).unwrap();
                    if m.lease_until > now {
                        assert!(
                            got.is_none(),
                            "step {step}: lease granted over a live lease"
                        );
                    } else {
                        assert!(got.is_some());
                        m.lease_until = until;
                    }
                }
            }
            45..=59 => {
                if let Some(id) = pick(&mut rng) {
                    let at = base + rng.u64(0..2000);
                    queue.reschedule(id, at).unwrap();
                    let m = model.get_mut(&id).unwrap();
                    m.lease_until = 0;
                    m.due_at = Some(at);
                    m.attempts += 1;
                }
            }
            60..=79 => {
                if let Some(id) = pick(&mut rng) {
                    let m = model.get_mut(&id).unwrap();
                    let outcomes: Vec<RecipientStatus> = m
                        .recipients
                        .iter()
                        .filter_map(|(a, _)| {
                            let state = match rng.u8(..3) {
                                0 => return None,
                                1 => RecipientState::Delivered,
                                _ => RecipientState::Failed,
                            };
                            Some(RecipientStatus {
                                address: a.clone(),
                                state,
                                last_reply: Some("250 ok".to_string()),
                                status: Some("2.0.0".to_string()),
                            })
                        })
                        .collect();
                    for o in &outcomes {
                        m.recipients
                            .iter_mut()
                            .find(|(x, _)| *x == o.address)
                            .unwrap()
                            .1 = o.state;
                    }
                    let all_final = m
                        .recipients
                        .iter()
                        .all(|(_, s)| *s != RecipientState::Pending);
                    let got = queue.complete(id, &outcomes).unwrap();
                    if all_final {
                        assert_eq!(got, Completion::Removed);
                        model.remove(&id);
                    } else {
                        assert_eq!(got, Completion::Pending);
                        // complete() keeps the due entry where it was.
                    }
                }
            }
            80..=89 => {
                if let Some(id) = pick(&mut rng) {
                    queue.remove(id).unwrap();
                    model.remove(&id);
                }
                queue.remove(QueueId(u64::MAX)).unwrap();
            }
            90..=94 => {
                // Compaction of every closed segment with a dead byte: bodies move, nothing
                // else may change (leased messages stay where they are).
                moved += queue
                    .compact_with(&amtp_storage::CompactionPolicy {
                        max_live_percent: 100,
                        min_age: std::time::Duration::ZERO,
                        max_bytes_per_pass: u64::MAX,
                    })
                    .unwrap()
                    .messages;
            }
            _ => {
                drop(queue);
                let (q, report) = Queue::open(dir.path()).unwrap();
                queue = q;
                assert_eq!(report.messages, model.len());
                assert_eq!(report.orphans_removed, 0);
                assert!(report.missing_bodies.is_empty());
                assert_eq!(report.leases_reset, 0, "leases are never written");
                for m in model.values_mut() {
                    m.lease_until = 0;
                }
            }
        }
        check(&queue, &model, base, &mut rng);
    }
    println!("compaction moved {moved} bodies");
}

#[test]
fn orphan_bodies_are_removed_and_locks_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    // A second open in the same process hits sled's lock.
    let err = Queue::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(queue);
    std::fs::write(
        dir.path().join("spool").join(format!("{:016x}", 99u64)),
        b"orphan",
    )
    .unwrap();
    let (_q, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.orphans_removed, 1);
    assert!(
        !dir.path()
            .join("spool")
            .join(format!("{:016x}", 99u64))
            .exists()
    );
}

#[test]
fn corrupt_database_is_refused_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = Queue::open(dir.path()).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        q.enqueue_batch(&[new_message(&mut rng)]).unwrap();
    }
    let conf = dir.path().join("db").join("conf");
    std::fs::write(&conf, b"garbage that is not a sled config").unwrap();
    let err = Queue::open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("corrupt") || text.contains("queue database"),
        "{text}"
    );
    // Nothing was recreated behind our back.
    assert_eq!(
        std::fs::read(&conf).unwrap(),
        b"garbage that is not a sled config"
    );
}

/// Delivery threads completing messages at once share fsyncs; each still returns only after
/// its own removal is durable, and every completed message is gone after a reopen — record and
/// body — while the partly delivered ones remain with their recipient states.
#[test]
fn concurrent_completions_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let messages: Vec<NewMessage> = (0..400).map(|_| new_message(&mut rng)).collect();
    let ids = queue.enqueue_batch(&messages).unwrap();
    let queue = std::sync::Arc::new(queue);
    let threads: Vec<_> = ids
        .chunks(50)
        .map(|chunk| {
            let (queue, chunk) = (queue.clone(), chunk.to_vec());
            std::thread::spawn(move || {
                for (i, id) in chunk.into_iter().enumerate() {
                    let rec = queue.get(id).unwrap().unwrap();
                    let mut outcomes: Vec<_> = rec
                        .recipients
                        .iter()
                        .map(|r| RecipientStatus {
                            state: RecipientState::Delivered,
                            ..r.clone()
                        })
                        .collect();
                    // Every fifth message keeps its first recipient pending.
                    if i % 5 == 0 {
                        outcomes[0].state = RecipientState::Pending;
                    }
                    let expected = if i % 5 == 0 {
                        Completion::Pending
                    } else {
                        Completion::Removed
                    };
                    assert_eq!(queue.complete(id, &outcomes).unwrap(), expected);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(queue);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let left = queue.list().unwrap();
    assert_eq!(
        left.len(),
        80,
        "one in five of 400 keeps a pending recipient"
    );
    for (id, rec) in &left {
        assert_eq!(rec.pending().count(), 1, "{id}");
        assert!(
            queue.body(*id).is_ok(),
            "{id}: the body of a pending message stays"
        );
    }
    // The pending messages keep their segment; once they are gone, so is the segment.
    assert_eq!(queue.spool_usage().unwrap().0, 1);
    for (id, _) in &left {
        queue.remove(*id).unwrap();
    }
    assert_eq!(
        queue.spool_usage().unwrap(),
        (0, 0),
        "a segment is deleted with its last message"
    );
}

/// A record being rescheduled by delivery while an operator deletes it must stay deleted: the
/// read-modify-write of an update must not bring a removed record back (without its body).
#[test]
fn updates_racing_removals_never_resurrect_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let messages: Vec<NewMessage> = (0..1000).map(|_| new_message(&mut rng)).collect();
    let ids = queue.enqueue_batch(&messages).unwrap();
    let queue = std::sync::Arc::new(queue);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let updaters: Vec<_> = (0..3)
        .map(|t| {
            let (queue, ids, done) = (queue.clone(), ids.clone(), done.clone());
            std::thread::spawn(move || {
                let mut round = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    for id in ids.iter().skip(t) {
                        // NotFound once removed: expected, and the point of the test.
                        let _ = queue.reschedule(*id, 1_000 + round);
                        let _ = queue.lease(*id, 0, 5_000 + round);
                    }
                    round += 1;
                }
            })
        })
        .collect();
    for id in &ids {
        queue.remove(*id).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for u in updaters {
        u.join().unwrap();
    }
    let left = queue.list().unwrap();
    assert!(left.is_empty(), "{} removed records came back", left.len());
    assert!(
        queue.due(u64::MAX, 10).unwrap().is_empty(),
        "no stale due entries"
    );
}

/// A postponed message (held back by its destination's message rate, never tried) loses its
/// lease and is not due before its time, is due after it, and has no attempt counted; the
/// census counts it ready (never attempted), not delivering. Survives a reopen the same way.
#[test]
fn a_postponed_message_waits_without_an_attempt_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let ids = queue
        .enqueue_batch(&[new_message(&mut rng), new_message(&mut rng)])
        .unwrap();
    let (id, other) = (ids[0], ids[1]);
    let now = amtp_storage::now_ms();
    let lease = now + 600_000;
    assert!(queue.lease(id, now, lease).unwrap().is_some());
    assert_eq!(queue.census().delivering, 1);
    let until = now + 60_000;
    assert_eq!(queue.postpone(&[(id, until)]).unwrap(), 1);
    let rec = queue.get(id).unwrap().unwrap();
    assert_eq!(rec.attempts, 0, "no attempt counted");
    assert_eq!(rec.lease_until, 0, "the lease is released");
    assert_eq!(rec.next_attempt, until);
    let census = queue.census();
    assert_eq!((census.delivering, census.ready), (0, 2), "{census:?}");
    assert_eq!(queue.due(now, 10).unwrap(), vec![other], "not due before");
    assert_eq!(queue.due(until - 1, 10).unwrap(), vec![other]);
    let mut due = queue.due(until, 10).unwrap();
    due.sort_unstable();
    assert_eq!(due, vec![id, other], "due at its time");
    // Not leased any more: anyone may lease it once it is due.
    assert!(queue.lease(id, until, until + 1000).unwrap().is_some());
    // A message removed meanwhile is skipped, not an error.
    queue.remove(other).unwrap();
    assert_eq!(queue.postpone(&[(other, until)]).unwrap(), 0);
    drop(queue);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let rec = queue.get(id).unwrap().unwrap();
    assert_eq!((rec.attempts, rec.next_attempt), (0, until));
    assert!(queue.due(now, 10).unwrap().is_empty());
}
