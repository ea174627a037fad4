//! Smooth weighted round robin, as nginx: weights 5,1,1 give `a a b a c a a`.
//!
//! The smooth order is computed once per change of the healthy set into a
//! schedule of `sum(weights)` slots (weights reduced by their gcd); a request takes
//! the next slot with one atomic increment, so picking takes no lock. Backends that
//! are passively failed or already tried are skipped to the next slot.

use super::{Backend, Balancer};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) struct RoundRobin {
    schedule: ArcSwap<Vec<u32>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(backends: &[Backend]) -> Self {
        RoundRobin {
            schedule: ArcSwap::from_pointee(schedule(backends)),
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(
        &self,
        _backends: &[Backend],
        _key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let schedule = self.schedule.load();
        let len = schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        (0..len)
            .map(|k| schedule[(start + k) % len] as usize)
            .find(|&i| usable(i))
    }

    fn on_health_change(&self, backends: &[Backend]) {
        self.schedule.store(Arc::new(schedule(backends)));
        self.next.store(0, Ordering::Relaxed);
    }
}

/// The smooth weighted order over the actively healthy backends.
fn schedule(backends: &[Backend]) -> Vec<u32> {
    let members: Vec<(u32, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.state.active.is_healthy())
        .map(|(i, b)| (i as u32, b.weight))
        .collect();
    let weights: Vec<u32> = members.iter().map(|&(_, w)| w).collect();
    smooth_schedule(&weights)
        .into_iter()
        .map(|slot| members[slot as usize].0)
        .collect()
}

/// One cycle of nginx's smooth weighted round robin over `weights`, divided
/// by their greatest common divisor: indices into `weights`, each appearing
/// `weight / gcd` times (a weight of 0 never). Each step adds every weight to
/// its current value, takes the largest (first on ties) and takes the total
/// off it. Empty when every weight is 0.
pub(crate) fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
    if divisor == 0 {
        return Vec::new();
    }
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += w;
            if *w > 0 && (reduced[best] == 0 || current[i] > current[best]) {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::backends;

    fn picks(rr: &RoundRobin, b: &[Backend], n: usize) -> String {
        (0..n)
            .map(|_| (b'a' + rr.pick(b, None, &|_| true).unwrap() as u8) as char)
            .collect()
    }

    #[test]
    fn weights_5_1_1_interleave_as_nginx() {
        let b = backends(&[5, 1, 1]);
        assert_eq!(picks(&RoundRobin::new(&b), &b, 14), "aabacaaaabacaa");
    }

    #[test]
    fn equal_weights_alternate_and_gcd_is_reduced() {
        let b = backends(&[2, 2, 2]);
        assert_eq!(picks(&RoundRobin::new(&b), &b, 6), "abcabc");
    }

    #[test]
    fn unhealthy_backends_leave_the_schedule() {
        let b = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&b);
        for _ in 0..3 {
            b[1].state.active.record(false, 1, 3);
        }
        rr.on_health_change(&b);
        assert_eq!(picks(&rr, &b, 4), "acac");
    }

    #[test]
    fn skips_unusable_and_returns_none_when_nothing_is_usable() {
        let b = backends(&[1, 1]);
        let rr = RoundRobin::new(&b);
        assert_eq!(rr.pick(&b, None, &|i| i == 1), Some(1));
        assert_eq!(rr.pick(&b, None, &|_| false), None);
    }
}
