//! The steps of `request_filter`, in the order a request meets them: its head
//! (framing, Host, header names), its connection (TLS, client address), its route
//! (on the normalized path), then whether the route lets it in (allow/deny, body
//! size, rate limit, auth). Each step returns the [`Answer`] that stops the
//! request, or lets it go on.

use super::{answer, caching, Proxy, RequestCtx};
use crate::config::{ErrorBody, RateKey};
use crate::edge::answer_headers::AnswerHeaders;
use crate::edge::client_certs::ClientCert;
use crate::filters::auth::{AuthRequest, Verdict};
use crate::filters::cors::Cors;
use crate::filters::framing::{self, Framing};
use crate::filters::rate_limit::{ceil_secs, RouteLimit};
use crate::filters::request_head;
use crate::filters::request_path::{self, Refusal};
use crate::filters::Answer;
use crate::forwarding::canonical_ip;
use crate::metrics::metrics;
use crate::router::RouteMatch;
use crate::topology::{Route, Topology};
use http::StatusCode;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Where routing sent a request.
pub(super) enum Routed {
    /// On to this route.
    Route(usize),
    /// Answered already (refused, no route, or redirected to add a `/`).
    Answer(Answer),
}

impl Proxy {
    /// Checks the request head before routing: framing (see `framing`), the Host
    /// and header names (see `request_head`). Agreeing Content-Lengths are
    /// collapsed into one and underscore headers dropped on the way. Returns the
    /// 400 of a head that is refused.
    pub(super) fn check_head(&self, session: &mut Session) -> Result<Option<Answer>> {
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
            Framing::Refuse(reason) => return Ok(Some(answer::bad_request(reason))),
        }
        let underscores = self.settings.underscores_in_headers;
        Ok(request_head::check(session.req_header_mut(), underscores)
            .err()
            .map(|refusal| answer::bad_request(refusal.reason())))
    }

    /// Notes what the connection tells about the request: whether it came over TLS
    /// (arming HSTS where the listener sets it), the client certificate it
    /// verified, its peer, and its client (through `trusted_proxies`).
    pub(super) fn note_connection(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        topology: &Topology,
    ) {
        if let Some(listener) = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|local| self.settings.tls_listeners.get(local))
        {
            ctx.https = true;
            let over_tcp = !session.as_ref().is_custom();
            if let Some(headers) = session.downstream_modules_ctx.get_mut::<AnswerHeaders>() {
                headers.set(listener, over_tcp);
            }
            ctx.client_tls = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .filter(|tls| ClientCert::of_digest(tls).is_some())
                .cloned();
        }
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| canonical_ip(a.ip()));
        ctx.client_ip = topology
            .trusted_proxies
            .client_ip(ctx.peer_ip, &session.req_header().headers);
    }

    /// Routes the request in `topology` on its normalized path, noting the route
    /// and the path to forward in `ctx`.
    pub(super) fn route(
        &self,
        topology: &Topology,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Routed {
        let (found, forward_path) = match self.route_request(topology, req) {
            Ok(routed) => routed,
            Err(refusal) => return Routed::Answer(answer::bad_request(refusal.reason())),
        };
        ctx.forward_path = forward_path;
        match found {
            Some(RouteMatch::Route(id)) => {
                ctx.route = Some(id);
                Routed::Route(id)
            }
            Some(RouteMatch::AddSlash(id)) => {
                ctx.route = Some(id);
                let path = ctx.forward_path(req.uri.path());
                Routed::Answer(answer::add_slash(&req.method, path, req.uri.query()))
            }
            None => Routed::Answer(Answer::text(
                StatusCode::NOT_FOUND,
                "404 Not Found: no route for this host and path",
            )),
        }
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

    /// Whether `route` lets the request in, in this order: the client's address
    /// (403), a PURGE from a client the route's cache does not allow it from
    /// (403), the announced body size (413, connection closed), the rate limit
    /// and the auth policy (429 or 503, 401, 403, 503). A CORS `preflight` is
    /// answered (204) instead of the rate limit and auth; it is counted
    /// against the limit only with `cors.count_preflights`. Also applies the
    /// client timeouts. Returns the answer of a request that is stopped.
    pub(super) async fn admission(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        preflight: bool,
    ) -> Option<Answer> {
        if !route.allows_client(ctx.client_ip) {
            return Some(Answer::text(StatusCode::FORBIDDEN, "403 Forbidden"));
        }
        if let Some((cache, _)) = &route.cache {
            if caching::is_purge_method(session.req_header()) {
                if !cache.may_purge(ctx.client_ip) {
                    return Some(Answer::text(
                        StatusCode::FORBIDDEN,
                        "403 Forbidden: PURGE is not allowed from this address",
                    ));
                }
                ctx.purge = true;
            }
        }
        if let Some(too_large) = self.apply_client_limits(session) {
            return Some(too_large);
        }
        if preflight {
            return Some(self.answer_preflight(session, ctx, route).await);
        }
        self.authorize(session, ctx, route).await.err()
    }

    /// Applies the client timeouts, and refuses a body announced larger than
    /// `max_request_body` (413, connection closed once the client has sent it)
    /// before anything is forwarded.
    fn apply_client_limits(&self, session: &mut Session) -> Option<Answer> {
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
        announced
            .filter(|&len| len > self.settings.max_request_body)
            .map(|_| {
                Answer::text(StatusCode::PAYLOAD_TOO_LARGE, "413 Content Too Large")
                    .closing_after_body()
            })
    }

    /// Applies the route's rate limit and auth policy, in that order, except that
    /// a limit keyed on `auth_subject` runs after the policy found the subject.
    /// The cache's background refresh of a stale answer (a subrequest of a
    /// request admitted already) is not counted against the limit again.
    async fn authorize(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> std::result::Result<(), Answer> {
        let background = session.subrequest_ctx.is_some();
        let limit = route.rate_limit.as_ref().filter(|_| !background);
        let limit_after_auth = limit.is_some_and(|l| l.limiter.key == RateKey::AuthSubject);
        let headers = &session.req_header().headers;
        if let Some(limit) = limit.filter(|_| !limit_after_auth) {
            count_against(limit, route, ctx, headers).await?;
        }
        if let Some(auth) = &route.auth {
            let head = session.req_header();
            let request = AuthRequest {
                head,
                client: ctx.client_ip,
                path: ctx.forward_path(head.uri.path()),
                client_cert: ctx.client_cert(),
                request_id: self
                    .settings
                    .request_ids
                    .as_ref()
                    .map(|ids| ids.header())
                    .zip(ctx.request_id.as_ref()),
                trace: ctx.trace.as_ref(),
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
                    let answer = rejection.into_answer();
                    return Err(match auth.error_body {
                        ErrorBody::Json => answer.into_json(),
                        ErrorBody::Text => answer,
                    });
                }
            }
        }
        if let Some(limit) = limit.filter(|_| limit_after_auth) {
            count_against(limit, route, ctx, headers).await?;
        }
        Ok(())
    }

    /// The answer to a CORS preflight of `route`: 204 (its headers are the
    /// policy's, see `filters::cors`), or the rate limit's refusal when the
    /// route counts preflights and the bucket is empty. Never runs auth.
    async fn answer_preflight(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        route: &Route,
    ) -> Answer {
        let counted = route
            .rate_limit
            .as_ref()
            .filter(|_| route.cors.as_ref().is_some_and(|c| c.counts_preflights()));
        if let Some(limit) = counted {
            let headers = &session.req_header().headers;
            if let Err(refused) = count_against(limit, route, ctx, headers).await {
                return refused;
            }
        }
        Cors::preflight_answer()
    }
}

/// Counts the request against `limit`; the refusal when its bucket is empty.
async fn count_against(
    limit: &Arc<RouteLimit>,
    route: &Route,
    ctx: &mut RequestCtx,
    headers: &http::HeaderMap,
) -> std::result::Result<(), Answer> {
    let subject = ctx.identity.as_ref().and_then(|i| i.subject.as_deref());
    match limit.admit(ctx.client_ip, headers, subject).await {
        Ok(allowance) => {
            ctx.rate_limit = Some((Arc::clone(limit), allowance));
            Ok(())
        }
        Err(refusal) => {
            metrics()
                .rate_limited
                .with_label_values(&[route.label.as_str(), limit.name.as_str()])
                .inc();
            Err(refusal)
        }
    }
}

/// Whether the path part of a request-target (up to `?`) is UTF-8.
fn target_path_is_utf8(target: &[u8]) -> bool {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    std::str::from_utf8(path).is_ok()
}
