//! The addresses tollgate listens on, reserved before pingora binds them.
//!
//! Each listener, the metrics and the admin address is bound here first, on a socket that
//! does not listen (`SO_REUSEADDR`, as pingora's own), and held until pingora
//! listens on it. So a port another process listens on is one clear error at
//! start, instead of pingora's 30 s of retries; and port 0 gets one port from the
//! kernel, held from the moment it is chosen (no other program can be handed it
//! meanwhile), which tollgate then reports: `listening on ADDR (server.listeners[0])`,
//! and keeps across a binary upgrade.

use crate::config::Config;
use pingora::protocols::GetSocketDigest;
use std::net::SocketAddr;
use tokio::net::TcpSocket;

/// The environment variable that passes the addresses a process listens on to
/// the process an upgrade starts: `server.listeners[0]=127.0.0.1:43211,...`.
pub(crate) const BOUND_ADDRESSES: &str = "TOLLGATE_BOUND_ADDRESSES";

/// What tollgate is to listen on, with the sockets that hold the addresses.
pub struct Reservation {
    /// The address of each `server.listeners[i]`, port 0 resolved.
    pub listeners: Vec<SocketAddr>,
    /// `server.metrics`, port 0 resolved.
    pub metrics: Option<SocketAddr>,
    /// `server.admin`, port 0 resolved.
    pub admin: Option<SocketAddr>,
    /// Held until pingora listens; dropping them frees nothing pingora needs.
    held: Vec<TcpSocket>,
    /// The UDP socket of each `http3` listener (`None` for the others, and
    /// in a process that takes its sockets over), bound at the listener's
    /// address and port; the QUIC service takes them.
    udp: Vec<Option<std::net::UdpSocket>>,
}

impl Reservation {
    /// Reserves every address of `config`; the error names the first that cannot
    /// be bound and why.
    pub fn reserve(config: &Config) -> Result<Reservation, String> {
        let mut held = Vec::new();
        let mut hold = |address: SocketAddr| -> Result<SocketAddr, String> {
            let (socket, bound) =
                bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
            held.push(socket);
            Ok(bound)
        };
        let listeners = config
            .server
            .listeners
            .iter()
            .map(|l| hold(l.address))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = config.server.metrics.map(&mut hold).transpose()?;
        let admin = config.server.admin.map(&mut hold).transpose()?;
        let udp = config
            .server
            .listeners
            .iter()
            .zip(&listeners)
            .map(|(listener, &bound)| {
                listener
                    .http3
                    .as_ref()
                    .map(|_| {
                        std::net::UdpSocket::bind(bound)
                            .map_err(|e| format!("cannot listen on UDP {bound} (http3): {e}"))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reservation {
            listeners,
            metrics,
            admin,
            held,
            udp,
        })
    }

    /// The addresses of a process that takes its sockets over from another
    /// (`-u`), holding nothing: as `config` writes them, but where it writes port
    /// 0, the address the old process listens on, as it passed them on in
    /// [`BOUND_ADDRESSES`] (`tollgate upgrade` does).
    pub fn inherited(config: &Config) -> Reservation {
        let passed = std::env::var(BOUND_ADDRESSES).unwrap_or_default();
        let bound = |node: &str, written: SocketAddr| {
            if written.port() != 0 {
                return written;
            }
            passed
                .split(',')
                .filter_map(|entry| entry.split_once('='))
                .find(|(n, _)| *n == node)
                .and_then(|(_, a)| a.parse().ok())
                .unwrap_or(written)
        };
        Reservation {
            listeners: config
                .server
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| bound(&format!("server.listeners[{i}]"), l.address))
                .collect(),
            metrics: config.server.metrics.map(|m| bound("server.metrics", m)),
            admin: config.server.admin.map(|a| bound("server.admin", a)),
            held: Vec::new(),
            udp: Vec::new(),
        }
    }

    /// The UDP socket reserved for each listener (by index; `None` for
    /// listeners without `http3` and in a process that takes its sockets
    /// over), taken out of the reservation.
    pub fn take_udp(&mut self) -> Vec<Option<std::net::UdpSocket>> {
        std::mem::take(&mut self.udp)
    }

    /// The value of [`BOUND_ADDRESSES`] for a process that takes over these.
    pub(crate) fn passed_on(&self) -> String {
        self.named()
            .iter()
            .map(|(node, address)| format!("{node}={address}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every address, listeners first, each with the config node it is for.
    pub fn named(&self) -> Vec<(String, SocketAddr)> {
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("server.listeners[{i}]"), *a));
        listeners
            .chain(self.metrics.map(|a| ("server.metrics".to_string(), a)))
            .chain(self.admin.map(|a| ("server.admin".to_string(), a)))
            .collect()
    }

    /// Lets the addresses go, once pingora listens on them.
    pub fn release(&mut self) {
        self.held.clear();
    }
}

fn bind(address: SocketAddr) -> std::io::Result<(TcpSocket, SocketAddr)> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let bound = socket.local_addr()?;
    Ok((socket, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_program_listens_on_is_refused() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = busy.local_addr().unwrap();
        assert!(bind(address).is_err());
        drop(busy);
        assert!(bind(address).is_ok());
    }

    #[test]
    fn a_reserved_port_can_still_be_listened_on() {
        let (held, bound) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(bound.port(), 0);
        // As pingora does once the reservation is made: bind (SO_REUSEADDR) and listen.
        let listener = std::net::TcpListener::bind(bound).expect("pingora can take it");
        assert!(std::net::TcpStream::connect(bound).is_ok());
        drop((held, listener));
    }
}

/// Values by listener, found from the local address of a connection: the
/// listener's own address, or, for a listener on `0.0.0.0`/`[::]`, its port
/// (a connection's local address is then the one it came in on).
#[derive(Debug)]
pub struct ByListener<T> {
    exact: std::collections::HashMap<SocketAddr, T>,
    /// Listeners on an unspecified address, by port.
    any_address: std::collections::HashMap<u16, T>,
}

impl<T> Default for ByListener<T> {
    fn default() -> Self {
        ByListener {
            exact: std::collections::HashMap::new(),
            any_address: std::collections::HashMap::new(),
        }
    }
}

impl<T> ByListener<T> {
    /// Adds the value of the listener bound to `address`.
    pub fn insert(&mut self, address: SocketAddr, value: T) {
        if address.ip().is_unspecified() {
            self.any_address.insert(address.port(), value);
        } else {
            self.exact.insert(address, value);
        }
    }

    /// Whether no listener has a value.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.any_address.is_empty()
    }

    /// The value of the listener a connection whose local address is
    /// `local` came in on.
    pub fn get(&self, local: &SocketAddr) -> Option<&T> {
        self.exact
            .get(local)
            .or_else(|| self.any_address.get(&local.port()))
    }

    /// The value of the listener `stream` came in on, by the local address
    /// in its socket digest; `None` for a stream without one.
    pub fn of_stream<S: GetSocketDigest + ?Sized>(&self, stream: &S) -> Option<&T> {
        let digest = stream.get_socket_digest()?;
        let local = digest.local_addr()?.as_inet()?;
        self.get(local)
    }
}

#[cfg(test)]
mod by_listener_tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_found_by_port() {
        let mut map = ByListener::default();
        map.insert("0.0.0.0:443".parse().unwrap(), "tls");
        map.insert("127.0.0.1:80".parse().unwrap(), "plain");
        assert_eq!(map.get(&"10.0.0.5:443".parse().unwrap()), Some(&"tls"));
        assert_eq!(
            map.get(&"[::ffff:10.0.0.5]:443".parse().unwrap()),
            Some(&"tls")
        );
        assert_eq!(map.get(&"127.0.0.1:80".parse().unwrap()), Some(&"plain"));
        assert_eq!(map.get(&"127.0.0.2:80".parse().unwrap()), None);
    }
}

impl<T> FromIterator<(SocketAddr, T)> for ByListener<T> {
    fn from_iter<I: IntoIterator<Item = (SocketAddr, T)>>(iter: I) -> Self {
        let mut map = ByListener::default();
        for (address, value) in iter {
            map.insert(address, value);
        }
        map
    }
}
