//! Rate limiting with the semantics of nginx `limit_req ... burst=B nodelay`: each
//! key has a bucket of `burst + 1` requests (the one the rate allows now, and
//! `burst` more) that refills at `rate`; a request that finds the bucket empty is
//! refused at once (never delayed).
//!
//! Buckets are kept as GCRA state (one "theoretical arrival time" per key) in a
//! table of fixed size, whatever the number of distinct keys: keys hash (with a
//! per-process random seed, so clients cannot aim at each other's slots) into sets
//! of [`WAYS`] slots; a new key takes its set's most idle slot. A key evicted while
//! its bucket was not full comes back with a full bucket, which errs on the side of
//! letting requests through. Each set has its own lock: no lock is shared by all
//! requests.

use super::Answer;
use crate::config::{LimitScope, RateKey, RateLimitConfig, StoreErrorAction};
use crate::metrics::metrics;
use http::header::{HeaderName, HeaderValue};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Slots per set.
pub(crate) const WAYS: usize = 4;
/// Sets of a limit keyed per client, header or subject: 262,144 keys in all.
pub(crate) const KEYED_SETS: usize = 1 << 16;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Hash of the key; 0 marks an empty slot.
    fingerprint: u64,
    /// Theoretical arrival time in ns since [`epoch`]: the bucket is full when it
    /// is not after now.
    tat: u64,
}

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Passes; `remaining` requests could follow at once, and the bucket is full
    /// again after `reset`.
    Allow { remaining: u32, reset: Duration },
    /// Refused; a request would pass after `retry_after`.
    Deny {
        retry_after: Duration,
        reset: Duration,
    },
}

pub struct RateLimiter {
    pub key: RateKey,
    /// Bucket size: `burst + 1`.
    pub capacity: u32,
    interval_ns: u64,
    /// How far the arrival time may run ahead of now: `burst` intervals.
    tolerance_ns: u64,
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    seed: foldhash::quality::RandomState,
}

fn epoch() -> Instant {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    *EPOCH
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        let key = config.key.clone();
        let interval_ns = (config.rate.interval().as_nanos() as u64).max(1);
        let capacity = config.burst.saturating_add(1);
        let set_count = if key == RateKey::Global {
            1
        } else {
            KEYED_SETS
        };
        RateLimiter {
            key,
            capacity,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(capacity - 1)),
            sets: (0..set_count)
                .map(|_| Mutex::new([Slot::default(); WAYS]))
                .collect(),
            seed: foldhash::quality::RandomState::default(),
        }
    }

    /// The time one request takes from a bucket, and the burst's (how far
    /// a bucket may run ahead).
    pub fn interval_and_tolerance(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.interval_ns),
            Duration::from_nanos(self.tolerance_ns),
        )
    }

    /// How many keys the table holds at most.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Counts one request for `key` now.
    pub fn check(&self, key: &[u8]) -> Decision {
        self.check_at(key, now_ns())
    }

    fn check_at(&self, key: &[u8], now: u64) -> Decision {
        let fingerprint = self.seed.hash_one(key) | 1;
        let set_index = (fingerprint >> 17) as usize % self.sets.len();
        // A poisoned lock only means another thread panicked mid-update of plain
        // integers; the slots are still usable.
        let mut set = self.sets[set_index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let slot = match set.iter().position(|s| s.fingerprint == fingerprint) {
            Some(i) => i,
            None => {
                // The most idle slot (an empty one has tat 0).
                let victim = (0..WAYS).min_by_key(|&i| set[i].tat).unwrap_or(0);
                set[victim] = Slot {
                    fingerprint,
                    tat: 0,
                };
                victim
            }
        };
        let tat = set[slot].tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance_ns {
            return Decision::Deny {
                retry_after: Duration::from_nanos(ahead - self.tolerance_ns),
                reset: Duration::from_nanos(ahead),
            };
        }
        let new_tat = tat.saturating_add(self.interval_ns);
        set[slot].tat = new_tat;
        let used = new_tat - now;
        let remaining = self
            .tolerance_ns
            .saturating_add(self.interval_ns)
            .saturating_sub(used)
            / self.interval_ns;
        Decision::Allow {
            remaining: remaining as u32,
            reset: Duration::from_nanos(used),
        }
    }
}

pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// A named limit as routes use it: its bucket table and what its answers carry.
pub struct RouteLimit {
    pub name: String,
    pub limiter: RateLimiter,
    /// `RateLimit-Limit`: the bucket's size.
    limit_header: HeaderValue,
    /// What it was made from: a reload that leaves it as it is keeps its buckets.
    pub config: RateLimitConfig,
    /// The hold on its series (store errors; the routes hold their 429s').
    _series: crate::metrics::Lease,
}

/// A request the limit let pass: what its RateLimit headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub remaining: u32,
    pub reset: Duration,
}

impl RouteLimit {
    pub fn new(name: &str, config: &RateLimitConfig) -> RouteLimit {
        let limiter = RateLimiter::new(config);
        RouteLimit {
            _series: crate::metrics::Lease::new(
                &[&metrics().rate_limit_store_errors],
                &[("policy", name)],
            ),
            name: name.to_string(),
            limit_header: HeaderValue::from(limiter.capacity),
            limiter,
            config: config.clone(),
        }
    }

    /// Counts the request of `client` (with `headers`, and `subject` when its auth
    /// policy named one): what passed requests are told, or the answer refused
    /// ones get (429 or the limit's `status`, with Retry-After and RateLimit-*).
    /// A `cluster` limit asks the shared store (see `crate::cluster`), and its
    /// `on_store_error` decides when the store gives no answer.
    pub(crate) async fn admit(
        &self,
        client: IpAddr,
        headers: &http::HeaderMap,
        subject: Option<&str>,
    ) -> Result<Allowance, Answer> {
        let mut ip_bytes = [0u8; 16];
        let key: &[u8] = match &self.limiter.key {
            RateKey::Global => b"",
            RateKey::ClientIp => ip_key(client, &mut ip_bytes),
            RateKey::Header(name) => headers.get(name).map_or(&b""[..], |v| v.as_bytes()),
            // A policy that names no subject: the client's own bucket.
            RateKey::AuthSubject => match subject {
                Some(subject) => subject.as_bytes(),
                None => ip_key(client, &mut ip_bytes),
            },
        };
        let decision = match crate::cluster::store() {
            Some(store) if self.config.scope == LimitScope::Cluster => {
                let (interval, tolerance) = self.limiter.interval_and_tolerance();
                match store.check(&self.name, key, interval, tolerance).await {
                    Ok(decision) => decision,
                    Err(_) => self.without_store(key),
                }
            }
            _ => self.limiter.check(key),
        };
        match decision {
            Decision::Allow { remaining, reset } => Ok(Allowance { remaining, reset }),
            Decision::Deny { retry_after, reset } => Err(self.refusal(retry_after, reset)),
        }
    }

    /// What a `cluster` limit decides for `key` when the store gave no answer.
    fn without_store(&self, key: &[u8]) -> Decision {
        metrics()
            .rate_limit_store_errors
            .with_label_values(&[self.name.as_str()])
            .inc();
        match self.config.on_store_error {
            StoreErrorAction::Local => self.limiter.check(key),
            StoreErrorAction::Allow => Decision::Allow {
                remaining: self.limiter.capacity.saturating_sub(1),
                reset: Duration::ZERO,
            },
            StoreErrorAction::Deny => Decision::Deny {
                retry_after: Duration::from_secs(1),
                reset: Duration::from_secs(1),
            },
        }
    }

    /// The RateLimit-* headers of an answer that passed.
    pub fn headers(&self, allowance: Allowance) -> [(HeaderName, HeaderValue); 3] {
        [
            (RATELIMIT_LIMIT, self.limit_header.clone()),
            (RATELIMIT_REMAINING, HeaderValue::from(allowance.remaining)),
            (
                RATELIMIT_RESET,
                HeaderValue::from(ceil_secs(allowance.reset)),
            ),
        ]
    }

    fn refusal(&self, retry_after: Duration, reset: Duration) -> Answer {
        let status = self.config.status;
        let message = if status == http::StatusCode::SERVICE_UNAVAILABLE {
            "503 Service Unavailable: too many requests"
        } else {
            "429 Too Many Requests"
        };
        let mut answer = Answer::text(status, message);
        // Whichever status the limit answers with, to gRPC it is exhausted quota.
        answer.grpc_code = Some(crate::edge::grpc::GrpcCode::ResourceExhausted);
        answer.headers.extend([
            (
                http::header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(retry_after).max(1)),
            ),
            (RATELIMIT_LIMIT, self.limit_header.clone()),
            (RATELIMIT_REMAINING, HeaderValue::from(0u32)),
            (RATELIMIT_RESET, HeaderValue::from(ceil_secs(reset))),
        ]);
        answer
    }
}

/// The key of a client address: its bytes, without formatting or allocating.
fn ip_key(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            *buf = v6.octets();
            &buf[..]
        }
    }
}

/// Whole seconds, rounded up: the unit of Retry-After and RateLimit-Reset.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::parse_rate;

    /// A limiter whose bucket holds `capacity` requests (`burst: capacity - 1`).
    fn limiter(rate: &str, capacity: u32, key: RateKey) -> RateLimiter {
        let config = RateLimitConfig {
            key,
            rate: parse_rate(rate).unwrap(),
            burst: capacity.saturating_sub(1),
            status: http::StatusCode::TOO_MANY_REQUESTS,
            scope: Default::default(),
            on_store_error: Default::default(),
        };
        RateLimiter::new(&config)
    }

    #[test]
    fn burst_admits_one_more_as_nginx_does() {
        for burst in [0, 1, 5] {
            let config = RateLimitConfig {
                key: RateKey::Global,
                rate: parse_rate("1/m").unwrap(),
                burst,
                status: http::StatusCode::TOO_MANY_REQUESTS,
                scope: Default::default(),
                on_store_error: Default::default(),
            };
            let l = RateLimiter::new(&config);
            let passed = (0..10)
                .filter(|_| matches!(l.check_at(b"", 1), Decision::Allow { .. }))
                .count();
            assert_eq!(passed, burst as usize + 1, "burst {burst}");
        }
    }

    #[test]
    fn a_bucket_of_burst_refills_at_rate() {
        let l = limiter("10/s", 3, RateKey::ClientIp);
        let t0 = 1_000_000_000;
        let results: Vec<_> = (0..4).map(|_| l.check_at(b"a", t0)).collect();
        assert_eq!(
            results[0],
            Decision::Allow {
                remaining: 2,
                reset: Duration::from_millis(100)
            }
        );
        assert_eq!(
            results[2],
            Decision::Allow {
                remaining: 0,
                reset: Duration::from_millis(300)
            }
        );
        assert_eq!(
            results[3],
            Decision::Deny {
                retry_after: Duration::from_millis(100),
                reset: Duration::from_millis(300)
            }
        );
        // Another key has its own bucket.
        assert!(matches!(
            l.check_at(b"b", t0),
            Decision::Allow { remaining: 2, .. }
        ));
        // One interval later one request passes again, then none.
        let t1 = t0 + 100_000_000;
        assert!(matches!(
            l.check_at(b"a", t1),
            Decision::Allow { remaining: 0, .. }
        ));
        assert!(matches!(l.check_at(b"a", t1), Decision::Deny { .. }));
        // After the whole bucket's time, the full burst passes again.
        let t2 = t1 + 400_000_000;
        assert!((0..3).all(|_| matches!(l.check_at(b"a", t2), Decision::Allow { .. })));
    }

    /// (That new keys allocate nothing, so memory stays bounded, is shown by
    /// tests/rate_limit_memory.rs, which counts allocations.)
    #[test]
    fn a_full_table_forgets_the_most_idle_keys_and_remembers_most() {
        let l = limiter("1/s", 1, RateKey::ClientIp);
        let t = 1_000_000_000;
        for i in 0..200_000u32 {
            assert!(matches!(
                l.check_at(&i.to_be_bytes(), t),
                Decision::Allow { .. }
            ));
        }
        assert_eq!(l.capacity(), KEYED_SETS * WAYS);
        // Most of the 200,000 keys are still remembered (the table holds 262,144).
        let denied = (0..200_000u32)
            .filter(|i| matches!(l.check_at(&i.to_be_bytes(), t), Decision::Deny { .. }))
            .count();
        assert!(denied > 150_000, "only {denied} keys remembered");
    }

    #[test]
    fn global_limit_has_one_set() {
        let l = limiter("5/m", 2, RateKey::Global);
        assert_eq!(l.capacity(), WAYS);
        assert!(matches!(l.check_at(b"", 1), Decision::Allow { .. }));
        assert!(matches!(l.check_at(b"", 1), Decision::Allow { .. }));
        assert!(
            matches!(l.check_at(b"", 1), Decision::Deny { retry_after, .. } if retry_after == Duration::from_secs(12))
        );
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let l = limiter("1/m", u32::MAX, RateKey::ClientIp);
        for _ in 0..3 {
            assert!(matches!(
                l.check_at(b"a", u64::MAX / 2),
                Decision::Allow { .. }
            ));
        }
        let fast = limiter("1000000000/s", 1, RateKey::Global);
        assert!(matches!(fast.check_at(b"", 5), Decision::Allow { .. }));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(100)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }
}
