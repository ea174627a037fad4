//! What tollgate knows about one request, from its head to its log line.

use crate::balance::{InFlightGuard, Tried, Upstream};
use crate::edge::client_certs::ClientCert;
use crate::filters::auth::Identity;
use crate::filters::rate_limit::{Allowance, RouteLimit};
use crate::router::RouteId;
use crate::topology::{Route, Topology};
use pingora::protocols::tls::SslDigest;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

/// Per-request state, created when the request head has been read.
pub struct RequestCtx {
    pub(super) started: Instant,
    /// The topology this request was routed on; kept for its whole life, so a
    /// topology swap never changes a request in flight.
    pub(super) topology: Option<Arc<Topology>>,
    pub(super) route: Option<RouteId>,
    /// The path to forward when it is not the one received (see `request_path`).
    pub(super) forward_path: Option<String>,
    pub(super) peer_ip: IpAddr,
    pub(super) client_ip: IpAddr,
    pub(super) upstream: Option<usize>,
    /// The arm of the route's split the request was sent to (see
    /// `topology::Split`); `upstream` is that arm's.
    pub(super) arm: Option<usize>,
    pub(super) backend: Option<usize>,
    pub(super) tried: Tried,
    pub(super) retries_left: u32,
    pub(super) in_flight: Option<InFlightGuard>,
    /// The request has been counted toward its upstream's retry budget.
    pub(super) budget_counted: bool,
    /// When the current attempt's connection to its backend was ready (set
    /// when the backend is chosen, again once connected); only when the
    /// upstream measures latency.
    pub(super) attempt_started: Option<Instant>,
    /// The backend's answer reached the client (as opposed to an answer of ours).
    pub(super) backend_answered: bool,
    /// The status of an answer tollgate wrote itself; set by [`RequestCtx::answered`].
    own_status: Option<u16>,
    /// What the route's auth policy established.
    pub(super) identity: Option<Identity>,
    /// The request came over TLS.
    pub(super) https: bool,
    /// The TLS digest of a connection whose client sent a verified
    /// certificate (see [`RequestCtx::client_cert`]).
    pub(super) client_tls: Option<Arc<SslDigest>>,
    /// Request body bytes read so far.
    pub(super) body_bytes: u64,
    /// The route's rate limit and what it allowed, for the RateLimit-* headers.
    pub(super) rate_limit: Option<(Arc<RouteLimit>, Allowance)>,
    /// A PURGE the route's cache allows from this client.
    pub(super) purge: bool,
    /// The request was proxied by a subrequest with its body buffered (see
    /// `buffering`), which counted the backend's and the cache's metrics.
    pub(super) buffered: bool,
    /// What the origin's 304 to a revalidation said of its time.
    pub(super) validation: Option<ValidationHead>,
    /// Set when the request is a gRPC call (see `edge::grpc`).
    pub(super) grpc: Option<GrpcCall>,
    /// The request's ID, with `server.request_id` (see `observe::request_id`).
    pub(super) request_id: Option<http::HeaderValue>,
    /// The request's trace, with `server.tracing` (see `observe::tracing`).
    pub(super) trace: Option<crate::observe::tracing::RequestTrace>,
    /// The request's copy for the route's mirror, while its body is read
    /// (see `mirroring`).
    pub(super) mirror: Option<crate::mirror::MirrorCopy>,
}

/// What tollgate heeds of a gRPC call.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrpcCall {
    /// The call's `grpc-timeout`, from when its head was read.
    pub(super) deadline: Option<std::time::Duration>,
    /// The client sent `TE: trailers`, which goes on to the backend.
    pub(super) takes_trailers: bool,
    /// The deadline, shorter than the upstream's read timeout, is the
    /// current attempt's read timeout: its expiry is the client's limit, not
    /// the backend's failure.
    pub(super) deadline_bound: bool,
}

impl GrpcCall {
    /// The call of a request with `headers`; `None` for a request that is not one.
    pub(super) fn of(headers: &http::HeaderMap) -> Option<GrpcCall> {
        use crate::edge::grpc;
        grpc::is_grpc(headers).then(|| GrpcCall {
            deadline: grpc::deadline(headers),
            takes_trailers: grpc::takes_trailers(headers),
            deadline_bound: false,
        })
    }
}

/// The `Date` and `Age` of a 304 to a revalidation.
pub(super) struct ValidationHead {
    pub(super) date: Option<http::HeaderValue>,
    pub(super) age: Option<http::HeaderValue>,
}

impl RequestCtx {
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            topology: None,
            route: None,
            forward_path: None,
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            upstream: None,
            arm: None,
            backend: None,
            tried: Tried::default(),
            retries_left: 0,
            in_flight: None,
            budget_counted: false,
            attempt_started: None,
            backend_answered: false,
            own_status: None,
            identity: None,
            https: false,
            client_tls: None,
            body_bytes: 0,
            rate_limit: None,
            purge: false,
            buffered: false,
            validation: None,
            grpc: None,
            request_id: None,
            trace: None,
            mirror: None,
        }
    }

    pub(super) fn route(&self) -> Option<&Route> {
        Some(&self.topology.as_ref()?.routes[self.route?])
    }

    pub(super) fn upstream(&self) -> Option<&Upstream> {
        Some(&self.topology.as_ref()?.upstreams[self.upstream?])
    }

    /// Records that tollgate answered the request itself with `status`.
    pub(super) fn answered(&mut self, status: u16) {
        self.own_status = Some(status);
    }

    pub(super) fn own_status(&self) -> Option<u16> {
        self.own_status
    }

    /// The verified client certificate of the request's connection.
    pub(super) fn client_cert(&self) -> Option<&ClientCert> {
        ClientCert::of_digest(self.client_tls.as_deref()?)
    }

    /// The upstream timings of the request's span, when it is recorded.
    pub(super) fn trace_timings(
        &mut self,
    ) -> Option<&mut crate::observe::tracing::UpstreamTimings> {
        self.trace.as_mut()?.timings()
    }

    /// The path to forward: the normalized one, or `received` when that is it.
    pub(super) fn forward_path<'a>(&'a self, received: &'a str) -> &'a str {
        self.forward_path.as_deref().unwrap_or(received)
    }
}
