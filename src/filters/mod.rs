//! Request filters: each looks at a request in `request_filter` and either lets it
//! pass or returns the [`Answer`] the client gets instead; the proxy sends it.

pub mod auth;
pub mod cors;
pub mod framing;
pub mod rate_limit;
pub mod request_head;
pub mod request_path;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};

/// An answer of tollgate's own instead of the backend's.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Close the connection after it (what follows in it cannot be trusted).
    pub close: bool,
    /// Before closing, read and discard the rest of the request body for a
    /// while (lingering close), so a client still sending it reads the answer.
    pub linger: bool,
    /// The gRPC status a gRPC call gets instead of the one `status` maps to
    /// (see `edge::grpc`).
    pub grpc_code: Option<crate::edge::grpc::GrpcCode>,
}

impl Answer {
    /// `status` with a plain-text `message` and `Cache-Control: no-store`.
    pub fn text(status: http::StatusCode, message: impl Into<String>) -> Answer {
        let mut body = message.into();
        body.push('\n');
        Answer {
            status,
            headers: vec![
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: Bytes::from(body),
            close: false,
            linger: false,
            grpc_code: None,
        }
    }

    /// The same answer, closing the connection after it.
    pub fn closing(mut self) -> Answer {
        self.close = true;
        self
    }

    /// The same answer, closing the connection after it once the client has
    /// sent the rest of its body (within bounds: see `edge::linger`). For
    /// answers to requests whose framing is sound.
    pub fn closing_after_body(mut self) -> Answer {
        self.close = true;
        self.linger = true;
        self
    }

    /// The same answer with `{"message": "<reason phrase>"}` as its body.
    pub(crate) fn into_json(mut self) -> Answer {
        let phrase = self.status.canonical_reason().unwrap_or("Error");
        self.body = Bytes::from(format!("{{\"message\": \"{phrase}\"}}\n"));
        self.headers.retain(|(name, _)| name != CONTENT_TYPE);
        self.headers
            .push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self
    }
}
