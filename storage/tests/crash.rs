//! Crash test: a child process enqueues through the group committer from several threads
//! and reports each acknowledged id on stdout; the parent `kill -9`s it at a random moment,
//! reopens the queue and checks that every acknowledged message is present and
//! byte-identical. Repeated for many rounds on the same directory.

use amtp_storage::{Committer, CommitterConfig, NewMessage, Queue, QueueId};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod common;

const ROUNDS: usize = 24;

/// This test binary again, as a child running only the ignored test `name` with `env`; its
/// stdout (the `ACK` lines) piped to the parent.
fn spawn_child(name: &str, env: &[(&str, &OsStr)]) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// The body for `(thread, n)`: deterministic so the parent can check it byte for byte.
/// Sizes cover small messages and bodies over sled's 128 KiB blob threshold.
fn body(thread: u64, n: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(thread << 32 | n);
    let size = match rng.u8(..20) {
        0 => rng.usize(130_000..300_000),
        1..=4 => rng.usize(8_000..64_000),
        _ => rng.usize(100..4_000),
    };
    let mut v = vec![0u8; size];
    rng.fill(&mut v);
    v
}

/// The child side; does nothing unless started by the parent test.
#[test]
#[ignore = "run by crash_kill_9_loses_no_acknowledged_message as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("AMTP_CRASH_DIR") else {
        return;
    };
    let round: u64 = std::env::var("AMTP_CRASH_ROUND").unwrap().parse().unwrap();
    let (queue, _) = Queue::open(std::path::Path::new(&dir)).unwrap();
    let committer = Committer::start(
        Arc::new(queue),
        CommitterConfig {
            batch_max: 32,
            batch_wait: Duration::from_millis(1),
            capacity: 256,
            observer: None,
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let committer = committer.clone();
            std::thread::spawn(move || {
                let thread = round * 16 + t;
                for n in 0.. {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let msg = common::message(
                        format!("t{thread}@crash.test"),
                        vec![format!("n{n}@crash.test")],
                        body(thread, n),
                    );
                    if committer
                        .submit(msg, Box::new(move |r| tx.send(r).unwrap()))
                        .is_err()
                    {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let id = rx.recv().unwrap().unwrap();
                    // Only now is the message acknowledged (the relay's 250).
                    println!("ACK {id} {thread} {n}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn crash_kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(QueueId, u64, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = spawn_child(
            "crash_child",
            &[
                ("AMTP_CRASH_DIR", dir.path().as_os_str()),
                ("AMTP_CRASH_ROUND", OsStr::new(&round.to_string())),
            ],
        );
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acked_once) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let mut it = rest.split(' ');
                    let id: QueueId = it.next().unwrap().parse().unwrap();
                    let thread: u64 = it.next().unwrap().parse().unwrap();
                    let n: u64 = it.next().unwrap().parse().unwrap();
                    lines.push((id, thread, n));
                    let _ = first_ack.send(());
                }
            }
            lines
        });
        // Kill at a random point after the child is committing: a fixed delay from spawn
        // sometimes ended a slow start (a loaded machine) before its first commit.
        let _ = acked_once.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(fastrand::u64(10..450)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let new = reader.join().unwrap();
        assert!(
            !new.is_empty() || round > 0,
            "child acknowledged nothing in the first round"
        );
        acked.extend(new);
        let (queue, report) =
            Queue::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        assert!(
            report.missing_bodies.is_empty(),
            "round {round}: records without bodies {:?}",
            report.missing_bodies
        );
        for (id, thread, n) in &acked {
            let rec = queue
                .get(*id)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} lost"));
            assert_eq!(rec.envelope.sender, format!("t{thread}@crash.test"));
            assert_eq!(
                queue.body(*id).unwrap(),
                body(*thread, *n),
                "round {round}: {id} body differs"
            );
        }
        println!(
            "round {round}: {} acknowledged so far, {} in queue, {} orphans removed",
            acked.len(),
            report.messages,
            report.orphans_removed
        );
    }
    assert!(
        acked.len() > ROUNDS,
        "too few acknowledgements to mean anything: {}",
        acked.len()
    );
}

/// A body from a sender's number, so the parent can check any message it finds.
fn numbered_body(k: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(k);
    let size = if rng.u8(..10) == 0 {
        rng.usize(20_000..200_000)
    } else {
        rng.usize(100..3_000)
    };
    let mut v = vec![0u8; size];
    rng.fill(&mut v);
    v
}

fn numbered_message(k: u64) -> NewMessage {
    common::message(
        format!("b{k}@complete.test"),
        vec![format!("r{k}@complete.test"), format!("s{k}@complete.test")],
        numbered_body(k),
    )
}

/// The child side of the completion crash test: enqueues a few messages, then completes the
/// oldest in one batch, over and over, saying what it acknowledged, what it is completing
/// and what it has completed.
#[test]
#[ignore = "run by crash_during_batched_completions_loses_nothing as a child process"]
fn complete_child() {
    use amtp_storage::{Finish, RecipientState, RecipientStatus};
    let Ok(dir) = std::env::var("AMTP_COMPLETE_DIR") else {
        return;
    };
    let round: u64 = std::env::var("AMTP_CRASH_ROUND").unwrap().parse().unwrap();
    let (queue, _) = Queue::open(std::path::Path::new(&dir)).unwrap();
    for step in 0u64.. {
        let first = (round << 32) | (step << 4);
        let batch: Vec<NewMessage> = (first..first + 8).map(numbered_message).collect();
        for (id, k) in queue.enqueue_batch(&batch).unwrap().iter().zip(first..) {
            println!("ACK {id} {k}");
        }
        let due = queue
            .due(u64::MAX, 1 + usize::try_from(step % 48).unwrap())
            .unwrap();
        let finish: Vec<Finish> = due
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let rec = queue.get(id).unwrap().unwrap();
                // Every fifth message keeps its second recipient for a retry.
                let outcomes = rec
                    .recipients
                    .iter()
                    .enumerate()
                    .map(|(j, r)| RecipientStatus {
                        state: if i % 5 == 0 && j == 1 {
                            RecipientState::Pending
                        } else {
                            RecipientState::Delivered
                        },
                        ..r.clone()
                    })
                    .collect();
                Finish {
                    id,
                    outcomes,
                    retry_at: Some(1),
                }
            })
            .collect();
        let ids: Vec<String> = due.iter().map(ToString::to_string).collect();
        println!("BEGIN {}", ids.join(" "));
        let results = queue.complete_batch(&finish).unwrap();
        for (id, r) in due.iter().zip(results) {
            if r.unwrap() == amtp_storage::Completion::Removed {
                println!("DONE {id}");
            }
        }
    }
}

/// `kill -9` while messages are completed in batches (one sled batch, one fsync, then the
/// bodies released): a message reported done never comes back, a message not yet completed
/// is never lost (record and body intact), one caught in the batch in flight is either, and
/// the first open after the crash leaves no body or segment that no record needs.
#[test]
fn crash_during_batched_completions_loses_nothing() {
    use std::collections::{HashMap, HashSet};
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<QueueId, u64> = HashMap::new();
    let mut done: HashSet<QueueId> = HashSet::new();
    for round in 0..12u64 {
        let mut child = spawn_child(
            "complete_child",
            &[
                ("AMTP_COMPLETE_DIR", dir.path().as_os_str()),
                ("AMTP_CRASH_ROUND", OsStr::new(&round.to_string())),
            ],
        );
        let stdout = child.stdout.take().unwrap();
        let (first, started) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            let mut dones = Vec::new();
            let mut in_flight = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut it = line.split(' ');
                match it.next() {
                    Some("ACK") => {
                        let id: QueueId = it.next().unwrap().parse().unwrap();
                        acks.push((id, it.next().unwrap().parse::<u64>().unwrap()));
                    }
                    Some("BEGIN") => {
                        in_flight = it
                            .filter(|s| !s.is_empty())
                            .map(|s| s.parse().unwrap())
                            .collect();
                        let _ = first.send(());
                    }
                    Some("DONE") => dones.push(it.next().unwrap().parse::<QueueId>().unwrap()),
                    _ => {}
                }
            }
            (acks, dones, in_flight)
        });
        let _ = started.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(fastrand::u64(10..400)));
        child.kill().unwrap();
        child.wait().unwrap();
        let (acks, dones, in_flight): (Vec<(QueueId, u64)>, Vec<QueueId>, Vec<QueueId>) =
            reader.join().unwrap();
        acked.extend(acks);
        done.extend(dones);
        let in_flight: HashSet<QueueId> = in_flight.into_iter().collect();

        let (queue, report) =
            Queue::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        assert!(
            report.missing_bodies.is_empty(),
            "round {round}: records without bodies {:?}",
            report.missing_bodies
        );
        for id in &done {
            assert!(
                queue.get(*id).unwrap().is_none(),
                "round {round}: {id} was completed and came back"
            );
        }
        for (id, k) in &acked {
            if done.contains(id) {
                continue;
            }
            match queue.get(*id).unwrap() {
                Some(rec) => {
                    assert_eq!(rec.envelope.sender, format!("b{k}@complete.test"));
                    assert_eq!(
                        queue.body(*id).unwrap(),
                        numbered_body(*k),
                        "round {round}: {id}"
                    );
                }
                None => assert!(
                    in_flight.contains(id),
                    "round {round}: acknowledged {id} lost without being completed"
                ),
            }
        }
        // Caught in flight and gone: completed (only its DONE line was lost).
        for id in &in_flight {
            if queue.get(*id).unwrap().is_none() {
                done.insert(*id);
            }
        }
        // Whatever the crash left unreferenced went at the first open.
        drop(queue);
        let (queue, again) = Queue::open(dir.path()).unwrap();
        assert_eq!(
            (again.orphans_removed, again.segments_removed),
            (0, 0),
            "round {round}: the first open left garbage: {report:?}"
        );
        println!(
            "round {round}: {} acknowledged, {} completed, {} queued, {} segments removed at open",
            acked.len(),
            done.len(),
            queue.len(),
            report.segments_removed
        );
    }
    assert!(
        done.len() > 12,
        "too few completions to mean anything: {}",
        done.len()
    );
}

/// Message `k`'s body in the compaction crash test: 70..96 KB, so that 8 batches of 16 fill
/// more than a segment (and close it) and 7 of them fit in one chunk of a move.
fn compact_body(k: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(k);
    let mut body = vec![0u8; rng.usize(70_000..96_000)];
    rng.fill(&mut body);
    body
}

/// The child side of the compaction crash test: fills about 9 MiB of segments, delivers all
/// but a few messages of the first 8 MiB (saying which stay: acknowledged and not delivered),
/// restarts, then compacts and stops at the step named by `AMTP_COMPACT_AT`, saying so,
/// until it is killed.
#[test]
#[ignore = "run by crash_during_compaction_loses_nothing as a child process"]
fn compact_child() {
    use amtp_storage::queue::compaction::{MoveHook, MoveStep};
    use amtp_storage::{CompactionPolicy, Finish, RecipientState, RecipientStatus};
    use std::io::Write;
    let Ok(dir) = std::env::var("AMTP_COMPACT_DIR") else {
        return;
    };
    let at = match std::env::var("AMTP_COMPACT_AT").unwrap().as_str() {
        "appended" => MoveStep::Appended,
        "synced" => MoveStep::Synced,
        other => panic!("unknown step {other}"),
    };
    let (queue, _) = Queue::open(std::path::Path::new(&dir)).unwrap();
    // 9 batches of 16 messages: the first segment (8 MiB+) is closed after 7 or 8.
    let mut all = Vec::new();
    for b in 0..9u64 {
        let batch: Vec<NewMessage> = (0..16u64)
            .map(|i| {
                let k = b * 16 + i;
                let mut m = numbered_message(k);
                m.body = compact_body(k).into();
                m
            })
            .collect();
        let ids = queue.enqueue_batch(&batch).unwrap();
        all.extend(ids.into_iter().zip(b * 16..));
    }
    let (first, _) = all.split_at(all.len() - 16);
    let finish: Vec<Finish> = first
        .iter()
        .filter(|(_, k)| k % 20 != 3)
        .map(|&(id, _)| Finish {
            id,
            outcomes: queue
                .get(id)
                .unwrap()
                .unwrap()
                .recipients
                .iter()
                .map(|r| RecipientStatus {
                    state: RecipientState::Delivered,
                    ..r.clone()
                })
                .collect(),
            retry_at: None,
        })
        .collect();
    queue.complete_batch(&finish).unwrap();
    for &(id, k) in all.iter().filter(|(_, k)| k % 20 == 3 || *k >= 128) {
        println!("ACK {id} {k}");
    }
    // The first segment keeps at most 6 messages of 96 KB: one chunk of a move, so that the
    // step reached is the move's last.
    // A restart: every segment is closed, the copies go to a new one.
    drop(queue);
    let (queue, _) = Queue::open(std::path::Path::new(&dir)).unwrap();
    let hook: MoveHook = Arc::new(move |step| {
        if step == at {
            println!("AT {step:?}");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    queue.set_compaction_hook(Some(hook));
    queue
        .compact_with(&CompactionPolicy {
            max_live_percent: 25,
            min_age: Duration::ZERO,
            max_bytes_per_pass: 64 << 20,
        })
        .unwrap();
    panic!("compaction ended without reaching {at:?}");
}

/// `kill -9` in the middle of a compaction, after its copies are durable (step b) and after
/// the records pointing at them are (step c): every message not delivered is there with its
/// exact body, no record points at a missing segment, and the next pass finishes the job.
#[test]
fn crash_during_compaction_loses_nothing() {
    for at in ["appended", "synced"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_child(
            "compact_child",
            &[
                ("AMTP_COMPACT_DIR", dir.path().as_os_str()),
                ("AMTP_COMPACT_AT", OsStr::new(at)),
            ],
        );
        let mut acked: Vec<(QueueId, u64)> = Vec::new();
        let mut reached = false;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            // The first line follows the harness's "test compact_child ... ".
            if let Some((_, rest)) = line.split_once("ACK ") {
                let (id, k) = rest.split_once(' ').unwrap();
                acked.push((id.parse().unwrap(), k.parse().unwrap()));
            } else if line.contains("AT ") {
                reached = true;
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL, at that step
        child.wait().unwrap();
        assert!(reached, "{at}: the child never reached the step");
        assert_eq!(acked.len(), 7 + 16, "{at}");
        let body = compact_body;
        let (queue, report) = Queue::open(dir.path()).unwrap();
        assert!(
            report.missing_bodies.is_empty(),
            "{at}: records without bodies {:?}",
            report.missing_bodies
        );
        assert_eq!(
            report.messages,
            acked.len(),
            "{at}: nothing lost or resurrected"
        );
        // Killed after step b: no record refers to the new segment holding the copies;
        // after step c's fsync, none refers to the old one. Either way the open deletes it.
        assert_eq!(report.segments_removed, 1, "{at}: {report:?}");
        for &(id, k) in &acked {
            assert_eq!(queue.body(id).unwrap(), body(k), "{at}: {id} body");
        }
        let (_, before) = queue.spool_usage().unwrap();
        let pass = queue
            .compact_with(&amtp_storage::CompactionPolicy {
                max_live_percent: 25,
                min_age: Duration::ZERO,
                max_bytes_per_pass: 64 << 20,
            })
            .unwrap();
        let (_, after) = queue.spool_usage().unwrap();
        if at == "appended" {
            assert!(
                pass.segments_deleted >= 1,
                "{at}: the next pass finishes it"
            );
            assert!(after < before, "{at}: {before} -> {after}");
        }
        drop(queue);
        let (queue, report) = Queue::open(dir.path()).unwrap();
        assert!(report.missing_bodies.is_empty(), "{at}");
        assert_eq!(report.messages, acked.len(), "{at}");
        for &(id, k) in &acked {
            assert_eq!(queue.body(id).unwrap(), body(k), "{at}: {id} body");
        }
        assert!(
            after < 8 << 20,
            "{at}: the sparse segment is gone: {after} bytes"
        );
    }
}
