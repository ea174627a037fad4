//! The JSON Schema of every value the topology file writes in a syntax of its
//! own: durations, sizes, rates, addresses, networks, statuses, header names
//! and values, keys, origins.
//!
//! Fields parsed by a `units::*` adapter name one of the marker types below in
//! `#[schemars(with = "...")]`; the types of `config::types` and the access log
//! settings get their schema here, beside the markers. Each schema accepts
//! what the parser accepts as it is usually written (the parsers also trim
//! white space, which the patterns do not allow), so an editor flags a value
//! before `tollgate -t` does.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// `250ms`, `5s`, `2m`, `1h`, `365d`: `units::parse_duration`.
pub(crate) const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h|d)$";
/// `512B`, `64KiB`, `10MiB`, `1GiB`, `2KB`: `units::parse_byte_size`.
pub(crate) const SIZE_PATTERN: &str = "^[0-9]+(B|KiB|MiB|GiB|KB|MB|GB)$";
/// An RFC 9110 token: what a header name (and a method) is made of.
const TOKEN_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// A token without `*`, which CORS lists refuse.
const TOKEN_NO_STAR_PATTERN: &str = "^[!#$%&'+.^_`|~0-9A-Za-z-]+$";
/// An IP and a port: `10.0.1.10:8080`, `[::1]:8080`.
const LISTEN_PATTERN: &str =
    r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+(%[0-9A-Za-z]+)?\]):[0-9]{1,5}$";
/// An IP or a network in CIDR notation.
const NETWORK_PATTERN: &str = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$";
/// Visible ASCII, space and tab: what `http::HeaderValue::from_str` takes.
const HEADER_VALUE_PATTERN: &str = "^[\\t -~]+$";

/// Implements `JsonSchema` for `$ty`, always inlined, with the schema `$schema`.
macro_rules! inline_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// A duration with a unit (`units::duration`).
pub struct Duration;
inline_schema!(Duration, "Duration", {
    "type": "string",
    "pattern": DURATION_PATTERN,
    "examples": ["250ms", "5s", "2m", "1h"]
});

/// A size with a unit (`units::byte_size`).
pub struct ByteSize;
inline_schema!(ByteSize, "ByteSize", {
    "type": "string",
    "pattern": SIZE_PATTERN,
    "examples": ["512KiB", "10MiB", "1GiB"]
});

/// Requests per second or per minute (`units::rate`).
pub struct Rate;
inline_schema!(Rate, "Rate", {
    "type": "string",
    "pattern": "^[0-9]+/(s|m)$",
    "examples": ["10/s", "600/m"]
});

/// An address to listen on, an IP and a port (`units::socket_addr`).
pub struct ListenAddress;
inline_schema!(ListenAddress, "ListenAddress", {
    "type": "string",
    "pattern": LISTEN_PATTERN,
    "examples": ["0.0.0.0:80", "127.0.0.1:9091", "[::1]:8080"]
});

/// The admin listener: an IP and a port, or a port alone on loopback
/// (`units::opt_loopback_default_addr`).
pub struct AdminAddress;
inline_schema!(AdminAddress, "AdminAddress", {
    "anyOf": [
        {"type": "string", "pattern": LISTEN_PATTERN},
        {"type": "string", "pattern": "^[0-9]{1,5}$"},
        {"type": "integer", "minimum": 0, "maximum": 65535}
    ],
    "examples": ["127.0.0.1:9092", 9092]
});

/// Name servers: `IP` (port 53) or `IP:port` (`units::socket_addrs_default_port_53`).
pub struct Resolvers;
inline_schema!(Resolvers, "Resolvers", {
    "type": "array",
    "items": {
        "type": "string",
        "anyOf": [
            {"pattern": LISTEN_PATTERN},
            {"pattern": "^[0-9A-Fa-f:.]+$"}
        ]
    }
});

/// A list of IPs or networks (`units::ip_nets`).
pub struct Networks;
inline_schema!(Networks, "Networks", {
    "type": "array",
    "items": {"type": "string", "pattern": NETWORK_PATTERN},
    "examples": [["10.0.0.0/8", "192.0.2.7"]]
});

/// An HTTP status code (`units::status`).
pub struct StatusCode;
inline_schema!(StatusCode, "StatusCode", {
    "type": "integer",
    "minimum": 100,
    "maximum": 999
});

/// A header value (`units::header_value`).
pub struct HeaderValue;
inline_schema!(HeaderValue, "HeaderValue", {
    "type": "string",
    "pattern": HEADER_VALUE_PATTERN
});

/// `{Header-Name: value}` (`units::header_values`).
pub struct HeaderValues;
inline_schema!(HeaderValues, "HeaderValues", {
    "type": "object",
    "propertyNames": {"pattern": TOKEN_PATTERN},
    "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN}
});

/// `{Header-Name: claim}` (`units::header_claims`).
pub struct HeaderClaims;
inline_schema!(HeaderClaims, "HeaderClaims", {
    "type": "object",
    "propertyNames": {"pattern": TOKEN_PATTERN},
    "additionalProperties": {"type": "string"}
});

/// `{200: 10m, 404: 1m}` (`units::status_durations`).
pub struct StatusDurations;
inline_schema!(StatusDurations, "StatusDurations", {
    "type": "object",
    "propertyNames": {"pattern": "^[1-9][0-9]{2}$"},
    "additionalProperties": {"type": "string", "pattern": DURATION_PATTERN}
});

/// `{502: /srv/errors/502.html}` (`units::status_paths`).
pub struct StatusPaths;
inline_schema!(StatusPaths, "StatusPaths", {
    "type": "object",
    "propertyNames": {"pattern": "^[1-9][0-9]{2}$"},
    "additionalProperties": {"type": "string", "minLength": 1}
});

/// A request target starting with `/` (`units::request_target`).
pub struct RequestTarget;
inline_schema!(RequestTarget, "RequestTarget", {
    "type": "string",
    "pattern": "^/"
});

/// An `http://` or `https://` URL with a host (`units::http_url`).
pub struct HttpUrl;
inline_schema!(HttpUrl, "HttpUrl", {
    "type": "string",
    "pattern": "^https?://[^/?#]+",
    "examples": ["http://127.0.0.1:7000/token-info"]
});

/// `true`, `false`, or the map of `T` (a listener's `http3`).
pub struct OnOrMap<T>(std::marker::PhantomData<T>);

impl<T: JsonSchema> JsonSchema for OnOrMap<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("OnOr{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let map = generator.subschema_for::<T>();
        json_schema!({"anyOf": [{"type": "boolean"}, map]})
    }
}

/// A backend's `host:port`, the host an IP (IPv6 in brackets) or a DNS name.
pub struct HostPort;
inline_schema!(HostPort, "HostPort", {
    "type": "string",
    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z_.-]+):[0-9]{1,5}$",
    "examples": ["10.0.1.10:8080", "products.internal:8080"]
});

inline_schema!(crate::config::HostPattern, "HostPattern", {
    "type": "string",
    "pattern": r"^(\*\.)?[0-9A-Za-z_-]+(\.[0-9A-Za-z_-]+)*$",
    "examples": ["api.example.com", "*.example.com"]
});

inline_schema!(crate::config::RoutePath, "RoutePath", {
    "type": "string",
    "pattern": "^/"
});

inline_schema!(crate::config::RateKey, "RateKey", {
    "anyOf": [
        {"enum": ["client_ip", "auth_subject", "global"]},
        {"type": "string", "pattern": "^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$"}
    ]
});

inline_schema!(crate::config::HashKey, "HashKey", {
    "anyOf": [
        {"enum": ["client_ip", "path", "uri"]},
        {"type": "string", "pattern": "^(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+$"}
    ]
});

inline_schema!(crate::config::JwtAlgorithm, "JwtAlgorithm", {
    "enum": [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512", "ES256", "ES384"
    ]
});

inline_schema!(crate::config::HeaderName, "HeaderName", {
    "type": "string",
    "pattern": TOKEN_PATTERN,
    "examples": ["X-Request-Id"]
});

inline_schema!(crate::config::Percent, "Percent", {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 100},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?%?$"}
    ],
    "examples": ["20%", "50%"]
});

inline_schema!(crate::config::AccessLogTarget, "AccessLogTarget", {
    "type": "string",
    "minLength": 1,
    "examples": ["stdout", "off", "/var/log/tollgate/access.log"]
});

inline_schema!(crate::config::AccessLogFormat, "AccessLogFormat", {
    "anyOf": [
        {"enum": ["json", "combined"]},
        {"type": "string", "pattern": r"\$"}
    ],
    "examples": ["combined", "json", "$remote_addr \"$request\" $status"]
});

inline_schema!(crate::config::CorsOrigin, "CorsOrigin", {
    "type": "string",
    "anyOf": [
        {"const": "*"},
        {"pattern": "^[A-Za-z][0-9A-Za-z+.-]*://[^/?#]+$"}
    ],
    "examples": ["https://app.example.com", "*"]
});

inline_schema!(crate::config::CorsMethod, "CorsMethod", {
    "type": "string",
    "pattern": TOKEN_NO_STAR_PATTERN,
    "examples": ["GET", "POST"]
});

inline_schema!(crate::config::CorsHeader, "CorsHeader", {
    "type": "string",
    "pattern": TOKEN_NO_STAR_PATTERN,
    "examples": ["Authorization", "Content-Type"]
});
