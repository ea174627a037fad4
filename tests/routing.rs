//! Routing through the real proxy: host and path precedence, direct answers,
//! 404 without a route, strip_prefix, and paths normalized before matching.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

async fn topology() -> (Tollgate, Vec<Backend>) {
    let backends = vec![
        Backend::start("default"),
        Backend::start("product"),
        Backend::start("api-product"),
        Backend::start("wild-product"),
        Backend::start("list"),
    ];
    let up = |i: usize| format!("    backends: [{{address: {}}}]\n", backends[i].addr);
    let body = format!(
        "upstreams:
  default:
{}  product:
{}  api_product:
{}  wild_product:
{}  list:
{}routes:
  - match: {{path_prefix: /}}
    upstream: default
  - match: {{path_prefix: /product}}
    upstream: product
  - match: {{host: api.example.com, path_prefix: /product}}
    upstream: api_product
    strip_prefix: true
  - match: {{host: \"*.example.com\", path_prefix: /product}}
    upstream: wild_product
  - match: {{path: /product/list}}
    upstream: list
  - name: healthz
    match: {{path: /healthz}}
    respond: {{status: 200, body: \"ok\\n\", headers: {{Content-Type: text/plain, X-Served-By: tollgate}}}}
  - match: {{host: only.example.org, path: /exact}}
    respond: {{status: 418, body: teapot}}
",
        up(0),
        up(1),
        up(2),
        up(3),
        up(4)
    );
    let tollgate = Tollgate::start(&body).await;
    (tollgate, backends)
}

async fn backend_for(tollgate: &Tollgate, host: &str, path: &str) -> (u16, String, String) {
    let client = reqwest::Client::new();
    let response = client
        .get(tollgate.url(path))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, backend, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_route_wins() {
    let (tollgate, _backends) = topology().await;
    let cases = [
        ("other.org", "/", "default"),
        ("other.org", "/products", "product"),
        ("other.org", "/product/list", "list"),
        ("other.org", "/product/list/2", "product"),
        ("api.example.com", "/product/7", "api-product"),
        ("API.EXAMPLE.COM:8080", "/product/7", "api-product"),
        ("www.example.com", "/product/7", "wild-product"),
        ("a.b.example.com", "/product/7", "wild-product"),
        ("example.com", "/product/7", "product"),
        ("api.example.com", "/about", "default"),
    ];
    for (host, path, expected) in cases {
        let (status, backend, body) = backend_for(&tollgate, host, path).await;
        assert_eq!(
            (status, backend.as_str()),
            (200, expected),
            "{host}{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_answers_and_404() {
    let (tollgate, _backends) = topology().await;
    let response = reqwest::get(tollgate.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["x-served-by"], "tollgate");
    assert!(response.headers().get("x-backend").is_none());
    assert_eq!(response.text().await.unwrap(), "ok\n");

    let (status, _, body) = backend_for(&tollgate, "only.example.org", "/exact").await;
    assert_eq!((status, body.as_str()), (418, "teapot"));

    // A topology without a catch-all answers 404 for unmatched requests.
    let backend = Backend::start("x");
    let narrow = Tollgate::start(&format!(
        "upstreams:\n  x:\n    backends: [{{address: {}}}]\nroutes:\n  - match: {{path_prefix: /api/}}\n    upstream: x\n",
        backend.addr
    ))
    .await;
    let response = reqwest::get(narrow.url("/elsewhere")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("no route"));
    // The connection stays usable after a 404.
    let client = reqwest::Client::new();
    for path in ["/nope", "/api/ok"] {
        let status = client
            .get(narrow.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(status == 404 || status == 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_normalized_paths_reach_the_backend() {
    let (tollgate, _backends) = topology().await;
    let (_, backend, body) =
        backend_for(&tollgate, "api.example.com", "/product/7?color=red").await;
    assert_eq!(backend, "api-product");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["uri"], "/7?color=red", "prefix stripped, query kept");

    // Encoded and dotted paths are routed as what they mean, and forwarded so.
    for (sent, expected_backend, forwarded) in [
        ("/%70roduct/list", "list", "/product/list"),
        ("/x/../product/list", "list", "/product/list"),
        ("//product//list", "list", "/product/list"),
    ] {
        let (raw, _) = raw_exchange(
            tollgate.addr,
            format!("GET {sent} HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            std::time::Duration::from_secs(5),
        );
        assert!(
            raw.contains(&format!("x-backend: {expected_backend}")),
            "{sent}: {raw}"
        );
        assert!(
            raw.contains(&format!("\"uri\":\"{forwarded}\"")),
            "{sent}: {raw}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_routes_by_its_authority() {
    let (tollgate, _backends) = topology().await;
    let send = |request: &'static [u8]| {
        raw_exchange(tollgate.addr, request, std::time::Duration::from_secs(5)).0
    };
    let raw = send(b"GET http://api.example.com/product/7 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n");
    assert!(raw.contains("x-backend: api-product"), "{raw}");
    // A Host that disagrees with the target could make routing and the backend
    // see different virtual hosts: such a request is refused, never forwarded.
    let raw = send(b"GET http://api.example.com/product/7 HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
}
