//! A backend's latency estimate for `least_time`: the peak exponentially
//! weighted moving average of its response-header times, as Finagle and
//! Linkerd keep it. A sample above the estimate replaces it at once (the
//! peak); one below pulls it down with a weight that grows with the time
//! since the last sample. Read, the estimate decays toward zero with the
//! time since the last sample, so a backend that was slow and has had no
//! traffic since is tried again and can win its traffic back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The time constant of the average and of the decay.
pub(crate) const DECAY_NANOS: f64 = 10e9;

/// Nanoseconds since the process started, from a monotonic clock; never 0.
pub fn now_nanos() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_nanos() as u64 + 1
}

/// The estimate: updated by every answer, read by every pick, without a lock.
/// Concurrent updates may lose one of two samples that land together, which
/// an average over thousands does not notice.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// The estimate in nanoseconds, as `f64` bits.
    cost: AtomicU64,
    /// [`now_nanos`] of the last sample; 0 before the first.
    stamp: AtomicU64,
}

impl PeakEwma {
    /// Records that an answer took `rtt`, at `now` ([`now_nanos`]).
    pub fn observe(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let stamp = self.stamp.swap(now, Ordering::Relaxed);
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        // The estimate as a reader sees it now (decayed since the last
        // sample), then the sample: a peak above it, else blended in.
        let weight = (-(now.saturating_sub(stamp) as f64) / DECAY_NANOS).exp();
        let seen = cost * weight;
        let next = if stamp == 0 || rtt > seen {
            rtt
        } else {
            seen * weight + rtt * (1.0 - weight)
        };
        self.cost.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The estimate as of its last sample (ns) and that sample's
    /// [`now_nanos`]; `None` before the first. Two estimates decayed to the
    /// same moment compare as `a.0 * e^(a.1 / DECAY)` against the same of
    /// `b`, whatever the moment: no clock needs reading.
    pub fn last(&self) -> Option<(f64, u64)> {
        let stamp = self.stamp.load(Ordering::Relaxed);
        (stamp != 0).then(|| (f64::from_bits(self.cost.load(Ordering::Relaxed)), stamp))
    }

    /// The estimate at `now` in nanoseconds, decayed since the last sample;
    /// `None` before the first sample.
    pub fn cost(&self, now: u64) -> Option<f64> {
        let stamp = self.stamp.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let idle = now.saturating_sub(stamp) as f64;
        Some(cost * (-idle / DECAY_NANOS).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000 * MS;

    #[test]
    fn peaks_are_taken_at_once_and_lower_samples_pull_slowly() {
        let ewma = PeakEwma::default();
        assert_eq!(ewma.cost(SECOND), None);
        ewma.observe(Duration::from_millis(2), SECOND);
        assert_eq!(ewma.cost(SECOND), Some(2e6));
        // A slow answer is the estimate at once.
        ewma.observe(Duration::from_millis(40), SECOND + MS);
        assert_eq!(ewma.cost(SECOND + MS), Some(40e6));
        // A fast one 1 s later: decayed to 40 x e^-0.1 = 36.2 ms, then moved
        // a tenth of the way (1 - e^-0.1) toward 2 ms: 33 ms.
        ewma.observe(Duration::from_millis(2), 2 * SECOND + MS);
        let cost = ewma.cost(2 * SECOND + MS).unwrap();
        assert!((32e6..34e6).contains(&cost), "{cost}");
        // After 5 s without traffic a fast answer pulls the estimate down,
        // never up: 33 ms decays to 20 ms, and a 2 ms answer makes it 13 ms.
        ewma.observe(Duration::from_millis(2), 7 * SECOND + MS);
        let after_idle = ewma.cost(7 * SECOND + MS).unwrap();
        assert!((12e6..14e6).contains(&after_idle), "{after_idle}");
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(40), SECOND);
        let later = ewma.cost(31 * SECOND).unwrap();
        // e^-3 of 40 ms: below the 2 ms of a fast backend.
        assert!((1.9e6..2.1e6).contains(&later), "{later}");
    }
}
