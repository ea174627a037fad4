//! `upstreams:`: backends, how they are balanced, checked and connected to.

use super::defaults;
use crate::config::json_schema as js;
use crate::config::units;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// How a backend is chosen: `round_robin` (default), `ip_hash`, `hash`,
    /// `least_connections` or `least_time`; weights count in all of them.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What `algorithm: hash` hashes; only with that algorithm.
    pub hash_key: Option<crate::config::HashKey>,
    /// The backends, when not discovered.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Instead of `backends`: the set follows a DNS name.
    pub discovery: Option<DiscoveryConfig>,
    /// Active checks of each backend; none when absent.
    pub health_check: Option<HealthCheckConfig>,
    /// Failures seen on real traffic that take a backend out for a while.
    #[serde(default)]
    pub passive: PassiveConfig,
    /// How many other backends are tried when connecting fails.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Timeouts of connections to the backends.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// HTTPS to the backends (and their health checks); plain HTTP when absent.
    pub tls: Option<UpstreamTlsConfig>,
    /// The HTTP version spoken to the backends: HTTP/1.1 (default), HTTP/2
    /// over TLS, or cleartext HTTP/2 with prior knowledge.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// A new or recovered backend's share of traffic ramps up over this.
    #[serde(default, deserialize_with = "units::opt_duration")]
    #[schemars(with = "Option<js::Duration>")]
    pub slow_start: Option<Duration>,
    /// Backends answering 5xx (or failing) in a row are ejected for a while.
    pub outlier: Option<OutlierConfig>,
    /// Retries limited to a share of recent requests.
    pub retry_budget: Option<RetryBudgetConfig>,
}

impl UpstreamConfig {
    /// What the upstream hashes onto its consistent ring: the client address
    /// under `ip_hash`, `hash_key` under `hash`; `None` for the algorithms
    /// that do not hash.
    pub fn ring_key(&self) -> Option<&crate::config::HashKey> {
        match self.algorithm {
            Algorithm::IpHash => Some(&crate::config::HashKey::ClientIp),
            Algorithm::Hash => self.hash_key.as_ref(),
            _ => None,
        }
    }
}

/// `outlier: {consecutive_5xx: 5, ejection: 30s, max_ejected: 50%}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers (or connect failures and timeouts) in a row that eject a backend.
    #[serde(default = "defaults::consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// How long the first ejection lasts; a repeat lasts twice as long as the last.
    #[serde(default = "defaults::ejection", deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub ejection: Duration,
    /// The most of the upstream's backends ejected at once.
    #[serde(default = "defaults::max_ejected")]
    pub max_ejected: crate::config::Percent,
}

/// `retry_budget: {ratio: 20%, min_per_second: 10}`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a share of the requests of the last 10 seconds.
    #[serde(default = "defaults::retry_ratio")]
    pub ratio: crate::config::Percent,
    /// Retries allowed per second whatever the traffic.
    #[serde(default = "defaults::retry_min_per_second")]
    pub min_per_second: u32,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent by SNI and checked against the backends' certificates.
    pub sni: Option<String>,
    /// Check the certificate against the system's CAs (or `ca`) and `sni`
    /// (default true).
    #[serde(default = "defaults::verify")]
    pub verify: bool,
    /// PEM certificates of the CAs trusted for the backends instead of the
    /// system's (an internal PKI).
    pub ca: Option<std::path::PathBuf>,
    /// The certificates of `ca`, read when the file was loaded.
    #[serde(skip)]
    pub ca_roots: Option<std::sync::Arc<pingora::protocols::tls::CaType>>,
}

/// `protocol: h1 | h2 | h2c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, over TLS when the upstream has `tls`.
    #[default]
    H1,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls`.
    H2,
    /// Cleartext HTTP/2 with prior knowledge; not with `tls`.
    H2c,
}

impl UpstreamProtocol {
    /// Whether the backends are spoken to in HTTP/2.
    pub fn is_http2(self) -> bool {
        self != UpstreamProtocol::H1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    /// `hash` with `hash_key: client_ip`.
    IpHash,
    /// A consistent ring over `hash_key`.
    Hash,
    LeastConnections,
    /// Power of two choices scored by peak-EWMA latency times requests in flight.
    LeastTime,
}

impl Algorithm {
    /// The algorithm as it is written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::IpHash => "ip_hash",
            Algorithm::Hash => "hash",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::LeastTime => "least_time",
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `IP:port` or `name:port`, as written (see `resolve`).
    #[schemars(with = "js::HostPort")]
    pub address: String,
    /// What `address` resolved to when the file was loaded.
    #[serde(skip)]
    pub resolved: Vec<SocketAddr>,
    /// The backend's share of requests, 1 to 1000 (default 1).
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Probe with an HTTP request; healthy on an expected status.
    pub http: Option<HttpProbeConfig>,
    /// Probe by opening a TCP connection; healthy when it opens.
    pub tcp: Option<TcpProbeConfig>,
    /// The standard gRPC health service (`grpc.health.v1.Health/Check`).
    pub grpc: Option<GrpcProbeConfig>,
    /// How often each backend is probed.
    #[serde(
        default = "defaults::check_interval",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub interval: Duration,
    /// How long one probe may take before it counts as a failure.
    #[serde(
        default = "defaults::check_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a backend back.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend out.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeConfig {
    /// The path (and query) the probe asks for (default `/`).
    #[serde(
        default = "defaults::probe_path",
        deserialize_with = "units::request_target"
    )]
    #[schemars(with = "js::RequestTarget")]
    pub path: http::uri::PathAndQuery,
    /// Host header of the probe; the backend address when absent.
    #[serde(default, deserialize_with = "units::opt_header_value")]
    #[schemars(with = "Option<js::HeaderValue>")]
    pub host: Option<http::HeaderValue>,
    /// Accepted statuses; any 2xx when absent.
    pub expect_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbeConfig {}

/// `grpc: {service: ""}`: healthy when the backend's health service says
/// `SERVING` for `service` (`""`: the server as a whole).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcProbeConfig {
    /// The service asked about; `""` (default) is the server as a whole.
    #[serde(default)]
    pub service: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Failures within `fail_timeout` that take a backend out; 0 turns passive checks off.
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    /// A backend is out for this long after `max_fails` failures within it.
    #[serde(
        default = "defaults::fail_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
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

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// The longest a connection to a backend may take to open.
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub connect: Duration,
    /// The longest wait for the next piece of a backend's answer.
    #[serde(
        default = "defaults::read_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub read: Duration,
    /// The longest wait for a backend to take the next piece of a request.
    #[serde(
        default = "defaults::write_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub write: Duration,
    /// How long an idle upstream keep-alive connection is kept for reuse.
    #[serde(
        default = "defaults::idle_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
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

/// `discovery`: the backends are the addresses a DNS name has now.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `name:port` (A and AAAA records, every address on that port) or
    /// `_service._proto.name` (SRV records: their targets, ports and weights).
    pub dns: String,
    /// How often the name is resolved again (sooner when its records' TTL is
    /// shorter).
    #[serde(
        default = "defaults::discovery_interval",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub interval: std::time::Duration,
    /// Name servers to ask (port 53 when none is written); the system's when empty.
    #[serde(default, deserialize_with = "units::socket_addrs_default_port_53")]
    #[schemars(with = "js::Resolvers")]
    pub resolvers: Vec<SocketAddr>,
}
