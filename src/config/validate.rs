//! Checks that serde's types cannot express: references between sections, ranges,
//! duplicates. Each problem is reported with the path of the node it is about.

use super::schema::*;
use std::collections::{HashMap, HashSet};

/// Largest backend weight; keeps the precomputed balancing schedules small.
pub const MAX_WEIGHT: u32 = 1000;

type Problems = Vec<(String, String)>;

/// Every problem in `config`, as (node path, message).
pub fn check(config: &Config) -> Problems {
    let mut problems = Problems::new();
    check_server(&config.server, &mut problems);
    for (name, upstream) in &config.upstreams {
        check_upstream(name, upstream, &mut problems);
    }
    for (name, policy) in &config.auth {
        check_auth_policy(name, policy, &mut problems);
    }
    for (name, limit) in &config.rate_limits {
        if let Err(e) = RateKey::parse(&limit.key) {
            problems.push((format!("rate_limits.{name}.key"), e));
        }
        if ![429, 503].contains(&limit.status) {
            problems.push((
                format!("rate_limits.{name}.status"),
                format!(
                    "{} is not a rate-limit status: expected 429 or 503",
                    limit.status
                ),
            ));
        }
        check_name(
            &format!("rate_limits.{name}"),
            name,
            "rate limit",
            &mut problems,
        );
    }
    check_routes(config, &mut problems);
    problems
}

fn check_name(at: &str, name: &str, what: &str, problems: &mut Problems) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        problems.push((
            at.to_string(),
            format!("invalid {what} name `{name}`: use letters, digits, `_` and `-`"),
        ));
    }
}

/// Header names an auth policy may set: not framing, routing or hop-by-hop ones.
fn check_identity_header(at: String, name: &str, problems: &mut Problems) {
    const RESERVED: [&str; 10] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-connection",
        "authorization",
    ];
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Err(_) => problems.push((at, format!("invalid header name `{name}`"))),
        Ok(h) if RESERVED.contains(&h.as_str()) => {
            problems.push((at, format!("`{name}` cannot carry an identity")))
        }
        Ok(_) => {}
    }
}

fn check_forward_auth(fat: &str, forward: &ForwardAuthConfig, problems: &mut Problems) {
    let uri_ok = forward.url.parse::<http::Uri>().ok().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http") | Some("https")) && u.authority().is_some()
    });
    if !uri_ok {
        problems.push((
            format!("{fat}.url"),
            format!(
                "invalid url `{}`: expected http://host:port/path",
                forward.url
            ),
        ));
    }
    if forward.timeout.is_zero() {
        problems.push((format!("{fat}.timeout"), "must be more than 0".into()));
    }
    if let Some(name) = &forward.token_query {
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if name.is_empty() || !name.bytes().all(plain) {
            problems.push((
                format!("{fat}.token_query"),
                format!(
                    "invalid query parameter name `{name}`: use letters, digits, `_`, `-`, `.`"
                ),
            ));
        }
    }
    for (i, header) in forward.pass_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(header.as_bytes()) {
            Err(_) => problems.push((
                format!("{fat}.pass_headers[{i}]"),
                format!("invalid header name `{header}`"),
            )),
            Ok(h) if h == http::header::AUTHORIZATION || h == http::header::HOST => {
                problems.push((
                    format!("{fat}.pass_headers[{i}]"),
                    format!("`{header}` is sent already (Host as X-Forwarded-Host)"),
                ))
            }
            Ok(_) => {}
        }
    }
    for (i, header) in forward.copy_headers.iter().enumerate() {
        check_identity_header(format!("{fat}.copy_headers[{i}]"), header, problems);
    }
    for (header, claim) in &forward.identity_from_json {
        check_identity_header(format!("{fat}.identity_from_json"), header, problems);
        if claim.is_empty() {
            problems.push((
                format!("{fat}.identity_from_json.{header}"),
                "name the claim of the JSON answer this header takes".into(),
            ));
        }
    }
    check_auth_statuses(fat, forward, problems);
    if forward.cache.is_some_and(|c| c.is_zero()) {
        problems.push((
            format!("{fat}.cache"),
            "must be more than 0, or left out for no cache".into(),
        ));
    }
    if forward.cache_entries == 0 {
        problems.push((format!("{fat}.cache_entries"), "must be at least 1".into()));
    }
}

/// `unauthorized_statuses` and `forbidden_statuses`: refusals, each in one list.
fn check_auth_statuses(fat: &str, forward: &ForwardAuthConfig, problems: &mut Problems) {
    for (key, statuses) in [
        ("unauthorized_statuses", &forward.unauthorized_statuses),
        ("forbidden_statuses", &forward.forbidden_statuses),
    ] {
        for (i, status) in statuses.iter().enumerate() {
            if !(300..=599).contains(status) {
                problems.push((
                    format!("{fat}.{key}[{i}]"),
                    format!(
                        "{status} is not a refusal: expected 300 to 599 (2xx lets requests pass)"
                    ),
                ));
            }
        }
    }
    if let Some(both) = forward
        .unauthorized_statuses
        .iter()
        .find(|s| forward.forbidden_statuses.contains(s))
    {
        problems.push((
            format!("{fat}.forbidden_statuses"),
            format!("{both} is listed in unauthorized_statuses too"),
        ));
    }
}

fn check_auth_policy(name: &str, policy: &AuthPolicyConfig, problems: &mut Problems) {
    let at = format!("auth.{name}");
    check_name(&at, name, "auth policy", problems);
    let kinds = usize::from(policy.forward.is_some())
        + usize::from(policy.jwt.is_some())
        + usize::from(policy.api_keys.is_some());
    if kinds != 1 {
        problems.push((
            at.clone(),
            "an auth policy has exactly one of `forward`, `jwt` or `api_keys`".into(),
        ));
    }
    if let Some(forward) = &policy.forward {
        check_forward_auth(&format!("{at}.forward"), forward, problems);
    }
    if let Some(jwt) = &policy.jwt {
        let jat = format!("{at}.jwt");
        if jwt.algorithms.is_empty() {
            problems.push((
                format!("{jat}.algorithms"),
                "list at least one algorithm".into(),
            ));
        }
        let (mut hmac, mut public) = (false, false);
        for (i, alg) in jwt.algorithms.iter().enumerate() {
            match JwtFamily::of(alg) {
                Some(JwtFamily::Hmac) => hmac = true,
                Some(JwtFamily::PublicKey) => public = true,
                None => problems.push((
                    format!("{jat}.algorithms[{i}]"),
                    format!("unsupported algorithm `{alg}`: expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384"),
                )),
            }
        }
        let secrets =
            usize::from(jwt.secret_env.is_some()) + usize::from(jwt.secret_file.is_some());
        if hmac && secrets != 1 {
            problems.push((
                jat.clone(),
                "HS* algorithms need exactly one of `secret_env` or `secret_file`".into(),
            ));
        }
        if !hmac && secrets > 0 {
            problems.push((
                jat.clone(),
                "`secret_env`/`secret_file` are for HS* algorithms, and none is listed".into(),
            ));
        }
        if public && jwt.jwks_file.is_none() {
            problems.push((
                jat.clone(),
                "RS*, PS* and ES* algorithms need `jwks_file`".into(),
            ));
        }
        if !public && jwt.jwks_file.is_some() {
            problems.push((
                format!("{jat}.jwks_file"),
                "`jwks_file` is for RS*, PS* and ES* algorithms, and none is listed".into(),
            ));
        }
        for header in jwt.claims_to_headers.values() {
            check_identity_header(format!("{jat}.claims_to_headers"), header, problems);
        }
    }
    if let Some(keys) = &policy.api_keys {
        if http::HeaderName::from_bytes(keys.header.as_bytes()).is_err() {
            problems.push((
                format!("{at}.api_keys.header"),
                format!("invalid header name `{}`", keys.header),
            ));
        }
    }
}

fn check_server(server: &ServerConfig, problems: &mut Problems) {
    if server.threads == Some(0) {
        problems.push(("server.threads".into(), "must be at least 1".into()));
    }
    if server.listeners.is_empty() {
        problems.push((
            "server.listeners".into(),
            "at least one listener is needed".into(),
        ));
    }
    let mut seen = HashSet::new();
    let has_tls = server.listeners.iter().any(|l| l.tls.is_some());
    for (i, listener) in server.listeners.iter().enumerate() {
        let at = format!("server.listeners[{i}]");
        if !seen.insert(listener.address) {
            problems.push((
                format!("{at}.address"),
                format!("{} is listed twice", listener.address),
            ));
        }
        if listener.redirect_https && listener.tls.is_some() {
            problems.push((
                format!("{at}.redirect_https"),
                "a TLS listener cannot redirect to HTTPS".into(),
            ));
        }
        if ![301, 302, 307, 308].contains(&listener.redirect_status) {
            problems.push((
                format!("{at}.redirect_status"),
                format!(
                    "{} is not a redirect that keeps the request: expected 301, 302, 307 or 308",
                    listener.redirect_status
                ),
            ));
        }
        if listener.redirect_https && !has_tls {
            problems.push((
                format!("{at}.redirect_https"),
                "redirect_https needs a listener with `tls`".into(),
            ));
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                problems.push((
                    format!("{at}.tls.certificates"),
                    "list at least one certificate".into(),
                ));
            }
            if tls
                .hsts
                .as_ref()
                .is_some_and(|h| h.max_age.is_zero() && (h.include_subdomains || h.preload))
            {
                problems.push((
                    format!("{at}.tls.hsts.max_age"),
                    "must be more than 0 with include_subdomains or preload".into(),
                ));
            }
        }
    }
    if let Some(c) = &server.compression {
        if !(1..=9).contains(&c.level) {
            problems.push((
                "server.compression.level".into(),
                format!("{} is out of range: expected 1 to 9", c.level),
            ));
        }
    }
    let t = &server.client_timeouts;
    for (key, value) in [
        ("read_body", t.read_body),
        ("send", t.send),
        ("keepalive", t.keepalive),
    ] {
        if value.is_zero() {
            problems.push((
                format!("server.client_timeouts.{key}"),
                "must be more than 0".into(),
            ));
        }
    }
    if let Some(metrics) = server.metrics {
        if seen.contains(&metrics) {
            problems.push((
                "server.metrics".into(),
                format!("{metrics} is also a proxy listener"),
            ));
        }
    }
}

fn check_upstream(name: &str, upstream: &UpstreamConfig, problems: &mut Problems) {
    let at = format!("upstreams.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        problems.push((
            at.clone(),
            format!("invalid upstream name `{name}`: use letters, digits, `_` and `-`"),
        ));
    }
    if upstream.backends.is_empty() {
        problems.push((
            format!("{at}.backends"),
            "an upstream needs at least one backend".into(),
        ));
    }
    for (i, backend) in upstream.backends.iter().enumerate() {
        if backend.weight == 0 || backend.weight > MAX_WEIGHT {
            problems.push((
                format!("{at}.backends[{i}].weight"),
                format!(
                    "weight {} is out of range: expected 1 to {MAX_WEIGHT}",
                    backend.weight
                ),
            ));
        }
    }
    if let Some(hc) = &upstream.health_check {
        let hat = format!("{at}.health_check");
        match (&hc.http, &hc.tcp) {
            (Some(_), Some(_)) | (None, None) => problems.push((
                hat.clone(),
                "a health check has exactly one of `http` or `tcp`".into(),
            )),
            _ => {}
        }
        if let Some(http) = &hc.http {
            if !http.path.starts_with('/') {
                problems.push((
                    format!("{hat}.http.path"),
                    format!(
                        "invalid path `{}`: expected it to start with `/`",
                        http.path
                    ),
                ));
            }
            if let Some(host) = &http.host {
                if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
                    problems.push((
                        format!("{hat}.http.host"),
                        format!("invalid Host header value `{host}`"),
                    ));
                }
            }
            if let Some(statuses) = &http.expect_status {
                if statuses.is_empty() {
                    problems.push((
                        format!("{hat}.http.expect_status"),
                        "list at least one status, or leave it out for any 2xx".into(),
                    ));
                }
                for (j, s) in statuses.iter().enumerate() {
                    if !(100..=599).contains(s) {
                        problems.push((
                            format!("{hat}.http.expect_status[{j}]"),
                            format!("{s} is not an HTTP status (100 to 599)"),
                        ));
                    }
                }
            }
        }
        if hc.interval.is_zero() {
            problems.push((format!("{hat}.interval"), "must be more than 0".into()));
        }
        if hc.timeout.is_zero() {
            problems.push((format!("{hat}.timeout"), "must be more than 0".into()));
        }
        if hc.healthy_threshold == 0 {
            problems.push((
                format!("{hat}.healthy_threshold"),
                "must be at least 1".into(),
            ));
        }
        if hc.unhealthy_threshold == 0 {
            problems.push((
                format!("{hat}.unhealthy_threshold"),
                "must be at least 1".into(),
            ));
        }
    }
    if let Some(tls) = &upstream.tls {
        if tls.verify && tls.sni.as_deref().is_none_or(str::is_empty) {
            problems.push((
                format!("{at}.tls"),
                "verify needs `sni`, the name certificates are checked against".into(),
            ));
        }
    }
    if upstream.passive.max_fails > 0 && upstream.passive.fail_timeout.is_zero() {
        problems.push((
            format!("{at}.passive.fail_timeout"),
            "must be more than 0 when max_fails is set".into(),
        ));
    }
    let t = &upstream.timeouts;
    for (key, value) in [
        ("connect", t.connect),
        ("read", t.read),
        ("write", t.write),
        ("idle", t.idle),
    ] {
        if value.is_zero() {
            problems.push((format!("{at}.timeouts.{key}"), "must be more than 0".into()));
        }
    }
}

fn check_routes(config: &Config, problems: &mut Problems) {
    if config.routes.is_empty() {
        problems.push(("routes".into(), "at least one route is needed".into()));
    }
    let mut matches: HashMap<(HostPattern, PathPattern), usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(name) = &route.name {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
                problems.push((
                    format!("{at}.name"),
                    "a route name must be non-empty printable text".into(),
                ));
            }
            if let Some(first) = names.insert(name, i) {
                problems.push((
                    format!("{at}.name"),
                    format!("route name `{name}` is already used by routes[{first}]"),
                ));
            }
        }
        let host = route.matcher.host_pattern();
        if let Err(e) = &host {
            problems.push((format!("{at}.match.host"), e.clone()));
        }
        let path = route.matcher.path_pattern();
        if let Err(e) = &path {
            problems.push((format!("{at}.match"), e.clone()));
        }
        if let (Ok(host), Ok(path)) = (host, path) {
            let is_prefix = matches!(path, PathPattern::Prefix(_));
            if let Some(first) = matches.insert((host, path), i) {
                problems.push((
                    format!("{at}.match"),
                    format!(
                        "routes[{first}] has the same match; one of them could never be chosen"
                    ),
                ));
            }
            let strippable = route.upstream.is_some() || route.static_files.is_some();
            if route.strip_prefix && (!is_prefix || !strippable) {
                problems.push((
                    format!("{at}.strip_prefix"),
                    "strip_prefix needs a `path_prefix` match and an `upstream` or `static` action"
                        .into(),
                ));
            }
        }
        let actions = usize::from(route.upstream.is_some())
            + usize::from(route.respond.is_some())
            + usize::from(route.redirect.is_some())
            + usize::from(route.static_files.is_some());
        if actions != 1 {
            problems.push((
                at.clone(),
                "a route has exactly one action: `upstream`, `respond`, `redirect` or `static`"
                    .into(),
            ));
        }
        if let Some(files) = &route.static_files {
            if files.index.is_empty() || files.index.contains('/') || files.index.starts_with('.') {
                problems.push((
                    format!("{at}.static.index"),
                    "expected a file name such as index.html".into(),
                ));
            }
        }
        if let Some(redirect) = &route.redirect {
            if ![301, 302, 303, 307, 308].contains(&redirect.status) {
                problems.push((
                    format!("{at}.redirect.status"),
                    format!(
                        "{} is not a redirect status (301, 302, 303, 307, 308)",
                        redirect.status
                    ),
                ));
            }
            if redirect.to.is_empty() || http::HeaderValue::from_str(&redirect.to).is_err() {
                problems.push((
                    format!("{at}.redirect.to"),
                    "expected a URL or a path".into(),
                ));
            }
        }
        if let Some(auth) = &route.auth {
            if !config.auth.contains_key(auth) {
                problems.push((
                    format!("{at}.auth"),
                    format!(
                        "unknown auth policy `{auth}` (defined: {})",
                        listing(config.auth.keys())
                    ),
                ));
            }
        }
        if let Some(limit) = &route.rate_limit {
            match config.rate_limits.get(limit) {
                None => problems.push((
                    format!("{at}.rate_limit"),
                    format!("unknown rate limit `{limit}` (defined: {})", listing(config.rate_limits.keys())),
                )),
                Some(l) if l.key == "auth_subject" && route.auth.is_none() => problems.push((
                    format!("{at}.rate_limit"),
                    format!("rate limit `{limit}` is keyed on auth_subject, but this route has no `auth`"),
                )),
                Some(_) => {}
            }
        }
        if let Some(upstream) = &route.upstream {
            if !config.upstreams.contains_key(upstream) {
                let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
                problems.push((
                    format!("{at}.upstream"),
                    format!(
                        "unknown upstream `{upstream}` (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        if let Some(respond) = &route.respond {
            if !(200..=599).contains(&respond.status) {
                problems.push((
                    format!("{at}.respond.status"),
                    format!("{} is not a final HTTP status (200 to 599)", respond.status),
                ));
            }
            for (name, value) in &respond.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push((
                        format!("{at}.respond.headers"),
                        format!("invalid header name `{name}`"),
                    ));
                } else if http::HeaderValue::from_str(value).is_err() {
                    problems.push((
                        format!("{at}.respond.headers.{name}"),
                        format!("invalid value for header `{name}`"),
                    ));
                }
                if name.eq_ignore_ascii_case("content-length")
                    || name.eq_ignore_ascii_case("transfer-encoding")
                {
                    problems.push((
                        format!("{at}.respond.headers.{name}"),
                        format!("`{name}` is set by tollgate from the body"),
                    ));
                }
            }
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
