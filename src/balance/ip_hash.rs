//! IP hash on a consistent-hash ring: the same client address goes to the same
//! backend while that backend is usable, and when a backend leaves or joins only
//! about 1/N of the clients move.
//!
//! Each backend owns `POINTS_PER_WEIGHT * weight` points on the ring, placed by
//! hashing its address, so a backend's points do not depend on the others. A
//! client hashes to a point and walks clockwise to the first usable backend.

use super::{hash64, Backend, Balancer};
use std::net::IpAddr;

const POINTS_PER_WEIGHT: u64 = 40;
/// Upper bound on ring size; larger weight sums are scaled down to fit.
const MAX_POINTS: u64 = 1 << 20;

pub(crate) struct IpHash {
    /// (point, backend index), sorted by point.
    ring: Vec<(u64, u32)>,
}

impl IpHash {
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
        IpHash { ring }
    }
}

/// The ring position of a client address.
pub(crate) fn client_hash(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => hash64(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash64(&v4.octets()),
            None => hash64(&v6.octets()),
        },
    }
}

impl Balancer for IpHash {
    fn pick(
        &self,
        _backends: &[Backend],
        client: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let h = client_hash(client);
        let start = self.ring.partition_point(|&(point, _)| point < h);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::backends;

    fn clients() -> impl Iterator<Item = IpAddr> {
        (0..2000u32).map(|i| IpAddr::from([10, (i >> 8) as u8, (i & 255) as u8, 7]))
    }

    #[test]
    fn same_client_same_backend_and_spread_follows_weights() {
        let b = backends(&[1, 1, 2]);
        let h = IpHash::new(&b);
        let mut counts = [0usize; 3];
        for c in clients() {
            let first = h.pick(&b, c, &|_| true).unwrap();
            assert_eq!(h.pick(&b, c, &|_| true), Some(first));
            counts[first] += 1;
        }
        // Expected 500/500/1000; consistent hashing is within a loose band.
        assert!(counts[2] > counts[0] && counts[2] > counts[1], "{counts:?}");
        assert!(counts.iter().all(|&c| c > 250), "{counts:?}");
    }

    #[test]
    fn an_unusable_backend_moves_only_its_clients() {
        let b = backends(&[1, 1, 1, 1]);
        let h = IpHash::new(&b);
        for c in clients() {
            let before = h.pick(&b, c, &|_| true).unwrap();
            let after = h.pick(&b, c, &|i| i != 3).unwrap();
            if before != 3 {
                assert_eq!(before, after);
            } else {
                assert_ne!(after, 3);
            }
        }
    }
}
