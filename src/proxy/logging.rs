//! The end of every request, however it ended: its metrics and its access log line.

use super::{Proxy, RequestCtx};
use crate::access_log::AccessEntry;
use crate::metrics::{RouteMetrics, NO_UPSTREAM};
use crate::observe::tracing::SpanFacts;
use pingora::proxy::Session;
use prometheus::IntCounter;
use std::sync::LazyLock;

/// Status logged when the client went away before an answer (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Metrics of requests that matched no route.
static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("-", NO_UPSTREAM));

/// `tollgate_requests_by_protocol_total` of HTTP/1.x, HTTP/2 and HTTP/3.
static BY_PROTOCOL: LazyLock<[IntCounter; 3]> = LazyLock::new(|| {
    let family = &crate::metrics::metrics().requests_by_protocol;
    ["http/1.1", "h2", "h3"].map(|protocol| family.with_label_values(&[protocol]))
});

/// Counts an answered request under the protocol its client spoke.
fn count_protocol(version: http::Version) {
    let slot = match version {
        http::Version::HTTP_2 => 1,
        http::Version::HTTP_3 => 2,
        _ => 0,
    };
    BY_PROTOCOL[slot].inc();
}

impl Proxy {
    /// Counts the request in its route's and backend's metrics and writes its
    /// access log line. The cache's background refresh of a stale answer counts
    /// as a backend request only: the client's request was counted already.
    /// The subrequest of a buffered request counts the backend's and the
    /// cache's metrics and reports to its main request, which does the rest.
    pub(super) fn log_request(&self, session: &Session, ctx: &RequestCtx) {
        let status = match (ctx.backend_answered, session.response_written()) {
            // tollgate's own answer to a gRPC call is a 200 on the wire; it
            // counts as the status it stands for (see `answer::send`).
            (false, Some(resp)) => match (ctx.grpc, ctx.own_status()) {
                (Some(_), Some(own)) => own,
                _ => resp.status.as_u16(),
            },
            (true, Some(resp)) => resp.status.as_u16(),
            (false, None) => ctx.own_status().unwrap_or(CLIENT_CLOSED),
            (true, None) => CLIENT_CLOSED,
        };
        let backend = ctx.upstream().zip(ctx.backend).map(|(u, i)| &u.backends[i]);
        if ctx.backend_answered && !ctx.buffered {
            if let Some(b) = backend {
                b.state.metrics.requests.inc(status);
            }
        }
        if super::buffering::report(session, ctx) {
            super::caching::count(session, ctx);
            return;
        }
        if session.subrequest_ctx.is_some() {
            return;
        }
        if !ctx.buffered {
            super::caching::count(session, ctx);
        }
        let elapsed = ctx.started.elapsed();
        let route = ctx.route();
        let route_metrics = route.map_or(&*UNROUTED, |r| r.metrics_of(ctx.arm));
        route_metrics.requests.inc(status);
        route_metrics.duration.observe(elapsed.as_secs_f64());

        let req = session.req_header();
        count_protocol(req.version);
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
            // HTTP/2 and HTTP/3 clients send the host as `:authority`.
            host: match header(http::header::HOST) {
                "" => req.uri.authority().map_or("", |a| a.as_str()),
                host => host,
            },
            status,
            bytes_sent: session.as_ref().body_bytes_sent(),
            duration: elapsed,
            route: route.map_or("-", |r| r.label.as_str()),
            upstream: route.map_or(NO_UPSTREAM, |r| r.upstream_label_of(ctx.arm)),
            backend: backend.map_or("-", |b| b.label.as_str()),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            request_headers: &req.headers,
            response_headers: session.response_written().map(|r| &r.headers),
            request_id: ctx.request_id.as_ref().and_then(|id| id.to_str().ok()),
            trace_id: ctx.trace.as_ref().and_then(|t| t.trace_id_text()),
            client_cert: ctx.client_cert().map(|c| c.subject()),
        });
        if let (Some(tracer), Some(trace)) = (&self.settings.tracer, &ctx.trace) {
            tracer.finish(trace, || SpanFacts {
                method: req.method.clone(),
                path: req.uri.path().to_string(),
                status,
                topology: ctx.topology.clone(),
                route: ctx.route,
                arm: ctx.arm,
                upstream: ctx.upstream,
                backend: ctx.backend,
            });
        }
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
