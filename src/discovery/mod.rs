//! Backends discovered by DNS (`upstreams.*.discovery`): the upstream's
//! backends are the addresses its name has now, A/AAAA records on one port,
//! or SRV records with their own ports and weights. The name is resolved at
//! load and then every `interval` (sooner when the records' TTL is shorter);
//! when the answer changes, the topology is swapped for one whose upstream
//! has the new set, keeping health and passive state for the addresses that
//! stay. An empty or failed answer keeps the last good set; it is logged and
//! counted (`tollgate_discovery_failures_total`).
//!
//! The sets live here, by upstream name, so that a reload compiles the set
//! last discovered rather than none.

use crate::balance::health::CheckPlan;
use crate::config::DiscoveryConfig;
use crate::metrics::metrics;
use crate::topology::Topology;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The highest SRV weight taken as it is (the most a backend's `weight` may
/// be); larger ones count as this.
const MAX_SRV_WEIGHT: u32 = 1000;

/// A discovered backend: its address and weight.
pub type Found = (SocketAddr, u32);

/// The last good set of each discovered upstream, sorted, with the
/// `discovery.dns` it was found for.
static SETS: LazyLock<Mutex<HashMap<String, Discovered>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The `discovery.dns` of an upstream, and what it last gave.
type Discovered = (String, Vec<Found>);

/// The backends last discovered for `upstream` (none before the first answer).
pub fn current(upstream: &str) -> Vec<Found> {
    SETS.lock()
        .ok()
        .and_then(|sets| sets.get(upstream).map(|(_, found)| found.clone()))
        .unwrap_or_default()
}

fn remember(upstream: &str, dns: &str, found: Vec<Found>) {
    if let Ok(mut sets) = SETS.lock() {
        sets.insert(upstream.to_string(), (dns.to_string(), found));
    }
}

/// Before a topology is compiled from a config (at start and on reload):
/// forgets the sets of upstreams it no longer discovers, and resolves those
/// it discovers anew (a new upstream, a changed `dns`), on a thread of its
/// own (the caller may be on the runtime). A name that does not resolve
/// yet starts with no backend, logged; the service tries it again.
pub fn prepare_sets<'a>(upstreams: impl Iterator<Item = (&'a String, &'a DiscoveryConfig)>) {
    let wanted: Vec<(&String, &DiscoveryConfig)> = upstreams.collect();
    let fresh: Vec<(&String, &DiscoveryConfig)> = match SETS.lock() {
        Ok(mut sets) => {
            sets.retain(|name, _| wanted.iter().any(|(n, _)| *n == name));
            wanted
                .iter()
                .filter(|(name, config)| sets.get(*name).is_none_or(|(dns, _)| *dns != config.dns))
                .copied()
                .collect()
        }
        Err(_) => return,
    };
    if fresh.is_empty() {
        return;
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for (name, config) in fresh {
                match runtime.block_on(resolve(config)) {
                    Ok((found, _)) if !found.is_empty() => remember(name, &config.dns, found),
                    Ok(_) => log::warn!("upstream {name}: {} has no address yet", config.dns),
                    Err(e) => log::warn!("upstream {name}: cannot resolve {}: {e}", config.dns),
                }
            }
        });
    });
}

/// What `discovery.dns` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsTarget {
    /// `name:port`: the A and AAAA records of `name`, each on `port`.
    Address { name: String, port: u16 },
    /// `_service._proto.name`: SRV records.
    Service(String),
}

impl DnsTarget {
    pub fn parse(text: &str) -> Result<DnsTarget, String> {
        let text = text.trim();
        if text.starts_with('_') {
            return Ok(DnsTarget::Service(text.to_string()));
        }
        if text.starts_with('[') || text.matches(':').count() > 1 {
            return Err(format!(
                "`{text}`: discovery resolves a host name; list a fixed IPv6 address under `backends`"
            ));
        }
        let (name, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}`: write name:port, or _service._proto.name for SRV"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{port}` is not a port"))?;
        if name.is_empty() {
            return Err(format!("`{text}` names no host"));
        }
        Ok(DnsTarget::Address {
            name: name.to_string(),
            port,
        })
    }
}

/// A resolver for `config`: its `resolvers`, else the system's.
fn resolver(config: &DiscoveryConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let built = if config.resolvers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("the system's DNS settings: {e}"))?
    } else {
        let servers = config
            .resolvers
            .iter()
            .map(|addr| {
                let connection = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let mut built = built;
    // Answers are wanted as the server has them now: the TTL says when to ask again.
    let options = built.options_mut();
    options.cache_size = 0;
    // A name server that does not answer costs one short wait per round.
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    built
        .build()
        .map_err(|e| format!("cannot make a DNS resolver: {e}"))
}

/// The backends `config` names now, sorted, and how long the answer holds.
pub async fn resolve(config: &DiscoveryConfig) -> Result<(Vec<Found>, Duration), String> {
    let target = DnsTarget::parse(&config.dns)?;
    let resolver = resolver(config)?;
    let mut found = Vec::new();
    let valid_until;
    match &target {
        DnsTarget::Address { name, port } => {
            let answer = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            valid_until = answer.valid_until();
            found.extend(answer.iter().map(|ip| (SocketAddr::new(ip, *port), 1)));
        }
        DnsTarget::Service(name) => {
            let answer = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            valid_until = answer.valid_until();
            let records: Vec<_> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            // RFC 2782: the lowest priority is used while it has targets.
            let best = records.iter().map(|s| s.priority).min();
            let mut unresolved = Vec::new();
            for srv in records.iter().filter(|s| Some(s.priority) == best) {
                let target = srv.target.to_utf8();
                // A target that does not resolve (or `.`: no service there)
                // leaves the others; the answer fails only when all do.
                match resolver.lookup_ip(target.as_str()).await {
                    Ok(ips) => {
                        let weight = u32::from(srv.weight).clamp(1, MAX_SRV_WEIGHT);
                        found.extend(ips.iter().map(|ip| (SocketAddr::new(ip, srv.port), weight)));
                    }
                    Err(e) => unresolved.push(format!("{target}: {e}")),
                }
            }
            if found.is_empty() && !unresolved.is_empty() {
                return Err(format!(
                    "no target of {name} resolves: {}",
                    unresolved.join("; ")
                ));
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    let ttl = valid_until.saturating_duration_since(Instant::now());
    Ok((found, ttl))
}

/// The background service that keeps discovered upstreams current.
pub struct DiscoveryService {
    pub topology: Arc<ArcSwap<Topology>>,
    /// The health checker's plans, which follow the backends.
    pub plans: Arc<watch::Sender<Vec<Arc<CheckPlan>>>>,
}

impl DiscoveryService {
    /// Resolves every discovered upstream of the current topology once,
    /// swaps in the sets that changed; returns when to look again.
    async fn refresh(&self) -> Duration {
        let topology = self.topology.load_full();
        // Looked at again soon even with nothing discovered: a reload may
        // add a discovered upstream.
        let mut next = Duration::from_secs(5);
        let mut resolved = Vec::new();
        for (index, config) in topology.discovered() {
            let Some(discovery) = &config.discovery else {
                continue;
            };
            let upstream = &topology.upstreams[index];
            next = next.min(discovery.interval);
            match resolve(discovery).await {
                Ok((found, ttl)) if !found.is_empty() => {
                    next = next.min(ttl.max(Duration::from_secs(1)));
                    resolved.push((upstream.name.clone(), discovery.dns.clone(), found));
                }
                outcome => {
                    metrics()
                        .discovery_failures
                        .with_label_values(&[upstream.name.as_str()])
                        .inc();
                    let why = match outcome {
                        Err(e) => e,
                        Ok(_) => "no address".to_string(),
                    };
                    log::warn!(
                        "upstream {}: {} gave no backend ({why}); keeping the last {} found",
                        upstream.name,
                        discovery.dns,
                        upstream.backends.len()
                    );
                }
            }
        }
        // Compared with, and swapped into, the topology current under the
        // writers' lock: a reload in between is neither undone nor missed.
        let _writing = crate::topology::WRITES.lock();
        let live = self.topology.load_full();
        let mut changed = Vec::new();
        for (name, dns, found) in resolved {
            // Gone, or discovered by another name since it was resolved.
            let still_discovered = live.discovered().any(|(index, config)| {
                live.upstreams[index].name == name
                    && config.discovery.as_ref().is_some_and(|d| d.dns == dns)
            });
            let Some(upstream) = live.upstreams.iter().find(|u| u.name == name) else {
                continue;
            };
            if !still_discovered {
                continue;
            }
            let mut serving: Vec<Found> = upstream
                .backends
                .iter()
                .map(|b| (b.address, b.weight))
                .collect();
            serving.sort_unstable();
            if found != serving {
                log::info!("upstream {name}: {dns} now has {} backends", found.len());
                remember(&name, &dns, found);
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            let next_topology = Arc::new(live.with_rediscovered(&changed));
            let _ = self.plans.send(next_topology.check_plans.clone());
            self.topology.store(next_topology);
        }
        next
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let wait = self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_services() {
        assert_eq!(
            DnsTarget::parse("app.internal:8080"),
            Ok(DnsTarget::Address {
                name: "app.internal".into(),
                port: 8080
            })
        );
        assert_eq!(
            DnsTarget::parse("_http._tcp.app.internal"),
            Ok(DnsTarget::Service("_http._tcp.app.internal".into()))
        );
        assert!(DnsTarget::parse("app.internal").is_err());
        assert!(DnsTarget::parse("app.internal:0").is_err());
        assert!(DnsTarget::parse("[2001:db8::1]:80").is_err());
        assert!(DnsTarget::parse("2001:db8::1:80").is_err());
    }
}
