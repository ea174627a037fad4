//! Forward authentication, like nginx `auth_request` or Traefik ForwardAuth: each
//! request is asked about at the auth service with the client's credentials (its
//! Authorization header, or with `token_query` its bearer token in a query
//! parameter of the URL), the `pass_headers` it has, the identity of its
//! verified client certificate (X-Client-Cert-Subject/-Sha256, see
//! `edge::client_certs`), and X-Forwarded-Method/-Uri/-For/-Host; with
//! `server.request_id`, the request's
//! ID in its header, so the service's log lines match tollgate's. The ID is
//! never a credential, nor part of the cache key, even in `pass_headers`.
//!
//! - A request that carries none of the headers the auth service would be sent
//!   (Authorization, `pass_headers`, a client certificate) gets 401 at once;
//!   the service is not asked.
//! - 2xx: pass; `copy_headers` of the answer, and `identity_from_json` claims of
//!   its JSON body, go into the upstream request.
//! - a status in `unauthorized_statuses` (default 401) or `forbidden_statuses`
//!   (default 403): 401 or 403 to the client, with the auth service's body.
//! - anything else, no answer within `timeout`, no connection, or a body that is
//!   not the JSON `identity_from_json` needs: 503. Fails closed.
//!
//! With `cache`, positive answers are reused per credentials (the values of the
//! headers sent) for that long, in a cache bounded to `cache_entries`.
//!
//! With tracing, the service is sent the request's `traceparent`; a recorded
//! request's call has a CLIENT span of its own (see `observe::calls`), which
//! that `traceparent` names as the parent.

use super::{bearer_token, claim_text, AuthRequest, Identity, RejectReason, Rejection, Verdict};
use crate::config::ForwardAuthConfig;
use crate::edge::client_certs::ClientCert;
use crate::observe::calls::{AuthService, CallEnd, CallError, CallSpan, Callee};
use crate::observe::trace_context::{TRACEPARENT, TRACESTATE};
use crate::observe::tracing::RequestTrace;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use std::sync::Arc;
use std::time::Duration;

/// Largest body of an auth answer that is read (a 401/403 passed on, or the JSON
/// of `identity_from_json`).
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// A cached positive answer, keyed by a hash of the credentials; the credentials
/// themselves are kept to rule out hash collisions.
#[derive(Clone)]
struct CachedPass {
    credentials: Arc<[u8]>,
    identity: Arc<Identity>,
}

pub struct ForwardAuth {
    url: reqwest::Url,
    client: reqwest::Client,
    timeout: Duration,
    token_query: Option<String>,
    pass_headers: Vec<HeaderName>,
    copy_headers: Vec<HeaderName>,
    /// (header, claim)
    identity_from_json: Vec<(HeaderName, String)>,
    unauthorized_statuses: Vec<u16>,
    forbidden_statuses: Vec<u16>,
    cache: Option<(Duration, MemoryCache<Vec<u8>, CachedPass>)>,
    /// The service as the spans of its calls show it.
    service: Arc<AuthService>,
}

/// The HTTP client of forward policies: no proxy from the environment, no
/// redirects followed, `timeout` to connect.
/// Whether `name` is a W3C trace context header, which tracing sets itself.
fn is_trace_context(name: &HeaderName) -> bool {
    name == TRACEPARENT || name == TRACESTATE
}

pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl ForwardAuth {
    /// The policy `name` of `config`, asking through `client` (see [`http_client`]).
    pub fn new(name: &str, config: &ForwardAuthConfig, client: reqwest::Client) -> ForwardAuth {
        let names =
            |list: &[crate::config::HeaderName]| list.iter().map(|h| h.name().clone()).collect();
        ForwardAuth {
            url: config.url.clone(),
            client,
            timeout: config.timeout,
            token_query: config.token_query.clone(),
            pass_headers: names(&config.pass_headers),
            copy_headers: names(&config.copy_headers),
            identity_from_json: config
                .identity_from_json
                .iter()
                .map(|(header, claim)| (header.name().clone(), claim.clone()))
                .collect(),
            unauthorized_statuses: config.unauthorized_statuses.clone(),
            forbidden_statuses: config.forbidden_statuses.clone(),
            cache: config
                .cache
                .map(|ttl| (ttl, MemoryCache::new(config.cache_entries))),
            service: Arc::new(AuthService::new(
                name,
                &config.url,
                config.token_query.is_some(),
            )),
        }
    }

    pub(crate) fn identity_headers(&self) -> Vec<HeaderName> {
        let from_json = self.identity_from_json.iter().map(|(h, _)| h.clone());
        self.copy_headers.iter().cloned().chain(from_json).collect()
    }

    /// The credential headers of `request` that go to the auth service: its
    /// Authorization (unless the token goes in the query), `pass_headers`
    /// but for its request ID's, and the identity of its verified client
    /// certificate (`X-Client-Cert-Subject`, `-Sha256`), when it has one.
    fn sent_headers<'r>(
        &'r self,
        request: &AuthRequest<'r>,
    ) -> impl Iterator<Item = (&'r HeaderName, &'r HeaderValue)> {
        let req = request.head;
        let authorization = match self.token_query {
            None => req.headers.get(AUTHORIZATION).map(|v| (&AUTHORIZATION, v)),
            Some(_) => None,
        };
        let id_header = request.request_id.map(|(name, _)| name);
        let passed = self
            .pass_headers
            .iter()
            .filter(move |name| Some(*name) != id_header)
            .filter_map(|name| req.headers.get(name).map(|v| (name, v)));
        let certificate = request.client_cert.map(ClientCert::header_refs);
        authorization
            .into_iter()
            .chain(passed)
            .chain(certificate.into_iter().flatten())
    }

    /// The auth service's URL for `req`: `url`, with the bearer token in
    /// `token_query` when that is set. `None` when the token is needed and missing.
    fn url_for(&self, req: &RequestHeader) -> Option<reqwest::Url> {
        let Some(parameter) = &self.token_query else {
            return Some(self.url.clone());
        };
        let token = bearer_token(req)?;
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair(parameter, token);
        Some(url)
    }

    /// Asks the auth service about `request`, unless it lacks every
    /// credential (401 at once) or a cached pass answers for them. A call
    /// made for a recorded request has a CLIENT span of its own (see
    /// `observe::calls`), ended when the verdict is read.
    pub(crate) async fn check(&self, request: &AuthRequest<'_>) -> Verdict {
        let req = request.head;
        let token_url = self.url_for(req);
        let has_token = self.token_query.is_some() && token_url.is_some();
        if !has_token && self.sent_headers(request).next().is_none() {
            return Verdict::Reject(Rejection::unauthorized(
                RejectReason::MissingCredentials,
                "401 Unauthorized: credentials are needed\n",
            ));
        }
        let url = token_url.unwrap_or_else(|| self.url.clone());
        let credentials = self.cache.as_ref().map(|_| self.credentials(request));
        if let (Some((_, cache)), Some(key)) = (&self.cache, &credentials) {
            if let (Some(hit), _) = cache.get(key) {
                if *hit.credentials == **key {
                    return Verdict::Pass((*hit.identity).clone());
                }
            }
        }
        let span = request.trace.and_then(RequestTrace::call);
        let ask = self.ask(request, url, span.as_ref().map(CallSpan::traceparent));
        let (verdict, end) = self.decide(ask, credentials).await;
        if let Some(span) = span {
            span.finish(Callee::Auth(Arc::clone(&self.service)), end);
        }
        verdict
    }

    /// The request to the auth service about `request`, at `url`:
    /// X-Forwarded-Uri is the path it was routed on (as forwarded) with its
    /// query; with tracing, `traceparent` (and `tracestate`) as the backend
    /// gets them, but for `call_parent`, the call's own span, when it has one.
    fn ask(
        &self,
        request: &AuthRequest<'_>,
        url: reqwest::Url,
        call_parent: Option<HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let req = request.head;
        let mut ask = self
            .client
            .get(url)
            .timeout(self.timeout)
            .header("X-Forwarded-Method", req.method.as_str())
            .header("X-Forwarded-Uri", forwarded_uri(request))
            .header("X-Forwarded-For", request.client.to_string());
        let traced = request.trace.is_some();
        for (name, value) in self.sent_headers(request) {
            if !(traced && is_trace_context(name)) {
                ask = ask.header(name.clone(), value.clone());
            }
        }
        if let Some((name, id)) = request.request_id {
            ask = ask.header(name.clone(), id.clone());
        }
        // The auth service's spans join the request's trace, under the
        // call's span or, unrecorded, under tollgate's.
        if let Some(trace) = request.trace {
            ask = ask.header(
                &TRACEPARENT,
                call_parent.unwrap_or_else(|| trace.traceparent.clone()),
            );
            if let Some(state) = req.headers.get(&TRACESTATE) {
                ask = ask.header(&TRACESTATE, state.clone());
            }
        }
        if let Some(host) = req.headers.get(http::header::HOST) {
            ask = ask.header("X-Forwarded-Host", host.clone());
        }
        ask
    }

    /// Sends `ask` and reads the verdict of its answer (see the module's
    /// doc); a pass is cached under `credentials`, with `cache`. Also how the
    /// call ended, for its span: an error when the policy fails closed.
    async fn decide(
        &self,
        ask: reqwest::RequestBuilder,
        credentials: Option<Vec<u8>>,
    ) -> (Verdict, CallEnd) {
        let unavailable = || Verdict::Reject(Rejection::unavailable());
        let answer = match ask.send().await {
            Ok(answer) => answer,
            Err(e) => {
                log::warn!("auth service {} did not answer: {e}", self.url);
                return (unavailable(), CallEnd::failed(CallError::of_request(&e)));
            }
        };
        let status = answer.status().as_u16();
        if (200..=299).contains(&status) {
            let Some(identity) = self.identity_from(answer).await else {
                return (unavailable(), CallEnd::unusable(status, CallError::Body));
            };
            if let (Some((ttl, cache)), Some(key)) = (&self.cache, credentials) {
                let entry = CachedPass {
                    credentials: Arc::from(key.as_slice()),
                    identity: Arc::new(identity.clone()),
                };
                cache.put(&key, entry, Some(*ttl));
            }
            return (Verdict::Pass(identity), CallEnd::answered(status));
        }
        let refused = if self.unauthorized_statuses.contains(&status) {
            Some(http::StatusCode::UNAUTHORIZED)
        } else if self.forbidden_statuses.contains(&status) {
            Some(http::StatusCode::FORBIDDEN)
        } else {
            None
        };
        if let Some(refused) = refused {
            let rejection = rejection_from(refused, answer).await;
            return (Verdict::Reject(rejection), CallEnd::answered(status));
        }
        log::warn!(
            "auth service {} answered {status}: failing closed",
            self.url
        );
        (unavailable(), CallEnd::unusable(status, CallError::Status))
    }

    /// The values of everything sent that identifies the client: the cache key.
    fn credentials(&self, request: &AuthRequest<'_>) -> Vec<u8> {
        let req = request.head;
        let mut key = Vec::new();
        if self.token_query.is_some() {
            key.extend_from_slice(bearer_token(req).unwrap_or_default().as_bytes());
            key.push(0);
        }
        for (name, value) in self.sent_headers(request) {
            key.extend_from_slice(name.as_str().as_bytes());
            key.push(b':');
            key.extend_from_slice(value.as_bytes());
            key.push(0);
        }
        key
    }

    /// The identity in a positive answer: its `copy_headers`, and the
    /// `identity_from_json` claims of its body; the subject is the first of the
    /// latter, else of the former. `None` when the body is not the JSON needed.
    async fn identity_from(&self, answer: reqwest::Response) -> Option<Identity> {
        let mut headers: Vec<(HeaderName, HeaderValue)> = self
            .copy_headers
            .iter()
            .filter_map(|name| {
                answer
                    .headers()
                    .get(name)
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect();
        let mut subject = self
            .copy_headers
            .first()
            .and_then(|first| headers.iter().find(|(n, _)| n == first))
            .and_then(|(_, v)| v.to_str().ok())
            .map(str::to_string);
        if self.identity_from_json.is_empty() {
            return Some(Identity { headers, subject });
        }
        let body = read_limited(answer, MAX_ANSWER_BODY).await;
        let claims: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(claims) => claims,
            Err(e) => {
                log::warn!(
                    "auth service {} answered 2xx without JSON claims: {e}",
                    self.url
                );
                return None;
            }
        };
        let mut first = true;
        for (header, claim) in &self.identity_from_json {
            let Some(text) = claim_text(&claims, claim) else {
                first = false;
                continue;
            };
            match HeaderValue::from_str(&text) {
                Ok(value) => {
                    if first {
                        subject = Some(text);
                    }
                    headers.push((header.clone(), value));
                }
                Err(_) => log::warn!("claim `{claim}` cannot be a header value; {header} not set"),
            }
            first = false;
        }
        Some(Identity { headers, subject })
    }
}

/// The client's answer `status` (401 or 403) to a refusal of the auth service:
/// the service's body and content type; 401s carry `WWW-Authenticate` (the
/// service's, or `Bearer`).
async fn rejection_from(status: http::StatusCode, answer: reqwest::Response) -> Rejection {
    let mut headers = Vec::new();
    if let Some(ct) = answer.headers().get(CONTENT_TYPE) {
        headers.push((CONTENT_TYPE, ct.clone()));
    }
    if status == http::StatusCode::UNAUTHORIZED {
        let challenge = answer
            .headers()
            .get(WWW_AUTHENTICATE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("Bearer"));
        headers.push((WWW_AUTHENTICATE, challenge));
    }
    let body = read_limited(answer, MAX_ANSWER_BODY).await;
    let reason = if status == http::StatusCode::UNAUTHORIZED {
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
