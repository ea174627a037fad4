//! A route's `split`: its arms, each an upstream with a weight and an
//! optional `when_header`, and the choice of one arm per request.
//!
//! Everything is precomputed when the topology is compiled: the header
//! conditions as parsed names and values, the metric handles of each arm,
//! and a smooth weighted schedule of the arms. Choosing an arm reads these
//! and bumps one atomic counter: no allocation, no lock.

use crate::balance::hash_key::{backend_values, RequestParts};
use crate::balance::round_robin::smooth_schedule;
use crate::config::{HashKey, SplitArmConfig, UpstreamConfig};
use crate::metrics::RouteMetrics;
use http::{HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashMap};
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
    /// The key of the first arm (in order) whose upstream hashes (`ip_hash`:
    /// the client address; `hash`: its `hash_key`): the weighted choice
    /// follows it, so a key keeps its arm (and so its backend).
    sticky: Option<HashKey>,
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
        let sticky = known.iter().find_map(|arm| {
            upstreams
                .get(&arm.upstream)
                .and_then(|u| u.ring_key())
                .cloned()
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

    /// The index of the arm `request` goes to:
    /// - the first arm, in order, whose `when_header` the request carries;
    /// - else, when the split is sticky and the request has its key, the arm
    ///   of the key's slot in the schedule: the same key always gets the
    ///   same arm, and over many keys each arm gets its weight's share;
    /// - else the next arm of the schedule: over `k` rounds of the schedule
    ///   each arm gets exactly `k * weight / gcd` requests.
    ///
    /// Always an index into [`Split::arms`]; allocates nothing, locks nothing.
    pub fn choose(&self, request: &RequestParts<'_>) -> usize {
        if let Some(claimed) = self.arms.iter().position(|arm| arm.claims(request)) {
            return claimed;
        }
        let len = self.schedule.len();
        let sticky = self
            .sticky
            .as_ref()
            .and_then(|key| key.hash_of(request, STICKY_SALT));
        let slot = match sticky {
            Some(hash) => ((u128::from(hash) * len as u128) >> 64) as usize,
            None => self.next.fetch_add(1, Ordering::Relaxed) % len,
        };
        self.schedule[slot] as usize
    }
}

impl Arm {
    /// Whether the request carries every header of the arm's `when_header`
    /// with exactly its value (one of its values, when the header is
    /// repeated), as the backend gets it: an auth policy's or the client
    /// certificate's identity header is theirs, never the client's (see
    /// [`backend_values`]). An arm without `when_header` claims nothing.
    fn claims(&self, request: &RequestParts<'_>) -> bool {
        !self.when_header.is_empty()
            && self
                .when_header
                .iter()
                .all(|(name, value)| backend_values(request, name).any(|v| v == value))
    }
}

/// Hashed before the key, so that the arm a key gets does not decide where
/// it lands on the ring of the arm's upstream (which hashes the bare key):
/// without it the keys of an arm would all hash to one stretch of the ring,
/// and so to a few backends. The key's hash is scaled onto the schedule's
/// slots, so that keys spread over them evenly.
const STICKY_SALT: &[u8] = &[0x5a];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::HeaderName as ConfigHeaderName;
    use http::HeaderMap;
    use std::net::IpAddr;

    fn choose(s: &Split, headers: &HeaderMap, client: IpAddr) -> usize {
        s.choose(&RequestParts::of_client(client, headers))
    }

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
        split_over(arms, if ip_hash { "algorithm: ip_hash\n" } else { "" })
    }

    /// A split over upstreams a, b and c, each with `balancing` written.
    fn split_over(arms: &[SplitArmConfig], balancing: &str) -> Split {
        let index: HashMap<&str, usize> = [("a", 0), ("b", 1), ("c", 2)].into_iter().collect();
        let mut upstreams = BTreeMap::new();
        for name in ["a", "b", "c"] {
            let text = format!("{balancing}backends: [{{address: 127.0.0.1:1}}]");
            upstreams.insert(name.to_string(), serde_yaml::from_str(&text).unwrap());
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
        let picks: Vec<usize> = (0..1000).map(|_| choose(&s, &none, client)).collect();
        assert!(picks.iter().all(|&p| p == 0));
        let mut marked = HeaderMap::new();
        marked.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(choose(&s, &marked, client), 1);
        marked.insert("x-canary", HeaderValue::from_static("2"));
        assert_eq!(choose(&s, &marked, client), 0, "not the exact value");

        let s = split(
            &[arm("a", 3, &[]), arm("b", 1, &[]), arm("c", 1, &[])],
            false,
        );
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[choose(&s, &none, client)] += 1;
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
        assert_eq!(choose(&s, &headers, IpAddr::from([127, 0, 0, 1])), 2);
        headers.append("x-b", HeaderValue::from_static("0"));
        headers.append("x-b", HeaderValue::from_static("2"));
        assert_eq!(choose(&s, &headers, IpAddr::from([127, 0, 0, 1])), 1);
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
            let first = choose(&s, &none, client);
            assert!((0..5).all(|_| choose(&s, &none, client) == first));
            if first == 0 {
                in_a += 1;
                let ring = crate::config::HashKey::ClientIp
                    .hash_of(&RequestParts::of_client(client, &none), b"")
                    .unwrap();
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
            choose(&s, &none, mapped),
            choose(&s, &none, IpAddr::from([10, 0, 0, 7]))
        );
    }

    #[test]
    fn over_hash_upstreams_the_choice_follows_the_hash_key() {
        let s = split_over(
            &[arm("a", 1, &[]), arm("b", 1, &[])],
            "algorithm: hash\nhash_key: header:X-User\n",
        );
        let client = IpAddr::from([127, 0, 0, 1]);
        let mut in_a = 0;
        for user in 0..2000 {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-user",
                HeaderValue::from_str(&format!("u{user}")).unwrap(),
            );
            let first = choose(&s, &headers, client);
            assert!((0..5).all(|_| choose(&s, &headers, client) == first));
            in_a += usize::from(first == 0);
        }
        assert!((850..1150).contains(&in_a), "{in_a} of 2000 in a");
        // Without the key: the weighted turns.
        let none = HeaderMap::new();
        let turns: Vec<usize> = (0..4).map(|_| choose(&s, &none, client)).collect();
        assert_eq!(turns, [0, 1, 0, 1]);
    }
}
