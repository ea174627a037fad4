//! Slow start (`upstreams.*.slow_start`): a backend that joins an upstream
//! (added by a reload or by discovery) or comes back (its health checks pass
//! again, its passive failure period or its ejection ends) takes a share of
//! its usual traffic that grows linearly over the window, from
//! [`FIRST_SHARE`] to all of it.
//!
//! It works the same way for every algorithm that ramps: when the balancer
//! picks a ramping backend, the pick is kept with the backend's share as
//! chance, and otherwise made again without it. `ip_hash` and `hash` do not
//! ramp: moving a key off its backend and back would break the stickiness
//! that is their point. The backends of a process that just started do not
//! ramp either: there is no other backend to send their traffic to.

use super::health::now_millis;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The share of its traffic a backend gets when its ramp begins.
pub const FIRST_SHARE: f64 = 0.1;

/// When a backend's ramp began.
#[derive(Debug, Default)]
pub struct Ramp {
    /// [`now_millis`] of the start (at least 1); 0 when the backend is not ramping.
    since: AtomicU64,
}

impl Ramp {
    /// Starts (or starts again) the ramp now.
    pub fn begin(&self) {
        self.since.store(now_millis().max(1), Ordering::Relaxed);
    }

    /// The share of its traffic the backend takes now, over a `window`; 1
    /// once the window is over (the ramp then ends).
    pub fn share(&self, window: Duration) -> f64 {
        let since = self.since.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let share = share_at(now_millis().saturating_sub(since), window);
        if share >= 1.0 {
            self.since.store(0, Ordering::Relaxed);
        }
        share
    }
}

/// The share `elapsed_ms` into a ramp of `window`.
fn share_at(elapsed_ms: u64, window: Duration) -> f64 {
    let window_ms = window.as_millis() as f64;
    if window_ms <= 0.0 {
        return 1.0;
    }
    (elapsed_ms as f64 / window_ms).clamp(FIRST_SHARE, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_linearly_from_the_first_share() {
        let window = Duration::from_secs(30);
        assert_eq!(share_at(0, window), FIRST_SHARE);
        assert_eq!(share_at(15_000, window), 0.5);
        assert_eq!(share_at(30_000, window), 1.0);
        assert_eq!(share_at(90_000, window), 1.0);
        let ramp = Ramp::default();
        assert_eq!(ramp.share(window), 1.0);
        ramp.begin();
        assert!(ramp.share(window) < 0.2);
    }
}
