//! Forward auth against an auth service that shows what it was sent: which
//! request headers are passed, cookies as credentials, identity from nested JSON
//! claims, and which of its statuses mean 401, 403 or 503.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An auth service: `Cookie: session=good` passes with
/// `{"user": {"name": "cookie-user", "groups": ["a", "b"]}, "seen": {headers}}`;
/// `session=banned` gets 451, `session=teapot` 418, anything else 401. Counts
/// the requests it gets.
fn auth_service() -> (SocketAddr, Arc<AtomicUsize>) {
    head_answering_service(
        |seen| match seen.get("cookie").and_then(Value::as_str).unwrap_or("") {
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
        },
    )
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
