//! What names a stored answer: the primary key (what the origin is told of the
//! request: upstream, scheme, host, the path and query as forwarded) and, for
//! answers with `Vary`, the variance (the values of the named request headers,
//! as the origin sees them).

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The key of an answer: the request's `parts` as the origin sees them, in a
/// fixed order (upstream, scheme, host, forwarded host, the path and query as
/// forwarded, so every spelling of one path shares an entry). Each part is
/// length-prefixed, so no two keys run together.
pub(crate) fn cache_key(parts: &[&[u8]]) -> CacheKey {
    let mut primary = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        primary.extend_from_slice(&len.to_be_bytes());
        primary.extend_from_slice(part);
    }
    CacheKey::new(primary, "")
}

/// The request's host: the URI's authority (HTTP/2), else `Host`, lower-cased.
pub(crate) fn request_host(request: &RequestHeader) -> Vec<u8> {
    let host = match request.uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => request
            .headers
            .get(http::header::HOST)
            .map_or(&b""[..], |v| v.as_bytes()),
    };
    host.to_ascii_lowercase()
}

/// Whether the stored answer `meta` has a `Vary`.
pub(crate) fn varies(meta: &CacheMeta) -> bool {
    meta.headers().contains_key(http::header::VARY)
}

/// The variance of `request` for the stored answer `meta`: `None` when the
/// answer has no `Vary`. Each named header's value is the one the origin gets:
/// what tollgate sets (`sent`: its auth's identity, its X-Forwarded-Proto and
/// -Host) before the client's own, none for a header in `stripped` (those
/// tollgate removes from every client request), all values of a repeated
/// header joined. `Accept-Encoding` is reduced to the codings it accepts,
/// sorted, so `gzip, br` and `br,gzip` share a variant.
pub(crate) fn variance(
    meta: &CacheMeta,
    request: &RequestHeader,
    sent: &[(http::HeaderName, http::HeaderValue)],
    stripped: &[http::HeaderName],
) -> Option<HashBinary> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let value = header_value(&name, request, sent, stripped);
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

fn header_value(
    name: &str,
    request: &RequestHeader,
    sent: &[(http::HeaderName, http::HeaderValue)],
    stripped: &[http::HeaderName],
) -> Vec<u8> {
    if let Some((_, value)) = sent.iter().find(|(n, _)| n.as_str() == name) {
        return value.as_bytes().to_vec();
    }
    if stripped.iter().any(|n| n.as_str() == name) {
        return Vec::new();
    }
    let values: Vec<&[u8]> = request
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = values.join(&b","[..]);
    if name == "accept-encoding" {
        return accepted_codings(&joined);
    }
    joined
}

/// The codings an `Accept-Encoding` value accepts (q above 0), lower-cased,
/// sorted and comma-joined.
fn accepted_codings(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let mut codings: Vec<String> = text
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .to_ascii_lowercase()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!coding.is_empty() && !refused).then_some(coding)
        })
        .collect();
    codings.sort();
    codings.dedup();
    codings.join(",").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;
    use pingora::http::ResponseHeader;
    use std::time::SystemTime;

    fn meta(vary: Option<&str>) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        if let Some(vary) = vary {
            header.insert_header("vary", vary).unwrap();
        }
        CacheMeta::new(SystemTime::now(), SystemTime::now(), 0, 0, header)
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    #[test]
    fn keys_differ_in_every_part_and_cannot_run_together() {
        let key = |parts: &[&[u8]]| cache_key(parts).primary_bin();
        let base = key(&[b"app", b"http", b"a.test", b"/x?y=1"]);
        for other in [
            key(&[b"api", b"http", b"a.test", b"/x?y=1"]),
            key(&[b"app", b"https", b"a.test", b"/x?y=1"]),
            key(&[b"app", b"http", b"b.test", b"/x?y=1"]),
            key(&[b"app", b"http", b"a.test", b"/x?y=2"]),
            key(&[b"ap", b"phttp", b"a.test", b"/x?y=1"]),
        ] {
            assert_ne!(other, base);
        }
        assert_eq!(key(&[b"app", b"http", b"a.test", b"/x?y=1"]), base);
    }

    #[test]
    fn the_host_is_the_authority_or_host_lower_cased() {
        assert_eq!(
            request_host(&request(&[("host", "Shop.Test:8080")])),
            b"shop.test:8080"
        );
        let mut h2 = RequestHeader::build("GET", b"/x", None).unwrap();
        h2.set_uri("https://API.test/x".parse().unwrap());
        assert_eq!(request_host(&h2), b"api.test");
    }

    #[test]
    fn variance_follows_the_named_headers_only() {
        assert!(variance(&meta(None), &request(&[]), &[], &[]).is_none());
        let m = meta(Some("Accept-Language"));
        let v = |headers: &[(&str, &str)]| variance(&m, &request(headers), &[], &[]);
        let en = v(&[("accept-language", "en")]);
        let fr = v(&[("accept-language", "fr")]);
        let en_other = v(&[("accept-language", "en"), ("x-other", "1")]);
        assert_ne!(en, fr);
        assert_eq!(en, en_other);
    }

    #[test]
    fn accept_encoding_is_compared_as_a_set_of_accepted_codings() {
        let m = meta(Some("accept-encoding"));
        let v = |ae: &str| variance(&m, &request(&[("accept-encoding", ae)]), &[], &[]);
        assert_eq!(v("gzip, br"), v("br,GZIP"));
        assert_eq!(v("gzip, zstd;q=0"), v("gzip"));
        assert_eq!(v("gzip, zstd;Q=0.0"), v("gzip"));
        assert_eq!(v("gzip, zstd;Q=0.0"), v("gzip"));
        assert_ne!(v("gzip"), v("identity"));
        assert_ne!(v("gzip"), variance(&m, &request(&[]), &[], &[]));
    }

    #[test]
    fn identity_set_by_auth_wins_over_what_the_client_sent() {
        let m = meta(Some("X-Auth-User"));
        let ann = [(
            http::HeaderName::from_static("x-auth-user"),
            http::HeaderValue::from_static("ann"),
        )];
        let stripped = [ann[0].0.clone()];
        let forged = request(&[("x-auth-user", "bob")]);
        let honest = request(&[]);
        let v = |r: &RequestHeader, identity: &[_]| variance(&m, r, identity, &stripped);
        assert_eq!(v(&forged, &ann), v(&honest, &ann));
        // Without an identity, the forged value is not what the origin sees.
        assert_eq!(v(&forged, &[]), v(&honest, &[]));
        assert_ne!(v(&honest, &ann), v(&honest, &[]));
    }
}
