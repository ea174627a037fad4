//! Checks of `server.request_id`: its header carries nothing else, and nothing
//! else in the file sets or removes it.

use super::routes::{FORWARDING, FRAMING};
use super::Problems;
use crate::config::schema::{AuthPolicyConfig, Config};
use crate::config::types::HeaderName;

/// Headers HTTP or tollgate give a meaning of their own, besides those that
/// frame a message and the forwarding headers.
const MEANINGFUL: [&str; 13] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "location",
    "content-type",
    "content-encoding",
    "forwarded",
    "traceparent",
    "tracestate",
    "x-client-cert-subject",
    "x-client-cert-sha256",
];

pub(super) fn check(config: &Config, problems: &mut Problems) {
    let Some(request_id) = &config.server.request_id else {
        return;
    };
    let header = &request_id.header;
    let lower = header.name().as_str();
    let at = "server.request_id.header";
    if FRAMING.contains(&lower) || FORWARDING.contains(&lower) || MEANINGFUL.contains(&lower) {
        problems.push(
            at,
            format!("`{header}` has a meaning of its own and cannot carry request IDs"),
        );
    }
    for (name, policy) in &config.auth {
        if identity_headers(policy).any(|set| set.name() == header.name()) {
            problems.push(
                at,
                format!("`{header}` is an identity header of auth policy `{name}`"),
            );
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let rules = [
            ("request_headers", &route.request_headers),
            ("response_headers", &route.response_headers),
        ];
        for (key, rules) in rules {
            let set = rules.set.iter().map(|(name, _)| ("set", name));
            let named = set.chain(rules.remove.iter().map(|name| ("remove", name)));
            for (verb, name) in named.filter(|(_, name)| name.name() == header.name()) {
                problems.push(
                    format!("routes[{i}].{key}.{verb}"),
                    format!("`{name}` carries the request ID (server.request_id) and cannot be set or removed here"),
                );
            }
        }
    }
}

/// The headers `policy` sets on the requests it lets pass.
fn identity_headers(policy: &AuthPolicyConfig) -> impl Iterator<Item = &HeaderName> {
    let forward = policy.forward.iter().flat_map(|f| {
        let from_json = f.identity_from_json.iter().map(|(name, _)| name);
        f.copy_headers.iter().chain(from_json)
    });
    let jwt = policy.jwt.iter().flat_map(|j| j.claims_to_headers.values());
    let basic = policy.basic.iter().filter_map(|b| b.user_header.as_ref());
    forward.chain(jwt).chain(basic)
}
