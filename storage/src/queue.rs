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

use crate::census::{Census, Counts, state_of};
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
    /// Storage health and what a recovery must clean up.
    health: HealthState,
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
            health: HealthState::default(),
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

    fn reconcile(&self) -> Result<OpenReport, StorageError> {
        let store = self.store()?;
        let mut report = OpenReport {
            recovered: store.db.was_recovered(),
            ..OpenReport::default()
        };
        let now = crate::now_ms();
        let mut batch = sled::Batch::default();
        let mut known = std::collections::HashSet::new();
        for item in store.tree.scan_prefix(b"m") {
            let (key, value) = item?;
            let id = id_from_key(&key).ok_or_else(|| self.corrupt("bad message key"))?;
            let mut rec = self.decode(id, &value)?;
            known.insert(id);
            report.messages += 1;
            let was_leased = rec.lease_until != 0;
            if was_leased {
                batch.remove(&due_key(rec.next_attempt, id)[..]);
                rec.lease_until = 0;
                rec.next_attempt = now;
                batch.insert(&due_key(now, id)[..], &[][..]);
                batch.insert(&message_key(id)[..], rec.encode());
                report.leases_reset += 1;
            }
            self.census.add(state_of(&rec), id, rec.received_at);
        }
        store.tree.apply_batch(batch)?;
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
        self.sync(&store)?;
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
        *slot = Some(store);
        drop(slot);
        tracing::warn!(path = %self.db_path.display(), "queue database reopened after a write failure");
        self.health.broken.store(false, Ordering::Release);
        let forgot = self.forget_refused();
        // Updates that were not yet durable (leases are never flushed) may be gone after the
        // reopen: count the records again rather than trust the census.
        self.recount()?;
        forgot
    }

    /// Rebuild the census from the records (after a reopen; a scan, so never per message).
    fn recount(&self) -> Result<(), StorageError> {
        let store = self.store()?;
        let mut counts = Counts::default();
        let mut arrivals = std::collections::BTreeMap::new();
        for item in store.tree.scan_prefix(b"m") {
            let (key, value) = item?;
            let id = id_from_key(&key).ok_or_else(|| self.corrupt("bad message key"))?;
            let rec = self.decode(id, &value)?;
            arrivals.insert(id, rec.received_at);
            match state_of(&rec) {
                crate::census::State::Ready => counts.ready += 1,
                crate::census::State::Deferred => counts.deferred += 1,
                crate::census::State::Delivering => counts.delivering += 1,
            }
        }
        self.census.set(counts, arrivals);
        Ok(())
    }

    /// Remove the records of refused enqueues that reached the log before the failure.
    fn forget_refused(&self) -> Result<(), StorageError> {
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
            let store = self.store()?;
            let mut batch = sled::Batch::default();
            let mut found = 0usize;
            for &id in &refused {
                if let Some(rec) = self.get_in(&store, QueueId(id))? {
                    batch.remove(&due_key(rec.next_attempt, id)[..]);
                    batch.remove(&message_key(id)[..]);
                    found += 1;
                }
            }
            if found > 0 {
                store.tree.apply_batch(batch)?;
                self.sync(&store)?;
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

    /// Store messages durably; returns their ids in order. Bodies synced concurrently, one
    /// directory fsync, one sled batch and one flush+fsync for the whole batch (group commit).
    ///
    /// On failure the batch's body files are deleted and storage is unhealthy until a later
    /// enqueue (or [`Queue::recover`]) succeeds; a database failure reopens the database
    /// first.
    pub fn enqueue_batch(&self, messages: &[NewMessage]) -> Result<Vec<QueueId>, StorageError> {
        self.reopen_if_broken()?;
        let store = self.store()?;
        let mut ids = Vec::with_capacity(messages.len());
        let now = crate::now_ms();
        let result = self.enqueue_in(&store, messages, &mut ids, now);
        drop(store);
        match result {
            Ok(()) => {
                self.succeeded();
                for id in &ids {
                    self.census.add(crate::census::State::Ready, id.0, now);
                }
                Ok(ids)
            }
            Err(e) => {
                let e = self.failed(e);
                // None of these was acknowledged: free their space now, and drop their
                // records if they reached the database's log before it failed.
                for id in &ids {
                    if let Err(e) = self.spool.remove(id.0) {
                        tracing::warn!(error = %e, "removing the body of a refused message");
                    }
                }
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
        now: u64,
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for m in messages {
            let id = match m.id {
                Some(id) => id.0,
                None => store.db.generate_id().map_err(StorageError::from)?,
            };
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
        let bodies: Vec<(u64, &[u8])> = ids
            .iter()
            .zip(messages)
            .map(|(id, m)| (id.0, &m.body[..]))
            .collect();
        self.spool.write_batch(&bodies)?;
        self.spool.sync_dir()?;
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

    /// The record for `id`.
    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, StorageError> {
        let store = self.store()?;
        self.get_in(&store, id)
    }

    fn get_in(&self, store: &Store, id: QueueId) -> Result<Option<MessageRecord>, StorageError> {
        store
            .tree
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
        let store = self.store()?;
        store
            .tree
            .scan_prefix(b"m")
            .map(|item| {
                let (k, v) = item?;
                let id = id_from_key(&k).ok_or_else(|| self.corrupt("bad message key"))?;
                Ok((QueueId(id), self.decode(id, &v)?))
            })
            .collect()
    }

    /// Number of messages (0 while the database cannot be opened).
    pub fn len(&self) -> usize {
        self.store()
            .map_or(0, |store| store.tree.scan_prefix(b"m").count())
    }

    /// Whether the queue is empty (true while the database cannot be opened).
    pub fn is_empty(&self) -> bool {
        self.store()
            .map_or(true, |store| store.tree.scan_prefix(b"m").next().is_none())
    }

    /// Up to `limit` ids whose next attempt is at or before `now` (ms), oldest first.
    /// Leased messages are not due until their lease expires.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<QueueId>, StorageError> {
        let store = self.store()?;
        let end = due_key(now, u64::MAX);
        store
            .tree
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
        let store = self.store()?;
        let guard = self.lock_record(id);
        let mut rec = self
            .get_in(&store, id)?
            .ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        let old_due = rec.next_attempt;
        let old_state = state_of(&rec);
        f(&mut rec)?;
        let mut batch = sled::Batch::default();
        batch.remove(&due_key(old_due, id.0)[..]);
        batch.insert(&due_key(rec.next_attempt, id.0)[..], &[][..]);
        batch.insert(&message_key(id.0)[..], rec.encode());
        store
            .tree
            .apply_batch(batch)
            .map_err(|e| self.failed(e.into()))?;
        self.census.moved(old_state, state_of(&rec));
        drop(guard);
        if flush {
            store.db.flush().map_err(|e| self.failed(e.into()))?;
        }
        Ok(rec)
    }

    /// The lock for `id`'s read-modify-writes (held around the write, never around a sync;
    /// taken after the store's read lock).
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
        let store = self.store()?;
        let guard = self.lock_record(id);
        let mut rec = self
            .get_in(&store, id)?
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
            store
                .tree
                .apply_batch(batch)
                .map_err(|e| self.failed(e.into()))?;
            self.census.remove(state_of(&rec), id.0);
            drop(guard);
            self.sync(&store)?;
            drop(store);
            self.spool.remove(id.0)?;
            Ok(Completion::Removed)
        } else {
            batch.insert(&message_key(id.0)[..], rec.encode());
            store
                .tree
                .apply_batch(batch)
                .map_err(|e| self.failed(e.into()))?;
            drop(guard);
            store.db.flush().map_err(|e| self.failed(e.into()))?;
            Ok(Completion::Pending)
        }
    }

    /// Remove a message: the record removal is made durable, then the body is deleted.
    /// Removing a missing message is not an error.
    pub fn remove(&self, id: QueueId) -> Result<(), StorageError> {
        let store = self.store()?;
        let guard = self.lock_record(id);
        if let Some(rec) = self.get_in(&store, id)? {
            let mut batch = sled::Batch::default();
            batch.remove(&due_key(rec.next_attempt, id.0)[..]);
            batch.remove(&message_key(id.0)[..]);
            store
                .tree
                .apply_batch(batch)
                .map_err(|e| self.failed(e.into()))?;
            self.census.remove(state_of(&rec), id.0);
            drop(guard);
            self.sync(&store)?;
        }
        drop(store);
        self.spool.remove(id.0)
    }

    /// Approximate bytes used by sled on disk (space amplification runs 2–3×).
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.store()?.db.size_on_disk()?)
    }
}

impl Store {
    /// Open sled in `db_path`, mapping its refusals to [`StorageError::Locked`] and
    /// [`StorageError::Corrupt`].
    fn open(db_path: &Path) -> Result<Self, StorageError> {
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
