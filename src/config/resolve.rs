//! Backend addresses: `IP:port` or `name:port` (`localhost:8080`, a compose
//! service `products:8080`). Names are resolved when the file is loaded, and so on
//! every reload; a name that resolves to several addresses gives a backend for
//! each, as nginx does. Every address that does not parse or resolve is reported,
//! not only the first.

use super::error::Problems;
use super::schema::Config;
use super::units::{parse_host_port, Host, HostPort};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

const BACKEND_EXPECTED: &str =
    "expected IP:port or name:port, e.g. `10.0.1.10:8080`, `[::1]:8080` or `localhost:8080`";

/// Parses a backend address: `10.0.1.10:8080`, `[::1]:8080` or
/// `products.internal:8080`, with a port other than 0.
pub(crate) fn parse_backend_address(text: &str) -> Result<HostPort, String> {
    let host_port = parse_host_port(text, BACKEND_EXPECTED)?;
    if host_port.port == 0 {
        let text = text.trim();
        return Err(format!(
            "invalid address `{text}`: port 0; {BACKEND_EXPECTED}"
        ));
    }
    Ok(host_port)
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
            let resolved = parse_backend_address(&backend.address).and_then(|hp| resolve(&hp));
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
        let ip = parse_backend_address("10.0.1.10:8080").unwrap();
        assert_eq!(ip.host, Host::Ip("10.0.1.10".parse().unwrap()));
        assert_eq!(ip.port, 8080);
        let v6 = parse_backend_address("[::1]:8080").unwrap();
        assert_eq!(v6.host, Host::Ip("::1".parse().unwrap()));
        let name = parse_backend_address("Products.Internal:80").unwrap();
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
            let err = parse_backend_address(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn names_resolve_through_the_system_resolver() {
        let local = resolve(&parse_backend_address("localhost:8080").unwrap()).unwrap();
        assert!(local
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        let unknown = resolve(&parse_backend_address("no-such-host.invalid:80").unwrap());
        assert!(unknown
            .unwrap_err()
            .contains("cannot resolve `no-such-host.invalid`"));
    }
}
