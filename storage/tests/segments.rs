//! Leases in memory, bodies in segments, and queues written by older builds: what a restart
//! finds, what is reclaimed and when, on real sled files and a real spool directory.

use amtp_storage::{
    Completion, Finish, MessageRecord, NewMessage, Queue, QueueId, RecipientState, RecipientStatus,
};
use std::path::Path;

mod common;

fn message(n: u64, len: usize) -> NewMessage {
    common::message(
        format!("s{n}@a.test"),
        vec![format!("r{n}@b.test")],
        body(n, len),
    )
}

fn body(n: u64, len: usize) -> Vec<u8> {
    common::random_body(n, len)
}

fn delivered(queue: &Queue, id: QueueId, retry_at: Option<u64>) -> Finish {
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
        retry_at,
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('s'))
        .collect();
    v.sort();
    v
}

/// A lease hides a message from `due` until it expires, and a second lease is refused while
/// it runs; nothing of it is written: after a reopen there is no lease to reset and the
/// message is due at once (an older build wrote it and reset it at start-up).
#[test]
fn leases_live_in_memory_and_expire_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let id = queue.enqueue_batch(&[message(1, 100)]).unwrap()[0];
    let now = amtp_storage::now_ms();
    assert_eq!(queue.due(now, 10).unwrap(), vec![id]);
    let rec = queue.lease(id, now, now + 60_000).unwrap().expect("leased");
    assert_eq!(rec.lease_until, now + 60_000);
    assert!(
        queue.due(now + 59_999, 10).unwrap().is_empty(),
        "leased: not due"
    );
    assert!(queue.lease(id, now + 1, now + 2).unwrap().is_none(), "held");
    assert_eq!(queue.census().delivering, 1);
    assert_eq!(queue.get(id).unwrap().unwrap().lease_until, now + 60_000);
    // The holder died: the lease runs out and the message is due again, and leasable.
    assert_eq!(queue.due(now + 60_000, 10).unwrap(), vec![id]);
    assert!(
        queue
            .lease(id, now + 60_000, now + 70_000)
            .unwrap()
            .is_some()
    );
    drop(queue);

    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.leases_reset, 0, "a lease never reached the database");
    assert_eq!(queue.get(id).unwrap().unwrap().lease_until, 0);
    assert_eq!(queue.due(amtp_storage::now_ms(), 10).unwrap(), vec![id]);
    assert_eq!(queue.census().delivering, 0);
    assert_eq!(queue.census().ready, 1);
}

/// A segment is deleted when its last message leaves; the one still taking batches stays
/// until a restart finds it empty. Messages completed in one batch go together; the ones that
/// remain are rescheduled in the same write.
#[test]
fn a_segment_is_reclaimed_when_all_its_messages_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let first: Vec<QueueId> = queue
        .enqueue_batch(&(0..10).map(|n| message(n, 3000)).collect::<Vec<_>>())
        .unwrap();
    let second = queue.enqueue_batch(&[message(10, 3000)]).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "batches share the open segment"
    );
    drop(queue);
    // After a restart new batches go to a new segment.
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let third = queue.enqueue_batch(&[message(11, 3000)]).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);

    // Nine of the first segment's eleven messages done; one partly, with a retry.
    let mut finish: Vec<Finish> = first[..9]
        .iter()
        .map(|&id| delivered(&queue, id, Some(1)))
        .collect();
    let mut partly = delivered(&queue, first[9], Some(42));
    partly.outcomes[0].state = RecipientState::Pending;
    finish.push(partly);
    let results = queue.complete_batch(&finish).unwrap();
    assert_eq!(results.len(), 10);
    assert!(
        results[..9]
            .iter()
            .all(|r| matches!(r, Ok(Completion::Removed)))
    );
    assert!(matches!(results[9], Ok(Completion::Pending)));
    let rec = queue.get(first[9]).unwrap().unwrap();
    assert_eq!(
        (rec.next_attempt, rec.attempts, rec.lease_until),
        (42, 1, 0)
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        2,
        "two messages still live"
    );
    for id in &first[..9] {
        assert!(queue.get(*id).unwrap().is_none());
        assert!(queue.body(*id).is_err());
    }
    assert_eq!(queue.body(first[9]).unwrap(), body(9, 3000));

    let results = queue
        .complete_batch(&[
            delivered(&queue, first[9], None),
            delivered(&queue, second[0], None),
        ])
        .unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Completion::Removed))));
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the first segment is deleted with its last message"
    );
    // Completing a message that is gone is its own error, not the batch's.
    let again = queue
        .complete_batch(&[Finish {
            id: first[0],
            outcomes: vec![],
            retry_at: None,
        }])
        .unwrap();
    assert!(again[0].is_err());

    assert_eq!(
        queue
            .complete(third[0], &delivered(&queue, third[0], None).outcomes)
            .unwrap(),
        Completion::Removed
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the open segment stays for the next batch"
    );
    drop(queue);
    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.segments_removed, 1, "found empty at open");
    assert!(segment_files(dir.path()).is_empty());
    assert!(queue.is_empty());
}

/// At open: a segment no record refers to (a crash between the bodies' write and the
/// records' commit) is deleted; a record whose segment is gone or too short is reported,
/// and kept for the operator.
#[test]
fn orphan_segments_are_removed_and_missing_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let kept = queue.enqueue_batch(&[message(1, 500)]).unwrap()[0];
    drop(queue);
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let lost = queue.enqueue_batch(&[message(2, 500)]).unwrap()[0];
    drop(queue);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 2);
    let orphan = dir
        .path()
        .join("spool")
        .join(format!("s{:016x}", u64::MAX - 1));
    std::fs::write(&orphan, b"bodies whose records never committed").unwrap();
    // The second message's segment vanishes (it holds only that message).
    std::fs::remove_file(dir.path().join("spool").join(&segments[1])).unwrap();

    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.segments_removed, 1, "{report:?}");
    assert!(!orphan.exists());
    assert_eq!(report.missing_bodies, vec![lost]);
    assert!(queue.get(lost).unwrap().is_some(), "kept for the operator");
    assert_eq!(queue.body(kept).unwrap(), body(1, 500));
    drop(queue);

    // A segment cut short (its tail lost) is reported too.
    let path = dir.path().join("spool").join(&segments[0]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(499)
        .unwrap();
    let (_queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.missing_bodies, vec![kept, lost]);
}

/// A queue written by the previous build — version 2 records, one file per body, the due
/// index in sled, a lease written into a record — opens, delivers and completes: leases are
/// reset, the old due keys dropped, old bodies read from and deleted with their files, and
/// new messages go to segments alongside.
#[test]
fn a_queue_written_by_the_previous_build_opens_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let now = amtp_storage::now_ms();
    let mut old_ids = Vec::new();
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let tree = db.open_tree("queue").unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        for n in 0..3u64 {
            let id = db.generate_id().unwrap();
            old_ids.push(QueueId(id));
            let m = message(n, 700);
            let (next_attempt, lease_until, attempts) = match n {
                0 => (now - 1000, 0, 0),
                1 => (now + 3_600_000, 0, 2),
                _ => (now + 30_000, now + 30_000, 0),
            };
            let rec = MessageRecord {
                received_at: now - 5000,
                envelope: m.envelope.clone(),
                recipients: vec![RecipientStatus {
                    address: m.recipients[0].clone(),
                    state: RecipientState::Pending,
                    last_reply: None,
                    status: None,
                }],
                size: 700,
                attempts,
                next_attempt,
                lease_until,
            };
            // Version 2: the version 3 encoding without the body location (tag 0 last).
            let mut v2 = rec.encode();
            assert_eq!(v2.pop(), Some(0));
            v2[0] = 2;
            let mut key = vec![b'm'];
            key.extend_from_slice(&id.to_be_bytes());
            tree.insert(key, v2).unwrap();
            let mut due = vec![b'd'];
            due.extend_from_slice(&next_attempt.to_be_bytes());
            due.extend_from_slice(&id.to_be_bytes());
            tree.insert(due, &[][..]).unwrap();
            std::fs::write(dir.path().join("spool").join(format!("{id:016x}")), &m.body).unwrap();
        }
        db.flush().unwrap();
    }

    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.messages, 3);
    assert_eq!(report.leases_reset, 1);
    assert_eq!(report.orphans_removed, 0);
    assert!(report.missing_bodies.is_empty(), "{report:?}");
    let mut due = queue.due(amtp_storage::now_ms(), 10).unwrap();
    due.sort();
    assert_eq!(due, vec![old_ids[0], old_ids[2]], "the deferred one waits");
    assert_eq!(queue.census().deferred, 1);
    for (n, id) in old_ids.iter().enumerate() {
        assert_eq!(queue.body(*id).unwrap(), body(n as u64, 700));
        assert_eq!(
            queue.body_prefix(*id, 10).unwrap(),
            body(n as u64, 700)[..10]
        );
    }
    let new = queue.enqueue_batch(&[message(9, 900)]).unwrap()[0];
    let results = queue
        .complete_batch(&[
            delivered(&queue, old_ids[0], None),
            delivered(&queue, new, None),
        ])
        .unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Completion::Removed))));
    let file = |id: QueueId| dir.path().join("spool").join(id.to_string());
    assert!(
        !file(old_ids[0]).exists(),
        "an old body file goes with its message"
    );
    assert!(file(old_ids[1]).exists());
    // Rewritten records keep pointing at their old files.
    queue.reschedule(old_ids[1], now).unwrap();
    drop(queue);

    let (queue, report) = Queue::open(dir.path()).unwrap();
    assert_eq!(report.messages, 2);
    assert_eq!(report.leases_reset, 0);
    assert!(report.missing_bodies.is_empty(), "{report:?}");
    assert_eq!(queue.body(old_ids[1]).unwrap(), body(1, 700));
    queue.remove(old_ids[1]).unwrap();
    assert!(!file(old_ids[1]).exists());
    drop(queue);
    // The old due index is gone from the database.
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .open()
        .unwrap();
    let tree = db.open_tree("queue").unwrap();
    assert_eq!(tree.scan_prefix(b"d").count(), 0);
    assert_eq!(tree.scan_prefix(b"m").count(), 1);
}

/// One id twice in a completion batch (a lease that expired while its result waited to be
/// written, then a second attempt's result in the same batch): the message is removed once.
/// Applied as one round, both finishes read the same stored record, both removed it, and its
/// segment's live count fell by two: the segment was deleted with another message's body
/// still in it.
#[test]
fn an_id_twice_in_one_completion_batch_is_removed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let ids = queue
        .enqueue_batch(&[message(1, 2000), message(2, 2000)])
        .unwrap();
    drop(queue);
    // After a restart the segment is closed: nothing keeps it but its live messages.
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let twice = delivered(&queue, ids[0], None);
    let results = queue.complete_batch(&[twice.clone(), twice]).unwrap();
    assert!(matches!(results[0], Ok(Completion::Removed)));
    assert!(results[1].is_err(), "the second finds it gone: {results:?}");
    assert_eq!(
        queue.body(ids[1]).unwrap(),
        body(2, 2000),
        "the other message's body is still in its segment"
    );
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(queue);
    let (_queue, report) = Queue::open(dir.path()).unwrap();
    assert!(report.missing_bodies.is_empty(), "{report:?}");
    assert_eq!(report.messages, 1);
}
