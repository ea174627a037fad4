//! Checks of a request head that come before routing, besides its framing:
//!
//! - an HTTP/1.1 request names its host in `Host` (RFC 9112 3.2: a server MUST
//!   answer 400 otherwise), an HTTP/2 one in `:authority` or `Host`; HTTP/1.0 may
//!   leave it out and is then routed on the routes without a `host`;
//! - header names with `_` are dropped, kept or refused (`underscores_in_headers`),
//!   because backends that fold `_` into `-` (CGI, WSGI, Rails, PHP) would read a
//!   client's `X_Auth_Role` as the `X-Auth-Role` that tollgate strips and sets.

use crate::config::UnderscoreHeaders;
use http::header::HeaderName;
use pingora::http::RequestHeader;

/// Why a request head is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    MissingHost,
    UnderscoreInName,
}

impl HeadRefusal {
    /// The reason, as the 400 answer's body states it.
    pub fn reason(self) -> &'static str {
        match self {
            HeadRefusal::MissingHost => "an HTTP/1.1 request needs a Host header",
            HeadRefusal::UnderscoreInName => "a header name contains `_`",
        }
    }
}

/// Applies both checks to `req`, dropping underscore headers when `underscores`
/// says so. Allocates only when such a header is there to drop.
pub fn check(req: &mut RequestHeader, underscores: UnderscoreHeaders) -> Result<(), HeadRefusal> {
    if names_no_host(req) {
        return Err(HeadRefusal::MissingHost);
    }
    if underscores == UnderscoreHeaders::Keep {
        return Ok(());
    }
    let has_underscore = |name: &HeaderName| name.as_str().as_bytes().contains(&b'_');
    if !req.headers.keys().any(has_underscore) {
        return Ok(());
    }
    if underscores == UnderscoreHeaders::Reject {
        return Err(HeadRefusal::UnderscoreInName);
    }
    let dropped: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| has_underscore(n))
        .cloned()
        .collect();
    for name in &dropped {
        log::debug!("dropped request header `{name}`: its name contains `_`");
        req.remove_header(name);
    }
    Ok(())
}

/// Whether a request that must name its host does not.
fn names_no_host(req: &RequestHeader) -> bool {
    let has_host = req.headers.contains_key(http::header::HOST);
    match req.version {
        http::Version::HTTP_11 => !has_host,
        http::Version::HTTP_2 | http::Version::HTTP_3 => !has_host && req.uri.authority().is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.set_version(version);
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn http_1_1_needs_a_host_and_http_1_0_does_not() {
        let drop = UnderscoreHeaders::Drop;
        let mut req = request(http::Version::HTTP_11, &[]);
        assert_eq!(check(&mut req, drop), Err(HeadRefusal::MissingHost));
        let mut req = request(http::Version::HTTP_11, &[("Host", "a")]);
        assert_eq!(check(&mut req, drop), Ok(()));
        let mut req = request(http::Version::HTTP_10, &[]);
        assert_eq!(check(&mut req, drop), Ok(()));
        let mut req = request(http::Version::HTTP_2, &[]);
        assert_eq!(check(&mut req, drop), Err(HeadRefusal::MissingHost));
    }

    #[test]
    fn underscore_headers_are_dropped_kept_or_refused() {
        let headers = [
            ("Host", "a"),
            ("X_Auth_Role", "admin"),
            ("X-Auth-User", "u"),
        ];
        let mut req = request(http::Version::HTTP_11, &headers);
        assert_eq!(check(&mut req, UnderscoreHeaders::Drop), Ok(()));
        assert!(!req.headers.contains_key("x_auth_role"));
        assert!(req.headers.contains_key("x-auth-user"));

        let mut req = request(http::Version::HTTP_11, &headers);
        assert_eq!(check(&mut req, UnderscoreHeaders::Keep), Ok(()));
        assert!(req.headers.contains_key("x_auth_role"));

        let mut req = request(http::Version::HTTP_11, &headers);
        assert_eq!(
            check(&mut req, UnderscoreHeaders::Reject),
            Err(HeadRefusal::UnderscoreInName)
        );
    }
}
