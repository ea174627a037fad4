//! The compiled, immutable form of a [`Config`] that the proxy reads: route table,
//! upstreams with their backends and live state, direct responses, metric handles.
//! Built once per load and swapped whole; the request path only reads it.
//!
//! Compiling cannot fail: the file's values were parsed and checked at load, and
//! what comes from outside the file was read into [`Resources`] before.

mod resources;
mod runtime;
mod split;

pub use resources::Resources;
pub use runtime::RuntimeChangeError;
pub use split::{Arm, Split};

use crate::balance::health::CheckPlan;
use crate::balance::probe::{ProbeKind, Probes};
use crate::balance::{Backend, BackendState, Upstream};
use crate::cache::{Cache, LookupCounters};
use crate::config::{Config, EncodedSlashes, ErrorBody, RouteConfig, UpstreamConfig};
use crate::edge::error_pages::ErrorPages;
use crate::edge::header_rules::HeaderRules;
use crate::edge::respond::DirectResponse;
use crate::edge::static_files::StaticFiles;
use crate::filters::auth::AuthPolicy;
use crate::filters::cors::Cors;
use crate::filters::rate_limit::RouteLimit;
use crate::forwarding::TrustedProxies;
use crate::metrics::{BackendMetrics, Lease, RouteMetrics, NO_UPSTREAM};
use crate::mirror::Mirror;
use crate::router::Router;
use bytes::Bytes;
use http::header::HeaderName;
use pingora::upstreams::peer::HttpPeer;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Held by whatever swaps in a new topology (a reload, a discovery change)
/// from reading the current one to storing its successor, so that no swap
/// undoes another.
pub static WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Topology {
    pub router: Arc<Router>,
    pub routes: Arc<Vec<Route>>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// The upstreams whose backends follow DNS, by index, with their config.
    discovered: Vec<(usize, Arc<UpstreamConfig>)>,
    /// Active checks, one per upstream that has a `health_check`.
    pub check_plans: Vec<Arc<CheckPlan>>,
    pub trusted_proxies: TrustedProxies,
    /// Every header an auth policy may set, and those set from client
    /// certificates; removed from every client request.
    pub identity_headers: Vec<HeaderName>,
    /// The rate limits by name, kept for the next topology to take over.
    rate_limits: BTreeMap<String, Arc<RouteLimit>>,
    /// The caches by name, kept for the next topology to take over.
    caches: BTreeMap<String, Arc<Cache>>,
}

/// An auth policy with its name, shared by the routes that name it.
pub struct NamedAuth {
    pub name: String,
    pub policy: AuthPolicy,
    /// How its rejections read.
    pub error_body: ErrorBody,
}

/// What a matched route does.
pub enum RouteAction {
    /// Forward to `topology.upstreams[upstream]`.
    Proxy { upstream: usize },
    /// Forward to the upstream of one arm of the split, chosen per request.
    Split(Box<Split>),
    /// Answer directly.
    Respond(Box<DirectResponse>),
    /// Serve files.
    Static(Box<StaticFiles>),
}

pub struct Route {
    /// The `route` label of metrics and logs: the route's name, or `index:path`.
    pub label: String,
    /// The match as written, for the admin API (`host h, path_prefix /p`).
    pub matcher: String,
    /// The `upstream` label: the upstream's name, or `-` (also for a split
    /// route's requests answered before an arm was chosen).
    pub upstream_label: String,
    pub action: RouteAction,
    /// The prefix removed from the path before forwarding, when `strip_prefix` is set.
    pub strip_prefix: Option<String>,
    /// The route's own `encoded_slashes`; the server's applies when `None`.
    pub encoded_slashes: Option<EncodedSlashes>,
    /// The route's own `request_buffering`; the server's applies when `None`.
    pub request_buffering: Option<bool>,
    pub auth: Option<Arc<NamedAuth>>,
    pub rate_limit: Option<Arc<RouteLimit>>,
    /// The cache that stores the route's answers, with its lookup counters.
    pub(crate) cache: Option<(Arc<Cache>, LookupCounters)>,
    /// Applied to the request the backend gets.
    pub request_headers: HeaderRules,
    /// Applied to every answer of the route; `None` when there are none.
    pub response_headers: Option<Arc<HeaderRules>>,
    /// Bodies of tollgate's own answers on this route, by status.
    pub error_pages: ErrorPages,
    /// The route's CORS policy, when it has `cors:`.
    pub cors: Option<Arc<Cors>>,
    /// Where copies of the route's requests go, when it has `mirror:`.
    pub mirror: Option<Arc<Mirror>>,
    /// Client networks allowed (empty: all) and denied, checked before anything else.
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    /// The route's metrics with `upstream_label`; a split route's arms have
    /// their own.
    pub metrics: RouteMetrics,
    /// The route's hold on its series of its auth policy and rate limit.
    policy_series: Vec<Lease>,
}

impl Route {
    /// Whether `client` may use this route by address: not in `deny`, and in
    /// `allow` when there is one.
    pub(crate) fn allows_client(&self, client: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&client))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
    }

    /// The arm `arm` of the route's split, when it has one.
    fn arm(&self, arm: Option<usize>) -> Option<&Arm> {
        match &self.action {
            RouteAction::Split(split) => split.arms().get(arm?),
            _ => None,
        }
    }

    /// The `upstream` label of a request of this route that went to the
    /// split's arm `arm` (`None`: no arm chosen, or no split).
    pub fn upstream_label_of(&self, arm: Option<usize>) -> &str {
        self.arm(arm).map_or(&self.upstream_label, |a| &a.label)
    }

    /// The metrics of a request of this route that went to the split's arm
    /// `arm` (`None`: no arm chosen, or no split).
    pub fn metrics_of(&self, arm: Option<usize>) -> &RouteMetrics {
        self.arm(arm).map_or(&self.metrics, |a| &a.metrics)
    }
}

impl Topology {
    /// Compiles a loaded config with what was read for it.
    ///
    /// What `previous` also has keeps its live state: backends (same upstream and
    /// address) their health, passive failures and in-flight counts; rate limits
    /// that did not change their buckets; caches (same name and directory) their
    /// stored answers.
    pub fn compile(config: &Config, resources: Resources, previous: Option<&Topology>) -> Topology {
        let CompiledUpstreams {
            index: upstream_index,
            upstreams,
            check_plans,
            discovered,
        } = compile_upstreams(config, previous);
        let mut identity_headers: Vec<HeaderName> = resources
            .auth
            .values()
            .flat_map(|a| a.policy.identity_headers())
            .chain(crate::edge::client_certs::IDENTITY_HEADERS)
            .collect();
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        let rate_limits = compile_rate_limits(config, previous);
        let caches: BTreeMap<String, Arc<Cache>> = config
            .caches
            .iter()
            .map(|(name, cache_config)| {
                let before = previous.and_then(|p| p.caches.get(name)).map(|c| &**c);
                let cache = Cache::compile(name, cache_config, before);
                (name.clone(), Arc::new(cache))
            })
            .collect();

        let mut static_files = resources.static_files;
        let mut error_pages = resources.error_pages;
        let mut routes = Vec::with_capacity(config.routes.len());
        for (id, route_config) in config.routes.iter().enumerate() {
            let files = static_files.remove(&id);
            let mut route = compile_route(id, route_config, config, &upstream_index, files);
            route.error_pages = error_pages.remove(&id).unwrap_or_default();
            route.auth = route_config
                .auth
                .as_ref()
                .and_then(|n| resources.auth.get(n))
                .cloned();
            route.rate_limit = route_config
                .rate_limit
                .as_ref()
                .and_then(|n| rate_limits.get(n))
                .cloned();
            route.cache = route_config
                .cache
                .as_ref()
                .and_then(|n| caches.get(n))
                .map(|cache| (Arc::clone(cache), LookupCounters::new(&route.label)));
            route.mirror = compile_mirror(&route.label, route_config, &upstream_index, previous);
            route.policy_series = policy_series(&route);
            routes.push(route);
        }
        let router = Router::new(
            config
                .routes
                .iter()
                .enumerate()
                .map(|(id, r)| (&r.matcher.host, r.matcher.path_pattern(), id)),
        );
        Topology {
            router: Arc::new(router),
            routes: Arc::new(routes),
            upstreams,
            discovered,
            check_plans,
            trusted_proxies: TrustedProxies::new(config.server.trusted_proxies.clone()),
            identity_headers,
            rate_limits,
            caches,
        }
    }
}

/// The upstreams of a config, with what comes of them.
struct CompiledUpstreams<'a> {
    /// Upstream name -> index.
    index: HashMap<&'a str, usize>,
    upstreams: Vec<Arc<Upstream>>,
    check_plans: Vec<Arc<CheckPlan>>,
    discovered: Vec<(usize, Arc<UpstreamConfig>)>,
}

/// Compiles every upstream of `config`, keeping the live state `previous`
/// has for each.
fn compile_upstreams<'a>(config: &'a Config, previous: Option<&Topology>) -> CompiledUpstreams<'a> {
    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    let mut check_plans = Vec::new();
    let mut discovered = Vec::new();
    for (name, upstream_config) in &config.upstreams {
        if upstream_config.discovery.is_some() {
            discovered.push((upstreams.len(), Arc::new(upstream_config.clone())));
        }
        let before = previous.and_then(|p| p.upstreams.iter().find(|u| u.name == *name));
        let upstream = Arc::new(compile_upstream(
            name,
            upstream_config,
            before.map(|u| &**u),
        ));
        if let Some(plan) = check_plan(&upstream, upstream_config) {
            check_plans.push(Arc::new(plan));
        }
        upstream_index.insert(name.as_str(), upstreams.len());
        upstreams.push(upstream);
    }
    CompiledUpstreams {
        index: upstream_index,
        upstreams,
        check_plans,
        discovered,
    }
}

impl Topology {
    /// The upstreams whose backends follow DNS: index and config.
    pub fn discovered(&self) -> impl Iterator<Item = (usize, Arc<UpstreamConfig>)> + '_ {
        self.discovered.iter().map(|(i, c)| (*i, Arc::clone(c)))
    }

    /// This topology with the upstreams named in `changed` (discovered ones)
    /// rebuilt on the sets last discovered, their backends' live state kept
    /// for the addresses that stay, and their health checks following.
    pub fn with_rediscovered(&self, changed: &[String]) -> Topology {
        let mut upstreams = self.upstreams.clone();
        let mut check_plans: Vec<Arc<CheckPlan>> = self.check_plans.clone();
        for (index, config) in &self.discovered {
            let before = &self.upstreams[*index];
            if !changed.contains(&before.name) {
                continue;
            }
            let upstream = Arc::new(compile_upstream(&before.name, config, Some(before)));
            check_plans.retain(|plan| !Arc::ptr_eq(&plan.upstream, before));
            if let Some(plan) = check_plan(&upstream, config) {
                check_plans.push(Arc::new(plan));
            }
            upstreams[*index] = upstream;
        }
        self.with_upstreams(upstreams, check_plans)
    }

    /// This topology with other upstreams and health checks, the rest shared.
    fn with_upstreams(
        &self,
        upstreams: Vec<Arc<Upstream>>,
        check_plans: Vec<Arc<CheckPlan>>,
    ) -> Topology {
        Topology {
            router: Arc::clone(&self.router),
            routes: Arc::clone(&self.routes),
            upstreams,
            discovered: self.discovered.clone(),
            check_plans,
            trusted_proxies: self.trusted_proxies.clone(),
            identity_headers: self.identity_headers.clone(),
            rate_limits: self.rate_limits.clone(),
            caches: self.caches.clone(),
        }
    }
}

/// The rate limits of `config`; those `previous` has unchanged are its own.
fn compile_rate_limits(
    config: &Config,
    previous: Option<&Topology>,
) -> BTreeMap<String, Arc<RouteLimit>> {
    config
        .rate_limits
        .iter()
        .map(|(name, limit_config)| {
            let kept = previous
                .and_then(|p| p.rate_limits.get(name))
                .filter(|old| old.config == *limit_config);
            let limit = kept
                .cloned()
                .unwrap_or_else(|| Arc::new(RouteLimit::new(name, limit_config)));
            (name.clone(), limit)
        })
        .collect()
}

/// Upstream `name`: its listed backends, or those last discovered for it.
fn compile_upstream(name: &str, config: &UpstreamConfig, previous: Option<&Upstream>) -> Upstream {
    let backends = if config.discovery.is_some() {
        crate::discovery::current(name)
            .into_iter()
            .map(|(address, weight)| {
                compile_backend(name, config, address, address.to_string(), weight, previous)
            })
            .collect()
    } else {
        config
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
            .collect()
    };
    Upstream::new(name.to_string(), backends, config).keeping_budget_of(previous)
}

/// How many requests tollgate sends at once over one HTTP/2 connection to a
/// backend before it opens another (servers commonly allow 100 to 250).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The name a TLS connection to the backend at `address` is opened for: the
/// upstream's `sni`, or else the backend's IP address, which rustls takes as
/// a name but sends no SNI for (pingora refuses an empty one). Without `sni`,
/// `verify` is off (the config requires `sni` to verify).
fn backend_sni(tls: &crate::config::UpstreamTlsConfig, address: SocketAddr) -> String {
    match tls.sni.as_deref() {
        Some(sni) if !sni.is_empty() => sni.to_string(),
        _ => address.ip().to_string(),
    }
}

/// One backend at `address`, with the live state `previous` had for that address.
fn compile_backend(
    upstream: &str,
    config: &UpstreamConfig,
    address: SocketAddr,
    label: String,
    weight: u32,
    previous: Option<&Upstream>,
) -> Backend {
    let tls = config.tls.as_ref();
    let sni = match tls {
        Some(tls) => backend_sni(tls, address),
        None => String::new(),
    };
    let mut peer = HttpPeer::new(address, tls.is_some(), sni);
    if let Some(tls) = tls {
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        // Instead of the system's CAs; health probes clone these options.
        peer.options.ca = tls.ca_roots.clone();
        peer.group_key = trust_group(tls.ca_roots.as_deref());
    }
    peer.options.connection_timeout = Some(config.timeouts.connect);
    peer.options.read_timeout = Some(config.timeouts.read);
    peer.options.write_timeout = Some(config.timeouts.write);
    peer.options.idle_timeout = Some(config.timeouts.idle);
    if config.protocol.is_http2() {
        // HTTP/2 only (ALPN `h2` over TLS; prior knowledge in cleartext), many
        // requests at once over each connection.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    let state = match previous {
        Some(before) => match before.backends.iter().find(|old| old.address == address) {
            Some(old) => Arc::clone(&old.state),
            // A backend that joins a live upstream ramps up (slow start).
            None => {
                let state = BackendState::new(BackendMetrics::new(upstream, &label));
                state.ramp.begin();
                Arc::new(state)
            }
        },
        None => Arc::new(BackendState::new(BackendMetrics::new(upstream, &label))),
    };
    Backend {
        address,
        label,
        weight,
        state,
        peer,
    }
}

/// The connection-pool group of peers that trust `roots` (0: the system's
/// CAs). pingora's pool keys connections without their CAs, so without it a
/// connection verified against one upstream's private CA could be reused by
/// an upstream that does not trust that CA.
fn trust_group(roots: Option<&pingora::protocols::tls::CaType>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(roots) = roots else {
        return 0;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for root in roots {
        root.borrow_raw_cert().hash(&mut hasher);
    }
    hasher.finish().max(1)
}

fn check_plan(upstream: &Arc<Upstream>, config: &UpstreamConfig) -> Option<CheckPlan> {
    let hc = config.health_check.as_ref()?;
    let kind = match (&hc.http, &hc.grpc) {
        (Some(http), _) => ProbeKind::Http {
            path: http.path.clone(),
            host: http.host.clone(),
            expect_status: http.expect_status.clone(),
        },
        (None, Some(grpc)) => ProbeKind::Grpc {
            service: grpc.service.clone(),
        },
        (None, None) => ProbeKind::Tcp,
    };
    Some(CheckPlan {
        upstream: Arc::clone(upstream),
        probes: Probes::new(&kind, &upstream.backends, hc.timeout),
        interval: hc.interval,
        healthy_threshold: hc.healthy_threshold,
        unhealthy_threshold: hc.unhealthy_threshold,
    })
}

/// Route `id` of `whole`, without its auth policy and rate limit (the caller
/// sets those). `files` is its static directory, when it is a static route.
fn compile_route(
    id: usize,
    config: &RouteConfig,
    whole: &Config,
    upstreams: &HashMap<&str, usize>,
    files: Option<StaticFiles>,
) -> Route {
    let label = match &config.name {
        Some(name) => name.clone(),
        None => format!("{id}:{}", config.matcher.path_text()),
    };
    let upstream = config
        .upstream
        .as_ref()
        .and_then(|name| Some((name, *upstreams.get(name.as_str())?)));
    let split = config
        .split
        .as_ref()
        .and_then(|arms| Split::compile(&label, arms, upstreams, &whole.upstreams));
    let (action, upstream_label) = if let Some((name, index)) = upstream {
        (RouteAction::Proxy { upstream: index }, name.clone())
    } else if let Some(split) = split {
        (RouteAction::Split(Box::new(split)), NO_UPSTREAM.to_string())
    } else if let Some(files) = files {
        (
            RouteAction::Static(Box::new(files)),
            NO_UPSTREAM.to_string(),
        )
    } else {
        (
            RouteAction::Respond(Box::new(direct_response(config))),
            NO_UPSTREAM.to_string(),
        )
    };
    let strip_prefix = config
        .strip_prefix
        .then(|| {
            config
                .matcher
                .path_prefix
                .as_ref()
                .map(|p| p.as_str().to_string())
        })
        .flatten();
    Route {
        metrics: RouteMetrics::new(&label, &upstream_label),
        matcher: config.matcher.describe(),
        label,
        upstream_label,
        action,
        strip_prefix,
        encoded_slashes: config.encoded_slashes,
        request_buffering: config.request_buffering,
        auth: None,
        rate_limit: None,
        cache: None,
        request_headers: HeaderRules::new(&config.request_headers),
        response_headers: Some(HeaderRules::new(&config.response_headers))
            .filter(|rules| !rules.is_empty())
            .map(Arc::new),
        error_pages: ErrorPages::default(),
        cors: config.cors.as_ref().map(|c| Arc::new(Cors::new(c))),
        mirror: None,
        allow: config.allow.clone(),
        deny: config.deny.clone(),
        policy_series: Vec::new(),
    }
}

/// The holds of `route` on its series of its auth policy and rate limit.
fn policy_series(route: &Route) -> Vec<Lease> {
    let auth = route.auth.as_ref().map(|a| a.name.as_str());
    let limit = route.rate_limit.as_ref().map(|l| l.name.as_str());
    auth.map(|policy| crate::metrics::auth_series(&route.label, policy))
        .into_iter()
        .chain(limit.map(|policy| crate::metrics::rate_limited_series(&route.label, policy)))
        .collect()
}

/// The mirror of route `label` of `config`, when it has one; it keeps the
/// places of copies in flight of the same route of `previous`.
fn compile_mirror(
    label: &str,
    config: &RouteConfig,
    upstreams: &HashMap<&str, usize>,
    previous: Option<&Topology>,
) -> Option<Arc<Mirror>> {
    let mirror = config.mirror.as_ref()?;
    let upstream = *upstreams.get(mirror.upstream.as_str())?;
    let before = previous
        .and_then(|p| p.routes.iter().find(|r| r.label == label))
        .and_then(|r| r.mirror.as_deref());
    Some(Arc::new(Mirror::compile(label, mirror, upstream, before)))
}

/// The answer of a `respond` or `redirect` route.
fn direct_response(config: &RouteConfig) -> DirectResponse {
    if let Some(redirect) = &config.redirect {
        let to = String::from_utf8_lossy(redirect.to.as_bytes());
        return DirectResponse::new(
            redirect.status,
            [(http::header::LOCATION, redirect.to.clone())],
            Bytes::from(format!("Redirecting to {to}\n")),
        );
    }
    match &config.respond {
        Some(respond) => DirectResponse::new(
            respond.status,
            respond
                .headers
                .iter()
                .map(|(n, v)| (n.name().clone(), v.clone())),
            Bytes::from(respond.body.clone()),
        ),
        // Validation gives every route one action.
        None => DirectResponse::new(http::StatusCode::NOT_FOUND, [], Bytes::new()),
    }
}
