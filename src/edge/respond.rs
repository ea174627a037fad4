//! Direct answers: the `respond` route action, prepared at config load, and the
//! short error answers tollgate sends itself (404, 400, 502, 503, 504).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;

/// A whole answer of `status` with `body` of `content_type`, Content-Length
/// set: for the small services (metrics, admin, HTTPS redirects) that answer
/// through pingora's `ServeHttp`.
pub(crate) fn whole_answer(
    status: http::StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> http::Response<Vec<u8>> {
    let length = body.len();
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(length),
    );
    response
}

/// A complete response built once at load; sending it clones the header.
pub struct DirectResponse {
    header: ResponseHeader,
    body: Bytes,
}

impl DirectResponse {
    /// The response `status` with `headers` and `body` (Content-Length set here).
    pub fn new(
        status: http::StatusCode,
        headers: impl IntoIterator<Item = (http::HeaderName, http::HeaderValue)>,
        body: Bytes,
    ) -> Self {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        for (name, value) in headers {
            parts.headers.append(name, value);
        }
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
        DirectResponse {
            header: ResponseHeader::from(parts),
            body,
        }
    }

    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }

    /// Writes the response (see [`write_whole`]); the connection stays open
    /// for the next request.
    pub async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        write_whole(session, self.header.clone(), self.body.clone()).await
    }
}

/// Writes `header` with `body` (Content-Length set here, except on a 204,
/// which has none); HEAD gets the header only (see [`write_whole`]). The
/// connection stays open.
pub(crate) async fn send_answer(
    session: &mut Session,
    mut header: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    if header.status != http::StatusCode::NO_CONTENT {
        header.set_content_length(body.len())?;
    }
    write_whole(session, header, body).await
}

/// Writes `header` and `body` as one answer that ends its stream; HEAD gets
/// the header only. Written as tasks that carry the end of the answer:
/// pingora's `write_response_header` drops the end flag on HTTP/2 (an empty
/// answer would leave its stream open, reset when a failed request lets go
/// of it), and a subrequest's `write_response_body` drops it too (the main
/// request relaying the answer would never see it end).
async fn write_whole(
    session: &mut Session,
    header: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    let mut tasks = Vec::with_capacity(2);
    tasks.push(HttpTask::Header(Box::new(header), head_only));
    if !head_only {
        tasks.push(HttpTask::Body(Some(body), true));
    }
    session.write_response_tasks(tasks).await?;
    Ok(())
}

/// Sends a short plain-text error answer with `message` as its body. With `close`,
/// the connection is closed after it (used when the rest of the request cannot be
/// trusted or read).
pub async fn send_error(
    session: &mut Session,
    status: u16,
    message: &str,
    close: bool,
) -> pingora::Result<()> {
    if close {
        session.set_keepalive(None);
    }
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    send_answer(session, header, Bytes::from(format!("{message}\n"))).await
}
