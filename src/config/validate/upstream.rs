//! Checks of `upstreams:`.

use super::{check_name, check_positive, Problems, MAX_WEIGHT};
use crate::config::schema::{Algorithm, HealthCheckConfig, UpstreamConfig, UpstreamProtocol};
use crate::config::HashKey;

pub(super) fn check(name: &str, upstream: &UpstreamConfig, problems: &mut Problems) {
    let at = format!("upstreams.{name}");
    check_name(&at, name, "upstream", problems);
    match (&upstream.discovery, upstream.backends.is_empty()) {
        (None, true) => problems.push(
            format!("{at}.backends"),
            "an upstream needs at least one backend, or `discovery`",
        ),
        (Some(_), false) => problems.push(
            format!("{at}.discovery"),
            "an upstream has `backends` or `discovery`, not both",
        ),
        (Some(discovery), true) => {
            if let Err(e) = crate::discovery::DnsTarget::parse(&discovery.dns) {
                problems.push(format!("{at}.discovery.dns"), e);
            }
            if discovery.interval.is_zero() {
                problems.push(format!("{at}.discovery.interval"), "must be more than 0");
            }
        }
        (None, false) => {}
    }
    for (i, backend) in upstream.backends.iter().enumerate() {
        if backend.weight == 0 || backend.weight > MAX_WEIGHT {
            problems.push(
                format!("{at}.backends[{i}].weight"),
                format!(
                    "weight {} is out of range: expected 1 to {MAX_WEIGHT}",
                    backend.weight
                ),
            );
        }
    }
    if let Some(hc) = &upstream.health_check {
        check_health(&format!("{at}.health_check"), hc, problems);
        if hc.grpc.is_some() && !upstream.protocol.is_http2() {
            problems.push(
                format!("{at}.health_check.grpc"),
                "gRPC is HTTP/2: a gRPC health check needs `protocol: h2` (TLS) or `h2c`",
            );
        }
    }
    check_protocol(&at, upstream, problems);
    if let Some(tls) = &upstream.tls {
        if tls.verify && tls.sni.as_deref().is_none_or(str::is_empty) {
            problems.push(
                format!("{at}.tls"),
                "verify needs `sni`, the name certificates are checked against",
            );
        }
        if !tls.verify && tls.ca.is_some() {
            problems.push(
                format!("{at}.tls.ca"),
                "`ca` is what certificates are verified against, and `verify` is false: \
                 remove one of them",
            );
        }
    }
    if upstream.passive.max_fails > 0 && upstream.passive.fail_timeout.is_zero() {
        problems.push(
            format!("{at}.passive.fail_timeout"),
            "must be more than 0 when max_fails is set",
        );
    }
    check_hashing(&at, upstream, problems);
    check_traffic(&at, upstream, problems);
    let t = &upstream.timeouts;
    check_positive(
        &format!("{at}.timeouts"),
        &[
            ("connect", t.connect),
            ("read", t.read),
            ("write", t.write),
            ("idle", t.idle),
        ],
        problems,
    );
}

/// `protocol` against `tls`: `h2` is HTTP/2 over TLS, `h2c` cleartext HTTP/2.
fn check_protocol(at: &str, upstream: &UpstreamConfig, problems: &mut Problems) {
    match (upstream.protocol, upstream.tls.is_some()) {
        (UpstreamProtocol::H2c, true) => problems.push(
            format!("{at}.protocol"),
            "h2c is cleartext HTTP/2 and cannot be used with `tls`: \
             write `protocol: h2` for HTTP/2 over TLS, or remove `tls`",
        ),
        (UpstreamProtocol::H2, false) => problems.push(
            format!("{at}.protocol"),
            "h2 is HTTP/2 over TLS and needs `tls`: \
             write `protocol: h2c` for cleartext HTTP/2, or add `tls`",
        ),
        _ => {}
    }
}

/// `hash_key` goes with `algorithm: hash`, and `hash` needs one: an operator
/// who forgot the key would otherwise get the client address silently, which
/// behind a NAT or another proxy sends everyone to one backend.
fn check_hashing(at: &str, upstream: &UpstreamConfig, problems: &mut Problems) {
    match (upstream.algorithm, &upstream.hash_key) {
        (Algorithm::Hash, None) => problems.push(
            format!("{at}.algorithm"),
            "algorithm hash needs `hash_key`: client_ip, header:NAME, cookie:NAME, path or uri",
        ),
        (Algorithm::Hash, Some(HashKey::Header(name)))
            if crate::edge::client_certs::IDENTITY_HEADERS.contains(name) =>
        {
            problems.push(
                format!("{at}.hash_key"),
                format!(
                    "{name} is set from the connection's client certificate, not read from \
                     requests, so it is never a hash key"
                ),
            )
        }
        (Algorithm::Hash, Some(_)) | (_, None) => {}
        (Algorithm::IpHash, Some(_)) => problems.push(
            format!("{at}.hash_key"),
            "ip_hash always hashes the client address: for another key write \
             `algorithm: hash`, or remove hash_key",
        ),
        (other, Some(_)) => problems.push(
            format!("{at}.hash_key"),
            format!(
                "hash_key is read only with `algorithm: hash`, and this upstream's \
                 algorithm is {}",
                other.name()
            ),
        ),
    }
}

/// `slow_start`, `outlier` and `retry_budget`.
fn check_traffic(at: &str, upstream: &UpstreamConfig, problems: &mut Problems) {
    if let Some(window) = upstream.slow_start {
        if window.is_zero() {
            problems.push(format!("{at}.slow_start"), "must be more than 0");
        }
        if upstream.ring_key().is_some() {
            let algorithm = upstream.algorithm.name();
            problems.push(
                format!("{at}.slow_start"),
                format!(
                    "{algorithm} does not ramp (a key would move off its backend and back): \
                     remove slow_start or choose another algorithm"
                ),
            );
        }
    }
    if let Some(outlier) = &upstream.outlier {
        if outlier.consecutive_5xx == 0 {
            problems.push(
                format!("{at}.outlier.consecutive_5xx"),
                "must be at least 1",
            );
        }
        if outlier.ejection.is_zero() {
            problems.push(format!("{at}.outlier.ejection"), "must be more than 0");
        }
    }
}

fn check_health(hat: &str, hc: &HealthCheckConfig, problems: &mut Problems) {
    let kinds = [hc.http.is_some(), hc.tcp.is_some(), hc.grpc.is_some()];
    if kinds.into_iter().filter(|&given| given).count() != 1 {
        problems.push(
            hat,
            "a health check has exactly one of `http`, `tcp` or `grpc`",
        );
    }
    if let Some(statuses) = hc.http.as_ref().and_then(|h| h.expect_status.as_ref()) {
        if statuses.is_empty() {
            problems.push(
                format!("{hat}.http.expect_status"),
                "list at least one status, or leave it out for any 2xx",
            );
        }
        for (j, s) in statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                problems.push(
                    format!("{hat}.http.expect_status[{j}]"),
                    format!("{s} is not an HTTP status (100 to 599)"),
                );
            }
        }
    }
    check_positive(
        hat,
        &[("interval", hc.interval), ("timeout", hc.timeout)],
        problems,
    );
    for (key, value) in [
        ("healthy_threshold", hc.healthy_threshold),
        ("unhealthy_threshold", hc.unhealthy_threshold),
    ] {
        if value == 0 {
            problems.push(format!("{hat}.{key}"), "must be at least 1");
        }
    }
}
