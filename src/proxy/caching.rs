//! The cache hooks of the proxy: which requests use their route's cache, under
//! which key and variance, which answers are stored, when a stale answer may
//! be served, and what every answer of a cached route says about it
//! (`X-Cache-Status`, `Age`).

use super::ctx::ValidationHead;
use super::upstream::{forwarded_path, raw_query};
use super::RequestCtx;
use crate::cache::key::{cache_key, request_host, variance, varies};
use crate::cache::policy::request_cacheable;
use crate::cache::{Cache, CacheStatus};
use crate::forwarding::{forwarded_proto_and_host, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use http::header::{AGE, AUTHORIZATION, DATE};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};
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

/// What the origin is told about the request's scheme and host: the
/// X-Forwarded-Proto and X-Forwarded-Host it is sent.
fn forwarded_view<'a>(request: &'a RequestHeader, ctx: &RequestCtx) -> (&'a [u8], &'a [u8]) {
    let trusted = ctx
        .topology
        .as_ref()
        .is_some_and(|t| t.trusted_proxies.contains(ctx.peer_ip));
    let scheme = if ctx.https { "https" } else { "http" };
    forwarded_proto_and_host(request, trusted, scheme)
}

/// The key of the request's answer: its upstream, and what the origin is told
/// of it: scheme (X-Forwarded-Proto), host, forwarded host, and the path (less
/// a stripped prefix) and query it is sent.
pub(super) fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let upstream = ctx.upstream().ok_or_else(|| {
        Error::explain(ErrorType::InternalError, "cached request without upstream")
    })?;
    let request = session.req_header();
    let path = forwarded_path(ctx, request.uri.path());
    let query = raw_query(request.raw_path());
    let path_and_query = [path.as_bytes(), query].concat();
    let (proto, forwarded_host) = forwarded_view(request, ctx);
    Ok(cache_key(&[
        upstream.name.as_bytes(),
        proto,
        &request_host(request),
        &forwarded_host.to_ascii_lowercase(),
        &path_and_query,
    ]))
}

/// Whether the origin's answer `response` is stored (see `Policy::decide`).
/// Requests with `Authorization`, and all requests of routes with auth, are
/// personal: stored only when the origin marks the answer shareable. On a
/// revalidation, `response` is the stored head merged with the 304's fields;
/// the 304's `Date` and `Age` are put in, as pingora's merge leaves them out.
pub(super) fn decide(
    session: &Session,
    response: &ResponseHeader,
    ctx: &RequestCtx,
) -> Result<RespCacheable> {
    let Some(cache) = route_cache(ctx) else {
        return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
            "no cache",
        )));
    };
    let personal = session.req_header().headers.contains_key(AUTHORIZATION)
        || ctx.route().is_some_and(|r| r.auth.is_some());
    let now = SystemTime::now();
    let Some(validation) = &ctx.validation else {
        return Ok(cache.policy.decide(response, personal, now));
    };
    let merged = with_times_of(response, validation)?;
    Ok(cache.policy.decide(&merged, personal, now))
}

/// `merged` (a stored head with a 304's fields) with the 304's `Date` and
/// `Age` in place of the stored ones.
fn with_times_of(merged: &ResponseHeader, validation: &ValidationHead) -> Result<ResponseHeader> {
    let mut merged = merged.clone();
    for (name, value) in [(DATE, &validation.date), (AGE, &validation.age)] {
        match value {
            Some(value) => merged.insert_header(name, value.clone())?,
            None => {
                merged.remove_header(&name);
            }
        }
    }
    Ok(merged)
}

/// Notes the `Date` and `Age` of a 304 the origin gave a revalidation, for
/// [`decide`]. Call on every backend answer.
pub(super) fn note_validation(session: &Session, ctx: &mut RequestCtx, response: &ResponseHeader) {
    if response.status == http::StatusCode::NOT_MODIFIED
        && session.cache.phase() == CachePhase::Stale
    {
        ctx.validation = Some(ValidationHead {
            date: response.headers.get(DATE).cloned(),
            age: response.headers.get(AGE).cloned(),
        });
    }
}

/// The variance of the request for a stored answer with `Vary` (see
/// `cache::key::variance`): the values tollgate sends count, not the client's.
pub(super) fn variance_of(
    meta: &CacheMeta,
    ctx: &RequestCtx,
    request: &RequestHeader,
) -> Option<HashBinary> {
    if !varies(meta) {
        return None;
    }
    let forwarded = forwarded_view(request, ctx);
    let mut sent = Vec::new();
    if let Some(identity) = &ctx.identity {
        sent.extend(identity.headers.iter().cloned());
    }
    if let Some(cert) = ctx.client_cert() {
        sent.extend(cert.headers());
    }
    for (name, value) in [
        (X_FORWARDED_PROTO, forwarded.0),
        (X_FORWARDED_HOST, forwarded.1),
    ] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            sent.push((name, value));
        }
    }
    let stripped = ctx
        .topology
        .as_ref()
        .map_or(&[][..], |t| &t.identity_headers[..]);
    variance(meta, request, &sent, stripped)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revalidation_takes_the_time_of_the_304() {
        let mut stored = ResponseHeader::build(200, None).unwrap();
        stored
            .insert_header(DATE, "Mon, 01 Jan 2024 00:00:00 GMT")
            .unwrap();
        stored.insert_header(AGE, "30").unwrap();
        stored.insert_header("etag", "\"v1\"").unwrap();
        let validation = ValidationHead {
            date: Some(http::HeaderValue::from_static(
                "Tue, 02 Jan 2024 00:00:00 GMT",
            )),
            age: None,
        };
        let merged = with_times_of(&stored, &validation).unwrap();
        assert_eq!(merged.headers[DATE], "Tue, 02 Jan 2024 00:00:00 GMT");
        assert!(merged.headers.get(AGE).is_none());
        assert_eq!(merged.headers["etag"], "\"v1\"");
    }
}
