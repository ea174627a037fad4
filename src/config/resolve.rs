//! Backend addresses: `IP:port` or `name:port` (`localhost:8080`, a compose
//! service `products:8080`). Names are resolved when the file is loaded, and so on
//! every reload; a name that resolves to several addresses gives a backend for
//! each, as nginx does. Every address that does not parse or resolve is reported,
//! not only the first.

use super::error::Problems;
use super::schema::Config;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

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

/// Parses `10.0.1.10:8080`, `[::1]:8080` or `products.internal:8080`.
pub(crate) fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let text = text.trim();
    let expected =
        "expected IP:port or name:port, e.g. `10.0.1.10:8080`, `[::1]:8080` or `localhost:8080`";
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
    if port == 0 {
        return Err(format!("invalid address `{text}`: port 0; {expected}"));
    }
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

/// The addresses `host_port` stands for now (a name through the system resolver).
pub fn resolve(host_port: &HostPort) -> Result<Vec<SocketAddr>, String> {
    let name = match &host_port.host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, host_port.port)]),
        Host::Name(name) => name,
    };
    let mut addresses: Vec<SocketAddr> = (name.as_str(), host_port.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{name}`: {e}"))?
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(format!("`{name}` resolves to no address"));
    }
    Ok(addresses)
}

/// Parses and resolves every backend address of `config`, filling in
/// `BackendConfig::resolved`. Returns every problem as (node path, message):
/// addresses that do not parse or resolve, and backends of one upstream that
/// come to the same address.
pub(crate) fn resolve_backends(config: &mut Config) -> Problems {
    let mut problems = Problems::default();
    for (name, upstream) in &mut config.upstreams {
        let mut first_with: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, backend) in upstream.backends.iter_mut().enumerate() {
            let at = format!("upstreams.{name}.backends[{i}].address");
            let resolved = parse_host_port(&backend.address).and_then(|hp| resolve(&hp));
            match resolved {
                Ok(addresses) => {
                    for address in &addresses {
                        if let Some(first) = first_with.insert(*address, i) {
                            problems.push(
                                at.clone(),
                                format!(
                                    "`{}` is {address}, as backends[{first}] is: list a backend once",
                                    backend.address
                                ),
                            );
                        }
                    }
                    backend.resolved = addresses;
                }
                Err(e) => problems.push(at, e),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ips_or_names_with_a_port() {
        let ip = parse_host_port("10.0.1.10:8080").unwrap();
        assert_eq!(ip.host, Host::Ip("10.0.1.10".parse().unwrap()));
        assert_eq!(ip.port, 8080);
        let v6 = parse_host_port("[::1]:8080").unwrap();
        assert_eq!(v6.host, Host::Ip("::1".parse().unwrap()));
        let name = parse_host_port("Products.Internal:80").unwrap();
        assert_eq!(name.host, Host::Name("products.internal".into()));
        for (bad, says) in [
            ("localhost", "no port"),
            ("localhost:http", "not a port"),
            ("localhost:0", "port 0"),
            ("localhost:70000", "not a port"),
            ("::1:8080", "expected"),
            ("bad name:80", "not a host name"),
            ("a..b:80", "not a host name"),
            (":80", "not a host name"),
        ] {
            let err = parse_host_port(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn names_resolve_through_the_system_resolver() {
        let local = resolve(&parse_host_port("localhost:8080").unwrap()).unwrap();
        assert!(local
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        let unknown = resolve(&parse_host_port("no-such-host.invalid:80").unwrap());
        assert!(unknown
            .unwrap_err()
            .contains("cannot resolve `no-such-host.invalid`"));
    }
}
