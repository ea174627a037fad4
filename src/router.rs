//! Host + path -> route, with the precedence of topology.md: an exact host beats a
//! wildcard host beats no host; within a host, an exact `path` beats the longest
//! `path_prefix`. When a host's routes match no path, less specific hosts are asked.
//!
//! Tables are built once per topology; a lookup does not allocate unless the path
//! needs normalizing (see [`normalize_path`]).

use crate::config::{HostPattern, PathPattern};
use std::borrow::Cow;
use std::collections::HashMap;

/// Index of a route in the topology's route list.
pub type RouteId = usize;

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct PathTable {
    exact: Map<RouteId>,
    prefixes: Map<RouteId>,
    /// Distinct prefix lengths, longest first.
    prefix_lengths: Vec<usize>,
}

impl PathTable {
    fn insert(&mut self, path: &PathPattern, route: RouteId) {
        match path {
            PathPattern::Exact(p) => {
                self.exact.entry(p.as_str().into()).or_insert(route);
            }
            PathPattern::Prefix(p) => {
                self.prefixes.entry(p.as_str().into()).or_insert(route);
                if !self.prefix_lengths.contains(&p.len()) {
                    self.prefix_lengths.push(p.len());
                    self.prefix_lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
        }
    }

    fn lookup(&self, path: &str) -> Option<RouteId> {
        if let Some(route) = self.exact.get(path) {
            return Some(*route);
        }
        self.prefix_lengths
            .iter()
            .filter(|&&len| len <= path.len() && path.is_char_boundary(len))
            .find_map(|&len| self.prefixes.get(&path[..len]).copied())
    }
}

#[derive(Default)]
pub struct Router {
    exact_hosts: Map<PathTable>,
    /// Keyed by suffix with its leading dot: `.example.com` for `*.example.com`.
    wildcard_hosts: Map<PathTable>,
    any_host: PathTable,
}

impl Router {
    /// Builds the tables. When two entries have the same host and path pattern the
    /// first is kept (config validation rejects such files).
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a HostPattern, &'a PathPattern, RouteId)>,
    ) -> Self {
        let mut router = Router::default();
        for (host, path, route) in entries {
            let table = match host {
                HostPattern::Any => &mut router.any_host,
                HostPattern::Exact(h) => router.exact_hosts.entry(h.as_str().into()).or_default(),
                HostPattern::Wildcard(s) => {
                    router.wildcard_hosts.entry(s.as_str().into()).or_default()
                }
            };
            table.insert(path, route);
        }
        router
    }

    /// The route for a request to `host` (a Host header value, port allowed, any
    /// case) and `path` (already normalized).
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteId> {
        let mut buf = [0u8; 256];
        let host = host_name(host, &mut buf);
        if !host.is_empty() {
            if let Some(route) = self.exact_hosts.get(host).and_then(|t| t.lookup(path)) {
                return Some(route);
            }
            if !self.wildcard_hosts.is_empty() {
                // `a.b.example.com` asks `.b.example.com`, then `.example.com`, then `.com`.
                let found = host
                    .match_indices('.')
                    .filter_map(|(dot, _)| self.wildcard_hosts.get(&host[dot..]))
                    .find_map(|t| t.lookup(path));
                if found.is_some() {
                    return found;
                }
            }
        }
        self.any_host.lookup(path)
    }
}

/// The host name of a Host header value: port removed, lower-cased into `buf` when
/// it has upper-case letters. Names longer than `buf` come back empty (no host).
fn host_name<'b>(host: &'b str, buf: &'b mut [u8; 256]) -> &'b str {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rfind(':') {
            Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return name;
    }
    if name.len() > buf.len() {
        return "";
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    // Lower-casing ASCII letters keeps the bytes valid UTF-8.
    std::str::from_utf8(out).unwrap_or("")
}

/// The path routes are matched against: percent-encoded unreserved characters
/// decoded, `.` and `..` segments resolved, repeated slashes merged, so that
/// `/a/../product` or `/%70roduct` cannot slip past the route for `/product`.
/// `%2F` stays encoded. Borrowed when the path is already normal (the usual case).
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs_work =
        path.contains('%') || path.contains("//") || path.contains("/.") || !path.starts_with('/');
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let ends_in_dir = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || (ends_in_dir && !segments.is_empty()) {
        out.push('/');
    }
    Cow::Owned(out)
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Copy one whole UTF-8 character.
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + len]);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(HostPattern, PathPattern)]) -> Router {
        Router::new(routes.iter().enumerate().map(|(i, (h, p))| (h, p, i)))
    }

    fn exact(p: &str) -> PathPattern {
        PathPattern::Exact(p.into())
    }
    fn prefix(p: &str) -> PathPattern {
        PathPattern::Prefix(p.into())
    }

    #[test]
    fn precedence() {
        let r = router(&[
            (HostPattern::Any, prefix("/")),            // 0
            (HostPattern::Any, prefix("/product")),     // 1
            (HostPattern::Any, exact("/product/list")), // 2
            (
                HostPattern::Exact("api.example.com".into()),
                prefix("/product"),
            ), // 3
            (
                HostPattern::Wildcard(".example.com".into()),
                prefix("/product"),
            ), // 4
            (HostPattern::Any, prefix("/product/public")), // 5
        ]);
        assert_eq!(r.lookup("", "/x"), Some(0));
        assert_eq!(r.lookup("other.org", "/products"), Some(1));
        assert_eq!(r.lookup("other.org", "/product/list"), Some(2));
        assert_eq!(r.lookup("other.org", "/product/public/1"), Some(5));
        assert_eq!(r.lookup("API.Example.com:8080", "/product/1"), Some(3));
        assert_eq!(r.lookup("www.example.com", "/product/1"), Some(4));
        assert_eq!(r.lookup("a.b.example.com", "/product/1"), Some(4));
        assert_eq!(r.lookup("example.com", "/product/1"), Some(1));
        // A host whose routes do not cover the path falls back to no-host routes.
        assert_eq!(r.lookup("api.example.com", "/about"), Some(0));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[(HostPattern::Any, exact("/healthz"))]);
        assert_eq!(r.lookup("x", "/healthz"), Some(0));
        assert_eq!(r.lookup("x", "/healthz/"), None);
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/product/1"), "/product/1");
        assert!(matches!(normalize_path("/product/1"), Cow::Borrowed(_)));
        assert_eq!(normalize_path("/%70roduct"), "/product");
        assert_eq!(normalize_path("/public/../product/x"), "/product/x");
        assert_eq!(normalize_path("//product//x/"), "/product/x/");
        assert_eq!(normalize_path("/a/./b/."), "/a/b/");
        assert_eq!(normalize_path("/../../"), "/");
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize_path("/a%2"), "/a%2");
        assert_eq!(normalize_path("/é/%41"), "/é/A");
    }
}
