//! The gRPC health probe: one call of the standard health service,
//! `grpc.health.v1.Health/Check`, over HTTP/2 with the backend's own peer
//! (TLS, SNI and verification as traffic has them, or cleartext h2c).
//!
//! The two messages are tiny protobufs written and read here by hand:
//! `HealthCheckRequest {string service = 1}` and `HealthCheckResponse
//! {ServingStatus status = 1}`, where `SERVING` is 1.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// The method the probe calls.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `ServingStatus.SERVING`.
const SERVING: u64 = 1;
/// The most response body a probe reads; a health answer is a few bytes.
const MAX_ANSWER: usize = 4096;

/// A probe of one backend's gRPC health service for one `service`.
pub(super) struct GrpcHealthCheck {
    /// The backend's peer with the probe's timeouts, one stream per connection
    /// (each probe opens its own connection, as the HTTP probes do).
    peer: HttpPeer,
    head: RequestHeader,
    /// The framed request message.
    body: Bytes,
    connector: Connector,
}

impl GrpcHealthCheck {
    /// The probe of `peer` (already given the probe's timeouts) asking about
    /// `service` (`""`: the server as a whole); `authority` is the `:authority`
    /// sent (the backend's address as written).
    pub(super) fn new(mut peer: HttpPeer, service: &str, authority: &str) -> Self {
        peer.options.max_h2_streams = 1;
        let scheme = if peer.is_tls() { "https" } else { "http" };
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = http::Method::POST;
        parts.version = http::Version::HTTP_2;
        // Backend labels are `IP:port` or `name:port`, always an authority.
        parts.uri = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(CHECK_PATH)
            .build()
            .unwrap_or_else(|_| http::Uri::from_static(CHECK_PATH));
        let headers = &mut parts.headers;
        let value = http::HeaderValue::from_static;
        headers.insert(http::header::CONTENT_TYPE, value("application/grpc"));
        headers.insert(http::header::TE, value("trailers"));
        headers.insert(http::header::USER_AGENT, value("tollgate-health-check"));
        GrpcHealthCheck {
            peer,
            head: RequestHeader::from(parts),
            body: frame(&check_request(service)),
            connector: Connector::new(None),
        }
    }
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    /// Thresholds are counted by tollgate's `ActiveHealth`, not by pingora.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }

    /// One `Check` call: healthy when the answer is `SERVING` with
    /// `grpc-status: 0`.
    async fn check(&self, _target: &pingora::lb::Backend) -> Result<()> {
        let (session, _) = self.connector.get_http_session(&self.peer).await?;
        let HttpSession::H2(mut h2) = session else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "the backend did not speak HTTP/2",
            );
        };
        h2.read_timeout = self.peer.options.read_timeout;
        h2.write_request_header(Box::new(self.head.clone()), false)?;
        h2.write_request_body(self.body.clone(), true).await?;
        h2.read_response_header().await?;
        let head = h2
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no answer"))?;
        if head.status != http::StatusCode::OK {
            return unhealthy(format!("HTTP status {}", head.status.as_u16()));
        }
        // A trailers-only answer: the call failed before any message.
        if let Some(status) = head.headers.get("grpc-status") {
            return check_grpc_status(Some(status));
        }
        let mut answer = BytesMut::new();
        while let Some(chunk) = h2.read_response_body().await? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return unhealthy("the health answer is too large".into());
            }
            answer.extend_from_slice(&chunk);
        }
        let trailers = h2.read_trailers().await?;
        check_grpc_status(trailers.as_ref().and_then(|t| t.get("grpc-status")))?;
        match serving_status(&answer) {
            Some(SERVING) => Ok(()),
            Some(status) => unhealthy(format!("serving status {}", status_name(status))),
            None => unhealthy("the health answer is not a HealthCheckResponse".into()),
        }
    }
}

fn unhealthy(why: String) -> Result<()> {
    Error::e_explain(ErrorType::CustomCode("gRPC health check", 0), why)
}

/// `Ok` for `grpc-status: 0`; a missing status is a failed call.
fn check_grpc_status(status: Option<&http::HeaderValue>) -> Result<()> {
    match status.map(http::HeaderValue::as_bytes) {
        Some(b"0") => Ok(()),
        Some(code) => unhealthy(format!(
            "grpc-status {}",
            String::from_utf8_lossy(code).trim()
        )),
        None => unhealthy("the answer has no grpc-status".into()),
    }
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

/// `HealthCheckRequest {service}` in protobuf: field 1, length-delimited
/// (nothing at all for the empty string, protobuf's default).
fn check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    message
}

/// `message` as one gRPC length-prefixed message: not compressed, then its
/// length as 4 bytes big-endian.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// The `status` (field 1) of the one uncompressed `HealthCheckResponse` in
/// `body`; 0 (`UNKNOWN`, protobuf's default) when the message leaves it out;
/// `None` when `body` is not such a message.
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&compressed, rest) = body.split_first()?;
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let mut message = rest.get(4..)?;
    if compressed != 0 || message.len() != length {
        return None;
    }
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut message)?,
            (_, 0) => {
                take_varint(&mut message)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(take_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one varint off the front of `input`.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_protobufs() {
        assert_eq!(&frame(&check_request(""))[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &frame(&check_request("app"))[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']
        );
        let long = "s".repeat(200);
        let message = check_request(&long);
        assert_eq!(&message[..3], &[0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn serving_status_is_read_from_the_answer() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        // The default (UNKNOWN) is left out; unknown fields are skipped.
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 1]),
            Some(SERVING)
        );
        // Compressed, truncated, or not a message at all.
        assert_eq!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 1, 0x08]), None);
        assert_eq!(serving_status(b"<html>"), None);
        assert_eq!(serving_status(&[]), None);
    }
}
