//! Reading a request's hash key (`hash_key`) and hashing it for the
//! consistent ring of [`super::hash`], without allocating: header and cookie
//! values, the path and the query are hashed as the bytes the request holds.
//!
//! A header is read as the backend will get it (see [`backend_values`]): a
//! header the route's auth policy sets (`copy_headers`, `claims_to_headers`,
//! `user_header`) or the client certificate's identity is its value, and a
//! client's header of a name tollgate strips (any identity header) is no key. An absent or empty key is no key: the request goes round robin
//! (as nginx's `hash` does with an empty key).

use crate::config::HashKey;
use crate::edge::client_certs::ClientCert;
use crate::forwarding::canonical_ip;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// The parts of one request a hash key is read from.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    /// The client address (after `trusted_proxies`).
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
    /// The headers the request's auth policy set for the backend, which take
    /// the place of the client's.
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// Names whose client values never reach a backend (every header an auth
    /// policy or a client certificate may set).
    pub stripped: &'a [HeaderName],
    /// The client certificate the listener verified, whose identity headers
    /// the backend gets.
    pub client_cert: Option<&'a ClientCert>,
    /// The normalized path the request was routed on.
    pub path: &'a str,
    /// The query with its `?` as the client sent it; empty when there is none.
    pub query: &'a [u8],
}

impl<'a> RequestParts<'a> {
    /// A request from `client` for `/` with `headers` and no query.
    pub fn of_client(client: IpAddr, headers: &'a HeaderMap) -> RequestParts<'a> {
        RequestParts {
            client,
            headers,
            identity: &[],
            stripped: &[],
            client_cert: None,
            path: "/",
            query: b"",
        }
    }
}

/// FNV-1a over bytes fed in parts, finished with the murmur3 finalizer: the
/// same value for the same bytes however they are cut. Stable across runs and
/// builds, so rings and sticky choices are reproducible.
#[derive(Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    pub(crate) const fn new() -> KeyHasher {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl HashKey {
    /// The hash of this key of `request`, after the bytes of `salt` (empty
    /// for the ring itself); `None` when the request has no such key or its
    /// value is empty.
    pub(crate) fn hash_of(&self, request: &RequestParts<'_>, salt: &[u8]) -> Option<u64> {
        let mut hasher = KeyHasher::new();
        hasher.write(salt);
        match self {
            HashKey::ClientIp => match canonical_ip(request.client) {
                IpAddr::V4(v4) => hasher.write(&v4.octets()),
                IpAddr::V6(v6) => hasher.write(&v6.octets()),
            },
            HashKey::Header(name) => hasher.write(header_value(request, name)?),
            HashKey::Cookie(name) => hasher.write(cookie_value(request.headers, name)?),
            HashKey::Path => hasher.write(request.path.as_bytes()),
            HashKey::Uri => {
                hasher.write(request.path.as_bytes());
                hasher.write(request.query);
            }
        }
        Some(hasher.finish())
    }
}

/// The values of header `name` the backend gets: the one the auth policy or
/// the client certificate sets, else the client's, unless tollgate strips
/// that header (then none).
pub fn backend_values<'r>(
    request: &RequestParts<'r>,
    name: &HeaderName,
) -> impl Iterator<Item = &'r HeaderValue> {
    let from_cert = || {
        let headers = request.client_cert?.header_refs();
        headers
            .into_iter()
            .find(|(set, _)| *set == name)
            .map(|(_, v)| v)
    };
    let set = request
        .identity
        .iter()
        .find(|(set, _)| set == name)
        .map(|(_, value)| value)
        .or_else(from_cert);
    let client = match set {
        None if !request.stripped.contains(name) => Some(request.headers.get_all(name).iter()),
        _ => None,
    };
    set.into_iter().chain(client.into_iter().flatten())
}

/// The first non-empty value of header `name` the backend gets.
fn header_value<'r>(request: &RequestParts<'r>, name: &HeaderName) -> Option<&'r [u8]> {
    backend_values(request, name)
        .map(HeaderValue::as_bytes)
        .find(|value| !value.is_empty())
}

/// The first non-empty value of cookie `name` in the request's `Cookie`
/// headers (RFC 6265 5.4: `a=1; b=2`, several headers under HTTP/2), as sent:
/// a quoted value keeps its quotes. Names are compared exactly.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let (pair_name, value) = split_pair(pair)?;
            (pair_name == name.as_bytes() && !value.is_empty()).then_some(value)
        })
}

/// `name=value` with the spaces around each trimmed; `None` without `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = pair.iter().position(|&b| b == b'=')?;
    Some((trim(&pair[..at]), trim(&pair[at + 1..])))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(http::header::COOKIE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let headers = cookies(&["a=1; sid=abc ;b=2", "sid=later; c=\"q\""]);
        assert_eq!(cookie_value(&headers, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&headers, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&headers, "c"), Some(&b"\"q\""[..]));
        assert_eq!(
            cookie_value(&headers, "SID"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(cookie_value(&headers, "d"), None);
        // An empty value is no value; a later one is taken.
        let headers = cookies(&["sid=; other", "sid=x"]);
        assert_eq!(cookie_value(&headers, "sid"), Some(&b"x"[..]));
        assert_eq!(cookie_value(&cookies(&["sid="]), "sid"), None);
        assert_eq!(cookie_value(&cookies(&["xsid=1; sidx=2"]), "sid"), None);
        assert_eq!(cookie_value(&HeaderMap::new(), "sid"), None);
    }

    fn hash_of_bytes(bytes: &[u8]) -> u64 {
        let mut h = KeyHasher::new();
        h.write(bytes);
        h.finish()
    }

    /// The client certificate's identity headers are the certificate's,
    /// never the client's headers of those names.
    #[test]
    fn client_certificate_headers_are_the_certificates() {
        let der = crate::edge::client_certs::partner_certificate("partner-a");
        let cert = ClientCert::from_der(&der).unwrap();
        let mut forged = HeaderMap::new();
        forged.insert("x-client-cert-subject", HeaderValue::from_static("CN=x"));
        let stripped = crate::edge::client_certs::IDENTITY_HEADERS;
        let with_cert = RequestParts {
            stripped: &stripped,
            client_cert: Some(&cert),
            ..RequestParts::of_client(IpAddr::from([10, 0, 0, 7]), &forged)
        };
        let subject = HashKey::parse("header:X-Client-Cert-Subject").unwrap();
        assert_eq!(
            subject.hash_of(&with_cert, b""),
            Some(hash_of_bytes(b"CN=partner-a,O=Partner A"))
        );
        let without = RequestParts {
            client_cert: None,
            ..with_cert
        };
        assert_eq!(subject.hash_of(&without, b""), None);
    }

    #[test]
    fn keys_hash_their_bytes_and_missing_keys_are_none() {
        let mut headers = cookies(&["sid=abc"]);
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let request = RequestParts {
            client: IpAddr::from([10, 0, 0, 7]),
            headers: &headers,
            identity: &[],
            stripped: &[],
            client_cert: None,
            path: "/a/b",
            query: b"?x=1",
        };
        let hash = |bytes: &[u8]| {
            let mut h = KeyHasher::new();
            h.write(bytes);
            h.finish()
        };
        let key = |text: &str| HashKey::parse(text).unwrap();
        assert_eq!(
            key("header:X-User").hash_of(&request, b""),
            Some(hash(b"alice"))
        );
        assert_eq!(key("cookie:sid").hash_of(&request, b""), Some(hash(b"abc")));
        assert_eq!(key("path").hash_of(&request, b""), Some(hash(b"/a/b")));
        assert_eq!(key("uri").hash_of(&request, b""), Some(hash(b"/a/b?x=1")));
        assert_eq!(
            key("client_ip").hash_of(&request, b""),
            Some(hash(&[10, 0, 0, 7]))
        );
        let mapped = RequestParts {
            client: "::ffff:10.0.0.7".parse().unwrap(),
            ..request
        };
        assert_eq!(
            key("client_ip").hash_of(&mapped, b""),
            Some(hash(&[10, 0, 0, 7]))
        );
        assert_eq!(key("header:X-Other").hash_of(&request, b""), None);
        assert_eq!(key("cookie:other").hash_of(&request, b""), None);
        headers.insert("x-user", HeaderValue::from_static(""));
        let request = RequestParts::of_client(IpAddr::from([10, 0, 0, 7]), &headers);
        assert_eq!(key("header:X-User").hash_of(&request, b""), None);
        // A header the auth policy sets is its value; a stripped one is none.
        let identity = [(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("bob"),
        )];
        let stripped = [
            HeaderName::from_static("x-user"),
            HeaderName::from_static("x-role"),
        ];
        let mut forged = HeaderMap::new();
        forged.insert("x-user", HeaderValue::from_static("forged"));
        forged.insert("x-role", HeaderValue::from_static("forged"));
        let authed = RequestParts {
            identity: &identity,
            stripped: &stripped,
            client_cert: None,
            ..RequestParts::of_client(request.client, &forged)
        };
        assert_eq!(
            key("header:X-User").hash_of(&authed, b""),
            Some(hash(b"bob"))
        );
        assert_eq!(key("header:X-Role").hash_of(&authed, b""), None);
        // A salt makes another hash of the same key.
        assert_ne!(
            key("path").hash_of(&request, b"s"),
            key("path").hash_of(&request, b"")
        );
    }
}
