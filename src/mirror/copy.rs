//! One copy of a request: its head, and its body gathered as it streams.

use super::{send, Outcome, Ticket};
use crate::balance::hash_key::RequestParts;
use crate::balance::{Tried, Upstream};
use crate::observe::trace_context::TRACEPARENT_WRITTEN;
use crate::observe::tracing::RequestTrace;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use std::sync::Arc;

/// Headers of one connection, never copied (RFC 9110 section 7.6.1), with
/// `Expect` (the copy's body goes whole, at once) and the framing, which
/// the copy sets from the body it holds.
const NOT_COPIED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
    header::EXPECT,
    header::CONTENT_LENGTH,
];

/// A request's copy on its way to the shadow, from its head to the end of its body.
pub struct MirrorCopy {
    ticket: Ticket,
    head: Box<RequestHeader>,
    /// The request has a body (or says it has one, `Content-Length: 0`).
    framed: bool,
    body: BytesMut,
}

impl MirrorCopy {
    /// The copy of a request whose head, as its backend is sent it, is
    /// `head`: with the same headers but those of one connection (what
    /// `Connection` names, hop-by-hop headers, `Expect`), `Host` from an
    /// HTTP/2 authority, as HTTP/1.1. `None` when its `Content-Length` is
    /// over the mirror's `max_body` (the ticket then counts it as dropped).
    pub fn new(ticket: Ticket, mut head: RequestHeader) -> Option<MirrorCopy> {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let max_body = ticket.mirror().max_body;
        if declared.is_some_and(|length| length > max_body) {
            return None;
        }
        let framed = declared.is_some() || head.headers.contains_key(header::TRANSFER_ENCODING);
        strip_connection_headers(&mut head);
        if !head.headers.contains_key(header::HOST) {
            if let Some(authority) = head.uri.authority().map(|a| a.as_str().to_string()) {
                head.insert_header(header::HOST, authority).ok()?;
            }
        }
        head.set_version(http::Version::HTTP_11);
        let capacity = declared.unwrap_or(0).min(max_body) as usize;
        Some(MirrorCopy {
            ticket,
            head: Box::new(head),
            framed,
            body: BytesMut::with_capacity(capacity),
        })
    }

    /// The index of the shadow upstream in the topology's upstreams.
    pub fn upstream(&self) -> usize {
        self.ticket.mirror().upstream
    }

    /// Adds `chunk` of the request body to the copy. Returns `false` when
    /// the body is now longer than the mirror's `max_body`: the copy is then
    /// to be dropped.
    pub fn tee(&mut self, chunk: &[u8]) -> bool {
        if (self.body.len() + chunk.len()) as u64 > self.ticket.mirror().max_body {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// Forgets the body gathered so far: a new attempt at a backend replays
    /// the request body from its first byte.
    pub fn restart(&mut self) {
        self.body.clear();
    }

    /// Sends the copy, with the body it holds, to a backend of `upstream`
    /// (the shadow) that its balancer picks for `request` among its usable
    /// backends, from a background task; returns at once. With no usable
    /// backend the copy counts as failed. When the request's `trace` is
    /// recorded, the copy has a CLIENT span of its own (see
    /// `observe::calls`), which its `traceparent` names as the parent.
    pub fn send(
        self,
        upstream: &Arc<Upstream>,
        request: &RequestParts<'_>,
        trace: Option<&RequestTrace>,
    ) {
        let MirrorCopy {
            ticket,
            mut head,
            framed,
            body,
        } = self;
        let Some(index) = upstream.select(request, &Tried::default()) else {
            ticket.settle(Outcome::Failed);
            return;
        };
        let framing = framed || !body.is_empty();
        if framing
            && head
                .insert_header(header::CONTENT_LENGTH, body.len())
                .is_err()
        {
            ticket.settle(Outcome::Failed);
            return;
        }
        let span = trace.and_then(RequestTrace::call);
        if let Some(span) = &span {
            if head
                .insert_header(TRACEPARENT_WRITTEN, span.traceparent())
                .is_err()
            {
                ticket.settle(Outcome::Failed);
                return;
            }
        }
        let body = Bytes::from(body);
        send::spawn(ticket, Arc::clone(upstream), index, head, body, span);
    }
}

/// Removes the headers of one connection from `head`: those `Connection`
/// names, then the fixed ones of [`NOT_COPIED`].
fn strip_connection_headers(head: &mut RequestHeader) {
    let nominated: Vec<HeaderName> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(NOT_COPIED.iter()) {
        head.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MirrorConfig;
    use crate::mirror::Mirror;

    fn ticket(max_body: &str) -> Ticket {
        let yaml = format!("{{upstream: copy-test, max_body: {max_body}}}");
        let config: MirrorConfig = serde_yaml::from_str(&yaml).unwrap();
        Arc::new(Mirror::compile("copy-test", &config, 0, None))
            .admit()
            .unwrap()
    }

    fn head(lines: &[(&str, &str)]) -> RequestHeader {
        let mut head = RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        for (name, value) in lines {
            head.append_header(name.to_string(), *value).unwrap();
        }
        head
    }

    #[test]
    fn connection_headers_are_not_copied() {
        let copy = MirrorCopy::new(
            ticket("1KiB"),
            head(&[
                ("Host", "api.example"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Expect", "100-continue"),
                ("Transfer-Encoding", "chunked"),
                ("X-Kept", "yes"),
            ]),
        )
        .unwrap();
        let kept: Vec<&str> = copy.head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["host", "x-kept"]);
        assert!(copy.framed);
    }

    #[test]
    fn bodies_over_the_bound_are_refused() {
        assert!(MirrorCopy::new(ticket("10B"), head(&[("Content-Length", "11")])).is_none());
        let mut copy = MirrorCopy::new(ticket("10B"), head(&[("Content-Length", "10")])).unwrap();
        assert!(copy.tee(b"12345"));
        assert!(copy.tee(b"67890"));
        assert!(!copy.tee(b"x"));
        copy.restart();
        assert!(copy.tee(b"0123456789"));
        assert_eq!(&copy.body[..], b"0123456789");
    }
}
