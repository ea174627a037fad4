//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on listeners.
//!
//! A load balancer that passes TCP through (an AWS NLB with IP targets, a
//! PrivateLink endpoint, HAProxy with `send-proxy-v2`) names the client it
//! accepted in a header before anything else on the connection. On a listener
//! with `proxy_protocol`, [`ProxyHeaderReading`] reads that header first,
//! before TLS and HTTP, takes it off the stream, and makes the address it names
//! the connection's peer address: the socket digest pingora's session reports
//! as `client_addr()`. Routing, `ip_hash`, rate limits, allow/deny,
//! X-Forwarded-For and the access log all read the client from there, so none
//! of them knows about the header; no byte of it reaches a backend.
//!
//! A connection from a peer outside `proxy_protocol_from`, or without a valid
//! header within [`HEADER_TIMEOUT`], is closed unserved and counted in
//! `tollgate_proxy_protocol_rejected_total{listener,reason}`. A `LOCAL` header
//! (a load balancer's own health check), a v1 `UNKNOWN` one, or one whose
//! addresses are not IP (AF_UNSPEC, AF_UNIX) is served with the peer's own
//! address, as the protocol asks.

use crate::config::ProxyProtocol;
use crate::forwarding::canonical_ip;
use crate::listen::ByListener;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use ppp::{v1, v2, HeaderResult, PartialResult};
use prometheus::IntCounter;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The longest a connection may take to send its whole header. Senders write
/// it at once on connecting; a few seconds leave room for a slow network and
/// none for a client that holds connections open without speaking.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest header read: v1's are at most 107 bytes, v2's 16 plus their
/// addresses and TLVs (an NLB's endpoint ID, a CRC, ALPN: well under this).
/// A v2 header announcing more is refused as malformed.
pub const MAX_HEADER: usize = 4096;

/// The bytes of a v2 header before its addresses: signature, version and
/// command, family and protocol, length.
const V2_FIXED_PART: usize = 16;

/// Why a connection was closed before it was served; each is a value of the
/// `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a PROXY header, or one that breaks the protocol (a bad address, a
    /// wrong length, an unknown command), or longer than [`MAX_HEADER`].
    Malformed,
    /// A valid header of the version the listener does not accept.
    WrongVersion,
    /// No whole header within [`HEADER_TIMEOUT`].
    Timeout,
    /// The peer closed (or the socket failed) before its header was whole.
    Closed,
    /// The peer is not in the listener's `proxy_protocol_from`.
    PeerNotAllowed,
}

impl Rejection {
    const ALL: [Rejection; 5] = [
        Rejection::Malformed,
        Rejection::WrongVersion,
        Rejection::Timeout,
        Rejection::Closed,
        Rejection::PeerNotAllowed,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongVersion => "wrong_version",
            Rejection::Timeout => "timeout",
            Rejection::Closed => "closed",
            Rejection::PeerNotAllowed => "peer_not_allowed",
        }
    }
}

/// How often a listener's refusals are logged at `warn` (the rest at `debug`):
/// a load balancer that sends no header, or the wrong version, shows in the
/// log at once without a line for every connection.
const WARN_INTERVAL_SECS: u64 = 60;

/// What a listener with `proxy_protocol` accepts, with its counters resolved.
pub struct ListenerPolicy {
    /// The listener's address, as its `listener` label has it.
    listener: String,
    accepted: ProxyProtocol,
    /// The peers that may connect; `None` for any peer.
    from: Option<Vec<IpNet>>,
    /// The `tollgate_proxy_protocol_rejected_total` counter of each
    /// [`Rejection`], in [`Rejection::ALL`]'s order.
    rejected: [IntCounter; Rejection::ALL.len()],
    /// When a refusal was last logged at `warn`, in seconds since the epoch.
    last_warned: AtomicU64,
}

impl ListenerPolicy {
    /// The policy of the listener labelled `listener` (its address) that
    /// accepts `accepted` headers from `from` (`None`: any peer). Its counters
    /// start at 0.
    pub fn new(listener: &str, accepted: ProxyProtocol, from: Option<Vec<IpNet>>) -> Self {
        let family = &crate::metrics::metrics().proxy_protocol_rejected;
        ListenerPolicy {
            listener: listener.to_string(),
            accepted,
            from,
            rejected: Rejection::ALL.map(|r| family.with_label_values(&[listener, r.label()])),
            last_warned: AtomicU64::new(0),
        }
    }

    /// Whether `peer` may send this listener a header.
    fn allows(&self, peer: IpAddr) -> bool {
        let peer = canonical_ip(peer);
        self.from
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&peer)))
    }

    fn count(&self, why: Rejection) {
        // `Rejection::ALL` lists the rejections in their declared order.
        if let Some(counter) = self.rejected.get(why as usize) {
            counter.inc();
        }
    }

    /// Counts the connection of `peer` closed for `why`, and logs it: at
    /// `warn` once a minute at most (never for `closed`, which port probes
    /// cause), else at `debug`. Returns `None`, the connection's end.
    fn refuse(&self, why: Rejection, peer: Option<SocketAddr>) -> Option<Stream> {
        self.count(why);
        let peer = peer.map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warned.load(Ordering::Relaxed);
        let warn = why != Rejection::Closed
            && now >= last + WARN_INTERVAL_SECS
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let level = if warn {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "PROXY protocol listener {}: closed the connection of {peer} ({}; counted in \
             tollgate_proxy_protocol_rejected_total, logged at warn once a minute)",
            self.listener,
            why.label()
        );
        None
    }
}

/// The policies of `listeners` (each with the address it is bound to) that
/// have `proxy_protocol` on; empty when none has.
pub fn policies<'a>(
    listeners: impl Iterator<Item = (&'a crate::config::ListenerConfig, SocketAddr)>,
) -> ByListener<ListenerPolicy> {
    listeners
        .filter(|(l, _)| l.proxy_protocol != ProxyProtocol::Off)
        .map(|(l, address)| {
            let policy = ListenerPolicy::new(
                &address.to_string(),
                l.proxy_protocol,
                l.proxy_protocol_from.clone(),
            );
            (address, policy)
        })
        .collect()
}

/// What the bytes that arrived so far make.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// The start of a header, or of something that may still become one.
    Incomplete,
    /// A whole header of `len` bytes naming `source` as the client; `None`
    /// for the peer's own address (`LOCAL`, `UNKNOWN`, not IP).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    Rejected(Rejection),
}

/// Parses the start of a connection on a listener that accepts `accepted`.
fn parse(input: &[u8], accepted: ProxyProtocol) -> Parsed {
    let result = HeaderResult::parse(input);
    if let HeaderResult::V2(Err(v2::ParseError::Partial(_, announced))) = result {
        // Refused at once rather than once MAX_HEADER bytes have arrived.
        if V2_FIXED_PART + announced > MAX_HEADER {
            return Parsed::Rejected(Rejection::Malformed);
        }
    }
    if result.is_incomplete() {
        return if input.len() >= MAX_HEADER {
            Parsed::Rejected(Rejection::Malformed)
        } else {
            Parsed::Incomplete
        };
    }
    let (version_accepted, header) = match result {
        HeaderResult::V1(Ok(h)) => (
            matches!(accepted, ProxyProtocol::V1 | ProxyProtocol::Any),
            Parsed::Header {
                len: h.header.len(),
                source: v1_source(&h.addresses),
            },
        ),
        HeaderResult::V2(Ok(h)) => (
            matches!(accepted, ProxyProtocol::V2 | ProxyProtocol::Any),
            Parsed::Header {
                len: h.len(),
                source: v2_source(&h),
            },
        ),
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
            return Parsed::Rejected(Rejection::Malformed)
        }
    };
    if version_accepted {
        header
    } else {
        Parsed::Rejected(Rejection::WrongVersion)
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match &header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// Reads the header off the start of `stream`; the bytes read past it are put
/// back, to be read next. Returns the client address it names (`None`: the
/// peer's own), or why the connection is to be closed.
async fn read_header(
    stream: &mut TcpStream,
    accepted: ProxyProtocol,
) -> Result<Option<SocketAddr>, Rejection> {
    // On the heap, and only while the header is read: a connection keeps
    // nothing of it.
    let mut buf = vec![0u8; MAX_HEADER];
    let mut filled = 0;
    loop {
        let space = buf.get_mut(filled..).unwrap_or_default();
        match stream.read(space).await {
            Ok(0) | Err(_) => return Err(Rejection::Closed),
            Ok(n) => filled += n,
        }
        let arrived = buf.get(..filled).unwrap_or_default();
        match parse(arrived, accepted) {
            Parsed::Incomplete => continue,
            Parsed::Rejected(why) => return Err(why),
            Parsed::Header { len, source } => {
                stream.rewind(arrived.get(len..).unwrap_or_default());
                return Ok(source);
            }
        }
    }
}

/// Makes `client` the peer address of `stream` for everything that reads its
/// socket digest from now on, keeping its `local` address.
fn name_client(stream: &mut TcpStream, client: SocketAddr, local: Option<PeerAddr>) {
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    // Both cells are new and empty: neither `set` can fail.
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
    let _ = digest.local_addr.set(local);
    stream.set_socket_digest(digest);
}

/// An app whose connections on PROXY protocol listeners have their header
/// read, checked and taken off before `app` serves them (TLS included).
pub struct ProxyHeaderReading<A> {
    app: Arc<A>,
    listeners: ByListener<ListenerPolicy>,
}

impl<A> ProxyHeaderReading<A> {
    /// Wraps `app`; `listeners` are the policies of the listeners with
    /// `proxy_protocol` (see [`policies`]), by their bound addresses.
    pub fn new(app: A, listeners: ByListener<ListenerPolicy>) -> Self {
        ProxyHeaderReading {
            app: Arc::new(app),
            listeners,
        }
    }

    /// `stream` with its header taken off and its client named, or `None`
    /// when `policy` has it closed (counted).
    async fn accept(&self, policy: &ListenerPolicy, stream: Stream) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(PeerAddr::as_inet).copied());
        let local = digest.as_ref().and_then(|d| d.local_addr().cloned());
        if !peer.is_some_and(|p| policy.allows(p.ip())) {
            return policy.refuse(Rejection::PeerNotAllowed, peer);
        }
        // A PROXY protocol listener is a TCP one: any other stream is closed.
        let mut tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        let read =
            pingora::prelude::timeout(HEADER_TIMEOUT, read_header(&mut tcp, policy.accepted));
        match read.await {
            Ok(Ok(Some(client))) => name_client(&mut tcp, client, local),
            Ok(Ok(None)) => {}
            Ok(Err(why)) => return policy.refuse(why, peer),
            Err(_) => return policy.refuse(Rejection::Timeout, peer),
        }
        Some(tcp)
    }
}

#[async_trait]
impl<A> ServerApp for ProxyHeaderReading<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    /// Serves one client connection to its end: on a PROXY protocol listener
    /// once its header is read (none when it is refused), on another as it
    /// is. A stream `app` hands back for reuse is served again here, never
    /// read for a second header. Always returns `None`.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let policy = if self.listeners.is_empty() {
            None
        } else {
            self.listeners.of_stream(&*stream)
        };
        let stream = match policy {
            Some(policy) => self.accept(policy, stream).await?,
            None => stream,
        };
        let mut reused = self.app.process_new(stream, shutdown).await;
        while let Some(stream) = reused {
            reused = self.app.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyProtocol::{Any, V1, V2};

    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A v2 header: `command` (0x20 LOCAL, 0x21 PROXY), `family` byte, then
    /// `body` (addresses and TLVs).
    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([command, family]);
        out.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend(body);
        out
    }

    fn v2_tcp4(source: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = source.to_vec();
        body.extend([10, 0, 0, 1]);
        body.extend(port.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    fn header(len: usize, source: &str) -> Parsed {
        Parsed::Header {
            len,
            source: Some(source.parse().unwrap()),
        }
    }

    #[test]
    fn v1_names_the_source_and_ends_at_its_line() {
        let line = "PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        let input = format!("{line}GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(input.as_bytes(), V1),
            header(line.len(), "203.0.113.7:51000")
        );
        let v6 = "PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(v6.as_bytes(), Any),
            header(v6.len(), "[2001:db8::7]:51000")
        );
        let unknown = "PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown.as_bytes(), V1),
            Parsed::Header {
                len: unknown.len(),
                source: None
            }
        );
    }

    #[test]
    fn v2_names_the_source_and_local_names_none() {
        let mut input = v2_tcp4([198, 51, 100, 9], 40000);
        let len = input.len();
        input.extend(b"\x16\x03\x01");
        assert_eq!(parse(&input, V2), header(len, "198.51.100.9:40000"));
        let mut body = vec![0u8; 15];
        body.push(7);
        body.extend([0u8; 16]);
        body.extend([0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(
            parse(&v2(0x21, 0x21, &body), Any),
            header(52, "[::7]:40000")
        );
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(
            parse(&local, V2),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        // TLVs after the addresses (an NLB's endpoint ID) are part of the header.
        let mut with_tlv = [198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x40, 1, 187].to_vec();
        with_tlv.extend([0xea, 0, 4, 1, b'v', b'p', b'c']);
        assert_eq!(
            parse(&v2(0x21, 0x11, &with_tlv), V2),
            header(16 + 19, "198.51.100.9:40000")
        );
    }

    #[test]
    fn partial_headers_wait_for_more() {
        let whole = v2_tcp4([198, 51, 100, 9], 40000);
        for cut in [1, 5, 12, 15, 20] {
            assert_eq!(parse(&whole[..cut], V2), Parsed::Incomplete, "{cut}");
        }
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        for cut in [1, 6, 20, line.len() - 1] {
            assert_eq!(parse(&line[..cut], Any), Parsed::Incomplete, "{cut}");
        }
    }

    #[test]
    fn garbage_and_broken_headers_are_malformed() {
        let malformed = Parsed::Rejected(Rejection::Malformed);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n", Any), malformed);
        assert_eq!(parse(b"\x16\x03\x01\x02\x00", V2), malformed);
        assert_eq!(
            parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n", V1),
            malformed
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n", V1), malformed);
        // Version 3, command 2, an address family that does not exist.
        assert_eq!(parse(&v2(0x31, 0x11, &[0; 12]), V2), malformed);
        assert_eq!(parse(&v2(0x22, 0x11, &[0; 12]), V2), malformed);
        assert_eq!(parse(&v2(0x21, 0x51, &[0; 12]), V2), malformed);
        // A length too short for the addresses it announces.
        assert_eq!(parse(&v2(0x21, 0x11, &[0; 4]), V2), malformed);
        // A v1 line that never ends, a v2 header longer than MAX_HEADER.
        let endless = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(parse(endless.as_bytes(), V1), malformed);
        let mut long = v2(0x21, 0x11, &vec![0; MAX_HEADER]);
        long.truncate(MAX_HEADER);
        assert_eq!(parse(&long, V2), malformed);
    }

    #[test]
    fn a_version_the_listener_does_not_take_is_refused() {
        let wrong = Parsed::Rejected(Rejection::WrongVersion);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n", V2), wrong);
        assert_eq!(parse(&v2_tcp4([1, 2, 3, 4], 5), V1), wrong);
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        // xorshift64: the same inputs on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let starts: [&[u8]; 6] = [
            b"",
            V2_SIGNATURE,
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x31",
            b"PROXY TCP4 ",
            b"PROXY TCP6 ::1 ",
        ];
        for round in 0..20_000 {
            let mut input = starts[round % starts.len()].to_vec();
            let len = usize::try_from(next() % 300).unwrap();
            input.extend((0..len).map(|_| next().to_le_bytes()[0]));
            for accepted in [V1, V2, Any] {
                for cut in [input.len() / 2, input.len()] {
                    let _ = parse(&input[..cut], accepted);
                }
            }
        }
    }

    #[test]
    fn each_rejection_has_its_own_counter() {
        for (slot, why) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*why as usize, slot, "{why:?}");
        }
        let policy = ListenerPolicy::new("test:3", Any, None);
        policy.count(Rejection::Timeout);
        assert_eq!(policy.rejected[Rejection::Timeout as usize].get(), 1);
        assert_eq!(policy.rejected[Rejection::Closed as usize].get(), 0);
    }

    #[test]
    fn only_listed_peers_may_send_a_header() {
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        let policy = ListenerPolicy::new("test:1", V2, Some(nets));
        assert!(policy.allows("10.1.2.3".parse().unwrap()));
        assert!(policy.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!policy.allows("192.0.2.1".parse().unwrap()));
        assert!(ListenerPolicy::new("test:2", V2, None).allows("192.0.2.1".parse().unwrap()));
    }
}
