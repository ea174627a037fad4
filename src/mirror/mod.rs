//! Request mirroring, as nginx `mirror` and Envoy's request mirror policies
//! do it, but never in the client's way: a route's `mirror:` copies a share
//! of its requests to another upstream (the shadow). A copy is gathered while
//! the request passes (its head as the backend gets it, its body as it
//! streams through) and sent by a background task once the body is whole;
//! the shadow's answer is read and discarded. What the client gets (answer,
//! timing, errors) never waits for or depends on the shadow.
//!
//! Bounds: a request whose body is longer than `max_body` is not copied; at
//! most `max_in_flight` copies of a route are on their way at once, and a
//! copy beyond that is dropped, never queued; every copy ends within
//! `timeout`. Each copy made is counted once in
//! `tollgate_mirror_requests_total`: `sent` (the shadow answered, whatever
//! its status), `failed` (no answer) or `dropped` (not sent).

mod copy;
mod send;

pub use copy::MirrorCopy;

use crate::config::MirrorConfig;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The compiled `mirror:` of one route.
pub struct Mirror {
    /// Index of the shadow upstream in the topology's upstreams.
    upstream: usize,
    /// A request is copied when a random `u64` is below this; `None`: every one.
    threshold: Option<u64>,
    max_body: u64,
    timeout: Duration,
    /// Places for copies in flight; `max_in_flight` of them.
    places: Arc<Semaphore>,
    max_in_flight: u32,
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    /// The hold on the series of those three.
    _series: crate::metrics::Lease,
}

/// What became of a copy that was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The shadow answered (any status).
    Sent,
    /// No answer: no usable backend, a failed connection or exchange, the timeout.
    Failed,
}

impl Mirror {
    /// The mirror of route `route` (its metrics label) to upstream `upstream`
    /// (its index). A `previous` mirror of the same route with the same bound
    /// hands over its places, so copies in flight across a reload still count.
    pub fn compile(
        route: &str,
        config: &MirrorConfig,
        upstream: usize,
        previous: Option<&Mirror>,
    ) -> Mirror {
        let share = config.percent.share();
        let threshold = (share < 1.0).then(|| (share * 2f64.powi(64)) as u64);
        let places = previous
            .filter(|before| before.max_in_flight == config.max_in_flight)
            .map_or_else(
                || Arc::new(Semaphore::new(config.max_in_flight as usize)),
                |before| Arc::clone(&before.places),
            );
        let family = &crate::metrics::metrics().mirror_requests;
        let series = crate::metrics::Lease::new(
            &[family],
            &[("route", route), ("upstream", config.upstream.as_str())],
        );
        let counter = |result| family.with_label_values(&[route, config.upstream.as_str(), result]);
        Mirror {
            upstream,
            threshold,
            max_body: config.max_body,
            timeout: config.timeout,
            places,
            max_in_flight: config.max_in_flight,
            sent: counter("sent"),
            failed: counter("failed"),
            dropped: counter("dropped"),
            _series: series,
        }
    }

    /// The index of the shadow upstream in the topology's upstreams.
    pub fn upstream(&self) -> usize {
        self.upstream
    }

    /// The share of requests drawn for a copy, 0 to 1.
    pub fn share(&self) -> f64 {
        self.threshold
            .map_or(1.0, |threshold| threshold as f64 / 2f64.powi(64))
    }

    /// Copies in flight now, and the most there may be.
    pub fn in_flight(&self) -> (u32, u32) {
        let free = self.places.available_permits() as u32;
        (self.max_in_flight.saturating_sub(free), self.max_in_flight)
    }

    /// The copies counted so far: sent, failed, dropped (as the metric has them).
    pub fn counts(&self) -> [u64; 3] {
        [self.sent.get(), self.failed.get(), self.dropped.get()]
    }

    /// Whether this request is to be copied: drawn at the mirror's
    /// `percent`, and given a place among the copies in flight. `None` when
    /// it is not drawn (not counted), or when every place is taken (counted
    /// as dropped). Takes no lock: one random number and, when drawn, one
    /// atomic operation.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        if let Some(threshold) = self.threshold {
            if rand::random::<u64>() >= threshold {
                return None;
            }
        }
        match Arc::clone(&self.places).try_acquire_owned() {
            Ok(place) => Some(Ticket {
                mirror: Arc::clone(self),
                _place: place,
                settled: false,
            }),
            Err(_) => {
                self.dropped.inc();
                None
            }
        }
    }
}

/// An admitted copy's place among those in flight, held from its admission
/// until it is sent and answered, or given up. Dropped before it was
/// settled (the body was too long, the request ended before its body was
/// read whole), it counts the copy as dropped.
pub struct Ticket {
    mirror: Arc<Mirror>,
    _place: OwnedSemaphorePermit,
    settled: bool,
}

impl Ticket {
    pub(crate) fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Counts the copy's outcome and gives its place back.
    pub(crate) fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        match outcome {
            Outcome::Sent => self.mirror.sent.inc(),
            Outcome::Failed => self.mirror.failed.inc(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.mirror.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(yaml: &str) -> Arc<Mirror> {
        let config: MirrorConfig = serde_yaml::from_str(yaml).unwrap();
        Arc::new(Mirror::compile("test-route", &config, 0, None))
    }

    #[test]
    fn percent_draws_about_that_share() {
        let tenth = mirror("{upstream: shadow-a, percent: 10%, max_in_flight: 100000}");
        let mut tickets = Vec::new();
        for _ in 0..20_000 {
            tickets.extend(tenth.admit());
        }
        // 2,000 expected; 6 standard deviations (~42 each) either side.
        assert!(
            (1_750..=2_250).contains(&tickets.len()),
            "{}",
            tickets.len()
        );
        let none = mirror("{upstream: shadow-b, percent: 0}");
        assert!((0..1000).all(|_| none.admit().is_none()));
        let all = mirror("{upstream: shadow-c, max_in_flight: 2000}");
        let admitted: Vec<Ticket> = (0..1000).filter_map(|_| all.admit()).collect();
        assert_eq!(admitted.len(), 1000);
    }

    #[test]
    fn copies_beyond_the_bound_are_dropped_and_counted() {
        let bounded = mirror("{upstream: shadow-d, max_in_flight: 2}");
        let first = bounded.admit().unwrap();
        let second = bounded.admit().unwrap();
        assert!(bounded.admit().is_none());
        assert_eq!(bounded.dropped.get(), 1);
        first.settle(Outcome::Sent);
        assert_eq!(bounded.sent.get(), 1);
        // A place given back is taken again; an unsettled ticket is a drop.
        let third = bounded.admit().unwrap();
        drop(third);
        assert_eq!(bounded.dropped.get(), 2);
        second.settle(Outcome::Failed);
        assert_eq!(bounded.failed.get(), 1);
        assert_eq!(bounded.places.available_permits(), 2);
    }

    #[test]
    fn a_reload_with_the_same_bound_keeps_the_places() {
        let before = mirror("{upstream: shadow-e, max_in_flight: 1}");
        let held = before.admit().unwrap();
        let config: MirrorConfig =
            serde_yaml::from_str("{upstream: shadow-e, max_in_flight: 1}").unwrap();
        let after = Arc::new(Mirror::compile("test-route", &config, 0, Some(&before)));
        assert!(after.admit().is_none());
        drop(held);
        assert!(after.admit().is_some());
    }
}
