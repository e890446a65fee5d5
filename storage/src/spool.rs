//! Message bodies on disk, made durable before the envelope is committed.
//!
//! A commit batch's bodies are appended to one *segment* file (`s` + 16 hex digits), and the
//! segment stays open for the next batches until it holds [`SEGMENT_BYTES`]: one write and
//! one `fdatasync` per batch, and a file created (with its directory fsync) only once per
//! segment, instead of a create, an fsync and an unlink per message. The record says which
//! segment, offset and length ([`BodyAt::Segment`]).
//!
//! Order matters: bodies written and `fdatasync`ed (and the directory fsynced when the
//! segment is new, so its name survives power loss), and only then the sled records that
//! point at them. A crash in between leaves bytes no record refers to: at the end of a segment
//! (ignored, the segment is never appended to again after a restart) or a whole segment no
//! record refers to, which [`crate::Queue::open`] deletes. A record can never point at a body
//! that was not durable.
//!
//! Reclaim: each segment's live messages and live bytes are counted in memory (rebuilt at open
//! from the records); a segment is deleted when its last message is completed or removed (and
//! it is no longer the one being appended to). A message deferred for a long time would keep
//! its whole segment on disk; compaction ([`crate::queue::compaction`]) moves the few live
//! bodies of such sparse segments ([`Spool::victims`]) to the open segment, so that the
//! segment's last message leaves with the move.
//!
//! Queues written before segments keep one file per body (named by the queue id,
//! [`BodyAt::File`]): they are read, and deleted when their message leaves, as before.

use crate::error::StorageError;
use crate::record::BodyAt;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// A segment takes new batches until it holds this much (a batch is never split, so a segment
/// may end larger).
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments: Mutex<Segments>,
}

/// The segment being appended to and every segment's live messages.
#[derive(Debug, Default)]
struct Segments {
    open: Option<OpenSegment>,
    live: HashMap<u64, Live>,
}

/// What is known about one segment in memory.
#[derive(Debug, Clone, Copy)]
struct Live {
    /// Messages whose record points into it.
    count: u64,
    /// Their bytes.
    bytes: u64,
    /// The file's length (bytes no record refers to included).
    len: u64,
    /// When a batch was last appended to it (at open: the file's modification time).
    written: SystemTime,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            count: 0,
            bytes: 0,
            len: 0,
            written: SystemTime::now(),
        }
    }
}

/// Live messages and bytes of one segment, as counted from the records at open.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LiveCount {
    /// Messages.
    pub count: u64,
    /// Their body bytes.
    pub bytes: u64,
}

/// A sparse closed segment worth compacting (see [`Spool::victims`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Victim {
    /// The segment's number.
    pub segment: u64,
    /// Its file's length.
    pub len: u64,
    /// Bytes of it that records still refer to.
    pub live_bytes: u64,
}

#[derive(Debug)]
struct OpenSegment {
    number: u64,
    file: File,
    len: u64,
    /// Whether a directory fsync has succeeded since the file was created: until then its
    /// name may not survive a power loss, whoever appended to it.
    dir_synced: bool,
}

/// What [`Spool::reconcile`] found.
#[derive(Debug, Default)]
pub struct SpoolReport {
    /// Segments no record refers to, deleted.
    pub segments_removed: usize,
    /// Segment files and their lengths (for checking that every record's range is there).
    pub lengths: HashMap<u64, u64>,
}

impl Spool {
    /// Open (creating if needed) the spool directory.
    pub fn open(dir: PathBuf) -> Result<Self, StorageError> {
        fs::create_dir_all(&dir).map_err(|e| {
            StorageError::io(format!("creating spool directory {}", dir.display()), e)
        })?;
        Ok(Self {
            dir,
            segments: Mutex::default(),
        })
    }

    fn segments(&self) -> MutexGuard<'_, Segments> {
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file holding message `id` in the one-file-per-body layout.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// The file of segment `number`.
    pub fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("s{number:016x}"))
    }

    /// Append a batch's bodies to the open segment (a new one, numbered `number`, when none is
    /// open or it is full) and `fdatasync` it. Returns where each body is, and whether the
    /// segment's name is not yet known to be durable (a directory fsync has not succeeded since
    /// it was created — by this caller or by another writer appending to the same segment):
    /// then the caller owes [`Spool::sync_dir_of`] before any record refers to the bodies.
    ///
    /// On error nothing of the batch stays on disk (the segment is cut back to where the batch
    /// began, or deleted if the batch created it), and the segment is no longer appended to:
    /// a full disk must not fill up further with bodies nobody will accept.
    pub fn append_batch(
        &self,
        number: u64,
        bodies: &[&[u8]],
    ) -> Result<(Vec<BodyAt>, bool), StorageError> {
        let mut segs = self.segments();
        if segs.open.as_ref().is_none_or(|s| s.len >= SEGMENT_BYTES) {
            segs.close_open(self);
            let path = self.segment_path(number);
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StorageError::io(format!("creating segment {}", path.display()), e))?;
            segs.open = Some(OpenSegment {
                number,
                file,
                len: 0,
                dir_synced: false,
            });
        }
        let Some(open) = segs.open.as_mut() else {
            unreachable!("a segment was just opened");
        };
        let start = open.len;
        let result = write_bodies(&self.segment_path(open.number), open, bodies);
        match result {
            Ok(at) => {
                let (number, len, owed) = (open.number, open.len, !open.dir_synced);
                let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
                let live = segs.live.entry(number).or_default();
                live.count += at.len() as u64;
                live.bytes += bytes;
                live.len = len;
                live.written = SystemTime::now();
                Ok((at, owed))
            }
            Err(e) => {
                // Cut the batch off, and append to a fresh segment from now on.
                let _ = open.file.set_len(start);
                segs.close_open(self);
                Err(e)
            }
        }
    }

    /// A committed batch whose records failed: forget its bodies, close the segment they were
    /// appended to, and delete a segment left empty.
    ///
    /// The batch is never cut off the end for a later batch to append over it: if its records
    /// reached the database before the failure, they may survive a crash until a reopen removes
    /// them, and must then point at their own bytes, never at a later message's. Its space
    /// comes back with the segment's last live message.
    pub fn abandon(&self, bodies: &[BodyAt]) {
        let mut segs = self.segments();
        let mut counts: HashMap<u64, LiveCount> = HashMap::new();
        for at in bodies {
            if let BodyAt::Segment { segment, len, .. } = *at {
                let c = counts.entry(segment).or_default();
                c.count += 1;
                c.bytes += len;
            }
        }
        for (segment, n) in counts {
            if segs.open.as_ref().is_some_and(|o| o.number == segment) {
                segs.open = None;
            }
            if let Err(e) = segs.release(self, segment, n) {
                tracing::warn!(error = %e, "removing the segment of a refused batch");
            }
        }
    }

    /// The messages at `bodies` are gone for good (their records' removal is durable): delete
    /// their files, and every segment they leave empty (except the one being appended to).
    pub fn release(&self, bodies: &[(u64, BodyAt)]) -> Result<(), StorageError> {
        let mut first_error = None;
        let mut per_segment: HashMap<u64, LiveCount> = HashMap::new();
        for &(id, at) in bodies {
            match at {
                BodyAt::File => {
                    if let Err(e) = self.remove(id) {
                        first_error.get_or_insert(e);
                    }
                }
                BodyAt::Segment { segment, len, .. } => {
                    let c = per_segment.entry(segment).or_default();
                    c.count += 1;
                    c.bytes += len;
                }
            }
        }
        if !per_segment.is_empty() {
            let mut segs = self.segments();
            for (segment, n) in per_segment {
                if let Err(e) = segs.release(self, segment, n) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// At open: take every segment's live count and bytes (from the records), delete segments
    /// no record refers to when `delete`, and report the lengths of the others.
    pub fn reconcile(
        &self,
        counted: HashMap<u64, LiveCount>,
        delete: bool,
    ) -> Result<SpoolReport, StorageError> {
        let mut report = SpoolReport::default();
        let mut live = HashMap::with_capacity(counted.len());
        for (number, len, written) in self.segment_files()? {
            if let Some(c) = counted.get(&number) {
                live.insert(
                    number,
                    Live {
                        count: c.count,
                        bytes: c.bytes,
                        len,
                        written,
                    },
                );
            }
            if counted.contains_key(&number) || !delete {
                report.lengths.insert(number, len);
            } else {
                remove_file(&self.segment_path(number))?;
                report.segments_removed += 1;
            }
        }
        // Records pointing at a missing segment (reported by the caller) keep a count, so
        // that nothing is released below zero.
        for (&number, c) in &counted {
            live.entry(number).or_insert(Live {
                count: c.count,
                bytes: c.bytes,
                ..Live::default()
            });
        }
        let mut segs = self.segments();
        segs.open = None;
        segs.live = live;
        Ok(report)
    }

    /// Closed segments whose live bytes are below `max_live_percent` % of their file and
    /// which nothing was appended to for `min_age`, sparsest first, as many as needed to
    /// copy about `max_bytes` (at least one when any qualifies). The open segment is never a
    /// victim.
    pub fn victims(&self, max_live_percent: u64, min_age: Duration, max_bytes: u64) -> Vec<Victim> {
        let now = SystemTime::now();
        let segs = self.segments();
        let open = segs.open.as_ref().map(|o| o.number);
        let mut found: Vec<Victim> = segs
            .live
            .iter()
            .filter(|&(&number, live)| {
                Some(number) != open
                    && live.count > 0
                    && live.len > 0
                    && u128::from(live.bytes) * 100
                        < u128::from(live.len) * u128::from(max_live_percent)
                    && now
                        .duration_since(live.written)
                        .is_ok_and(|age| age >= min_age)
            })
            .map(|(&segment, live)| Victim {
                segment,
                len: live.len,
                live_bytes: live.bytes,
            })
            .collect();
        // Sparsest first: the most space back per byte copied.
        found.sort_by(|a, b| {
            (u128::from(a.live_bytes) * u128::from(b.len))
                .cmp(&(u128::from(b.live_bytes) * u128::from(a.len)))
                .then(a.segment.cmp(&b.segment))
        });
        let mut copied = 0u64;
        let mut chosen = Vec::new();
        for v in found {
            if !chosen.is_empty() && copied.saturating_add(v.live_bytes) > max_bytes {
                break;
            }
            copied = copied.saturating_add(v.live_bytes);
            chosen.push(v);
        }
        chosen
    }

    /// Whether segment `number` is still kept (some record refers to it, or it is open).
    pub fn has_segment(&self, number: u64) -> bool {
        let segs = self.segments();
        segs.live.contains_key(&number) || segs.open.as_ref().is_some_and(|o| o.number == number)
    }

    /// Every segment's live messages and bytes (for tests: compare with the records).
    pub fn live_segments(&self) -> Vec<(u64, LiveCount)> {
        self.segments()
            .live
            .iter()
            .map(|(&n, l)| {
                (
                    n,
                    LiveCount {
                        count: l.count,
                        bytes: l.bytes,
                    },
                )
            })
            .collect()
    }

    /// Live messages and bytes of segment `number` (for tests and tools).
    pub fn live(&self, number: u64) -> Option<LiveCount> {
        self.segments().live.get(&number).map(|l| LiveCount {
            count: l.count,
            bytes: l.bytes,
        })
    }

    /// Segment files, their lengths and modification times.
    fn segment_files(&self) -> Result<Vec<(u64, u64, SystemTime)>, StorageError> {
        let ctx = || format!("listing spool directory {}", self.dir.display());
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| StorageError::io(ctx(), e))? {
            let entry = entry.map_err(|e| StorageError::io(ctx(), e))?;
            if let Some(number) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix('s'))
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            {
                let meta = entry.metadata().map_err(|e| StorageError::io(ctx(), e))?;
                let written = meta.modified().unwrap_or_else(|_| SystemTime::now());
                out.push((number, meta.len(), written));
            }
        }
        Ok(out)
    }

    /// Segment files and their total size in bytes (for tests and tools).
    pub fn usage(&self) -> Result<(usize, u64), StorageError> {
        let files = self.segment_files()?;
        Ok((files.len(), files.iter().map(|f| f.1).sum()))
    }

    /// Prove the spool can take a write again: write, `fdatasync` and delete a small file
    /// (its name is not a queue id, so a crash in between leaves nothing the queue reads).
    pub fn probe(&self) -> Result<(), StorageError> {
        use std::io::Write;
        let path = self.dir.join("probe.tmp");
        let ctx = || format!("writing spool probe {}", path.display());
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(&[0u8; 4096])?;
                f.sync_data()
            });
        let removed = fs::remove_file(&path);
        written.map_err(|e| StorageError::io(ctx(), e))?;
        removed.map_err(|e| StorageError::io(ctx(), e))
    }

    /// fsync the directory so that created (or removed) names are durable.
    pub fn sync_dir(&self) -> Result<(), StorageError> {
        sync_dir(&self.dir)
    }

    /// fsync the directory for bodies [`Spool::append_batch`] just wrote, and remember that
    /// their segment's name is durable, so later writers to it need not.
    pub fn sync_dir_of(&self, bodies: &[BodyAt]) -> Result<(), StorageError> {
        sync_dir(&self.dir)?;
        let mut segs = self.segments();
        if let Some(open) = segs.open.as_mut()
            && bodies
                .iter()
                .any(|b| matches!(b, BodyAt::Segment { segment, .. } if *segment == open.number))
        {
            open.dir_synced = true;
        }
        Ok(())
    }

    /// Read message `id`'s body from `at`.
    pub fn read(&self, id: u64, at: BodyAt) -> Result<Vec<u8>, StorageError> {
        self.read_prefix(id, at, usize::MAX)
    }

    /// Read at most `limit` bytes of message `id`'s body at `at` (for showing headers).
    ///
    /// A body that is not there — no file, no segment, or a segment that ends before the
    /// record's range does — is [`StorageError::BodyMissing`]; any other failure is
    /// [`StorageError::Io`] (worth another try).
    pub fn read_prefix(&self, id: u64, at: BodyAt, limit: usize) -> Result<Vec<u8>, StorageError> {
        use std::io::{ErrorKind, Read};
        let missing = |detail: String| StorageError::BodyMissing {
            id: format!("{id:016x}"),
            detail,
        };
        match at {
            BodyAt::File => {
                let path = self.path(id);
                let ctx = || format!("reading spool file {}", path.display());
                let f = File::open(&path).map_err(|e| match e.kind() {
                    ErrorKind::NotFound => missing(format!("no spool file {}", path.display())),
                    _ => StorageError::io(ctx(), e),
                })?;
                let mut out = Vec::new();
                f.take(u64::try_from(limit).unwrap_or(u64::MAX))
                    .read_to_end(&mut out)
                    .map_err(|e| StorageError::io(ctx(), e))?;
                Ok(out)
            }
            BodyAt::Segment {
                segment,
                offset,
                len,
            } => {
                let path = self.segment_path(segment);
                let ctx = || format!("reading segment {} at {offset}", path.display());
                let n = usize::try_from(len).unwrap_or(usize::MAX).min(limit);
                let mut out = vec![0u8; n];
                File::open(&path)
                    .and_then(|f| f.read_exact_at(&mut out, offset))
                    .map_err(|e| match e.kind() {
                        ErrorKind::NotFound => {
                            missing(format!("no segment file {}", path.display()))
                        }
                        ErrorKind::UnexpectedEof => missing(format!(
                            "segment {} ends before {} bytes at {offset}",
                            path.display(),
                            len
                        )),
                        _ => StorageError::io(ctx(), e),
                    })?;
                Ok(out)
            }
        }
    }

    /// Delete a one-file body (missing is fine: removal is idempotent).
    pub fn remove(&self, id: u64) -> Result<(), StorageError> {
        remove_file(&self.path(id))
    }

    /// Every id with a one-file body (ignores files that are not ours).
    pub fn ids(&self) -> Result<Vec<u64>, StorageError> {
        let ctx = || format!("listing spool directory {}", self.dir.display());
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| StorageError::io(ctx(), e))? {
            let entry = entry.map_err(|e| StorageError::io(ctx(), e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

impl Segments {
    /// Stop appending to the open segment; delete it if nothing in it is live.
    fn close_open(&mut self, spool: &Spool) {
        if let Some(open) = self.open.take()
            && self.live.get(&open.number).is_none_or(|l| l.count == 0)
        {
            self.live.remove(&open.number);
            if let Err(e) = remove_file(&spool.segment_path(open.number)) {
                tracing::warn!(error = %e, "removing an empty segment");
            }
        }
    }

    /// `n` messages of `segment` are gone; delete it when none is left and it is not open.
    fn release(&mut self, spool: &Spool, segment: u64, n: LiveCount) -> Result<(), StorageError> {
        let left = {
            let live = self.live.entry(segment).or_default();
            live.count = live.count.saturating_sub(n.count);
            live.bytes = live.bytes.saturating_sub(n.bytes);
            live.count
        };
        let is_open = self.open.as_ref().is_some_and(|o| o.number == segment);
        if left == 0 && !is_open {
            self.live.remove(&segment);
            return remove_file(&spool.segment_path(segment));
        }
        if left == 0 && self.open.as_ref().is_some_and(|o| o.len == 0) {
            // A batch that created the segment was refused: nothing to keep.
            self.close_open(spool);
        }
        Ok(())
    }
}

/// Write `bodies` at the end of `open`, then `fdatasync`. The segment's file must still be
/// in the spool directory (a spool moved or deleted under a running relay is an error, not a
/// file that silently takes writes nobody will find).
fn write_bodies(
    path: &Path,
    open: &mut OpenSegment,
    bodies: &[&[u8]],
) -> Result<Vec<BodyAt>, StorageError> {
    let ctx = || format!("writing segment {}", path.display());
    fs::metadata(path).map_err(|e| StorageError::io(ctx(), e))?;
    let mut at = Vec::with_capacity(bodies.len());
    // One write for the batch (bodies are small next to the cost of a system call each).
    let total: usize = bodies.iter().map(|b| b.len()).sum();
    let mut buf = Vec::with_capacity(total);
    let mut offset = open.len;
    for body in bodies {
        let len = body.len() as u64;
        at.push(BodyAt::Segment {
            segment: open.number,
            offset,
            len,
        });
        offset += len;
        buf.extend_from_slice(body);
    }
    open.file
        .write_all_at(&buf, open.len)
        .map_err(|e| StorageError::io(ctx(), e))?;
    open.file
        .sync_data()
        .map_err(|e| StorageError::io(format!("fdatasync of segment {}", path.display()), e))?;
    open.len = offset;
    Ok(at)
}

/// Delete a file (missing is fine: removal is idempotent).
fn remove_file(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(
            format!("removing spool file {}", path.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// fsync a directory.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("fsync of directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment's name is owed a directory fsync by every writer until one succeeds: a
    /// second writer appending before the creator's fsync must not write records that point
    /// into a file whose name a power loss could take away.
    #[test]
    fn every_writer_owes_the_directory_fsync_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().to_path_buf()).unwrap();
        let body = vec![7u8; 1024];
        let (first, owed) = spool.append_batch(1, &[&body]).unwrap();
        assert!(owed, "the creator owes it");
        let (second, owed) = spool.append_batch(2, &[&body]).unwrap();
        assert!(
            owed,
            "so does a writer appending before any directory fsync"
        );
        assert_eq!(first.len() + second.len(), 2);
        spool.sync_dir_of(&first).unwrap();
        let (_, owed) = spool.append_batch(3, &[&body]).unwrap();
        assert!(!owed, "once it succeeded, nobody owes it for this segment");
        // A new segment (the open one is full) is owed again.
        let big = vec![0u8; usize::try_from(SEGMENT_BYTES).unwrap()];
        let (_, owed) = spool.append_batch(4, &[&big]).unwrap();
        assert!(!owed, "still the synced segment");
        let (at, owed) = spool.append_batch(5, &[&body]).unwrap();
        assert!(
            owed && matches!(at[0], BodyAt::Segment { segment: 5, .. }),
            "{at:?}"
        );
    }

    /// A body whose segment is gone or cut short is reported as missing (nothing to retry),
    /// not as an I/O error; so is a one-file body whose file is gone.
    #[test]
    fn a_deleted_or_truncated_body_is_missing_not_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().to_path_buf()).unwrap();
        let (at, _) = spool.append_batch(1, &[b"first", b"second"]).unwrap();
        assert_eq!(spool.read(10, at[1]).unwrap(), b"second");
        let segment = spool.segment_path(1);
        File::options()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(7)
            .unwrap();
        assert_eq!(spool.read(10, at[0]).unwrap(), b"first", "still whole");
        let cut = spool.read(11, at[1]).unwrap_err();
        assert!(
            matches!(&cut, StorageError::BodyMissing { id, .. } if id == "000000000000000b"),
            "{cut}"
        );
        fs::remove_file(&segment).unwrap();
        let gone = spool.read(10, at[0]).unwrap_err();
        assert!(matches!(gone, StorageError::BodyMissing { .. }), "{gone}");
        let file = spool.read(12, BodyAt::File).unwrap_err();
        assert!(matches!(file, StorageError::BodyMissing { .. }), "{file}");
    }
}
