//! Request paths and gateway auth, against the frameworks users run: Flask (on
//! Werkzeug, and on the standard library's WSGI server) and Starlette on uvicorn,
//! behind tollgate with an authenticated `/protected/` and a public catch-all.
//! Each backend says how it read a request, so a path spelled to look public to
//! the gateway but protected to the backend would show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const SECRET: &str = "path-test-secret-0123456789abcdef";

/// What a spelling must get without a token (and, for `Auth`, with one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The auth step answers 401; with a token the backend serves it as protected.
    Auth,
    /// 400 from tollgate.
    Refused,
    /// The backend serves it as public.
    Public,
    /// A redirect to the path with its `/`.
    AddSlash,
}

/// Spellings of paths, each with what a gateway in front of `/protected/` must do.
const SPELLINGS: &[(&str, Expect)] = &[
    ("/protected/product/1", Expect::Auth),
    ("/protected%2Fproduct%2F1", Expect::Refused),
    ("/protected%2fproduct%2f1", Expect::Refused),
    ("/public%2F..%2Fprotected/product/1", Expect::Refused),
    ("/protected%5Cproduct%5C1", Expect::Refused),
    ("/protected\\product\\1", Expect::Refused),
    ("/%70rotected/product/1", Expect::Auth),
    ("/pro%74ected/product/1", Expect::Auth),
    ("/%2570rotected/product/1", Expect::Refused),
    ("/protected%252Fproduct%252F1", Expect::Refused),
    ("/public/../protected/product/1", Expect::Auth),
    ("/public/%2e%2e/protected/product/1", Expect::Auth),
    ("/public/%2E%2E/protected/product/1", Expect::Auth),
    ("/%2e%2e/protected/product/1", Expect::Auth),
    ("/./protected/./product/1", Expect::Auth),
    ("//protected//product/1", Expect::Auth),
    ("/public/..;/protected/product/1", Expect::Refused),
    ("/protected;jsessionid=x/product/1", Expect::Refused),
    ("/protected/product/1;v=2", Expect::Auth),
    ("/protected%00/product/1", Expect::Refused),
    ("/protected%3F/product/1", Expect::Refused),
    ("/protected%23/product/1", Expect::Refused),
    ("/protected/product/1?next=%2F..%2F", Expect::Auth),
    ("/protected", Expect::AddSlash),
    ("/PROTECTED/product/1", Expect::Public),
    ("/protected/product/%2e%2e/%2e%2e/public/x", Expect::Public),
    ("/public/product/all", Expect::Public),
    ("/protectedx/product/1", Expect::Public),
];

/// One answer, as a raw HTTP/1.1 client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    location: Option<String>,
    /// The backend's account of the request, when the backend answered.
    backend: Option<Value>,
}

impl Answer {
    fn served(&self) -> Option<&str> {
        self.backend.as_ref()?.get("served")?.as_str()
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.backend.as_ref()?.get(name)?.as_str()
    }
}

/// Sends `method target` with `headers` to `addr` on a connection of its own.
fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let (text, _) = raw_exchange(addr, request.as_bytes(), Duration::from_secs(10));
    parse_answer(&text)
}

fn parse_answer(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let location = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    let backend = serde_json::from_str(body).ok();
    Answer {
        status,
        location,
        backend,
    }
}

fn token(subject: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": subject, "exp": exp});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A protected `/protected/` and a public `/` on `host`, to `upstream`, with
/// `extra` lines added to both routes.
fn gateway_routes(host: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - match: {{host: {host}, path_prefix: /protected/}}\n    upstream: {upstream}\n    auth: users\n{extra}\
         \x20 - match: {{host: {host}, path_prefix: /}}\n    upstream: {upstream}\n{extra}"
    )
}

/// tollgate in front of Flask, Flask on wsgiref and Starlette, each on its own
/// host name; `decode.test` and `keep.test` set `encoded_slashes` on their routes.
async fn gateway(server_extra: &str) -> (Tollgate, Vec<Backend>) {
    let flask = Backend::start_python("flask", "path_backend.py", &["flask"]);
    let wsgiref = Backend::start_python("flask-wsgiref", "path_backend.py", &["flask-wsgiref"]);
    let starlette = Backend::start_python("starlette", "path_backend.py", &["starlette"]);
    let mut routes = String::new();
    routes.push_str(&gateway_routes("flask.test", "flask", ""));
    routes.push_str(&gateway_routes("wsgiref.test", "wsgiref", ""));
    routes.push_str(&gateway_routes("starlette.test", "starlette", ""));
    routes.push_str(&gateway_routes(
        "decode.test",
        "starlette",
        "    encoded_slashes: decode\n",
    ));
    routes.push_str(&gateway_routes(
        "keep.test",
        "flask",
        "    encoded_slashes: keep\n",
    ));
    routes.push_str(
        "  - match: {host: limited.test, path_prefix: /limited/}\n    upstream: flask\n    rate_limit: two\n",
    );
    let body = format!(
        "upstreams:\n\
         \x20 flask: {{backends: [{{address: {}}}]}}\n\
         \x20 wsgiref: {{backends: [{{address: {}}}]}}\n\
         \x20 starlette: {{backends: [{{address: {}}}]}}\n\
         auth:\n\
         \x20 users:\n\
         \x20   jwt: {{algorithms: [HS256], secret_env: PATH_TEST_SECRET, claims_to_headers: {{sub: X-Auth-User}}}}\n\
         rate_limits:\n\
         \x20 two: {{key: global, rate: 1/m, burst: 1}}\n\
         routes:\n{routes}",
        flask.addr, wsgiref.addr, starlette.addr
    );
    let tollgate =
        Tollgate::start_with_options(&body, server_extra, &[("PATH_TEST_SECRET", SECRET)]).await;
    (tollgate, vec![flask, wsgiref, starlette])
}

#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_protected_backend_path_without_auth() {
    let (tollgate, _backends) = gateway("").await;
    let bearer = format!("Bearer {}", token("alice"));
    let mut table = String::new();
    for host in ["flask.test", "starlette.test"] {
        for &(path, expect) in SPELLINGS {
            let anonymous = send(tollgate.addr, "GET", path, &[("Host", host)]);
            assert_ne!(
                anonymous.served(),
                Some("protected"),
                "{host} {path}: served as protected without a token: {anonymous:?}"
            );
            let signed_in = send(
                tollgate.addr,
                "GET",
                path,
                &[("Host", host), ("Authorization", &bearer)],
            );
            let seen = match expect {
                Expect::Auth => {
                    assert_eq!(anonymous.status, 401, "{host} {path}: {anonymous:?}");
                    assert_eq!(signed_in.status, 200, "{host} {path}: {signed_in:?}");
                    assert_eq!(signed_in.served(), Some("protected"), "{host} {path}");
                    assert_eq!(signed_in.field("user"), Some("alice"), "{host} {path}");
                    "401 (auth)"
                }
                Expect::Refused => {
                    assert_eq!(anonymous.status, 400, "{host} {path}: {anonymous:?}");
                    assert_eq!(signed_in.status, 400, "{host} {path}: {signed_in:?}");
                    "400"
                }
                Expect::Public => {
                    assert_eq!(anonymous.status, 200, "{host} {path}: {anonymous:?}");
                    assert_eq!(anonymous.served(), Some("public"), "{host} {path}");
                    assert_eq!(anonymous.field("user"), None, "{host} {path}");
                    "public"
                }
                Expect::AddSlash => {
                    assert_eq!(anonymous.status, 301, "{host} {path}: {anonymous:?}");
                    assert_eq!(anonymous.location.as_deref(), Some("/protected/"));
                    "301 to /protected/"
                }
            };
            table.push_str(&format!("{host:15} {path:45} {seen}\n"));
        }
    }
    eprintln!("{table}");
}

#[tokio::test]
async fn the_backend_is_sent_the_path_that_was_matched() {
    let (tollgate, _backends) = gateway("").await;
    let bearer = format!("Bearer {}", token("alice"));
    for (sent, backend_reads) in [
        ("/%70rotected/product/1", "/protected/product/1"),
        ("/public/../protected/product/1", "/protected/product/1"),
        ("//protected//product/./1", "/protected/product/1"),
        ("/protected/caf%c3%a9", "/protected/café"),
        ("/protected/a%20b", "/protected/a b"),
    ] {
        for host in ["flask.test", "starlette.test"] {
            let answer = send(
                tollgate.addr,
                "GET",
                sent,
                &[("Host", host), ("Authorization", &bearer)],
            );
            assert_eq!(answer.status, 200, "{host} {sent}: {answer:?}");
            assert_eq!(answer.field("path"), Some(backend_reads), "{host} {sent}");
        }
    }
    // Absolute-form targets are routed on their path and forwarded in origin-form.
    let answer = send(
        tollgate.addr,
        "GET",
        "http://flask.test/public/%2e%2e/protected/x",
        &[("Host", "flask.test")],
    );
    assert_eq!(answer.status, 401, "{answer:?}");
}

#[tokio::test]
async fn a_slashed_prefix_asked_without_its_slash_is_redirected() {
    let (tollgate, _backends) = gateway("").await;
    let get = send(
        tollgate.addr,
        "GET",
        "/protected?page=2",
        &[("Host", "flask.test")],
    );
    assert_eq!(get.status, 301);
    assert_eq!(get.location.as_deref(), Some("/protected/?page=2"));
    let post = send(
        tollgate.addr,
        "POST",
        "/protected",
        &[("Host", "flask.test"), ("Content-Length", "0")],
    );
    assert_eq!(post.status, 308);
    assert_eq!(post.location.as_deref(), Some("/protected/"));
    let spelled = send(
        tollgate.addr,
        "GET",
        "/%70rotected",
        &[("Host", "flask.test")],
    );
    assert_eq!(spelled.status, 301);
    assert_eq!(spelled.location.as_deref(), Some("/protected/"));
}

#[tokio::test]
async fn routes_may_decode_or_keep_encoded_slashes() {
    let (tollgate, _backends) = gateway("").await;
    let bearer = format!("Bearer {}", token("alice"));
    let host = [("Host", "decode.test")];
    // decode: matched on the decoded path, which is what the backend gets.
    let anonymous = send(tollgate.addr, "GET", "/protected%2Fproduct%2F1", &host);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let signed_in = send(
        tollgate.addr,
        "GET",
        "/protected%2Fproduct%2F1",
        &[("Host", "decode.test"), ("Authorization", &bearer)],
    );
    assert_eq!(signed_in.served(), Some("protected"));
    assert_eq!(signed_in.field("path"), Some("/protected/product/1"));
    let escaped = send(tollgate.addr, "GET", "/protected/..%2F..%2Fpublic/x", &host);
    assert_eq!(escaped.status, 200, "{escaped:?}");
    assert_eq!(escaped.field("path"), Some("/public/x"));

    // keep: forwarded as written while both readings choose the same route.
    let host = [("Host", "keep.test")];
    let kept = send(tollgate.addr, "GET", "/files/group%2Fproject", &host);
    assert_eq!(kept.status, 200, "{kept:?}");
    assert_eq!(kept.served(), Some("public"));
    assert_eq!(kept.field("path"), Some("/files/group/project"));
    let ambiguous = send(tollgate.addr, "GET", "/protected%2Fproduct%2F1", &host);
    assert_eq!(ambiguous.status, 400, "{ambiguous:?}");
}

#[tokio::test]
async fn the_server_default_can_decode_encoded_slashes() {
    let (tollgate, _backends) = gateway("  encoded_slashes: decode\n").await;
    let answer = send(
        tollgate.addr,
        "GET",
        "/protected%2Fproduct%2F1",
        &[("Host", "flask.test")],
    );
    assert_eq!(answer.status, 401, "{answer:?}");
    // A route's own setting wins over the server's.
    let answer = send(
        tollgate.addr,
        "GET",
        "/protected%2Fproduct%2F1",
        &[("Host", "keep.test")],
    );
    assert_eq!(answer.status, 400, "{answer:?}");
}

#[tokio::test]
async fn rate_limits_count_every_spelling_of_a_route() {
    let (tollgate, _backends) = gateway("").await;
    let host = [("Host", "limited.test")];
    assert_eq!(send(tollgate.addr, "GET", "/limited/a", &host).status, 200);
    assert_eq!(
        send(tollgate.addr, "GET", "/%6Cimited/a", &host).status,
        200
    );
    assert_eq!(
        send(tollgate.addr, "GET", "//limited/./a", &host).status,
        429
    );
}

#[tokio::test]
async fn host_is_required_of_http_1_1_but_not_of_http_1_0() {
    let (tollgate, _backends) = gateway("").await;
    let (text, _) = raw_exchange(
        tollgate.addr,
        b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("Host"), "{text}");
    // HTTP/1.0 without Host: served by the routes without a host, none here.
    let (text, _) = raw_exchange(
        tollgate.addr,
        b"GET /public/x HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

#[tokio::test]
async fn http_1_0_without_host_is_served_on_host_less_routes() {
    let flask = Backend::start_python("flask", "path_backend.py", &["flask"]);
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  flask: {{backends: [{{address: {}}}]}}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: flask\n",
        flask.addr
    ))
    .await;
    let (text, _) = raw_exchange(
        tollgate.addr,
        b"GET /public/x HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    let answer = parse_answer(&text);
    assert_eq!(answer.status, 200, "{text}");
    assert_eq!(answer.field("path"), Some("/public/x"));
}

#[tokio::test]
async fn underscore_headers_never_stand_in_for_identity_headers() {
    let bearer = format!("Bearer {}", token("alice"));
    // wsgiref reads `X_Auth_User` as `X-Auth-User`, as CGI does.
    let (dropping, _backends) = gateway("").await;
    let forged = send(
        dropping.addr,
        "GET",
        "/public/x",
        &[("Host", "wsgiref.test"), ("X_Auth_User", "admin")],
    );
    assert_eq!(forged.status, 200, "{forged:?}");
    assert_eq!(forged.field("user"), None, "{forged:?}");
    let signed_in = send(
        dropping.addr,
        "GET",
        "/protected/x",
        &[
            ("Host", "wsgiref.test"),
            ("X_Auth_User", "admin"),
            ("Authorization", &bearer),
        ],
    );
    assert_eq!(signed_in.field("user"), Some("alice"), "{signed_in:?}");

    let (rejecting, _backends) = gateway("  underscores_in_headers: reject\n").await;
    let refused = send(
        rejecting.addr,
        "GET",
        "/public/x",
        &[("Host", "wsgiref.test"), ("X_Auth_User", "admin")],
    );
    assert_eq!(refused.status, 400, "{refused:?}");

    // What the default protects from: kept, the forged name reaches the app.
    let (keeping, _backends) = gateway("  underscores_in_headers: keep\n").await;
    let passed = send(
        keeping.addr,
        "GET",
        "/public/x",
        &[("Host", "wsgiref.test"), ("X_Auth_User", "admin")],
    );
    assert_eq!(passed.field("user"), Some("admin"), "{passed:?}");
}

/// An auth service that lets every request pass and names, as the user, the
/// X-Forwarded-Uri it was asked about (`{"user": ...}`).
fn uri_echoing_auth_service() -> SocketAddr {
    head_answering_service(|seen| {
        let uri = seen.get("x-forwarded-uri").cloned().unwrap_or_default();
        ("200 OK", serde_json::json!({ "user": uri }))
    })
    .0
}

#[tokio::test]
async fn forward_auth_is_asked_about_the_path_the_backend_gets() {
    let flask = Backend::start_python("flask", "path_backend.py", &["flask"]);
    let auth = uri_echoing_auth_service();
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  flask: {{backends: [{{address: {}}}]}}\n\
         auth:\n  service:\n    forward: {{url: \"http://{auth}/check\", identity_from_json: {{X-Auth-User: user}}}}\n\
         routes:\n  - match: {{path_prefix: /protected/}}\n    upstream: flask\n    auth: service\n",
        flask.addr
    ))
    .await;
    let answer = send(
        tollgate.addr,
        "GET",
        "/public/%2e%2e/%70rotected//a%7e?q=%2F",
        &[("Host", "any"), ("Authorization", "Bearer t")],
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.field("path"), Some("/protected/a~"));
    assert_eq!(answer.field("user"), Some("/protected/a~?q=%2F"));
}
