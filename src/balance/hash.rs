//! `ip_hash` and `hash`: a consistent-hash ring. The same key goes to the same
//! backend while that backend is usable, and when a backend leaves or joins
//! only about 1/N of the keys move. `ip_hash` is `hash` with the client
//! address as its key (see [`super::hash_key`]).
//!
//! Each backend owns `POINTS_PER_WEIGHT * weight` points on the ring, placed by
//! hashing its address, so a backend's points do not depend on the others. A
//! key hashes to a point and walks clockwise to the first usable backend: a
//! backend that is down, drained or ejected hands its keys to the backends
//! after its points, and gets them back when it is up again. A request without
//! the key goes round robin.

use super::round_robin::RoundRobin;
use super::{hash64, Backend, Balancer};

const POINTS_PER_WEIGHT: u64 = 40;
/// Upper bound on ring size; larger weight sums are scaled down to fit.
const MAX_POINTS: u64 = 1 << 20;

pub(crate) struct ConsistentHash {
    /// (point, backend index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// For requests without the key.
    fallback: RoundRobin,
}

impl ConsistentHash {
    pub fn new(backends: &[Backend]) -> Self {
        let total: u64 = backends
            .iter()
            .map(|b| u64::from(b.weight) * POINTS_PER_WEIGHT)
            .sum();
        let scale = if total > MAX_POINTS {
            MAX_POINTS as f64 / total as f64
        } else {
            1.0
        };
        let mut ring = Vec::new();
        for (index, backend) in backends.iter().enumerate() {
            let points =
                ((u64::from(backend.weight) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            for p in 0..points {
                let key = format!("{}#{p}", backend.address);
                ring.push((hash64(key.as_bytes()), index as u32));
            }
        }
        ring.sort_unstable();
        ConsistentHash {
            ring,
            fallback: RoundRobin::new(backends),
        }
    }

    /// The first usable backend clockwise from `position`.
    fn walk(&self, position: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < position);
        let mut last_rejected = u32::MAX;
        for k in 0..len {
            let index = self.ring[(start + k) % len].1;
            // Consecutive points of one unusable backend need not be asked again.
            if index == last_rejected {
                continue;
            }
            if usable(index as usize) {
                return Some(index as usize);
            }
            last_rejected = index;
        }
        None
    }
}

impl Balancer for ConsistentHash {
    fn pick(
        &self,
        backends: &[Backend],
        key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match key {
            Some(position) => self.walk(position, usable),
            None => self.fallback.pick(backends, None, usable),
        }
    }

    fn on_health_change(&self, backends: &[Backend]) {
        self.fallback.on_health_change(backends);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::backends;

    fn keys() -> impl Iterator<Item = u64> {
        (0..2000u32).map(|i| hash64(&i.to_be_bytes()))
    }

    #[test]
    fn same_key_same_backend_and_spread_follows_weights() {
        let b = backends(&[1, 1, 2]);
        let h = ConsistentHash::new(&b);
        let mut counts = [0usize; 3];
        for k in keys() {
            let first = h.pick(&b, Some(k), &|_| true).unwrap();
            assert_eq!(h.pick(&b, Some(k), &|_| true), Some(first));
            counts[first] += 1;
        }
        // Expected 500/500/1000; consistent hashing is within a loose band.
        assert!(counts[2] > counts[0] && counts[2] > counts[1], "{counts:?}");
        assert!(counts.iter().all(|&c| c > 250), "{counts:?}");
    }

    #[test]
    fn an_unusable_backend_moves_only_its_keys() {
        let b = backends(&[1, 1, 1, 1]);
        let h = ConsistentHash::new(&b);
        for k in keys() {
            let before = h.pick(&b, Some(k), &|_| true).unwrap();
            let after = h.pick(&b, Some(k), &|i| i != 3).unwrap();
            if before != 3 {
                assert_eq!(before, after);
            } else {
                assert_ne!(after, 3);
            }
        }
    }

    #[test]
    fn ip_hash_is_hash_by_client_ip() {
        use crate::balance::{hash_key::RequestParts, Upstream};
        let upstream = |yaml: &str| {
            let config: crate::config::UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
            Upstream::new("t".into(), backends(&[1, 2, 1, 1]), &config)
        };
        let ip_hash = upstream("algorithm: ip_hash");
        let hash = upstream("algorithm: hash\nhash_key: client_ip");
        let headers = http::HeaderMap::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..500u32 {
            let client = std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let request = RequestParts::of_client(client, &headers);
            let picked = ip_hash.select(&request, &Default::default());
            assert_eq!(picked, hash.select(&request, &Default::default()));
            seen.insert(picked);
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn no_key_goes_round_robin() {
        let b = backends(&[1, 1, 1]);
        let h = ConsistentHash::new(&b);
        let picks: Vec<usize> = (0..6)
            .map(|_| h.pick(&b, None, &|_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(h.pick(&b, None, &|i| i == 1), Some(1));
    }
}
