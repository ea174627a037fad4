//! What lets an operator follow one request through tollgate and the services
//! behind it: request IDs, W3C trace context and the export of spans.

pub mod calls;
pub mod otlp;
pub mod request_id;
pub mod trace_context;
pub mod tracing;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Writes `bytes` into `out` as two lower-case hex digits each (`out` is
/// twice as long), the form of request IDs and W3C trace and span IDs.
pub(crate) fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// The value of header `name` when `headers` has exactly one line of it.
pub(crate) fn single_line<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}
