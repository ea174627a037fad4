//! The last minutes of each backend, for the status page's charts: every
//! [`INTERVAL`] a background service reads each backend's answer counts (its
//! `tollgate_upstream_requests_total` series) and latency estimate and keeps
//! the rates of the interval, [`POINTS`] of them per backend. Backends that
//! leave the topology leave the history.

use crate::topology::Topology;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a point is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Points kept per backend: five minutes.
pub const POINTS: usize = 150;

/// One backend's series and the counts of its last point.
#[derive(Debug, Default)]
struct Series {
    requests_per_second: VecDeque<f64>,
    errors_per_second: VecDeque<f64>,
    latency_ms: VecDeque<Option<f64>>,
    last_requests: u64,
    last_errors: u64,
}

/// The series of every backend, by (upstream, address).
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<(String, String), Series>>,
}

impl History {
    /// Takes a point for every backend of `topology`, `elapsed` after the last.
    fn sample(&self, topology: &Topology, elapsed: Duration) {
        let Ok(mut all) = self.series.lock() else {
            return;
        };
        let seconds = elapsed.as_secs_f64().max(1e-3);
        let now = crate::balance::peak_ewma::now_nanos();
        let totals = answer_totals();
        let mut seen = Vec::new();
        for upstream in &topology.upstreams {
            for backend in &upstream.backends {
                let key = (upstream.name.clone(), backend.address.to_string());
                let label = (upstream.name.clone(), backend.label.clone());
                let (requests, errors) = totals.get(&label).copied().unwrap_or((0, 0));
                let latency = backend.state.latency.cost(now).map(|ns| ns / 1e6);
                let series = all.entry(key.clone()).or_insert_with(|| Series {
                    last_requests: requests,
                    last_errors: errors,
                    ..Series::default()
                });
                let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
                push(
                    &mut series.requests_per_second,
                    rate(requests, series.last_requests),
                );
                push(
                    &mut series.errors_per_second,
                    rate(errors, series.last_errors),
                );
                push(&mut series.latency_ms, latency);
                series.last_requests = requests;
                series.last_errors = errors;
                seen.push(key);
            }
        }
        let seen: std::collections::HashSet<(String, String)> = seen.into_iter().collect();
        all.retain(|key, _| seen.contains(key));
    }

    /// The latest rates of backend `address` of `upstream`: (requests/s,
    /// errors/s); zeros before the first point.
    pub fn latest(&self, upstream: &str, address: &str) -> (f64, f64) {
        let Ok(all) = self.series.lock() else {
            return (0.0, 0.0);
        };
        all.get(&(upstream.to_string(), address.to_string()))
            .map_or((0.0, 0.0), |s| {
                (
                    s.requests_per_second.back().copied().unwrap_or(0.0),
                    s.errors_per_second.back().copied().unwrap_or(0.0),
                )
            })
    }

    /// `{"interval_seconds": 2, "series": [{"upstream", "address",
    /// "requests_per_second": [...], "errors_per_second": [...],
    /// "latency_ms": [...]}]}`, oldest point first.
    pub fn to_json(&self) -> serde_json::Value {
        let Ok(all) = self.series.lock() else {
            return serde_json::json!({ "interval_seconds": INTERVAL.as_secs(), "series": [] });
        };
        let mut keys: Vec<&(String, String)> = all.keys().collect();
        keys.sort();
        let series: Vec<serde_json::Value> = keys
            .into_iter()
            .filter_map(|key| {
                let s = all.get(key)?;
                Some(serde_json::json!({
                    "upstream": key.0,
                    "address": key.1,
                    "requests_per_second": s.requests_per_second.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                    "errors_per_second": s.errors_per_second.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                    "latency_ms": s.latency_ms.iter().map(|v| v.map(round)).collect::<Vec<_>>(),
                }))
            })
            .collect();
        serde_json::json!({ "interval_seconds": INTERVAL.as_secs(), "series": series })
    }
}

/// Per (upstream, backend label): the answers and failed attempts since start,
/// and of them the 5xx answers and failed attempts (code `error`), summed
/// over the codes of `tollgate_upstream_requests_total`.
fn answer_totals() -> HashMap<(String, String), (u64, u64)> {
    use prometheus::core::Collector;
    let mut totals: HashMap<(String, String), (u64, u64)> = HashMap::new();
    crate::metrics::flush_removed_series();
    for family in crate::metrics::metrics().upstream_requests.collect() {
        for series in family.get_metric() {
            let label = |name: &str| {
                series
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let code = label("code");
            let count = series.get_counter().value() as u64;
            let error = code == "error" || code.starts_with('5');
            let total = totals
                .entry((label("upstream"), label("backend")))
                .or_default();
            total.0 += count;
            if error {
                total.1 += count;
            }
        }
    }
    totals
}

fn push<T>(series: &mut VecDeque<T>, value: T) {
    if series.len() == POINTS {
        series.pop_front();
    }
    series.push_back(value);
}

/// Two decimals are all a chart needs.
pub(super) fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The background service that takes the points.
pub struct Sampler {
    pub topology: Arc<ArcSwap<Topology>>,
    pub history: Arc<History>,
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.history.sample(&self.topology.load(), now - last);
                    last = now;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
