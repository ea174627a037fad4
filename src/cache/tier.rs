//! What the two tiers share: the accounting of what they hold, on pingora's
//! LRU eviction manager, and their metrics.

use super::entry::EntryId;
use crate::metrics::metrics;
use arc_swap::{ArcSwap, Guard};
use pingora::cache::eviction::{lru, CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::CompactCacheKey;
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::time::SystemTime;

const LRU_SHARDS: usize = 16;
/// Entries per LRU shard allocated up front (it grows as needed).
const LRU_SHARD_CAPACITY: usize = 64;

/// The metric handles of one tier of one cache.
pub(super) struct TierMetrics {
    bytes: IntGauge,
    entries: IntGauge,
    evictions: IntCounter,
    pub(super) full: IntCounter,
    pub(super) write_error: IntCounter,
    pub(super) backlog: IntCounter,
    /// `tollgate_cache_unreadable_entries_total`: the disk tier's only.
    pub(super) unreadable: Option<IntCounter>,
}

impl TierMetrics {
    pub(super) fn new(cache: &str, tier: &str) -> TierMetrics {
        let m = metrics();
        TierMetrics {
            bytes: m.cache_bytes.with_label_values(&[cache, tier]),
            entries: m.cache_entries.with_label_values(&[cache, tier]),
            evictions: m.cache_evictions.with_label_values(&[cache, tier]),
            full: m
                .cache_write_failures
                .with_label_values(&[cache, tier, "full"]),
            write_error: m
                .cache_write_failures
                .with_label_values(&[cache, tier, "error"]),
            backlog: m
                .cache_write_failures
                .with_label_values(&[cache, tier, "backlog"]),
            unreadable: (tier == "disk")
                .then(|| m.cache_unreadable_entries.with_label_values(&[cache])),
        }
    }

    /// Handles registered nowhere, for unit tests.
    #[cfg(test)]
    pub(super) fn detached() -> TierMetrics {
        let gauge = || IntGauge::new("detached", "unit tests").unwrap();
        let counter = || IntCounter::new("detached", "unit tests").unwrap();
        TierMetrics {
            bytes: gauge(),
            entries: gauge(),
            evictions: counter(),
            full: counter(),
            write_error: counter(),
            backlog: counter(),
            unreadable: None,
        }
    }
}

/// Which entries a tier holds, their weights, and which to evict first (least
/// recently used), within a bound on the total weight.
pub(super) struct Tracker {
    lru: lru::Manager<LRU_SHARDS>,
    /// Swapped for fresh handles when the cache comes back into a topology
    /// (its series were removed when it left).
    metrics: ArcSwap<TierMetrics>,
}

fn lru_key(id: EntryId) -> CacheEntryKey {
    CacheEntryKey::key_only(CompactCacheKey {
        primary: id.0.to_be_bytes(),
        variance: None,
        user_tag: Box::default(),
    })
}

fn entry_id(key: &CacheEntryKey) -> EntryId {
    EntryId(u128::from_be_bytes(key.key().primary))
}

impl Tracker {
    pub(super) fn new(limit: usize, metrics: TierMetrics) -> Tracker {
        Tracker {
            lru: lru::Manager::with_capacity(limit, LRU_SHARD_CAPACITY),
            metrics: ArcSwap::from_pointee(metrics),
        }
    }

    /// The tier's metric handles now.
    pub(super) fn metrics(&self) -> Guard<Arc<TierMetrics>> {
        self.metrics.load()
    }

    /// Takes `metrics` (handles made again, on the series of a cache back in
    /// the topology) and sets its gauges to what the tier holds.
    pub(super) fn renew(&self, metrics: TierMetrics) {
        self.metrics.store(Arc::new(metrics));
        self.publish();
    }

    pub(super) fn limit(&self) -> usize {
        self.lru.weight_limit()
    }

    pub(super) fn bytes(&self) -> usize {
        self.lru.total_size()
    }

    pub(super) fn entries(&self) -> usize {
        self.lru.total_items()
    }

    /// Sets the tier's gauges to what it holds.
    pub(super) fn publish(&self) {
        let metrics = self.metrics();
        metrics.bytes.set(self.bytes() as i64);
        metrics.entries.set(self.entries() as i64);
    }

    /// Marks `id`, of `weight`, as just used; whether it is tracked (an
    /// untracked one is left untracked: see [`Tracker::admitted`]).
    pub(super) fn accessed(&self, id: EntryId, weight: usize) -> bool {
        let key = lru_key(id);
        self.lru.peek(&key) && self.lru.access(&key, weight, SystemTime::UNIX_EPOCH)
    }

    /// Tracks `id` with `weight` (again, after a replacement) and returns what
    /// to evict to get back within the bound, already untracked.
    pub(super) fn admitted(&self, id: EntryId, weight: usize) -> Vec<EntryId> {
        let evicted: Vec<EntryId> = self
            .lru
            .admit(lru_key(id), weight, SystemTime::UNIX_EPOCH)
            .iter()
            .map(entry_id)
            .collect();
        self.metrics().evictions.inc_by(evicted.len() as u64);
        self.publish();
        evicted
    }

    pub(super) fn removed(&self, id: EntryId) {
        self.forget(id);
        self.publish();
    }

    /// Untracks `id` without updating the gauges (for a batch; publish after).
    pub(super) fn forget(&self, id: EntryId) {
        let key = lru_key(id);
        self.lru.remove(CacheEntryKeyRef::from(&key));
    }

    pub(super) fn is_tracked(&self, id: EntryId) -> bool {
        self.lru.peek(&lru_key(id))
    }

    /// A new bound; returns what to evict to get within it, already untracked.
    pub(super) fn set_limit(&self, limit: usize) -> Vec<EntryId> {
        self.lru.set_weight_limit(limit);
        let mut evicted = Vec::new();
        while self.bytes() > limit {
            let before = evicted.len();
            for shard in 0..self.lru.shards() {
                if self.bytes() <= limit {
                    break;
                }
                if let Some(key) = self.lru.peek_lru(shard) {
                    self.lru.remove(CacheEntryKeyRef::from(&key));
                    evicted.push(entry_id(&key));
                }
            }
            if evicted.len() == before {
                break;
            }
        }
        self.metrics().evictions.inc_by(evicted.len() as u64);
        self.publish();
        evicted
    }
}
