//! The YAML schema of the topology file (the keys are listed in the README).
//!
//! Every struct denies unknown keys; values with units or a syntax of their own
//! are parsed here, once, into their types (see `units` and `types`).

mod auth;
mod cache;
mod cors;
pub mod defaults;
mod http3;
mod mirror;
mod route;
mod server;
mod upstream;

pub use auth::*;
pub use cache::*;
pub use cors::*;
pub use http3::*;
pub use mirror::*;
pub use route::*;
pub use server::*;
pub use upstream::*;

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process settings: listeners, TLS, logging, limits, metrics, admin; read at start.
    pub server: ServerConfig,
    /// Groups of backends by name; a route sends requests to one with `upstream:`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// What answers a request: the most specific match wins, not the first.
    pub routes: Vec<RouteConfig>,
    /// Authentication policies by name; a route names one with `auth:`.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthPolicyConfig>,
    /// Rate limits by name; a route names one with `rate_limit:`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Shared HTTP caches by name; a route names one with `cache:`.
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
}
