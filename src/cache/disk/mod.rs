//! The disk tier: one file per stored answer under the cache's directory
//! (`ab/abcdef....` by the entry's hash), their total size held under a bound.
//!
//! A file is written whole under `tmp/` and renamed into place, so a reader
//! sees the old file or the new one, never part of one; a file that does not
//! read back whole and as its checksum says (a crash mid-write on a filesystem
//! that reordered it, a foreign file) is removed and counted as a miss. The
//! files are indexed for eviction in the background (see `index`), so a
//! restart or an upgrade starts serving at once from what the directory holds.
//!
//! Every call here blocks on the filesystem: run them on a blocking thread.

mod index;
mod writes;

pub(crate) use writes::Ticket;

use super::entry::{EntryId, Stored};
use super::tier::{TierMetrics, Tracker};
use index::IndexState;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use writes::Writes;

const TEMP_DIR: &str = "tmp";

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
    index: IndexState,
    writes: Writes,
    cache: String,
}

impl DiskTier {
    /// The tier of the directory `root` (prepared by [`prepare_directory`]),
    /// bounded at `limit` bytes. Touches nothing on disk until used.
    pub(super) fn new(cache: &str, root: &Path, limit: usize) -> DiskTier {
        DiskTier {
            root: root.to_path_buf(),
            tracker: Tracker::new(limit, TierMetrics::new(cache, "disk")),
            index: IndexState::default(),
            writes: Writes::default(),
            cache: cache.to_string(),
        }
    }

    /// Makes the tier's metric handles again (see [`TierMetrics`]), after its
    /// cache's series were removed.
    pub(super) fn renew_metrics(&self) {
        self.tracker.renew(TierMetrics::new(&self.cache, "disk"));
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, id: EntryId) -> PathBuf {
        let hex = id.hex();
        self.root.join(&hex[..2]).join(hex)
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
        let Some(stored) = Stored::from_file_bytes(bytes) else {
            if let Some(unreadable) = &self.tracker.metrics().unreadable {
                unreadable.inc();
            }
            log::warn!(
                "cache `{}`: `{}` is not a whole entry; removed",
                self.cache,
                path.display()
            );
            self.remove(id);
            return None;
        };
        self.index.touch(id);
        if !self.tracker.accessed(id, len) {
            // Found before the index: tracked from now on.
            self.evict(self.tracker.admitted(id, len));
        }
        Some(stored)
    }

    /// A ticket to write one entry; `None` (counted as `backlog`) when too
    /// many writes wait already.
    pub(super) fn schedule(&self) -> Option<Ticket> {
        let ticket = self.writes.schedule();
        if ticket.is_none() {
            self.tracker.metrics().backlog.inc();
        }
        ticket
    }

    /// Writes `stored` as the entry under `id` unless it was removed since
    /// `ticket` was given, then evicts down to the bound. An entry larger than
    /// the bound is not written, and an older file of it goes. A failure (a
    /// full disk, an I/O error) is counted and logged at most once a minute;
    /// the entry is then just not on disk.
    pub(super) fn write(&self, id: EntryId, stored: &Stored, ticket: Ticket) {
        match stored.file_bytes() {
            Ok(bytes) if bytes.len() > self.tracker.limit() => {
                self.remove(id);
            }
            Ok(bytes) => match self.write_file(id, &bytes, &ticket) {
                Ok(true) => {
                    self.index.touch(id);
                    self.evict(self.tracker.admitted(id, bytes.len()));
                }
                Ok(false) => {}
                Err(e) => self.write_failed(&e),
            },
            Err(e) => self.write_failed(&io::Error::other(e.to_string())),
        }
        self.writes.done(ticket);
    }

    /// Writes `bytes` under `tmp/` and renames the file into place; `false`
    /// when `id` was removed since `ticket` (the file is then dropped).
    fn write_file(&self, id: EntryId, bytes: &[u8], ticket: &Ticket) -> io::Result<bool> {
        let temp = self.root.join(TEMP_DIR).join(self.writes.temp_name());
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.flush()
        });
        let placed = written.and_then(|()| {
            let removals = self.writes.removals();
            if Writes::removed_since(&removals, id, ticket) {
                let _ = std::fs::remove_file(&temp);
                return Ok(false);
            }
            let path = self.path(id);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&temp, &path).map(|()| true)
        });
        if placed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        placed
    }

    fn write_failed(&self, e: &io::Error) {
        let full = writes::is_full(e);
        let metrics = self.tracker.metrics();
        let counter = if full {
            &metrics.full
        } else {
            &metrics.write_error
        };
        counter.inc();
        if self.writes.failure_log_due() {
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

    /// Removes the entry under `id` (a purge, or a file that cannot be
    /// used); a write scheduled before does not bring it back. Whether there
    /// was one.
    pub(super) fn remove(&self, id: EntryId) -> bool {
        let removed = {
            let mut removals = self.writes.removals();
            self.writes.record_removal(&mut removals, id);
            std::fs::remove_file(self.path(id)).is_ok()
        };
        self.tracker.removed(id);
        removed
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

    /// Writes `stored` under `id` with a ticket of its own.
    fn put(tier: &DiskTier, id: u128, stored: Stored) {
        tier.write(EntryId(id), &stored, tier.schedule().unwrap());
    }

    #[test]
    fn a_purge_is_not_undone_by_a_write_scheduled_before_it() {
        let root = dir("purge");
        let tier = DiskTier::new("unit", &root, 1 << 20);
        put(&tier, 4, entry(b"old"));
        let ticket = tier.schedule().unwrap();
        assert!(tier.remove(EntryId(4)));
        tier.write(EntryId(4), &entry(b"filled before the purge"), ticket);
        assert!(tier.read(EntryId(4)).is_none());
        assert!(!tier.path(EntryId(4)).exists());
        // A write scheduled after the purge stores again.
        put(&tier, 4, entry(b"new"));
        assert_eq!(&tier.read(EntryId(4)).unwrap().body[..], b"new");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_entry_too_large_for_the_tier_removes_its_older_file() {
        let root = dir("large");
        let size = entry(b"small").file_bytes().unwrap().len();
        let tier = DiskTier::new("unit", &root, size + 10);
        put(&tier, 5, entry(b"small"));
        assert!(tier.read(EntryId(5)).is_some());
        put(&tier, 5, entry(b"far too large for this tier"));
        assert!(tier.read(EntryId(5)).is_none());
        assert_eq!(tier.tracker.bytes(), 0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn entries_are_written_whole_read_back_and_evicted_past_the_bound() {
        let root = dir("bound");
        let size = entry(b"0123456789").file_bytes().unwrap().len();
        let tier = DiskTier::new("unit", &root, 2 * size);
        put(&tier, 1, entry(b"0123456789"));
        put(&tier, 2, entry(b"abcdefghij"));
        assert_eq!(&tier.read(EntryId(1)).unwrap().body[..], b"0123456789");
        put(&tier, 3, entry(b"ABCDEFGHIJ"));
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
        put(&tier, 7, entry(b"whole body"));
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
        put(&earlier, 1, entry(b"one"));
        put(&earlier, 2, entry(b"two"));
        let later = DiskTier::new("unit", &root, 1 << 20);
        later.index_pass();
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
