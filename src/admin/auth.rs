//! Who may use the admin API: anyone who reaches a loopback listener with no
//! `admin_token_file`, else whoever sends `Authorization: Bearer TOKEN`.

use pingora::http::RequestHeader;
use sha2::Digest;
use subtle::ConstantTimeEq;

/// The token in `path`, without surrounding whitespace; an error when the
/// file cannot be read or holds no token.
pub(super) fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "server.admin_token_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "server.admin_token_file: {} holds no token",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// Whether `request` comes from a page of another site, which a browser
/// would send on its own: a cross-site `Sec-Fetch-Site`, an `Origin` other
/// than the `Host` asked, or, when no token is required, a `Host` that is a
/// DNS name (a name rebound to 127.0.0.1 by another site's DNS). Such
/// requests are refused whatever their credentials (403).
pub(super) fn cross_site(request: &RequestHeader, token_required: bool) -> Option<&'static str> {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site.eq_ignore_ascii_case("cross-site")) {
        return Some("a request from another site's page");
    }
    let host = header("host").unwrap_or("");
    if let Some(origin) = header("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !origin_host.eq_ignore_ascii_case(host) {
            return Some("a request from another origin");
        }
    }
    if !token_required && !is_address_or_localhost(host) {
        return Some("the admin API answers http://IP:PORT or localhost only");
    }
    None
}

/// `127.0.0.1:9092`, `[::1]:9092`, `localhost:9092` (the port optional).
fn is_address_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether `request` may use the API; `Ok` says how it was let in (for the
/// log), `Err` why not.
pub(super) fn check(request: &RequestHeader, token: Option<&str>) -> Result<&'static str, String> {
    let Some(token) = token else {
        return Ok("loopback, no token required");
    };
    let given = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, credentials) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
        })
        .map(str::trim)
        .ok_or("send Authorization: Bearer TOKEN (the token of server.admin_token_file)")?;
    // Digests of equal length, so the comparison tells nothing of the length.
    let digest = |text: &str| sha2::Sha256::digest(text.as_bytes());
    if bool::from(digest(given).ct_eq(&digest(token))) {
        Ok("bearer token")
    } else {
        Err("the token is wrong".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/api/status", None).unwrap();
        if let Some(value) = authorization {
            request.insert_header("Authorization", value).unwrap();
        }
        request
    }

    #[test]
    fn a_token_is_required_only_when_there_is_one() {
        assert!(check(&request(None), None).is_ok());
        assert!(check(&request(None), Some("s3cret")).is_err());
        assert!(check(&request(Some("Bearer nope")), Some("s3cret")).is_err());
        assert!(check(&request(Some("Basic s3cret")), Some("s3cret")).is_err());
        assert_eq!(
            check(&request(Some("Bearer s3cret")), Some("s3cret")),
            Ok("bearer token")
        );
        assert!(check(&request(Some("BEARER s3cret")), Some("s3cret")).is_ok());
    }

    fn with(headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut request = request(None);
        for (name, value) in headers {
            request.insert_header(*name, *value).unwrap();
        }
        request
    }

    #[test]
    fn pages_of_other_sites_are_refused() {
        assert!(cross_site(&with(&[("Host", "127.0.0.1:9092")]), false).is_none());
        assert!(cross_site(&with(&[("Host", "localhost:9092")]), false).is_none());
        assert!(cross_site(&with(&[("Host", "[::1]:9092")]), false).is_none());
        let same = [
            ("Host", "127.0.0.1:9092"),
            ("Origin", "http://127.0.0.1:9092"),
        ];
        assert!(cross_site(&with(&same), false).is_none());
        let other = [
            ("Host", "127.0.0.1:9092"),
            ("Origin", "https://evil.example"),
        ];
        assert!(cross_site(&with(&other), false).is_some());
        let fetch = [("Host", "127.0.0.1:9092"), ("Sec-Fetch-Site", "cross-site")];
        assert!(cross_site(&with(&fetch), false).is_some());
        // A rebound name: refused without a token, fine with one.
        assert!(cross_site(&with(&[("Host", "evil.example:9092")]), false).is_some());
        assert!(cross_site(&with(&[("Host", "admin.internal:9092")]), true).is_none());
    }
}
