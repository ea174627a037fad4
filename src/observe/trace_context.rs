//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): reading a
//! request's `traceparent`, and the one tollgate passes on with its own span
//! as the parent.
//!
//! `tracestate` is left as the client sent it when its `traceparent` is
//! continued (tollgate adds no entry of its own), and removed when a new trace
//! is started in place of an unreadable one, as the standard asks.

use super::write_hex;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The W3C trace context headers.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `traceparent` as written into pingora request heads; a `Bytes` name
/// spares pingora a copy of it on every request.
pub const TRACEPARENT_WRITTEN: Bytes = Bytes::from_static(b"traceparent");

/// `traceparent`'s length in version 00: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// The sampled bit of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// What a valid incoming `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Reads one `traceparent` value. `None` for anything the standard calls
/// invalid: a wrong length or separator, upper-case or non-hex digits, an
/// all-zero trace or parent ID, version `ff`, or a version-00 value with more
/// after it. A later version is read by its version-00 prefix when what
/// follows starts with `-`, as the standard asks.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_u128(&value[0..2])? as u8;
    if version == 0xff
        || (version == 0 && value.len() != TRACEPARENT_LEN)
        || (value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u128(&value[36..52])? as u64;
    let flags = hex_u128(&value[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some(Parent {
        trace_id,
        span_id,
        sampled: flags & SAMPLED != 0,
    })
}

/// Lower-case hex digits only (the standard forbids upper case), at most 32.
fn hex_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(nibble))
    })
}

/// The `traceparent` tollgate sends for the span `span_id` of trace
/// `trace_id`: version 00, the sampled flag as decided.
pub fn traceparent(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    let mut text = [b'-'; TRACEPARENT_LEN];
    text[0] = b'0';
    text[1] = b'0';
    write_hex(&mut text[3..35], &trace_id.to_be_bytes());
    write_hex(&mut text[36..52], &span_id.to_be_bytes());
    text[53] = b'0';
    text[54] = if sampled { b'1' } else { b'0' };
    // One allocation, shared by the request head and the log line. Hex
    // digits and dashes are always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The trace ID in a `traceparent` tollgate wrote (see [`traceparent`]), as
/// the 32 hex digits the access log and the collectors show.
pub fn trace_id_text(traceparent: &HeaderValue) -> Option<&str> {
    traceparent.to_str().ok()?.get(3..35)
}

/// A new, non-zero span ID.
pub fn new_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A new, non-zero trace ID.
pub fn new_trace_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_standards_example() {
        let parent = parse_traceparent(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert!(parent.sampled);
        let unsampled = EXAMPLE.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn refuses_invalid_values() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn reads_a_later_version_by_its_prefix() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn writes_what_it_reads() {
        let value = traceparent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, true);
        assert_eq!(value, EXAMPLE);
        assert_eq!(
            trace_id_text(&value),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let parent = parse_traceparent(traceparent(1, 2, false).as_bytes()).unwrap();
        assert_eq!(
            (parent.trace_id, parent.span_id, parent.sampled),
            (1, 2, false)
        );
    }
}
