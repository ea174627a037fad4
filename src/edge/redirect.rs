//! Answers on a `redirect_https: true` listener: every request but an ACME
//! server's HTTP-01 one (answered with its key authorization) gets a redirect
//! (the listener's `redirect_status`, 308 by default) to the same host, path and
//! query over HTTPS, on the TLS listener's port (left out when it is 443).

use crate::acme::challenge::Http01Answers;
use crate::edge::respond::whole_answer;
use crate::listen::ByListener;
use crate::observe::request_id::RequestIds;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The port `https://` URLs mean when they name none.
const HTTPS_DEFAULT_PORT: u16 = 443;

pub(crate) struct HttpsRedirect {
    /// The TLS listener's port; `None` for 443.
    pub https_port: Option<u16>,
    /// The status each redirecting listener answers with, by its address.
    statuses: ByListener<http::StatusCode>,
    /// ACME HTTP-01 requests are answered, not redirected.
    http01: Arc<Http01Answers>,
    /// `server.request_id`: each answer carries the request's ID.
    request_ids: Option<RequestIds>,
}

impl HttpsRedirect {
    /// Redirects to `https_port`; `statuses` gives each listener's status.
    pub fn new(
        https_port: u16,
        statuses: ByListener<http::StatusCode>,
        http01: Arc<Http01Answers>,
        request_ids: Option<RequestIds>,
    ) -> Self {
        HttpsRedirect {
            https_port: (https_port != HTTPS_DEFAULT_PORT).then_some(https_port),
            statuses,
            http01,
            request_ids,
        }
    }

    /// The `Location` for a request to `host` (a Host header, port allowed) and
    /// `target` (the path and query as sent); `None` when the host is unusable.
    pub fn location(&self, host: &str, target: &str) -> Option<String> {
        let name = host_without_port(host.trim())?;
        let valid = name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
        if name.is_empty() || !valid {
            return None;
        }
        let target = if target.starts_with('/') { target } else { "/" };
        Some(match self.https_port {
            Some(port) => format!("https://{name}:{port}{target}"),
            None => format!("https://{name}{target}"),
        })
    }
}

fn host_without_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return host.find(']').map(|end| &host[..=end]);
    }
    Some(match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    })
}

#[async_trait]
impl ServeHttp for HttpsRedirect {
    /// The answer (see [`HttpsRedirect::answer`]), with the request's ID when
    /// `server.request_id` is set.
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut response = self.answer(session);
        if let Some(ids) = &self.request_ids {
            let (id, _) = ids.choose(&session.req_header().headers, ids.trusts_incoming());
            response.headers_mut().insert(ids.header().clone(), id);
        }
        response
    }
}

impl HttpsRedirect {
    /// The key authorization of an ACME HTTP-01 request, else the redirect.
    fn answer(&self, session: &ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        if let Some(key_authorization) = self.http01.answer(req.uri.path()) {
            return whole_answer(
                http::StatusCode::OK,
                "text/plain",
                key_authorization.into_bytes(),
            );
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let target = String::from_utf8_lossy(req.raw_path()).into_owned();
        match self
            .location(host, &target)
            .and_then(|l| http::HeaderValue::from_str(&l).ok())
        {
            Some(location) => {
                let status = session
                    .server_addr()
                    .and_then(|a| a.as_inet())
                    .and_then(|a| self.statuses.get(a).copied())
                    .unwrap_or(http::StatusCode::PERMANENT_REDIRECT);
                let mut response = whole_answer(status, "text/plain", Vec::new());
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
                response
            }
            None => whole_answer(
                http::StatusCode::BAD_REQUEST,
                "text/plain",
                b"400 Bad Request: a Host header is needed to redirect to HTTPS\n".to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let r = HttpsRedirect::new(443, Default::default(), Default::default(), None);
        assert_eq!(
            r.location("example.com", "/a?b=c").as_deref(),
            Some("https://example.com/a?b=c")
        );
        assert_eq!(
            r.location("example.com:80", "/").as_deref(),
            Some("https://example.com/")
        );
        let r = HttpsRedirect::new(8443, Default::default(), Default::default(), None);
        assert_eq!(
            r.location("[::1]:8080", "/x").as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(r.location("", "/x"), None);
        assert_eq!(r.location("evil.com/x", "/"), None);
        assert_eq!(r.location("a b", "/"), None);
    }
}
