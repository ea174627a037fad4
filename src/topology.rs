//! The compiled, immutable form of a [`Config`] that the proxy reads: route table,
//! upstreams with their backends and live state, direct responses, metric handles.
//! Built once per load and swapped whole; the request path only reads it.

use crate::balance::health::CheckPlan;
use crate::balance::probe::{ProbeKind, Probes};
use crate::balance::{Backend, BackendState, Upstream};
use crate::config::{AuthPolicyConfig, Config, RateKey, RouteConfig, UpstreamConfig};
use crate::edge::respond::DirectResponse;
use crate::edge::static_files::StaticFiles;
use crate::filters::auth::{api_keys::ApiKeys, forward::ForwardAuth, jwt::JwtAuth, AuthPolicy};
use crate::filters::rate_limit::RateLimiter;
use crate::forwarding::TrustedProxies;
use crate::metrics::{BackendMetrics, RouteMetrics, NO_UPSTREAM};
use crate::router::{RouteId, Router};
use bytes::Bytes;
use http::header::HeaderName;
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
    /// Every header an auth policy may set; removed from every client request.
    pub identity_headers: Vec<HeaderName>,
}

/// A problem found while compiling: the config node it is about, and what it is.
#[derive(Debug)]
pub struct CompileError {
    pub node: String,
    pub message: String,
}

impl CompileError {
    fn at(node: impl Into<String>, message: impl Into<String>) -> Self {
        CompileError {
            node: node.into(),
            message: message.into(),
        }
    }
}

/// An auth policy with its name, shared by the routes that name it.
pub struct NamedAuth {
    pub name: String,
    pub policy: AuthPolicy,
    /// How its rejections read.
    pub error_body: crate::config::ErrorBody,
}

/// A rate limit with its name and the RateLimit-Limit value, shared by its routes.
pub struct NamedRateLimit {
    pub name: String,
    pub limiter: RateLimiter,
    pub limit_header: http::HeaderValue,
    /// The status of refused requests (429 or 503).
    pub status: u16,
}

/// What a matched route does.
pub enum RouteAction {
    /// Forward to `topology.upstreams[upstream]`.
    Proxy { upstream: usize },
    /// Answer directly.
    Respond(Box<DirectResponse>),
    /// Serve files.
    Static(Box<StaticFiles>),
}

pub struct Route {
    /// The `route` label of metrics and logs: the route's name, or `index:path`.
    pub label: String,
    /// The `upstream` label: the upstream's name, or `-`.
    pub upstream_label: String,
    pub action: RouteAction,
    /// The prefix removed from the path before forwarding, when `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    /// The route's own `encoded_slashes`; the server's applies when `None`.
    pub encoded_slashes: Option<crate::config::EncodedSlashes>,
    pub auth: Option<Arc<NamedAuth>>,
    pub rate_limit: Option<Arc<NamedRateLimit>>,
    /// Client networks allowed (empty: all) and denied, checked before anything else.
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    pub metrics: RouteMetrics,
}

impl Route {
    /// Whether `client` may use this route: not denied, and allowed when an
    /// allow list is set.
    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&client))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
    }
}

impl Topology {
    /// Compiles a validated config, reading the files it names (keys, secrets).
    /// Errors name the config node they are about.
    ///
    /// Backends that `previous` also has (same upstream name and address) keep
    /// their live state: health, passive failures and in-flight counts.
    pub fn compile(config: &Config, previous: Option<&Topology>) -> Result<Topology, CompileError> {
        let mut upstream_index = HashMap::new();
        let mut upstreams = Vec::new();
        let mut check_plans = Vec::new();
        for (name, upstream_config) in &config.upstreams {
            let before = previous.and_then(|p| p.upstreams.iter().find(|u| u.name == *name));
            let upstream = Arc::new(compile_upstream(
                name,
                upstream_config,
                before.map(|u| u.as_ref()),
            ));
            if let Some(plan) = check_plan(&upstream, upstream_config)? {
                check_plans.push(Arc::new(plan));
            }
            upstream_index.insert(name.as_str(), upstreams.len());
            upstreams.push(upstream);
        }

        let mut auth = HashMap::new();
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for (name, policy_config) in &config.auth {
            let policy = compile_auth(name, policy_config)?;
            identity_headers.extend(policy.identity_headers());
            let error_body = [
                policy_config.forward.as_ref().map(|f| f.error_body),
                policy_config.jwt.as_ref().map(|j| j.error_body),
                policy_config.api_keys.as_ref().map(|k| k.error_body),
            ]
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_default();
            auth.insert(
                name.as_str(),
                Arc::new(NamedAuth {
                    name: name.clone(),
                    policy,
                    error_body,
                }),
            );
        }
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();

        let mut rate_limits = HashMap::new();
        for (name, limit_config) in &config.rate_limits {
            let key = RateKey::parse(&limit_config.key)
                .map_err(|e| CompileError::at(format!("rate_limits.{name}.key"), e))?;
            let limiter = RateLimiter::new(limit_config, key);
            let limit_header = http::HeaderValue::from(limiter.capacity);
            let named = NamedRateLimit {
                name: name.clone(),
                limiter,
                limit_header,
                status: limit_config.status,
            };
            rate_limits.insert(name.as_str(), Arc::new(named));
        }

        let mut routes = Vec::with_capacity(config.routes.len());
        let mut patterns = Vec::with_capacity(config.routes.len());
        for (id, route_config) in config.routes.iter().enumerate() {
            let at_match = || format!("routes[{id}].match");
            let host = route_config
                .matcher
                .host_pattern()
                .map_err(|e| CompileError::at(at_match(), e))?;
            let path = route_config
                .matcher
                .path_pattern()
                .map_err(|e| CompileError::at(at_match(), e))?;
            let mut route = compile_route(id, route_config, &upstream_index)?;
            route.auth = lookup(&auth, route_config.auth.as_deref(), id, "auth")?;
            route.rate_limit = lookup(
                &rate_limits,
                route_config.rate_limit.as_deref(),
                id,
                "rate_limit",
            )?;
            routes.push(route);
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
            identity_headers,
        })
    }
}

/// The shared entry a route names under `key`, if it names one.
fn lookup<T>(
    entries: &HashMap<&str, Arc<T>>,
    name: Option<&str>,
    route: usize,
    key: &str,
) -> Result<Option<Arc<T>>, CompileError> {
    match name {
        None => Ok(None),
        Some(name) => entries.get(name).cloned().map(Some).ok_or_else(|| {
            CompileError::at(
                format!("routes[{route}].{key}"),
                format!("unknown {key} `{name}`"),
            )
        }),
    }
}

fn compile_auth(name: &str, config: &AuthPolicyConfig) -> Result<AuthPolicy, CompileError> {
    let at = format!("auth.{name}");
    if let Some(forward) = &config.forward {
        return ForwardAuth::new(forward)
            .map(|f| AuthPolicy::Forward(Box::new(f)))
            .map_err(|e| CompileError::at(format!("{at}.forward"), e));
    }
    if let Some(jwt) = &config.jwt {
        return JwtAuth::load(jwt)
            .map(AuthPolicy::Jwt)
            .map_err(|(node, e)| CompileError::at(format!("{at}.jwt.{node}"), e));
    }
    if let Some(keys) = &config.api_keys {
        let header = HeaderName::from_bytes(keys.header.as_bytes()).map_err(|_| {
            CompileError::at(format!("{at}.api_keys.header"), "invalid header name")
        })?;
        return ApiKeys::load(header, &keys.keys_file)
            .map(AuthPolicy::ApiKeys)
            .map_err(|e| CompileError::at(format!("{at}.api_keys.keys_file"), e));
    }
    Err(CompileError::at(
        at,
        "an auth policy has exactly one of `forward`, `jwt` or `api_keys`",
    ))
}

fn compile_upstream(name: &str, config: &UpstreamConfig, previous: Option<&Upstream>) -> Upstream {
    let backends = config
        .backends
        .iter()
        .flat_map(|b| {
            b.resolved.iter().map(move |address| {
                // A name that stands for several addresses labels each by its address.
                let label = match b.resolved.len() {
                    1 => b.address.trim().to_string(),
                    _ => address.to_string(),
                };
                compile_backend(name, config, *address, label, b.weight, previous)
            })
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

/// One backend at `address`, with the live state `previous` had for that address.
fn compile_backend(
    upstream: &str,
    config: &UpstreamConfig,
    address: std::net::SocketAddr,
    label: String,
    weight: u32,
    previous: Option<&Upstream>,
) -> Backend {
    let tls = config.tls.as_ref();
    let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_default();
    let mut peer = HttpPeer::new(address, tls.is_some(), sni);
    if let Some(tls) = tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
    }
    peer.options.connection_timeout = Some(config.timeouts.connect);
    peer.options.read_timeout = Some(config.timeouts.read);
    peer.options.write_timeout = Some(config.timeouts.write);
    peer.options.idle_timeout = Some(config.timeouts.idle);
    let state = previous
        .and_then(|p| p.backends.iter().find(|old| old.address == address))
        .map(|old| Arc::clone(&old.state))
        .unwrap_or_else(|| Arc::new(BackendState::new(BackendMetrics::new(upstream, &label))));
    Backend {
        address,
        label,
        weight,
        state,
        peer,
    }
}

fn check_plan(
    upstream: &Arc<Upstream>,
    config: &UpstreamConfig,
) -> Result<Option<CheckPlan>, CompileError> {
    let Some(hc) = config.health_check.as_ref() else {
        return Ok(None);
    };
    let kind = match &hc.http {
        Some(http) => ProbeKind::Http {
            path: http.path.clone(),
            host: http.host.clone(),
            expect_status: http.expect_status.clone(),
        },
        None => ProbeKind::Tcp,
    };
    let probes = Probes::new(&kind, &upstream.backends, hc.timeout).map_err(|e| {
        CompileError::at(
            format!("upstreams.{}.health_check", upstream.name),
            e.to_string(),
        )
    })?;
    Ok(Some(CheckPlan {
        upstream: Arc::clone(upstream),
        probes,
        interval: hc.interval,
        healthy_threshold: hc.healthy_threshold,
        unhealthy_threshold: hc.unhealthy_threshold,
    }))
}

fn compile_route(
    id: usize,
    config: &RouteConfig,
    upstreams: &HashMap<&str, usize>,
) -> Result<Route, CompileError> {
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
    let direct = |status: u16, headers: Vec<(&str, &str)>, body: Bytes| {
        DirectResponse::new(status, headers, body)
            .map(|r| (RouteAction::Respond(Box::new(r)), NO_UPSTREAM.to_string()))
            .map_err(|e| CompileError::at(format!("routes[{id}]"), e.to_string()))
    };
    if let Some(files) = &config.static_files {
        let served = StaticFiles::new(
            &files.root,
            files.index.clone(),
            files.not_found_page.as_deref(),
        )
        .map_err(|e| CompileError::at(format!("routes[{id}].static.root"), e))?;
        let route = Route {
            metrics: RouteMetrics::new(&label, NO_UPSTREAM),
            label,
            upstream_label: NO_UPSTREAM.to_string(),
            action: RouteAction::Static(Box::new(served)),
            strip_prefix: config
                .strip_prefix
                .then(|| config.matcher.path_prefix.clone())
                .flatten(),
            encoded_slashes: config.encoded_slashes,
            auth: None,
            rate_limit: None,
            allow: config.allow.clone(),
            deny: config.deny.clone(),
        };
        return Ok(route);
    }
    let (action, upstream_label) = match (&config.upstream, &config.respond, &config.redirect) {
        (Some(name), None, None) => {
            let index = *upstreams.get(name.as_str()).ok_or_else(|| {
                CompileError::at(
                    format!("routes[{id}].upstream"),
                    format!("unknown upstream `{name}`"),
                )
            })?;
            (RouteAction::Proxy { upstream: index }, name.clone())
        }
        (None, Some(respond), None) => direct(
            respond.status,
            respond
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            Bytes::from(respond.body.clone()),
        )?,
        (None, None, Some(redirect)) => direct(
            redirect.status,
            vec![("Location", redirect.to.as_str())],
            Bytes::from(format!("Redirecting to {}\n", redirect.to)),
        )?,
        _ => {
            return Err(CompileError::at(
                format!("routes[{id}]"),
                "a route has exactly one action",
            ))
        }
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
        encoded_slashes: config.encoded_slashes,
        auth: None,
        rate_limit: None,
        allow: config.allow.clone(),
        deny: config.deny.clone(),
    })
}
