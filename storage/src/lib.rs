//! `amtp-storage` — the relay's durable message queue.
//!
//! A message the relay has answered `250` to must survive `kill -9` and power loss. sled 0.34
//! alone does not give that (its `flush()` is `sync_file_range`, large values go to blob
//! files that are never fsynced, directories are never fsynced), so this crate makes it true
//! itself: message bodies are appended to spool segment files that are fdatasynced (and their
//! directory fsynced when a segment is new),
//! the envelope goes into sled in one atomic batch, then sled is flushed and its log file
//! fsynced through our own handle. Only then does the caller learn the queue id.
//!
//! The API is narrow and synchronous; it never touches actix or tokio. The queue actor runs
//! it on its own thread through [`committer::Committer`], which batches enqueues from many
//! sessions into one flush (group commit).
//!
//! # Layout
//! - [`record`] — the on-disk envelope record (version byte, per-recipient status).
//! - [`spool`] — bodies appended to segment files, and the fsync discipline.
//! - [`index`] — the due order, leases and body locations, in memory.
//! - [`queue`] — [`Queue`], the store: enqueue, due, lease, complete, reschedule, remove;
//!   [`queue::compaction`] moves the last live bodies out of sparse segments.
//! - [`census`] — messages per state (ready, deferred, delivering), kept current without scans.
//! - [`committer`] — the group-commit thread and its bounded submission channel.
//! - [`error`] — [`StorageError`].
#![forbid(unsafe_code)]

pub mod census;
pub mod committer;
pub mod error;
pub mod index;
pub mod queue;
pub mod record;
pub mod spool;

pub use committer::{CommitError, Committer, CommitterConfig, SubmitError};
pub use error::StorageError;
pub use queue::compaction::{CompactionPolicy, CompactionReport};
pub use queue::{Completion, Finish, Health, NewMessage, OpenReport, Queue, QueueId};
pub use record::{
    BodyAt, BodyType, Envelope, MessageRecord, Origin, RecipientState, RecipientStatus,
};

/// Milliseconds since the Unix epoch (the queue's clock unit).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
