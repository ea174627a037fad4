//! The pingora [`ProxyHttp`] implementation. Each hook calls into the parts of the
//! crate that own the logic and fixes only the order in which they run:
//!
//! `request_filter` (head checks, route, admission, direct answers; see
//! `admission`; a body the route buffers is read here and the request handed
//! to a subrequest, see `buffering`) -> the cache hooks on cached routes (lookup, lock, purge; see
//! `caching`), which answer hits here -> `upstream_peer` (balance over usable
//! backends) ->
//! `upstream_request_filter` (forwarding headers, path) ->
//! `upstream_response_filter` (hop-by-hop removal, passive success) ->
//! `response_cache_filter` (whether to store the answer) -> `response_filter`
//! (X-Cache-Status, RateLimit-*, compression, handover) -> `logging` (metrics,
//! access log, in-flight release). Failures go through `fail_to_connect` /
//! `error_while_proxy` (passive failure, retry on another backend) and end in
//! `fail_to_proxy` (the error answer; see `answer`).

mod admission;
mod answer;
mod buffering;
mod caching;
mod ctx;
mod logging;
mod mirroring;
mod upstream;

pub use ctx::RequestCtx;

use crate::access_log::AccessLog;
use crate::config::{ClientTimeoutsConfig, EncodedSlashes, UnderscoreHeaders};
use crate::edge::answer_headers::AnswerHeadersBuilder;
use crate::edge::compression::{BrotliCompressionBuilder, CompressionPolicy};
use crate::edge::header_rules::{ResponseHeaderRules, ResponseHeaderRulesBuilder};
use crate::edge::request_body::BufferLimits;
use crate::filters::request_path;
use crate::forwarding::strip_response_hop_by_hop;
use crate::observe::request_id::{RequestIdHeader, RequestIds};
use crate::topology::{Route, RouteAction, Topology};
use admission::Routed;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::PurgeStatus;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::Duration;

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
    pub tls_listeners: crate::listen::ByListener<crate::edge::answer_headers::ListenerHeaders>,
    pub max_request_body: u64,
    pub client_timeouts: ClientTimeoutsConfig,
    pub compression: Option<CompressionPolicy>,
    /// `server.encoded_slashes`: for routes that do not set their own.
    pub encoded_slashes: EncodedSlashes,
    pub underscores_in_headers: UnderscoreHeaders,
    /// The HTTP-01 answers of ACME orders under way, when `server.acme` is set.
    pub http01: Option<Arc<crate::acme::challenge::Http01Answers>>,
    /// `server.request_buffering`: for routes that do not set their own.
    pub buffering_default: bool,
    /// The bounds of buffered request bodies.
    pub buffer_limits: BufferLimits,
    /// `server.request_id`, when set.
    pub request_ids: Option<RequestIds>,
    /// `server.tracing`, when set.
    pub tracer: Option<crate::observe::tracing::Tracer>,
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

    /// The answer to an ACME server's HTTP-01 request for a token of an
    /// order under way; answered before routing, whatever the routes say.
    fn acme_answer(&self, session: &Session) -> Option<crate::filters::Answer> {
        let answers = self.settings.http01.as_ref()?;
        let key_authorization = answers.answer(session.req_header().uri.path())?;
        Some(crate::filters::Answer::text(
            http::StatusCode::OK,
            key_authorization,
        ))
    }

    /// Carries out the action of `route`, the request's route: answers it here
    /// (respond, static) and returns `Ok(true)`, or readies the upstream to
    /// proxy to (a split's: that of the arm chosen for the request, which
    /// everything per upstream then follows) and returns `Ok(false)`.
    async fn act(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Result<bool> {
        match &route.action {
            RouteAction::Respond(response) => {
                ctx.answered(response.status());
                response.send(session).await?;
                Ok(true)
            }
            RouteAction::Static(files) => {
                let received = session.req_header().uri.path().to_string();
                let path = ctx.forward_path(&received).to_string();
                let file_path = match &route.strip_prefix {
                    Some(prefix) => request_path::strip_prefix(&path, prefix),
                    None => std::borrow::Cow::Borrowed(path.as_str()),
                };
                let compression = self.settings.compression.as_ref();
                let status = files.serve(session, &file_path, &path, compression).await?;
                ctx.answered(status);
                Ok(true)
            }
            RouteAction::Proxy { upstream } => {
                ready_upstream(ctx, *upstream);
                Ok(false)
            }
            RouteAction::Split(split) => {
                // The subrequest of a buffered request keeps its main request's arm.
                let arm = match ctx.arm {
                    Some(arm) => arm,
                    None => split.choose(&upstream::request_parts(session.req_header(), ctx)),
                };
                let Some(chosen) = split.arms().get(arm) else {
                    return Error::e_explain(ErrorType::InternalError, "no such arm of the split");
                };
                ctx.arm = Some(arm);
                ready_upstream(ctx, chosen.upstream);
                Ok(false)
            }
        }
    }
}

/// Readies the request to go to `topology.upstreams[upstream]`: the upstream
/// its backends are chosen from, and the retries that upstream allows.
fn ready_upstream(ctx: &mut RequestCtx, upstream: usize) {
    ctx.upstream = Some(upstream);
    ctx.retries_left = ctx
        .topology
        .as_ref()
        .and_then(|t| t.upstreams.get(upstream))
        .map_or(0, |u| u.retries);
}

/// Arms the module that gives every answer of `route` its `response_headers`
/// and CORS headers. Returns whether the request is a CORS preflight of the
/// route, which tollgate answers itself (see `admission`).
fn arm_response_headers(session: &mut Session, route: &Route) -> bool {
    if route.response_headers.is_none() && route.cors.is_none() {
        return false;
    }
    let cors = route
        .cors
        .as_ref()
        .map(|cors| (Arc::clone(cors), cors.judge(session.req_header())));
    let preflight = cors
        .as_ref()
        .is_some_and(|(_, judged)| judged.is_preflight());
    if let Some(module) = session
        .downstream_modules_ctx
        .get_mut::<ResponseHeaderRules>()
    {
        if let Some(rules) = &route.response_headers {
            module.arm(Arc::clone(rules));
        }
        if let Some((cors, judged)) = cors {
            module.arm_cors(cors, judged);
        }
    }
    preflight
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// Registers the downstream modules every answer passes through: pingora's
    /// response compression, on at the configured level when `server.compression`
    /// is set (each answer is then checked by [`CompressionPolicy::check_response`]),
    /// `AnswerHeaders`, which `request_filter` arms on TLS listeners (HSTS,
    /// and Alt-Svc on `http3` ones),
    /// the route's `response_headers`, which it arms once the route is known,
    /// and with `server.request_id` the request's ID, armed by
    /// `early_request_filter` (after the route's rules, which cannot remove it).
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        let level = self
            .settings
            .compression
            .as_ref()
            .map_or(0, CompressionPolicy::level);
        modules.add_module(
            pingora::modules::http::compression::ResponseCompressionBuilder::enable(level),
        );
        modules.add_module(Box::new(AnswerHeadersBuilder));
        modules.add_module(Box::new(ResponseHeaderRulesBuilder));
        if let Some(ids) = &self.settings.request_ids {
            modules.add_module(Box::new(ids.module()));
        }
        if self.settings.compression.is_some() {
            modules.add_module(Box::new(BrotliCompressionBuilder));
        }
    }

    /// Runs before pingora's modules see the request, and before anything of
    /// tollgate's: gives the request its ID (see `observe::request_id`), so
    /// that every answer, the backend and the log see it, and its trace (see
    /// `observe::tracing`), whose `traceparent` the backend gets; hands
    /// brotli to our own module rather than pingora's (see `edge::compression`).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(ids) = &self.settings.request_ids {
            let subrequest = session.subrequest_ctx.is_some();
            let id = ids.assign(session.req_header_mut(), subrequest)?;
            if let Some(module) = session.downstream_modules_ctx.get_mut::<RequestIdHeader>() {
                module.arm(id.clone());
            }
            ctx.request_id = Some(id);
        }
        if let Some(tracer) = &self.settings.tracer {
            let subrequest = session.subrequest_ctx.is_some();
            ctx.trace = Some(tracer.begin(session.req_header_mut(), subrequest)?);
        }
        if let Some(compression) = &self.settings.compression {
            compression.route_brotli(session);
        }
        Ok(())
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Checks the request head, routes the request on its normalized path, and
    /// lets the route admit it; answers it here when any of those stops it, or
    /// when the route answers itself (respond, static).
    /// Returns `Ok(true)` when an answer was sent, `Ok(false)` to go on to a backend.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(taken_over) = self.take_over(session, ctx).await {
            return taken_over;
        }
        ctx.grpc = ctx::GrpcCall::of(&session.req_header().headers);
        if let Some(key_authorization) = self.acme_answer(session) {
            return answer::send(session, ctx, key_authorization).await;
        }
        if let Some(refused) = self.check_head(session)? {
            return answer::send(session, ctx, refused).await;
        }
        let topology = self.topology.load_full();
        self.note_connection(session, ctx, &topology);
        ctx.topology = Some(Arc::clone(&topology));
        let route = match self.route(&topology, session.req_header(), ctx) {
            Routed::Route(id) => &topology.routes[id],
            Routed::Answer(answered) => return answer::send(session, ctx, answered).await,
        };
        let preflight = arm_response_headers(session, route);
        if let Some(stopped) = self.admission(session, ctx, route, preflight).await {
            return answer::send(session, ctx, stopped).await;
        }
        if self.act(session, ctx, route).await? {
            return Ok(true);
        }
        mirroring::begin(session, ctx, route);
        self.proxy_buffered(session, ctx).await
    }

    /// Lets requests that may carry a body spawn the subrequest that proxies
    /// them once their body is buffered (see `buffering`).
    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        buffering::may_buffer(session)
    }

    /// Runs after `request_filter` let a request on to a backend: turns the
    /// cache on for requests of cached routes that may use it (see
    /// `caching::enable`).
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        caching::enable(session, ctx);
        Ok(())
    }

    /// The key of the request's stored answer (see `caching::key`).
    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        caching::key(session, ctx)
    }

    /// The variance of the request for a stored answer with `Vary`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        caching::variance_of(meta, ctx, req)
    }

    /// Whether the backend's answer is stored, and its freshness (see
    /// `cache::policy`). Runs on every answer of a cached request, and on the
    /// merged head of a 304 to a revalidation.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        caching::decide(session, resp, ctx)
    }

    /// Whether a stale stored answer may be served (see `caching::may_serve_stale`).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::may_serve_stale(error)
    }

    /// A PURGE that admission allowed: pingora removes the stored answer of its
    /// key and answers 200, or 404 when there was none.
    fn is_purge(&self, _session: &Session, ctx: &RequestCtx) -> bool {
        ctx.purge
    }

    /// Records the status of the purge's answer for the log.
    fn purge_response_filter(
        &self,
        _session: &Session,
        ctx: &mut RequestCtx,
        _purge_status: PurgeStatus,
        purge_response: &mut std::borrow::Cow<'static, ResponseHeader>,
    ) -> Result<()> {
        ctx.answered(purge_response.status.as_u16());
        Ok(())
    }

    /// Chooses a usable backend not yet tried by this request (see
    /// `upstream::choose_peer`).
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream::choose_peer(session, ctx)
    }

    /// Counts the failure against the backend and, while `retries` allow, asks
    /// pingora to call `upstream_peer` again for another backend.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(ctx, e)
    }

    /// Counts the failure and decides whether to retry (see `upstream::proxy_failed`).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        upstream::proxy_failed(peer, session, e, ctx, client_reused)
    }

    /// Restarts the attempt's clock once its connection is ready, so that a
    /// latency sample is the backend's answer time, not the connect time;
    /// notes the time for the request's span.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.attempt_started.is_some() {
            ctx.attempt_started = Some(std::time::Instant::now());
        }
        if let Some(timings) = ctx.trace_timings() {
            timings.connected();
        }
        Ok(())
    }

    /// Sets the head the backend gets (see `upstream::prepare_request`).
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::prepare_request(ctx, upstream_request)
    }

    /// Removes hop-by-hop headers from the backend's answer, notes the `Date` and
    /// `Age` of a 304 to a revalidation, and records the answer for passive
    /// health, outlier detection and latency. Runs before the cache sees the
    /// answer.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        caching::note_validation(session, ctx, upstream_response);
        if !upstream_response.status.is_informational() || upstream_response.status == 101 {
            ctx.backend_answered = true;
            if let Some(timings) = ctx.trace_timings() {
                timings.first_byte();
            }
            if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
                let latency = ctx.attempt_started.map(|at| at.elapsed());
                upstream.record_answer(index, upstream_response.status.as_u16(), latency);
            }
        }
        Ok(())
    }

    /// Counts the request body as it streams; a body without Content-Length that
    /// grows past `max_request_body` ends the request with 413. Tees the body
    /// into the request's mirror copy, if it has one (see `mirroring`); the
    /// body goes on to the backend as it came.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
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
        if ctx.mirror.is_some() {
            mirroring::tee(session, ctx, body.as_deref(), end_of_stream);
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

    /// Adds X-Cache-Status (and Age) to answers of cached routes, and
    /// RateLimit-Limit/-Remaining/-Reset to answers of rate-limited routes;
    /// checks whether the answer is to be compressed, and closes the connection
    /// after answers that end during a handover to a new process. Runs on
    /// answers from the cache too.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if crate::upgrade::handing_over() {
            session.set_keepalive(None);
        }
        if let Some(compression) = &self.settings.compression {
            compression.check_response(session, upstream_response);
        }
        caching::mark_answer(session, ctx, upstream_response)?;
        if let Some((limit, allowance)) = &ctx.rate_limit {
            for (name, value) in limit.headers(*allowance) {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    /// Answers a failed request (see `answer::for_error`), nothing when the client
    /// is gone or an answer was begun already. The connection is closed after.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if session.response_written().is_some() {
            // Part of an answer is out: a new one cannot follow it, and the
            // closed connection tells the client it is cut short; a gRPC call
            // over HTTP/2 is ended with its status in trailers instead.
            answer::end_grpc_stream(session, ctx, e).await;
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let Some(answer) = answer::for_error(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = answer.status.as_u16();
        if let Err(write_error) = answer::send(session, ctx, answer).await {
            log::debug!("could not send the {code} answer: {write_error}");
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
        self.log_request(session, ctx);
    }
}

#[cfg(test)]
mod tests;
