//! CORS in a real browser: headless Chromium opens a page served by tollgate
//! (a static route) from one origin, `http://127.0.0.1:A`, and the page's
//! scripts call an API on another origin, `http://127.0.0.1:B`, through a
//! second tollgate whose routes have `cors:`, in front of a real backend that
//! records what reaches it. Allowed without credentials, allowed with them (the
//! cookie sent, `credentials: 'include'`), refused with them where the route
//! does not allow them, refused for a page of an origin not listed (its own
//! tollgate listener, port C), a preflighted PUT with a custom header allowed
//! and ones with a header or method not listed refused before reaching the
//! backend, and tollgate's own 401 readable by the page. Where Chromium
//! refuses, fetch() rejects with a TypeError and Chromium logs a CORS error.
//!
//! Chromium is the Debian package `chromium` (`make deps` installs it);
//! without it the test fails saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser::{Cdp, Chromium};
use common::origin::Origin;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const WINDOW: (u64, u64) = (800, 600);

/// tollgate serving `index.html` from a static route on two listeners: the
/// page's allowed origin and one not listed.
async fn page_server() -> (Tollgate, SocketAddr, SocketAddr) {
    let pages = temp_dir("cors-pages");
    write_file(
        &pages,
        "index.html",
        "<!doctype html><title>app</title><p>app</p>\n",
    );
    let dir = temp_dir("page-tollgate");
    let config = format!(
        "server:
  threads: 1
  listeners:
    - address: 127.0.0.1:0
    - address: 127.0.0.1:0
  access_log: off
  pid_file: {pid}
  upgrade_sock: {sock}
routes:
  - match: {{path_prefix: /}}
    static: {{root: {root}}}
",
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        root = pages.display(),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let (allowed, other) = (tollgate.addr, tollgate.reported("server.listeners[1]"));
    tollgate.wait_listening(other).await;
    (tollgate, allowed, other)
}

/// The API's tollgate: `/public/` without credentials (X-Served-By exposed,
/// X-Hidden not), `/private/` with credentials, GET and PUT and the X-Trace
/// header, `/guarded/` behind an auth service that refuses everyone; each
/// allows only `page`'s origin.
async fn api_server(page: SocketAddr, backend: &Origin, auth: &Origin) -> Tollgate {
    Tollgate::start(&format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
auth:
  refusing:
    forward:
      url: http://{auth}/check?status=401
routes:
  - match: {{path_prefix: /public/}}
    upstream: app
    response_headers: {{set: {{X-Served-By: tollgate, X-Hidden: secret}}}}
    cors:
      origins: ['http://{page}']
      expose: [X-Served-By]
  - match: {{path_prefix: /private/}}
    upstream: app
    cors:
      origins: ['http://{page}']
      methods: [GET, PUT]
      headers: [X-Trace]
      credentials: true
  - match: {{path_prefix: /guarded/}}
    upstream: app
    auth: refusing
    cors:
      origins: ['http://{page}']
      headers: [Authorization]
",
        backend = backend.addr,
        auth = auth.addr,
    ))
    .await
}

/// Runs `fetch(url, init)` in the page: `{ok: true, status, body, served_by,
/// hidden}` when it resolves, `{ok: false, error}` when it rejects.
async fn fetch(cdp: &mut Cdp, url: &str, init: Value) -> Value {
    let script = format!(
        "(async () => {{
  try {{
    const r = await fetch({url}, {init});
    return {{ok: true, status: r.status, body: await r.text(),
            served_by: r.headers.get('x-served-by'), hidden: r.headers.get('x-hidden')}};
  }} catch (e) {{
    return {{ok: false, error: e.name + ': ' + e.message}};
  }}
}})()",
        url = json!(url),
    );
    cdp.eval(&script).await
}

/// Asserts that `fetched` rejected with a TypeError and that Chromium logged
/// a CORS error for `url`.
async fn assert_refused(cdp: &mut Cdp, fetched: &Value, url: &str) {
    assert_eq!(
        fetched["ok"],
        json!(false),
        "{url} was not refused: {fetched}"
    );
    assert!(
        fetched["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("TypeError")),
        "{url}: {fetched}"
    );
    assert!(
        cdp.wait_for_error(&format!("{url}' from origin"), Duration::from_secs(5))
            .await,
        "Chromium logged no CORS error for {url}: {:?}",
        cdp.errors()
    );
    let logged = cdp.errors();
    assert!(
        logged
            .iter()
            .any(|e| e.contains(url) && e.contains("CORS policy")),
        "{url}: {logged:?}"
    );
}

fn seen_at(backend: &Origin, path: &str) -> Vec<common::origin::Seen> {
    backend
        .seen()
        .into_iter()
        .filter(|s| s.target == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_another_origin_call_the_api_as_cors_allows() {
    let backend = Origin::start().await;
    let auth = Origin::start().await;
    let (_pages, page, other_page) = page_server().await;
    let api = api_server(page, &backend, &auth).await;
    let url = |path: &str| format!("http://{}{path}", api.addr);

    let browser = Chromium::launch(&temp_dir("chromium-profile"), WINDOW);
    let mut cdp = Cdp::connect(&browser.devtools).await;
    cdp.open_page(WINDOW).await;
    cdp.navigate(&format!("http://{page}/")).await;
    // A cookie of the host 127.0.0.1, which every port of it shares.
    cdp.eval("document.cookie = 'session=abc; path=/'").await;

    // Allowed, without credentials: the page reads the answer and the one
    // header exposed to it; the backend got no cookie.
    let fetched = fetch(&mut cdp, &url("/public/a"), json!({})).await;
    assert_eq!(fetched["ok"], json!(true), "{fetched}");
    assert_eq!(fetched["status"], json!(200));
    assert!(fetched["body"].as_str().unwrap().starts_with("/public/a"));
    assert_eq!(fetched["served_by"], json!("tollgate"), "{fetched}");
    assert_eq!(fetched["hidden"], Value::Null, "{fetched}");
    let seen = seen_at(&backend, "/public/a");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["origin"], format!("http://{page}"));
    assert!(!seen[0].headers.contains_key("cookie"));

    // With credentials on a route that does not allow them: refused (the
    // request went out with the cookie; the page may not read the answer).
    let public_b = url("/public/b");
    let fetched = fetch(&mut cdp, &public_b, json!({"credentials": "include"})).await;
    assert_refused(&mut cdp, &fetched, &public_b).await;
    assert_eq!(
        seen_at(&backend, "/public/b")[0].headers["cookie"],
        "session=abc"
    );

    // Allowed with credentials: the cookie reaches the backend.
    let fetched = fetch(
        &mut cdp,
        &url("/private/c"),
        json!({"credentials": "include"}),
    )
    .await;
    assert_eq!(fetched["ok"], json!(true), "{fetched}");
    assert_eq!(
        seen_at(&backend, "/private/c")[0].headers["cookie"],
        "session=abc"
    );

    // A preflighted PUT with a listed header: allowed; the preflight was
    // answered by tollgate, the backend got the PUT alone.
    let init = json!({"method": "PUT", "credentials": "include", "headers": {"X-Trace": "t-1"}, "body": "{}"});
    let fetched = fetch(&mut cdp, &url("/private/d"), init).await;
    assert_eq!(fetched["ok"], json!(true), "{fetched}");
    let seen = seen_at(&backend, "/private/d");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].headers["x-trace"], "t-1");

    // Preflights asking for a header or a method not listed: refused, and
    // neither they nor the requests reached the backend.
    for (path, init) in [
        (
            "/private/e",
            json!({"method": "PUT", "headers": {"X-Trace": "t-2", "X-Other": "1"}}),
        ),
        ("/private/f", json!({"method": "DELETE"})),
    ] {
        let fetched = fetch(&mut cdp, &url(path), init).await;
        assert_refused(&mut cdp, &fetched, &url(path)).await;
        assert!(
            seen_at(&backend, path).is_empty(),
            "{path} reached the backend"
        );
    }

    // tollgate's own 401 carries the allow headers: the page reads its status.
    let init = json!({"headers": {"Authorization": "Bearer not-good"}});
    let fetched = fetch(&mut cdp, &url("/guarded/g"), init).await;
    assert_eq!(fetched["ok"], json!(true), "{fetched}");
    assert_eq!(fetched["status"], json!(401), "{fetched}");
    assert_eq!(auth.seen().len(), 1, "the auth service was asked once");
    assert!(seen_at(&backend, "/guarded/g").is_empty());

    // A page of an origin not listed: refused (the simple GET itself went
    // out: CORS keeps the answer from the page, not the request from the API).
    cdp.navigate(&format!("http://{other_page}/")).await;
    let public_h = url("/public/h");
    let fetched = fetch(&mut cdp, &public_h, json!({})).await;
    assert_refused(&mut cdp, &fetched, &public_h).await;
    assert_eq!(
        seen_at(&backend, "/public/h")[0].headers["origin"],
        format!("http://{other_page}")
    );
    // No preflight ever reached the backend.
    assert!(backend.seen().iter().all(|s| s.method != "OPTIONS"));
    // And Chromium found nothing to refuse in the allowed calls.
    let logged = cdp.errors();
    for allowed in ["/public/a", "/private/c", "/private/d", "/guarded/g"] {
        let allowed = url(allowed);
        assert!(
            !logged
                .iter()
                .any(|e| e.contains(&format!("'{allowed}'")) && e.contains("CORS")),
            "{allowed}: {logged:?}"
        );
    }
    drop(browser);
}
