//! Forward authentication, like nginx `auth_request` or Traefik ForwardAuth: each
//! request is asked about at the auth service with the client's Authorization
//! header and X-Forwarded-Method/-Uri/-For/-Host.
//!
//! - 2xx: pass; `copy_headers` of the answer go into the upstream request.
//! - 401/403: that status and the auth service's body go to the client.
//! - anything else, no answer within `timeout`, or no connection: 503. Fails closed.
//!
//! With `cache`, positive answers are reused per Authorization value for that
//! long, in a cache bounded to `cache_entries`.

use super::{AuthRequest, Identity, RejectReason, Rejection, Verdict};
use crate::config::ForwardAuthConfig;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use pingora_memory_cache::MemoryCache;
use std::sync::Arc;
use std::time::Duration;

/// Largest body of a 401/403 passed on to the client.
const MAX_REJECTION_BODY: usize = 64 * 1024;

/// A cached positive answer, keyed by a hash of the Authorization value; the value
/// itself is kept to rule out hash collisions.
#[derive(Clone)]
struct CachedPass {
    authorization: Arc<[u8]>,
    identity: Arc<Identity>,
}

pub struct ForwardAuth {
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    copy_headers: Vec<HeaderName>,
    cache: Option<(Duration, MemoryCache<Vec<u8>, CachedPass>)>,
}

impl ForwardAuth {
    pub fn new(config: &ForwardAuthConfig) -> Result<ForwardAuth, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("invalid url `{}`: {e}", config.url))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let copy_headers = config
            .copy_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("invalid header name `{h}`"))
            })
            .collect::<Result<_, _>>()?;
        let cache = config
            .cache
            .map(|ttl| (ttl, MemoryCache::new(config.cache_entries)));
        Ok(ForwardAuth {
            url,
            client,
            timeout: config.timeout,
            copy_headers,
            cache,
        })
    }

    pub fn identity_headers(&self) -> Vec<HeaderName> {
        self.copy_headers.clone()
    }

    /// Asks the auth service about `request`: X-Forwarded-Uri is the path it was
    /// routed on (as forwarded) with its query.
    pub async fn check(&self, request: &AuthRequest<'_>) -> Verdict {
        let req = request.head;
        let authorization = req.headers.get(AUTHORIZATION);
        if let (Some((_, cache)), Some(auth)) = (&self.cache, authorization) {
            if let (Some(hit), _) = cache.get(auth.as_bytes()) {
                if *hit.authorization == *auth.as_bytes() {
                    return Verdict::Pass((*hit.identity).clone());
                }
            }
        }
        let mut ask = self
            .client
            .get(self.url.clone())
            .timeout(self.timeout)
            .header("X-Forwarded-Method", req.method.as_str())
            .header("X-Forwarded-Uri", forwarded_uri(request))
            .header("X-Forwarded-For", request.client.to_string());
        if let Some(auth) = authorization {
            ask = ask.header(AUTHORIZATION, auth.clone());
        }
        if let Some(host) = req.headers.get(http::header::HOST) {
            ask = ask.header("X-Forwarded-Host", host.clone());
        }
        let answer = match ask.send().await {
            Ok(answer) => answer,
            Err(e) => {
                log::warn!("auth service {} did not answer: {e}", self.url);
                return Verdict::Reject(Rejection::unavailable());
            }
        };
        let status = answer.status().as_u16();
        match status {
            200..=299 => {
                let identity = self.identity_from(answer.headers());
                if let (Some((ttl, cache)), Some(auth)) = (&self.cache, authorization) {
                    let entry = CachedPass {
                        authorization: Arc::from(auth.as_bytes()),
                        identity: Arc::new(identity.clone()),
                    };
                    cache.put(auth.as_bytes(), entry, Some(*ttl));
                }
                Verdict::Pass(identity)
            }
            401 | 403 => Verdict::Reject(self.rejection_from(status, answer).await),
            _ => {
                log::warn!(
                    "auth service {} answered {status}: failing closed",
                    self.url
                );
                Verdict::Reject(Rejection::unavailable())
            }
        }
    }

    /// The identity in a positive answer: its `copy_headers`, and the first of
    /// them as the subject.
    fn identity_from(&self, headers: &http::HeaderMap) -> Identity {
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .copy_headers
            .iter()
            .filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        let subject = self
            .copy_headers
            .first()
            .and_then(|first| headers.iter().find(|(n, _)| n == first))
            .and_then(|(_, v)| v.to_str().ok())
            .map(str::to_string);
        Identity { headers, subject }
    }

    /// The client's answer to a 401/403 from the auth service: its status, body
    /// and content type; 401s carry `WWW-Authenticate` (the service's, or `Bearer`).
    async fn rejection_from(&self, status: u16, answer: reqwest::Response) -> Rejection {
        let mut headers = Vec::new();
        if let Some(ct) = answer.headers().get(CONTENT_TYPE) {
            headers.push((CONTENT_TYPE, ct.clone()));
        }
        if status == 401 {
            let challenge = answer
                .headers()
                .get(WWW_AUTHENTICATE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("Bearer"));
            headers.push((WWW_AUTHENTICATE, challenge));
        }
        let body = read_limited(answer, MAX_REJECTION_BODY).await;
        let reason = if status == 401 {
            RejectReason::Denied
        } else {
            RejectReason::Forbidden
        };
        Rejection {
            status,
            reason,
            headers,
            body,
        }
    }
}

/// Up to `limit` bytes of a body; what arrives before an error is kept.
async fn read_limited(mut answer: reqwest::Response, limit: usize) -> Bytes {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Bytes::from(body)
}

/// The path and query of `request` as it is forwarded.
fn forwarded_uri(request: &AuthRequest<'_>) -> String {
    match request.head.uri.query() {
        Some(query) => format!("{}?{query}", request.path),
        None => request.path.to_string(),
    }
}
