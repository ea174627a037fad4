//! The disk tier: one file per stored answer under the cache's directory
//! (`ab/abcdef....` by the entry's hash), their total size held under a bound.
//!
//! A file is written whole under `tmp/` and renamed into place, so a reader
//! sees the old file or the new one, never part of one; a file that does not
//! read back whole (a crash mid-write on a filesystem that reordered it, a
//! foreign file) is removed and counted as a miss. The files are indexed for
//! eviction in the background on first use, so a restart or an upgrade starts
//! serving at once from what the directory holds.
//!
//! Every call here blocks on the filesystem: run them on a blocking thread.

use super::entry::{EntryId, Stored};
use super::tier::{TierMetrics, Tracker};
use crate::metrics::metrics;
use prometheus::IntCounter;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TEMP_DIR: &str = "tmp";
/// Files in `tmp/` older than this are left over from a crash and removed.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);
/// A failing disk is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Makes `root` (and its `tmp/`) when missing and checks that a file can be
/// written in it. The error names the path and what failed.
pub(crate) fn prepare_directory(root: &Path) -> Result<(), String> {
    let temp = root.join(TEMP_DIR);
    let fail =
        |what: &str, e: io::Error| format!("cache directory `{}`: {what}: {e}", root.display());
    std::fs::create_dir_all(&temp).map_err(|e| fail("cannot be created", e))?;
    let probe = temp.join(format!("probe-{}", std::process::id()));
    std::fs::write(&probe, b"tollgate").map_err(|e| fail("cannot be written", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("cannot be written", e))?;
    Ok(())
}

pub(super) struct DiskTier {
    root: PathBuf,
    tracker: Tracker,
    indexed: Once,
    next_temp: AtomicU64,
    /// When a write failure was last logged, in seconds since the epoch.
    last_failure_log: AtomicU64,
    unreadable: IntCounter,
    cache: String,
}

impl DiskTier {
    /// The tier of the directory `root` (prepared by [`prepare_directory`]),
    /// bounded at `limit` bytes. Touches nothing on disk until used.
    pub(super) fn new(cache: &str, root: &Path, limit: usize) -> DiskTier {
        DiskTier {
            root: root.to_path_buf(),
            tracker: Tracker::new(limit, TierMetrics::new(cache, "disk")),
            indexed: Once::new(),
            next_temp: AtomicU64::new(0),
            last_failure_log: AtomicU64::new(0),
            unreadable: metrics()
                .cache_unreadable_entries
                .with_label_values(&[cache]),
            cache: cache.to_string(),
        }
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, id: EntryId) -> PathBuf {
        let hex = id.hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Starts indexing the directory's files for eviction, once, on a thread
    /// of its own.
    pub(super) fn index_once(&'static self) {
        self.indexed.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("tollgate-cache-index".into())
                .spawn(move || self.index());
            if let Err(e) = spawned {
                log::warn!(
                    "cache `{}`: cannot index `{}`: {e}",
                    self.cache,
                    self.root.display()
                );
            }
        });
    }

    /// Tracks every entry file (oldest first, so the newest are evicted last),
    /// removes leftovers of interrupted writes, and evicts down to the bound.
    fn index(&self) {
        let mut files = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return;
        };
        for dir in dirs.flatten() {
            let name = dir.file_name();
            if name == TEMP_DIR {
                remove_stale_temps(&dir.path());
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().and_then(EntryId::from_hex) else {
                    continue;
                };
                if let Ok(meta) = entry.metadata() {
                    let used = meta.modified().unwrap_or(UNIX_EPOCH);
                    files.push((used, id, meta.len() as usize));
                }
            }
        }
        files.sort();
        for (_, id, size) in files {
            if !self.tracker.is_tracked(id) {
                self.evict(self.tracker.admitted(id, size));
            }
        }
        log::info!(
            "cache `{}`: {} answers, {} bytes on disk in `{}`",
            self.cache,
            self.tracker.entries(),
            self.tracker.bytes(),
            self.root.display()
        );
    }

    /// The entry under `id`, when its file reads back whole; a torn or
    /// unreadable file is removed.
    pub(super) fn read(&self, id: EntryId) -> Option<Stored> {
        let path = self.path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!(
                    "cache `{}`: cannot read `{}`: {e}",
                    self.cache,
                    path.display()
                );
                return None;
            }
        };
        let len = bytes.len();
        match Stored::from_file_bytes(bytes) {
            Some(stored) => {
                self.tracker.accessed(id, len);
                Some(stored)
            }
            None => {
                self.unreadable.inc();
                log::warn!(
                    "cache `{}`: `{}` is not a whole entry; removed",
                    self.cache,
                    path.display()
                );
                self.remove(id);
                None
            }
        }
    }

    /// Writes `stored` as the entry under `id`, then evicts down to the bound.
    /// A failure (a full disk, an I/O error) is counted and logged at most once
    /// a minute; the entry is then just not on disk.
    pub(super) fn write(&self, id: EntryId, stored: &Stored) {
        let bytes = match stored.file_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                self.write_failed(&io::Error::other(e.to_string()));
                return;
            }
        };
        if bytes.len() > self.tracker.limit() {
            return;
        }
        match self.write_file(id, &bytes) {
            Ok(()) => self.evict(self.tracker.admitted(id, bytes.len())),
            Err(e) => self.write_failed(&e),
        }
    }

    fn write_file(&self, id: EntryId, bytes: &[u8]) -> io::Result<()> {
        let seq = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .root
            .join(TEMP_DIR)
            .join(format!("{}-{seq}", std::process::id()));
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.flush()
        });
        let placed = written.and_then(|()| {
            let path = self.path(id);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&temp, &path)
        });
        if placed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        placed
    }

    fn write_failed(&self, e: &io::Error) {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        let counter = if full {
            &self.tracker.metrics.full
        } else {
            &self.tracker.metrics.write_error
        };
        counter.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_failure_log.load(Ordering::Relaxed);
        let due = now >= last + FAILURE_LOG_INTERVAL.as_secs();
        if due
            && self
                .last_failure_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let what = if full {
                "the disk is full"
            } else {
                "write error"
            };
            log::warn!(
                "cache `{}`: answers are not stored in `{}` ({what}: {e}); \
                 counted in tollgate_cache_write_failures_total, logged once a minute",
                self.cache,
                self.root.display()
            );
        }
    }

    /// Removes the entry under `id`; whether there was one.
    pub(super) fn remove(&self, id: EntryId) -> bool {
        self.tracker.removed(id);
        std::fs::remove_file(self.path(id)).is_ok()
    }

    fn evict(&self, ids: Vec<EntryId>) {
        for id in ids {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// A new bound; files past it are removed at once.
    pub(super) fn set_limit(&self, limit: usize) {
        self.evict(self.tracker.set_limit(limit));
    }
}

fn remove_stale_temps(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_directory(&dir).unwrap();
        dir
    }

    use crate::cache::entry::tests::entry;

    #[test]
    fn entries_are_written_whole_read_back_and_evicted_past_the_bound() {
        let root = dir("bound");
        let size = entry(b"0123456789").file_bytes().unwrap().len();
        let tier = DiskTier::new("unit", &root, 2 * size);
        tier.write(EntryId(1), &entry(b"0123456789"));
        tier.write(EntryId(2), &entry(b"abcdefghij"));
        assert_eq!(&tier.read(EntryId(1)).unwrap().body[..], b"0123456789");
        tier.write(EntryId(3), &entry(b"ABCDEFGHIJ"));
        // One went (pingora's LRU is sharded: the least recently used of a shard).
        let left = [1, 2, 3]
            .iter()
            .filter(|&&id| tier.read(EntryId(id)).is_some());
        assert_eq!(left.count(), 2);
        assert_eq!(tier.tracker.bytes(), 2 * size);
        let files: usize = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|dir| std::fs::read_dir(dir.path()).unwrap().count())
            .sum();
        assert_eq!(files, 2, "the evicted file stayed");
        assert!(std::fs::read_dir(root.join(TEMP_DIR))
            .unwrap()
            .next()
            .is_none());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_torn_file_is_a_miss_and_is_removed() {
        let root = dir("torn");
        let tier = DiskTier::new("unit", &root, 1 << 20);
        tier.write(EntryId(7), &entry(b"whole body"));
        let path = tier.path(EntryId(7));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(tier.read(EntryId(7)).is_none());
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_index_finds_what_an_earlier_process_left() {
        let root = dir("index");
        let earlier = DiskTier::new("unit", &root, 1 << 20);
        earlier.write(EntryId(1), &entry(b"one"));
        earlier.write(EntryId(2), &entry(b"two"));
        let later = DiskTier::new("unit", &root, 1 << 20);
        later.index();
        assert_eq!(later.tracker.entries(), 2);
        assert_eq!(&later.read(EntryId(2)).unwrap().body[..], b"two");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_named() {
        let file = std::env::temp_dir().join(format!("tollgate-disk-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        let e = prepare_directory(&file.join("cache")).unwrap_err();
        assert!(e.contains(&file.display().to_string()), "{e}");
        let _ = std::fs::remove_file(&file);
    }
}
