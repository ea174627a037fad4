//! Checks of `routes:`: one action each, known names, no two the same.

use super::{listing, Problems, MAX_WEIGHT};
use crate::config::schema::{Config, RouteConfig, SplitArmConfig};
use crate::config::types::{HostPattern, PathPattern, RateKey};
use std::collections::HashMap;

pub(super) fn check(config: &Config, problems: &mut Problems) {
    if config.routes.is_empty() {
        problems.push("routes", "at least one route is needed");
    }
    let mut matches: HashMap<(&HostPattern, PathPattern), usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(name) = &route.name {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
                problems.push(
                    format!("{at}.name"),
                    "a route name must be non-empty printable text",
                );
            }
            if let Some(first) = names.insert(name, i) {
                problems.push(
                    format!("{at}.name"),
                    format!("route name `{name}` is already used by routes[{first}]"),
                );
            }
        }
        let m = &route.matcher;
        if m.path.is_some() && m.path_prefix.is_some() {
            problems.push(
                format!("{at}.match"),
                "a match has either `path` or `path_prefix`, not both",
            );
        }
        if let Some(first) = matches.insert((&m.host, m.path_pattern()), i) {
            problems.push(
                format!("{at}.match"),
                format!("routes[{first}] has the same match; one of them could never be chosen"),
            );
        }
        check_action(&at, route, problems);
        check_headers(&at, route, problems);
        check_references(&at, config, route, problems);
        if let Some(arms) = &route.split {
            check_split(&at, config, arms, problems);
        }
        if let Some(cors) = &route.cors {
            super::cors::check(&at, route, cors, problems);
        }
        if let Some(mirror) = &route.mirror {
            super::mirror::check(&at, config, route, mirror, problems);
        }
    }
}

fn check_action(at: &str, route: &RouteConfig, problems: &mut Problems) {
    if route.upstream.is_some() && route.split.is_some() {
        problems.push(
            format!("{at}.split"),
            "a route has either `upstream` or `split`, not both",
        );
    }
    let actions = usize::from(route.proxies())
        + usize::from(route.respond.is_some())
        + usize::from(route.redirect.is_some())
        + usize::from(route.static_files.is_some());
    if actions != 1 {
        problems.push(
            at,
            "a route has exactly one action: `upstream` (or `split`), `respond`, `redirect` or `static`",
        );
    }
    let is_prefix = matches!(route.matcher.path_pattern(), PathPattern::Prefix(_));
    let strippable = route.proxies() || route.static_files.is_some();
    if route.strip_prefix && (!is_prefix || !strippable) {
        problems.push(
            format!("{at}.strip_prefix"),
            "strip_prefix needs a `path_prefix` match and an `upstream`, `split` or `static` action",
        );
    }
    if let Some(files) = &route.static_files {
        if files.index.is_empty() || files.index.contains('/') || files.index.starts_with('.') {
            problems.push(
                format!("{at}.static.index"),
                "expected a file name such as index.html",
            );
        }
    }
    if let Some(redirect) = &route.redirect {
        if ![301, 302, 303, 307, 308].contains(&redirect.status.as_u16()) {
            problems.push(
                format!("{at}.redirect.status"),
                format!(
                    "{} is not a redirect status (301, 302, 303, 307, 308)",
                    redirect.status
                ),
            );
        }
    }
    if let Some(respond) = &route.respond {
        if !(200..=599).contains(&respond.status.as_u16()) {
            problems.push(
                format!("{at}.respond.status"),
                format!("{} is not a final HTTP status (200 to 599)", respond.status),
            );
        }
        for (name, _) in &respond.headers {
            let framing = name.name() == http::header::CONTENT_LENGTH
                || name.name() == http::header::TRANSFER_ENCODING;
            if framing {
                problems.push(
                    format!("{at}.respond.headers.{name}"),
                    format!("`{name}` is set by tollgate from the body"),
                );
            }
        }
    }
}

/// Headers that frame a message or belong to one connection: never set or
/// removed by a rule.
pub(super) const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];
/// Headers tollgate writes itself on the request a backend gets.
pub(super) const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// `request_headers` (upstream routes only), `response_headers` and
/// `error_pages`.
fn check_headers(at: &str, route: &RouteConfig, problems: &mut Problems) {
    let rules = [
        ("request_headers", &route.request_headers),
        ("response_headers", &route.response_headers),
    ];
    for (key, rules) in rules {
        let names = rules
            .set
            .iter()
            .map(|(name, _)| ("set", name))
            .chain(rules.remove.iter().map(|name| ("remove", name)));
        for (verb, name) in names {
            let lower = name.name().as_str();
            let managed = FRAMING.contains(&lower)
                || (key == "request_headers"
                    && (FORWARDING.contains(&lower) || (verb == "remove" && lower == "host")));
            if managed {
                problems.push(
                    format!("{at}.{key}.{verb}"),
                    format!("`{name}` is managed by tollgate and cannot be set or removed here"),
                );
            }
        }
    }
    let has_request_rules =
        !route.request_headers.set.is_empty() || !route.request_headers.remove.is_empty();
    if has_request_rules && !route.proxies() {
        problems.push(
            format!("{at}.request_headers"),
            "only a route with an `upstream` or `split` sends requests on",
        );
    }
    for (status, _) in &route.error_pages {
        if !(400..=599).contains(&status.as_u16()) {
            problems.push(
                format!("{at}.error_pages.{}", status.as_u16()),
                format!("{status} is not an error status (400 to 599)"),
            );
        }
    }
}

/// The upstream, policy, limit and cache a route names exist.
fn check_references(at: &str, config: &Config, route: &RouteConfig, problems: &mut Problems) {
    if let Some(cache) = &route.cache {
        if !config.caches.contains_key(cache) {
            problems.push(
                format!("{at}.cache"),
                format!(
                    "unknown cache `{cache}` (defined: {})",
                    listing(config.caches.keys())
                ),
            );
        } else if !route.proxies() {
            problems.push(
                format!("{at}.cache"),
                "only a route with an `upstream` or `split` stores answers in a cache",
            );
        }
    }
    if let Some(auth) = &route.auth {
        if !config.auth.contains_key(auth) {
            problems.push(
                format!("{at}.auth"),
                format!(
                    "unknown auth policy `{auth}` (defined: {})",
                    listing(config.auth.keys())
                ),
            );
        }
    }
    if let Some(limit) = &route.rate_limit {
        match config.rate_limits.get(limit) {
            None => problems.push(
                format!("{at}.rate_limit"),
                format!(
                    "unknown rate limit `{limit}` (defined: {})",
                    listing(config.rate_limits.keys())
                ),
            ),
            Some(l) if l.key == RateKey::AuthSubject && route.auth.is_none() => problems.push(
                format!("{at}.rate_limit"),
                format!(
                    "rate limit `{limit}` is keyed on auth_subject, but this route has no `auth`"
                ),
            ),
            Some(_) => {}
        }
    }
    if let Some(upstream) = &route.upstream {
        if !config.upstreams.contains_key(upstream) {
            problems.push(
                format!("{at}.upstream"),
                format!(
                    "unknown upstream `{upstream}` (defined: {})",
                    listing(config.upstreams.keys())
                ),
            );
        }
    }
}

/// `split`: at least one arm, each naming a known upstream with a weight in
/// range, and weights that do not all come to 0 (requests that no
/// `when_header` claims would have no arm).
fn check_split(at: &str, config: &Config, arms: &[SplitArmConfig], problems: &mut Problems) {
    if arms.is_empty() {
        problems.push(
            format!("{at}.split"),
            "a split needs at least one arm: `- {upstream: NAME, weight: N}`",
        );
        return;
    }
    for (j, arm) in arms.iter().enumerate() {
        if !config.upstreams.contains_key(&arm.upstream) {
            problems.push(
                format!("{at}.split[{j}].upstream"),
                format!(
                    "unknown upstream `{}` (defined: {})",
                    arm.upstream,
                    listing(config.upstreams.keys())
                ),
            );
        }
        if arm.weight > MAX_WEIGHT {
            problems.push(
                format!("{at}.split[{j}].weight"),
                format!(
                    "weight {} is out of range: expected 0 to {MAX_WEIGHT}",
                    arm.weight
                ),
            );
        }
    }
    if arms.iter().all(|arm| arm.weight == 0) {
        problems.push(
            format!("{at}.split"),
            "the weights of the split sum to 0: requests no `when_header` claims would have \
             nowhere to go; give at least one arm a weight above 0",
        );
    }
}
