//! A route's `split`: its arms, each an upstream with a weight and an
//! optional `when_header`, and the choice of one arm per request.
//!
//! Everything is precomputed when the topology is compiled: the header
//! conditions as parsed names and values, the metric handles of each arm,
//! and a smooth weighted schedule of the arms. Choosing an arm reads these
//! and bumps one atomic counter: no allocation, no lock.

use crate::balance::hash64;
use crate::balance::round_robin::smooth_schedule;
use crate::config::{Algorithm, SplitArmConfig, UpstreamConfig};
use crate::forwarding::canonical_ip;
use crate::metrics::RouteMetrics;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The compiled `split` of one route.
pub struct Split {
    arms: Box<[Arm]>,
    /// Arm indices in smooth weighted round-robin order (as nginx), over the
    /// weights divided by their greatest common divisor: each arm with a
    /// weight appears `weight / gcd` times, an arm of weight 0 never.
    schedule: Box<[u32]>,
    /// The next slot of `schedule` for requests chosen by weight.
    next: AtomicUsize,
    /// An arm's upstream balances by `ip_hash`: the weighted choice follows
    /// the client address, so a client keeps its arm (and so its backend).
    sticky: bool,
}

/// One arm of a split.
pub struct Arm {
    /// Index into `Topology::upstreams`.
    pub upstream: usize,
    /// The upstream's name: the `upstream` label of the arm's requests.
    pub label: String,
    /// The route's metrics with the arm's `upstream` label.
    pub metrics: RouteMetrics,
    /// Headers a request must carry, each with exactly this value, to be sent
    /// to this arm whatever the weights; empty: none.
    when_header: Box<[(HeaderName, HeaderValue)]>,
}

impl Split {
    /// The split of the route labelled `route` with `arms` as written.
    /// `upstream_index` maps upstream names to their index, `upstreams` holds
    /// their config (for `algorithm`). `None` when no arm can take a request
    /// by weight, which validation rules out.
    pub(super) fn compile(
        route: &str,
        arms: &[SplitArmConfig],
        upstream_index: &HashMap<&str, usize>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Option<Split> {
        let known: Vec<&SplitArmConfig> = arms
            .iter()
            .filter(|arm| upstream_index.contains_key(arm.upstream.as_str()))
            .collect();
        let weights: Vec<u32> = known.iter().map(|arm| arm.weight).collect();
        let schedule = smooth_schedule(&weights);
        if schedule.is_empty() {
            return None;
        }
        let sticky = known.iter().any(|arm| {
            upstreams
                .get(&arm.upstream)
                .is_some_and(|u| u.algorithm == Algorithm::IpHash)
        });
        let arms = known
            .iter()
            .filter_map(|arm| {
                let upstream = *upstream_index.get(arm.upstream.as_str())?;
                Some(Arm {
                    upstream,
                    label: arm.upstream.clone(),
                    metrics: RouteMetrics::new(route, &arm.upstream),
                    when_header: arm
                        .when_header
                        .iter()
                        .map(|(name, value)| (name.name().clone(), value.clone()))
                        .collect(),
                })
            })
            .collect();
        Some(Split {
            arms,
            schedule: schedule.into_boxed_slice(),
            next: AtomicUsize::new(0),
            sticky,
        })
    }

    /// The arms, in the order written.
    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The index of the arm a request goes to, given its headers and its
    /// client address (after `trusted_proxies`):
    /// - the first arm, in order, whose `when_header` the request carries;
    /// - else, when the split is sticky, the arm of the client address's
    ///   slot in the schedule: the same client always gets the same arm, and
    ///   over many clients each arm gets its weight's share;
    /// - else the next arm of the schedule: over `k` rounds of the schedule
    ///   each arm gets exactly `k * weight / gcd` requests.
    ///
    /// Always an index into [`Split::arms`]; allocates nothing, locks nothing.
    pub fn choose(&self, headers: &HeaderMap, client: IpAddr) -> usize {
        if let Some(claimed) = self.arms.iter().position(|arm| arm.claims(headers)) {
            return claimed;
        }
        let len = self.schedule.len();
        let slot = if self.sticky {
            client_slot(client, len)
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        self.schedule[slot] as usize
    }
}

impl Arm {
    /// Whether the request with `headers` carries every header of the arm's
    /// `when_header` with exactly its value (one of its values, when the
    /// header is repeated). An arm without `when_header` claims nothing.
    fn claims(&self, headers: &HeaderMap) -> bool {
        !self.when_header.is_empty()
            && self
                .when_header
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// Prefixed to the client address before hashing, so that the arm a client
/// gets does not decide where it lands on the `ip_hash` ring of the arm's
/// upstream (which hashes the bare address): without it the clients of an arm
/// would all hash to one stretch of the ring, and so to a few backends.
const STICKY_SALT: u8 = 0x5a;

/// The slot of `client` in a schedule of `len` slots: the address's hash
/// scaled onto `0..len`, so that clients spread over the slots evenly.
fn client_slot(client: IpAddr, len: usize) -> usize {
    let mut key = [STICKY_SALT; 17];
    let used = match canonical_ip(client) {
        IpAddr::V4(v4) => {
            key[1..5].copy_from_slice(&v4.octets());
            5
        }
        IpAddr::V6(v6) => {
            key[1..].copy_from_slice(&v6.octets());
            17
        }
    };
    let hash = hash64(&key[..used]);
    ((u128::from(hash) * len as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::HeaderName as ConfigHeaderName;

    fn arm(upstream: &str, weight: u32, when: &[(&str, &str)]) -> SplitArmConfig {
        SplitArmConfig {
            upstream: upstream.to_string(),
            weight,
            when_header: when
                .iter()
                .map(|(n, v)| {
                    let name = ConfigHeaderName::parse(n).unwrap();
                    (name, HeaderValue::from_str(v).unwrap())
                })
                .collect(),
        }
    }

    fn split(arms: &[SplitArmConfig], ip_hash: bool) -> Split {
        let index: HashMap<&str, usize> = [("a", 0), ("b", 1), ("c", 2)].into_iter().collect();
        let mut upstreams = BTreeMap::new();
        for name in ["a", "b", "c"] {
            let text = if ip_hash {
                "algorithm: ip_hash\nbackends: [{address: 127.0.0.1:1}]"
            } else {
                "backends: [{address: 127.0.0.1:1}]"
            };
            upstreams.insert(name.to_string(), serde_yaml::from_str(text).unwrap());
        }
        Split::compile("t", arms, &index, &upstreams).unwrap()
    }

    #[test]
    fn the_schedule_is_smooth_and_reduced() {
        assert_eq!(smooth_schedule(&[90, 10]), [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[0, 3, 0]), [1]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn weights_give_exact_shares_and_weight_0_gets_only_its_header() {
        let s = split(
            &[arm("a", 90, &[]), arm("b", 0, &[("X-Canary", "1")])],
            false,
        );
        let none = HeaderMap::new();
        let client = IpAddr::from([127, 0, 0, 1]);
        let picks: Vec<usize> = (0..1000).map(|_| s.choose(&none, client)).collect();
        assert!(picks.iter().all(|&p| p == 0));
        let mut marked = HeaderMap::new();
        marked.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(s.choose(&marked, client), 1);
        marked.insert("x-canary", HeaderValue::from_static("2"));
        assert_eq!(s.choose(&marked, client), 0, "not the exact value");

        let s = split(
            &[arm("a", 3, &[]), arm("b", 1, &[]), arm("c", 1, &[])],
            false,
        );
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[s.choose(&none, client)] += 1;
        }
        assert_eq!(counts, [300, 100, 100]);
    }

    #[test]
    fn the_first_arm_that_claims_the_request_wins() {
        let s = split(
            &[
                arm("a", 1, &[]),
                arm("b", 1, &[("X-A", "1"), ("X-B", "2")]),
                arm("c", 1, &[("X-A", "1")]),
            ],
            false,
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        assert_eq!(s.choose(&headers, IpAddr::from([127, 0, 0, 1])), 2);
        headers.append("x-b", HeaderValue::from_static("0"));
        headers.append("x-b", HeaderValue::from_static("2"));
        assert_eq!(s.choose(&headers, IpAddr::from([127, 0, 0, 1])), 1);
    }

    #[test]
    fn sticky_choice_keeps_clients_spreads_them_and_leaves_the_ring_alone() {
        let s = split(&[arm("a", 1, &[]), arm("b", 1, &[])], true);
        let none = HeaderMap::new();
        let clients: Vec<IpAddr> = (0..4000u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        let mut in_a = 0;
        let mut a_in_upper_ring = 0;
        for &client in &clients {
            let first = s.choose(&none, client);
            assert!((0..5).all(|_| s.choose(&none, client) == first));
            if first == 0 {
                in_a += 1;
                let ring = crate::balance::ip_hash::client_hash(client);
                a_in_upper_ring += usize::from(ring >> 63 == 1);
            }
        }
        assert!((1800..2200).contains(&in_a), "{in_a} of 4000 in a");
        // The clients of one arm are spread over the whole ring of its upstream.
        let half = in_a / 2;
        assert!(
            a_in_upper_ring.abs_diff(half) < in_a / 10,
            "{a_in_upper_ring} of {in_a}"
        );
        let mapped = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            s.choose(&none, mapped),
            s.choose(&none, IpAddr::from([10, 0, 0, 7]))
        );
    }
}
