//! Indexing a disk tier's directory for eviction, on a thread of its own:
//! once when the tier is first used (so a restart or an upgrade serves from
//! the files at once, and evicts them in order once they are known), and once
//! more a while later, for files a process handing over wrote meanwhile.

use super::{DiskTier, EntryId, TEMP_DIR};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

/// Files in `tmp/` older than this are left over from a crash and removed.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);
/// When the second pass runs: after any handover from an older process.
const RESCAN_AFTER: Duration = Duration::from_secs(120);

pub(super) struct IndexState {
    started: Once,
    running: AtomicBool,
    /// Entries read or written while a pass runs: they are used, and must not
    /// end up older than the files the pass finds.
    touched: Mutex<Vec<EntryId>>,
}

impl Default for IndexState {
    fn default() -> IndexState {
        IndexState {
            started: Once::new(),
            running: AtomicBool::new(false),
            touched: Mutex::new(Vec::new()),
        }
    }
}

impl IndexState {
    /// Notes that `id` was used, when a pass is running.
    pub(super) fn touch(&self, id: EntryId) {
        if self.running.load(Ordering::Acquire) {
            self.touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(id);
        }
    }
}

impl DiskTier {
    /// Starts indexing `self`'s directory, once.
    pub(in crate::cache) fn index_once(&'static self) {
        self.index.started.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("tollgate-cache-index".into())
                .spawn(move || {
                    self.index_pass();
                    std::thread::sleep(RESCAN_AFTER);
                    self.index_pass();
                });
            if let Err(e) = spawned {
                log::warn!(
                    "cache `{}`: cannot index `{}`: {e}",
                    self.cache,
                    self.root.display()
                );
            }
        });
    }

    /// Tracks every entry file not tracked yet (oldest first, so the newest
    /// are evicted last), removes leftovers of interrupted writes, evicts down
    /// to the bound, and moves what was used meanwhile to the newest end.
    pub(super) fn index_pass(&self) {
        self.index.running.store(true, Ordering::Release);
        let mut files = self.entry_files();
        files.sort();
        for (_, id, size) in files {
            if !self.tracker.is_tracked(id) {
                self.evict(self.tracker.admitted(id, size));
            }
        }
        self.index.running.store(false, Ordering::Release);
        let touched = std::mem::take(
            &mut *self
                .index
                .touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for id in touched {
            self.tracker.accessed(id, 0);
        }
        log::info!(
            "cache `{}`: {} answers, {} bytes on disk in `{}`",
            self.cache,
            self.tracker.entries(),
            self.tracker.bytes(),
            self.root.display()
        );
    }

    /// (last modified, id, size) of each entry file; removes stale temporaries.
    fn entry_files(&self) -> Vec<(std::time::SystemTime, EntryId, usize)> {
        let mut files = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return files;
        };
        for dir in dirs.flatten() {
            if dir.file_name() == TEMP_DIR {
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
        files
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
