//! The pingora [`ProxyHttp`] implementation. Each hook calls into the parts of the
//! crate that own the logic and fixes only the order in which they run:
//!
//! `request_filter` (framing check, route, direct answers) -> `upstream_peer`
//! (balance over usable backends) -> `upstream_request_filter` (forwarding headers,
//! path rewrite) -> `upstream_response_filter` (hop-by-hop removal, passive success)
//! -> `logging` (metrics, access log, in-flight release).
//! Failures go through `fail_to_connect` / `error_while_proxy` (passive failure,
//! retry on another backend) and end in `fail_to_proxy` (the error answer).

use crate::access_log::{AccessEntry, AccessLog};
use crate::balance::{InFlightGuard, Tried};
use crate::config::{ClientTimeoutsConfig, EncodedSlashes, ErrorBody, RateKey, UnderscoreHeaders};
use crate::edge::compression::{BrotliCompressionBuilder, CompressionPolicy};
use crate::edge::hsts::{Hsts, HstsBuilder};
use crate::edge::respond::{send_answer, send_error};
use crate::filters::auth::{AuthRequest, Identity, Rejection, Verdict};
use crate::filters::framing::{self, Framing};
use crate::filters::rate_limit::{ceil_secs, Decision};
use crate::filters::request_head;
use crate::filters::request_path::{self, Refusal};
use crate::forwarding::{canonical_ip, set_forwarded_headers, strip_response_hop_by_hop};
use crate::metrics::metrics;
use crate::metrics::{RouteMetrics, NO_UPSTREAM};
use crate::router::{RouteId, RouteMatch};
use crate::topology::NamedRateLimit;
use crate::topology::{Route, RouteAction, Topology};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderName;
use pingora::http::RequestHeader;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use std::time::Instant;

/// Status logged when the client went away before an answer (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// The proxy service: reads the current topology once per request.
pub struct Proxy {
    topology: Arc<ArcSwap<Topology>>,
    access_log: AccessLog,
    settings: ProxySettings,
}

/// Process-wide settings of the proxy, from `server:`.
pub struct ProxySettings {
    /// TLS listeners by local address, with the Strict-Transport-Security value
    /// each adds to its answers.
    pub tls_listeners: HashMap<SocketAddr, Option<http::HeaderValue>>,
    pub max_request_body: u64,
    pub client_timeouts: ClientTimeoutsConfig,
    pub compression: Option<CompressionPolicy>,
    /// `server.encoded_slashes`: for routes that do not set their own.
    pub encoded_slashes: EncodedSlashes,
    pub underscores_in_headers: UnderscoreHeaders,
}

impl Proxy {
    pub fn new(
        topology: Arc<ArcSwap<Topology>>,
        access_log: AccessLog,
        settings: ProxySettings,
    ) -> Self {
        Proxy {
            topology,
            access_log,
            settings,
        }
    }
}

/// Per-request state, created when the request head has been read.
pub struct RequestCtx {
    started: Instant,
    /// The topology this request was routed on; kept for its whole life, so a
    /// topology swap never changes a request in flight.
    topology: Option<Arc<Topology>>,
    route: Option<RouteId>,
    /// The path to forward when it is not the one received (see `request_path`).
    forward_path: Option<String>,
    peer_ip: IpAddr,
    client_ip: IpAddr,
    upstream: Option<usize>,
    backend: Option<usize>,
    tried: Tried,
    retries_left: u32,
    in_flight: Option<InFlightGuard>,
    /// The backend's answer reached the client (as opposed to an answer of ours).
    backend_answered: bool,
    /// The status of an answer tollgate wrote itself.
    own_status: Option<u16>,
    /// What the route's auth policy established.
    identity: Option<Identity>,
    /// The request came over TLS.
    https: bool,
    /// Request body bytes read so far.
    body_bytes: u64,
    /// The route's rate-limit state after this request, for RateLimit-* headers.
    rate_limit: Option<(Arc<NamedRateLimit>, u32, Duration)>,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        Some(&self.topology.as_ref()?.routes[self.route?])
    }

    fn upstream(&self) -> Option<&crate::balance::Upstream> {
        Some(&self.topology.as_ref()?.upstreams[self.upstream?])
    }
}

impl Proxy {
    /// Applies the client timeouts and refuses a body announced larger than
    /// `max_request_body` (413, connection closed) before anything is read or
    /// forwarded. Returns false when the request was answered.
    async fn within_limits(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let timeouts = &self.settings.client_timeouts;
        session.set_read_timeout(Some(timeouts.read_body));
        session.set_write_timeout(Some(timeouts.send));
        // pingora counts keep-alive in whole seconds and takes 0 as "forever". It
        // turns keep-alive off while the process shuts down; that must stay off,
        // and so must it from the moment a handover to a new process begins, so
        // clients move to the new process.
        if crate::upgrade::handing_over() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(ceil_secs(timeouts.keepalive).max(1)));
        }
        let announced = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|len| len > self.settings.max_request_body) {
            ctx.own_status = Some(413);
            send_error(session, 413, "413 Content Too Large", true).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Applies the route's rate limit and auth policy, in that order, except that a
    /// limit keyed on `auth_subject` runs after the policy found the subject.
    /// Returns false when the request was answered (429, 401, 403, 503).
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<bool> {
        let limit = route.rate_limit.as_ref();
        let limit_after_auth = limit.is_some_and(|l| l.limiter.key == RateKey::AuthSubject);
        if let Some(limit) = limit.filter(|_| !limit_after_auth) {
            if !self.within_limit(session, ctx, route, limit).await? {
                return Ok(false);
            }
        }
        if let Some(auth) = &route.auth {
            let head = session.req_header();
            let request = AuthRequest {
                head,
                client: ctx.client_ip,
                path: ctx.forward_path.as_deref().unwrap_or(head.uri.path()),
            };
            match auth.policy.check(&request).await {
                Verdict::Pass(identity) => ctx.identity = Some(identity),
                Verdict::Reject(rejection) => {
                    metrics()
                        .auth_rejections
                        .with_label_values(&[
                            route.label.as_str(),
                            auth.name.as_str(),
                            rejection.reason.label(),
                        ])
                        .inc();
                    ctx.own_status = Some(rejection.status);
                    let rejection = match auth.error_body {
                        ErrorBody::Json => rejection.into_json(),
                        ErrorBody::Text => rejection,
                    };
                    send_rejection(session, &rejection).await?;
                    return Ok(false);
                }
            }
        }
        if let Some(limit) = limit.filter(|_| limit_after_auth) {
            if !self.within_limit(session, ctx, route, limit).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Counts the request against `limit`; answers 429 and returns false when the
    /// bucket is empty.
    async fn within_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        limit: &Arc<NamedRateLimit>,
    ) -> Result<bool> {
        let client_ip_text;
        let key: &[u8] = match &limit.limiter.key {
            RateKey::Global => b"",
            RateKey::ClientIp => {
                client_ip_text = ip_key(ctx.client_ip);
                &client_ip_text
            }
            RateKey::Header(name) => session
                .req_header()
                .headers
                .get(name)
                .map_or(&b""[..], |v| v.as_bytes()),
            RateKey::AuthSubject => {
                match ctx.identity.as_ref().and_then(|i| i.subject.as_deref()) {
                    Some(subject) => subject.as_bytes(),
                    None => {
                        // A policy that names no subject: fall back to the client.
                        client_ip_text = ip_key(ctx.client_ip);
                        &client_ip_text
                    }
                }
            }
        };
        match limit.limiter.check(key) {
            Decision::Allow { remaining, reset } => {
                ctx.rate_limit = Some((Arc::clone(limit), remaining, reset));
                Ok(true)
            }
            Decision::Deny { retry_after, reset } => {
                metrics()
                    .rate_limited
                    .with_label_values(&[route.label.as_str(), limit.name.as_str()])
                    .inc();
                ctx.own_status = Some(limit.status.as_u16());
                let mut header = ResponseHeader::build(limit.status, Some(7))?;
                header.insert_header(http::header::RETRY_AFTER, ceil_secs(retry_after).max(1))?;
                header.insert_header(RATELIMIT_LIMIT, limit.limit_header.clone())?;
                header.insert_header(RATELIMIT_REMAINING, 0)?;
                header.insert_header(RATELIMIT_RESET, ceil_secs(reset))?;
                let body: &'static [u8] = if limit.status == http::StatusCode::SERVICE_UNAVAILABLE {
                    b"503 Service Unavailable: too many requests\n"
                } else {
                    b"429 Too Many Requests\n"
                };
                send_answer(session, header, Bytes::from_static(body)).await?;
                Ok(false)
            }
        }
    }

    /// Checks the request head before routing: framing (see `framing`), the Host
    /// and header names (see `request_head`). Returns the reason of a refusal.
    /// Agreeing Content-Lengths are collapsed into one and underscore headers
    /// dropped on the way, as those modules say.
    fn head_refusal(&self, session: &mut Session) -> Result<Option<&'static str>> {
        let raw_head = if session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
        {
            session.as_http1().map(|h1| h1.get_headers_raw_bytes())
        } else {
            None
        };
        match framing::check(session.req_header(), raw_head.as_deref()) {
            Framing::Valid => {}
            Framing::CollapseContentLength(length) => {
                session
                    .req_header_mut()
                    .insert_header(http::header::CONTENT_LENGTH, length)?;
            }
            Framing::Refuse(reason) => return Ok(Some(reason)),
        }
        let underscores = self.settings.underscores_in_headers;
        Ok(request_head::check(session.req_header_mut(), underscores)
            .err()
            .map(|refusal| refusal.reason()))
    }

    /// Notes what the connection tells about the request: whether it came over TLS
    /// (arming HSTS where the listener sets it), its peer, and its client (through
    /// `trusted_proxies`).
    fn note_connection(&self, session: &mut Session, ctx: &mut RequestCtx, topology: &Topology) {
        if let Some(listener) = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|local| self.settings.tls_listeners.get(local))
        {
            ctx.https = true;
            if let Some(hsts) = session.downstream_modules_ctx.get_mut::<Hsts>() {
                hsts.set(listener.clone());
            }
        }
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| canonical_ip(a.ip()));
        ctx.client_ip = topology
            .trusted_proxies
            .client_ip(ctx.peer_ip, &session.req_header().headers);
    }

    /// What `req` matches in `topology`, and the path to forward when it is not the
    /// path received; or why the path is refused (see `request_path`).
    fn route_request(
        &self,
        topology: &Topology,
        req: &RequestHeader,
    ) -> std::result::Result<(Option<RouteMatch>, Option<String>), Refusal> {
        if !req.raw_path_is_utf8() && !target_path_is_utf8(req.raw_path()) {
            return Err(Refusal::NotUtf8);
        }
        // The target's authority (absolute-form, or HTTP/2's :authority) wins over
        // Host (RFC 9112 3.2.2), as it does for the Host pingora sends upstream:
        // routing must decide for the same virtual host the backend will serve.
        let host = req
            .uri
            .host()
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let routed = request_path::route(
            req.uri.path(),
            |path| topology.router.lookup(host, path),
            |found| {
                found
                    .and_then(|m| topology.routes[m.route()].encoded_slashes)
                    .unwrap_or(self.settings.encoded_slashes)
            },
        )?;
        let forward_path = match routed.forward {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(path) => Some(path),
        };
        Ok((routed.found, forward_path))
    }
}

/// Whether the path part of a request-target (up to `?`) is UTF-8.
fn target_path_is_utf8(target: &[u8]) -> bool {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    std::str::from_utf8(path).is_ok()
}

/// Answers 400 with `reason` and closes the connection.
async fn refuse(session: &mut Session, ctx: &mut RequestCtx, reason: &str) -> Result<bool> {
    ctx.own_status = Some(400);
    send_error(session, 400, &format!("400 Bad Request: {reason}"), true).await?;
    Ok(true)
}

/// Redirects a request for a `path_prefix` without its final `/` to the path with
/// it: 301 for GET and HEAD, 308 (method and body kept) for the others.
async fn add_slash(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    let path = ctx.forward_path.as_deref().unwrap_or(req.uri.path());
    let mut location = format!("{path}/");
    if let Some(query) = req.uri.query() {
        location.push('?');
        location.push_str(query);
    }
    let status = if matches!(req.method, http::Method::GET | http::Method::HEAD) {
        301
    } else {
        308
    };
    ctx.own_status = Some(status);
    let mut header = ResponseHeader::build(status, Some(2))?;
    header.insert_header(http::header::LOCATION, location)?;
    send_answer(session, header, Bytes::new()).await?;
    Ok(true)
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The rate-limit key of a client address: its bytes, without formatting.
fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Writes an auth policy's rejection.
async fn send_rejection(session: &mut Session, rejection: &Rejection) -> Result<()> {
    let mut header = ResponseHeader::build(rejection.status, Some(rejection.headers.len() + 2))?;
    for (name, value) in &rejection.headers {
        header.insert_header(name.clone(), value.clone())?;
    }
    if !header.headers.contains_key(http::header::CONTENT_TYPE) {
        header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    }
    send_answer(session, header, rejection.body.clone()).await
}

/// Metrics of requests that matched no route.
static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("-", NO_UPSTREAM));

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// Registers the downstream modules every answer passes through: pingora's
    /// response compression, on at the configured level when `server.compression`
    /// is set (each answer is then checked by [`CompressionPolicy::check_response`]),
    /// and [`Hsts`], which `request_filter` arms on TLS listeners that set `hsts`.
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        let level = self
            .settings
            .compression
            .as_ref()
            .map_or(0, CompressionPolicy::level);
        modules.add_module(
            pingora::modules::http::compression::ResponseCompressionBuilder::enable(level),
        );
        modules.add_module(Box::new(HstsBuilder));
        if self.settings.compression.is_some() {
            modules.add_module(Box::new(BrotliCompressionBuilder));
        }
    }

    /// Runs before pingora's modules see the request: hands brotli to our own
    /// module rather than pingora's (see `edge::compression`).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(compression) = &self.settings.compression {
            compression.route_brotli(session);
        }
        Ok(())
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            topology: None,
            route: None,
            forward_path: None,
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            upstream: None,
            backend: None,
            tried: Tried::default(),
            retries_left: 0,
            in_flight: None,
            backend_answered: false,
            own_status: None,
            identity: None,
            https: false,
            body_bytes: 0,
            rate_limit: None,
        }
    }

    /// Refuses a request head that cannot be trusted (400, connection closed),
    /// routes the request on its normalized path, and answers it here when it is
    /// refused, matches no route (404), needs its `/` (redirect), or is for a
    /// `respond` or `static` route.
    /// Returns `Ok(true)` when an answer was sent, `Ok(false)` to go on to a backend.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(reason) = self.head_refusal(session)? {
            return refuse(session, ctx, reason).await;
        }
        let topology = self.topology.load_full();
        self.note_connection(session, ctx, &topology);
        ctx.topology = Some(Arc::clone(&topology));
        let found = match self.route_request(&topology, session.req_header()) {
            Ok((found, forward_path)) => {
                ctx.forward_path = forward_path;
                found
            }
            Err(refusal) => return refuse(session, ctx, refusal.reason()).await,
        };
        let route_id = match found {
            Some(RouteMatch::Route(id)) => id,
            Some(RouteMatch::AddSlash(id)) => {
                ctx.route = Some(id);
                return add_slash(session, ctx).await;
            }
            None => {
                ctx.own_status = Some(404);
                send_error(
                    session,
                    404,
                    "404 Not Found: no route for this host and path",
                    false,
                )
                .await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route_id);
        let route = &topology.routes[route_id];
        if !route.allows_client(ctx.client_ip) {
            ctx.own_status = Some(403);
            send_error(session, 403, "403 Forbidden", false).await?;
            return Ok(true);
        }
        if !self.within_limits(session, ctx).await? {
            return Ok(true);
        }
        if !self.admit(session, ctx, route).await? {
            return Ok(true);
        }
        match &route.action {
            RouteAction::Respond(response) => {
                ctx.own_status = Some(response.status());
                response.send(session).await?;
                Ok(true)
            }
            RouteAction::Static(files) => {
                let received = session.req_header().uri.path().to_string();
                let path = ctx.forward_path.as_deref().unwrap_or(&received);
                let file_path = match &route.strip_prefix {
                    Some(prefix) => request_path::strip_prefix(path, prefix),
                    None => std::borrow::Cow::Borrowed(path),
                };
                let compression = self.settings.compression.as_ref();
                let status = files.serve(session, &file_path, path, compression).await?;
                ctx.own_status = Some(status);
                Ok(true)
            }
            RouteAction::Proxy { upstream } => {
                ctx.upstream = Some(*upstream);
                ctx.retries_left = topology.upstreams[*upstream].retries;
                Ok(false)
            }
        }
    }

    /// Chooses a usable backend not yet tried by this request. Errors with 503 when
    /// the upstream has no usable backend, 502 when every usable one was tried.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let topology = ctx
            .topology
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no topology"))?;
        let upstream = ctx
            .upstream
            .and_then(|i| topology.upstreams.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route has no upstream"))?;
        // Release the previous attempt's count before choosing again.
        ctx.in_flight = None;
        let Some(index) = upstream.select(ctx.client_ip, &ctx.tried) else {
            let (status, why) = if ctx.tried.is_empty() {
                (503, "no healthy backend")
            } else {
                (502, "no backend left to try")
            };
            return Err(Error::explain(ErrorType::HTTPStatus(status), why));
        };
        if !ctx.tried.is_empty() {
            crate::metrics::metrics()
                .upstream_retries
                .with_label_values(&[upstream.name.as_str()])
                .inc();
        }
        ctx.tried.add(index);
        ctx.backend = Some(index);
        let backend = &upstream.backends[index];
        ctx.in_flight = Some(InFlightGuard::new(&backend.state));
        Ok(Box::new(backend.peer.clone()))
    }

    /// Counts the failure against the backend and, while `retries` allow, asks
    /// pingora to call `upstream_peer` again for another backend.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.in_flight = None;
        if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
            upstream.record_failure(index);
            upstream.backends[index].state.metrics.requests.inc_error();
        }
        let retry = ctx.retries_left > 0;
        if retry {
            ctx.retries_left -= 1;
        }
        e.set_retry(retry);
        e
    }

    /// Counts upstream errors on fresh connections against the backend, and decides
    /// whether to try again. Only idempotent requests whose body is still buffered
    /// and of which nothing has reached the client yet are retried:
    /// - after a failure on a reused connection (the backend may have closed it while
    ///   idle), on any backend including the same one, without using up `retries`;
    /// - after a transport error (reset, closed, garbage) on a fresh connection, on
    ///   another backend while `retries` allow. Timeouts are not retried, so a slow
    ///   backend's load is not multiplied.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let from_backend = *e.esource() == ErrorSource::Upstream;
        if from_backend {
            if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
                upstream.backends[index].state.metrics.requests.inc_error();
                if !client_reused {
                    upstream.record_failure(index);
                }
            }
        }
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let transport_error = matches!(
            e.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::InvalidHTTPHeader
        );
        let retry = if !replayable {
            false
        } else if client_reused {
            if let Some(index) = ctx.backend {
                ctx.tried.remove(index);
            }
            true
        } else if from_backend && transport_error && ctx.retries_left > 0 {
            ctx.retries_left -= 1;
            true
        } else {
            false
        };
        e.set_retry(retry);
        if retry {
            ctx.in_flight = None;
        }
        e
    }

    /// Adds X-Forwarded-For/-Proto/-Host and X-Real-IP; removes every identity
    /// header any auth policy may set, then adds those this request's policy found;
    /// sends the path in origin-form as `request_path` forwards it, without the
    /// prefix when `strip_prefix` is set.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let trusted = ctx
            .topology
            .as_ref()
            .is_some_and(|t| t.trusted_proxies.contains(ctx.peer_ip));
        set_forwarded_headers(
            upstream_request,
            ctx.peer_ip,
            ctx.client_ip,
            trusted,
            if ctx.https { "https" } else { "http" },
        )?;
        // No client may forge an identity: every header a policy may set goes first.
        if let Some(topology) = &ctx.topology {
            for name in &topology.identity_headers {
                upstream_request.remove_header(name);
            }
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in &identity.headers {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }

        let strip = ctx.route().and_then(|r| r.strip_prefix.as_deref());
        let received = upstream_request.uri.path();
        let forward = ctx.forward_path.as_deref().unwrap_or(received);
        let forward = match strip {
            Some(prefix) => request_path::strip_prefix(forward, prefix),
            None => std::borrow::Cow::Borrowed(forward),
        };
        let raw = upstream_request.raw_path();
        let origin_form = raw.starts_with(b"/") || raw == b"*";
        if forward != received || !origin_form {
            let query = raw.iter().position(|&b| b == b'?').map(|at| &raw[at..]);
            let target = [forward.as_bytes(), query.unwrap_or_default()].concat();
            upstream_request.set_raw_path(&target).map_err(|e| {
                Error::because(ErrorType::HTTPStatus(400), "invalid forwarded path", e)
            })?;
        }
        Ok(())
    }

    /// Removes hop-by-hop headers from the backend's answer and counts the answer
    /// as a passive success.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        if !upstream_response.status.is_informational() || upstream_response.status == 101 {
            ctx.backend_answered = true;
            if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
                upstream.record_success(index);
            }
        }
        Ok(())
    }

    /// Counts the request body as it streams; a body without Content-Length that
    /// grows past `max_request_body` ends the request with 413.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > self.settings.max_request_body {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than max_request_body",
                ));
            }
        }
        Ok(())
    }

    /// Releases the backend's in-flight count as soon as its answer is complete,
    /// before the client has it, so the next pick sees the backend's true load.
    /// (`logging` releases it for requests that end any other way.)
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.in_flight = None;
        }
        Ok(None)
    }

    /// Adds RateLimit-Limit/-Remaining/-Reset to answers of rate-limited routes,
    /// checks whether the answer is to be compressed, and closes the connection
    /// after answers that end during a handover to a new process.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if crate::upgrade::handing_over() {
            session.set_keepalive(None);
        }
        if let Some(compression) = &self.settings.compression {
            compression.check_response(session, upstream_response);
        }
        if let Some((limit, remaining, reset)) = &ctx.rate_limit {
            upstream_response.insert_header(RATELIMIT_LIMIT, limit.limit_header.clone())?;
            upstream_response.insert_header(RATELIMIT_REMAINING, *remaining)?;
            upstream_response.insert_header(RATELIMIT_RESET, ceil_secs(*reset))?;
        }
        Ok(())
    }

    /// Answers a failed request: 504 when the backend timed out, 502 when it
    /// refused, reset or answered garbage, the status carried by an `HTTPStatus`
    /// error (503 no healthy backend), nothing when the client is gone. The
    /// connection is closed after an error answer.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // The client stopped sending its body (client_timeouts.read_body).
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            ctx.own_status = Some(code);
            let message = match code {
                400 => "400 Bad Request",
                408 => "408 Request Timeout: the request body stopped arriving",
                502 => "502 Bad Gateway: the backend failed to answer",
                503 => "503 Service Unavailable: no healthy backend",
                504 => "504 Gateway Timeout: the backend did not answer in time",
                _ => "tollgate could not complete the request",
            };
            if let Err(write_error) = send_error(session, code, message, true).await {
                log::debug!("could not send the {code} answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs once per request however it ended: counts it, logs it, and releases the
    /// backend's in-flight count.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.in_flight = None;
        let status = match (ctx.backend_answered, session.response_written()) {
            (_, Some(resp)) => resp.status.as_u16(),
            (false, None) => ctx.own_status.unwrap_or(CLIENT_CLOSED),
            (true, None) => CLIENT_CLOSED,
        };
        let elapsed = ctx.started.elapsed();
        let route = ctx.route();
        let route_metrics = route.map_or(&*UNROUTED, |r| &r.metrics);
        route_metrics.requests.inc(status);
        route_metrics.duration.observe(elapsed.as_secs_f64());

        let backend = ctx.upstream().zip(ctx.backend).map(|(u, i)| &u.backends[i]);
        if ctx.backend_answered {
            if let Some(b) = backend {
                b.state.metrics.requests.inc(status);
            }
        }

        let req = session.req_header();
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let uri = String::from_utf8_lossy(req.raw_path());
        self.access_log.log(&AccessEntry {
            client: ctx.client_ip,
            method: req.method.as_str(),
            uri: &uri,
            routed_path: ctx.forward_path.as_deref(),
            version: version_text(req.version),
            host: header(http::header::HOST),
            status,
            bytes_sent: session.as_ref().body_bytes_sent(),
            duration: elapsed,
            route: route.map_or("-", |r| r.label.as_str()),
            upstream: route.map_or(NO_UPSTREAM, |r| r.upstream_label.as_str()),
            backend: backend.map_or("-", |b| b.label.as_str()),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            request_headers: &req.headers,
            response_headers: session.response_written().map(|r| &r.headers),
        });
    }
}

fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}
