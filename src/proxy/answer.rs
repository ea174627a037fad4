//! tollgate's own answers: sending one (the one place that records the status of
//! an answer tollgate writes itself), and which answer a failed request gets.

use super::RequestCtx;
use crate::edge::grpc::{self, GrpcCode};
use crate::edge::linger::discard_rest_of_body;
use crate::edge::respond::send_answer;
use crate::filters::Answer;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// Sends `answer` to the client of `session` and records its status in `ctx`;
/// the route's error page for the status, when it has one, is the body. A
/// gRPC call gets the answer in gRPC's form instead (see [`send_grpc`]).
/// Returns `Ok(true)`, what `request_filter` returns for an answered request.
pub(super) async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut answer: Answer,
) -> Result<bool> {
    ctx.answered(answer.status.as_u16());
    if ctx.grpc.is_some() {
        send_grpc(session, answer).await?;
        return Ok(true);
    }
    if let Some(page) = ctx.route().and_then(|r| r.error_pages.get(answer.status)) {
        answer.body = page.body.clone();
        answer
            .headers
            .retain(|(name, _)| name != http::header::CONTENT_TYPE);
        answer
            .headers
            .push((http::header::CONTENT_TYPE, page.content_type.clone()));
    }
    if answer.close {
        session.set_keepalive(None);
    }
    let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
    for (name, value) in answer.headers {
        header.insert_header(name, value)?;
    }
    send_answer(session, header, answer.body).await?;
    if answer.linger {
        discard_rest_of_body(session).await;
    }
    Ok(true)
}

/// Sends `answer` to a gRPC call as gRPC's "trailers-only" answer: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` (the answer's own gRPC
/// code, else the one its status maps to) and `grpc-message` (its text), and
/// the end of the stream. Its other headers (`Retry-After`, `WWW-Authenticate`)
/// stay; error pages do not apply.
async fn send_grpc(session: &mut Session, answer: Answer) -> Result<()> {
    let code = answer
        .grpc_code
        .unwrap_or_else(|| GrpcCode::for_status(answer.status));
    let message = grpc_message(&answer);
    let mut header = ResponseHeader::build(StatusCode::OK, Some(answer.headers.len() + 3))?;
    for (name, value) in answer.headers {
        if name != CONTENT_TYPE {
            header.insert_header(name, value)?;
        }
    }
    header.insert_header(CONTENT_TYPE, "application/grpc")?;
    header.insert_header(grpc::GRPC_STATUS, code.header_value())?;
    header.insert_header(grpc::GRPC_MESSAGE, message)?;
    if !session.is_http2() {
        // HTTP/1.1 frames the empty body; HTTP/2 ends the stream with the head.
        header.set_content_length(0)?;
    }
    if answer.close {
        session.set_keepalive(None);
    }
    // As a task, so that the head itself ends an HTTP/2 stream (END_STREAM
    // on HEADERS): `write_response_header` would leave it open.
    let head_only = HttpTask::Header(Box::new(header), true);
    session.write_response_tasks(vec![head_only]).await?;
    Ok(())
}

/// Ends a gRPC call over HTTP/2 whose backend failed after part of its answer
/// reached the client (a backend killed mid-stream, a stream that went quiet
/// past the read timeout) with trailers that say so: `grpc-status` 14 or 4.
/// Without them the client would see a reset stream. Nothing for other
/// requests, or when the client is what failed.
pub(super) async fn end_grpc_stream(session: &mut Session, ctx: &RequestCtx, e: &Error) {
    if ctx.grpc.is_none() || !session.is_http2() || *e.esource() != ErrorSource::Upstream {
        return;
    }
    let Some(answer) = for_error(e) else {
        return;
    };
    let mut trailers = http::HeaderMap::with_capacity(2);
    trailers.insert(
        grpc::GRPC_STATUS,
        GrpcCode::for_status(answer.status).header_value(),
    );
    trailers.insert(grpc::GRPC_MESSAGE, grpc_message(&answer));
    if let Err(write_error) = session
        .downstream_session
        .write_response_trailers(trailers)
        .await
    {
        log::debug!("could not end the gRPC stream: {write_error}");
    }
}

/// The `grpc-message` of `answer`: its text body, else its status.
fn grpc_message(answer: &Answer) -> http::HeaderValue {
    let text = answer
        .headers
        .iter()
        .any(|(name, value)| name == CONTENT_TYPE && value.as_bytes().starts_with(b"text/plain"));
    match std::str::from_utf8(&answer.body) {
        Ok(body) if text && !body.trim().is_empty() => grpc::message_value(body.trim()),
        _ => grpc::message_value(&format!(
            "{} {}",
            answer.status.as_u16(),
            answer.status.canonical_reason().unwrap_or("")
        )),
    }
}

/// A request refused before routing: 400 with `reason`, connection closed.
pub(super) fn bad_request(reason: &str) -> Answer {
    Answer::text(
        StatusCode::BAD_REQUEST,
        format!("400 Bad Request: {reason}"),
    )
    .closing()
}

/// A redirect from a `path_prefix` without its final `/` to the path with it
/// (`path`, the path as forwarded, and `query`): 301 for GET and HEAD, 308
/// (method and body kept) for the others.
pub(super) fn add_slash(method: &http::Method, path: &str, query: Option<&str>) -> Answer {
    let mut location = format!("{path}/");
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let status = if matches!(*method, http::Method::GET | http::Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut answer = Answer {
        status,
        headers: Vec::new(),
        body: bytes::Bytes::new(),
        close: false,
        linger: false,
        grpc_code: None,
    };
    if let Ok(location) = http::HeaderValue::from_str(&location) {
        answer.headers.push((http::header::LOCATION, location));
    }
    answer
}

/// The answer to a request that failed: 504 when the backend timed out, 502 when
/// it refused, reset or answered garbage, the status an `HTTPStatus` error carries
/// (413, 503), 408 for a body that stopped arriving, 400 for a client that sent
/// garbage; `None` when the client is gone. The connection is closed after it;
/// after the rest of the body (lingering close) unless the client's framing or
/// body is what failed (400, 408).
pub(super) fn for_error(e: &Error) -> Option<Answer> {
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
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    return None
                }
                // The client stopped sending its body (client_timeouts.read_body).
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    };
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match code {
        400 => "400 Bad Request",
        408 => "408 Request Timeout: the request body stopped arriving",
        413 => "413 Content Too Large",
        502 => "502 Bad Gateway: the backend failed to answer",
        503 => "503 Service Unavailable: no healthy backend",
        504 => "504 Gateway Timeout: the backend did not answer in time",
        _ => "tollgate could not complete the request",
    };
    let answer = Answer::text(status, message);
    Some(if matches!(code, 400 | 408) {
        answer.closing()
    } else {
        answer.closing_after_body()
    })
}
