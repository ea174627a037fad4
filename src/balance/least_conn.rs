//! Least connections: the usable backend with the fewest requests in flight divided
//! by its weight.
//!
//! Up to [`EXACT_SCAN_MAX`] backends, a pick reads every backend's counter and
//! takes the least loaded (ties go round robin from a rotating start). Above that,
//! reading every counter costs more than the request is worth (about 5 ns a
//! backend), so a pick draws two usable backends at random, each with a chance
//! proportional to its weight (Vose's alias table, built once per topology), and
//! takes the less loaded of the two: "power of two choices", as Envoy and
//! HAProxy's `random(2)` do, which keeps the most loaded backend within a small
//! factor of the least loaded at O(1) per pick. When draws keep landing on
//! unusable backends (most of the pool down or tried), the pick falls back to the
//! full scan.
//!
//! In-flight counts are kept by [`super::InFlightGuard`], so they return to zero
//! however a request ends.

use super::sampling::{splitmix64, AliasTable};
use super::{Backend, Balancer};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Pools up to this size are scanned in full on every pick.
pub(crate) const EXACT_SCAN_MAX: usize = 16;

/// Draws at random before falling back to a full scan.
const DRAWS: usize = 8;

pub(crate) struct LeastConnections {
    next: AtomicUsize,
    /// Weighted sampling for pools above [`EXACT_SCAN_MAX`].
    sampler: Option<AliasTable>,
    /// The state of the random draws (a counter fed through a mixer).
    draws: AtomicU64,
}

impl LeastConnections {
    pub fn new(backends: &[Backend]) -> Self {
        let sampler = (backends.len() > EXACT_SCAN_MAX).then(|| {
            let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight)).collect();
            AliasTable::new(&weights)
        });
        LeastConnections {
            next: AtomicUsize::new(0),
            sampler,
            draws: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The least loaded usable backend, reading all of them.
    fn scan(&self, backends: &[Backend], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if usable(i) && best.is_none_or(|b| less_loaded(&backends[i], &backends[b])) {
                best = Some(i);
            }
        }
        best
    }

    /// The less loaded of two weighted random draws of usable backends; `None`
    /// when [`DRAWS`] draws found fewer than two.
    fn two_choices(
        &self,
        sampler: &AliasTable,
        backends: &[Backend],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut first: Option<usize> = None;
        for _ in 0..DRAWS {
            let random = splitmix64(
                self.draws
                    .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed),
            );
            let i = sampler.sample(random);
            if !usable(i) || first == Some(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(f) => {
                    return Some(if less_loaded(&backends[i], &backends[f]) {
                        i
                    } else {
                        f
                    });
                }
            }
        }
        None
    }
}

/// Whether `a` has fewer requests in flight per unit of weight than `b`
/// (compared without division).
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let load = |x: &Backend| i128::from(x.state.in_flight().max(0));
    load(a) * i128::from(b.weight) < load(b) * i128::from(a.weight)
}

impl Balancer for LeastConnections {
    fn pick(
        &self,
        backends: &[Backend],
        _key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match &self.sampler {
            Some(sampler) if sampler.len() == backends.len() => self
                .two_choices(sampler, backends, usable)
                .or_else(|| self.scan(backends, usable)),
            _ => self.scan(backends, usable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::backends;
    use crate::balance::InFlightGuard;

    #[test]
    fn prefers_fewest_in_flight_per_weight() {
        let b = backends(&[1, 1, 2]);
        let lc = LeastConnections::new(&b);
        let _g0 = InFlightGuard::new(&b[0].state);
        let _g2a = InFlightGuard::new(&b[2].state);
        // loads: a=1/1, b=0/1, c=1/2 -> b
        assert_eq!(lc.pick(&b, None, &|_| true), Some(1));
        let _g1 = InFlightGuard::new(&b[1].state);
        let _g1b = InFlightGuard::new(&b[1].state);
        // a=1, b=2, c=0.5 -> c
        assert_eq!(lc.pick(&b, None, &|_| true), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let b = backends(&[1, 1, 1]);
        let lc = LeastConnections::new(&b);
        let picks: Vec<_> = (0..6)
            .map(|_| lc.pick(&b, None, &|_| true).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn guards_return_counts_to_zero() {
        let b = backends(&[1]);
        {
            let _a = InFlightGuard::new(&b[0].state);
            let _b = InFlightGuard::new(&b[0].state);
            assert_eq!(b[0].state.in_flight(), 2);
        }
        assert_eq!(b[0].state.in_flight(), 0);
    }

    #[test]
    fn large_pools_pick_the_less_loaded_of_two_draws() {
        let b = backends(&[1; 100]);
        let lc = LeastConnections::new(&b);
        // Half the pool is busy: a pick lands on an idle backend unless both draws
        // were busy (about 1 in 4).
        let _busy: Vec<_> = (0..50).map(|i| InFlightGuard::new(&b[i].state)).collect();
        let idle = (0..4000)
            .filter(|_| lc.pick(&b, None, &|_| true).is_some_and(|i| i >= 50))
            .count();
        assert!((2800..3200).contains(&idle), "{idle} of 4000 picks idle");
    }

    #[test]
    fn large_pools_honour_usable_and_fall_back_to_a_scan() {
        let b = backends(&[1; 100]);
        let lc = LeastConnections::new(&b);
        for _ in 0..200 {
            let pick = lc.pick(&b, None, &|i| i % 10 == 3).unwrap();
            assert_eq!(pick % 10, 3);
        }
        // One usable backend: the draws rarely find it, the scan always does.
        for _ in 0..50 {
            assert_eq!(lc.pick(&b, None, &|i| i == 77), Some(77));
        }
        assert_eq!(lc.pick(&b, None, &|_| false), None);
    }
}
