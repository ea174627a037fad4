//! Value types written as strings in the topology file, parsed once at load time.
//!
//! Each `parse_*` function is the single definition of a unit's syntax; the serde
//! adapters below call them so that a bad value is reported at its line and column.

use super::types::HeaderName;
use serde::{de::Error as _, Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h`, `365d` (a whole number and a unit, no space).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let invalid = || {
        format!("invalid duration `{text}`: expected a whole number with a unit (ms, s, m, h, d), e.g. `250ms` or `5s`")
    };
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// A `host:port` as written: the host an IP or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses `host:port`, the host an IP (IPv6 in brackets) or a DNS name; any
/// port, 0 included (callers that cannot use 0 refuse it). Errors name `text`
/// and end with `expected`, what the caller accepts.
pub(crate) fn parse_host_port(text: &str, expected: &str) -> Result<HostPort, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("invalid address `{text}`: no port; {expected}"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid address `{text}`: `{port}` is not a port; {expected}"))?;
    if host.contains(':') || host.starts_with('[') {
        return Err(format!("invalid address `{text}`: {expected}"));
    }
    if !is_dns_name(host) {
        return Err(format!(
            "invalid address `{text}`: `{host}` is not a host name; {expected}"
        ));
    }
    Ok(HostPort {
        host: Host::Name(host.to_ascii_lowercase()),
        port,
    })
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 characters.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

const LISTEN_EXPECTED: &str = "expected IP:port, e.g. `10.0.1.10:8080` or `[::1]:8080`";

/// Parses an address to listen on: `host:port` where host is an IP literal.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    match parse_host_port(text, LISTEN_EXPECTED)? {
        HostPort {
            host: Host::Ip(ip),
            port,
        } => Ok(SocketAddr::new(ip, port)),
        HostPort { .. } => Err(format!(
            "invalid address `{}`: listen on an IP, not a host name; {LISTEN_EXPECTED}",
            text.trim()
        )),
    }
}

/// Parses an IP network (`10.0.0.0/8`, `::1/128`) or a single IP (`192.0.2.7`).
pub(crate) fn parse_ip_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("invalid network `{text}`: expected an IP or CIDR, e.g. `10.0.0.0/8`"))
}

/// A steady rate of requests: `10/s`, `600/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u64,
    pub per: Duration,
}

impl Rate {
    /// The time one request's share of the rate takes (the bucket's refill step).
    pub fn interval(&self) -> Duration {
        self.per / self.requests.max(1) as u32
    }
}

/// Parses `N/s` or `N/m` with N from 1 to 1,000,000,000.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let invalid = || {
        format!(
            "invalid rate `{text}`: expected requests per second or minute, e.g. `10/s` or `600/m`"
        )
    };
    let (number, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
    let requests: u64 = number.trim().parse().map_err(|_| invalid())?;
    if requests == 0 || requests > 1_000_000_000 {
        return Err(invalid());
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        _ => return Err(invalid()),
    };
    Ok(Rate { requests, per })
}

/// serde adapter: a [`Rate`] written as `10/s`.
pub fn rate<'de, D: Deserializer<'de>>(de: D) -> Result<Rate, D::Error> {
    parsed_scalar(de, "a rate, e.g. `10/s`", parse_rate)
}

/// Parses a scalar with `parse` inside its visitor, so that serde_yaml reports
/// a bad value at its own line and column rather than at its mapping's.
fn parsed_scalar<'de, D: Deserializer<'de>, T>(
    de: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct Scalar<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> serde::de::Visitor<'_> for Scalar<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(E::custom)
        }
    }
    de.deserialize_str(Scalar { expecting, parse })
}

/// serde adapter: an optional [`Duration`].
pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    duration(de).map(Some)
}

/// Parses a size: `512B`, `64KiB`, `10MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!("invalid size `{text}`: expected a whole number with a unit (B, KiB, MiB, GiB), e.g. `10MiB`")
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(invalid()),
    };
    value.checked_mul(factor).ok_or_else(invalid)
}

/// serde adapter: a byte size written as `10MiB`.
pub(crate) fn byte_size<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    parsed_scalar(de, "a size, e.g. `10MiB`", parse_byte_size)
}

/// serde adapter: an optional byte size.
pub(crate) fn opt_byte_size<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    byte_size(de).map(Some)
}

/// serde adapter: a [`Duration`] written as `5s`.
pub fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    parsed_scalar(de, "a duration, e.g. `5s`", parse_duration)
}

/// serde adapter: name server addresses, `IP` (port 53) or `IP:port`.
pub(crate) fn socket_addrs_default_port_53<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
                .or_else(|_| text.parse::<SocketAddr>())
                .map_err(|_| D::Error::custom(format!("`{text}` is not IP or IP:port")))
        })
        .collect()
}

/// serde adapter: a [`SocketAddr`] written as `host:port`.
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(de: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(de)?;
    parse_socket_addr(&text).map_err(D::Error::custom)
}

/// serde adapter: an optional [`SocketAddr`].
pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(de).map(Some)
}

/// serde adapter: an optional address to listen on where a port alone
/// (`9092`) means loopback (`127.0.0.1:9092`), as for `server.admin`.
pub(crate) fn opt_loopback_default_addr<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Port(u16),
        Text(String),
    }
    let text = match Written::deserialize(de)? {
        Written::Port(port) => return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        Written::Text(text) => text,
    };
    match text.trim().parse::<u16>() {
        Ok(port) => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        Err(_) => parse_socket_addr(&text).map(Some).map_err(D::Error::custom),
    }
}

/// serde adapter: a list of IP networks, a bad one reported at its own line.
pub(crate) fn ip_nets<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let nets = Vec::<WrittenNet>::deserialize(de)?;
    Ok(nets.into_iter().map(|WrittenNet(net)| net).collect())
}

/// One network of a list, parsed while the parser is at its node (so that
/// the error carries the node's position, not the enclosing map's).
struct WrittenNet(ipnet::IpNet);

impl<'de> Deserialize<'de> for WrittenNet {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Net;
        impl serde::de::Visitor<'_> for Net {
            type Value = WrittenNet;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an IP or CIDR, e.g. `10.0.0.0/8`")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<WrittenNet, E> {
                parse_ip_net(text).map(WrittenNet).map_err(E::custom)
            }
        }
        de.deserialize_str(Net)
    }
}

/// A list of networks (see [`ip_nets`]) where leaving the key out means
/// something else than an empty list.
pub(crate) fn opt_ip_nets<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Vec<ipnet::IpNet>>, D::Error> {
    ip_nets(de).map(Some)
}

/// Visits a map in the order the file writes it, making each entry with `entry`.
fn ordered_entries<'de, D, T>(
    de: D,
    entry: fn(String, String) -> Result<T, String>,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Entries<T>(fn(String, String) -> Result<T, String>);
    impl<'de, T> serde::de::Visitor<'de> for Entries<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of header names to text, e.g. `{X-Auth-User: username}`")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                entries.push((self.0)(key, value).map_err(serde::de::Error::custom)?);
            }
            Ok(entries)
        }
    }
    de.deserialize_map(Entries(entry))
}

/// serde adapter: `{200: 10m, 404: 1m}`, statuses to durations, in status order.
pub(crate) fn status_durations<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Vec<(http::StatusCode, Duration)>, D::Error> {
    let entries = std::collections::BTreeMap::<u16, String>::deserialize(de)?;
    entries
        .into_iter()
        .map(|(code, text)| {
            let status = http::StatusCode::from_u16(code)
                .map_err(|_| D::Error::custom(format!("{code} is not an HTTP status")))?;
            Ok((status, parse_duration(&text).map_err(D::Error::custom)?))
        })
        .collect()
}

/// serde adapter: `{502: /srv/errors/502.html}`, statuses to files, in status order.
pub(crate) fn status_paths<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Vec<(http::StatusCode, std::path::PathBuf)>, D::Error> {
    let entries = std::collections::BTreeMap::<u16, std::path::PathBuf>::deserialize(de)?;
    entries
        .into_iter()
        .map(|(code, path)| {
            let status = http::StatusCode::from_u16(code)
                .map_err(|_| D::Error::custom(format!("{code} is not an HTTP status")))?;
            Ok((status, path))
        })
        .collect()
}

/// serde adapter: `{Header-Name: claim}`, in file order.
pub(crate) fn header_claims<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Vec<(HeaderName, String)>, D::Error> {
    ordered_entries(de, |name, claim| Ok((HeaderName::parse(&name)?, claim)))
}

/// serde adapter: `{Header-Name: value}` of headers to send, in file order.
pub(crate) fn header_values<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Vec<(HeaderName, http::HeaderValue)>, D::Error> {
    ordered_entries(de, |name, value| {
        let value = http::HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        Ok((HeaderName::parse(&name)?, value))
    })
}

/// serde adapter: a request target that starts with `/` (`/health?full=1`).
pub(crate) fn request_target<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<http::uri::PathAndQuery, D::Error> {
    let text = String::deserialize(de)?;
    text.parse::<http::uri::PathAndQuery>()
        .ok()
        .filter(|_| text.starts_with('/'))
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid path `{text}`: expected it to start with `/`"
            ))
        })
}

/// serde adapter: an HTTP status code (100 to 999; ranges are checked where used).
pub fn status<'de, D: Deserializer<'de>>(de: D) -> Result<http::StatusCode, D::Error> {
    let code = u16::deserialize(de)?;
    http::StatusCode::from_u16(code)
        .map_err(|_| D::Error::custom(format!("{code} is not an HTTP status")))
}

/// serde adapter: a header value (`/new`, `https://example.com/`).
pub(crate) fn header_value<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<http::HeaderValue, D::Error> {
    opt_header_value(de)?.ok_or_else(|| D::Error::custom("a header value is needed"))
}

/// serde adapter: an optional header value (`products.internal`).
pub(crate) fn opt_header_value<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<http::HeaderValue>, D::Error> {
    let text = String::deserialize(de)?;
    if text.is_empty() {
        return Err(D::Error::custom("an empty header value"));
    }
    http::HeaderValue::from_str(&text)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("invalid header value `{text}`")))
}

/// serde adapter: an `http://` or `https://` URL with a host.
pub(crate) fn http_url<'de, D: Deserializer<'de>>(de: D) -> Result<reqwest::Url, D::Error> {
    let text = String::deserialize(de)?;
    reqwest::Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid url `{text}`: expected http://host:port/path"
            ))
        })
}

/// serde adapter: an optional [`http_url`].
pub(crate) fn opt_http_url<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<reqwest::Url>, D::Error> {
    http_url(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "5",
            "s",
            "",
            "5 s",
            "1.5s",
            "-1s",
            "5sec",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sizes_have_units() {
        assert_eq!(parse_byte_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_byte_size("512B"), Ok(512));
        assert_eq!(parse_byte_size("2KB"), Ok(2000));
        for bad in ["10", "10mb", "MiB", "1.5MiB", "99999999999999GiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rates_are_per_second_or_minute() {
        assert_eq!(
            parse_rate("10/s").unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            parse_rate("600/m").unwrap().interval(),
            Duration::from_millis(100)
        );
        for bad in ["10", "0/s", "10/h", "x/s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn addresses_are_ip_and_port() {
        assert!(parse_socket_addr("127.0.0.1:80").is_ok());
        assert!(parse_socket_addr("[::1]:8080").is_ok());
        assert_eq!(parse_socket_addr("127.0.0.1:0").unwrap().port(), 0);
        let name = parse_socket_addr("localhost:80").unwrap_err();
        assert!(name.contains("not a host name"), "{name}");
        for bad in ["127.0.0.1", "localhost:80", "1.2.3.4:99999", "::1:80"] {
            assert!(parse_socket_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn networks_accept_single_ips() {
        assert_eq!(
            parse_ip_net("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_ip_net("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert!(parse_ip_net("10.0.0.0/33").is_err());
    }
}
