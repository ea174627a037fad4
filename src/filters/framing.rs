//! Refuses requests whose body framing two parsers could read differently (request
//! smuggling): Content-Length together with Transfer-Encoding, Content-Lengths that
//! differ, a Content-Length that is not a number, or a Transfer-Encoding other than
//! one final `chunked`. Such a request is answered 400 and its connection closed,
//! never forwarded.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

/// What the filter decided about a request's framing.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Unambiguous; forward as is.
    Valid,
    /// Several Content-Length values that agree: forward with this single value.
    CollapseContentLength(u64),
    /// Ambiguous: answer 400 with this reason and close the connection.
    Refuse(&'static str),
}

/// Judges the framing headers of `req`. `raw_head` is the request head as received
/// (HTTP/1), needed because pingora's parser removes Content-Length from the parsed
/// header when Transfer-Encoding is present; callers pass it when the request has a
/// Transfer-Encoding.
pub fn check(req: &RequestHeader, raw_head: Option<&[u8]>) -> Framing {
    let has_te = req.headers.contains_key(TRANSFER_ENCODING);
    let has_cl = req.headers.contains_key(CONTENT_LENGTH)
        || (has_te && raw_head.is_some_and(raw_has_content_length));
    if has_te && has_cl {
        return Framing::Refuse("both Content-Length and Transfer-Encoding");
    }
    if has_te {
        let mut codings = 0;
        let mut last_is_chunked = false;
        for value in req.headers.get_all(TRANSFER_ENCODING) {
            let Ok(text) = value.to_str() else {
                return Framing::Refuse("unreadable Transfer-Encoding");
            };
            for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                codings += 1;
                last_is_chunked = coding.eq_ignore_ascii_case("chunked");
            }
        }
        if codings != 1 || !last_is_chunked {
            return Framing::Refuse("Transfer-Encoding other than a single `chunked`");
        }
        return Framing::Valid;
    }
    if has_cl {
        let mut length: Option<u64> = None;
        let mut count = 0;
        for value in req.headers.get_all(CONTENT_LENGTH) {
            let Ok(text) = value.to_str() else {
                return Framing::Refuse("unreadable Content-Length");
            };
            for item in text.split(',').map(str::trim) {
                count += 1;
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Framing::Refuse("Content-Length is not a number");
                }
                let Ok(n) = item.parse::<u64>() else {
                    return Framing::Refuse("Content-Length is too large");
                };
                match length {
                    Some(seen) if seen != n => {
                        return Framing::Refuse("differing Content-Length values")
                    }
                    _ => length = Some(n),
                }
            }
        }
        if count > 1 {
            if let Some(n) = length {
                return Framing::CollapseContentLength(n);
            }
        }
    }
    Framing::Valid
}

/// Whether a raw HTTP/1 request head has a Content-Length field line.
fn raw_has_content_length(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        name.trim_ascii().eq_ignore_ascii_case(b"content-length")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parsed(r: &RequestHeader) -> Framing {
        check(r, None)
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn content_length_removed_by_the_parser_is_seen_in_the_raw_head() {
        let parsed = req(&[("Transfer-Encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(check(&parsed, Some(raw)), Framing::Refuse(_)));
        let raw_ok = b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(&parsed, Some(raw_ok)), Framing::Valid);
    }

    #[test]
    fn verdicts() {
        assert_eq!(check_parsed(&req(&[])), Framing::Valid);
        assert_eq!(
            check_parsed(&req(&[("Content-Length", "5")])),
            Framing::Valid
        );
        assert_eq!(
            check_parsed(&req(&[("Transfer-Encoding", "chunked")])),
            Framing::Valid
        );
        assert_eq!(
            check_parsed(&req(&[("Transfer-Encoding", "Chunked")])),
            Framing::Valid
        );
        assert_eq!(
            check_parsed(&req(&[("Content-Length", "5"), ("Content-Length", "5")])),
            Framing::CollapseContentLength(5)
        );
        for bad in [
            vec![("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            vec![("Content-Length", "5"), ("Content-Length", "6")],
            vec![("Content-Length", "5, 6")],
            vec![("Content-Length", "-1")],
            vec![("Content-Length", "0x10")],
            vec![("Transfer-Encoding", "gzip, chunked")],
            vec![("Transfer-Encoding", "chunked, chunked")],
            vec![
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ],
            vec![("Transfer-Encoding", "identity")],
            vec![("Transfer-Encoding", "chunked, gzip")],
        ] {
            assert!(
                matches!(check_parsed(&req(&bad)), Framing::Refuse(_)),
                "{bad:?} accepted"
            );
        }
    }
}
