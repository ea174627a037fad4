//! `server:`: process settings, listeners, TLS, limits, logging. Read once at
//! start; a reload compares them with the running ones and says what changed.

use super::defaults;
use crate::config::json_schema as js;
use crate::config::types::HeaderName;
use crate::config::units;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads of the proxy; `None` means one per core.
    pub threads: Option<usize>,
    /// The addresses requests are accepted on, plain or TLS.
    pub listeners: Vec<ListenerConfig>,
    /// Prometheus exposition address; `None` turns metrics serving off.
    #[serde(default, deserialize_with = "units::opt_socket_addr")]
    #[schemars(with = "Option<js::ListenAddress>")]
    pub metrics: Option<SocketAddr>,
    /// The admin API and status page; off when `None`. A port alone is on
    /// loopback.
    #[serde(default, deserialize_with = "units::opt_loopback_default_addr")]
    #[schemars(with = "Option<js::AdminAddress>")]
    pub admin: Option<SocketAddr>,
    /// A file holding the bearer token the admin API requires (required when
    /// `admin` is not on loopback).
    pub admin_token_file: Option<PathBuf>,
    /// Where access log lines go: `stdout` (default), `off` or a file path.
    #[serde(default)]
    pub access_log: AccessLogTarget,
    /// `combined` (default, as nginx), `json`, or a format of nginx variables.
    #[serde(default)]
    pub access_log_format: AccessLogFormat,
    /// Peers whose X-Forwarded-For names the client.
    #[serde(default, deserialize_with = "units::ip_nets")]
    #[schemars(with = "js::Networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long requests in flight may finish on shutdown and upgrade.
    #[serde(
        default = "defaults::grace_period",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
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
    #[schemars(with = "js::ByteSize")]
    pub max_request_body: u64,
    /// Read request bodies whole before a backend is chosen (routes may say
    /// otherwise); `false` streams them to the backend as they arrive.
    #[serde(default = "defaults::yes")]
    pub request_buffering: bool,
    /// How much of one buffered body is kept in memory; the rest goes to a
    /// file in `temp_dir`.
    #[serde(
        default = "defaults::request_buffer_memory",
        deserialize_with = "units::byte_size"
    )]
    #[schemars(with = "js::ByteSize")]
    pub request_buffer_memory: u64,
    /// Where buffered bodies beyond `request_buffer_memory` are written;
    /// `$TMPDIR` (else `/tmp`) when not set.
    pub temp_dir: Option<PathBuf>,
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
    /// Automatic certificates (RFC 8555) for the names of TLS listeners' `acme:`.
    pub acme: Option<AcmeConfig>,
    /// What several tollgate instances share.
    pub cluster: Option<ClusterConfig>,
    /// An ID on every request and answer, and in the access log; none when
    /// absent.
    pub request_id: Option<RequestIdConfig>,
    /// W3C trace context on every request, spans to an OpenTelemetry
    /// collector; none when absent (incoming `traceparent` then passes as is).
    pub tracing: Option<TracingConfig>,
}

/// `server.tracing: {otlp, service_name, sample, queue}` (see `observe::tracing`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP address (`http://host:4318`, spans are
    /// posted to its `/v1/traces`, or to the path written); without it trace
    /// context is still continued and passed on, and no span is exported.
    #[serde(default, deserialize_with = "units::opt_http_url")]
    #[schemars(with = "Option<js::HttpUrl>")]
    pub otlp: Option<reqwest::Url>,
    /// `service.name` of tollgate's spans.
    #[serde(default = "defaults::trace_service_name")]
    pub service_name: String,
    /// Share of new traces recorded; a request with a `traceparent` follows
    /// its sampled flag instead.
    #[serde(default = "defaults::trace_sample")]
    pub sample: crate::config::Percent,
    /// Finished spans waiting for the exporter before new ones are dropped.
    #[serde(default = "defaults::trace_queue")]
    pub queue: usize,
}

/// `server.request_id: {header, trust_incoming}` (see `observe::request_id`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// The header the ID travels in, to backends and on answers.
    #[serde(default = "defaults::request_id_header")]
    pub header: HeaderName,
    /// Keep a well-formed ID the client sent instead of replacing it.
    #[serde(default)]
    pub trust_incoming: bool,
}

/// `server.cluster`: the store `scope: cluster` rate limits share.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS, or
    /// `redis+unix:///path`.
    pub redis: String,
    /// The longest a request waits on the store before its limit's
    /// `on_store_error` decides.
    #[serde(
        default = "defaults::cluster_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub timeout: Duration,
    /// PEM roots trusted for a `rediss://` server (instead of the system's).
    pub ca_roots: Option<PathBuf>,
}

/// `server.acme`: the ACME server certificates are obtained from, and where
/// the account and certificates are kept.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The directory URL (`https://...`).
    #[serde(deserialize_with = "units::http_url")]
    #[schemars(with = "js::HttpUrl")]
    pub directory: reqwest::Url,
    /// The account's contact.
    pub email: String,
    /// Account key and certificates; keys are written mode 0600.
    pub storage: PathBuf,
    /// PEM roots trusted for the ACME server itself (instead of the system's).
    pub ca_roots: Option<PathBuf>,
    /// How names are proven: `tls-alpn-01` (default; on the TLS listener) or
    /// `http-01` (on a plain listener).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// The first wait after a failed order; it doubles on each failure, to an hour.
    #[serde(default = "defaults::acme_retry", deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub retry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

/// How escaped slashes in a request path are read (see `filters::request_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeoutsConfig {
    /// Longest wait for the next piece of a request body.
    #[serde(
        default = "defaults::client_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub read_body: Duration,
    /// Longest wait for a client to take the next piece of a response.
    #[serde(
        default = "defaults::client_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
    pub send: Duration,
    /// How long an idle keep-alive connection waits for its next request (on TLS
    /// listeners rounded up to whole seconds).
    #[serde(
        default = "defaults::client_timeout",
        deserialize_with = "units::duration"
    )]
    #[schemars(with = "js::Duration")]
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

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "js::ByteSize")]
    pub min_size: u64,
    /// Content types compressed (before any `;`); defaults to text types.
    #[serde(default = "defaults::compression_types")]
    pub types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `IP:port` to listen on; port 0 lets the kernel pick one.
    #[serde(deserialize_with = "units::socket_addr")]
    #[schemars(with = "js::ListenAddress")]
    pub address: SocketAddr,
    /// Answer every request with a redirect to the same URL on the TLS listener.
    #[serde(default)]
    pub redirect_https: bool,
    /// The status of those redirects: 301, 302, 307 or 308 (default).
    #[serde(
        default = "defaults::redirect_status",
        deserialize_with = "units::status"
    )]
    #[schemars(with = "js::StatusCode")]
    pub redirect_status: http::StatusCode,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsConfig>,
    /// Never valid here: client certificates are asked for in the TLS
    /// handshake, under `tls:`. Read only to say so at its line.
    pub client_certificates: Option<ClientCertificatesConfig>,
    /// A plain listener that also serves cleartext HTTP/2 with prior
    /// knowledge (gRPC), beside HTTP/1.1, on the same port.
    #[serde(default)]
    pub h2c: bool,
    /// Whether every connection begins with a PROXY protocol header naming
    /// the client, and of which version.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The peers that may connect (and so send a header); any peer when
    /// `None`. Others are closed.
    #[serde(default, deserialize_with = "units::opt_ip_nets")]
    #[schemars(with = "Option<js::Networks>")]
    pub proxy_protocol_from: Option<Vec<ipnet::IpNet>>,
    /// HTTP/3: QUIC on UDP at the same address, with the listener's
    /// certificates; `None` when off.
    #[serde(default, deserialize_with = "super::http3::http3")]
    #[schemars(with = "Option<js::OnOrMap<super::Http3Config>>")]
    pub http3: Option<super::Http3Config>,
}

/// A listener's `proxy_protocol`: which PROXY protocol headers its
/// connections must begin with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// No header: the peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header (what an AWS NLB sends).
    V2,
    /// Either.
    Any,
}

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificates chosen by SNI against each one's names; the first is the
    /// default for clients that send no (or an unknown) name.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Names whose certificates tollgate obtains and renews (`server.acme`).
    #[serde(default)]
    pub acme: Vec<String>,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    #[serde(default)]
    pub http2: bool,
    /// Strict-Transport-Security on every answer of this listener.
    pub hsts: Option<HstsConfig>,
    /// Ask clients for certificates (mTLS), verified against a CA of its own.
    pub client_certificates: Option<ClientCertificatesConfig>,
}

/// `tls.client_certificates: {ca, required}`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificatesConfig {
    /// PEM certificates of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// Fail the handshake of a client without a valid certificate (default);
    /// `false` lets a client that sends none through, unauthenticated.
    #[serde(default = "defaults::yes")]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers keep to HTTPS for the host (`max-age`).
    #[serde(deserialize_with = "units::duration")]
    #[schemars(with = "js::Duration")]
    pub max_age: Duration,
    /// Add `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Add `preload`.
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
