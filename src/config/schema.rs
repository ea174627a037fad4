//! The YAML schema of the topology file (see shared/design/topology.md).
//!
//! Every struct denies unknown keys; values with units are parsed here, once.

use super::units;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Authentication policies by name; a route names one with `auth:`.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthPolicyConfig>,
    /// Rate limits by name; a route names one with `rate_limit:`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads of the proxy; `None` means one per core.
    pub threads: Option<usize>,
    pub listeners: Vec<ListenerConfig>,
    /// Prometheus exposition address; `None` turns metrics serving off.
    #[serde(default, deserialize_with = "units::opt_socket_addr")]
    pub metrics: Option<SocketAddr>,
    #[serde(default)]
    pub access_log: AccessLogTarget,
    #[serde(default)]
    pub access_log_format: AccessLogFormat,
    /// Peers whose X-Forwarded-For names the client.
    #[serde(default, deserialize_with = "units::ip_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    #[serde(default = "defaults::grace_period", with = "duration_serde")]
    pub grace_period: Duration,
    /// Where the process id is written; when not set, a path of this topology
    /// file's own, filled in at load (see `pid_file`).
    #[serde(default)]
    pub pid_file: PathBuf,
    /// The socket listening sockets are handed over on during an upgrade; a
    /// default of the file's own when not set, as `pid_file`.
    #[serde(default)]
    pub upgrade_sock: PathBuf,
    /// Larger request bodies are refused with 413.
    #[serde(
        default = "defaults::max_request_body",
        deserialize_with = "units::byte_size"
    )]
    pub max_request_body: u64,
    /// How long tollgate waits on slow or idle clients.
    #[serde(default)]
    pub client_timeouts: ClientTimeoutsConfig,
    /// Compression of responses; off when absent.
    pub compression: Option<CompressionConfig>,
    /// What `%2F`, `%5C` and `\` in request paths do, unless a route says otherwise.
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// What request headers whose names contain `_` do.
    #[serde(default)]
    pub underscores_in_headers: UnderscoreHeaders,
}

/// How escaped slashes in a request path are read (see `filters::request_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400 Bad Request.
    #[default]
    Reject,
    /// As `/`: the path is matched and forwarded decoded.
    Decode,
    /// As written: matched and forwarded with the escapes (unsafe with auth on
    /// backends that decode them; refused still when that would change the route).
    Keep,
}

/// What happens to request headers whose names contain `_`, which some backends
/// read as `-` (`X_Auth_Role` for `X-Auth-Role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before routing (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// Passed on.
    Keep,
    /// 400 Bad Request.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeoutsConfig {
    /// Longest wait for the next piece of a request body.
    #[serde(default = "defaults::client_timeout", with = "duration_serde")]
    pub read_body: Duration,
    /// Longest wait for a client to take the next piece of a response.
    #[serde(default = "defaults::client_timeout", with = "duration_serde")]
    pub send: Duration,
    /// How long an idle keep-alive connection waits for its next request (on TLS
    /// listeners rounded up to whole seconds).
    #[serde(default = "defaults::client_timeout", with = "duration_serde")]
    pub keepalive: Duration,
}

impl Default for ClientTimeoutsConfig {
    fn default() -> Self {
        ClientTimeoutsConfig {
            read_body: defaults::client_timeout(),
            send: defaults::client_timeout(),
            keepalive: defaults::client_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// gzip/brotli/zstd level (1 to 9).
    #[serde(default = "defaults::compression_level")]
    pub level: u32,
    /// Smaller responses are sent as they are.
    #[serde(
        default = "defaults::compression_min_size",
        deserialize_with = "units::byte_size"
    )]
    pub min_size: u64,
    /// Content types compressed (before any `;`); defaults to text types.
    #[serde(default = "defaults::compression_types")]
    pub types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(deserialize_with = "units::socket_addr")]
    pub address: SocketAddr,
    /// Answer every request with a redirect to the same URL on the TLS listener.
    #[serde(default)]
    pub redirect_https: bool,
    /// The status of those redirects: 301, 302, 307 or 308 (default).
    #[serde(default = "defaults::redirect_status")]
    pub redirect_status: u16,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificates chosen by SNI against each one's names; the first is the
    /// default for clients that send no (or an unknown) name.
    pub certificates: Vec<CertificateConfig>,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    #[serde(default)]
    pub http2: bool,
    /// Strict-Transport-Security on every answer of this listener.
    pub hsts: Option<HstsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    #[serde(with = "duration_serde")]
    pub max_age: Duration,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

/// Where access log lines go: `stdout`, `off`, or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    #[default]
    Stdout,
    Off,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLogTarget {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        Ok(match text.as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                return Err(serde::de::Error::custom(
                    "access_log is empty: expected `stdout`, `off` or a file path",
                ))
            }
            path => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

/// How access log lines read: `json`, `combined` (nginx's), or a format of
/// nginx variables (`'$remote_addr "$request" $status $http_x_forwarded_for'`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    Json,
    #[default]
    Combined,
    Custom(Box<crate::access_log::template::Template>),
}

impl<'de> Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        match text.as_str() {
            "json" => Ok(AccessLogFormat::Json),
            "combined" => Ok(AccessLogFormat::Combined),
            format if format.contains('$') => crate::access_log::template::Template::parse(format)
                .map(|t| AccessLogFormat::Custom(Box::new(t)))
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "unknown access log format `{other}`: expected json, combined, or a format with $variables"
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    pub backends: Vec<BackendConfig>,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub passive: PassiveConfig,
    /// How many other backends are tried when connecting fails.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// HTTPS to the backends (and their health checks); plain HTTP when absent.
    pub tls: Option<UpstreamTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent by SNI and checked against the backends' certificates.
    pub sni: Option<String>,
    /// Check the certificate against the system's CAs and `sni` (default true).
    #[serde(default = "defaults::verify")]
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    IpHash,
    LeastConnections,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `IP:port` or `name:port`, as written (see `resolve`).
    pub address: String,
    /// What `address` resolved to when the file was loaded.
    #[serde(skip)]
    pub resolved: Vec<SocketAddr>,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub http: Option<HttpProbeConfig>,
    pub tcp: Option<TcpProbeConfig>,
    #[serde(default = "defaults::check_interval", with = "duration_serde")]
    pub interval: Duration,
    #[serde(default = "defaults::check_timeout", with = "duration_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeConfig {
    #[serde(default = "defaults::probe_path")]
    pub path: String,
    /// Host header of the probe; the backend address when absent.
    pub host: Option<String>,
    /// Accepted statuses; any 2xx when absent.
    pub expect_status: Option<Vec<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbeConfig {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Failures within `fail_timeout` that take a backend out; 0 turns passive checks off.
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    #[serde(default = "defaults::fail_timeout", with = "duration_serde")]
    pub fail_timeout: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            max_fails: defaults::max_fails(),
            fail_timeout: defaults::fail_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "defaults::connect_timeout", with = "duration_serde")]
    pub connect: Duration,
    #[serde(default = "defaults::read_timeout", with = "duration_serde")]
    pub read: Duration,
    #[serde(default = "defaults::write_timeout", with = "duration_serde")]
    pub write: Duration,
    /// How long an idle upstream keep-alive connection is kept for reuse.
    #[serde(default = "defaults::idle_timeout", with = "duration_serde")]
    pub idle: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: defaults::connect_timeout(),
            read: defaults::read_timeout(),
            write: defaults::write_timeout(),
            idle: defaults::idle_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label of the route in metrics and logs; `index:path` when absent.
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    pub upstream: Option<String>,
    pub respond: Option<RespondConfig>,
    pub redirect: Option<RedirectConfig>,
    /// Serve files from a directory.
    #[serde(rename = "static")]
    pub static_files: Option<StaticConfig>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Only clients in these networks may use the route (403 otherwise).
    #[serde(default, deserialize_with = "units::ip_nets")]
    pub allow: Vec<ipnet::IpNet>,
    /// Clients in these networks get 403 (checked before `allow`).
    #[serde(default, deserialize_with = "units::ip_nets")]
    pub deny: Vec<ipnet::IpNet>,
    /// Name of the policy under `auth:` that guards this route; public when absent.
    pub auth: Option<String>,
    /// Name of the limit under `rate_limits:` applied to this route.
    pub rate_limit: Option<String>,
    /// `server.encoded_slashes` for this route's paths.
    pub encoded_slashes: Option<EncodedSlashes>,
}

/// One authentication policy: exactly one of `forward`, `jwt`, `api_keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicyConfig {
    pub forward: Option<ForwardAuthConfig>,
    pub jwt: Option<JwtConfig>,
    pub api_keys: Option<ApiKeysConfig>,
}

/// Ask an auth service about each request, like nginx `auth_request`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// `http://host:port/path` of the auth service.
    pub url: String,
    #[serde(default = "defaults::auth_timeout", with = "duration_serde")]
    pub timeout: Duration,
    /// The bearer token of the client's Authorization goes in this query
    /// parameter of `url` instead of an Authorization header.
    pub token_query: Option<String>,
    /// Client request headers passed on to the auth service (Authorization is,
    /// unless `token_query` is set).
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// Headers copied from the auth service's 2xx answer into the upstream request.
    #[serde(default)]
    pub copy_headers: Vec<String>,
    /// Headers of the upstream request taken from the JSON body of a 2xx answer:
    /// header -> claim (`user.name` reaches into objects).
    #[serde(default, deserialize_with = "units::ordered_map")]
    pub identity_from_json: Vec<(String, String)>,
    /// Statuses of the auth service that mean 401 to the client.
    #[serde(default = "defaults::unauthorized_statuses")]
    pub unauthorized_statuses: Vec<u16>,
    /// Statuses of the auth service that mean 403 to the client.
    #[serde(default = "defaults::forbidden_statuses")]
    pub forbidden_statuses: Vec<u16>,
    /// How the policy's 401/403/503 answers read.
    #[serde(default)]
    pub error_body: ErrorBody,
    /// How long a positive answer is reused for the same credentials; no
    /// caching when absent.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub cache: Option<Duration>,
    /// Most answers kept in the cache.
    #[serde(default = "defaults::auth_cache_entries")]
    pub cache_entries: usize,
}

/// The body of an auth policy's rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBody {
    /// Plain text (a forward policy passes on the auth service's own body).
    #[default]
    Text,
    /// `{"message": "Unauthorized"}` (`Forbidden`, `Service Unavailable`).
    Json,
}

/// Check JSON Web Tokens from `Authorization: Bearer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `alg` values: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384.
    pub algorithms: Vec<String>,
    /// Public keys (RS*, PS*, ES*) as a JWK Set.
    pub jwks_file: Option<PathBuf>,
    /// Environment variable holding the HMAC secret (HS*).
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (HS*); surrounding white space is ignored.
    pub secret_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Claims copied into upstream request headers: `{sub: X-User}`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::jwt_leeway", with = "duration_serde")]
    pub leeway: Duration,
    /// Refuse tokens without an `exp` claim (default): they would never expire.
    #[serde(default = "defaults::yes")]
    pub require_exp: bool,
    #[serde(default)]
    pub error_body: ErrorBody,
}

/// Accept requests that carry one of a list of keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Header carrying the key; `Authorization: Bearer <key>` is accepted too.
    #[serde(default = "defaults::api_key_header")]
    pub header: String,
    /// One key per line; `#` starts a comment; `name: key` names a key (the
    /// name becomes the request's `auth_subject`).
    pub keys_file: PathBuf,
    #[serde(default)]
    pub error_body: ErrorBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `client_ip`, `header:NAME`, `auth_subject` or `global`.
    pub key: String,
    #[serde(deserialize_with = "units::rate")]
    pub rate: units::Rate,
    /// Requests allowed at once above the steady rate, as nginx `burst=`: the
    /// bucket holds `burst + 1`.
    pub burst: u32,
    /// The status of a refused request: 429 (default) or 503 (nginx's default).
    #[serde(default = "defaults::rate_limited_status")]
    pub status: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Files served from a directory, as nginx `root`.
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The `Location`: an absolute URL or a path.
    pub to: String,
    /// 301, 302, 303, 307 or 308 (default).
    #[serde(default = "defaults::redirect_status")]
    pub status: u16,
}

/// serde `with` module for [`Duration`] fields written as `5s`.
mod duration_serde {
    pub use super::units::duration as deserialize;
}

/// Defaults, chosen to be safe in production (every timeout set).
pub mod defaults {
    use std::time::Duration;

    pub fn grace_period() -> Duration {
        Duration::from_secs(10)
    }
    pub fn retries() -> u32 {
        1
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn check_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn check_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn probe_path() -> String {
        "/".to_string()
    }
    pub fn max_fails() -> u32 {
        1
    }
    pub fn fail_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn read_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn write_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn auth_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn auth_cache_entries() -> usize {
        10_000
    }
    pub fn jwt_leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn verify() -> bool {
        true
    }
    pub fn yes() -> bool {
        true
    }
    pub fn rate_limited_status() -> u16 {
        429
    }
    pub fn unauthorized_statuses() -> Vec<u16> {
        vec![401]
    }
    pub fn forbidden_statuses() -> Vec<u16> {
        vec![403]
    }
    pub fn max_request_body() -> u64 {
        10 << 20
    }
    pub fn client_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn compression_level() -> u32 {
        6
    }
    pub fn compression_min_size() -> u64 {
        1024
    }
    pub fn compression_types() -> Vec<String> {
        [
            "text/html",
            "text/css",
            "text/plain",
            "text/xml",
            "text/javascript",
            "text/csv",
            "text/markdown",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/wasm",
            "image/svg+xml",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect()
    }
    pub fn index_file() -> String {
        "index.html".to_string()
    }
    pub fn redirect_status() -> u16 {
        308
    }
    pub fn api_key_header() -> String {
        "X-API-Key".to_string()
    }
}

/// Which hosts a route answers, normalized to lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// No `host` in the match: every host.
    Any,
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, kept as its suffix `.example.com`.
    Wildcard(String),
}

/// Which paths a route answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl MatchConfig {
    /// The host pattern, or why the `host` value is not one.
    pub fn host_pattern(&self) -> Result<HostPattern, String> {
        let Some(host) = self.host.as_deref() else {
            return Ok(HostPattern::Any);
        };
        let host = host.trim().to_ascii_lowercase();
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid_name {
            return Err(format!(
                "invalid host `{host}`: expected a name such as `api.example.com` or `*.example.com` (no port, `*` only as the first label)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// The path pattern (`path_prefix: /` when neither is given), or why it is invalid.
    pub fn path_pattern(&self) -> Result<PathPattern, String> {
        let pattern = match (&self.path, &self.path_prefix) {
            (Some(_), Some(_)) => {
                return Err("a match has either `path` or `path_prefix`, not both".to_string())
            }
            (Some(p), None) => PathPattern::Exact(p.clone()),
            (None, Some(p)) => PathPattern::Prefix(p.clone()),
            (None, None) => PathPattern::Prefix("/".to_string()),
        };
        let text = match &pattern {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p,
        };
        crate::filters::request_path::check_pattern(text)
            .map_err(|why| format!("invalid path `{text}`: {why}"))?;
        Ok(pattern)
    }
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (after `trusted_proxies`).
    ClientIp,
    /// The value of a request header; requests without it share one bucket.
    Header(http::HeaderName),
    /// The identity the route's auth policy found.
    AuthSubject,
    /// One bucket for all requests.
    Global,
}

impl RateKey {
    pub fn parse(text: &str) -> Result<RateKey, String> {
        match text {
            "client_ip" => Ok(RateKey::ClientIp),
            "auth_subject" => Ok(RateKey::AuthSubject),
            "global" => Ok(RateKey::Global),
            _ => match text.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(RateKey::Header)
                    .map_err(|_| format!("invalid header name `{name}` in rate limit key")),
                None => Err(format!(
                    "invalid rate limit key `{text}`: expected client_ip, header:NAME, auth_subject or global"
                )),
            },
        }
    }
}

/// The two kinds of JWT algorithm, which take different keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtFamily {
    /// HS*: a shared secret.
    Hmac,
    /// RS*, PS*, ES*: public keys from a JWK Set.
    PublicKey,
}

impl JwtFamily {
    /// The family of a supported algorithm name; `None` for others (including `none`).
    pub fn of(algorithm: &str) -> Option<JwtFamily> {
        match algorithm {
            "HS256" | "HS384" | "HS512" => Some(JwtFamily::Hmac),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" => {
                Some(JwtFamily::PublicKey)
            }
            _ => None,
        }
    }
}
