//! The disk tier: one file per record under a directory, bounded in bytes, surviving restarts.
//!
//! - **Atomic visibility**: a record is written to a unique temporary file (`.tmp-<pid>-<n>`)
//!   and renamed to `<hash as 32 hex digits>.kvb` only when complete, so a reader (this
//!   process, or another sharing the directory) never sees a partial record under a record's
//!   name. A crash leaves at most a temporary file, which the next [`DiskStore::open`]
//!   deletes. The data is not fsynced: after a power loss a renamed file may hold garbage,
//!   which the record checksums reject (fail closed to recompute).
//! - **Restart**: `open` re-indexes the directory: every `*.kvb` whose name parses is known
//!   again, ordered by modification time as the initial recency; other files are left alone
//!   and counted. If the directory holds more than the bound, the oldest records go.
//! - **Shared directories**: a file deleted by someone else is a miss (`get` returns `None`
//!   and forgets it); this store's byte count covers only the files it knows.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kvmesh_core::{SequenceHash, Tier};

use crate::lru::Lru;
use crate::storage::{check_fits, PutOutcome, Storage, StorageError};

const SUFFIX: &str = ".kvb";
const TMP_PREFIX: &str = ".tmp-";

/// What [`DiskStore::open`] found in the directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records indexed.
    pub records: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Leftover temporary files deleted (interrupted writes).
    pub temp_files_removed: usize,
    /// Other files left alone.
    pub foreign_files: usize,
    /// Records deleted because the directory held more than the bound.
    pub evicted: usize,
}

/// Records as files under one directory, at most `capacity` bytes.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lru: Lru,
    capacity: u64,
    next_tmp: AtomicU64,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

impl DiskStore {
    /// Opens (creating it if needed) the store in `dir`, bounded to `capacity` bytes, and
    /// re-indexes the records already there.
    pub fn open(
        dir: impl Into<PathBuf>,
        capacity: u64,
    ) -> Result<(Self, OpenReport), StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut found = Vec::new();
        let mut report = OpenReport::default();
        let entries = fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                report.foreign_files += 1;
                continue;
            };
            if name.starts_with(TMP_PREFIX) {
                if fs::remove_file(entry.path()).is_ok() {
                    report.temp_files_removed += 1;
                }
                continue;
            }
            let key = name
                .strip_suffix(SUFFIX)
                .filter(|h| h.len() == 32)
                .and_then(|h| u128::from_str_radix(h, 16).ok());
            let (Some(key), Ok(meta)) = (key, entry.metadata()) else {
                report.foreign_files += 1;
                continue;
            };
            if !meta.is_file() {
                report.foreign_files += 1;
                continue;
            }
            let mtime = meta.modified().ok();
            found.push((mtime, SequenceHash::from_u128(key), meta.len()));
        }
        found.sort_by_key(|&(mtime, key, _)| (mtime, key));
        let mut store = DiskStore {
            dir,
            lru: Lru::default(),
            capacity,
            next_tmp: AtomicU64::new(0),
        };
        for (_, key, size) in found {
            store.lru.insert(key, size);
        }
        for victim in store.lru.evict_over(capacity, None) {
            store.delete(victim)?;
            report.evicted += 1;
        }
        report.records = store.lru.keys().len();
        report.bytes = store.lru.used();
        Ok((store, report))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: SequenceHash) -> PathBuf {
        self.dir.join(format!("{:032x}{SUFFIX}", key.as_u128()))
    }

    /// Forgets `key` and deletes its file (already gone is fine).
    fn delete(&mut self, key: SequenceHash) -> Result<bool, StorageError> {
        let known = self.lru.remove(key).is_some();
        match fs::remove_file(self.path_of(key)) {
            Ok(()) => Ok(known),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(known),
            Err(e) => Err(io(format!("deleting {}", self.path_of(key).display()))(e)),
        }
    }
}

impl Storage for DiskStore {
    fn tier(&self) -> Tier {
        Tier::Disk
    }

    fn put(&mut self, key: SequenceHash, record: &[u8]) -> Result<PutOutcome, StorageError> {
        let size = record.len() as u64;
        check_fits(size, self.capacity)?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let write = fs::write(&tmp, record).and_then(|()| fs::rename(&tmp, self.path_of(key)));
        if let Err(e) = write {
            let _ = fs::remove_file(&tmp);
            return Err(io(format!("writing a record into {}", self.dir.display()))(
                e,
            ));
        }
        let replaced = self.lru.insert(key, size).is_some();
        let evicted = self.lru.evict_over(self.capacity, Some(key));
        // Delete every victim's file even if one fails; report the first failure.
        let mut first_error = None;
        for &victim in &evicted {
            if let Err(e) = self.delete(victim) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(PutOutcome { evicted, replaced })
    }

    fn get(&mut self, key: SequenceHash) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.lru.contains(key) {
            return Ok(None);
        }
        match fs::read(self.path_of(key)) {
            Ok(bytes) => {
                self.lru.insert(key, bytes.len() as u64);
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.lru.remove(key);
                Ok(None)
            }
            Err(e) => Err(io(format!("reading {}", self.path_of(key).display()))(e)),
        }
    }

    fn contains(&self, key: SequenceHash) -> bool {
        self.lru.contains(key)
    }

    fn remove(&mut self, key: SequenceHash) -> Result<bool, StorageError> {
        self.delete(key)
    }

    fn list(&self) -> Vec<SequenceHash> {
        self.lru.keys()
    }

    fn used_bytes(&self) -> u64 {
        self.lru.used()
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
}
