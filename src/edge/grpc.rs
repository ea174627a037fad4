//! gRPC as the edge meets it: telling a gRPC call from other requests, its
//! deadline (`grpc-timeout`), and the form of tollgate's own answers to one.
//!
//! A gRPC client reads the outcome of a call from `grpc-status` and
//! `grpc-message`, not from the HTTP status, and takes an HTML or text error
//! page for a broken call. So when tollgate itself fails a call (no backend,
//! timeout, rate limit, auth), the answer is HTTP 200 with `content-type:
//! application/grpc` and the gRPC status in the head, ending the stream at
//! once: the "trailers-only" answer of the gRPC protocol.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http::StatusCode;
use std::time::Duration;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The gRPC status codes tollgate answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code of an answer tollgate would give a plain HTTP client with
    /// `status`: as gRPC maps HTTP statuses, with 504 a deadline, 413 and 429
    /// exhausted resources.
    pub fn for_status(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            408 | 504 => GrpcCode::DeadlineExceeded,
            413 | 429 => GrpcCode::ResourceExhausted,
            502 | 503 => GrpcCode::Unavailable,
            400 | 500 => GrpcCode::Internal,
            _ => GrpcCode::Unknown,
        }
    }

    /// The `grpc-status` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            GrpcCode::Unknown => "2",
            GrpcCode::DeadlineExceeded => "4",
            GrpcCode::PermissionDenied => "7",
            GrpcCode::ResourceExhausted => "8",
            GrpcCode::Unimplemented => "12",
            GrpcCode::Internal => "13",
            GrpcCode::Unavailable => "14",
            GrpcCode::Unauthenticated => "16",
        })
    }
}

/// Whether a request with these headers is a gRPC call: `content-type:
/// application/grpc`, `application/grpc+proto` and the like (not gRPC-Web,
/// whose answers carry their status in the body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
}

/// Whether the client said it takes trailers (`TE: trailers`), which gRPC
/// requires and a proxy must pass on to the backend.
pub fn takes_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// The call's deadline from `grpc-timeout` (1 to 8 digits and a unit: `H`,
/// `M`, `S`, `m`, `u`, `n`); `None` when it has none or it is malformed.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(GRPC_TIMEOUT)?.as_bytes())
}

fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `message` as a `grpc-message` value: percent-encoded outside printable
/// ASCII and for `%` itself, as the gRPC protocol has it.
pub fn message_value(message: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    // Only printable ASCII is left, always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers(&[("content-type", grpc)])), "{grpc}");
        }
        for other in ["application/grpc-web", "application/json", "text/html", ""] {
            assert!(!is_grpc(&headers(&[("content-type", other)])), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn te_trailers_is_found_among_others() {
        assert!(takes_trailers(&headers(&[("te", "trailers")])));
        assert!(takes_trailers(&headers(&[("te", "gzip, Trailers")])));
        assert!(!takes_trailers(&headers(&[("te", "gzip")])));
        assert!(!takes_trailers(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"123456789m",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn codes_follow_the_http_status_and_messages_are_percent_encoded() {
        assert_eq!(
            GrpcCode::for_status(StatusCode::SERVICE_UNAVAILABLE),
            GrpcCode::Unavailable
        );
        assert_eq!(
            GrpcCode::for_status(StatusCode::GATEWAY_TIMEOUT),
            GrpcCode::DeadlineExceeded
        );
        assert_eq!(
            GrpcCode::for_status(StatusCode::TOO_MANY_REQUESTS),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(
            GrpcCode::for_status(StatusCode::UNAUTHORIZED),
            GrpcCode::Unauthenticated
        );
        assert_eq!(
            GrpcCode::for_status(StatusCode::FORBIDDEN),
            GrpcCode::PermissionDenied
        );
        assert_eq!(GrpcCode::Unauthenticated.header_value(), "16");
        assert_eq!(
            message_value("no backend: 100% down\n"),
            "no backend: 100%25 down%0A"
        );
        assert_eq!(message_value("caf\u{e9}"), "caf%C3%A9");
    }
}
