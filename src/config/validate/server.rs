//! Checks of `server:`.

use super::{check_positive, Problems};
use crate::config::schema::{ListenerConfig, ServerConfig};
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
    if listener.redirect_https && !has_tls {
        problems.push(
            format!("{at}.redirect_https"),
            "redirect_https needs a listener with `tls`",
        );
    }
    if let Some(tls) = &listener.tls {
        if tls.certificates.is_empty() {
            problems.push(
                format!("{at}.tls.certificates"),
                "list at least one certificate",
            );
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
