//! The disk tier's writes in flight: how many may wait (so a slow disk cannot
//! pile answers up in memory), which removals a write scheduled before them
//! must not undo, and the once-a-minute log of failures.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::EntryId;

/// Writes that may wait at once; more are not stored on disk (`backlog`).
const MAX_PENDING: usize = 64;
/// A failing disk is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A write the tier agreed to do, in the order of scheduling and removals.
#[must_use]
pub(crate) struct Ticket(u64);

#[derive(Default)]
pub(super) struct Writes {
    pending: AtomicUsize,
    /// Increases with each scheduled write and each removal.
    generation: AtomicU64,
    /// The generation of each removal while writes were pending.
    removed: Mutex<HashMap<EntryId, u64>>,
    next_temp: AtomicU64,
    /// When a failure was last logged, in seconds since the epoch.
    last_failure_log: AtomicU64,
}

impl Writes {
    /// A ticket for one more write; `None` when [`MAX_PENDING`] are waiting.
    pub(super) fn schedule(&self) -> Option<Ticket> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Ticket(self.generation.fetch_add(1, Ordering::AcqRel)))
    }

    /// The removals, locked: a write checks them and renames its file into
    /// place while holding them, a removal records itself and deletes the
    /// file while holding them, so neither undoes the other.
    pub(super) fn removals(&self) -> MutexGuard<'_, HashMap<EntryId, u64>> {
        self.removed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a removal of `id` (call holding [`Writes::removals`]).
    pub(super) fn record_removal(&self, removals: &mut HashMap<EntryId, u64>, id: EntryId) {
        if self.pending.load(Ordering::Acquire) > 0 {
            removals.insert(id, self.generation.fetch_add(1, Ordering::AcqRel));
        }
    }

    /// Whether `id` was removed after `ticket` was given.
    pub(super) fn removed_since(
        removals: &HashMap<EntryId, u64>,
        id: EntryId,
        ticket: &Ticket,
    ) -> bool {
        removals.get(&id).is_some_and(|&at| at > ticket.0)
    }

    /// The write of `ticket` is over; with none left pending, no recorded
    /// removal can matter any more.
    pub(super) fn done(&self, ticket: Ticket) {
        let _ = ticket;
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut removals = self.removals();
            if self.pending.load(Ordering::Acquire) == 0 {
                removals.clear();
            }
        }
    }

    /// A name under `tmp/` no other write of any process uses.
    pub(super) fn temp_name(&self) -> String {
        let seq = self.next_temp.fetch_add(1, Ordering::Relaxed);
        format!("{}-{seq}", std::process::id())
    }

    /// Whether a failure now should be logged: the first, then one a minute.
    pub(super) fn failure_log_due(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_failure_log.load(Ordering::Relaxed);
        now >= last + FAILURE_LOG_INTERVAL.as_secs()
            && self
                .last_failure_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Whether `e` says the disk (or the user's quota) is full.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_blocks_only_writes_scheduled_before_it() {
        let writes = Writes::default();
        let before = writes.schedule().unwrap();
        writes.record_removal(&mut writes.removals(), EntryId(1));
        let after = writes.schedule().unwrap();
        let removals = writes.removals();
        assert!(Writes::removed_since(&removals, EntryId(1), &before));
        assert!(!Writes::removed_since(&removals, EntryId(1), &after));
        assert!(!Writes::removed_since(&removals, EntryId(2), &before));
        drop(removals);
        writes.done(before);
        writes.done(after);
        assert!(writes.removals().is_empty(), "kept with nothing pending");
    }

    #[test]
    fn no_more_than_max_pending_writes_wait() {
        let writes = Writes::default();
        let tickets: Vec<Ticket> = (0..MAX_PENDING)
            .map(|_| writes.schedule().unwrap())
            .collect();
        assert!(writes.schedule().is_none());
        for ticket in tickets {
            writes.done(ticket);
        }
        assert!(writes.schedule().is_some());
    }
}
