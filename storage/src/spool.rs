//! Message bodies as one file per message, made durable before the envelope is committed.
//!
//! Order matters: body written and `fdatasync`ed, directory fsynced (so the new name itself
//! survives power loss), and only then the sled record that points at it. A crash in between
//! leaves an orphan body with no record, which [`crate::Queue::open`] deletes; a record can
//! never point at a body that was not durable.

use crate::error::StorageError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Open (creating if needed) the spool directory.
    pub fn open(dir: PathBuf) -> Result<Self, StorageError> {
        fs::create_dir_all(&dir).map_err(|e| {
            StorageError::io(format!("creating spool directory {}", dir.display()), e)
        })?;
        Ok(Self { dir })
    }

    /// The file holding message `id`.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// Write several bodies, then `fdatasync` them concurrently: on a journalling file system
    /// concurrent syncs share journal commits, so a batch costs little more than one sync.
    /// Returns after every body is durable (the caller still owes one [`Spool::sync_dir`]).
    ///
    /// On error, every file this call created is deleted again (including a partly written
    /// or empty one): a full disk must not fill up further with bodies nobody will accept.
    pub fn write_batch(&self, bodies: &[(u64, &[u8])]) -> Result<(), StorageError> {
        let mut created = Vec::with_capacity(bodies.len());
        let result = self.write_and_sync(bodies, &mut created);
        if result.is_err() {
            for id in created {
                if let Err(e) = self.remove(id) {
                    tracing::warn!(error = %e, "removing a body whose write failed");
                }
            }
        }
        result
    }

    fn write_and_sync(
        &self,
        bodies: &[(u64, &[u8])],
        created: &mut Vec<u64>,
    ) -> Result<(), StorageError> {
        /// Syncs in flight at once: enough to fill a journal commit, few enough threads.
        const PARALLEL_SYNCS: usize = 8;
        let mut files = Vec::with_capacity(bodies.len());
        for (id, body) in bodies {
            let path = self.path(*id);
            let ctx = || format!("writing spool file {}", path.display());
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StorageError::io(ctx(), e))?;
            created.push(*id);
            f.write_all(body)
                .and_then(|()| f.flush())
                .map_err(|e| StorageError::io(ctx(), e))?;
            files.push((path, f));
        }
        if files.len() <= 1 {
            return files.iter().try_for_each(|(path, f)| sync_file(path, f));
        }
        let per_thread = files.len().div_ceil(PARALLEL_SYNCS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || chunk.iter().try_for_each(|(path, f)| sync_file(path, f)))
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(StorageError::io(
                        "fdatasync of spool files",
                        std::io::Error::other("a sync thread panicked"),
                    ))
                })
            })
        })
    }

    /// Prove the spool can take a write again: write, `fdatasync` and delete a small file
    /// (its name is not a queue id, so a crash in between leaves nothing the queue reads).
    pub fn probe(&self) -> Result<(), StorageError> {
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

    /// Read a body.
    pub fn read(&self, id: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(id);
        fs::read(&path)
            .map_err(|e| StorageError::io(format!("reading spool file {}", path.display()), e))
    }

    /// Read at most `limit` bytes of a body (for showing headers).
    pub fn read_prefix(&self, id: u64, limit: usize) -> Result<Vec<u8>, StorageError> {
        use std::io::Read;
        let path = self.path(id);
        let ctx = || format!("reading spool file {}", path.display());
        let f = File::open(&path).map_err(|e| StorageError::io(ctx(), e))?;
        let mut out = Vec::new();
        f.take(u64::try_from(limit).unwrap_or(u64::MAX))
            .read_to_end(&mut out)
            .map_err(|e| StorageError::io(ctx(), e))?;
        Ok(out)
    }

    /// Delete a body (missing is fine: removal is idempotent).
    pub fn remove(&self, id: u64) -> Result<(), StorageError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(
                format!("removing spool file {}", path.display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Every id with a body file (ignores files that are not ours).
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

fn sync_file(path: &Path, f: &File) -> Result<(), StorageError> {
    f.sync_data()
        .map_err(|e| StorageError::io(format!("fdatasync of spool file {}", path.display()), e))
}

/// fsync a directory.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("fsync of directory {}", dir.display()), e))
}
