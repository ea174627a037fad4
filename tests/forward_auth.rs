//! Forward auth against an auth service that shows what it was sent: which
//! request headers are passed, cookies as credentials, identity from nested JSON
//! claims, and which of its statuses mean 401, 403 or 503.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An auth service: `Cookie: session=good` passes with
/// `{"user": {"name": "cookie-user", "groups": ["a", "b"]}, "seen": {headers}}`;
/// `session=banned` gets 451, `session=teapot` 418, anything else 401. Counts
/// the requests it gets.
fn auth_service() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut seen = serde_json::Map::new();
                for (name, value) in head.lines().skip(1).filter_map(|l| l.split_once(':')) {
                    seen.insert(name.trim().to_ascii_lowercase(), Value::from(value.trim()));
                }
                let cookie = seen.get("cookie").and_then(Value::as_str).unwrap_or("");
                let (status, body) = match cookie {
                    "session=good" => (
                        "200 OK",
                        json!({"user": {"name": "cookie-user", "groups": ["a", "b"]}, "seen": seen}),
                    ),
                    "session=banned" => (
                        "451 Unavailable For Legal Reasons",
                        json!({"why": "banned"}),
                    ),
                    "session=teapot" => ("418 I'm a teapot", json!({})),
                    _ => ("401 Unauthorized", json!({"why": "no session"})),
                };
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_and_passed_headers_reach_the_auth_service_and_claims_the_backend() {
    let (auth, asked) = auth_service();
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  app:\n    backends: [{{address: {backend}}}]\n\
         auth:\n  sessions:\n    forward:\n      url: http://{auth}/check\n\
         \x20     pass_headers: [Cookie, X-Request-Id]\n\
         \x20     identity_from_json:\n        X-Auth-User: user.name\n        X-Auth-Groups: user.groups\n        X-Seen-Request-Id: seen.x-request-id\n\
         \x20     forbidden_statuses: [403, 451]\n\
         routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    auth: sessions\n",
        backend = backend.addr
    ))
    .await;
    let client = reqwest::Client::new();
    let get = |cookie: Option<&'static str>| {
        let mut request = client.get(tollgate.url("/x")).header("X-Request-Id", "r-1");
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        request.send()
    };

    // A cookie is a credential: asked, passed, identity from nested claims.
    let passed = get(Some("session=good")).await.unwrap();
    assert_eq!(passed.status(), 200);
    let seen: Value = passed.json().await.unwrap();
    assert_eq!(seen["headers"]["x-auth-user"], "cookie-user");
    assert_eq!(seen["headers"]["x-auth-groups"], "a,b");
    assert_eq!(seen["headers"]["x-seen-request-id"], "r-1");
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // The service's statuses: 401 stays 401, 451 is listed as 403, 418 is 503.
    for (cookie, status) in [
        ("session=nope", 401),
        ("session=banned", 403),
        ("session=teapot", 503),
    ] {
        let answer = get(Some(cookie)).await.unwrap();
        assert_eq!(answer.status(), status, "{cookie}");
        if status == 403 {
            assert_eq!(
                answer.text().await.unwrap(),
                r#"{"why":"banned"}"#,
                "the service's body"
            );
        }
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4);

    // X-Request-Id alone is passed on, so it counts: the service is asked.
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(asked.load(Ordering::SeqCst), 5);
    // Nothing the service would be sent: 401 without asking it.
    let bare = client.get(tollgate.url("/x")).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert_eq!(asked.load(Ordering::SeqCst), 5);
}
