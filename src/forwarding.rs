//! What a proxy tells the backend about the client, and what it must not pass on:
//! client address resolution through trusted proxies, the X-Forwarded-* and
//! X-Real-IP headers, and hop-by-hop headers of responses.
//!
//! Hop-by-hop headers of *requests* (RFC 9110 7.6.1, and every header the
//! Connection header names) are removed by pingora's standard upstream request
//! policy before `upstream_request_filter` runs; the integration tests hold it to that.

use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, UPGRADE};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The names as written to the backend. Given as text, pingora keeps them
/// without allocating a copy for its case-preserving map.
const X_FORWARDED_FOR_WIRE: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO_WIRE: &str = "X-Forwarded-Proto";
const X_FORWARDED_HOST_WIRE: &str = "X-Forwarded-Host";
const X_REAL_IP_WIRE: &str = "X-Real-IP";
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The networks whose X-Forwarded-For is believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        !self.nets.is_empty() && self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that arrived from `peer`: `peer` itself unless it is
    /// trusted; then the right-most X-Forwarded-For address that is not trusted
    /// (or the left-most one when all are). Unparseable entries stop the walk.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.rsplit(',') {
                let Some(ip) = parse_forwarded_ip(entry) else {
                    return client;
                };
                client = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// An X-Forwarded-For entry: an IP, possibly with a port or in brackets.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical_ip(a.ip()))
}

/// IPv4-mapped IPv6 addresses (from dual-stack listeners) as plain IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The X-Forwarded-Proto and X-Forwarded-Host [`set_forwarded_headers`] sends
/// the backend: a trusted peer's own, else `scheme` and the request's Host (or
/// authority); the host is empty when there is none.
pub(crate) fn forwarded_proto_and_host<'a>(
    req: &'a RequestHeader,
    peer_trusted: bool,
    scheme: &'static str,
) -> (&'a [u8], &'a [u8]) {
    let passed = |name: &HeaderName| {
        peer_trusted
            .then(|| req.headers.get(name))
            .flatten()
            .map(|v| v.as_bytes())
    };
    let proto = passed(&X_FORWARDED_PROTO).unwrap_or(scheme.as_bytes());
    let host = passed(&X_FORWARDED_HOST)
        .or_else(|| req.headers.get(http::header::HOST).map(|v| v.as_bytes()))
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    (proto, host)
}

/// Sets the forwarding headers of an upstream request.
///
/// - X-Forwarded-For: the peer address appended to what the client sent.
/// - X-Real-IP: the resolved client address.
/// - X-Forwarded-Proto / X-Forwarded-Host: kept when the peer is a trusted proxy
///   that set them, else set to this listener's scheme and the request's Host.
pub(crate) fn set_forwarded_headers(
    req: &mut RequestHeader,
    peer: IpAddr,
    client: IpAddr,
    peer_trusted: bool,
    scheme: &'static str,
) -> pingora::Result<()> {
    let peer_text = IpText::new(peer);
    let peer_value = header_value(peer_text.as_bytes())?;
    if req.headers.contains_key(&X_FORWARDED_FOR) {
        let mut forwarded_for = String::new();
        for value in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(text) = value.to_str() {
                forwarded_for.push_str(text.trim());
                forwarded_for.push_str(", ");
            }
        }
        forwarded_for.push_str(peer_text.as_str());
        req.insert_header(X_FORWARDED_FOR_WIRE, forwarded_for)?;
    } else {
        // The common case: one allocation, shared by X-Real-IP when the peer is the client.
        req.insert_header(X_FORWARDED_FOR_WIRE, peer_value.clone())?;
    }
    let real_ip = if client == peer {
        peer_value
    } else {
        header_value(IpText::new(client).as_bytes())?
    };
    req.insert_header(X_REAL_IP_WIRE, real_ip)?;

    if !(peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        req.insert_header(X_FORWARDED_PROTO_WIRE, scheme)?;
    }
    if !(peer_trusted && req.headers.contains_key(&X_FORWARDED_HOST)) {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(host) => req.insert_header(X_FORWARDED_HOST_WIRE, host)?,
            None => {
                req.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

/// An IP address as text, formatted on the stack (no allocation).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        use std::io::Write;
        let mut buf = [0u8; 48];
        if let IpAddr::V4(v4) = ip {
            // The common case, without the formatting machinery.
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let mut digits = itoa::Buffer::new();
                let text = digits.format(octet).as_bytes();
                buf[len..len + text.len()].copy_from_slice(text);
                len += text.len();
            }
            return IpText { buf, len };
        }
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // The longest IPv6 text is 45 bytes: the write cannot run out of room.
        let _ = write!(cursor, "{ip}");
        let len = cursor.position() as usize;
        IpText { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

fn header_value(bytes: &[u8]) -> pingora::Result<http::HeaderValue> {
    http::HeaderValue::from_bytes(bytes).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InternalError, "client address", e)
    })
}

/// Removes hop-by-hop headers from a backend's response: those the Connection
/// header names, then Connection, Keep-Alive, Proxy-Connection, TE, Trailer and
/// Upgrade. A `101 Switching Protocols` keeps Connection and Upgrade, which the
/// protocol switch needs. Framing headers are left to pingora, which re-frames.
pub(crate) fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    // Most answers carry none of these, or only `Connection: keep-alive`: one
    // pass over the (few) names finds which are there before touching the maps.
    let fixed_names: [&HeaderName; 6] = [
        &CONNECTION,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
    ];
    let mut present = [false; 6];
    for name in resp.headers.keys() {
        if let Some(i) = fixed_names.iter().position(|fixed| *fixed == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let mut nominated: Vec<HeaderName> = Vec::new();
    for value in resp.headers.get_all(CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',') {
            let token = token.trim();
            // Connection options that are not header names of their own.
            if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            let protected = name == http::header::CONTENT_LENGTH
                || name == http::header::TRANSFER_ENCODING
                || (switching && name == UPGRADE);
            if !protected {
                nominated.push(name);
            }
        }
    }
    for name in &nominated {
        resp.remove_header(name);
    }
    for (fixed, present) in fixed_names.into_iter().zip(present) {
        // A protocol switch needs its Connection and Upgrade.
        let kept = switching && (*fixed == CONNECTION || *fixed == UPGRADE);
        if present && !kept {
            resp.remove_header(fixed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_fits_the_longest_addresses() {
        for ip in [
            "255.255.255.255",
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.9",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1:2:3:4:5:6:7:8",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(parsed).as_str(), parsed.to_string());
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers(&["1.2.3.4"])), peer);
    }

    #[test]
    fn trusted_chain_yields_rightmost_untrusted() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers(&["6.6.6.6, 1.2.3.4", "10.1.1.1"]);
        assert_eq!(t.client_ip(peer, &h), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(t.client_ip(peer, &headers(&["garbage"])), peer);
        assert_eq!(
            t.client_ip(peer, &headers(&["[2001:db8::1]:443"])),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn response_hop_by_hop_is_removed() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Connection", "close, X-Secret").unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("Upgrade", "h2c").unwrap();
        r.insert_header("X-Kept", "1").unwrap();
        strip_response_hop_by_hop(&mut r);
        for gone in ["connection", "x-secret", "keep-alive", "upgrade"] {
            assert!(!r.headers.contains_key(gone), "{gone} kept");
        }
        assert!(r.headers.contains_key("x-kept"));
    }

    #[test]
    fn a_protocol_switch_keeps_connection_and_upgrade() {
        let mut r = ResponseHeader::build(101, None).unwrap();
        r.insert_header("Connection", "Upgrade, X-Secret").unwrap();
        r.insert_header("Upgrade", "websocket").unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        strip_response_hop_by_hop(&mut r);
        assert!(r.headers.contains_key("connection"));
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");
        for gone in ["x-secret", "keep-alive"] {
            assert!(!r.headers.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn answers_without_hop_by_hop_headers_are_untouched() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Content-Type", "text/plain").unwrap();
        r.insert_header("X-Kept", "1").unwrap();
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers.len(), 2);
    }
}
