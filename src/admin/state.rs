//! The running state as the admin API shows it, in JSON. Read from the
//! topology the proxy serves and from the metrics; nothing here is on the
//! request path.

use super::history::{round, History};
use super::{Admin, Answer};
use crate::balance::{Backend, Upstream};
use crate::metrics::metrics;
use crate::topology::{RouteAction, Topology};
use prometheus::core::Collector;
use serde_json::{json, Map, Value};

/// `GET /api/status`: everything below in one answer.
pub(super) fn status(topology: &Topology, admin: &Admin) -> Value {
    let reload = crate::reload::last_outcome();
    let last_success = metrics().config_last_reload_success.get();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "source": admin.reloader.path().display().to_string(),
        "reload": {
            "last_success": (last_success > 0.0).then_some(last_success),
            "last_result": reload.as_ref().map(|r| if r.error.is_none() { "success" } else { "error" }),
            "last_at": reload.as_ref().map(|r| r.at),
            "error": reload.and_then(|r| r.error),
        },
        "upstreams": upstreams(topology, &admin.history),
        "routes": routes(topology),
        "certificates": certificates(),
        "caches": caches(),
    })
}

/// `GET /api/upstreams`: an object keyed by upstream name.
pub(super) fn upstreams(topology: &Topology, history: &History) -> Value {
    let mut all = Map::new();
    for upstream in &topology.upstreams {
        all.insert(upstream.name.clone(), upstream_json(upstream, history));
    }
    Value::Object(all)
}

/// `GET /api/upstreams/{name}`; 404 for an unknown name.
pub(super) fn upstream(topology: &Topology, history: &History, name: &str) -> Answer {
    match topology.upstreams.iter().find(|u| u.name == name) {
        Some(upstream) => Answer::ok(upstream_json(upstream, history)),
        None => Answer::error(404, format!("no upstream `{name}`")),
    }
}

fn upstream_json(upstream: &Upstream, history: &History) -> Value {
    let algorithm = upstream.config.algorithm.name();
    let backends: Vec<Value> = upstream
        .backends
        .iter()
        .map(|b| backend_json(&upstream.name, upstream, b, history))
        .collect();
    json!({
        "algorithm": algorithm,
        "hash_key": upstream.config.ring_key().map(|key| key.to_string()),
        "discovered": upstream.config.discovery.is_some(),
        "backends": backends,
    })
}

fn backend_json(name: &str, upstream: &Upstream, backend: &Backend, history: &History) -> Value {
    let address = backend.address.to_string();
    let (rps, eps) = history.latest(name, &address);
    let configured = upstream
        .config
        .backends
        .iter()
        .find(|c| c.resolved.contains(&backend.address))
        .map_or(backend.weight, |c| c.weight);
    let latency = backend
        .state
        .latency
        .cost(crate::balance::peak_ewma::now_nanos())
        .map(|ns| round(ns / 1e6));
    json!({
        "address": address,
        "label": backend.label,
        "state": backend.state.state_name(),
        "weight": backend.weight,
        "configured_weight": configured,
        "in_flight": backend.state.in_flight().max(0),
        "requests_per_second": round(rps),
        "errors_per_second": round(eps),
        "latency_ms": latency,
    })
}

/// A route's mirror in `GET /api/routes`: its shadow upstream, share,
/// copies in flight and counts since the process started.
fn mirror(topology: &Topology, mirror: &crate::mirror::Mirror) -> Value {
    let (in_flight, max_in_flight) = mirror.in_flight();
    let [sent, failed, dropped] = mirror.counts();
    json!({
        "upstream": topology.upstreams.get(mirror.upstream()).map(|u| u.name.clone()),
        "percent": (mirror.share() * 100_000.0).round() / 1000.0,
        "in_flight": in_flight,
        "max_in_flight": max_in_flight,
        "sent": sent,
        "failed": failed,
        "dropped": dropped,
    })
}

/// `GET /api/routes`: in the order they are matched.
pub(super) fn routes(topology: &Topology) -> Value {
    let routes: Vec<Value> = topology
        .routes
        .iter()
        .map(|route| {
            let (action, upstreams): (&str, Vec<String>) = match &route.action {
                RouteAction::Proxy { upstream } => {
                    ("proxy", vec![topology.upstreams[*upstream].name.clone()])
                }
                RouteAction::Split(split) => (
                    "split",
                    split.arms().iter().map(|a| a.label.clone()).collect(),
                ),
                RouteAction::Respond(_) => ("respond", Vec::new()),
                RouteAction::Static(_) => ("static", Vec::new()),
            };
            json!({
                "name": route.label,
                "match": route.matcher,
                "action": action,
                "upstreams": upstreams,
                "auth": route.auth.as_ref().map(|a| a.name.clone()),
                "mirror": route.mirror.as_deref().map(|m| mirror(topology, m)),
            })
        })
        .collect();
    Value::Array(routes)
}

/// `GET /api/certificates`: each served DNS name, its source and expiry (Unix
/// seconds), as `tollgate_tls_certificate_expiry_timestamp_seconds` has them.
pub(super) fn certificates() -> Value {
    let mut certificates: Vec<Value> = samples(&metrics().tls_certificate_expiry)
        .into_iter()
        .map(|(labels, value)| {
            json!({
                "name": label(&labels, "name"),
                "source": label(&labels, "source"),
                "expires": value,
            })
        })
        .collect();
    certificates.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Value::Array(certificates)
}

/// `GET /api/caches`: bytes and entries of each cache's tiers.
pub(super) fn caches() -> Value {
    let entries = samples(&metrics().cache_entries);
    let caches: Vec<Value> = samples(&metrics().cache_bytes)
        .into_iter()
        .map(|(labels, bytes)| {
            let (cache, tier) = (label(&labels, "cache"), label(&labels, "tier"));
            let count = entries
                .iter()
                .find(|(l, _)| label(l, "cache") == cache && label(l, "tier") == tier)
                .map_or(0.0, |(_, v)| *v);
            json!({ "name": cache, "tier": tier, "bytes": bytes, "entries": count })
        })
        .collect();
    Value::Array(caches)
}

/// Every series of a gauge family: its labels and value.
fn samples(family: &impl Collector) -> Vec<(Vec<(String, String)>, f64)> {
    family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            (labels, m.get_gauge().value())
        })
        .collect()
}

fn label(labels: &[(String, String)], name: &str) -> String {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}
