//! Request buffering in the proxy (see `edge::request_body`): a request whose
//! route buffers has its body read whole in `request_filter`; the request is
//! then proxied by a pingora subrequest fed the buffered body, whose answer is
//! relayed to the client. The subrequest runs the proxy's hooks again from
//! `request_filter`, which takes over what the main request established (a
//! [`Handoff`]) instead of checking, routing and admitting it a second time.
//! The main request logs and counts the exchange once, with what the
//! subrequest reports back.

use super::{answer, Proxy, RequestCtx};
use crate::edge::compression::BrotliCompression;
use crate::edge::request_body::{BufferError, BufferedBody};
use crate::filters::auth::Identity;
use crate::filters::rate_limit::{Allowance, RouteLimit};
use crate::filters::Answer;
use crate::router::RouteId;
use crate::topology::{Route, Topology};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::StatusCode;
use pingora::http::RequestHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::tls::SslDigest;
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What the main request hands its subrequest: everything `request_filter`
/// established, and a slot for what became of the request.
pub(super) struct Handoff {
    topology: Arc<Topology>,
    route: RouteId,
    /// The arm of the route's split the main request chose, kept by the
    /// subrequest so that one request takes one slot of the split.
    arm: Option<usize>,
    forward_path: Option<String>,
    peer_ip: IpAddr,
    client_ip: IpAddr,
    https: bool,
    /// The TLS digest that carries the connection's client certificate.
    client_tls: Option<Arc<SslDigest>>,
    identity: Option<Identity>,
    rate_limit: Option<(Arc<RouteLimit>, Allowance)>,
    /// The brotli level the main request's module was armed with.
    brotli: Option<u32>,
    outcome: Arc<Mutex<Outcome>>,
}

/// What the subrequest reports back for the main request's log and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    upstream: Option<usize>,
    backend: Option<usize>,
    backend_answered: bool,
    own_status: Option<u16>,
    /// The upstream timings of the main request's span, when it is recorded.
    timings: Option<crate::observe::tracing::UpstreamTimings>,
}

/// Whether pingora should give `session` a subrequest spawner: a request
/// that may carry a body, that is not a subrequest itself. GET and HEAD
/// bodies are not buffered, so their hot path stays as it is.
pub(super) fn may_buffer(session: &Session) -> bool {
    session.subrequest_ctx.is_none()
        && !matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD
        )
}

/// Whether the request is buffered on `route`: the route's (else the
/// server's) `request_buffering` is on, and the request has a body that is
/// not a stream by nature (an upgrade, gRPC); PURGE is answered by the cache
/// as it is.
fn buffers(session: &mut Session, route: &Route, server_default: bool) -> bool {
    if !route.request_buffering.unwrap_or(server_default)
        || session.subrequest_spawner.is_none()
        || session.is_upgrade_req()
        || super::caching::is_purge_method(session.req_header())
        || session.is_body_empty()
    {
        return false;
    }
    let grpc = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    !grpc
}

/// The handoff of `session` when it is the subrequest of a buffered request.
fn handoff_of(session: &Session) -> Option<&Handoff> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<Handoff>()
}

impl Proxy {
    /// Proxies the request through a subrequest with its body buffered, when
    /// its route buffers: returns `Ok(true)` once the answer is relayed (or
    /// the request refused: 413 for a body over `max_request_body`, 503 when
    /// it cannot be stored), `Ok(false)` when the request is not buffered and
    /// goes on to a backend as it is.
    pub(super) async fn proxy_buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let (Some(topology), Some(route)) = (ctx.topology.clone(), ctx.route) else {
            return Ok(false);
        };
        if !buffers(
            session,
            &topology.routes[route],
            self.settings.buffering_default,
        ) {
            return Ok(false);
        }
        let body = match self.read_body(session).await? {
            Ok(body) => body,
            Err(refused) => return answer::send(session, ctx, refused).await,
        };
        ctx.body_bytes = body.len();
        super::mirroring::feed_buffered(session, ctx, &body);
        let head = buffered_head(session.req_header(), body.len()).await?;
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let handoff = Handoff {
            topology,
            route,
            arm: ctx.arm,
            forward_path: ctx.forward_path.clone(),
            peer_ip: ctx.peer_ip,
            client_ip: ctx.client_ip,
            https: ctx.https,
            client_tls: ctx.client_tls.clone(),
            identity: ctx.identity.clone(),
            rate_limit: ctx.rate_limit.clone(),
            brotli: turn_compression_off(session),
            outcome: Arc::clone(&outcome),
        };
        let relayed = run_subrequest(session, &head, handoff, body).await;
        let reported = outcome.lock().map(|o| *o).unwrap_or_default();
        ctx.upstream = reported.upstream;
        ctx.backend = reported.backend;
        ctx.backend_answered = reported.backend_answered;
        if let (Some(timings), Some(trace)) = (reported.timings, &mut ctx.trace) {
            trace.timings = Some(timings);
        }
        ctx.buffered = true;
        if relayed? {
            if let Some(status) = reported.own_status {
                ctx.answered(status);
            }
            return Ok(true);
        }
        let failed = Answer::text(
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway: the backend failed to answer",
        );
        answer::send(session, ctx, failed).await
    }

    /// Reads the request body whole, after a `100 Continue` when the client
    /// waits for one. `Ok(Err(answer))` refuses the request: 413 for a body
    /// over `max_request_body`, 503 for one that cannot be stored; `Err` is a
    /// client that went away or stopped sending.
    async fn read_body(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<BufferedBody, Answer>> {
        let expects_continue = session
            .req_header()
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.write_continue_response().await?;
        }
        let limits = &self.settings.buffer_limits;
        match BufferedBody::read(session, limits).await {
            Ok(body) => Ok(Ok(body)),
            Err(BufferError::TooLarge) => {
                let too_large =
                    Answer::text(StatusCode::PAYLOAD_TOO_LARGE, "413 Content Too Large");
                Ok(Err(too_large.closing_after_body()))
            }
            Err(BufferError::Spill(e)) => {
                log::error!(
                    "cannot buffer a request body in {}: {e}",
                    limits.temp_dir.display()
                );
                let unavailable = Answer::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Unavailable: the request body could not be stored",
                );
                Ok(Err(unavailable.closing_after_body()))
            }
            Err(BufferError::Client(e)) => Err(e),
        }
    }

    /// In the subrequest of a buffered request: takes over what the main
    /// request established, and readies its route's upstream (a split's:
    /// that of the arm the main request chose). `None` for any
    /// other request.
    pub(super) async fn take_over(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<Result<bool>> {
        let handoff = handoff_of(session)?;
        let (route, brotli) = (handoff.route, handoff.brotli);
        let topology = Arc::clone(&handoff.topology);
        ctx.route = Some(route);
        ctx.arm = handoff.arm;
        ctx.forward_path = handoff.forward_path.clone();
        ctx.peer_ip = handoff.peer_ip;
        ctx.client_ip = handoff.client_ip;
        ctx.https = handoff.https;
        ctx.client_tls = handoff.client_tls.clone();
        ctx.identity = handoff.identity.clone();
        ctx.rate_limit = handoff.rate_limit.clone();
        ctx.topology = Some(Arc::clone(&topology));
        if let Some(level) = brotli {
            if let Some(module) = session
                .downstream_modules_ctx
                .get_mut::<BrotliCompression>()
            {
                module.arm(level);
            }
        }
        Some(self.act(session, ctx, &topology.routes[route]).await)
    }
}

/// Runs the subrequest of `session` made from `head`, feeding it `body`, and
/// relays its answer. Returns whether an answer began; the subrequest has
/// reported to `handoff`'s outcome when this returns, unless the client went
/// away, which ends the subrequest where it is.
async fn run_subrequest(
    session: &mut Session,
    head: &ServerSession,
    handoff: Handoff,
    body: BufferedBody,
) -> Result<bool> {
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner");
    };
    let sub_ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(handoff))
        .build();
    let (subrequest, handle) = spawner.create_subrequest(head, sub_ctx);
    let running = tokio::spawn(subrequest.run());
    let replay = tokio::spawn(body.replay(handle.tx));
    let relayed = relay(session, handle.rx).await;
    if relayed
        .as_ref()
        .is_err_and(|e| *e.esource() == ErrorSource::Downstream)
    {
        // The client is gone: so goes the backend request, as nginx does.
        running.abort();
        replay.abort();
        return relayed;
    }
    // The subrequest has logged by the time its task ends.
    let _ = running.await;
    if let Ok(Err(e)) = replay.await {
        log::error!("could not replay a buffered request body: {e}");
    }
    relayed
}

/// In the subrequest of a buffered request: reports what became of it to the
/// main request, and returns `true`; `false` for any other request.
pub(super) fn report(session: &Session, ctx: &RequestCtx) -> bool {
    let Some(handoff) = handoff_of(session) else {
        return false;
    };
    if let Ok(mut outcome) = handoff.outcome.lock() {
        *outcome = Outcome {
            upstream: ctx.upstream,
            backend: ctx.backend,
            backend_answered: ctx.backend_answered,
            own_status: ctx.own_status(),
            timings: ctx.trace.as_ref().and_then(|t| t.timings),
        };
    }
    true
}

/// The session the subrequest is made from: the main request's head as
/// `request_filter` left it (normalized, brotli taken out of Accept-Encoding),
/// as HTTP/1.1 whatever the client spoke, with `Host` from an HTTP/2
/// authority, the body's length instead of chunked framing (backends that
/// cannot read chunked bodies get one they can), and no `Expect`, which was
/// answered already.
async fn buffered_head(req: &RequestHeader, body_len: u64) -> Result<ServerSession> {
    let mut head = req.clone();
    head.set_version(http::Version::HTTP_11);
    head.remove_header(&TRANSFER_ENCODING);
    head.remove_header(&EXPECT);
    head.insert_header(CONTENT_LENGTH, body_len)?;
    if !head.headers.contains_key(HOST) {
        if let Some(authority) = req.uri.authority() {
            head.insert_header(HOST, authority.as_str())?;
        }
    }
    let Some(wire) = http_req_header_to_wire(&head) else {
        return Error::e_explain(
            ErrorType::InternalError,
            "the request head cannot be written as HTTP/1.1",
        );
    };
    let mut session = ServerSession::new_http1(Box::new(std::io::Cursor::new(wire.to_vec())));
    session.read_request().await?;
    Ok(session)
}

/// Turns compression off for the main request's answer, since the
/// subrequest compresses it under the policy; returns the brotli level the
/// main request's module was armed with, for the subrequest to arm its own.
fn turn_compression_off(session: &mut Session) -> Option<u32> {
    if let Some(module) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    {
        module.adjust_level(0);
    }
    let module = session
        .downstream_modules_ctx
        .get_mut::<BrotliCompression>()?;
    let level = module.armed();
    module.disarm();
    level
}

/// Writes the tasks of the subrequest's answer to the client until the
/// subrequest ends. Returns whether an answer began (a header came).
///
/// Until the answer begins, a client that goes away ends the relay (and so
/// the subrequest, whose output channel closes). An answer that began and
/// did not end (the backend failed in its body) is an error, so that the
/// client's connection is closed rather than the answer passing for whole.
/// The subrequest's own answers (its `fail_to_proxy`: all backends failed)
/// end too: they are written as tasks carrying their end (see
/// `edge::respond::send_answer`), which the subrequest turns into `Done`.
async fn relay(
    session: &mut Session,
    mut rx: tokio::sync::mpsc::Receiver<HttpTask>,
) -> Result<bool> {
    let mut began = false;
    let mut done = false;
    loop {
        let task = tokio::select! {
            task = rx.recv() => task,
            _ = session.downstream_session.read_body_or_idle(true), if !began => {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the client went away before the answer began",
                )
                .map_err(|e: Box<Error>| e.into_down());
            }
        };
        let Some(task) = task else {
            break;
        };
        if done {
            // Keep receiving until the subrequest lets go of the channel.
            continue;
        }
        began |= matches!(&task, HttpTask::Header(head, _) if !head.status.is_informational());
        done = session.write_response_tasks(vec![task]).await?;
    }
    if began && !done {
        return Error::e_explain(
            ErrorType::ConnectionClosed,
            "the backend's answer ended before its end",
        )
        .map_err(|e: Box<Error>| e.into_up());
    }
    Ok(began)
}
