//! The memory tier: stored answers in a sharded map, their total weight held
//! under a bound by pingora's LRU eviction manager.

use super::entry::{EntryId, Stored};
use super::tier::{TierMetrics, Tracker};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<EntryId, Arc<Stored>>>;

pub(super) struct MemoryTier {
    shards: [Shard; SHARDS],
    tracker: Tracker,
}

impl MemoryTier {
    /// An empty tier holding at most `limit` bytes of entries.
    pub(super) fn new(limit: usize, metrics: TierMetrics) -> MemoryTier {
        MemoryTier {
            shards: Default::default(),
            tracker: Tracker::new(limit, metrics),
        }
    }

    /// Takes fresh handles of its series (see [`Tracker::renew`]).
    pub(super) fn renew_metrics(&self, metrics: TierMetrics) {
        self.tracker.renew(metrics);
    }

    fn shard(&self, id: EntryId) -> &Shard {
        // The id is a hash already: its low bits spread evenly.
        &self.shards[(id.0 as usize) % SHARDS]
    }

    /// The entry stored under `id`, counted as an access.
    pub(super) fn get(&self, id: EntryId) -> Option<Arc<Stored>> {
        let found = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()?;
        self.tracker.accessed(id, found.weight());
        Some(found)
    }

    /// Stores `entry` under `id` (replacing what was there), then evicts the
    /// least recently used entries until the tier is within its bound again. An
    /// entry larger than the whole bound is not stored, and what was stored
    /// under `id` goes (it is older). Whether it was stored.
    pub(super) fn put(&self, id: EntryId, entry: Arc<Stored>) -> bool {
        let weight = entry.weight();
        if weight > self.tracker.limit() {
            self.remove(id);
            return false;
        }
        self.shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry);
        for evicted in self.tracker.admitted(id, weight) {
            self.shard(evicted)
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&evicted);
        }
        true
    }

    /// Replaces the entry under `id`, if there is one, with `entry` (same body,
    /// new head after a revalidation), and accounts for its new weight.
    pub(super) fn replace(&self, id: EntryId, entry: Arc<Stored>) {
        let weight = entry.weight();
        let replaced = {
            let mut shard = self
                .shard(id)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            shard.get_mut(&id).map(|slot| *slot = entry).is_some()
        };
        if replaced {
            for evicted in self.tracker.admitted(id, weight) {
                self.shard(evicted)
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&evicted);
            }
        }
    }

    /// Removes the entry under `id`; whether there was one.
    pub(super) fn remove(&self, id: EntryId) -> bool {
        let removed = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .is_some();
        if removed {
            self.tracker.removed(id);
        }
        removed
    }

    /// A new bound; entries past it are evicted at once.
    pub(super) fn set_limit(&self, limit: usize) {
        for evicted in self.tracker.set_limit(limit) {
            self.shard(evicted)
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&evicted);
        }
    }

    /// Drops every entry (the cache left the topology); updates the gauges
    /// when `publish` (the tier's labels are not another live cache's).
    pub(super) fn clear(&self, publish: bool) {
        for shard in &self.shards {
            let ids: Vec<EntryId> = {
                let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
                map.drain().map(|(id, _)| id).collect()
            };
            for id in ids {
                self.tracker.forget(id);
            }
        }
        if publish {
            self.tracker.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::entry_with;
    use bytes::Bytes;

    fn entry(body: usize) -> Arc<Stored> {
        Arc::new(entry_with(Bytes::from(vec![0; body])))
    }

    fn held(tier: &MemoryTier, ids: std::ops::Range<u128>) -> usize {
        ids.filter(|&id| tier.get(EntryId(id)).is_some()).count()
    }

    #[test]
    fn the_tier_stays_within_its_bound() {
        let one = entry(1000).weight();
        let tier = MemoryTier::new(3 * one, TierMetrics::detached());
        for id in 0..100 {
            assert!(tier.put(EntryId(id), entry(1000)));
            assert!(tier.tracker.bytes() <= 3 * one);
        }
        // What the tracker counts is what the map holds.
        assert_eq!(held(&tier, 0..100), 3);
        assert_eq!(tier.tracker.entries(), 3);
        // Too large for the whole tier: not stored, nothing evicted for it.
        assert!(!tier.put(EntryId(1000), entry(10 * one)));
        assert_eq!(tier.tracker.entries(), 3);
        // ...and an older answer under its id goes.
        let kept = (0..100)
            .find(|&id| tier.get(EntryId(id)).is_some())
            .unwrap();
        assert!(!tier.put(EntryId(kept), entry(10 * one)));
        assert!(tier.get(EntryId(kept)).is_none());
        assert_eq!(tier.tracker.entries(), 2);
        tier.set_limit(one);
        assert_eq!(tier.tracker.entries(), 1);
        assert!(tier.tracker.bytes() <= one);
        assert_eq!(held(&tier, 0..100), 1);
        let last = (0..100)
            .find(|&id| tier.get(EntryId(id)).is_some())
            .unwrap();
        assert!(tier.remove(EntryId(last)));
        assert_eq!(tier.tracker.bytes(), 0);
        tier.put(EntryId(5), entry(10));
        tier.clear(true);
        assert_eq!((tier.tracker.entries(), held(&tier, 0..100)), (0, 0));
    }
}
