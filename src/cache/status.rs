//! What the cache did for a request: the `X-Cache-Status` of its answer and
//! the `result` label of `tollgate_cache_lookups_total`.

use crate::metrics::{metrics, Lease};
use pingora::cache::{CachePhase, NoCacheReason};
use prometheus::IntCounter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served from the cache, fresh.
    Hit,
    /// Not in the cache (or not storable): fetched from the origin.
    Miss,
    /// In the cache but stale: fetched again from the origin.
    Expired,
    /// Served stale: while it is refreshed, or because the origin failed.
    Stale,
    /// Stale, and the origin said (304) it had not changed.
    Revalidated,
    /// The cache was not consulted (a method other than GET or HEAD).
    Bypass,
}

const ALL: [CacheStatus; 6] = [
    CacheStatus::Hit,
    CacheStatus::Miss,
    CacheStatus::Expired,
    CacheStatus::Stale,
    CacheStatus::Revalidated,
    CacheStatus::Bypass,
];

impl CacheStatus {
    /// The status of a request whose cache ended in `phase`.
    pub(crate) fn of(phase: CachePhase) -> CacheStatus {
        match phase {
            CachePhase::Hit => CacheStatus::Hit,
            CachePhase::Miss => CacheStatus::Miss,
            CachePhase::Expired => CacheStatus::Expired,
            CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheStatus::Revalidated,
            CachePhase::Disabled(NoCacheReason::NeverEnabled)
            | CachePhase::Bypass
            | CachePhase::Uninit
            | CachePhase::CacheKey => CacheStatus::Bypass,
            // Looked up, then not stored (the origin's answer, its size, a lock
            // timeout, an error): the origin answered.
            CachePhase::Disabled(_) => CacheStatus::Miss,
        }
    }

    /// The `X-Cache-Status` value.
    pub(crate) fn header_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Expired => "expired",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The lookup counters of one route, one per status, resolved once, and the
/// route's hold on their series.
pub(crate) struct LookupCounters {
    counters: [IntCounter; ALL.len()],
    _series: Lease,
}

impl LookupCounters {
    pub(crate) fn new(route: &str) -> LookupCounters {
        let family = &metrics().cache_lookups;
        let series = Lease::new(&[family], &[("route", route)]);
        LookupCounters {
            counters: ALL.map(|status| family.with_label_values(&[route, status.label()])),
            _series: series,
        }
    }

    pub(crate) fn count(&self, status: CacheStatus) {
        self.counters[status.index()].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_in_index_order() {
        for (i, status) in ALL.iter().enumerate() {
            assert_eq!(status.index(), i);
        }
        assert_eq!(
            CacheStatus::of(CachePhase::StaleUpdating),
            CacheStatus::Stale
        );
        assert_eq!(
            CacheStatus::of(CachePhase::Disabled(NoCacheReason::OriginNotCache)),
            CacheStatus::Miss
        );
        assert_eq!(
            CacheStatus::of(CachePhase::Disabled(NoCacheReason::NeverEnabled)),
            CacheStatus::Bypass
        );
    }
}
