//! One HTTP/3 request as a pingora server session: the bridge that lets the
//! same `HttpProxy` (and so the same `ProxyHttp` hooks) serve a request that
//! came over QUIC. [`H3Session`] implements pingora's custom server session
//! on an h3 request stream: the request head as a pingora `RequestHeader`,
//! the request body read as the hooks ask for it, the response head, body and
//! trailers written as they come, and the connection's [`Digest`] (client and
//! local address) so client address, listener policies, metrics and the access
//! log see what they see over TCP. No routing or policy here.

use bytes::{Buf, Bytes};
use futures::FutureExt;
use h3::error::Code;
use h3::server::RequestStream;
use http::header::{self, HeaderName};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::body_buffer::FixedBuffer;
use pingora::protocols::http::custom::server::Session;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, OrErr, Result};
use std::sync::Arc;
use std::time::Duration;
use sync_wrapper::SyncWrapper;

/// The request stream of one HTTP/3 request, both directions.
pub(crate) type H3Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// The request body kept for a retry on another backend (as pingora's own
/// sessions keep): up to this much.
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Connection-specific fields HTTP/3 forbids in a response (RFC 9114 4.2).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// One HTTP/3 request served by pingora's proxy.
pub(crate) struct H3Session {
    request: RequestHeader,
    /// `Sync` for the trait; only ever reached through `&mut self`.
    stream: SyncWrapper<H3Stream>,
    /// The QUIC connection, watched while nothing is left to read.
    connection: quinn::Connection,
    digest: Arc<Digest>,
    response: Option<Box<ResponseHeader>>,
    /// A body chunk read while finding out whether a body follows the head.
    pending: Option<Bytes>,
    /// The client ended its side of the stream: no more body.
    request_done: bool,
    /// The response is complete (or abandoned): nothing more is written.
    ended: bool,
    body_read: usize,
    body_sent: usize,
    retry_buffer: Option<FixedBuffer>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
}

impl H3Session {
    /// The session of `request` on `stream` of `connection`, whose digest is
    /// `digest`. A body chunk (or the end of the stream) already received
    /// with the head is taken now, so that a request without a body is known
    /// to have none, as HTTP/2's END_STREAM on HEADERS tells pingora.
    pub(crate) fn new(
        request: http::Request<()>,
        mut stream: H3Stream,
        connection: quinn::Connection,
        digest: Arc<Digest>,
    ) -> Self {
        let (mut pending, mut request_done) = (None, false);
        match stream.recv_data().now_or_never() {
            Some(Ok(Some(mut data))) => pending = Some(data.copy_to_bytes(data.remaining())),
            Some(Ok(None)) => request_done = true,
            // An error is met again at the first read.
            Some(Err(_)) | None => {}
        }
        let (parts, ()) = request.into_parts();
        H3Session {
            request: RequestHeader::from(parts),
            stream: SyncWrapper::new(stream),
            connection,
            digest,
            response: None,
            pending,
            request_done,
            ended: false,
            body_read: 0,
            body_sent: 0,
            retry_buffer: None,
            read_timeout: None,
            write_timeout: None,
            drain_timeout: None,
        }
    }

    /// The next chunk of the request body, `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if let Some(data) = self.pending.take() {
            return Ok(Some(data));
        }
        if self.request_done {
            return Ok(None);
        }
        let read = self.stream.get_mut().recv_data();
        let chunk = match self.read_timeout {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .or_err(ErrorType::ReadTimedout, "reading an HTTP/3 request body")?,
            None => read.await,
        };
        match chunk.or_err(ErrorType::ReadError, "reading an HTTP/3 request body")? {
            Some(mut data) => Ok(Some(data.copy_to_bytes(data.remaining()))),
            None => {
                self.request_done = true;
                Ok(None)
            }
        }
    }

    /// Sends `data` on the response body, within the write timeout.
    async fn send(&mut self, data: Bytes) -> Result<()> {
        let len = data.len();
        let write = self.stream.get_mut().send_data(data);
        let sent = match self.write_timeout {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .or_err(ErrorType::WriteTimedout, "writing an HTTP/3 response body")?,
            None => write.await,
        };
        sent.or_err(ErrorType::WriteError, "writing an HTTP/3 response body")?;
        self.body_sent += len;
        Ok(())
    }

    /// Resets the response side of the stream (the client sees the response
    /// fail, never a short one taken as whole) and stops the request side.
    fn reset(&mut self, code: Code) {
        if !self.ended {
            self.stream.get_mut().stop_stream(code);
            if !self.request_done {
                self.stream.get_mut().stop_sending(code);
            }
            self.ended = true;
        }
    }

    /// Writes the response head; the first final one only (1xx are dropped,
    /// as pingora's HTTP/2 session drops them), with a Date and without the
    /// fields HTTP/3 forbids.
    async fn write_head(&mut self, mut head: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended || head.status.is_informational() || self.response.is_some() {
            return Ok(());
        }
        head.insert_header(header::DATE, get_cached_date())?;
        for name in &HOP_BY_HOP {
            head.remove_header(name);
        }
        let response = http::Response::from_parts(head.as_owned_parts(), ());
        self.stream
            .get_mut()
            .send_response(response)
            .await
            .or_err(ErrorType::WriteError, "writing an HTTP/3 response head")?;
        self.response = Some(head);
        if end {
            self.end_response().await?;
        }
        Ok(())
    }

    /// Ends the response stream (FIN), once.
    async fn end_response(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.stream
            .get_mut()
            .finish()
            .await
            .or_err(ErrorType::WriteError, "ending an HTTP/3 response")
    }

    /// Waits for the connection to close: the client's way of giving up a
    /// request whose body it has sent whole.
    async fn closed(&self) -> Result<Option<Bytes>> {
        let reason = self.connection.closed().await;
        Error::e_explain(
            ErrorType::ConnectionClosed,
            format!("HTTP/3 connection closed: {reason}"),
        )
    }
}

#[async_trait::async_trait]
impl Session for H3Session {
    fn req_header(&self) -> &RequestHeader {
        &self.request
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        &mut self.request
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let chunk = self.next_chunk().await?;
        if let Some(data) = &chunk {
            self.body_read += data.len();
            if let Some(buffer) = self.retry_buffer.as_mut() {
                buffer.write_to_buffer(data);
            }
        }
        Ok(chunk)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        let limit = self.drain_timeout;
        let drain = async {
            while self.read_body_bytes().await?.is_some() {}
            Ok(())
        };
        match limit {
            Some(limit) => tokio::time::timeout(limit, drain)
                .await
                .or_err(ErrorType::ReadTimedout, "draining an HTTP/3 request body")?,
            None => drain.await,
        }
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.write_head(resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.write_head(Box::new(resp.clone()), end).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.response.is_none() {
            return Error::e_explain(ErrorType::WriteError, "HTTP/3 body before its head");
        }
        if !data.is_empty() {
            self.send(data).await?;
        }
        if end {
            self.end_response().await?;
        }
        Ok(())
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended || self.response.is_none() {
            return Ok(());
        }
        self.stream
            .get_mut()
            .send_trailers(trailers)
            .await
            .or_err(ErrorType::WriteError, "writing HTTP/3 response trailers")?;
        self.end_response().await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            let end = match task {
                HttpTask::Header(head, end) => {
                    self.write_head(head, false).await?;
                    end
                }
                HttpTask::Body(data, end) => {
                    if let Some(data) = data.filter(|d| !d.is_empty()) {
                        self.write_body(data, false).await?;
                    }
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "an upgraded body on an HTTP/3 session",
                    );
                }
                HttpTask::Trailer(Some(trailers)) => {
                    self.write_trailers(*trailers).await?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            };
            end_stream = end_stream || end;
        }
        if end_stream {
            self.end_response().await?;
        }
        Ok(end_stream)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.drain_timeout = timeout;
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    fn request_summary(&self) -> String {
        format!(
            "{} {}, Host: {}",
            self.request.method,
            self.request
                .uri
                .path_and_query()
                .map_or("", http::uri::PathAndQuery::as_str),
            self.request.uri.authority().map_or("", |a| a.as_str()),
        )
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.response.as_deref()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.reset(Code::H3_INTERNAL_ERROR);
    }

    async fn abandon(&mut self, _ctx: &str) {
        self.reset(Code::H3_REQUEST_CANCELLED);
    }

    fn is_body_done(&mut self) -> bool {
        self.pending.is_none() && self.request_done
    }

    /// Ends the response; one never begun is reset (as a dropped HTTP/2
    /// stream is), so the client sees a failed request, not an empty answer.
    async fn finish(&mut self) -> Result<()> {
        if self.response.is_none() {
            self.reset(Code::H3_INTERNAL_ERROR);
            return Ok(());
        }
        self.end_response().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body_read == 0
            && self.pending.is_none()
            && (self.request_done
                || self
                    .request
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|length| length.as_bytes() == b"0"))
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.is_body_done() {
            self.closed().await
        } else {
            self.read_body_bytes().await
        }
    }

    fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    fn body_bytes_read(&self) -> usize {
        self.body_read
    }

    fn digest(&self) -> Option<&Digest> {
        Some(&self.digest)
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        Arc::get_mut(&mut self.digest)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.peer_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.digest.socket_digest.as_ref()?.local_addr()
    }

    /// The head as HTTP/1.1 with a Host from `:authority`: what pingora's
    /// subrequests (request buffering, cache refreshes) parse.
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        let mut head = self.request.clone();
        head.set_version(http::Version::HTTP_11);
        if !head.headers.contains_key(header::HOST) {
            if let Some(authority) = self.request.uri.authority() {
                let _ = head.insert_header(header::HOST, authority.as_str());
            }
        }
        http_req_header_to_wire(&head).map_or_else(Bytes::new, |wire| wire.freeze())
    }

    fn enable_retry_buffering(&mut self) {
        if self.retry_buffer.is_none() {
            self.retry_buffer = Some(FixedBuffer::new(RETRY_BUFFER_LIMIT));
        }
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.retry_buffer.as_ref().is_some_and(|b| b.is_truncated())
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        self.retry_buffer
            .as_ref()
            .filter(|b| !b.is_truncated())
            .and_then(|b| b.get_buffer())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
