//! Disk-full test: the queue lives on a small real tmpfs that is filled to `ENOSPC` (at the
//! body files, then at the database) and freed again. The queue must refuse while full, leave
//! no body files of refused messages behind, say why it is unhealthy, and accept again once
//! space returns — without being reopened by its owner. Every acknowledged message must still
//! be there, byte for byte, after a real reopen. (Bodies share segment files, so "no body left
//! behind" is checked as: the spool holds exactly the acknowledged bodies' bytes, and a reopen
//! finds nothing to remove.)
//!
//! Mounting needs root (CI runs as root). Elsewhere the tests say so and skip, unless
//! `AMTP_TEST_REQUIRE_TMPFS=1` is set (CI sets it), in which case not mounting is a failure.

use amtp_storage::{Committer, CommitterConfig, Health, NewMessage, Queue, QueueId};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

fn message(n: u64, body_len: usize, recipients: usize) -> NewMessage {
    common::message(
        format!("s{n}@full.test"),
        (0..recipients)
            .map(|r| format!("recipient-number-{r:04}-of-message-{n}@full.test"))
            .collect(),
        body(n, body_len),
    )
}

fn body(n: u64, len: usize) -> Vec<u8> {
    common::random_body(n, len)
}

/// A tmpfs mounted on a temporary directory for the life of the value.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` bytes, or say why not (and skip, unless CI requires it).
    fn mount(size: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Self { dir }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var_os("AMTP_TEST_REQUIRE_TMPFS").is_none(),
            "AMTP_TEST_REQUIRE_TMPFS is set but a tmpfs cannot be mounted: {why}"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {why}");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the file system with one file until `ENOSPC`; returns the file (delete it to free).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Also the last partial page, if any.
    while let Ok(n) = f.write(&chunk[..1]) {
        if n == 0 {
            break;
        }
    }
    path
}

/// Bytes of every file in the spool.
fn spool_bytes(queue_dir: &Path) -> u64 {
    std::fs::read_dir(queue_dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Bytes of the acknowledged bodies.
fn acked_bytes(acked: &[(QueueId, u64, usize)]) -> u64 {
    acked.iter().map(|a| a.2 as u64).sum()
}

fn assert_unhealthy(health: &Health) {
    match health {
        Health::Unhealthy(reason) => assert!(
            reason.contains("No space left on device"),
            "unhealthy for another reason: {reason}"
        ),
        Health::Healthy => panic!("storage reports healthy on a full disk"),
    }
}

#[test]
fn a_full_disk_at_the_body_leaves_no_spool_files_and_recovers() {
    let Some(fs) = Tmpfs::mount(8 << 20) else {
        return;
    };
    let qdir = fs.path().join("queue");
    let (queue, _) = Queue::open(&qdir).unwrap();
    let acked = queue.enqueue_batch(&[message(1, 2000, 1)]).unwrap();
    assert_eq!(queue.health(), Health::Healthy);

    let filler = fill(fs.path());
    // Three bodies, each bigger than anything left: the first write runs out of space.
    let err = queue
        .enqueue_batch(&[
            message(2, 300_000, 1),
            message(3, 300_000, 1),
            message(4, 300_000, 1),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_unhealthy(&queue.health());
    assert_eq!(
        spool_bytes(&qdir),
        2000,
        "a refused batch left (partial) bodies behind"
    );

    std::fs::remove_file(filler).unwrap();
    let more = queue.enqueue_batch(&[message(5, 2000, 1)]).unwrap();
    assert_eq!(queue.health(), Health::Healthy);
    drop(queue);

    assert_eq!(spool_bytes(&qdir), 4000);
    let (queue, report) = Queue::open(&qdir).unwrap();
    assert_eq!(report.orphans_removed, 0);
    assert_eq!(report.segments_removed, 0, "{report:?}");
    assert!(report.missing_bodies.is_empty());
    assert_eq!(queue.body(acked[0]).unwrap(), body(1, 2000));
    assert_eq!(queue.body(more[0]).unwrap(), body(5, 2000));
    assert_eq!(queue.len(), 2);
}

/// Submit through the committer and wait for the answer.
fn submit(committer: &Committer, msg: NewMessage) -> Result<QueueId, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    committer
        .submit(msg, Box::new(move |r| tx.send(r).unwrap()))
        .map_err(|e| e.to_string())?;
    rx.recv().unwrap().map_err(|e| e.to_string())
}

#[test]
fn a_full_database_recovers_without_a_restart_once_space_returns() {
    let Some(fs) = Tmpfs::mount(16 << 20) else {
        return;
    };
    let qdir = fs.path().join("queue");
    let (queue, _) = Queue::open(&qdir).unwrap();
    let queue = Arc::new(queue);
    let committer = Committer::start(
        queue.clone(),
        CommitterConfig {
            batch_max: 16,
            batch_wait: Duration::ZERO,
            capacity: 64,
            observer: None,
        },
    )
    .unwrap();
    let mut acked = vec![(submit(&committer, message(1, 1000, 2)).unwrap(), 1, 1000)];

    let filler = fill(fs.path());
    // Empty bodies need no data blocks, so the body files are created and the database's log
    // is what runs out of space (many recipients: records far bigger than a page).
    let mut refused = 0;
    for n in 100..400 {
        match submit(&committer, message(n, 0, 60)) {
            Ok(id) => acked.push((id, n, 0)),
            Err(_) => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        }
    }
    assert!(refused >= 3, "the database never ran out of space");
    eprintln!("while full: {:?}", queue.health());
    assert_unhealthy(&queue.health());
    assert!(!committer.is_healthy() || matches!(queue.health(), Health::Unhealthy(_)));
    // Still refusing a little later: the database is full, not momentarily busy.
    std::thread::sleep(Duration::from_millis(300));
    assert!(submit(&committer, message(500, 0, 60)).is_err());
    assert_eq!(
        spool_bytes(&qdir),
        acked_bytes(&acked),
        "refused messages left bodies behind"
    );

    // Space returns; nobody sends anything: storage must notice by itself (a readiness
    // probe that waits for traffic would never send traffic its way).
    std::fs::remove_file(filler).unwrap();
    let start = Instant::now();
    while queue.health() != Health::Healthy {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "storage still unhealthy 20 s after space returned: {:?}",
            queue.health()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 600..610 {
        let id = submit(&committer, message(n, 3000, 2))
            .unwrap_or_else(|e| panic!("refused after space returned: {e}"));
        acked.push((id, n, 3000));
    }
    assert_eq!(spool_bytes(&qdir), acked_bytes(&acked));

    // Everything acknowledged is durable and nothing refused came back.
    drop(committer);
    let start = Instant::now();
    let mut queue = queue;
    let queue = loop {
        match Arc::try_unwrap(queue) {
            Ok(q) => break q,
            Err(q) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "committer kept the queue"
                );
                std::thread::sleep(Duration::from_millis(20));
                queue = q;
            }
        }
    };
    drop(queue);
    let (queue, report) = Queue::open(&qdir).unwrap();
    assert!(report.missing_bodies.is_empty(), "{report:?}");
    assert_eq!(report.orphans_removed, 0);
    assert_eq!(report.segments_removed, 0, "{report:?}");
    assert_eq!(
        queue.len(),
        acked.len(),
        "refused messages came back: {report:?}"
    );
    for (id, n, len) in &acked {
        let rec = queue.get(*id).unwrap().expect("acknowledged message lost");
        assert_eq!(rec.envelope.sender, format!("s{n}@full.test"));
        assert_eq!(&queue.body(*id).unwrap(), &body(*n, *len));
    }
}
