//! Checks of `auth:`.

use super::{check_name, Problems};
use crate::config::schema::{AuthPolicyConfig, BasicAuthConfig, ForwardAuthConfig, JwtConfig};
use crate::config::types::{HeaderName, JwtFamily};

pub(super) fn check(name: &str, policy: &AuthPolicyConfig, problems: &mut Problems) {
    let at = format!("auth.{name}");
    check_name(&at, name, "auth policy", problems);
    let kinds = usize::from(policy.forward.is_some())
        + usize::from(policy.jwt.is_some())
        + usize::from(policy.api_keys.is_some())
        + usize::from(policy.basic.is_some())
        + usize::from(policy.client_cert.is_some());
    if kinds != 1 {
        problems.push(
            at.clone(),
            "an auth policy has exactly one of `forward`, `jwt`, `api_keys`, `basic` or `client_cert`",
        );
    }
    if let Some(client_cert) = &policy.client_cert {
        let cat = format!("{at}.client_cert");
        if client_cert.subjects.is_empty() {
            problems.push(
                format!("{cat}.subjects"),
                "list at least one subject (`CN=partner-a,O=Partner A`)",
            );
        }
        for (i, subject) in client_cert.subjects.iter().enumerate() {
            if let Err(e) = crate::edge::client_certs::check_subject(subject) {
                problems.push(format!("{cat}.subjects[{i}]"), e);
            }
        }
    }
    if let Some(basic) = &policy.basic {
        check_basic(&format!("{at}.basic"), basic, problems);
    }
    if let Some(forward) = &policy.forward {
        check_forward(&format!("{at}.forward"), forward, problems);
    }
    if let Some(jwt) = &policy.jwt {
        check_jwt(&format!("{at}.jwt"), jwt, problems);
    }
}

/// Header names an auth policy may set: not framing, routing or hop-by-hop
/// ones, nor those tollgate sets from the client certificate.
fn check_identity_header(at: String, header: &HeaderName, problems: &mut Problems) {
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
    let name = header.name();
    if crate::edge::client_certs::IDENTITY_HEADERS.contains(name) {
        problems.push(
            at,
            format!("`{header}` is set by tollgate, from the client certificate"),
        );
    } else if RESERVED.contains(&name.as_str()) {
        problems.push(at, format!("`{header}` cannot carry an identity"));
    }
}

fn check_basic(bat: &str, basic: &BasicAuthConfig, problems: &mut Problems) {
    if let Some(realm) = &basic.realm {
        let quotable = |c: char| (' '..='~').contains(&c) && c != '"' && c != '\\';
        if realm.is_empty() || !realm.chars().all(quotable) {
            problems.push(
                format!("{bat}.realm"),
                "a realm is printable ASCII without `\"` or `\\`",
            );
        }
    }
    if let Some(header) = &basic.user_header {
        check_identity_header(format!("{bat}.user_header"), header, problems);
    }
}

fn check_forward(fat: &str, forward: &ForwardAuthConfig, problems: &mut Problems) {
    if forward.timeout.is_zero() {
        problems.push(format!("{fat}.timeout"), "must be more than 0");
    }
    if let Some(name) = &forward.token_query {
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if name.is_empty() || !name.bytes().all(plain) {
            problems.push(
                format!("{fat}.token_query"),
                format!(
                    "invalid query parameter name `{name}`: use letters, digits, `_`, `-`, `.`"
                ),
            );
        }
    }
    for (i, header) in forward.pass_headers.iter().enumerate() {
        let name = header.name();
        if name == http::header::AUTHORIZATION || name == http::header::HOST {
            problems.push(
                format!("{fat}.pass_headers[{i}]"),
                format!("`{header}` is sent already (Host as X-Forwarded-Host)"),
            );
        }
    }
    for (i, header) in forward.copy_headers.iter().enumerate() {
        check_identity_header(format!("{fat}.copy_headers[{i}]"), header, problems);
    }
    for (header, claim) in &forward.identity_from_json {
        check_identity_header(format!("{fat}.identity_from_json"), header, problems);
        if claim.is_empty() {
            problems.push(
                format!("{fat}.identity_from_json.{header}"),
                "name the claim of the JSON answer this header takes",
            );
        }
    }
    check_statuses(fat, forward, problems);
    if forward.cache.is_some_and(|c| c.is_zero()) {
        problems.push(
            format!("{fat}.cache"),
            "must be more than 0, or left out for no cache",
        );
    }
    if forward.cache_entries == 0 {
        problems.push(format!("{fat}.cache_entries"), "must be at least 1");
    }
}

/// `unauthorized_statuses` and `forbidden_statuses`: refusals, each in one list.
fn check_statuses(fat: &str, forward: &ForwardAuthConfig, problems: &mut Problems) {
    for (key, statuses) in [
        ("unauthorized_statuses", &forward.unauthorized_statuses),
        ("forbidden_statuses", &forward.forbidden_statuses),
    ] {
        for (i, status) in statuses.iter().enumerate() {
            if !(300..=599).contains(status) {
                problems.push(
                    format!("{fat}.{key}[{i}]"),
                    format!(
                        "{status} is not a refusal: expected 300 to 599 (2xx lets requests pass)"
                    ),
                );
            }
        }
    }
    if let Some(both) = forward
        .unauthorized_statuses
        .iter()
        .find(|s| forward.forbidden_statuses.contains(s))
    {
        problems.push(
            format!("{fat}.forbidden_statuses"),
            format!("{both} is listed in unauthorized_statuses too"),
        );
    }
}

fn check_jwt(jat: &str, jwt: &JwtConfig, problems: &mut Problems) {
    if jwt.algorithms.is_empty() {
        problems.push(format!("{jat}.algorithms"), "list at least one algorithm");
    }
    let hmac = jwt.algorithms.iter().any(|a| a.family() == JwtFamily::Hmac);
    let public = jwt
        .algorithms
        .iter()
        .any(|a| a.family() == JwtFamily::PublicKey);
    let secrets = usize::from(jwt.secret_env.is_some()) + usize::from(jwt.secret_file.is_some());
    if hmac && secrets != 1 {
        problems.push(
            jat,
            "HS* algorithms need exactly one of `secret_env` or `secret_file`",
        );
    }
    if !hmac && secrets > 0 {
        problems.push(
            jat,
            "`secret_env`/`secret_file` are for HS* algorithms, and none is listed",
        );
    }
    if public && jwt.jwks_file.is_none() {
        problems.push(jat, "RS*, PS* and ES* algorithms need `jwks_file`");
    }
    if !public && jwt.jwks_file.is_some() {
        problems.push(
            format!("{jat}.jwks_file"),
            "`jwks_file` is for RS*, PS* and ES* algorithms, and none is listed",
        );
    }
    for header in jwt.claims_to_headers.values() {
        check_identity_header(format!("{jat}.claims_to_headers"), header, problems);
    }
}
