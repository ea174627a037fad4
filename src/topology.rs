//! The compiled, immutable form of a [`Config`] that the proxy reads: route table,
//! upstreams with their backends and live state, direct responses, metric handles.
//! Built once per load and swapped whole; the request path only reads it.

use crate::balance::health::CheckPlan;
use crate::balance::probe::Probe;
use crate::balance::{Backend, BackendState, Upstream};
use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::edge::respond::DirectResponse;
use crate::forwarding::TrustedProxies;
use crate::metrics::{BackendMetrics, RouteMetrics, NO_UPSTREAM};
use crate::router::{RouteId, Router};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Topology {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Active checks, one per upstream that has a `health_check`.
    pub check_plans: Vec<Arc<CheckPlan>>,
    pub trusted_proxies: TrustedProxies,
}

/// What a matched route does.
pub enum RouteAction {
    /// Forward to `topology.upstreams[upstream]`.
    Proxy { upstream: usize },
    /// Answer directly.
    Respond(Box<DirectResponse>),
}

pub struct Route {
    /// The `route` label of metrics and logs: the route's name, or `index:path`.
    pub label: String,
    /// The `upstream` label: the upstream's name, or `-`.
    pub upstream_label: String,
    pub action: RouteAction,
    /// The prefix removed from the path before forwarding, when `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    pub metrics: RouteMetrics,
}

impl Topology {
    /// Compiles a validated config. Errors here mean a config passed validation
    /// that should not have; they are reported, never panicked on.
    pub fn compile(config: &Config) -> anyhow::Result<Topology> {
        let mut upstream_index = HashMap::new();
        let mut upstreams = Vec::new();
        let mut check_plans = Vec::new();
        for (name, upstream_config) in &config.upstreams {
            let upstream = Arc::new(compile_upstream(name, upstream_config));
            if let Some(plan) = check_plan(&upstream, upstream_config) {
                check_plans.push(Arc::new(plan));
            }
            upstream_index.insert(name.as_str(), upstreams.len());
            upstreams.push(upstream);
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut patterns = Vec::with_capacity(config.routes.len());
        for (id, route_config) in config.routes.iter().enumerate() {
            let host = route_config
                .matcher
                .host_pattern()
                .map_err(|e| anyhow!("routes[{id}]: {e}"))?;
            let path = route_config
                .matcher
                .path_pattern()
                .map_err(|e| anyhow!("routes[{id}]: {e}"))?;
            routes.push(compile_route(id, route_config, &upstream_index)?);
            patterns.push((host, path));
        }
        let router = Router::new(
            patterns
                .iter()
                .enumerate()
                .map(|(id, (h, p))| (h, p, id as RouteId)),
        );

        Ok(Topology {
            router,
            routes,
            upstreams,
            check_plans,
            trusted_proxies: TrustedProxies::new(config.server.trusted_proxies.clone()),
        })
    }
}

fn compile_upstream(name: &str, config: &UpstreamConfig) -> Upstream {
    let backends = config
        .backends
        .iter()
        .map(|b| {
            let label = b.address.to_string();
            let mut peer = HttpPeer::new(b.address, false, String::new());
            peer.options.connection_timeout = Some(config.timeouts.connect);
            peer.options.read_timeout = Some(config.timeouts.read);
            peer.options.write_timeout = Some(config.timeouts.write);
            peer.options.idle_timeout = Some(config.timeouts.idle);
            Backend {
                address: b.address,
                state: Arc::new(BackendState::new(BackendMetrics::new(name, &label))),
                label,
                weight: b.weight,
                peer,
            }
        })
        .collect();
    Upstream::new(
        name.to_string(),
        backends,
        config.algorithm,
        config.retries,
        config.passive.clone(),
    )
}

fn check_plan(upstream: &Arc<Upstream>, config: &UpstreamConfig) -> Option<CheckPlan> {
    let hc = config.health_check.as_ref()?;
    let probe = match &hc.http {
        Some(http) => Probe::Http {
            path: http.path.clone(),
            host: http.host.clone(),
            expect_status: http.expect_status.clone(),
        },
        None => Probe::Tcp,
    };
    Some(CheckPlan {
        upstream: Arc::clone(upstream),
        probe,
        interval: hc.interval,
        timeout: hc.timeout,
        healthy_threshold: hc.healthy_threshold,
        unhealthy_threshold: hc.unhealthy_threshold,
    })
}

fn compile_route(
    id: usize,
    config: &RouteConfig,
    upstreams: &HashMap<&str, usize>,
) -> anyhow::Result<Route> {
    let label = match &config.name {
        Some(name) => name.clone(),
        None => {
            let m = &config.matcher;
            let path = m
                .path
                .as_deref()
                .or(m.path_prefix.as_deref())
                .unwrap_or("/");
            format!("{id}:{path}")
        }
    };
    let (action, upstream_label) = match (&config.upstream, &config.respond) {
        (Some(name), None) => {
            let index = *upstreams
                .get(name.as_str())
                .ok_or_else(|| anyhow!("routes[{id}]: unknown upstream `{name}`"))?;
            (RouteAction::Proxy { upstream: index }, name.clone())
        }
        (None, Some(respond)) => {
            let response = DirectResponse::new(
                respond.status,
                respond
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
                Bytes::from(respond.body.clone()),
            )
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("routes[{id}].respond"))?;
            (
                RouteAction::Respond(Box::new(response)),
                NO_UPSTREAM.to_string(),
            )
        }
        _ => return Err(anyhow!("routes[{id}]: a route has exactly one action")),
    };
    let strip_prefix = if config.strip_prefix {
        config.matcher.path_prefix.clone()
    } else {
        None
    };
    Ok(Route {
        metrics: RouteMetrics::new(&label, &upstream_label),
        label,
        upstream_label,
        action,
        strip_prefix,
    })
}
