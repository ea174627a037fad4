//! Retry budgets (`upstreams.*.retry_budget`): the retries of an upstream
//! are limited to `ratio` of its recent requests, plus `min_per_second`, so
//! that a failing upstream does not receive each request several times
//! (Finagle's and Linkerd's retry budgets). "Recent" is the last
//! [`WINDOW_SECONDS`] seconds, counted per second in a ring of slots.
//!
//! Retries on a pooled connection that the backend had closed while idle do
//! not draw on the budget: they are not caused by the backend failing.

use crate::config::RetryBudgetConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// Seconds of history the budget is counted over.
pub const WINDOW_SECONDS: u64 = 10;

/// One second of history: which second it counts, and its counts.
#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries allowed over the window whatever the traffic.
    reserve: f64,
    slots: [Slot; WINDOW_SECONDS as usize],
}

/// Seconds since the process started.
fn now_second() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_secs()
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            ratio: config.ratio.share(),
            reserve: f64::from(config.min_per_second) * WINDOW_SECONDS as f64,
            slots: Default::default(),
        }
    }

    /// Counts a request (its first attempt).
    pub fn record_request(&self) {
        self.slot(now_second())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a retry may be made now; when it may, it is counted.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(now_second())
    }

    /// The retry is counted first and taken back when the window, with it,
    /// is over the budget: retries asked for at once each see the others,
    /// so together they never exceed it (they may, at worst, refuse one
    /// that would have fitted).
    fn try_retry_at(&self, now: u64) -> bool {
        let slot = self.slot(now);
        slot.retries.fetch_add(1, Ordering::Relaxed);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if now.saturating_sub(second) < WINDOW_SECONDS {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        if retries as f64 > self.ratio * requests as f64 + self.reserve {
            // Saturating: the slot may have been emptied for a new second since.
            let _ = slot
                .retries
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            return false;
        }
        true
    }

    /// The slot of second `now`, emptied first when it last counted an older
    /// second. (Two threads that roll a slot over together may lose a count
    /// or two: a budget does not need them.)
    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % WINDOW_SECONDS) as usize];
        let second = slot.second.load(Ordering::Relaxed);
        if second != now
            && slot
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    #[cfg(test)]
    fn record_request_at(&self, now: u64) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Percent;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            ratio: Percent::from_share(ratio),
            min_per_second,
        })
    }

    /// Retries asked for at once from many threads never go over the budget
    /// together (each is counted before it is checked).
    #[test]
    fn concurrent_retries_stay_within_the_budget() {
        let b = budget(0.0, 3);
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..2_000 {
                        if b.try_retry_at(500) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let allowed = allowed.load(Ordering::Relaxed);
        // 3/s over the 10 s window: 30, and no more however the threads raced.
        assert!(allowed <= 30, "{allowed} retries allowed");
        assert!(allowed > 0);
    }

    #[test]
    fn retries_are_a_share_of_recent_requests_plus_the_reserve() {
        let b = budget(0.2, 1);
        let t = 100;
        for _ in 0..100 {
            b.record_request_at(t);
        }
        // 20% of 100, plus 1/s over 10 s.
        let allowed = (0..100).filter(|_| b.try_retry_at(t)).count();
        assert_eq!(allowed, 30);
        // Ten seconds on, the old requests and retries no longer count.
        assert_eq!((0..100).filter(|_| b.try_retry_at(t + 10)).count(), 10);
    }

    #[test]
    fn without_a_reserve_no_traffic_means_no_retry() {
        let b = budget(0.5, 0);
        assert!(!b.try_retry_at(5));
        b.record_request_at(5);
        b.record_request_at(6);
        assert!(b.try_retry_at(6));
        assert!(!b.try_retry_at(6));
    }
}
