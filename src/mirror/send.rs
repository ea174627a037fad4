//! The exchange of one copy with a shadow backend, in a background task:
//! over the backend's own peer (TLS, SNI, verification, HTTP/2 and the
//! upstream's timeouts as its traffic has them), on connections of
//! mirroring's own pool, the answer read to its end and discarded.

use super::{Outcome, Ticket};
use crate::balance::{InFlightGuard, Upstream};
use crate::observe::calls::{CallEnd, CallError, CallSpan, Callee};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// The connections to shadow backends, shared by every mirror.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// The most interim (1xx) answers read before the final one.
const MAX_INTERIM: usize = 8;

/// Sends `head` and `body` to backend `index` of `upstream` from a new
/// task, and settles `ticket` with what became of it. The exchange counts
/// as the backend's traffic: in its in-flight count (from this call on), in
/// `tollgate_upstream_requests_total`, and for its passive health, outlier
/// detection and latency. It is cut off at the mirror's `timeout`. With a
/// `span` (the request is recorded), the span ends with the exchange.
pub(super) fn spawn(
    ticket: Ticket,
    upstream: Arc<Upstream>,
    index: usize,
    head: Box<RequestHeader>,
    body: Bytes,
    span: Option<CallSpan>,
) {
    let Some(in_flight) = upstream
        .backends
        .get(index)
        .map(|b| InFlightGuard::new(&b.state))
    else {
        ticket.settle(Outcome::Failed);
        return;
    };
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let backend = &upstream.backends[index];
        let started = Instant::now();
        let timeout = ticket.mirror().timeout;
        let traced = span.map(|span| (span, head.method.clone()));
        let (outcome, end) =
            match tokio::time::timeout(timeout, exchange(&backend.peer, head, body)).await {
                Ok(Ok(status)) => {
                    backend.state.metrics.requests.inc(status);
                    let latency = upstream.measures_latency().then(|| started.elapsed());
                    upstream.record_answer(index, status, latency);
                    (Outcome::Sent, CallEnd::shadow_answered(status))
                }
                Ok(Err(e)) => {
                    log::debug!("mirror copy to {} failed: {e}", backend.label);
                    backend.state.metrics.requests.inc_error();
                    upstream.record_failure(index);
                    (Outcome::Failed, CallEnd::failed(CallError::of(&e)))
                }
                // The mirror's own bound, not a failure of the backend's.
                Err(_) => {
                    log::debug!(
                        "mirror copy to {} timed out after {timeout:?}",
                        backend.label
                    );
                    backend.state.metrics.requests.inc_error();
                    (Outcome::Failed, CallEnd::failed(CallError::Timeout))
                }
            };
        ticket.settle(outcome);
        if let Some((span, method)) = traced {
            let shadow = Callee::Shadow {
                upstream: Arc::clone(&upstream),
                backend: index,
                method,
            };
            span.finish(shadow, end);
        }
    });
}

/// One request to `peer` and its whole answer; the answer's status.
async fn exchange(peer: &HttpPeer, mut head: Box<RequestHeader>, body: Bytes) -> Result<u16> {
    let (mut session, _reused) = CONNECTOR.get_http_session(peer).await?;
    session.set_read_timeout(peer.options.read_timeout);
    session.set_write_timeout(peer.options.write_timeout);
    if matches!(session, HttpSession::H2(_)) {
        to_http2(&mut head, peer.is_tls())?;
    }
    session.write_request_header(head).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await?;
    let mut status = 0;
    for _ in 0..MAX_INTERIM {
        session.read_response_header().await?;
        status = session.response_header().map_or(0, |h| h.status.as_u16());
        if !(100..200).contains(&status) {
            break;
        }
    }
    if !(200..=599).contains(&status) {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "no final answer");
    }
    while session.read_response_body().await?.is_some() {}
    CONNECTOR
        .release_http_session(session, peer, peer.options.idle_timeout)
        .await;
    Ok(status)
}

/// Makes an HTTP/1.1 head one for HTTP/2: `Host` becomes the `:authority`
/// of an absolute target with the peer's scheme.
fn to_http2(head: &mut RequestHeader, tls: bool) -> Result<()> {
    let host = head.remove_header(&http::header::HOST);
    let authority = match &host {
        Some(host) => host.to_str().ok(),
        None => head.uri.authority().map(http::uri::Authority::as_str),
    };
    let Some(authority) = authority else {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "no authority for HTTP/2");
    };
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = http::Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "target for HTTP/2", e))?;
    head.set_uri(uri);
    head.set_version(http::Version::HTTP_2);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_heads_carry_the_host_as_authority() {
        let mut head = RequestHeader::build("GET", b"/a/b?c=1", None).unwrap();
        head.insert_header("Host", "shadow.internal:8080").unwrap();
        to_http2(&mut head, false).unwrap();
        assert_eq!(head.uri.to_string(), "http://shadow.internal:8080/a/b?c=1");
        assert!(head.headers.get("host").is_none());
        assert_eq!(head.version, http::Version::HTTP_2);
        let mut hostless = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(to_http2(&mut hostless, true).is_err());
    }
}
