//! `amtp-relay queue list|show|stats|retry|delete|bounce|compact`: queue administration.
//!
//! While `serve` runs, sled's lock keeps other processes out of the database, so the command
//! asks the running relay over its admin socket. When no relay answers, it opens the queue
//! directly without repairing anything (for inspection after a crash).

use amtp_storage::{Queue, StorageError};
use anyhow::{Result, bail};
use std::path::Path;

/// Run one query against the relay whose data directory is `data_dir`; returns the text.
/// `hostname` names us in DSNs when no relay runs (`bounce`).
pub fn run(data_dir: &Path, query: &str, hostname: &str) -> Result<String> {
    let socket = data_dir.join("admin.sock");
    if let Some(answer) = amtp_actors::admin::query(&socket, query)? {
        return answer.map_err(|e| anyhow::anyhow!(e));
    }
    let queue_dir = data_dir.join("queue");
    if !queue_dir.join("db").exists() {
        bail!("no relay running and no queue in {}", data_dir.display());
    }
    // Read-only queries change nothing; changing ones open the queue as the relay would.
    let read_only = matches!(
        query.split_whitespace().next(),
        Some("list" | "show" | "stats")
    );
    let opened = if read_only {
        Queue::open_for_inspection(&queue_dir)
    } else {
        Queue::open(&queue_dir).map(|(q, _)| q)
    };
    let queue = match opened {
        Ok(q) => q,
        Err(StorageError::Locked(_)) => bail!(
            "the queue in {} is locked by a running relay, but its admin socket {} does not answer",
            data_dir.display(),
            socket.display()
        ),
        Err(e) => return Err(e.into()),
    };
    amtp_actors::admin::answer(&queue, query, hostname).map_err(|e| anyhow::anyhow!(e))
}
