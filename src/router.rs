//! Host + path -> route, with the precedence the README's "Routing" states: an exact host beats a
//! wildcard host beats no host; within a host, an exact `path` beats the longest
//! `path_prefix`. When a host's routes match no path, less specific hosts are asked.
//!
//! A `path_prefix` ending in `/` asked for without it (`/protected` for
//! `/protected/`) is answered with a redirect to the slashed path, as nginx does,
//! unless a route matches that path exactly: it is never served by a less
//! specific route.
//!
//! Tables are built once per topology; a lookup does not allocate. Paths are
//! looked up as `filters::request_path` reads them.

use crate::config::{HostPattern, PathPattern};
use std::collections::HashMap;

/// Index of a route in the topology's route list.
pub(crate) type RouteId = usize;

/// What a path matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    Route(RouteId),
    /// The path is this route's `path_prefix` without its final `/`: redirect there.
    AddSlash(RouteId),
}

impl RouteMatch {
    pub fn route(self) -> RouteId {
        match self {
            RouteMatch::Route(id) | RouteMatch::AddSlash(id) => id,
        }
    }
}

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct PathTable {
    exact: Map<RouteId>,
    prefixes: Map<RouteId>,
    /// Distinct prefix lengths, longest first.
    prefix_lengths: Vec<usize>,
    /// Prefixes that end in `/` (but `/` itself), keyed without it.
    slashless: Map<RouteId>,
}

impl PathTable {
    fn insert(&mut self, path: &PathPattern, route: RouteId) {
        match path {
            PathPattern::Exact(p) => {
                self.exact.entry(p.as_str().into()).or_insert(route);
            }
            PathPattern::Prefix(p) => {
                self.prefixes.entry(p.as_str().into()).or_insert(route);
                if let Some(bare) = p.strip_suffix('/').filter(|b| !b.is_empty()) {
                    self.slashless.entry(bare.into()).or_insert(route);
                }
                if !self.prefix_lengths.contains(&p.len()) {
                    self.prefix_lengths.push(p.len());
                    self.prefix_lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
        }
    }

    /// An exact `path`, then a prefix equal to the path, then a prefix that is the
    /// path and a `/` (redirect), then the longest prefix.
    fn lookup(&self, path: &str) -> Option<RouteMatch> {
        if let Some(route) = self.exact.get(path) {
            return Some(RouteMatch::Route(*route));
        }
        if let Some(slashed) = self.slashless.get(path) {
            return Some(match self.prefixes.get(path) {
                Some(route) => RouteMatch::Route(*route),
                None => RouteMatch::AddSlash(*slashed),
            });
        }
        self.prefix_lengths
            .iter()
            .filter(|&&len| len <= path.len() && path.is_char_boundary(len))
            .find_map(|&len| self.prefixes.get(&path[..len]).copied())
            .map(RouteMatch::Route)
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
        entries: impl IntoIterator<Item = (&'a HostPattern, PathPattern, RouteId)>,
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
            table.insert(&path, route);
        }
        router
    }

    /// The route for a request to `host` (a Host header value, port allowed, any
    /// case) and `path` (a matched path, see `filters::request_path`). The most
    /// specific host whose table has an answer for the path decides.
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteMatch> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(HostPattern, PathPattern)]) -> Router {
        Router::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, (h, p))| (h, p.clone(), i)),
        )
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
        assert_eq!(r.lookup("", "/x"), Some(RouteMatch::Route(0)));
        assert_eq!(
            r.lookup("other.org", "/products"),
            Some(RouteMatch::Route(1))
        );
        assert_eq!(
            r.lookup("other.org", "/product/list"),
            Some(RouteMatch::Route(2))
        );
        assert_eq!(
            r.lookup("other.org", "/product/public/1"),
            Some(RouteMatch::Route(5))
        );
        assert_eq!(
            r.lookup("API.Example.com:8080", "/product/1"),
            Some(RouteMatch::Route(3))
        );
        assert_eq!(
            r.lookup("www.example.com", "/product/1"),
            Some(RouteMatch::Route(4))
        );
        assert_eq!(
            r.lookup("a.b.example.com", "/product/1"),
            Some(RouteMatch::Route(4))
        );
        assert_eq!(
            r.lookup("example.com", "/product/1"),
            Some(RouteMatch::Route(1))
        );
        // A host whose routes do not cover the path falls back to no-host routes.
        assert_eq!(
            r.lookup("api.example.com", "/about"),
            Some(RouteMatch::Route(0))
        );
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[(HostPattern::Any, exact("/healthz"))]);
        assert_eq!(r.lookup("x", "/healthz"), Some(RouteMatch::Route(0)));
        assert_eq!(r.lookup("x", "/healthz/"), None);
    }

    #[test]
    fn a_slashed_prefix_asked_without_its_slash_redirects() {
        let r = router(&[
            (HostPattern::Any, prefix("/")),           // 0
            (HostPattern::Any, prefix("/protected/")), // 1
            (HostPattern::Any, prefix("/docs/")),      // 2
            (HostPattern::Any, exact("/docs")),        // 3
            (HostPattern::Any, prefix("/api/")),       // 4
            (HostPattern::Any, prefix("/api")),        // 5
        ]);
        assert_eq!(r.lookup("", "/protected"), Some(RouteMatch::AddSlash(1)));
        assert_eq!(r.lookup("", "/protected/"), Some(RouteMatch::Route(1)));
        assert_eq!(r.lookup("", "/protectedx"), Some(RouteMatch::Route(0)));
        assert_eq!(r.lookup("", "/docs"), Some(RouteMatch::Route(3)));
        assert_eq!(r.lookup("", "/api"), Some(RouteMatch::Route(5)));
        assert_eq!(r.lookup("", "/"), Some(RouteMatch::Route(0)));
        // A host's own prefix redirects before host-less routes are asked.
        let r = router(&[
            (HostPattern::Exact("a.example".into()), prefix("/admin/")),
            (HostPattern::Any, exact("/admin")),
        ]);
        assert_eq!(
            r.lookup("a.example", "/admin"),
            Some(RouteMatch::AddSlash(0))
        );
        assert_eq!(r.lookup("b.example", "/admin"), Some(RouteMatch::Route(1)));
    }
}
