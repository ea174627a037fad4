//! The path a request is routed on, and the path it is forwarded with.
//!
//! Backends decode a path before they route it, and some read it further: Java
//! servlet containers drop the `;parameters` of each segment, some servers take `\`
//! for `/`. A gateway that routes on the path as sent lets `/protected%2Fproduct`
//! past the auth of `/protected/` to a backend that serves `/protected/product`.
//! So the path is read here the way such a backend reads it:
//!
//! - percent-escapes are decoded (either case of hex digits), except the ones
//!   listed below, and the result must be UTF-8;
//! - `.` and `..` segments are removed and repeated slashes merged (RFC 3986 6.2.2.3
//!   and 5.2.4).
//!
//! Routes, auth and rate limits see that *matched* path. The *forwarded* path is its
//! RFC 3986 normal form (6.2.2): unreserved characters decoded, hex digits upper
//! case, dot segments removed, slashes merged, every other escape as the client wrote
//! it. A backend that decodes the forwarded path gets exactly the matched path, so it
//! is never asked for a path whose route would have required more than the request
//! passed.
//!
//! Escapes that change a path's meaning once a backend decodes them:
//! - `%2F` (`/`), `%5C` (`\`) and a raw `\` are governed by `encoded_slashes`:
//!   `reject` (400, the default), `decode` (they separate segments, and the path is
//!   matched and forwarded decoded) or `keep` (matched and forwarded as written);
//! - `%00`-`%1F` and `%7F` (control characters, NUL), `%3F` (`?`), `%23` (`#`),
//!   `%3B` (`;`) and an escaped `%` that begins another escape (`%252F`, double
//!   encoding) are refused unless the route keeps escapes (`keep`);
//! - a dot segment with parameters (`..;`, `.;x`: `..` to a servlet container) is
//!   refused unless the route keeps escapes.
//!
//! Whatever the setting, a request is refused when two readings that backends give
//! it would choose different routes: the path with `%2F`/`%5C` kept and decoded
//! (under `keep`), and the path with and without its `;parameters`.
//! A `%` that does not begin an escape, and a path that does not decode to UTF-8,
//! are refused in every case.

mod reading;

use crate::config::EncodedSlashes;
use reading::{escaped_byte, hazard_of, is_normal, read, without_parameters, Reading, Separators};
use std::borrow::Cow;
use std::fmt;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `%2F`, `%5C` or `\` where `encoded_slashes` does not allow them.
    EncodedSlash,
    /// `%00`-`%1F` or `%7F`.
    ControlCharacter,
    /// `%3F`, `%23` or `%3B`.
    EncodedDelimiter,
    /// `%25` followed by two hex digits.
    DoubleEncoding,
    /// `..;` or `.;x`.
    DotSegmentWithParameters,
    /// A `%` that does not begin an escape.
    MalformedEscape,
    /// The decoded path is not UTF-8.
    NotUtf8,
    /// With and without its escaped slashes decoded, the path chooses different routes.
    AmbiguousSlashes,
    /// With and without its `;parameters`, the path chooses different routes.
    AmbiguousParameters,
}

impl Refusal {
    /// The reason, as the 400 answer's body states it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::EncodedSlash => "the path contains an encoded slash or a backslash",
            Refusal::ControlCharacter => "the path contains an encoded control character",
            Refusal::EncodedDelimiter => "the path contains an encoded `?`, `#` or `;`",
            Refusal::DoubleEncoding => "the path is percent-encoded twice",
            Refusal::DotSegmentWithParameters => "the path has a dot segment with parameters",
            Refusal::MalformedEscape => "the path has a `%` that is not an escape",
            Refusal::NotUtf8 => "the path does not decode to UTF-8",
            Refusal::AmbiguousSlashes => "the path's encoded slashes change its route",
            Refusal::AmbiguousParameters => "the path's `;` parameters change its route",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A routed request path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoutedPath<'a, M> {
    /// What the route table returned for the matched path.
    pub found: Option<M>,
    /// The path to forward; the path as received when that is already normal.
    pub forward: Cow<'a, str>,
}

/// Reads `raw` (a request's path, without the query), chooses its route with
/// `lookup`, and returns the route with the path to forward, or why the path is
/// refused. `mode_of` gives the `encoded_slashes` setting of what `lookup` found
/// (the server's when it found nothing). A path already in normal form costs one
/// scan and one lookup, and allocates nothing.
pub(crate) fn route<'a, M: Copy + PartialEq>(
    raw: &'a str,
    lookup: impl Fn(&str) -> Option<M>,
    mode_of: impl Fn(Option<M>) -> EncodedSlashes,
) -> Result<RoutedPath<'a, M>, Refusal> {
    if is_normal(raw) {
        return Ok(RoutedPath {
            found: lookup(raw),
            forward: Cow::Borrowed(raw),
        });
    }
    if raw == "*" {
        // `OPTIONS *` asks about the server as a whole: routed as `/`, sent as is.
        return Ok(RoutedPath {
            found: lookup("/"),
            forward: Cow::Borrowed(raw),
        });
    }
    let literal = read(raw, Separators::Kept)?;
    let (reading, found) = if literal.needs_a_choice() {
        choose(raw, literal, &lookup, &mode_of)?
    } else {
        let found = lookup(&literal.matched);
        (literal, found)
    };
    if reading.parameters && lookup(&without_parameters(&reading.matched)) != found {
        return Err(Refusal::AmbiguousParameters);
    }
    let forward = if reading.forward == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(reading.forward)
    };
    Ok(RoutedPath { found, forward })
}

/// For a path with escaped slashes or other hazards: the decoded reading when its
/// route decodes them; the literal one when its route keeps them and the decoded
/// reading would choose the same route; else the refusal.
fn choose<M: Copy + PartialEq>(
    raw: &str,
    literal: Reading,
    lookup: &impl Fn(&str) -> Option<M>,
    mode_of: &impl Fn(Option<M>) -> EncodedSlashes,
) -> Result<(Reading, Option<M>), Refusal> {
    let decoded = read(raw, Separators::Decoded)?;
    let via_decoded = lookup(&decoded.matched);
    if mode_of(via_decoded) == EncodedSlashes::Decode {
        if let Some(hazard) = decoded.hazard {
            return Err(hazard);
        }
        if decoded.dot_parameters {
            return Err(Refusal::DotSegmentWithParameters);
        }
        return Ok((decoded, via_decoded));
    }
    let via_literal = lookup(&literal.matched);
    if mode_of(via_literal) == EncodedSlashes::Keep {
        return if via_literal == via_decoded {
            Ok((literal, via_literal))
        } else {
            Err(Refusal::AmbiguousSlashes)
        };
    }
    Err(if literal.encoded_separator {
        Refusal::EncodedSlash
    } else if let Some(hazard) = literal.hazard {
        hazard
    } else {
        Refusal::DotSegmentWithParameters
    })
}

/// `forward` (a forwarded path) without the part that reads as `prefix` (a prefix
/// of its matched path, as `strip_prefix` removes it), starting with `/`.
pub fn strip_prefix<'a>(forward: &'a str, prefix: &str) -> Cow<'a, str> {
    let bytes = forward.as_bytes();
    let (mut at, mut matched) = (0, 0);
    while matched < prefix.len() && at < bytes.len() {
        let decoded = match bytes[at] {
            b'%' => escaped_byte(&bytes[at + 1..]),
            _ => None,
        };
        // An escape the matched path holds decoded is one byte of it.
        let held_decoded = decoded
            .is_some_and(|b| b != b'/' && b != b'\\' && hazard_of(b, &bytes[at + 3..]).is_none());
        at += if held_decoded { 3 } else { 1 };
        matched += 1;
    }
    if matched != prefix.len() || !forward.is_char_boundary(at) {
        return Cow::Borrowed(forward);
    }
    let rest = &forward[at..];
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

/// Checks a route's `path` or `path_prefix`: it must be written as the matched
/// paths it is compared with are (decoded, no dot segments, single slashes), and
/// hold nothing a matched path cannot. Returns the problem, with the spelling to
/// use when there is one.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err("expected a path starting with `/`".into());
    }
    if pattern.bytes().any(|b| b.is_ascii_control()) {
        return Err("a route path cannot hold control characters".into());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| matches!(c, '\\' | ';' | '?' | '#'))
    {
        return Err(format!("a route path cannot hold `{c}`"));
    }
    if is_normal(pattern) {
        return Ok(());
    }
    match read(pattern, Separators::Kept) {
        Ok(reading) if !reading.needs_a_choice() => Err(format!(
            "route paths are compared decoded and normalized: write `{}`",
            reading.matched
        )),
        _ => Err("route paths are compared decoded: write the path without escapes".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EncodedSlashes::{Decode, Keep, Reject};

    /// Routes `raw` over prefix routes (longest wins), all with `mode`.
    fn routed(
        raw: &str,
        prefixes: &[&'static str],
        mode: EncodedSlashes,
    ) -> Result<(Option<&'static str>, String), Refusal> {
        let lookup = |path: &str| {
            prefixes
                .iter()
                .copied()
                .filter(|p| path.starts_with(p))
                .max_by_key(|p| p.len())
        };
        route(raw, lookup, |_| mode).map(|r| (r.found, r.forward.into_owned()))
    }

    const GATE: &[&str] = &["/", "/protected/"];

    fn forwarded(raw: &str) -> String {
        routed(raw, GATE, Reject).unwrap().1
    }

    #[test]
    fn normal_paths_are_borrowed_and_routed_as_they_are() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/.well-known/x",
            "/a..b/..c",
            "/a/b.",
            "/é",
        ] {
            assert!(is_normal(path), "{path}");
            let r = route(path, |p| Some(p.len()), |_| Reject).unwrap();
            assert!(matches!(r.forward, Cow::Borrowed(_)), "{path}");
            assert_eq!(r.found, Some(path.len()));
        }
        for path in [
            "", "a", "//a", "/a//b", "/./a", "/a/..", "/a/.", "/%41", "/a;b", "/a\\b",
        ] {
            assert!(!is_normal(path), "{path}");
        }
    }

    #[test]
    fn paths_are_normalized_before_matching_and_forwarded_normalized() {
        assert_eq!(forwarded("/%70rotected/x"), "/protected/x");
        assert_eq!(forwarded("/public/../protected/x"), "/protected/x");
        assert_eq!(forwarded("//protected//x/"), "/protected/x/");
        assert_eq!(forwarded("/a/./b/."), "/a/b/");
        assert_eq!(forwarded("/../../"), "/");
        assert_eq!(forwarded("/a/%2e%2E/protected/"), "/protected/");
        assert_eq!(forwarded("/caf%c3%a9/%7e"), "/caf%C3%A9/~");
        assert_eq!(forwarded("/a%20b/%40x"), "/a%20b/%40x");
        assert_eq!(forwarded("/100%25"), "/100%25");
        assert_eq!(forwarded(""), "/");
        assert_eq!(forwarded("*"), "*");
        let (route, _) = routed("/%70rotected/x", GATE, Reject).unwrap();
        assert_eq!(route, Some("/protected/"));
        let (route, _) = routed("/caf%C3%A9/", &["/", "/café/"], Reject).unwrap();
        assert_eq!(route, Some("/café/"));
    }

    #[test]
    fn structural_escapes_are_refused_by_default() {
        for (path, why) in [
            ("/protected%2Fproduct%2F1", Refusal::EncodedSlash),
            ("/protected%2fproduct", Refusal::EncodedSlash),
            ("/protected%5Cproduct", Refusal::EncodedSlash),
            ("/protected\\product", Refusal::EncodedSlash),
            ("/protected/x%00.json", Refusal::ControlCharacter),
            ("/a%0d%0aSet-Cookie:x", Refusal::ControlCharacter),
            ("/protected%3F/x", Refusal::EncodedDelimiter),
            ("/protected%23/x", Refusal::EncodedDelimiter),
            ("/protected%3bx/y", Refusal::EncodedDelimiter),
            ("/protected%252Fx", Refusal::DoubleEncoding),
            ("/public/..;/protected/x", Refusal::DotSegmentWithParameters),
            ("/public/.;x/y", Refusal::DotSegmentWithParameters),
            ("/a%zz", Refusal::MalformedEscape),
            ("/a%2", Refusal::MalformedEscape),
            ("/a%", Refusal::MalformedEscape),
            ("/a%C0%AE", Refusal::NotUtf8),
            ("/a%ff", Refusal::NotUtf8),
        ] {
            assert_eq!(routed(path, GATE, Reject), Err(why), "{path}");
        }
    }

    #[test]
    fn parameters_that_change_the_route_are_refused() {
        assert_eq!(
            routed("/protected;jsessionid=1/x", GATE, Reject),
            Err(Refusal::AmbiguousParameters)
        );
        // Parameters that leave the route as it is pass, as written.
        assert_eq!(
            routed("/public/a;v=1", GATE, Reject),
            Ok((Some("/"), "/public/a;v=1".to_string()))
        );
        assert_eq!(
            routed("/protected/a;v=1", GATE, Reject),
            Ok((Some("/protected/"), "/protected/a;v=1".to_string()))
        );
        assert_eq!(without_parameters("/a;x/..;y/b;z"), "/b");
    }

    #[test]
    fn decode_matches_and_forwards_the_decoded_path() {
        assert_eq!(
            routed("/protected%2Fproduct%2F1", GATE, Decode),
            Ok((Some("/protected/"), "/protected/product/1".to_string()))
        );
        assert_eq!(
            routed("/protected/..%2F..%2Fpublic", GATE, Decode),
            Ok((Some("/"), "/public".to_string()))
        );
        assert_eq!(
            routed("/a\\b%5cc", GATE, Decode),
            Ok((Some("/"), "/a/b/c".to_string()))
        );
        // The other hazards are refused still.
        assert_eq!(
            routed("/a%2Fb%00", GATE, Decode),
            Err(Refusal::ControlCharacter)
        );
    }

    #[test]
    fn keep_forwards_escapes_when_both_readings_agree() {
        assert_eq!(
            routed("/api/group%2Fproject", &["/", "/api/"], Keep),
            Ok((Some("/api/"), "/api/group%2Fproject".to_string()))
        );
        assert_eq!(
            routed("/protected%2Fproduct", GATE, Keep),
            Err(Refusal::AmbiguousSlashes)
        );
        assert_eq!(
            routed("/x/a%00b", GATE, Keep),
            Ok((Some("/"), "/x/a%00b".to_string()))
        );
    }

    #[test]
    fn a_route_may_decode_what_the_server_refuses() {
        let lookup = |path: &str| {
            ["/", "/files/"]
                .into_iter()
                .filter(|p| path.starts_with(p))
                .max_by_key(|p| p.len())
        };
        let mode = |found: Option<&str>| {
            if found == Some("/files/") {
                Decode
            } else {
                Reject
            }
        };
        let r = route("/files%2Fa", lookup, mode).unwrap();
        assert_eq!((r.found, r.forward.as_ref()), (Some("/files/"), "/files/a"));
        assert_eq!(
            route("/other%2Fa", lookup, mode),
            Err(Refusal::EncodedSlash)
        );
    }

    #[test]
    fn a_stripped_prefix_is_counted_in_matched_bytes() {
        assert_eq!(strip_prefix("/product/7", "/product"), "/7");
        assert_eq!(strip_prefix("/product/", "/product/"), "/");
        assert_eq!(strip_prefix("/products", "/product"), "/s");
        assert_eq!(strip_prefix("/caf%C3%A9/x%20y", "/café/"), "/x%20y");
        assert_eq!(strip_prefix("/a%20b/c", "/a b"), "/c");
        // Escapes a matched path keeps as text count as three bytes.
        assert_eq!(strip_prefix("/api%2Fv1/x", "/api%2Fv1"), "/x");
        // A prefix the path does not have leaves it whole.
        assert_eq!(strip_prefix("/a", "/abc"), "/a");
    }

    #[test]
    fn route_patterns_must_be_written_as_matched_paths() {
        assert!(check_pattern("/protected/").is_ok());
        assert!(check_pattern("/café/").is_ok());
        assert!(check_pattern("/.well-known/").is_ok());
        assert!(check_pattern("/a b").is_ok());
        for (bad, says) in [
            ("protected", "starting with"),
            ("/caf%C3%A9/", "write `/café/`"),
            ("/a//b", "write `/a/b`"),
            ("/a/../b", "write `/b`"),
            ("/a;b", "`;`"),
            ("/a\\b", "`\\`"),
            ("/a\tb", "control characters"),
            ("/a%2Fb", "without escapes"),
        ] {
            let err = check_pattern(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
