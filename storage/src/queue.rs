//! [`Queue`]: the durable store behind the relay's `250`.
//!
//! One sled tree holds the records: `m` + id (8 bytes BE) → the encoded [`MessageRecord`],
//! including where its body is (a range of a spool segment, or a file of its own in queues
//! written before segments). Everything else is memory rebuilt from the records at open:
//! the due order and the leases ([`crate::index`]), each segment's live messages
//! ([`crate::spool`]) and the census. So a message costs two database writes: its record at
//! enqueue, and its removal (or its update, when recipients remain) at completion.
//!
//! Sparse segments (a few long-deferred messages among delivered ones) are compacted by
//! [`compaction`]: their live bodies are copied to the open segment and their records
//! repointed, so that the old segment leaves with its last message.
//!
//! A lease is in memory only: it moves the message to the lease's expiry in the due order and
//! marks it as being delivered. If the worker that holds it dies, the message simply becomes
//! due again when the lease runs out; a restart has no leases at all (no worker can hold one).
//!
//! # Contract per method
//! - [`Queue::enqueue_batch`]: on `Ok`, every message (body and envelope) is on stable storage;
//!   on `Err`, none is acknowledged (some may still appear after a restart; the caller said 451
//!   so the client retries — a possible duplicate, never a loss).
//! - [`Queue::lease`]: no write at all — nothing of a lease outlives the process.
//! - [`Queue::reschedule`], and [`Queue::complete_batch`] when no message of the batch is
//!   removed: flushed to the OS (survive a process crash); a lost update after power loss
//!   means one more delivery attempt.
//! - Every read-modify-write of a record holds that record's lock (striped by id), so an update
//!   racing a removal finds the record gone instead of writing it back.
//! - [`Queue::remove`], and [`Queue::complete_batch`] removing messages: the record removals
//!   (one sled batch for the whole batch) are fsynced before any of their bodies is released.
//!   A crash in between leaves bodies no record refers to, which [`Queue::open`] deletes; a
//!   crash before leaves the messages queued, delivered again (a duplicate, never a loss, and
//!   never forever). Concurrent callers share fsyncs (see [`Queue::sync`]): the slowest step
//!   of delivery is paid once per group, not per message.

pub mod compaction;

use crate::census::{Census, Counts, State, state_of};
use crate::error::StorageError;
use crate::index::{Index, Slot};
use crate::record::{BodyAt, Envelope, MessageRecord, RecipientState, RecipientStatus};
use crate::spool::{self, Spool};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Its id, when allocated before the commit ([`Queue::new_id`]) so that the Received
    /// header, the 250 reply and the log name the same id; `None` allocates one at commit.
    pub id: Option<QueueId>,
    /// Sender, MPC and origin.
    pub envelope: Envelope,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// The complete message (headers, including our Received, and body), CRLF line endings.
    /// A shared buffer: the session, the spool write and delivery hold the same bytes.
    pub body: bytes::Bytes,
}

/// What [`Queue::open`] found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Messages in the queue.
    pub messages: usize,
    /// Leases cleared: records an older build wrote while delivering them (this build keeps
    /// leases in memory only).
    pub leases_reset: usize,
    /// Body files of the one-file-per-body layout without a record (crash between body write
    /// and commit), deleted.
    pub orphans_removed: usize,
    /// Segments no record refers to (a crash between a batch's body write and its commit, or
    /// between its last message's removal and the segment's deletion), deleted.
    pub segments_removed: usize,
    /// Records whose body is missing — no file, no segment, or a segment too short for its
    /// range (should never happen: a file deleted or truncated outside the relay, a disk
    /// fault, an incomplete restore). Kept here; delivery fails each of them on its next
    /// attempt ([`StorageError::BodyMissing`]) with a DSN to its sender.
    pub missing_bodies: Vec<QueueId>,
    /// sled said it recovered an existing database.
    pub recovered: bool,
}

/// One message's delivery results, for [`Queue::complete_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The message.
    pub id: QueueId,
    /// Per-recipient outcomes (address, state, last reply and status).
    pub outcomes: Vec<RecipientStatus>,
    /// When recipients remain pending: release the lease, count an attempt and try again at
    /// this time (ms), as [`Queue::reschedule`]; `None` leaves schedule and lease as they are.
    pub retry_at: Option<u64>,
}

/// The outcome of [`Queue::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every recipient is final; the message was removed.
    Removed,
    /// Some recipients are still pending.
    Pending,
}

/// Whether the queue's storage works, as last seen (see [`Queue::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last write succeeded.
    Healthy,
    /// The last write failed; the text says why (for example "No space left on device").
    Unhealthy(String),
}

/// The queue: a sled database plus a spool directory.
#[derive(Debug)]
pub struct Queue {
    /// The sled handles. `None` only while a reopen has failed (every call then errors until
    /// one succeeds). Write operations hold the read side across their write *and* its sync,
    /// so a reopen (the write side) never falls between the two.
    store: std::sync::RwLock<Option<Store>>,
    spool: Spool,
    db_path: PathBuf,
    /// Changes applied so far that may need an fsync (a counter, for sharing fsyncs).
    writes: std::sync::atomic::AtomicU64,
    /// The `writes` value covered by the last completed fsync; held while syncing.
    synced: std::sync::Mutex<u64>,
    /// Serialises read-modify-writes of one record (striped by id): without it, an update
    /// that read a record just before a removal would write it back after the removal.
    /// Always taken after the store's read lock, never before.
    record_locks: Vec<std::sync::Mutex<()>>,
    /// Messages per state, updated with every change (read by metrics without a scan).
    census: Census,
    /// The due order, leases and body locations (see [`crate::index`]). Taken after a
    /// record's lock, held only for the in-memory change.
    index: std::sync::Mutex<Index>,
    /// Storage health and what a recovery must clean up.
    health: HealthState,
    /// Compaction of sparse segments (see [`compaction`]).
    compactor: compaction::Compactor,
}

/// sled 0.34 keeps the first I/O error of its log writer for good: every later write fails,
/// even after space returns. So a failed database write marks the store broken, and the next
/// [`Queue::enqueue_batch`] or [`Queue::recover`] reopens it (recovery from its own log, as
/// after a crash) before trying again.
#[derive(Debug, Default)]
struct HealthState {
    /// A database write or sync failed: reopen before the next write.
    broken: std::sync::atomic::AtomicBool,
    /// The last write failed (read without locking by [`Queue::is_healthy`]).
    unhealthy: std::sync::atomic::AtomicBool,
    /// Why, for [`Queue::health`].
    reason: std::sync::Mutex<String>,
    /// Ids of refused enqueues whose records may have reached the database's log: removed
    /// after the reopen, so that a message answered 451 does not come back.
    refused: std::sync::Mutex<Vec<u64>>,
}

/// One generation of sled handles (replaced whole by a reopen).
#[derive(Debug)]
struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// Our own handle on sled's log file: `sync_all` on it turns sled's `sync_file_range`
    /// into a real fsync (file data and metadata).
    log_file: File,
}

/// A read lock on the current [`Store`].
struct StoreRef<'a>(std::sync::RwLockReadGuard<'a, Option<Store>>);

impl std::ops::Deref for StoreRef<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        // Invariant: a StoreRef is only built over `Some` (see `Queue::store`).
        self.0.as_ref().expect("StoreRef over an open store")
    }
}

/// Stripes of [`Queue::record_locks`]: enough that unrelated messages rarely share one.
const RECORD_LOCK_STRIPES: usize = 64;

fn message_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'm';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Encode `rec` as stored: leases are never written (they live in the index).
fn stored(rec: &mut MessageRecord, at: BodyAt) -> Vec<u8> {
    let lease = std::mem::take(&mut rec.lease_until);
    let bytes = rec.encode_at(at);
    rec.lease_until = lease;
    bytes
}

/// How [`Queue::load`] treats what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Start-up: repair (reset old leases, drop the old due index, delete orphans).
    Open,
    /// `queue list` on a stopped relay: show what is there, change nothing.
    Inspect,
    /// After reopening the database in-process: rebuild, keeping this process's leases.
    Reopen,
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
        let report = queue.load(Load::Open)?;
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
        let queue = Self::open_raw(dir)?;
        queue.load(Load::Inspect)?;
        Ok(queue)
    }

    fn open_raw(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError::io(format!("creating queue directory {}", dir.display()), e)
        })?;
        let db_path = dir.join("db");
        let spool = Spool::open(dir.join("spool"))?;
        let store = Store::open(&db_path)?;
        // Make the database's own directory entries durable once (sled never fsyncs them).
        spool::sync_dir(&db_path)?;
        spool::sync_dir(dir)?;
        let queue = Self {
            store: std::sync::RwLock::new(Some(store)),
            spool,
            db_path,
            writes: std::sync::atomic::AtomicU64::new(0),
            synced: std::sync::Mutex::new(0),
            record_locks: (0..RECORD_LOCK_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
            census: Census::default(),
            index: std::sync::Mutex::default(),
            health: HealthState::default(),
            compactor: compaction::Compactor::default(),
        };
        Ok(queue)
    }

    /// The current store, read-locked. Fails while a reopen has failed.
    fn store(&self) -> Result<StoreRef<'_>, StorageError> {
        let guard = self
            .store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            return Err(StorageError::io(
                format!("reopening queue database {}", self.db_path.display()),
                std::io::Error::other(self.reason()),
            ));
        }
        Ok(StoreRef(guard))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read every record once and rebuild what memory keeps (due order, body locations,
    /// segment live counts, census); at [`Load::Open`] also repair what an older build or a
    /// crash left: leases written to records, the old due-index keys, bodies and segments no
    /// record refers to. Records whose body is missing are reported, never deleted.
    fn load(&self, mode: Load) -> Result<OpenReport, StorageError> {
        let store = self.store()?;
        self.load_from(&store, mode)
    }

    /// [`load`](Self::load) from `store`, which the caller holds (a reopen holds the write
    /// lock, so that no write falls between the scan and the installation of its results).
    fn load_from(&self, store: &Store, mode: Load) -> Result<OpenReport, StorageError> {
        let mut report = OpenReport {
            recovered: store.db.was_recovered(),
            ..OpenReport::default()
        };
        let repair = mode == Load::Open;
        let now = crate::now_ms();
        let mut batch = sled::Batch::default();
        let mut fixes = 0usize;
        let mut index = Index::default();
        let mut counts = Counts::default();
        let mut arrivals = BTreeMap::new();
        let mut live: HashMap<u64, spool::LiveCount> = HashMap::new();
        let kept_leases: HashMap<u64, u64> = if mode == Load::Reopen {
            self.index()
                .iter()
                .filter(|(_, s)| s.lease_until != 0)
                .map(|(id, s)| (id, s.lease_until))
                .collect()
        } else {
            HashMap::new()
        };
        for item in store.tree.scan_prefix(b"m") {
            let (key, value) = item?;
            let id = id_from_key(&key).ok_or_else(|| self.corrupt("bad message key"))?;
            let (mut rec, at) = self.decode(id, &value)?;
            report.messages += 1;
            if rec.lease_until != 0 && repair {
                rec.lease_until = 0;
                rec.next_attempt = now;
                batch.insert(&key, rec.encode_at(at));
                fixes += 1;
                report.leases_reset += 1;
            }
            if let Some(&until) = kept_leases.get(&id) {
                rec.lease_until = until;
            }
            if let BodyAt::Segment { segment, len, .. } = at {
                let c = live.entry(segment).or_default();
                c.count += 1;
                c.bytes += len;
            }
            index.insert(
                id,
                Slot {
                    next_attempt: rec.next_attempt,
                    lease_until: rec.lease_until,
                    body: at,
                },
            );
            arrivals.insert(id, rec.received_at);
            match state_of(&rec) {
                State::Ready => counts.ready += 1,
                State::Deferred => counts.deferred += 1,
                State::Delivering => counts.delivering += 1,
            }
        }
        if repair {
            // The due index of older builds: the order is kept in memory now.
            for item in store.tree.scan_prefix(b"d") {
                batch.remove(item?.0);
                fixes += 1;
            }
            if fixes > 0 {
                store.tree.apply_batch(batch)?;
            }
        }
        // One-file bodies (older builds): orphans deleted, missing ones reported.
        let files: HashSet<u64> = self.spool.ids()?.into_iter().collect();
        if repair {
            for &id in &files {
                if !matches!(
                    index.get(id),
                    Some(Slot {
                        body: BodyAt::File,
                        ..
                    })
                ) {
                    self.spool.remove(id)?;
                    report.orphans_removed += 1;
                }
            }
        }
        let spooled = self.spool.reconcile(live, repair)?;
        report.segments_removed = spooled.segments_removed;
        if report.orphans_removed + report.segments_removed > 0 {
            self.spool.sync_dir()?;
        }
        report.missing_bodies = index
            .iter()
            .filter(|(id, slot)| match slot.body {
                BodyAt::File => !files.contains(id),
                BodyAt::Segment {
                    segment,
                    offset,
                    len,
                } => spooled
                    .lengths
                    .get(&segment)
                    .is_none_or(|&have| have < offset + len),
            })
            .map(|(id, _)| QueueId(id))
            .collect();
        report.missing_bodies.sort();
        self.census.set(counts, arrivals);
        *self.index() = index;
        if repair {
            self.sync(store)?;
        }
        Ok(report)
    }

    fn corrupt(&self, detail: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.db_path.clone(),
            detail: detail.into(),
        }
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<(MessageRecord, BodyAt), StorageError> {
        MessageRecord::decode_at(bytes).map_err(|detail| StorageError::Decode {
            id: QueueId(id).to_string(),
            detail,
        })
    }

    /// Storage health as last seen, without I/O: [`Health::Unhealthy`] with the error's text
    /// from the moment a write fails until a write (or [`Queue::recover`]'s probe) succeeds.
    pub fn health(&self) -> Health {
        if self.is_healthy() {
            Health::Healthy
        } else {
            Health::Unhealthy(self.reason())
        }
    }

    /// Whether the last write succeeded (one atomic load: cheap enough for every message).
    pub fn is_healthy(&self) -> bool {
        !self
            .health
            .unhealthy
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn reason(&self) -> String {
        self.health
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Note a failed write: unhealthy with `e`'s text; a database failure also marks the store
    /// for reopening (sled keeps its I/O error until then).
    fn failed(&self, e: StorageError) -> StorageError {
        let database = matches!(e, StorageError::Sled(_));
        self.note_failure(e, database)
    }

    fn note_failure(&self, e: StorageError, database: bool) -> StorageError {
        use std::sync::atomic::Ordering;
        if database {
            self.health.broken.store(true, Ordering::Release);
        }
        *self
            .health
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
        self.health.unhealthy.store(true, Ordering::Release);
        e
    }

    fn succeeded(&self) {
        self.health
            .unhealthy
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Try to bring unhealthy storage back, without waiting for a message to do it: reopen
    /// the database if a write broke it, then prove that the spool and the database can be
    /// written and synced. Healthy again on success. Cheap when already healthy (no I/O).
    pub fn recover(&self) -> Result<(), StorageError> {
        if self.is_healthy() {
            return Ok(());
        }
        self.reopen_if_broken()?;
        let result = self.spool.probe().and_then(|()| {
            let store = self.store()?;
            store.db.flush()?;
            self.sync(&store)
        });
        match result {
            Ok(()) => {
                self.succeeded();
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// If a database write failed, drop the sled handles and open them again (sled recovers
    /// from its log as after a crash), then remove what refused enqueues may have left.
    fn reopen_if_broken(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        if !self.health.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = self
            .store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.health.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        // The old handles must be gone before the new open: sled holds a file lock.
        drop(slot.take());
        let store = Store::open(&self.db_path).map_err(|e| self.failed(e))?;
        tracing::warn!(path = %self.db_path.display(), "queue database reopened after a write failure");
        // Cleared before the syncs below, which refuse to run while it is set; no other
        // thread writes until the write lock is dropped.
        self.health.broken.store(false, Ordering::Release);
        // Still under the write lock: the refused records' removal and the rebuild of what
        // memory keeps (index, census, segment live counts) see the database as it is, and no
        // enqueue or completion can fall between the scan and the installation of its result
        // (a completion released between them would count a segment's message twice, and the
        // segment could be deleted while a record still points into it).
        let forgot = self.forget_refused_in(&store);
        // Updates that were not yet durable may be gone after the reopen: rebuild what memory
        // keeps from the records rather than trust it (this process's leases stay).
        let loaded = self.load_from(&store, Load::Reopen);
        *slot = Some(store);
        drop(slot);
        loaded?;
        forgot
    }

    /// Remove the records of refused enqueues that reached the log before the failure, from
    /// `store` (the reopened database, not yet published).
    fn forget_refused_in(&self, store: &Store) -> Result<(), StorageError> {
        let refused: Vec<u64> = std::mem::take(
            &mut *self
                .health
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if refused.is_empty() {
            return Ok(());
        }
        let result = (|| {
            let mut batch = sled::Batch::default();
            let mut found = 0usize;
            for &id in &refused {
                if store.tree.contains_key(message_key(id))? {
                    batch.remove(&message_key(id)[..]);
                    found += 1;
                }
            }
            if found > 0 {
                store.tree.apply_batch(batch)?;
                self.sync(store)?;
                tracing::info!(records = found, "removed records of enqueues answered 451");
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Keep them for the next attempt.
            self.health
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(refused);
            return Err(self.failed(e));
        }
        Ok(())
    }

    /// Flush sled and fsync its log file: after this returns, every batch this thread applied
    /// to `store` before calling is durable.
    ///
    /// Group fsync: callers that arrive while another thread is syncing wait for it, and
    /// return at once if a sync that began after their own write has completed meanwhile. A
    /// sync covers every write counted before it starts, because each write is applied before
    /// it is counted. Callers hold the store's read lock from their write through this sync,
    /// so every write a sync covers went to the same store.
    fn sync(&self, store: &Store) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let mine = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *synced >= mine {
            return Ok(());
        }
        // After a failed fsync, a second fsync of the same file can succeed although the
        // pages the first one failed to write are lost (Linux reports a writeback error once
        // per open file): nothing is durable again until the database has been reopened.
        if self.health.broken.load(Ordering::Acquire) {
            return Err(StorageError::io(
                format!("fsync of {}", self.db_path.join("db").display()),
                std::io::Error::other(format!(
                    "an earlier write failed ({}); the database is reopened first",
                    self.reason()
                )),
            ));
        }
        let covers = self.writes.load(Ordering::SeqCst);
        let result = store.db.flush().map_err(StorageError::from).and_then(|_| {
            store.log_file.sync_all().map_err(|e| {
                StorageError::io(format!("fsync of {}", self.db_path.join("db").display()), e)
            })
        });
        match result {
            Ok(()) => {
                *synced = covers;
                Ok(())
            }
            // After a failed fsync the kernel may have dropped the dirty pages: the database
            // is reopened (and re-read from disk) before it is trusted again.
            Err(e) => Err(self.note_failure(e, true)),
        }
    }

    /// Store messages durably; returns their ids in order. The bodies appended to the open
    /// spool segment with one `fdatasync`, one sled batch and one flush+fsync for the whole
    /// batch (group commit).
    ///
    /// On failure the batch's bodies are dropped from the spool and storage is unhealthy until
    /// a later enqueue (or [`Queue::recover`]) succeeds; a database failure reopens the
    /// database first.
    pub fn enqueue_batch(&self, messages: &[NewMessage]) -> Result<Vec<QueueId>, StorageError> {
        self.reopen_if_broken()?;
        let store = self.store()?;
        let mut ids = Vec::with_capacity(messages.len());
        let mut bodies = Vec::new();
        let now = crate::now_ms();
        let result = self.enqueue_in(&store, messages, &mut ids, &mut bodies, now);
        match result {
            Ok(()) => {
                drop(store);
                self.succeeded();
                let mut index = self.index();
                for (id, at) in ids.iter().zip(&bodies) {
                    index.insert(
                        id.0,
                        Slot {
                            next_attempt: now,
                            lease_until: 0,
                            body: *at,
                        },
                    );
                    self.census.add(State::Ready, id.0, now);
                }
                Ok(ids)
            }
            Err(e) => {
                // None of these was acknowledged: free their space now (under the store's
                // lock, so that a reopen's recount of the segments never falls in between),
                // and drop their records if they reached the database's log before it failed.
                self.spool.abandon(&bodies);
                drop(store);
                let e = self.failed(e);
                if self
                    .health
                    .broken
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    self.health
                        .refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(ids.iter().map(|id| id.0));
                }
                Err(e)
            }
        }
    }

    fn enqueue_in(
        &self,
        store: &Store,
        messages: &[NewMessage],
        ids: &mut Vec<QueueId>,
        bodies: &mut Vec<BodyAt>,
        now: u64,
    ) -> Result<(), StorageError> {
        for m in messages {
            let id = match m.id {
                Some(id) => id.0,
                None => store.db.generate_id().map_err(StorageError::from)?,
            };
            ids.push(QueueId(id));
        }
        let Some(first) = ids.first() else {
            return Ok(());
        };
        let contents: Vec<&[u8]> = messages.iter().map(|m| &m.body[..]).collect();
        let (at, dir_owed) = self.spool.append_batch(first.0, &contents)?;
        *bodies = at;
        if dir_owed {
            self.spool.sync_dir_of(bodies)?;
        }
        let mut batch = sled::Batch::default();
        for ((m, id), at) in messages.iter().zip(ids.iter()).zip(bodies.iter()) {
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
            batch.insert(&message_key(id.0)[..], rec.encode_at(*at));
        }
        store.tree.apply_batch(batch).map_err(StorageError::from)?;
        self.sync(store)
    }

    /// Allocate a queue id before the message is committed (never reused, increasing).
    pub fn new_id(&self) -> Result<QueueId, StorageError> {
        let store = self.store()?;
        Ok(QueueId(store.db.generate_id()?))
    }

    /// Messages per state, without touching the disk.
    pub fn census(&self) -> Counts {
        self.census.counts()
    }

    /// When the oldest message arrived (ms since the epoch), or `None` when the queue is
    /// empty. From memory (the census), never a scan of sled.
    pub fn oldest_received_at(&self) -> Option<u64> {
        self.census.oldest_arrival()
    }

    /// The record for `id` (with this process's lease on it, if any).
    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StorageError> {
        let store = self.store()?;
        Ok(self.get_in(&store, id)?.map(|(rec, _)| rec))
    }

    /// The record for `id` with its lease from the index, and where its body is.
    fn get_in(
        &self,
        store: &Store,
        id: QueueId,
    ) -> Result<Option<(MessageRecord, BodyAt)>, StorageError> {
        let Some(bytes) = store.tree.get(message_key(id.0))? else {
            return Ok(None);
        };
        let (mut rec, at) = self.decode(id.0, &bytes)?;
        if let Some(slot) = self.index().get(id.0) {
            rec.lease_until = slot.lease_until;
        }
        Ok(Some((rec, at)))
    }

    fn body_at(&self, id: QueueId) -> Result<BodyAt, StorageError> {
        self.index()
            .get(id.0)
            .map(|slot| slot.body)
            .ok_or_else(|| StorageError::NotFound(id.to_string()))
    }

    /// The message body.
    pub fn body(&self, id: QueueId) -> Result<Vec<u8>, StorageError> {
        self.body_prefix(id, usize::MAX)
    }

    /// At most `limit` bytes of the body.
    ///
    /// A message that is not leased may be moved by compaction between looking up where its
    /// body is and reading it, and its old segment deleted: a failed read is retried at the
    /// new location when the message has moved meanwhile (a leased message is never moved).
    pub fn body_prefix(&self, id: QueueId, limit: usize) -> Result<Vec<u8>, StorageError> {
        self.read_body(id, self.body_at(id)?, limit)
    }

    /// Read message `id`'s body, looked up at `at`; again at its new location if it moved
    /// and the read failed (see [`Queue::body_prefix`]).
    fn read_body(
        &self,
        id: QueueId,
        mut at: BodyAt,
        limit: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let mut tries = 0;
        loop {
            match self.spool.read_prefix(id.0, at, limit) {
                Ok(body) => return Ok(body),
                Err(e) => {
                    tries += 1;
                    let now = self.body_at(id)?;
                    if now == at || tries >= 4 {
                        return Err(e);
                    }
                    at = now;
                }
            }
        }
    }

    /// Every message, in id order.
    pub fn list(&self) -> Result<Vec<(QueueId, MessageRecord)>, StorageError> {
        let store = self.store()?;
        let mut out = Vec::new();
        for item in store.tree.scan_prefix(b"m") {
            let (k, v) = item?;
            let id = id_from_key(&k).ok_or_else(|| self.corrupt("bad message key"))?;
            let (mut rec, _) = self.decode(id, &v)?;
            if let Some(slot) = self.index().get(id) {
                rec.lease_until = slot.lease_until;
            }
            out.push((QueueId(id), rec));
        }
        Ok(out)
    }

    /// Number of messages (from memory).
    pub fn len(&self) -> usize {
        self.index().len()
    }

    /// Whether the queue is empty (from memory).
    pub fn is_empty(&self) -> bool {
        self.index().is_empty()
    }

    /// Segment files in the spool and their total size in bytes (queues written before
    /// segments also have one file per body, not counted here).
    pub fn spool_usage(&self) -> Result<(usize, u64), StorageError> {
        self.spool.usage()
    }

    /// Up to `limit` ids whose next attempt is at or before `now` (ms), soonest first.
    /// Leased messages are not due until their lease expires. From memory.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<QueueId>, StorageError> {
        self.due_except(now, limit, &std::collections::HashSet::new())
    }

    /// [`due`](Self::due) without the messages in `skip` (those the caller already holds):
    /// up to `limit` others, however many of `skip` are due before them. A caller that
    /// filtered afterwards would find nothing else once `limit` of its own messages had
    /// outlived their leases, and lease nothing at all.
    pub fn due_except(
        &self,
        now: u64,
        limit: usize,
        skip: &std::collections::HashSet<QueueId>,
    ) -> Result<Vec<QueueId>, StorageError> {
        Ok(self
            .index()
            .due(now, limit, |id| skip.contains(&QueueId(id)))
            .into_iter()
            .map(QueueId)
            .collect())
    }

    /// Read-modify-write one record (the index follows its schedule and lease); flushed to
    /// the OS (not fsynced).
    fn update(
        &self,
        id: QueueId,
        f: impl FnOnce(&mut MessageRecord) -> Result<(), StorageError>,
    ) -> Result<MessageRecord, StorageError> {
        let store = self.store()?;
        let guard = self.lock_record(id);
        let (mut rec, at) = self
            .get_in(&store, id)?
            .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        let old_state = state_of(&rec);
        f(&mut rec)?;
        store
            .tree
            .insert(message_key(id.0), stored(&mut rec, at))
            .map_err(|e| self.failed(e.into()))?;
        self.index().update(id.0, |slot| {
            slot.next_attempt = rec.next_attempt;
            slot.lease_until = rec.lease_until;
        });
        self.census.moved(old_state, state_of(&rec));
        drop(guard);
        store.db.flush().map_err(|e| self.failed(e.into()))?;
        Ok(rec)
    }

    /// The lock for `id`'s read-modify-writes (held around the write, never around a sync;
    /// taken after the store's read lock).
    fn lock_record(&self, id: QueueId) -> std::sync::MutexGuard<'_, ()> {
        self.record_locks[stripe(id)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The locks of every id in `ids`, taken in stripe order (so that two batches never wait
    /// for each other; single-record callers hold one stripe at a time).
    fn lock_records(
        &self,
        ids: impl Iterator<Item = QueueId>,
    ) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ids.map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| {
                self.record_locks[s]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            })
            .collect()
    }

    /// Take a delivery lease until `until` (ms). Returns `None` if another worker holds an
    /// unexpired lease (`now` < its lease), or compaction is moving its body right now — the
    /// caller skips the message. Writes nothing: the lease is in memory (see the module docs).
    pub fn lease(
        &self,
        id: QueueId,
        now: u64,
        until: u64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        let store = self.store()?;
        let _guard = self.lock_record(id);
        let (mut rec, _) = self
            .get_in(&store, id)?
            .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        if rec.lease_until > now {
            return Ok(None);
        }
        let old_state = state_of(&rec);
        rec.lease_until = until;
        {
            // Checked and taken under one index lock: compaction marks only unleased
            // messages, under the same lock.
            let mut index = self.index();
            if index.is_moving(id.0) {
                return Ok(None);
            }
            index.update(id.0, |slot| slot.lease_until = until);
        }
        self.census.moved(old_state, state_of(&rec));
        Ok(Some(rec))
    }

    /// Make a message due now without counting an attempt (`queue retry`). Returns false when
    /// a delivery currently holds it (its lease has not expired): it is left alone.
    pub fn retry_now(&self, id: QueueId, now: u64) -> Result<bool, StorageError> {
        let mut busy = false;
        self.update(id, |rec| {
            if rec.lease_until > now {
                busy = true;
            } else {
                rec.lease_until = 0;
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
        self.update(id, |rec| {
            rec.lease_until = 0;
            rec.next_attempt = next_attempt;
            rec.attempts = rec.attempts.saturating_add(1);
            Ok(())
        })
    }

    /// Release the leases of `postponed` messages and set each one's next attempt (ms)
    /// WITHOUT counting an attempt: nothing was tried (a destination's message rate held them
    /// back, and the queue keeps them on disk rather than the relay in memory). One sled
    /// batch, not synced: a postponement lost to a crash only makes the message due sooner.
    /// Messages removed meanwhile are skipped. Returns how many were postponed.
    pub fn postpone(&self, postponed: &[(QueueId, u64)]) -> Result<usize, StorageError> {
        if postponed.is_empty() {
            return Ok(0);
        }
        let store = self.store()?;
        let guards = self.lock_records(postponed.iter().map(|p| p.0));
        let mut batch = sled::Batch::default();
        let mut updated: Vec<(MessageRecord, u64, State)> = Vec::with_capacity(postponed.len());
        for &(id, until) in postponed {
            let Some((mut rec, at)) = self.get_in(&store, id)? else {
                continue;
            };
            let old_state = state_of(&rec);
            rec.lease_until = 0;
            rec.next_attempt = until;
            batch.insert(&message_key(id.0)[..], stored(&mut rec, at));
            updated.push((rec, id.0, old_state));
        }
        store
            .tree
            .apply_batch(batch)
            .map_err(|e| self.failed(e.into()))?;
        {
            let mut index = self.index();
            for (rec, id, state) in &updated {
                index.update(*id, |slot| {
                    slot.next_attempt = rec.next_attempt;
                    slot.lease_until = rec.lease_until;
                });
                self.census.moved(*state, state_of(rec));
            }
        }
        drop(guards);
        Ok(updated.len())
    }

    /// Record per-recipient outcomes (address, state, last reply and status). When no
    /// recipient is left pending the message is removed; otherwise it stays (the caller
    /// reschedules it). [`Queue::complete_batch`] for one message.
    pub fn complete(
        &self,
        id: QueueId,
        outcomes: &[RecipientStatus],
    ) -> Result<Completion, StorageError> {
        let finish = Finish {
            id,
            outcomes: outcomes.to_vec(),
            retry_at: None,
        };
        self.complete_batch(std::slice::from_ref(&finish))?
            .pop()
            .unwrap_or_else(|| Err(StorageError::NotFound(id.to_string())))
    }

    /// Record the outcomes of many messages at once: every message with no
    /// recipient left pending is removed, the others updated (and rescheduled when their
    /// [`Finish::retry_at`] says so) — one sled batch, then one shared fsync when anything
    /// was removed (else a flush), then the removed messages' bodies are released.
    ///
    /// The outer error is the batch's (nothing or, after a failed sync, everything may be
    /// written); the inner one a message's own (not found: removed meanwhile).
    ///
    /// An id may appear more than once (a lease that expired while its result waited to be
    /// written, and a second attempt's result): the finishes are then applied in rounds of
    /// distinct ids, in order, exactly as separate calls would.
    pub fn complete_batch(
        &self,
        finished: &[Finish],
    ) -> Result<Vec<Result<Completion, StorageError>>, StorageError> {
        let mut seen = std::collections::HashSet::with_capacity(finished.len());
        if finished.iter().all(|f| seen.insert(f.id)) {
            return self.complete_distinct(finished);
        }
        let mut results: Vec<Option<Result<Completion, StorageError>>> =
            (0..finished.len()).map(|_| None).collect();
        let mut left: Vec<usize> = (0..finished.len()).collect();
        while !left.is_empty() {
            seen.clear();
            let (round, rest): (Vec<usize>, Vec<usize>) =
                left.iter().partition(|&&i| seen.insert(finished[i].id));
            let batch: Vec<Finish> = round.iter().map(|&i| finished[i].clone()).collect();
            for (i, r) in round.into_iter().zip(self.complete_distinct(&batch)?) {
                results[i] = Some(r);
            }
            left = rest;
        }
        Ok(results
            .into_iter()
            .zip(finished)
            .map(|(r, f)| r.unwrap_or_else(|| Err(StorageError::NotFound(f.id.to_string()))))
            .collect())
    }

    /// [`complete_batch`](Self::complete_batch) of distinct ids: each record is read once,
    /// changed once and written once.
    fn complete_distinct(
        &self,
        finished: &[Finish],
    ) -> Result<Vec<Result<Completion, StorageError>>, StorageError> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store()?;
        let guards = self.lock_records(finished.iter().map(|f| f.id));
        let mut results = Vec::with_capacity(finished.len());
        let mut batch = sled::Batch::default();
        let mut removed: Vec<(u64, BodyAt, State)> = Vec::new();
        let mut updated: Vec<(MessageRecord, u64, State)> = Vec::new();
        for f in finished {
            let Some((mut rec, at)) = self.get_in(&store, f.id)? else {
                results.push(Err(StorageError::NotFound(f.id.to_string())));
                continue;
            };
            let old_state = state_of(&rec);
            for o in &f.outcomes {
                if let Some(r) = rec.recipients.iter_mut().find(|r| r.address == o.address) {
                    r.clone_from(o);
                }
            }
            if rec.pending().next().is_none() {
                batch.remove(&message_key(f.id.0)[..]);
                removed.push((f.id.0, at, old_state));
                results.push(Ok(Completion::Removed));
            } else {
                if let Some(t) = f.retry_at {
                    rec.lease_until = 0;
                    rec.next_attempt = t;
                    rec.attempts = rec.attempts.saturating_add(1);
                }
                batch.insert(&message_key(f.id.0)[..], stored(&mut rec, at));
                updated.push((rec, f.id.0, old_state));
                results.push(Ok(Completion::Pending));
            }
        }
        store
            .tree
            .apply_batch(batch)
            .map_err(|e| self.failed(e.into()))?;
        {
            let mut index = self.index();
            for &(id, _, state) in &removed {
                index.remove(id);
                self.census.remove(state, id);
            }
            for (rec, id, state) in &updated {
                index.update(*id, |slot| {
                    slot.next_attempt = rec.next_attempt;
                    slot.lease_until = rec.lease_until;
                });
                self.census.moved(*state, state_of(rec));
            }
        }
        drop(guards);
        if removed.is_empty() {
            store.db.flush().map_err(|e| self.failed(e.into()))?;
        } else {
            self.sync(&store)?;
            // Released under the store's lock: a reopen's recount of the segments never
            // falls between the removal and the release.
            let bodies: Vec<(u64, BodyAt)> = removed.iter().map(|r| (r.0, r.1)).collect();
            self.spool.release(&bodies)?;
        }
        Ok(results)
    }

    /// Remove a message: the record removal is made durable, then the body is released.
    /// Removing a missing message is not an error.
    pub fn remove(&self, id: QueueId) -> Result<(), StorageError> {
        let store = self.store()?;
        let guard = self.lock_record(id);
        if let Some((rec, at)) = self.get_in(&store, id)? {
            store
                .tree
                .remove(message_key(id.0))
                .map_err(|e| self.failed(e.into()))?;
            self.index().remove(id.0);
            self.census.remove(state_of(&rec), id.0);
            drop(guard);
            self.sync(&store)?;
            self.spool.release(&[(id.0, at)])
        } else {
            drop(guard);
            // A body file left without its record (idempotent).
            self.spool.remove(id.0)
        }
    }

    /// Approximate bytes used by sled on disk (space amplification runs 2–3×).
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.store()?.db.size_on_disk()?)
    }
}

fn stripe(id: QueueId) -> usize {
    usize::try_from(id.0 % RECORD_LOCK_STRIPES as u64).unwrap_or(0)
}

/// How long [`Store::open`] waits for another handle's file lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    /// Open sled in `db_path`, mapping its refusals to [`StorageError::Locked`] and
    /// [`StorageError::Corrupt`]. A lock is waited for up to [`LOCK_WAIT`]: a database
    /// closed a moment ago (this process's previous handle, or a relay that is just exiting)
    /// holds its file lock until sled's I/O threads have let go of the file.
    fn open(db_path: &Path) -> Result<Self, StorageError> {
        let start = std::time::Instant::now();
        loop {
            match Self::open_once(db_path) {
                Err(StorageError::Locked(_)) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(db_path: &Path) -> Result<Self, StorageError> {
        // Measured (issue 12, docs/PERFORMANCE.md "Storage"): turning sled's background
        // flusher off (we flush and fsync ourselves), `Mode::LowSpace` or a smaller cache made
        // no difference beyond the noise, so sled keeps these settings.
        let config = sled::Config::new()
            .path(db_path)
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
                return Err(StorageError::Locked(db_path.to_path_buf()));
            }
            Ok(Err(sled::Error::Corruption { .. }))
            | Ok(Err(sled::Error::Unsupported(_)))
            | Ok(Err(sled::Error::ReportableBug(_))) => {
                return Err(StorageError::Corrupt {
                    path: db_path.to_path_buf(),
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
                    path: db_path.to_path_buf(),
                    detail,
                });
            }
        };
        let tree = db.open_tree("queue")?;
        let log_path = db_path.join("db");
        let log_file = File::open(&log_path)
            .map_err(|e| StorageError::io(format!("opening {}", log_path.display()), e))?;
        Ok(Self { db, tree, log_file })
    }
}
