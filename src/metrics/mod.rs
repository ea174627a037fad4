//! Every metric of tollgate, defined once (the README's "Metrics" lists them).
//!
//! Metrics live in the prometheus crate's default registry, which also holds its
//! process collector (CPU, memory, open fds). Per-route and per-backend handles are
//! resolved when a topology is compiled, so the request path does not look labels up.
//! The objects holding them also hold their series ([`Lease`]): what leaves the
//! topology leaves `/metrics`.

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Encoder, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};
use std::sync::{LazyLock, OnceLock};

mod series;
pub use series::{flush as flush_removed_series, Lease};

/// All metric families.
pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_in_flight: IntGaugeVec,
    pub backend_healthy: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_panic_requests: IntCounterVec,
    pub upstream_retry_budget_exhausted: IntCounterVec,
    pub outlier_ejections: IntCounterVec,
    pub backend_ejected: IntGaugeVec,
    pub backend_drained: IntGaugeVec,
    pub auth_rejections: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub mirror_requests: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub discovery_failures: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions: IntCounterVec,
    pub cache_lock_waits: IntCounterVec,
    pub cache_write_failures: IntCounterVec,
    pub cache_unreadable_entries: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: prometheus::Gauge,
    pub tls_certificate_expiry: IntGaugeVec,
    pub proxy_protocol_rejected: IntCounterVec,
    pub tracing_spans_exported: prometheus::IntCounter,
    pub tracing_spans_dropped: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub requests_by_protocol: IntCounterVec,
    pub quic_connections: IntGaugeVec,
    pub quic_handshakes: IntCounterVec,
    pub quic_packets_sent: IntCounterVec,
    pub quic_packets_lost: IntCounterVec,
    pub build_info: IntGaugeVec,
}

/// Label value of `upstream` for routes that do not proxy.
pub(crate) const NO_UPSTREAM: &str = "-";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: register_int_counter_vec!(
            "tollgate_requests_total",
            "Answered requests by route, upstream and status code.",
            &["route", "upstream", "code"]
        )
        .registered(),
        request_duration: register_histogram_vec!(
            "tollgate_request_duration_seconds",
            "Time from request head read to response end.",
            &["route", "upstream"],
            DURATION_BUCKETS.to_vec()
        )
        .registered(),
        upstream_requests: register_int_counter_vec!(
            "tollgate_upstream_requests_total",
            "Requests sent to each backend, by the status it answered (`error` when none).",
            &["upstream", "backend", "code"]
        )
        .registered(),
        upstream_in_flight: register_int_gauge_vec!(
            "tollgate_upstream_in_flight",
            "Requests in flight to each backend.",
            &["upstream", "backend"]
        )
        .registered(),
        backend_healthy: register_int_gauge_vec!(
            "tollgate_upstream_backend_healthy",
            "1 when the backend takes new requests, 0 when it is out (active or passive checks).",
            &["upstream", "backend"]
        )
        .registered(),
        health_checks: register_int_counter_vec!(
            "tollgate_health_checks_total",
            "Active health probes by result.",
            &["upstream", "backend", "result"]
        )
        .registered(),
        upstream_retries: register_int_counter_vec!(
            "tollgate_upstream_retries_total",
            "Requests sent to another backend after a failure.",
            &["upstream"]
        )
        .registered(),
        upstream_retry_budget_exhausted: register_int_counter_vec!(
            "tollgate_upstream_retry_budget_exhausted_total",
            "Retries not made because the upstream's retry_budget was spent.",
            &["upstream"]
        )
        .registered(),
        outlier_ejections: register_int_counter_vec!(
            "tollgate_upstream_outlier_ejections_total",
            "Backends ejected by outlier detection (consecutive 5xx or failures).",
            &["upstream", "backend"]
        )
        .registered(),
        backend_ejected: register_int_gauge_vec!(
            "tollgate_upstream_backend_ejected",
            "1 while outlier detection holds the backend out, else 0.",
            &["upstream", "backend"]
        )
        .registered(),
        backend_drained: register_int_gauge_vec!(
            "tollgate_upstream_backend_drained",
            "1 while the backend is drained through the admin API (no new requests), else 0.",
            &["upstream", "backend"]
        )
        .registered(),
        upstream_panic_requests: register_int_counter_vec!(
            "tollgate_upstream_panic_requests_total",
            "Requests sent to a backend while no backend of the upstream was up (panic mode: all are tried).",
            &["upstream"]
        )
        .registered(),
        auth_rejections: register_int_counter_vec!(
            "tollgate_auth_rejections_total",
            "401/403/503 answers of an auth policy, by reason.",
            &["route", "policy", "reason"]
        )
        .registered(),
        rate_limited: register_int_counter_vec!(
            "tollgate_rate_limited_total",
            "429 answers of a rate limit.",
            &["route", "policy"]
        )
        .registered(),
        cache_lookups: register_int_counter_vec!(
            "tollgate_cache_lookups_total",
            "Requests of cached routes by X-Cache-Status (hit, miss, expired, stale, revalidated, bypass).",
            &["route", "result"]
        )
        .registered(),
        cache_bytes: register_int_gauge_vec!(
            "tollgate_cache_bytes",
            "Bytes of the answers stored in each tier (memory, disk) of each cache.",
            &["cache", "tier"]
        )
        .registered(),
        cache_entries: register_int_gauge_vec!(
            "tollgate_cache_entries",
            "Answers stored in each tier (memory, disk) of each cache.",
            &["cache", "tier"]
        )
        .registered(),
        cache_evictions: register_int_counter_vec!(
            "tollgate_cache_evictions_total",
            "Answers evicted from a tier to keep it within its size.",
            &["cache", "tier"]
        )
        .registered(),
        cache_lock_waits: register_int_counter_vec!(
            "tollgate_cache_lock_waits_total",
            "Requests that waited for another request fetching the same answer.",
            &["cache"]
        )
        .registered(),
        cache_write_failures: register_int_counter_vec!(
            "tollgate_cache_write_failures_total",
            "Answers a tier could not store, by reason (full, error, backlog); the requests were served.",
            &["cache", "tier", "reason"]
        )
        .registered(),
        cache_unreadable_entries: register_int_counter_vec!(
            "tollgate_cache_unreadable_entries_total",
            "Stored files found torn or unreadable; each was removed and counted as a miss.",
            &["cache"]
        )
        .registered(),
        tls_certificate_expiry: register_int_gauge_vec!(
            "tollgate_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time), by DNS name and source (file, acme).",
            &["name", "source"]
        )
        .registered(),
        proxy_protocol_rejected: register_int_counter_vec!(
            "tollgate_proxy_protocol_rejected_total",
            "Connections of a proxy_protocol listener closed unserved, by reason (malformed, wrong_version, timeout, closed, peer_not_allowed).",
            &["listener", "reason"]
        )
        .registered(),
        tracing_spans_exported: prometheus::register_int_counter!(
            "tollgate_tracing_spans_exported_total",
            "Spans the OTLP collector accepted."
        )
        .registered(),
        tracing_spans_dropped: register_int_counter_vec!(
            "tollgate_tracing_spans_dropped_total",
            "Spans lost, by reason (queue_full: the exporter was behind; export_failed: the collector refused or could not be reached).",
            &["reason"]
        )
        .registered(),
        acme_orders: register_int_counter_vec!(
            "tollgate_acme_orders_total",
            "ACME certificate orders by result (issued, failed).",
            &["result"]
        )
        .registered(),
        mirror_requests: register_int_counter_vec!(
            "tollgate_mirror_requests_total",
            "Copies of a route's requests for its mirror upstream, by result (sent: the mirror answered; failed: no answer; dropped: not sent).",
            &["route", "upstream", "result"]
        )
        .registered(),
        requests_by_protocol: register_int_counter_vec!(
            "tollgate_requests_by_protocol_total",
            "Answered requests by the protocol the client spoke (http/1.1, h2, h3).",
            &["protocol"]
        )
        .registered(),
        quic_connections: register_int_gauge_vec!(
            "tollgate_quic_connections",
            "QUIC (HTTP/3) connections open, by listener.",
            &["listener"]
        )
        .registered(),
        quic_handshakes: register_int_counter_vec!(
            "tollgate_quic_handshakes_total",
            "QUIC connection attempts by result (success, failure, timeout, retry, refused).",
            &["listener", "result"]
        )
        .registered(),
        quic_packets_sent: register_int_counter_vec!(
            "tollgate_quic_packets_sent_total",
            "QUIC packets sent to clients, by listener.",
            &["listener"]
        )
        .registered(),
        quic_packets_lost: register_int_counter_vec!(
            "tollgate_quic_packets_lost_total",
            "QUIC packets sent to clients and declared lost (their data is sent again in new packets), by listener.",
            &["listener"]
        )
        .registered(),
        rate_limit_store_errors: register_int_counter_vec!(
            "tollgate_rate_limit_store_errors_total",
            "Requests of cluster rate limits the shared store did not decide, by limit.",
            &["policy"]
        )
        .registered(),
        discovery_failures: register_int_counter_vec!(
            "tollgate_discovery_failures_total",
            "DNS discovery answers that failed or were empty (the last good set stays), by upstream.",
            &["upstream"]
        )
        .registered(),
        config_reloads: register_int_counter_vec!(
            "tollgate_config_reloads_total",
            "Topology reloads by result (success, error).",
            &["result"]
        )
        .registered(),
        config_last_reload_success: prometheus::register_gauge!(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "When the running topology was loaded, in seconds since the epoch."
        )
        .registered(),
        build_info: register_int_gauge_vec!(
            "tollgate_build_info",
            "Always 1; the version label names the running build.",
            &["version"]
        )
        .registered(),
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    m
});

/// Registration fails only for a name registered twice or not a valid metric
/// name; the single definition above, of constant names, rules both out, and any
/// test that touches a metric would show such a bug at once.
trait Registered<T> {
    fn registered(self) -> T;
}

impl<T> Registered<T> for prometheus::Result<T> {
    #[allow(clippy::expect_used)]
    fn registered(self) -> T {
        self.expect("each metric is defined once, with a valid name")
    }
}

/// The metric families; created and registered on first use.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The default registry in the Prometheus text format.
/// Run before each scrape: brings state that changes with time alone (an
/// ejection or a failure period that ran out) into the gauges.
static BEFORE_SCRAPE: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> = std::sync::OnceLock::new();

/// Sets what runs before each scrape (once per process).
pub(crate) fn before_scrape(refresh: Box<dyn Fn() + Send + Sync>) {
    let _ = BEFORE_SCRAPE.set(refresh);
}

pub(crate) fn render() -> Vec<u8> {
    let _ = metrics();
    if let Some(refresh) = BEFORE_SCRAPE.get() {
        refresh();
    }
    series::flush();
    let mut out = Vec::with_capacity(16 * 1024);
    let families = prometheus::gather();
    // Encoding into a Vec cannot fail on I/O; an encoding error leaves what was written.
    let _ = TextEncoder::new().encode(&families, &mut out);
    out
}

/// Status codes whose counters are kept resolved; others are looked up by label.
const COMMON_CODES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 413, 429, 500, 502, 503,
    504,
];

/// The decimal text of a status code, without allocating per call.
pub(crate) fn code_label(code: u16) -> &'static str {
    static CODES: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..1000).map(|c| c.to_string()).collect());
    CODES.get(usize::from(code)).map_or("other", String::as_str)
}

/// A counter family with two fixed labels and a `code` label, with the counters of
/// common codes resolved on first use and kept.
pub struct CodeCounters {
    family: IntCounterVec,
    labels: [String; 2],
    common: [OnceLock<IntCounter>; COMMON_CODES.len()],
}

impl CodeCounters {
    pub fn new(family: &IntCounterVec, first: &str, second: &str) -> Self {
        CodeCounters {
            family: family.clone(),
            labels: [first.to_string(), second.to_string()],
            common: Default::default(),
        }
    }

    fn counter(&self, code: &str) -> IntCounter {
        self.family
            .with_label_values(&[self.labels[0].as_str(), self.labels[1].as_str(), code])
    }

    /// Counts one answer with status `code`.
    pub(crate) fn inc(&self, code: u16) {
        match COMMON_CODES.binary_search(&code) {
            Ok(slot) => self.common[slot]
                .get_or_init(|| self.counter(code_label(code)))
                .inc(),
            Err(_) => self.counter(code_label(code)).inc(),
        }
    }

    /// Counts one attempt that got no status (connect or transport error).
    pub(crate) fn inc_error(&self) {
        self.counter("error").inc();
    }
}

/// Handles of one route's metrics (or of one arm of its split), and its hold
/// on their series.
pub struct RouteMetrics {
    pub requests: CodeCounters,
    pub duration: Histogram,
    _series: Lease,
}

impl RouteMetrics {
    pub fn new(route: &str, upstream: &str) -> Self {
        let m = metrics();
        let series = Lease::new(
            &[&m.requests, &m.request_duration],
            &[("route", route), ("upstream", upstream)],
        );
        RouteMetrics {
            _series: series,
            requests: CodeCounters::new(&m.requests, route, upstream),
            duration: m.request_duration.with_label_values(&[route, upstream]),
        }
    }
}

/// Handles of one backend's metrics, and its hold on their series: they go
/// when the backend's state does (it is carried across reloads while the
/// backend stays).
pub struct BackendMetrics {
    /// The `upstream` and `backend` labels, for log lines.
    pub upstream: String,
    pub backend: String,
    pub requests: CodeCounters,
    pub in_flight: IntGauge,
    pub healthy: IntGauge,
    pub check_success: IntCounter,
    pub check_failure: IntCounter,
    pub ejections: IntCounter,
    pub ejected: IntGauge,
    pub drained: IntGauge,
    _series: Lease,
}

impl BackendMetrics {
    pub fn new(upstream: &str, backend: &str) -> Self {
        let m = metrics();
        let series = Lease::new(
            &[
                &m.upstream_requests,
                &m.upstream_in_flight,
                &m.backend_healthy,
                &m.health_checks,
                &m.outlier_ejections,
                &m.backend_ejected,
                &m.backend_drained,
            ],
            &[("upstream", upstream), ("backend", backend)],
        );
        BackendMetrics {
            _series: series,
            upstream: upstream.to_string(),
            backend: backend.to_string(),
            requests: CodeCounters::new(&m.upstream_requests, upstream, backend),
            in_flight: m.upstream_in_flight.with_label_values(&[upstream, backend]),
            healthy: m.backend_healthy.with_label_values(&[upstream, backend]),
            check_success: m
                .health_checks
                .with_label_values(&[upstream, backend, "success"]),
            check_failure: m
                .health_checks
                .with_label_values(&[upstream, backend, "failure"]),
            ejections: m.outlier_ejections.with_label_values(&[upstream, backend]),
            ejected: m.backend_ejected.with_label_values(&[upstream, backend]),
            drained: m.backend_drained.with_label_values(&[upstream, backend]),
        }
    }
}

/// The hold of upstream `upstream` on its own series (retries, panic
/// requests, retry budget, discovery failures; its backends have theirs).
pub(crate) fn upstream_series(upstream: &str) -> Lease {
    let m = metrics();
    Lease::new(
        &[
            &m.upstream_retries,
            &m.upstream_panic_requests,
            &m.upstream_retry_budget_exhausted,
            &m.discovery_failures,
        ],
        &[("upstream", upstream)],
    )
}

/// The hold of a cache on its series (every `tollgate_cache_*` but the
/// routes' lookups).
pub(crate) fn cache_series(cache: &str) -> Lease {
    let m = metrics();
    Lease::new(
        &[
            &m.cache_bytes,
            &m.cache_entries,
            &m.cache_evictions,
            &m.cache_lock_waits,
            &m.cache_write_failures,
            &m.cache_unreadable_entries,
        ],
        &[("cache", cache)],
    )
}

/// The hold of route `route` on its series of auth policy `policy`.
pub(crate) fn auth_series(route: &str, policy: &str) -> Lease {
    Lease::new(
        &[&metrics().auth_rejections],
        &[("route", route), ("policy", policy)],
    )
}

/// The hold of route `route` on its series of rate limit `policy`.
pub(crate) fn rate_limited_series(route: &str, policy: &str) -> Lease {
    Lease::new(
        &[&metrics().rate_limited],
        &[("route", route), ("policy", policy)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_codes_are_sorted_for_binary_search() {
        assert!(COMMON_CODES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(code_label(503), "503");
    }
}
