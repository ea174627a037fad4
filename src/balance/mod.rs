//! Choosing a backend: the pool of one upstream, the [`Balancer`] trait its algorithm
//! implements, and the in-flight accounting every algorithm shares.
//!
//! A backend is *usable* for a request when its active checks hold it healthy, its
//! passive state does not hold it failed, and the request has not tried it already.
//! Algorithms only ever return usable backends.

mod grpc_probe;
pub mod hash;
pub mod hash_key;
pub mod health;
pub mod least_conn;
pub mod least_time;
pub mod outlier;
pub mod peak_ewma;
pub mod probe;
pub mod retry_budget;
pub mod round_robin;
pub(crate) mod sampling;
pub mod slow_start;
mod traffic;

use crate::config::{Algorithm, HashKey, PassiveConfig, UpstreamConfig};
use crate::metrics::BackendMetrics;
use hash_key::{KeyHasher, RequestParts};
use health::{ActiveHealth, PassiveHealth};
use outlier::{Ejection, OutlierPolicy};
use peak_ewma::PeakEwma;
use pingora::upstreams::peer::HttpPeer;
use retry_budget::RetryBudget;
use slow_start::Ramp;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A balancing algorithm over the backends of one upstream.
pub(crate) trait Balancer: Send + Sync {
    /// Returns the index of a backend for which `usable` is true, or `None` when
    /// there is none. `key` is the hash of the request's key on an upstream
    /// that hashes (`ip_hash`, `hash`), `None` elsewhere and for a request
    /// without the key.
    fn pick(
        &self,
        backends: &[Backend],
        key: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize>;

    /// Called after a backend's active health changed; never on the request path.
    fn on_health_change(&self, _backends: &[Backend]) {}
}

/// The live state of one backend, shared by every request and the health checker.
pub struct BackendState {
    in_flight: AtomicI64,
    /// Drained through the admin API: no new requests; those in flight finish.
    drained: AtomicBool,
    pub active: ActiveHealth,
    pub passive: PassiveHealth,
    /// Outlier detection's streak and ejection.
    pub ejection: Ejection,
    /// Response-header latency, for `least_time`.
    pub latency: PeakEwma,
    /// Slow start's ramp.
    pub ramp: Ramp,
    pub metrics: BackendMetrics,
}

/// The least time between two "kept in: last backend up" warnings of one backend.
const KEPT_IN_WARNING_EVERY: Duration = Duration::from_secs(10);

impl BackendState {
    pub fn new(metrics: BackendMetrics) -> Self {
        // The series may be left from a backend of the same address before.
        metrics.healthy.set(1);
        metrics.ejected.set(0);
        metrics.drained.set(0);
        BackendState {
            in_flight: AtomicI64::new(0),
            drained: AtomicBool::new(false),
            active: ActiveHealth::default(),
            passive: PassiveHealth::default(),
            ejection: Ejection::default(),
            latency: PeakEwma::default(),
            ramp: Ramp::default(),
            metrics,
        }
    }

    /// Requests sent to this backend and not yet finished.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the backend takes new requests now (active and passive state,
    /// not ejected, not drained). A backend whose failure period or ejection
    /// has just run out is back in, and its slow start begins.
    pub(crate) fn is_up(&self) -> bool {
        !self.drained.load(Ordering::Relaxed)
            && self.active.is_healthy()
            && self.passive.is_usable(|| {
                self.ramp.begin();
                self.refresh_healthy_gauge();
                log::warn!(
                    "backend {} of upstream {} is back in: its fail_timeout ran out",
                    self.metrics.backend,
                    self.metrics.upstream
                );
            })
            && self.ejection.is_in(|| {
                self.ramp.begin();
                self.refresh_healthy_gauge();
                log::warn!(
                    "backend {} of upstream {} is back in: its ejection ran out",
                    self.metrics.backend,
                    self.metrics.upstream
                );
            })
    }

    /// Sets `tollgate_upstream_backend_healthy`, `_ejected` and `_drained`
    /// from the current state.
    pub(crate) fn refresh_healthy_gauge(&self) {
        let ejected = self.ejection.is_out();
        let up = self.active.is_healthy() && !self.passive.is_failed() && !ejected;
        self.metrics.healthy.set(i64::from(up));
        self.metrics.ejected.set(i64::from(ejected));
        self.metrics.drained.set(i64::from(self.is_drained()));
    }

    /// Drains the backend (`true`: no new requests) or takes it back.
    /// Returns whether that changed anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        let was = self.drained.swap(drained, Ordering::Relaxed);
        self.refresh_healthy_gauge();
        if was && !drained {
            self.ramp.begin();
        }
        was != drained
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// What the backend is now, as the admin API says it: `drained`,
    /// `ejected`, `unhealthy` (its active or passive checks hold it out) or
    /// `healthy`.
    pub fn state_name(&self) -> &'static str {
        if self.is_drained() {
            "drained"
        } else if self.ejection.is_out() {
            "ejected"
        } else if !self.active.is_healthy() || self.passive.is_failed() {
            "unhealthy"
        } else {
            "healthy"
        }
    }
}

/// One backend of an upstream.
#[derive(Clone)]
pub struct Backend {
    pub address: SocketAddr,
    /// `address` as text, the `backend` label of metrics and logs.
    pub label: String,
    pub weight: u32,
    pub state: Arc<BackendState>,
    /// Connection settings; cloned into each request's peer.
    pub peer: HttpPeer,
}

/// Counts a request in flight to a backend from creation until drop, whatever way
/// the request ends (answer, error, timeout, client gone).
pub(crate) struct InFlightGuard {
    state: Arc<BackendState>,
}

impl InFlightGuard {
    pub fn new(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.metrics.in_flight.inc();
        InFlightGuard {
            state: Arc::clone(state),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.in_flight.dec();
    }
}

/// Backends a request has already tried, so a retry goes elsewhere.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    indices: [u32; Tried::CAPACITY],
    len: usize,
}

impl Tried {
    /// pingora makes at most 16 attempts per request.
    pub(crate) const CAPACITY: usize = 16;

    pub(crate) fn add(&mut self, index: usize) {
        if self.len < Self::CAPACITY {
            self.indices[self.len] = index as u32;
            self.len += 1;
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&(index as u32))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets `index`, so the backend may be chosen again.
    pub(crate) fn remove(&mut self, index: usize) {
        if let Some(pos) = self.indices[..self.len]
            .iter()
            .position(|&i| i as usize == index)
        {
            self.indices.copy_within(pos + 1..self.len, pos);
            self.len -= 1;
        }
    }
}

/// One upstream: its backends, algorithm and failure policy.
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Backend>,
    balancer: Box<dyn Balancer>,
    /// What the balancer hashes (`ip_hash`: the client address; `hash`: its
    /// `hash_key`); `None` for the algorithms that do not hash.
    key: Option<HashKey>,
    /// The config it was compiled from (for runtime weight changes).
    pub config: Arc<UpstreamConfig>,
    /// Other backends tried when connecting fails.
    pub retries: u32,
    pub passive: PassiveConfig,
    /// Answers feed each backend's latency estimate (`least_time`).
    measures_latency: bool,
    /// `slow_start`'s window; `None` when off or under `ip_hash` or `hash`.
    slow_start: Option<Duration>,
    outlier: Option<OutlierPolicy>,
    /// Held while an ejection is decided, so that concurrent streaks cannot
    /// together eject more than `max_ejected` (only failures take it).
    ejecting: std::sync::Mutex<()>,
    /// Kept across swaps of the topology while `retry_budget` is unchanged.
    retry_budget: Option<Arc<RetryBudget>>,
    /// `tollgate_upstream_retry_budget_exhausted_total` of this upstream.
    retries_refused: prometheus::IntCounter,
    /// No backend was up at the last pick: every backend is being tried.
    panicking: std::sync::atomic::AtomicBool,
    /// The next backend to try in panic mode.
    panic_next: std::sync::atomic::AtomicUsize,
    /// `tollgate_upstream_panic_requests_total` of this upstream.
    panic_requests: prometheus::IntCounter,
    /// The hold on the upstream's own series.
    _series: crate::metrics::Lease,
}

impl Upstream {
    /// The upstream `name` of `config` over `backends`.
    pub fn new(name: String, backends: Vec<Backend>, config: &UpstreamConfig) -> Self {
        let algorithm = config.algorithm;
        let balancer: Box<dyn Balancer> = match algorithm {
            Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(&backends)),
            Algorithm::IpHash | Algorithm::Hash => Box::new(hash::ConsistentHash::new(&backends)),
            Algorithm::LeastConnections => Box::new(least_conn::LeastConnections::new(&backends)),
            Algorithm::LeastTime => Box::new(least_time::LeastTime),
        };
        let series = crate::metrics::upstream_series(&name);
        let metrics = crate::metrics::metrics();
        let panic_requests = metrics
            .upstream_panic_requests
            .with_label_values(&[name.as_str()]);
        let retries_refused = metrics
            .upstream_retry_budget_exhausted
            .with_label_values(&[name.as_str()]);
        Upstream {
            name,
            backends,
            balancer,
            key: config.ring_key().cloned(),
            retries: config.retries,
            config: Arc::new(config.clone()),
            passive: config.passive.clone(),
            measures_latency: algorithm == Algorithm::LeastTime,
            slow_start: config.slow_start.filter(|_| config.ring_key().is_none()),
            outlier: config.outlier.as_ref().map(OutlierPolicy::new),
            ejecting: std::sync::Mutex::new(()),
            retry_budget: config
                .retry_budget
                .as_ref()
                .map(|budget| Arc::new(RetryBudget::new(budget))),
            retries_refused,
            panicking: std::sync::atomic::AtomicBool::new(false),
            panic_next: std::sync::atomic::AtomicUsize::new(0),
            panic_requests,
            _series: series,
        }
    }

    /// Chooses a backend for `request` that is up and not in `tried`; on an
    /// upstream that hashes, by the request's key (round robin without it). When no
    /// backend of the upstream is up at all, every backend is tried anyway, as if
    /// all were up ("panic mode", as Envoy has it): a backend that is back before
    /// its checks say so then answers, instead of the whole upstream refusing.
    /// In panic mode the backends are taken in turn, whatever the algorithm.
    pub fn select(&self, request: &RequestParts<'_>, tried: &Tried) -> Option<usize> {
        let usable = |i: usize| !tried.contains(i) && self.backends[i].state.is_up();
        let key = self.key.as_ref().and_then(|k| k.hash_of(request, b""));
        if let Some(index) = self.balancer.pick(&self.backends, key, &usable) {
            let index = self.ramped(index, key, &usable);
            if self.panicking.swap(false, Ordering::Relaxed) {
                log::warn!(
                    "upstream {}: a backend is up again, panic mode ends",
                    self.name
                );
            }
            return Some(index);
        }
        if self.backends.iter().any(|b| b.state.is_up()) {
            return None;
        }
        // The algorithms keep only healthy backends in their tables: in panic mode
        // the backends are taken in turn.
        let count = self.backends.len();
        let start = self.panic_next.fetch_add(1, Ordering::Relaxed);
        let index = (0..count)
            .map(|k| (start + k) % count)
            .find(|&i| !tried.contains(i) && !self.backends[i].state.is_drained())?;
        if !self.panicking.swap(true, Ordering::Relaxed) {
            log::warn!(
                "upstream {}: no backend is up; trying all {} anyway (panic mode)",
                self.name,
                self.backends.len()
            );
        }
        self.panic_requests.inc();
        Some(index)
    }

    /// Records a failed attempt (connect failure, timeout, transport error) on
    /// backend `index` for passive health and outlier detection. For passive
    /// health, the backend is taken out after `max_fails` failures within
    /// `fail_timeout`, unless it is the last backend of the upstream that is up.
    pub(crate) fn record_failure(&self, index: usize) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        self.record_outlier_failure(index);
        let passive = &self.passive;
        if passive.max_fails == 0
            || !backend
                .state
                .passive
                .record_failure(passive.max_fails, passive.fail_timeout)
        {
            return;
        }
        let others_up = self
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| i != index && b.state.is_up());
        if !others_up {
            if !backend
                .state
                .passive
                .may_warn_kept_in(KEPT_IN_WARNING_EVERY)
            {
                return;
            }
            log::warn!(
                "backend {} of upstream {} failed {} time(s) within {:?}; kept in: it is the upstream's last backend that is up",
                backend.label,
                self.name,
                passive.max_fails,
                passive.fail_timeout
            );
            return;
        }
        backend.state.passive.take_out(passive.fail_timeout);
        log::warn!(
            "backend {} of upstream {} failed {} time(s) within {:?}: out for {:?}",
            backend.label,
            self.name,
            passive.max_fails,
            passive.fail_timeout,
            passive.fail_timeout
        );
        backend.state.refresh_healthy_gauge();
    }

    /// Applies an active check result to backend `index`; logs and rebalances
    /// when the backend's health flips.
    pub(crate) fn record_check(
        &self,
        index: usize,
        result: Result<(), String>,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) {
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        let ok = result.is_ok();
        if ok {
            backend.state.metrics.check_success.inc();
        } else {
            backend.state.metrics.check_failure.inc();
        }
        // A backend that answers its checks is no longer held out for failures
        // seen on traffic: the check is the fresher news.
        if ok && backend.state.passive.bring_back() && backend.state.active.is_healthy() {
            backend.state.ramp.begin();
            log::warn!(
                "backend {} of upstream {} is back in: it passed an active check",
                backend.label,
                self.name
            );
            backend.state.refresh_healthy_gauge();
        }
        let Some(now_healthy) =
            backend
                .state
                .active
                .record(ok, healthy_threshold, unhealthy_threshold)
        else {
            return;
        };
        if now_healthy {
            backend.state.ramp.begin();
            log::warn!(
                "backend {} of upstream {} is healthy again after {} passed checks",
                backend.label,
                self.name,
                healthy_threshold
            );
        } else {
            log::warn!(
                "backend {} of upstream {} is unhealthy after {} failed checks: {}",
                backend.label,
                self.name,
                unhealthy_threshold,
                result.err().unwrap_or_default()
            );
        }
        backend.state.refresh_healthy_gauge();
        self.balancer.on_health_change(&self.backends);
    }
}

/// A 64-bit hash with good spread for short keys (FNV-1a, then the murmur3 finalizer).
/// Stable across runs and builds, so consistent-hash rings are reproducible.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut hasher = KeyHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Backends on 127.0.0.1:9001.. with the given weights, all up.
    pub fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let address: SocketAddr = format!("127.0.0.1:{}", 9001 + i).parse().unwrap();
                Backend {
                    address,
                    label: address.to_string(),
                    weight: *w,
                    state: Arc::new(BackendState::new(BackendMetrics::new(
                        "test",
                        &address.to_string(),
                    ))),
                    peer: HttpPeer::new(address, false, String::new()),
                }
            })
            .collect()
    }
}
