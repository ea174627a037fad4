//! Request IDs (`server.request_id`): every request gets one, in the
//! configured header, before anything else looks at it; the backend, the
//! forward-auth service and the access log see that ID, and every answer
//! carries it back (a downstream module, so no answer path can forget it).
//!
//! - A new ID is 128 random bits as 32 lower-case hex digits (the form of
//!   nginx's `$request_id` and of a W3C trace-id), from a thread-local ChaCha
//!   generator seeded from the OS: no lock and no system call per request.
//! - An incoming ID is kept only with `trust_incoming: true`, and only when it
//!   is well formed (see [`is_well_formed`]) and sent as one header line;
//!   otherwise every line of the header is replaced by a new ID.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use std::any::Any;

/// The longest incoming ID that is kept, in bytes.
pub const MAX_INCOMING_LEN: usize = 128;

/// The length of a new ID: 128 bits in hex.
pub const GENERATED_LEN: usize = 32;

/// Whether an incoming ID may be kept: 1 to [`MAX_INCOMING_LEN`] bytes, each an
/// ASCII letter or digit or one of `-`, `_`, `.`, `:`. That covers UUIDs, hex
/// and most ID schemes, and can be written in a header, a log line or a JSON
/// string without escaping.
pub fn is_well_formed(id: &[u8]) -> bool {
    (1..=MAX_INCOMING_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new ID: 32 lower-case hex digits of 128 random bits.
pub fn generate() -> HeaderValue {
    let bits: u128 = rand::random();
    let mut text = [0u8; GENERATED_LEN];
    super::write_hex(&mut text, &bits.to_be_bytes());
    // One allocation, shared by the clones that go to the request, its
    // answers and its log line. Hex digits are always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request ID settings of the process, from `server.request_id`.
#[derive(Debug, Clone)]
pub struct RequestIds {
    name: HeaderName,
    /// The header name as written in the config, which HTTP/1 peers see.
    written: Bytes,
    trust_incoming: bool,
}

impl RequestIds {
    pub fn new(config: &crate::config::RequestIdConfig) -> RequestIds {
        RequestIds {
            name: config.header.name().clone(),
            written: Bytes::from(config.header.written().to_string()),
            trust_incoming: config.trust_incoming,
        }
    }

    /// The header the ID travels in.
    pub fn header(&self) -> &HeaderName {
        &self.name
    }

    /// `trust_incoming`.
    pub fn trusts_incoming(&self) -> bool {
        self.trust_incoming
    }

    /// The ID of a request that carries `headers`: the one it sent, when
    /// `trusted` and that is one well-formed header line (then `true`), or a
    /// new one (`false`). `trusted` is `trust_incoming`, or a subrequest of
    /// tollgate's own, whose head carries the ID its main request was given.
    pub fn choose(&self, headers: &HeaderMap, trusted: bool) -> (HeaderValue, bool) {
        if trusted {
            if let Some(id) = super::single_line(headers, &self.name) {
                if is_well_formed(id.as_bytes()) {
                    return (id.clone(), true);
                }
            }
        }
        (generate(), false)
    }

    /// Gives the request `req` its ID (see [`RequestIds::choose`]; with
    /// `subrequest`, the one its main request set) as its only line of the
    /// header, and returns it.
    pub fn assign(
        &self,
        req: &mut RequestHeader,
        subrequest: bool,
    ) -> pingora::Result<HeaderValue> {
        let (id, kept) = self.choose(&req.headers, self.trust_incoming || subrequest);
        if !kept {
            req.insert_header(self.written.clone(), id.clone())?;
        }
        Ok(id)
    }

    /// The module that puts the request's ID on every answer.
    pub(crate) fn module(&self) -> RequestIdHeaderBuilder {
        RequestIdHeaderBuilder {
            written: self.written.clone(),
        }
    }
}

/// The per-request module: sets the armed ID on every answer, replacing any
/// the backend (or a stored answer) carries.
pub(crate) struct RequestIdHeader {
    written: Bytes,
    id: Option<HeaderValue>,
}

impl RequestIdHeader {
    /// The ID this request's answers carry; call before any answer.
    pub fn arm(&mut self, id: HeaderValue) {
        self.id = Some(id);
    }
}

#[async_trait::async_trait]
impl HttpModule for RequestIdHeader {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if let Some(id) = &self.id {
            resp.insert_header(self.written.clone(), id.clone())?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

pub(crate) struct RequestIdHeaderBuilder {
    written: Bytes,
}

impl HttpModuleBuilder for RequestIdHeaderBuilder {
    fn init(&self) -> Module {
        Box::new(RequestIdHeader {
            written: self.written.clone(),
            id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::HeaderName as ConfigHeaderName;
    use crate::config::RequestIdConfig;

    fn ids(trust_incoming: bool) -> RequestIds {
        RequestIds::new(&RequestIdConfig {
            header: ConfigHeaderName::parse("X-Request-Id").unwrap(),
            trust_incoming,
        })
    }

    fn request(lines: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for line in lines {
            req.append_header("X-Request-Id", *line).unwrap();
        }
        req
    }

    #[test]
    fn new_ids_are_32_hex_digits_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for id in [a, b] {
            let text = id.to_str().unwrap();
            assert_eq!(text.len(), GENERATED_LEN);
            assert!(text
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
    }

    #[test]
    fn well_formed_ids() {
        assert!(is_well_formed(b"0af7651916cd43dd8448eb211c80319c"));
        assert!(is_well_formed(b"f47ac10b-58cc-4372-a567-0e02b2c3d479"));
        assert!(is_well_formed(b"edge:req_1.2"));
        assert!(is_well_formed(&[b'a'; MAX_INCOMING_LEN]));
        assert!(!is_well_formed(&[b'a'; MAX_INCOMING_LEN + 1]));
        assert!(!is_well_formed(b""));
        for bad in ["a b", "a\"b", "a,b", "a;b", "a/b", "<x>", "é"] {
            assert!(!is_well_formed(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn incoming_ids_are_kept_only_when_trusted_and_well_formed() {
        let mut req = request(&["client-1"]);
        let id = ids(false).assign(&mut req, false).unwrap();
        assert_ne!(id, "client-1");
        assert_eq!(req.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(req.headers["x-request-id"], id);

        let mut req = request(&["client-1"]);
        assert_eq!(ids(true).assign(&mut req, false).unwrap(), "client-1");
        assert_eq!(req.headers["x-request-id"], "client-1");

        for lines in [&["a b"][..], &["a", "b"], &[""]] {
            let mut req = request(lines);
            let id = ids(true).assign(&mut req, false).unwrap();
            assert_eq!(id.len(), GENERATED_LEN, "{lines:?}");
            let sent: Vec<_> = req.headers.get_all("x-request-id").iter().collect();
            assert_eq!(sent, [&id], "{lines:?}");
        }
    }

    #[test]
    fn a_subrequest_keeps_the_id_of_its_main_request() {
        let mut req = request(&["0af7651916cd43dd8448eb211c80319c"]);
        let id = ids(false).assign(&mut req, true).unwrap();
        assert_eq!(id, "0af7651916cd43dd8448eb211c80319c");
    }
}
