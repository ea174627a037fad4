//! Checks of `server:`.

use super::{check_positive, Problems};
use crate::config::schema::{AcmeChallenge, ListenerConfig, ProxyProtocol, ServerConfig};
use std::collections::HashSet;

pub(super) fn check(server: &ServerConfig, problems: &mut Problems) {
    if server.threads == Some(0) {
        problems.push("server.threads", "must be at least 1");
    }
    if server.listeners.is_empty() {
        problems.push("server.listeners", "at least one listener is needed");
    }
    let mut seen = HashSet::new();
    let has_tls = server.listeners.iter().any(|l| l.tls.is_some());
    for (i, listener) in server.listeners.iter().enumerate() {
        let at = format!("server.listeners[{i}]");
        // Port 0 is a port of the kernel's choosing: never the same one twice.
        if listener.address.port() != 0 && !seen.insert(listener.address) {
            problems.push(
                format!("{at}.address"),
                format!("{} is listed twice", listener.address),
            );
        }
        check_listener(&at, listener, has_tls, problems);
    }
    if let Some(c) = &server.compression {
        if !(1..=9).contains(&c.level) {
            problems.push(
                "server.compression.level",
                format!("{} is out of range: expected 1 to 9", c.level),
            );
        }
    }
    check_acme(server, problems);
    if let Some(cluster) = &server.cluster {
        if let Err(e) = redis::Client::open(cluster.redis.as_str()) {
            problems.push("server.cluster.redis", format!("not a Redis URL: {e}"));
        }
        if cluster.timeout.is_zero() {
            problems.push("server.cluster.timeout", "must be more than 0");
        }
    }
    if let Some(tracing) = &server.tracing {
        if tracing.queue == 0 {
            problems.push("server.tracing.queue", "must be at least 1");
        }
        if tracing.service_name.trim().is_empty() {
            problems.push("server.tracing.service_name", "must not be empty");
        }
    }
    let t = &server.client_timeouts;
    check_positive(
        "server.client_timeouts",
        &[
            ("read_body", t.read_body),
            ("send", t.send),
            ("keepalive", t.keepalive),
        ],
        problems,
    );
    if let Some(metrics) = server.metrics {
        if seen.contains(&metrics) {
            problems.push(
                "server.metrics",
                format!("{metrics} is also a proxy listener"),
            );
        }
    }
    if let Some(admin) = server.admin {
        if admin.port() != 0 && (seen.contains(&admin) || server.metrics == Some(admin)) {
            problems.push(
                "server.admin",
                format!("{admin} is also a proxy listener or the metrics address"),
            );
        }
        if !admin.ip().is_loopback() && server.admin_token_file.is_none() {
            problems.push(
                "server.admin",
                "an admin listener off loopback needs `admin_token_file`: anyone who reaches it \
                 could drain backends",
            );
        }
    } else if server.admin_token_file.is_some() {
        problems.push("server.admin_token_file", "set `admin` too, or remove it");
    }
}

fn check_listener(at: &str, listener: &ListenerConfig, has_tls: bool, problems: &mut Problems) {
    if listener.redirect_https && listener.tls.is_some() {
        problems.push(
            format!("{at}.redirect_https"),
            "a TLS listener cannot redirect to HTTPS",
        );
    }
    if ![301, 302, 307, 308].contains(&listener.redirect_status.as_u16()) {
        problems.push(
            format!("{at}.redirect_status"),
            format!(
                "{} is not a redirect that keeps the request: expected 301, 302, 307 or 308",
                listener.redirect_status
            ),
        );
    }
    if listener.h2c && listener.tls.is_some() {
        problems.push(
            format!("{at}.h2c"),
            "h2c is for plain listeners: a TLS listener offers HTTP/2 with `tls.http2: true`",
        );
    }
    if listener.h2c && listener.redirect_https {
        problems.push(
            format!("{at}.h2c"),
            "a redirect_https listener only redirects: it does not serve h2c",
        );
    }
    if listener.redirect_https && !has_tls {
        problems.push(
            format!("{at}.redirect_https"),
            "redirect_https needs a listener with `tls`",
        );
    }
    if listener.client_certificates.is_some() {
        let message = if listener.tls.is_some() {
            "client certificates are asked for in the TLS handshake: move `client_certificates` under `tls:`"
        } else {
            "client certificates need TLS: this listener is plain; put `client_certificates` under the `tls:` of a TLS listener"
        };
        problems.push(format!("{at}.client_certificates"), message);
    }
    check_proxy_protocol(at, listener, problems);
    check_http3(at, listener, problems);
    if let Some(tls) = &listener.tls {
        if tls.certificates.is_empty() && tls.acme.is_empty() {
            problems.push(
                format!("{at}.tls.certificates"),
                "list at least one certificate, or names under `acme`",
            );
        }
        for (n, name) in tls.acme.iter().enumerate() {
            if let Err(e) = check_acme_name(name) {
                problems.push(format!("{at}.tls.acme[{n}]"), e);
            }
        }
        let empty_hsts = tls
            .hsts
            .as_ref()
            .is_some_and(|h| h.max_age.is_zero() && (h.include_subdomains || h.preload));
        if empty_hsts {
            problems.push(
                format!("{at}.tls.hsts.max_age"),
                "must be more than 0 with include_subdomains or preload",
            );
        }
    }
}

/// `http3` against the rest of the listener, and its limits.
fn check_http3(at: &str, listener: &ListenerConfig, problems: &mut Problems) {
    let Some(http3) = &listener.http3 else {
        return;
    };
    let at = format!("{at}.http3");
    let Some(tls) = &listener.tls else {
        problems.push(
            at,
            "HTTP/3 runs over QUIC, which is TLS 1.3: put `http3` on a listener with `tls`",
        );
        return;
    };
    if tls.client_certificates.is_some() {
        problems.push(
            &at,
            "HTTP/3 does not ask for client certificates: serve mTLS clients on a listener \
             without `http3`",
        );
    }
    if listener.proxy_protocol != ProxyProtocol::Off {
        problems.push(
            &at,
            "QUIC packets carry no PROXY protocol header: `http3` cannot be on a \
             `proxy_protocol` listener",
        );
    }
    if !(1..=10_000).contains(&http3.max_streams) {
        problems.push(format!("{at}.max_streams"), "must be from 1 to 10000");
    }
    if http3.idle_timeout < std::time::Duration::from_secs(1) {
        problems.push(format!("{at}.idle_timeout"), "must be at least 1s");
    }
}

/// `proxy_protocol_from` against `proxy_protocol`.
fn check_proxy_protocol(at: &str, listener: &ListenerConfig, problems: &mut Problems) {
    let Some(from) = &listener.proxy_protocol_from else {
        return;
    };
    if listener.proxy_protocol == ProxyProtocol::Off {
        problems.push(
            format!("{at}.proxy_protocol_from"),
            "has no effect without `proxy_protocol` (v1, v2 or any) on the listener",
        );
    } else if from.is_empty() {
        problems.push(
            format!("{at}.proxy_protocol_from"),
            "an empty list lets no peer connect: list the load balancers' networks, \
             or leave the key out to accept a header from any peer",
        );
    }
}

/// `server.acme` against the listeners' `acme:` names.
fn check_acme(server: &ServerConfig, problems: &mut Problems) {
    let named = server
        .listeners
        .iter()
        .position(|l| l.tls.as_ref().is_some_and(|t| !t.acme.is_empty()));
    let Some(acme) = &server.acme else {
        if let Some(i) = named {
            problems.push(
                format!("server.listeners[{i}].tls.acme"),
                "automatic certificates need `server.acme` (directory, email, storage)",
            );
        }
        return;
    };
    if named.is_none() {
        problems.push("server.acme", "no TLS listener lists names under `acme`");
    }
    if acme.directory.scheme() != "https" {
        problems.push(
            "server.acme.directory",
            "an ACME directory is an https:// URL",
        );
    }
    let (local, domain) = acme.email.split_once('@').unwrap_or(("", ""));
    if local.is_empty()
        || !domain.contains('.')
        || acme
            .email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(
            "server.acme.email",
            format!("`{}` is not an email address", acme.email),
        );
    }
    if acme.retry.is_zero() {
        problems.push("server.acme.retry", "must be more than 0");
    }
    let plain = server.listeners.iter().any(|l| l.tls.is_none());
    if acme.challenge == AcmeChallenge::Http01 && !plain {
        problems.push(
            "server.acme.challenge",
            "http-01 is answered on a plain listener (port 80); there is none",
        );
    }
}

/// A name an ACME server can validate by HTTP-01 or TLS-ALPN-01: a DNS name
/// of letters, digits and `-` labels, no wildcard (that needs DNS-01).
fn check_acme_name(name: &str) -> Result<(), String> {
    if name.starts_with("*.") {
        return Err(format!(
            "`{name}`: wildcard names need the DNS-01 challenge, which tollgate does not answer"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Err(format!("`{name}` is not a DNS name"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "`{name}`: write a lower-case DNS name, not an address"
        ));
    }
    Ok(())
}
