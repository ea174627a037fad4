//! Outlier detection (`upstreams.*.outlier`): a backend whose answers are
//! `consecutive_5xx` 5xx in a row, or whose connections fail or time out as
//! many times in a row, is ejected for `ejection`; ejected again soon after
//! it returns, for twice as long as the last time (up to
//! [`LONGEST_EJECTION`], or `ejection` when that is longer). No more than
//! `max_ejected` of the upstream's backends are out at once (at least one
//! may be, in an upstream of two or more). An ejected backend takes no
//! request until its time runs out; it then returns on its own (and ramps up
//! when the upstream has `slow_start`).

use super::health::now_millis;
use crate::config::OutlierConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The most a doubled ejection lasts, unless `ejection` itself is longer.
const LONGEST_EJECTION: Duration = Duration::from_secs(300);

/// An upstream's outlier settings, as compiled.
#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    pub consecutive: u32,
    pub ejection: Duration,
    /// The share of the upstream's backends that may be out at once (0 to 1).
    pub max_ejected: f64,
}

impl OutlierPolicy {
    pub fn new(config: &OutlierConfig) -> OutlierPolicy {
        OutlierPolicy {
            consecutive: config.consecutive_5xx.max(1),
            ejection: config.ejection,
            max_ejected: config.max_ejected.share(),
        }
    }

    /// How many of `backends` backends may be ejected at once.
    pub fn max_out(&self, backends: usize) -> usize {
        let share = (backends as f64 * self.max_ejected).floor() as usize;
        if backends >= 2 && self.max_ejected > 0.0 {
            share.max(1)
        } else {
            share
        }
    }
}

/// One backend's outlier state: its failure streak and its ejection.
#[derive(Debug, Default)]
pub struct Ejection {
    streak: AtomicU32,
    /// [`now_millis`] until which the backend is out; 0 when it is in.
    until: AtomicU64,
    /// How long its last ejection lasted, in ms.
    last_ms: AtomicU64,
    /// When its last ejection ended ([`now_millis`]).
    returned_at: AtomicU64,
}

impl Ejection {
    /// Whether the backend is in (not ejected). When its ejection has just run
    /// out, ends it and calls `on_return` (once, from whichever caller saw it).
    pub(crate) fn is_in(&self, on_return: impl FnOnce()) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = now_millis();
        if now < until {
            return false;
        }
        if self
            .until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.returned_at.store(now, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            on_return();
        }
        true
    }

    /// Whether an ejection is running now (without ending one that ran out).
    pub(crate) fn is_out(&self) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        until != 0 && now_millis() < until
    }

    /// An answer that was not a failure: the streak starts again.
    pub(crate) fn record_success(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns the streak it makes.
    pub(crate) fn record_failure(&self) -> u32 {
        self.streak
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Ejects the backend from now; returns for how long. An ejection that
    /// starts within its last one's length after the backend returned lasts
    /// twice as long as that one.
    pub(crate) fn eject(&self, base: Duration) -> Duration {
        self.eject_at(now_millis(), base)
    }

    fn eject_at(&self, now: u64, base: Duration) -> Duration {
        let base_ms = base.as_millis() as u64;
        let longest = LONGEST_EJECTION.as_millis().max(base.as_millis()) as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let returned = self.returned_at.load(Ordering::Relaxed);
        let repeat = last != 0 && now.saturating_sub(returned) < last;
        let length = if repeat {
            last.saturating_mul(2).min(longest)
        } else {
            base_ms
        }
        .max(1);
        self.last_ms.store(length, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
        self.until.store((now + length).max(1), Ordering::Relaxed);
        Duration::from_millis(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1000;

    #[test]
    fn repeated_ejections_double_up_to_the_longest_and_reset_after_a_quiet_spell() {
        let e = Ejection::default();
        let base = Duration::from_secs(30);
        let t0 = 1_000 * SECOND;
        assert_eq!(e.eject_at(t0, base), base);
        // Back at t0 + 30 s, ejected again 10 s later: 60 s.
        e.returned_at.store(t0 + 30 * SECOND, Ordering::Relaxed);
        assert_eq!(e.eject_at(t0 + 40 * SECOND, base).as_secs(), 60);
        e.returned_at.store(t0 + 100 * SECOND, Ordering::Relaxed);
        assert_eq!(e.eject_at(t0 + 101 * SECOND, base).as_secs(), 120);
        e.returned_at.store(t0 + 221 * SECOND, Ordering::Relaxed);
        assert_eq!(e.eject_at(t0 + 222 * SECOND, base).as_secs(), 240);
        e.returned_at.store(t0 + 462 * SECOND, Ordering::Relaxed);
        assert_eq!(e.eject_at(t0 + 463 * SECOND, base).as_secs(), 300);
        // In for longer than its last ejection: back to the base.
        e.returned_at.store(t0 + 763 * SECOND, Ordering::Relaxed);
        assert_eq!(e.eject_at(t0 + 1_100 * SECOND, base), base);
    }

    #[test]
    fn the_share_out_at_once_rounds_down_but_lets_one_out() {
        let policy = |share| OutlierPolicy {
            consecutive: 5,
            ejection: Duration::from_secs(30),
            max_ejected: share,
        };
        assert_eq!(policy(0.5).max_out(3), 1);
        assert_eq!(policy(0.5).max_out(10), 5);
        assert_eq!(policy(0.1).max_out(3), 1);
        assert_eq!(policy(0.5).max_out(1), 0);
        assert_eq!(policy(0.0).max_out(10), 0);
        assert_eq!(policy(1.0).max_out(4), 4);
    }

    #[test]
    fn a_streak_counts_failures_in_a_row() {
        let e = Ejection::default();
        assert_eq!(e.record_failure(), 1);
        assert_eq!(e.record_failure(), 2);
        e.record_success();
        assert_eq!(e.record_failure(), 1);
        assert!(e.is_in(|| {}));
        e.eject(Duration::from_secs(30));
        assert!(e.is_out());
        assert!(!e.is_in(|| panic!("not over yet")));
    }
}
