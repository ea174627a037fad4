//! CORS per route (`cors:`), over real sockets with a real backend: preflights
//! answered by tollgate (never reaching the backend or the auth service, not
//! counted by the rate limit unless `count_preflights`), refused ones without
//! allow headers, actual answers with Access-Control-Allow-Origin,
//! -Expose-Headers and `Vary: Origin` added to the backend's, the backend's own
//! Access-Control-* replaced, tollgate's own error answers (401, 429, 502)
//! carrying the allow headers, and bad `cors:` refused at its line. The same in
//! a real browser is tests/cors_browser.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

const APP: &str = "https://app.example.com";
const OTHER: &str = "https://other.example.com";

/// The `cors:` most tests use, indented for a route.
const CORS: &str = "    cors:
      origins: [https://app.example.com, 'http://127.0.0.1:3000']
      methods: [GET, POST, PUT, DELETE]
      headers: [Authorization, Content-Type, X-Trace]
      expose: [X-Request-Id]
      credentials: true
      max_age: 10m
";

/// A backend and an auth service that refuses everyone (both count what
/// they get), and tollgate with `/api/` behind that auth service and a
/// limit of one request a minute, with `cors`; `/open/` the same without
/// auth; `/dead/` to a backend that is not there.
async fn gateway(cors: &str) -> (Tollgate, Origin, Origin) {
    gateway_with(cors, cors).await
}

/// As [`gateway`], with `api_cors` on `/api/` and `cors` on the others.
async fn gateway_with(api_cors: &str, cors: &str) -> (Tollgate, Origin, Origin) {
    let backend = Origin::start().await;
    let auth = Origin::start().await;
    let dead = DeadAddress::new();
    let tollgate = Tollgate::start(&format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
  gone:
    backends: [{{address: {dead}}}]
auth:
  refusing:
    forward:
      url: http://{auth}/check?status=401
rate_limits:
  one_a_minute:
    key: client_ip
    rate: 1/m
    burst: 0
routes:
  - match: {{path_prefix: /api/}}
    upstream: app
    auth: refusing
    rate_limit: one_a_minute
{api_cors}  - match: {{path_prefix: /open/}}
    upstream: app
{cors}  - match: {{path_prefix: /dead/}}
    upstream: gone
{cors}",
        backend = backend.addr,
        auth = auth.addr,
        dead = dead.addr,
    ))
    .await;
    (tollgate, backend, auth)
}

async fn send(
    tollgate: &Tollgate,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap) {
    let mut request = reqwest::Client::new().request(method, tollgate.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let _ = response.bytes().await;
    (status, headers)
}

/// A preflight from `origin` asking for `method` and `headers`.
async fn preflight(
    tollgate: &Tollgate,
    path: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> (u16, HeaderMap) {
    let mut asked = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(names) = headers {
        asked.push(("access-control-request-headers", names));
    }
    send(tollgate, Method::OPTIONS, path, &asked).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn access_control(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|n| n.as_str().to_string())
        .filter(|n| n.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_preflights_are_answered_here_before_auth_and_the_rate_limit() {
    let (tollgate, backend, auth) = gateway(CORS).await;
    // More preflights than the limit allows requests: none is counted.
    for _ in 0..3 {
        let (status, headers) = preflight(
            &tollgate,
            "/api/items/1",
            APP,
            "PUT",
            Some("authorization,content-type,x-trace"),
        )
        .await;
        assert_eq!(status, 204, "{headers:?}");
        assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            header(&headers, "access-control-allow-methods"),
            Some("GET, POST, PUT, DELETE")
        );
        assert_eq!(
            header(&headers, "access-control-allow-headers"),
            Some("Authorization, Content-Type, X-Trace")
        );
        assert_eq!(header(&headers, "access-control-max-age"), Some("600"));
        assert_eq!(
            header(&headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&headers, "vary"), Some("Origin"));
        assert!(!headers.contains_key("content-length"), "{headers:?}");
        assert!(!headers.contains_key("ratelimit-remaining"), "{headers:?}");
    }
    assert_eq!(backend.seen().len(), 0, "a preflight reached the backend");
    assert_eq!(auth.seen().len(), 0, "a preflight reached the auth service");

    // The actual request goes through the limit (the first of the minute)
    // to the auth service, whose 401 carries the allow headers; the next is
    // over the limit, and its 429 carries them too.
    let actual = [("origin", APP), ("authorization", "Bearer not-good")];
    let (status, headers) = send(&tollgate, Method::PUT, "/api/items/1", &actual).await;
    assert_eq!(status, 401, "{headers:?}");
    assert_eq!(auth.seen().len(), 1);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&headers, "access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(header(&headers, "vary"), Some("Origin"));
    let (status, headers) = send(&tollgate, Method::PUT, "/api/items/1", &actual).await;
    assert_eq!(status, 429, "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    assert_eq!(auth.seen().len(), 1);
    assert_eq!(backend.seen().len(), 0);
    // Preflights still answered, over the limit as they are.
    let (status, headers) = preflight(&tollgate, "/api/items/1", APP, "DELETE", None).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_preflights_get_204_without_allow_headers_and_reach_nothing() {
    let (tollgate, backend, auth) = gateway(CORS).await;
    for (origin, method, asked) in [
        (OTHER, "PUT", None),
        ("null", "GET", None),
        ("http://127.0.0.1:3001", "GET", None),
        ("http://app.example.com", "GET", None),
        (APP, "PATCH", None),
        (APP, "put", None),
        (APP, "PUT", Some("content-type, x-secret")),
    ] {
        let (status, headers) = preflight(&tollgate, "/api/items", origin, method, asked).await;
        assert_eq!(status, 204, "{origin} {method} {asked:?}");
        assert!(
            access_control(&headers).is_empty(),
            "{origin} {method} {asked:?}: {headers:?}"
        );
        assert_eq!(header(&headers, "vary"), Some("Origin"));
    }
    // The other origin on the port listed: allowed.
    let (_, headers) = preflight(&tollgate, "/open/", "http://127.0.0.1:3000", "GET", None).await;
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://127.0.0.1:3000")
    );
    assert_eq!(backend.seen().len(), 0);
    assert_eq!(auth.seen().len(), 0);
    // An OPTIONS that is no preflight (no Access-Control-Request-Method) is
    // the backend's to answer.
    let (status, _) = send(&tollgate, Method::OPTIONS, "/open/x", &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(backend.seen().len(), 1);
    assert_eq!(backend.seen()[0].method, "OPTIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_answers_get_the_policy_headers_and_vary_added_to_the_backend_s() {
    let (tollgate, backend, _auth) = gateway(CORS).await;
    // The backend varies on Accept-Encoding and allows another origin itself.
    let path = "/open/x?vary=Accept-Encoding&acao=https://evil.example.com";
    let (status, headers) = send(&tollgate, Method::GET, path, &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        all(&headers, "access-control-allow-origin"),
        [APP],
        "{headers:?}"
    );
    assert_eq!(
        header(&headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&headers, "access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert!(!headers.contains_key("access-control-allow-methods"));
    assert_eq!(all(&headers, "vary"), ["Accept-Encoding", "Origin"]);
    // The backend gets the request as sent, Origin included.
    assert_eq!(backend.last(path).headers["origin"], APP);

    // Another origin, and no origin: no allow header at all (the backend's
    // is gone too), Vary still.
    for asked in [vec![("origin", OTHER)], vec![]] {
        let (status, headers) = send(&tollgate, Method::GET, path, &asked).await;
        assert_eq!(status, 200);
        assert!(
            access_control(&headers).is_empty(),
            "{asked:?}: {headers:?}"
        );
        assert_eq!(all(&headers, "vary"), ["Accept-Encoding", "Origin"]);
    }
    // A Vary naming Origin already is left alone.
    let (_, headers) = send(
        &tollgate,
        Method::GET,
        "/open/y?vary=origin",
        &[("origin", APP)],
    )
    .await;
    assert_eq!(all(&headers, "vary"), ["origin"]);

    // A request with a body, buffered before it goes on (request_buffering):
    // its answer is relayed with the same headers.
    let posted = reqwest::Client::new()
        .post(tollgate.url("/open/upload?acao=*"))
        .header("origin", APP)
        .body("a body to buffer")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(all(posted.headers(), "access-control-allow-origin"), [APP]);
    assert_eq!(all(posted.headers(), "vary"), ["Origin"]);
    assert_eq!(backend.last("/open/upload?acao=*").method, "POST");

    // tollgate's own 502 for a dead backend carries the allow headers.
    let (status, headers) = send(&tollgate, Method::POST, "/dead/", &[("origin", APP)]).await;
    assert_eq!(status, 502);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&headers, "vary"), Some("Origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_is_answered_with_a_star() {
    let (tollgate, _backend, _auth) =
        gateway("    cors:\n      origins: ['*']\n      headers: [X-Trace]\n").await;
    let (status, headers) = send(&tollgate, Method::GET, "/open/", &[("origin", OTHER)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert!(!headers.contains_key("access-control-allow-credentials"));
    let (status, headers) = preflight(&tollgate, "/open/", "null", "POST", Some("x-trace")).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    // Without `methods`: the CORS-safelisted ones.
    assert_eq!(
        header(&headers, "access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    let (_, headers) = preflight(&tollgate, "/open/", OTHER, "PUT", None).await;
    assert!(access_control(&headers).is_empty(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_count_against_the_limit_with_count_preflights() {
    let counted = CORS.replace("      max_age: 10m\n", "      count_preflights: true\n");
    let (tollgate, backend, auth) = gateway_with(&counted, CORS).await;
    let (status, _) = preflight(&tollgate, "/api/", APP, "GET", None).await;
    assert_eq!(status, 204);
    let (status, headers) = preflight(&tollgate, "/api/", APP, "GET", None).await;
    assert_eq!(status, 429, "{headers:?}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(backend.seen().len() + auth.seen().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_cache_and_tollgate_itself_get_the_headers_of_their_request() {
    let backend = Origin::start().await;
    let tollgate = Tollgate::start(&format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
caches:
  pages:
    memory: 2MiB
routes:
  - match: {{path_prefix: /cached/}}
    upstream: app
    cache: pages
{CORS}  - match: {{path: /hello}}
    respond: {{status: 200, body: hello}}
{CORS}",
        backend = backend.addr
    ))
    .await;
    let path = "/cached/page?cc=max-age%3D60";
    let (_, first) = send(&tollgate, Method::GET, path, &[("origin", APP)]).await;
    assert_eq!(header(&first, "access-control-allow-origin"), Some(APP));
    let local = "http://127.0.0.1:3000";
    let (_, hit) = send(&tollgate, Method::GET, path, &[("origin", local)]).await;
    assert_eq!(header(&hit, "x-cache-status"), Some("HIT"), "{hit:?}");
    assert_eq!(header(&hit, "access-control-allow-origin"), Some(local));
    assert_eq!(all(&hit, "vary"), ["Origin"]);
    let (_, hit) = send(&tollgate, Method::GET, path, &[("origin", OTHER)]).await;
    assert!(access_control(&hit).is_empty(), "{hit:?}");
    assert_eq!(backend.hits(path), 1);

    let (status, headers) = send(&tollgate, Method::GET, "/hello", &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    let (status, headers) = preflight(&tollgate, "/hello", APP, "DELETE", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        header(&headers, "access-control-allow-methods"),
        Some("GET, POST, PUT, DELETE")
    );
}

/// A topology whose one route has `cors` (lines 8 on), with `rate_limit`.
fn with_cors(cors: &str) -> String {
    format!(
        "server:
  listeners:
    - address: 127.0.0.1:18080
routes:
  - match: {{path_prefix: /}}
    respond: {{status: 200}}
    cors:
{cors}"
    )
}

#[test]
fn bad_cors_is_refused_at_its_line() {
    let valid = with_cors("      origins: [https://app.example.com]\n      max_age: 1h\n");
    let checked = check_topology(&valid);
    assert!(checked.ok, "{}", checked.output);
    for (origin, says) in [
        ("https://app.example.com/", "not even `/`"),
        ("app.example.com", "no `://`"),
        ("https://app.example.com/api", "no path"),
        ("ftp://files.example.com", "not http or https"),
        ("null", "sandboxed"),
    ] {
        assert_refused_at(
            &with_cors(&format!(
                "      origins:\n        - https://ok.example.com\n        - '{origin}'\n"
            )),
            10,
            &["invalid CORS origin", says, "scheme://host[:port]"],
        );
    }
    assert_refused_at(
        &with_cors("      origins:\n        - '*'\n      credentials: true\n"),
        9,
        &["`*` cannot be used with `credentials: true`"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*', https://app.example.com]\n"),
        8,
        &["stands alone"],
    );
    assert_refused_at(
        &with_cors("      origins: []\n"),
        8,
        &["at least one origin"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*']\n      headers: ['*']\n"),
        9,
        &["list the header names"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*']\n      methods: [GET, '*']\n"),
        9,
        &["list the methods"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*']\n      max_age: 1500ms\n"),
        9,
        &["whole seconds"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*']\n      count_preflights: true\n"),
        9,
        &["has none"],
    );
    assert_refused_at(
        &with_cors("      origins: ['*']\n    response_headers:\n      set: {Access-Control-Allow-Origin: '*'}\n"),
        10,
        &["written by the route's `cors` policy"],
    );
}
