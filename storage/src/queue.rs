//! [`Queue`]: the durable store behind the relay's `250`.
//!
//! One sled tree holds two kinds of keys, so that every change is one atomic `apply_batch`:
//! - `m` + id (8 bytes BE) → the encoded [`MessageRecord`];
//! - `d` + due time in ms (8 bytes BE) + id → empty: the due-time index, in time order.
//!
//! A lease is a reschedule to the lease's expiry plus a mark on the record: if the worker that
//! holds it dies, the message simply becomes due again when the lease runs out. Leases are
//! also cleared at start-up, when no worker can hold one.
//!
//! # Contract per method
//! - [`Queue::enqueue_batch`]: on `Ok`, every message (body and envelope) is on stable storage;
//!   on `Err`, none is acknowledged (some may still appear after a restart; the caller said 451
//!   so the client retries — a possible duplicate, never a loss).
//! - [`Queue::lease`]: not flushed at all — leases are cleared at start-up, so a lease that
//!   never reached the disk changes nothing.
//! - [`Queue::reschedule`], and [`Queue::complete`] while recipients remain: flushed to the OS
//!   (survive a process crash); a lost update after power loss means one more delivery attempt.
//! - Every read-modify-write of a record holds that record's lock (striped by id), so an update
//!   racing a removal finds the record gone instead of writing it back.
//! - [`Queue::remove`], and [`Queue::complete`] of the last recipient: the record removal is
//!   fsynced before the body file is deleted. Concurrent callers share fsyncs (see
//!   [`Queue::sync`]): the slowest step of delivery is paid once per group, not per message.

use crate::error::StorageError;
use crate::record::{Envelope, MessageRecord, RecipientState, RecipientStatus};
use crate::spool::{self, Spool};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A queue id: sled's monotonic id, never reused (sled jumps ahead after a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for QueueId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u64::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| format!("{s:?} is not a queue id (16 hex digits)"))
    }
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender, MPC and origin.
    pub envelope: Envelope,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// The complete message (headers, including our Received, and body), CRLF line endings.
    pub body: Vec<u8>,
}

/// What [`Queue::open`] found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Messages in the queue.
    pub messages: usize,
    /// Leases cleared (a previous process was delivering them).
    pub leases_reset: usize,
    /// Body files without a record (crash between body write and commit), deleted.
    pub orphans_removed: usize,
    /// Records whose body file is missing (should never happen; reported, kept for the operator).
    pub missing_bodies: Vec<QueueId>,
    /// sled said it recovered an existing database.
    pub recovered: bool,
}

/// The outcome of [`Queue::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every recipient is final; the message was removed.
    Removed,
    /// Some recipients are still pending.
    Pending,
}

/// The queue: a sled database plus a spool directory.
#[derive(Debug)]
pub struct Queue {
    db: sled::Db,
    tree: sled::Tree,
    spool: Spool,
    /// Our own handle on sled's log file: `sync_all` on it turns sled's `sync_file_range`
    /// into a real fsync (file data and metadata).
    log_file: File,
    db_path: PathBuf,
    /// Changes applied so far that may need an fsync (a counter, for sharing fsyncs).
    writes: std::sync::atomic::AtomicU64,
    /// The `writes` value covered by the last completed fsync; held while syncing.
    synced: std::sync::Mutex<u64>,
    /// Serialises read-modify-writes of one record (striped by id): without it, an update
    /// that read a record just before a removal would write it back after the removal.
    record_locks: Vec<std::sync::Mutex<()>>,
}

/// Stripes of [`Queue::record_locks`]: enough that unrelated messages rarely share one.
const RECORD_LOCK_STRIPES: usize = 64;

fn message_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'm';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn due_key(due: u64, id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'd';
    k[1..9].copy_from_slice(&due.to_be_bytes());
    k[9..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_from_key(key: &[u8]) -> Option<u64> {
    key.get(key.len().checked_sub(8)?..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

impl Queue {
    /// Open the queue in `dir` (creating it if empty), reconcile, and reset leases.
    /// Refuses a corrupt database and one locked by another process.
    pub fn open(dir: &Path) -> Result<(Self, OpenReport), StorageError> {
        let queue = Self::open_raw(dir)?;
        let report = queue.reconcile()?;
        Ok((queue, report))
    }

    /// Open an existing queue for inspection (`amtp-relay queue list` on a stopped relay):
    /// no reconciliation, no lease reset, no repairs — what a crash left is shown as it is.
    pub fn open_for_inspection(dir: &Path) -> Result<Self, StorageError> {
        if !dir.join("db").exists() {
            return Err(StorageError::io(
                format!("opening queue {}", dir.display()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no queue database here"),
            ));
        }
        Self::open_raw(dir)
    }

    fn open_raw(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError::io(format!("creating queue directory {}", dir.display()), e)
        })?;
        let db_path = dir.join("db");
        let spool = Spool::open(dir.join("spool"))?;
        let config = sled::Config::new()
            .path(&db_path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(64 * 1024 * 1024);
        // sled 0.34 panics on some corrupt files instead of returning an error; a panic here
        // must become a refusal to start, not a crash with a backtrace.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                return Err(StorageError::Locked(db_path));
            }
            Ok(Err(sled::Error::Corruption { .. }))
            | Ok(Err(sled::Error::Unsupported(_)))
            | Ok(Err(sled::Error::ReportableBug(_))) => {
                return Err(StorageError::Corrupt {
                    path: db_path,
                    detail: "sled could not read its files".into(),
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic while opening".into());
                return Err(StorageError::Corrupt {
                    path: db_path,
                    detail,
                });
            }
        };
        let tree = db.open_tree("queue")?;
        let log_path = db_path.join("db");
        let log_file = File::open(&log_path)
            .map_err(|e| StorageError::io(format!("opening {}", log_path.display()), e))?;
        // Make the database's own directory entries durable once (sled never fsyncs them).
        spool::sync_dir(&db_path)?;
        spool::sync_dir(dir)?;
        let queue = Self {
            db,
            tree,
            spool,
            log_file,
            db_path,
            writes: std::sync::atomic::AtomicU64::new(0),
            synced: std::sync::Mutex::new(0),
            record_locks: (0..RECORD_LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        };
        Ok(queue)
    }

    fn reconcile(&self) -> Result<OpenReport, StorageError> {
        let mut report = OpenReport {
            recovered: self.db.was_recovered(),
            ..OpenReport::default()
        };
        let now = crate::now_ms();
        let mut batch = sled::Batch::default();
        let mut known = std::collections::HashSet::new();
        for item in self.tree.scan_prefix(b"m") {
            let (key, value) = item?;
            let id = id_from_key(&key).ok_or_else(|| self.corrupt("bad message key"))?;
            let mut rec = self.decode(id, &value)?;
            known.insert(id);
            report.messages += 1;
            if rec.lease_until != 0 {
                batch.remove(&due_key(rec.next_attempt, id)[..]);
                rec.lease_until = 0;
                rec.next_attempt = now;
                batch.insert(&due_key(now, id)[..], &[][..]);
                batch.insert(&message_key(id)[..], rec.encode());
                report.leases_reset += 1;
            }
        }
        self.tree.apply_batch(batch)?;
        let on_disk: std::collections::HashSet<u64> = self.spool.ids()?.into_iter().collect();
        for id in &on_disk {
            if !known.contains(id) {
                self.spool.remove(*id)?;
                report.orphans_removed += 1;
            }
        }
        if report.orphans_removed > 0 {
            self.spool.sync_dir()?;
        }
        report.missing_bodies = known
            .iter()
            .filter(|id| !on_disk.contains(id))
            .map(|&id| QueueId(id))
            .collect();
        report.missing_bodies.sort();
        self.sync()?;
        Ok(report)
    }

    fn corrupt(&self, detail: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.db_path.clone(),
            detail: detail.into(),
        }
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<MessageRecord, StorageError> {
        MessageRecord::decode(bytes).map_err(|detail| StorageError::Decode {
            id: QueueId(id).to_string(),
            detail,
        })
    }

    /// Flush sled and fsync its log file: after this returns, every batch this thread applied
    /// before calling is durable.
    ///
    /// Group fsync: callers that arrive while another thread is syncing wait for it, and
    /// return at once if a sync that began after their own write has completed meanwhile. A
    /// sync covers every write counted before it starts, because each write is applied before
    /// it is counted.
    fn sync(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let mine = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *synced >= mine {
            return Ok(());
        }
        let covers = self.writes.load(Ordering::SeqCst);
        self.db.flush()?;
        self.log_file.sync_all().map_err(|e| {
            StorageError::io(format!("fsync of {}", self.db_path.join("db").display()), e)
        })?;
        *synced = covers;
        Ok(())
    }

    /// Store messages durably; returns their ids in order. Bodies synced concurrently, one
    /// directory fsync, one sled batch and one flush+fsync for the whole batch (group commit).
    pub fn enqueue_batch(&self, messages: &[NewMessage]) -> Result<Vec<QueueId>, StorageError> {
        let now = crate::now_ms();
        let mut ids = Vec::with_capacity(messages.len());
        let mut batch = sled::Batch::default();
        let mut bodies = Vec::with_capacity(messages.len());
        for m in messages {
            let id = self.db.generate_id()?;
            bodies.push((id, m.body.as_slice()));
            let rec = MessageRecord {
                received_at: now,
                envelope: m.envelope.clone(),
                recipients: m
                    .recipients
                    .iter()
                    .map(|a| RecipientStatus {
                        address: a.clone(),
                        state: RecipientState::Pending,
                        last_reply: None,
                        status: None,
                    })
                    .collect(),
                size: u64::try_from(m.body.len()).unwrap_or(u64::MAX),
                attempts: 0,
                next_attempt: now,
                lease_until: 0,
            };
            batch.insert(&message_key(id)[..], rec.encode());
            batch.insert(&due_key(now, id)[..], &[][..]);
            ids.push(QueueId(id));
        }
        self.spool.write_batch(&bodies)?;
        self.spool.sync_dir()?;
        self.tree.apply_batch(batch)?;
        self.sync()?;
        Ok(ids)
    }

    /// The record for `id`.
    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StorageError> {
        self.tree
            .get(message_key(id.0))?
            .map(|v| self.decode(id.0, &v))
            .transpose()
    }

    /// The message body.
    pub fn body(&self, id: QueueId) -> Result<Vec<u8>, StorageError> {
        self.spool.read(id.0)
    }

    /// At most `limit` bytes of the body.
    pub fn body_prefix(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, StorageError> {
        self.spool.read_prefix(id.0, limit)
    }

    /// Every message, in id order.
    pub fn list(&self) -> Result<Vec<(QueueId, MessageRecord)>, StorageError> {
        self.tree
            .scan_prefix(b"m")
            .map(|item| {
                let (k, v) = item?;
                let id = id_from_key(&k).ok_or_else(|| self.corrupt("bad message key"))?;
                Ok((QueueId(id), self.decode(id, &v)?))
            })
            .collect()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.tree.scan_prefix(b"m").count()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.scan_prefix(b"m").next().is_none()
    }

    /// Up to `limit` ids whose next attempt is at or before `now` (ms), oldest first.
    /// Leased messages are not due until their lease expires.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<QueueId>, StorageError> {
        let end = due_key(now, u64::MAX);
        self.tree
            .range(&due_key(0, 0)[..]..=&end[..])
            .take(limit)
            .map(|item| Ok(QueueId(id_from_key(&item?.0).unwrap_or(0))))
            .collect()
    }

    /// Read-modify-write one record, moving its due-index entry; flushed to the OS (not
    /// fsynced) when `flush`.
    fn update(
        &self,
        id: QueueId,
        flush: bool,
        f: impl FnOnce(&mut MessageRecord) -> Result<(), StorageError>,
    ) -> Result<MessageRecord, StorageError> {
        let guard = self.lock_record(id);
        let mut rec = self
            .get(id)?
            .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        let old_due = rec.next_attempt;
        f(&mut rec)?;
        let mut batch = sled::Batch::default();
        batch.remove(&due_key(old_due, id.0)[..]);
        batch.insert(&due_key(rec.next_attempt, id.0)[..], &[][..]);
        batch.insert(&message_key(id.0)[..], rec.encode());
        self.tree.apply_batch(batch)?;
        drop(guard);
        if flush {
            self.db.flush()?;
        }
        Ok(rec)
    }

    /// The lock for `id`'s read-modify-writes (held around the write, never around a sync).
    fn lock_record(&self, id: QueueId) -> std::sync::MutexGuard<'_, ()> {
        let stripe = usize::try_from(id.0 % RECORD_LOCK_STRIPES as u64).unwrap_or(0);
        self.record_locks[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take a delivery lease until `until` (ms). Returns `None` if another worker holds an
    /// unexpired lease (`now` < its lease) — the caller skips the message.
    pub fn lease(
        &self,
        id: QueueId,
        now: u64,
        until: u64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let mut busy = false;
        // Not flushed: start-up clears every lease, so its durability would buy nothing.
        let rec = self.update(id, false, |rec| {
            if rec.lease_until > now {
                busy = true;
            } else {
                rec.lease_until = until;
                rec.next_attempt = until;
            }
            Ok(())
        })?;
        Ok((!busy).then_some(rec))
    }

    /// Make a message due now without counting an attempt (`queue retry`). Returns false when
    /// a delivery currently holds it (its lease has not expired): it is left alone.
    pub fn retry_now(&self, id: QueueId, now: u64) -> Result<bool, StorageError> {
        let mut busy = false;
        self.update(id, true, |rec| {
            if rec.lease_until > now {
                busy = true;
            } else {
                rec.next_attempt = now;
            }
            Ok(())
        })?;
        Ok(!busy)
    }

    /// Release the lease and set the next attempt; counts an attempt.
    pub fn reschedule(
        &self,
        id: QueueId,
        next_attempt: u64,
    ) -> Result<MessageRecord, StorageError> {
        self.update(id, true, |rec| {
            rec.lease_until = 0;
            rec.next_attempt = next_attempt;
            rec.attempts = rec.attempts.saturating_add(1);
            Ok(())
        })
    }

    /// Record per-recipient outcomes (address, state, last reply and status). When no
    /// recipient is left pending the message is removed; otherwise it stays (the caller
    /// reschedules it).
    pub fn complete(
        &self,
        id: QueueId,
        outcomes: &[RecipientStatus],
    ) -> Result<Completion, StorageError> {
        let guard = self.lock_record(id);
        let mut rec = self
            .get(id)?
            .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        for o in outcomes {
            if let Some(r) = rec.recipients.iter_mut().find(|r| r.address == o.address) {
                r.clone_from(o);
            }
        }
        let mut batch = sled::Batch::default();
        if rec.pending().next().is_none() {
            // Nothing left to deliver: remove the record in the same batch (one write, one
            // shared fsync), then the body.
            batch.remove(&due_key(rec.next_attempt, id.0)[..]);
            batch.remove(&message_key(id.0)[..]);
            self.tree.apply_batch(batch)?;
            drop(guard);
            self.sync()?;
            self.spool.remove(id.0)?;
            Ok(Completion::Removed)
        } else {
            batch.insert(&message_key(id.0)[..], rec.encode());
            self.tree.apply_batch(batch)?;
            drop(guard);
            self.db.flush()?;
            Ok(Completion::Pending)
        }
    }

    /// Remove a message: the record removal is made durable, then the body is deleted.
    /// Removing a missing message is not an error.
    pub fn remove(&self, id: QueueId) -> Result<(), StorageError> {
        let guard = self.lock_record(id);
        if let Some(rec) = self.get(id)? {
            let mut batch = sled::Batch::default();
            batch.remove(&due_key(rec.next_attempt, id.0)[..]);
            batch.remove(&message_key(id.0)[..]);
            self.tree.apply_batch(batch)?;
            drop(guard);
            self.sync()?;
        }
        self.spool.remove(id.0)
    }

    /// Approximate bytes used by sled on disk (space amplification runs 2–3×).
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }
}
