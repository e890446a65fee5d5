//! Storage errors. Callers branch on them: `Locked` and `Corrupt` stop start-up with a clear
//! message; `BodyMissing` tells delivery that a message can never be sent (it fails it with a
//! DSN) where an `Io` error while reading is worth another try; everything else on the hot
//! path becomes a 451 4.3.0 reply.

use std::path::PathBuf;

/// What went wrong in the queue.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error.
    #[error("queue database error: {}", sled_text(.0))]
    Sled(#[from] sled::Error),
    /// Another process holds the database (sled takes an exclusive lock).
    #[error("queue database {0} is locked by another process (is `amtp-relay serve` running?)")]
    Locked(PathBuf),
    /// The database could not be opened or a record could not be read; we refuse to continue
    /// rather than silently recreate it.
    #[error(
        "queue database {path} is corrupt: {detail}; refusing to start (move it aside and restore from backup, or delete it to start empty)"
    )]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A record failed to decode.
    #[error("queue record {id} cannot be decoded: {detail}")]
    Decode {
        /// Queue id (hex).
        id: String,
        /// Why.
        detail: String,
    },
    /// No such message.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// The message's record is there but its body is not: no body file, no segment file, or
    /// a segment shorter than the record's range (deleted or truncated outside the relay, a
    /// disk fault, a restore from an incomplete backup). Unlike [`StorageError::Io`], trying
    /// again cannot help: the message can never be delivered.
    #[error("the body of message {id} is missing from the spool: {detail}")]
    BodyMissing {
        /// Queue id (hex).
        id: String,
        /// What is missing, with the path.
        detail: String,
    },
}

/// sled shows an I/O error with its `Debug` form; the OS's own words read better in a log
/// line or a readiness probe ("No space left on device (os error 28)").
fn sled_text(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
