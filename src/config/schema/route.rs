//! `routes:` and `rate_limits:`: what a request matches and what answers it.

use super::defaults;
use super::EncodedSlashes;
use crate::config::json_schema as js;
use crate::config::types::{HeaderName, HostPattern, PathPattern, RateKey, RoutePath};
use crate::config::units;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label of the route in metrics and logs; `index:path` when absent.
    pub name: Option<String>,
    /// Which requests the route answers: `host`, `path` or `path_prefix`.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// Name of the upstream under `upstreams:` that requests go to.
    pub upstream: Option<String>,
    /// Instead of `upstream`: the request goes to one of these arms, by
    /// header or by weight.
    pub split: Option<Vec<SplitArmConfig>>,
    /// An answer tollgate gives itself: status, body, headers.
    pub respond: Option<RespondConfig>,
    /// A redirect tollgate answers with.
    pub redirect: Option<RedirectConfig>,
    /// Serve files from a directory.
    #[serde(rename = "static")]
    pub static_files: Option<StaticConfig>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Only clients in these networks may use the route (403 otherwise).
    #[serde(default, deserialize_with = "units::ip_nets")]
    #[schemars(with = "js::Networks")]
    pub allow: Vec<ipnet::IpNet>,
    /// Clients in these networks get 403 (checked before `allow`).
    #[serde(default, deserialize_with = "units::ip_nets")]
    #[schemars(with = "js::Networks")]
    pub deny: Vec<ipnet::IpNet>,
    /// Name of the policy under `auth:` that guards this route; public when absent.
    pub auth: Option<String>,
    /// Name of the limit under `rate_limits:` applied to this route.
    pub rate_limit: Option<String>,
    /// `server.encoded_slashes` for this route's paths.
    pub encoded_slashes: Option<EncodedSlashes>,
    /// `server.request_buffering` for this route.
    pub request_buffering: Option<bool>,
    /// Name of the cache under `caches:` that stores this route's answers.
    pub cache: Option<String>,
    /// Headers set on and removed from the request the backend gets.
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Headers set on and removed from every answer of the route.
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
    /// Cross-origin requests from browsers: preflights answered here, the
    /// `Access-Control-*` headers of every answer (see `filters::cors`).
    pub cors: Option<super::CorsConfig>,
    /// Copies of a share of the route's requests, sent to another upstream
    /// in the background (see `mirror`).
    pub mirror: Option<super::MirrorConfig>,
    /// Files that replace the body of tollgate's own answers of these statuses.
    #[serde(default, deserialize_with = "units::status_paths")]
    #[schemars(with = "js::StatusPaths")]
    pub error_pages: Vec<(http::StatusCode, PathBuf)>,
}

impl RouteConfig {
    /// Whether the route sends requests on: it has an `upstream` or a `split`.
    pub(crate) fn proxies(&self) -> bool {
        self.upstream.is_some() || self.split.is_some()
    }
}

/// One arm of a `split`: `{upstream: NAME, weight: N, when_header: {Name: value}}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitArmConfig {
    /// Name of the upstream under `upstreams:` this arm sends to.
    pub upstream: String,
    /// The arm's share of the requests no `when_header` claims; 0 gives it
    /// only the requests its `when_header` claims.
    pub weight: u32,
    /// Requests carrying every one of these headers with exactly that value
    /// go to this arm (the first such arm in order), whatever the weights.
    #[serde(default, deserialize_with = "units::header_values")]
    #[schemars(with = "js::HeaderValues")]
    pub when_header: Vec<(HeaderName, http::HeaderValue)>,
}

/// `{set: {Name: value}, remove: [Name]}`: removals apply first.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Headers set (replacing any of the same name): `{Name: value}`.
    #[serde(default, deserialize_with = "units::header_values")]
    #[schemars(with = "js::HeaderValues")]
    pub set: Vec<(HeaderName, http::HeaderValue)>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `client_ip`, `header:NAME`, `auth_subject` or `global`.
    pub key: RateKey,
    /// The steady rate allowed: `N/s` or `N/m`.
    #[serde(deserialize_with = "units::rate")]
    #[schemars(with = "js::Rate")]
    pub rate: units::Rate,
    /// Requests allowed at once above the steady rate, as nginx `burst=`: the
    /// bucket holds `burst + 1`.
    pub burst: u32,
    /// The status of a refused request: 429 (default) or 503 (nginx's default).
    #[serde(
        default = "defaults::rate_limited_status",
        deserialize_with = "units::status"
    )]
    #[schemars(with = "js::StatusCode")]
    pub status: http::StatusCode,
    /// `local` (this instance's buckets) or `cluster` (shared through
    /// `server.cluster.redis`).
    #[serde(default)]
    pub scope: LimitScope,
    /// What a `cluster` limit does when the store does not answer in time.
    #[serde(default)]
    pub on_store_error: StoreErrorAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Local,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorAction {
    /// This instance's own bucket decides.
    #[default]
    Local,
    /// The request passes.
    Allow,
    /// The request is refused as over the limit.
    Deny,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The Host it matches: `api.example.com`, or `*.example.com` for any
    /// subdomain; every host when absent.
    #[serde(default)]
    pub host: HostPattern,
    /// The path it matches exactly.
    pub path: Option<RoutePath>,
    /// The path prefix it matches (`/product` also matches `/products`).
    pub path_prefix: Option<RoutePath>,
}

impl MatchConfig {
    /// The path pattern: `path` (exact), else `path_prefix`, else the prefix `/`.
    /// (A match with both is refused at load.)
    pub(crate) fn path_pattern(&self) -> PathPattern {
        match (&self.path, &self.path_prefix) {
            (Some(p), _) => PathPattern::Exact(p.as_str().to_string()),
            (None, Some(p)) => PathPattern::Prefix(p.as_str().to_string()),
            (None, None) => PathPattern::Prefix("/".to_string()),
        }
    }

    /// The match as the admin API shows it: `host api.example.com,
    /// path_prefix /api/`.
    pub fn describe(&self) -> String {
        let host = match &self.host {
            crate::config::HostPattern::Any => String::new(),
            crate::config::HostPattern::Exact(name) => format!("host {name}, "),
            crate::config::HostPattern::Wildcard(suffix) => format!("host *{suffix}, "),
        };
        let path = match (&self.path, &self.path_prefix) {
            (Some(p), _) => format!("path {}", p.as_str()),
            (None, Some(p)) => format!("path_prefix {}", p.as_str()),
            (None, None) => "path_prefix /".to_string(),
        };
        host + &path
    }

    /// The path as written (`/` when there is none), for labels.
    pub(crate) fn path_text(&self) -> &str {
        self.path
            .as_ref()
            .or(self.path_prefix.as_ref())
            .map_or("/", RoutePath::as_str)
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// The status of the answer.
    #[serde(deserialize_with = "units::status")]
    #[schemars(with = "js::StatusCode")]
    pub status: http::StatusCode,
    /// The body of the answer (empty by default).
    #[serde(default)]
    pub body: String,
    /// Headers of the answer: `{Name: value}`.
    #[serde(default, deserialize_with = "units::header_values")]
    #[schemars(with = "js::HeaderValues")]
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
}

/// Files served from a directory, as nginx `root`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The request path is appended to it: `/poster/a.jpg` -> `ROOT/poster/a.jpg`.
    pub root: PathBuf,
    /// File served for a path ending in `/`.
    #[serde(default = "defaults::index_file")]
    pub index: String,
    /// A file under `root` sent with status 404 for missing files.
    pub not_found_page: Option<String>,
}

/// A redirect answered by tollgate.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The `Location`: an absolute URL or a path.
    #[serde(deserialize_with = "units::header_value")]
    #[schemars(with = "js::HeaderValue")]
    pub to: http::HeaderValue,
    /// 301, 302, 303, 307 or 308 (default).
    #[serde(
        default = "defaults::redirect_status",
        deserialize_with = "units::status"
    )]
    #[schemars(with = "js::StatusCode")]
    pub status: http::StatusCode,
}
