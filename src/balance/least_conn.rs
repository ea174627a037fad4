//! Least connections: the usable backend with the fewest requests in flight divided
//! by its weight; ties go round robin from a rotating start.
//!
//! In-flight counts are kept by [`super::InFlightGuard`], so they return to zero
//! however a request ends. A pick reads every backend's counter: O(backends).

use super::{Backend, Balancer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for LeastConnections {
    fn pick(
        &self,
        backends: &[Backend],
        _client: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, i128, i128)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !usable(i) {
                continue;
            }
            let load = i128::from(backends[i].state.in_flight().max(0));
            let weight = i128::from(backends[i].weight);
            // load/weight < best_load/best_weight, without division.
            let better = match best {
                None => true,
                Some((_, best_load, best_weight)) => load * best_weight < best_load * weight,
            };
            if better {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
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
        let lc = LeastConnections::new();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let _g0 = InFlightGuard::new(&b[0].state);
        let _g2a = InFlightGuard::new(&b[2].state);
        // loads: a=1/1, b=0/1, c=1/2 -> b
        assert_eq!(lc.pick(&b, ip, &|_| true), Some(1));
        let _g1 = InFlightGuard::new(&b[1].state);
        let _g1b = InFlightGuard::new(&b[1].state);
        // a=1, b=2, c=0.5 -> c
        assert_eq!(lc.pick(&b, ip, &|_| true), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let b = backends(&[1, 1, 1]);
        let lc = LeastConnections::new();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| lc.pick(&b, ip, &|_| true).unwrap())
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
}
