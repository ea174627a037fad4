//! The cache hooks of the proxy: which requests use their route's cache, under
//! which key and variance, which answers are stored, when a stale answer may
//! be served, and what every answer of a cached route says about it
//! (`X-Cache-Status`, `Age`).

use super::RequestCtx;
use crate::cache::key::{cache_key, request_host, variance};
use crate::cache::policy::request_cacheable;
use crate::cache::{Cache, CacheStatus};
use http::header::{AGE, AUTHORIZATION};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::time::SystemTime;

/// The `X-Cache-Status` header of every answer of a cached route.
pub(super) const X_CACHE_STATUS: &str = "X-Cache-Status";

/// The PURGE method: removes the stored answer of its URL.
pub(super) fn is_purge_method(request: &RequestHeader) -> bool {
    request.method.as_str() == "PURGE"
}

fn route_cache(ctx: &RequestCtx) -> Option<&Cache> {
    ctx.route()?.cache.as_ref().map(|(cache, _)| &**cache)
}

/// Turns the request's cache on when its route has one and the request may use
/// it: GET and HEAD, and PURGE from an allowed client (admission refused the
/// others). Called once the request is admitted and bound for a backend.
pub(super) fn enable(session: &mut Session, ctx: &RequestCtx) {
    if ctx.upstream.is_none() {
        return;
    }
    let Some(cache) = route_cache(ctx) else {
        return;
    };
    if ctx.purge || request_cacheable(session.req_header()) {
        cache.enable(&mut session.cache);
    }
}

/// The key of the request's answer: its upstream, scheme, host and the path and
/// query it is forwarded with.
pub(super) fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let upstream = ctx.upstream().ok_or_else(|| {
        Error::explain(ErrorType::InternalError, "cached request without upstream")
    })?;
    let request = session.req_header();
    let path = ctx.forward_path(request.uri.path());
    let mut path_and_query = Vec::with_capacity(path.len() + 64);
    path_and_query.extend_from_slice(path.as_bytes());
    if let Some(query) = request.uri.query() {
        path_and_query.push(b'?');
        path_and_query.extend_from_slice(query.as_bytes());
    }
    Ok(cache_key(
        &upstream.name,
        ctx.https,
        &request_host(request),
        &path_and_query,
    ))
}

/// Whether the origin's answer `response` is stored (see `Policy::decide`).
/// Requests with `Authorization`, and all requests of routes with auth, are
/// personal: stored only when the origin marks the answer shareable.
pub(super) fn decide(
    session: &Session,
    response: &ResponseHeader,
    ctx: &RequestCtx,
) -> RespCacheable {
    let Some(cache) = route_cache(ctx) else {
        return RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled);
    };
    let personal = session.req_header().headers.contains_key(AUTHORIZATION)
        || ctx.route().is_some_and(|r| r.auth.is_some());
    cache.policy.decide(response, personal, SystemTime::now())
}

/// The variance of the request for a stored answer with `Vary` (see
/// `cache::key::variance`).
pub(super) fn variance_of(
    meta: &CacheMeta,
    ctx: &RequestCtx,
    request: &RequestHeader,
) -> Option<HashBinary> {
    let identity = ctx.identity.as_ref().map_or(&[][..], |i| &i.headers[..]);
    let stripped = ctx
        .topology
        .as_ref()
        .map_or(&[][..], |t| &t.identity_headers[..]);
    variance(meta, request, identity, stripped)
}

/// Whether a stale stored answer may be served: while one request refreshes
/// it (`error` is `None`), and when the origin failed (down, timed out, 5xx,
/// no backend up), but not for a client's own failure. pingora checks the
/// answer's stale windows before asking.
pub(super) fn may_serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| *e.esource() != ErrorSource::Downstream)
}

/// Adds `X-Cache-Status` to an answer of a cached route and, on an answer the
/// cache just stored or revalidated, its `Age` (pingora sets it on hits).
pub(super) fn mark_answer(
    session: &Session,
    ctx: &RequestCtx,
    response: &mut ResponseHeader,
) -> Result<()> {
    if route_cache(ctx).is_none() {
        return Ok(());
    }
    let status = CacheStatus::of(session.cache.phase());
    response.insert_header(X_CACHE_STATUS, status.header_value())?;
    let stored_now = matches!(
        session.cache.phase(),
        CachePhase::Miss | CachePhase::Expired | CachePhase::Revalidated
    );
    if stored_now {
        if let Some(meta) = session.cache.maybe_cache_meta() {
            response.insert_header(AGE, meta.age().as_secs())?;
        }
    }
    Ok(())
}

/// Counts the request's cache result and lock wait, for requests of cached
/// routes.
pub(super) fn count(session: &Session, ctx: &RequestCtx) {
    let Some((cache, lookups)) = ctx.route().and_then(|r| r.cache.as_ref()) else {
        return;
    };
    if ctx.upstream.is_none() || ctx.purge {
        // Answered before the cache (refused, redirected), or a purge.
        return;
    }
    lookups.count(CacheStatus::of(session.cache.phase()));
    if session.cache.lock_duration().is_some() {
        cache.count_lock_wait();
    }
}
