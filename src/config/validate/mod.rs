//! Checks that the types of the schema cannot express: references between
//! sections, ranges, combinations, duplicates. Each problem names its node.

mod auth;
mod cache;
mod cors;
mod mirror;
mod request_id;
mod routes;
mod server;
mod upstream;

pub(crate) use cache::HEURISTICALLY_CACHEABLE;

use super::error::Problems;
use super::schema::Config;

/// Largest backend weight; keeps the precomputed balancing schedules small.
pub(crate) const MAX_WEIGHT: u32 = 1000;

/// Every problem in `config`.
pub fn check(config: &Config) -> Problems {
    let mut problems = Problems::default();
    server::check(&config.server, &mut problems);
    for (name, upstream) in &config.upstreams {
        upstream::check(name, upstream, &mut problems);
    }
    let asks_client_certs = config.server.listeners.iter().any(|l| {
        l.tls
            .as_ref()
            .is_some_and(|t| t.client_certificates.is_some())
    });
    for (name, policy) in &config.auth {
        auth::check(name, policy, &mut problems);
        if policy.client_cert.is_some() && !asks_client_certs {
            problems.push(
                format!("auth.{name}.client_cert"),
                "client_cert needs a TLS listener with `client_certificates`: no listener asks \
                 clients for a certificate",
            );
        }
    }
    for (name, limit) in &config.rate_limits {
        if ![429, 503].contains(&limit.status.as_u16()) {
            problems.push(
                format!("rate_limits.{name}.status"),
                format!(
                    "{} is not a rate-limit status: expected 429 or 503",
                    limit.status
                ),
            );
        }
        check_name(
            &format!("rate_limits.{name}"),
            name,
            "rate limit",
            &mut problems,
        );
        if limit.scope == crate::config::LimitScope::Cluster && config.server.cluster.is_none() {
            problems.push(
                format!("rate_limits.{name}.scope"),
                "`scope: cluster` needs `server.cluster.redis`",
            );
        }
        // The shared buckets count in microseconds (Redis's clock).
        if limit.scope == crate::config::LimitScope::Cluster
            && limit.rate.interval() < std::time::Duration::from_micros(1)
        {
            problems.push(
                format!("rate_limits.{name}.rate"),
                "a `scope: cluster` rate can be at most 1000000/s",
            );
        }
    }
    cache::check(&config.caches, &mut problems);
    routes::check(config, &mut problems);
    request_id::check(config, &mut problems);
    problems
}

/// Names of upstreams, policies and limits: letters, digits, `_` and `-`.
fn check_name(at: &str, name: &str, what: &str, problems: &mut Problems) {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if name.is_empty() || !name.bytes().all(plain) {
        problems.push(
            at,
            format!("invalid {what} name `{name}`: use letters, digits, `_` and `-`"),
        );
    }
}

/// Each of `durations` (key, value) must be more than zero.
fn check_positive(at: &str, durations: &[(&str, std::time::Duration)], problems: &mut Problems) {
    for (key, value) in durations {
        if value.is_zero() {
            problems.push(format!("{at}.{key}"), "must be more than 0");
        }
    }
}

/// `a, b, c`, or `none`.
fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
