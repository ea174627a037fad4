//! Least time: of two usable backends drawn at random, the one with the lower
//! score, where the score is the backend's peak-EWMA latency (see
//! [`super::peak_ewma`]) times its requests in flight plus one, divided by its
//! weight ("power of two choices", as Finagle and Linkerd balance). A pick
//! costs two draws and two reads, whatever the size of the pool, unless most
//! backends are unusable: after eight draws that found fewer than two, it
//! reads them all.
//!
//! A backend with no sample yet scores 0 while it has nothing in flight, so it
//! is tried at once; with a request in flight and still no answer, it scores
//! above any measured backend, so one that hangs does not collect every new
//! request in the meantime.

use super::peak_ewma::DECAY_NANOS;
use super::sampling::{below, thread_random};
use super::{Backend, Balancer};

/// Draws at random before falling back to a full scan.
const DRAWS: usize = 8;

/// The score of a backend that has requests in flight and has not answered
/// yet: above any latency (in ns) times in-flight count a backend can have.
const UNMEASURED_BUSY: f64 = 1e15;

pub(crate) struct LeastTime;

/// What a backend's score is made of.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// No sample yet and nothing in flight: scores 0.
    Untried,
    /// No sample yet, requests in flight: [`UNMEASURED_BUSY`] plus them, per
    /// unit of weight.
    Waiting(f64),
    /// Its estimate as of its last sample times (in flight + 1), per unit
    /// of weight, and that sample's time.
    Measured { load: f64, stamp: u64 },
}

fn load_of(backend: &Backend) -> Load {
    let in_flight = backend.state.in_flight().max(0) as f64;
    let weight = f64::from(backend.weight.max(1));
    match backend.state.latency.last() {
        Some((cost, stamp)) => Load::Measured {
            load: cost * (in_flight + 1.0) / weight,
            stamp,
        },
        None if in_flight == 0.0 => Load::Untried,
        None => Load::Waiting((UNMEASURED_BUSY + in_flight) / weight),
    }
}

/// Whether `a` scores lower than `b`, both decayed to the same moment. An
/// estimate decays by `e^(-idle / DECAY)`, so of two measured backends the
/// comparison is `a.load < b.load * e^((b.stamp - a.stamp) / DECAY)`: one
/// exponential, and no clock.
fn lower(a: Load, b: Load) -> bool {
    match (a, b) {
        (Load::Untried, Load::Untried) => false,
        (Load::Untried, _) => true,
        (_, Load::Untried) => false,
        (Load::Measured { .. }, Load::Waiting(_)) => true,
        (Load::Waiting(_), Load::Measured { .. }) => false,
        (Load::Waiting(a), Load::Waiting(b)) => a < b,
        (Load::Measured { load: a, stamp: sa }, Load::Measured { load: b, stamp: sb }) => {
            let exponent = ((sb as f64 - sa as f64) / DECAY_NANOS).clamp(-700.0, 700.0);
            a < b * exponent.exp()
        }
    }
}

impl LeastTime {
    /// The usable backend with the lowest score, reading all of them.
    fn scan(backends: &[Backend], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let start = below(thread_random(), n.max(1));
        let mut best: Option<(usize, Load)> = None;
        for i in (0..n).map(|k| (start + k) % n).filter(|&i| usable(i)) {
            let load = load_of(&backends[i]);
            if best.is_none_or(|(_, b)| lower(load, b)) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

impl Balancer for LeastTime {
    fn pick(
        &self,
        backends: &[Backend],
        _key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let mut first: Option<usize> = None;
        for _ in 0..DRAWS {
            let i = below(thread_random(), n);
            if first == Some(i) || !usable(i) {
                continue;
            }
            let Some(f) = first else {
                first = Some(i);
                continue;
            };
            return Some(if lower(load_of(&backends[i]), load_of(&backends[f])) {
                i
            } else {
                f
            });
        }
        Self::scan(backends, usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::backends;
    use crate::balance::InFlightGuard;
    use std::time::Duration;

    fn shares(b: &[Backend], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; b.len()];
        for _ in 0..picks {
            counts[LeastTime.pick(b, None, &|_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn a_slow_backend_loses_every_draw_it_is_in() {
        let b = backends(&[1, 1, 1]);
        let now = crate::balance::peak_ewma::now_nanos();
        b[0].state.latency.observe(Duration::from_millis(2), now);
        b[1].state.latency.observe(Duration::from_millis(40), now);
        b[2].state.latency.observe(Duration::from_millis(2), now);
        let counts = shares(&b, 3000);
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0] > 1200 && counts[2] > 1200, "{counts:?}");
    }

    #[test]
    fn unmeasured_backends_are_tried_once_then_wait_for_their_answer() {
        let b = backends(&[1, 1]);
        let now = crate::balance::peak_ewma::now_nanos();
        b[0].state.latency.observe(Duration::from_millis(2), now);
        // b[1] has no sample and nothing in flight: it wins.
        assert_eq!(LeastTime.pick(&b, None, &|_| true), Some(1));
        // With a request in flight and no answer yet, it loses to a measured one.
        let _waiting = InFlightGuard::new(&b[1].state);
        assert_eq!(LeastTime.pick(&b, None, &|_| true), Some(0));
    }

    #[test]
    fn in_flight_and_weight_scale_the_score() {
        let b = backends(&[1, 3]);
        let now = crate::balance::peak_ewma::now_nanos();
        b[0].state.latency.observe(Duration::from_millis(2), now);
        b[1].state.latency.observe(Duration::from_millis(2), now);
        // b[1]: 2 ms x (2 + 1) / 3 = 2 ms, below b[0]: 2 ms x (1 + 1) / 1 = 4 ms.
        let _busy0 = InFlightGuard::new(&b[0].state);
        let _busy1: Vec<_> = (0..2).map(|_| InFlightGuard::new(&b[1].state)).collect();
        assert_eq!(LeastTime.pick(&b, None, &|_| true), Some(1));
        let _more1: Vec<_> = (0..4).map(|_| InFlightGuard::new(&b[1].state)).collect();
        // Now b[1] is 2 ms x (6 + 1) / 3, about 4.7 ms: above b[0]'s 4 ms.
        assert_eq!(LeastTime.pick(&b, None, &|_| true), Some(0));
    }

    #[test]
    fn usable_is_honoured_and_a_lone_backend_is_found() {
        let b = backends(&[1; 50]);
        for _ in 0..100 {
            assert_eq!(LeastTime.pick(&b, None, &|i| i == 37), Some(37));
        }
        assert_eq!(LeastTime.pick(&b, None, &|_| false), None);
        assert_eq!(LeastTime.pick(&[], None, &|_| true), None);
    }
}
