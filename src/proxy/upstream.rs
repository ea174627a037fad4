//! The request's way to and from a backend: choosing one, what a failure means
//! (passive health, retries), and the request head the backend is sent.

use super::RequestCtx;
use crate::balance::hash_key::RequestParts;
use crate::balance::InFlightGuard;
use crate::filters::request_path;
use crate::forwarding::set_forwarded_headers;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::borrow::Cow;
use std::time::Instant;

/// A usable backend of the request's upstream that it has not tried yet. Errors
/// with 503 when the upstream has no backend to offer, 502 when every one was
/// tried.
pub(super) fn choose_peer(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
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
    super::mirroring::restart(ctx);
    let Some(index) = upstream.select(&request_parts(session.req_header(), ctx), &ctx.tried) else {
        let (status, why) = if ctx.tried.is_empty() {
            (503, "no healthy backend")
        } else {
            (502, "no backend left to try")
        };
        return Err(Error::explain(ErrorType::HTTPStatus(status), why));
    };
    if !ctx.budget_counted {
        ctx.budget_counted = true;
        upstream.record_request();
    }
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
    ctx.attempt_started = upstream.measures_latency().then(Instant::now);
    if let Some(timings) = ctx.trace_timings() {
        timings.asked();
    }
    let mut peer = Box::new(backend.peer.clone());
    bound_by_deadline(ctx, &mut peer);
    Ok(peer)
}

/// Makes what is left of a gRPC call's deadline the attempt's read timeout
/// when it is shorter than the upstream's, so that the call fails with a
/// deadline (504, gRPC 4) the moment its client gives up on it.
fn bound_by_deadline(ctx: &mut RequestCtx, peer: &mut HttpPeer) {
    let Some(call) = ctx.grpc.as_mut() else {
        return;
    };
    let Some(deadline) = call.deadline else {
        return;
    };
    // A deadline run out already still gets a moment: pingora takes a zero
    // timeout as none.
    let left = deadline
        .saturating_sub(ctx.started.elapsed())
        .max(std::time::Duration::from_millis(1));
    call.deadline_bound = peer.options.read_timeout.is_none_or(|read| left < read);
    if call.deadline_bound {
        peer.options.read_timeout = Some(left);
    }
}

/// What a hash key of the request `head` is read from.
pub(super) fn request_parts<'a>(head: &'a RequestHeader, ctx: &'a RequestCtx) -> RequestParts<'a> {
    RequestParts {
        client: ctx.client_ip,
        headers: &head.headers,
        identity: ctx
            .identity
            .as_ref()
            .map_or(&[], |identity| &identity.headers),
        stripped: ctx
            .topology
            .as_ref()
            .map_or(&[], |topology| &topology.identity_headers),
        client_cert: ctx.client_cert(),
        path: ctx.forward_path(head.uri.path()),
        query: raw_query(head.raw_path()),
    }
}

/// A connection to the chosen backend failed: counts it against the backend and,
/// while `retries` and the upstream's retry budget allow, asks for another
/// backend.
pub(super) fn connect_failed(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    ctx.in_flight = None;
    if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
        upstream.record_failure(index);
        upstream.backends[index].state.metrics.requests.inc_error();
    }
    let retry = ctx.retries_left > 0 && ctx.upstream().is_some_and(|u| u.may_retry());
    if retry {
        ctx.retries_left -= 1;
    }
    e.set_retry(retry);
    e
}

/// The request failed after connecting: counts upstream errors on fresh
/// connections against the backend, and decides whether to try again. Only
/// idempotent requests whose body is still buffered and of which nothing has
/// reached the client yet are retried:
/// - after a failure on a reused connection (the backend may have closed it while
///   idle), on any backend including the same one, without using up `retries`;
/// - after a transport error (reset, closed, garbage) on a fresh connection, on
///   another backend while `retries` and the upstream's retry budget allow.
///   Timeouts are not retried, so a slow backend's load is not multiplied.
pub(super) fn proxy_failed(
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    let from_backend = *e.esource() == ErrorSource::Upstream;
    // A gRPC call's own deadline ran out: the client's limit, not a failure
    // of the backend's.
    let client_deadline = matches!(e.etype(), ErrorType::ReadTimedout)
        && ctx.grpc.is_some_and(|call| call.deadline_bound);
    if from_backend && client_deadline {
        if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
            upstream.backends[index].state.metrics.requests.inc_error();
        }
    } else if from_backend {
        if let (Some(upstream), Some(index)) = (ctx.upstream(), ctx.backend) {
            upstream.backends[index].state.metrics.requests.inc_error();
            if !client_reused {
                upstream.record_failure(index);
            }
            if let (ErrorType::ReadTimedout, Some(at)) = (e.etype(), ctx.attempt_started) {
                upstream.record_timeout(index, at.elapsed());
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
    } else if from_backend
        && transport_error
        && ctx.retries_left > 0
        && ctx.upstream().is_some_and(|u| u.may_retry())
    {
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

/// The head the backend is sent: X-Forwarded-For/-Proto/-Host and X-Real-IP; no
/// identity header but those the request's auth policy set and the
/// `X-Client-Cert-*` of its connection's client certificate; the path in
/// origin-form as `request_path` forwards it, without the prefix when the route
/// strips one.
pub(super) fn prepare_request(
    ctx: &RequestCtx,
    upstream_request: &mut RequestHeader,
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
    if let Some(cert) = ctx.client_cert() {
        for (name, value) in cert.headers() {
            upstream_request.insert_header(name, value)?;
        }
    }
    if let Some(route) = ctx.route() {
        route.request_headers.apply_to_request(upstream_request)?;
    }
    // gRPC needs `TE: trailers` end to end; pingora strips TE as hop-by-hop.
    if ctx.grpc.is_some_and(|call| call.takes_trailers) {
        upstream_request.insert_header(http::header::TE, "trailers")?;
    }
    rewrite_target(ctx, upstream_request)
}

/// The path the backend is sent for a request whose path was `received`: the
/// normalized path, less the route's stripped prefix.
pub(super) fn forwarded_path<'a>(ctx: &'a RequestCtx, received: &'a str) -> Cow<'a, str> {
    let forward = ctx.forward_path(received);
    match ctx.route().and_then(|r| r.strip_prefix.as_deref()) {
        Some(prefix) => request_path::strip_prefix(forward, prefix),
        None => Cow::Borrowed(forward),
    }
}

/// The query of a request-target, with its `?`; empty when there is none.
pub(super) fn raw_query(raw_target: &[u8]) -> &[u8] {
    raw_target
        .iter()
        .position(|&b| b == b'?')
        .map_or(&[][..], |at| &raw_target[at..])
}

/// Sends the path to forward (less a stripped prefix) in origin-form, when it
/// is not what the request-target holds already; a Host from the target's
/// authority when the request has none.
fn rewrite_target(ctx: &RequestCtx, upstream_request: &mut RequestHeader) -> Result<()> {
    // An HTTP/2 or HTTP/3 client's authority is in the target, not in a
    // Host header: kept as Host (pingora adds it itself for HTTP/2 clients
    // to HTTP/1 backends, not for HTTP/3 ones), which pingora makes an
    // HTTP/2 backend's `:authority` again.
    if !upstream_request.headers.contains_key(http::header::HOST) {
        if let Some(authority) = upstream_request.uri.authority() {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|e| Error::because(ErrorType::HTTPStatus(400), "invalid authority", e))?;
            upstream_request.insert_header(http::header::HOST, host)?;
        }
    }
    let received = upstream_request.uri.path();
    let forward = forwarded_path(ctx, received);
    let raw = upstream_request.raw_path();
    let origin_form = raw.starts_with(b"/") || raw == b"*";
    if forward != received || !origin_form {
        let target = [forward.as_bytes(), raw_query(raw)].concat();
        upstream_request
            .set_raw_path(&target)
            .map_err(|e| Error::because(ErrorType::HTTPStatus(400), "invalid forwarded path", e))?;
    }
    Ok(())
}
