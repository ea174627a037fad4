//! Backend health: active state (moved by probes), passive state (moved by failures
//! seen on real traffic), and the background service that runs the probes.

use super::probe::Probes;
use super::Upstream;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Milliseconds since the process started, from a monotonic clock.
pub(crate) fn now_millis() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// State moved by active probes. Backends start healthy; only the checker task of
/// the backend's upstream writes it.
#[derive(Debug)]
pub struct ActiveHealth {
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl ActiveHealth {
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one probe result. Returns `Some(new state)` when this result flips
    /// the backend: `healthy_threshold` consecutive successes bring it back,
    /// `unhealthy_threshold` consecutive failures take it out.
    pub(crate) fn record(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let healthy = self.is_healthy();
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let streak = self
                .successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !healthy && streak >= healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let streak = self
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if healthy && streak >= unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// State moved by failures on real traffic, as nginx `max_fails`/`fail_timeout`:
/// `max_fails` failures within `fail_timeout` take the backend out for `fail_timeout`.
#[derive(Debug, Default)]
pub struct PassiveHealth {
    failures: AtomicU32,
    window_start: AtomicU64,
    /// [`now_millis`] until which the backend is out; 0 when it is not.
    down_until: AtomicU64,
    /// [`now_millis`] of the last "kept in" warning (see
    /// [`PassiveHealth::may_warn_kept_in`]).
    kept_in_warned: AtomicU64,
}

impl PassiveHealth {
    /// Whether the backend may take requests. When a failure period has just run
    /// out, clears it and calls `on_recover` (once, from whichever request saw it).
    pub(crate) fn is_usable(&self, on_recover: impl FnOnce()) -> bool {
        self.is_usable_at(now_millis(), on_recover)
    }

    /// [`PassiveHealth::is_usable`] at `now` ([`now_millis`]).
    fn is_usable_at(&self, now: u64, on_recover: impl FnOnce()) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        if self
            .down_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            on_recover();
        }
        true
    }

    /// Whether a "kept in: last backend up" warning may be logged now: at
    /// most one per `every`, so that a backend failing under load (or the
    /// copies of a mirror to it) does not write a line per failure.
    pub(crate) fn may_warn_kept_in(&self, every: Duration) -> bool {
        self.may_warn_kept_in_at(now_millis(), every)
    }

    fn may_warn_kept_in_at(&self, now: u64, every: Duration) -> bool {
        let last = self.kept_in_warned.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= every.as_millis() as u64)
            && self
                .kept_in_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a failure period is running now.
    pub(crate) fn is_failed(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && now_millis() < until
    }

    /// Counts a failure; returns true when it is the `max_fails`-th within
    /// `fail_timeout` (the count then starts again). Whether the backend is taken
    /// out for it is the caller's decision ([`PassiveHealth::take_out`]).
    pub(crate) fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        self.record_failure_at(now_millis(), max_fails, fail_timeout)
    }

    fn record_failure_at(&self, now: u64, max_fails: u32, fail_timeout: Duration) -> bool {
        let window = fail_timeout.as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        let failures =
            if now.saturating_sub(start) > window || self.failures.load(Ordering::Relaxed) == 0 {
                self.window_start.store(now, Ordering::Relaxed);
                self.failures.store(1, Ordering::Relaxed);
                1
            } else {
                self.failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1)
            };
        if failures >= max_fails {
            self.failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Takes the backend out for `fail_timeout` from now.
    pub(crate) fn take_out(&self, fail_timeout: Duration) {
        self.take_out_at(now_millis(), fail_timeout);
    }

    fn take_out_at(&self, now: u64, fail_timeout: Duration) {
        let until = now + fail_timeout.as_millis() as u64;
        // `max(1)` keeps 0 meaning "not out" even in the first millisecond.
        self.down_until.store(until.max(1), Ordering::Relaxed);
    }

    /// Ends a failure period early; returns true when one was running.
    pub(crate) fn bring_back(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.down_until.swap(0, Ordering::Relaxed) != 0
    }

    /// Records a success: earlier failures no longer count toward `max_fails`.
    pub(crate) fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Active checking of one upstream: what to probe and how often.
pub struct CheckPlan {
    pub upstream: Arc<Upstream>,
    pub probes: Probes,
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl CheckPlan {
    /// Probes every backend once, concurrently, and records the results.
    pub(crate) async fn run_once(&self) {
        let backends = &self.upstream.backends;
        let probes = backends
            .iter()
            .enumerate()
            .map(|(index, backend)| self.probes.check(index, backend));
        let results = futures::future::join_all(probes).await;
        for (index, result) in results.into_iter().enumerate() {
            self.upstream.record_check(
                index,
                result,
                self.healthy_threshold,
                self.unhealthy_threshold,
            );
        }
    }
}

/// Runs the probes of every upstream that has a `health_check`, each at its own
/// interval, the first round at once, until the server shuts down. When a reload
/// publishes new plans, the old probes stop and the new ones start.
pub(crate) struct HealthChecker {
    pub plans: tokio::sync::watch::Receiver<Vec<Arc<CheckPlan>>>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut plans = self.plans.clone();
        loop {
            let current = plans.borrow_and_update().clone();
            let tasks: Vec<_> = current
                .into_iter()
                .map(|plan| {
                    tokio::spawn(async move {
                        let mut ticker = tokio::time::interval(plan.interval);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            ticker.tick().await;
                            plan.run_once().await;
                        }
                    })
                })
                .collect();
            let replaced = tokio::select! {
                _ = shutdown.changed() => false,
                changed = plans.changed() => changed.is_ok(),
            };
            for task in tasks {
                task.abort();
            }
            if !replaced {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1000;

    #[test]
    fn the_kept_in_warning_is_written_once_per_interval() {
        let passive = PassiveHealth::default();
        let every = Duration::from_secs(10);
        assert!(passive.may_warn_kept_in_at(5 * SECOND, every));
        assert!(!passive.may_warn_kept_in_at(6 * SECOND, every));
        assert!(!passive.may_warn_kept_in_at(14 * SECOND, every));
        assert!(passive.may_warn_kept_in_at(15 * SECOND, every));
    }

    #[test]
    fn active_health_flips_after_its_thresholds_only() {
        let health = ActiveHealth::default();
        assert!(health.is_healthy());
        assert_eq!(health.record(false, 2, 3), None);
        assert_eq!(health.record(false, 2, 3), None);
        // A success in between starts the failure count again.
        assert_eq!(health.record(true, 2, 3), None);
        assert_eq!(health.record(false, 2, 3), None);
        assert_eq!(health.record(false, 2, 3), None);
        assert_eq!(health.record(false, 2, 3), Some(false));
        assert!(!health.is_healthy());
        assert_eq!(health.record(true, 2, 3), None);
        assert_eq!(health.record(true, 2, 3), Some(true));
        assert!(health.is_healthy());
    }

    #[test]
    fn failures_count_within_fail_timeout_only() {
        let passive = PassiveHealth::default();
        let timeout = Duration::from_secs(10);
        let t0 = 100 * SECOND;
        assert!(!passive.record_failure_at(t0, 3, timeout));
        assert!(!passive.record_failure_at(t0 + 5 * SECOND, 3, timeout));
        // The window ran out: this failure starts a new one.
        assert!(!passive.record_failure_at(t0 + 11 * SECOND, 3, timeout));
        assert!(!passive.record_failure_at(t0 + 12 * SECOND, 3, timeout));
        assert!(passive.record_failure_at(t0 + 13 * SECOND, 3, timeout));
        // A success wipes the count.
        assert!(!passive.record_failure_at(t0 + 14 * SECOND, 2, timeout));
        passive.record_success();
        assert!(!passive.record_failure_at(t0 + 15 * SECOND, 2, timeout));
    }

    #[test]
    fn a_backend_taken_out_comes_back_after_fail_timeout_once() {
        let passive = PassiveHealth::default();
        let t0 = 100 * SECOND;
        passive.take_out_at(t0, Duration::from_secs(10));
        let mut recovered = 0;
        assert!(!passive.is_usable_at(t0 + 9 * SECOND, || recovered += 1));
        assert!(passive.is_usable_at(t0 + 10 * SECOND, || recovered += 1));
        assert!(passive.is_usable_at(t0 + 11 * SECOND, || recovered += 1));
        assert_eq!(recovered, 1, "the recovery is seen once");
        // An active check that passes ends the period early.
        passive.take_out_at(t0, Duration::from_secs(10));
        assert!(passive.bring_back());
        assert!(passive.is_usable_at(t0 + SECOND, || recovered += 1));
        assert!(!passive.bring_back());
    }
}
