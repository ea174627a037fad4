//! A route's `request_headers`, `response_headers` and `error_pages` over real
//! sockets: what the backend gets, what every kind of answer carries, and the
//! bodies of tollgate's own error answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const RULES: &str = "    request_headers: {set: {X-Env: prod}, remove: [X-Debug]}
    response_headers: {set: {X-Frame-Options: DENY}, remove: [Server]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_routes_request_headers() {
    let backend = Backend::start("app");
    let body = TopologyBody::new()
        .upstream("app", &[backend.addr], "")
        .route("/", "app", RULES)
        .yaml();
    let tollgate = Tollgate::start(&body).await;
    let seen: serde_json::Value = reqwest::Client::new()
        .get(tollgate.url("/x"))
        .header("X-Debug", "1")
        .header("X-Env", "dev")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-env"], "prod", "{seen}");
    assert!(headers.get("x-debug").is_none(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_route_gets_its_response_headers() {
    let backend = RawBackend::start(Some(
        b"HTTP/1.1 200 OK\r\nServer: backend/1.0\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
    ));
    let dir = temp_dir("files");
    std::fs::write(dir.join("a.txt"), "file").unwrap();
    let body = TopologyBody::new()
        .upstream("app", &[backend.addr], "")
        .section("caches:\n  pages: {memory: 1MiB}\n")
        .section("rate_limits:\n  one: {key: client_ip, rate: 1/m, burst: 0}\n")
        .raw_route(&format!(
            "  - match: {{path_prefix: /files/}}\n    static: {{root: {}}}\n    strip_prefix: true\n{RULES_RESPONSE}",
            dir.display()
        ))
        .raw_route(&format!(
            "  - match: {{path: /hello}}\n    respond: {{status: 200, body: hi}}\n{RULES_RESPONSE}"
        ))
        .raw_route(&format!(
            "  - match: {{path_prefix: /limited/}}\n    upstream: app\n    rate_limit: one\n{RULES_RESPONSE}"
        ))
        .route("/", "app", &format!("    cache: pages\n{RULES}"))
        .yaml();
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for path in [
        "/x",
        "/x",
        "/files/a.txt",
        "/files/none",
        "/hello",
        "/limited/a",
        "/limited/b",
    ] {
        let response = client.get(tollgate.url(path)).send().await.unwrap();
        answers.push((path, response.status().as_u16(), response.headers().clone()));
    }
    // A miss, a hit, a file, a static 404, a direct answer, a proxied answer
    // and tollgate's own 429.
    let statuses: Vec<u16> = answers.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 200, 200, 429]);
    assert_eq!(answers[1].2["x-cache-status"], "HIT");
    for (path, status, headers) in &answers {
        assert_eq!(headers["x-frame-options"], "DENY", "{path} ({status})");
        assert!(
            headers.get("server").is_none(),
            "{path} ({status}) kept Server"
        );
    }
}

const RULES_RESPONSE: &str =
    "    response_headers: {set: {X-Frame-Options: DENY}, remove: [Server]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgates_own_answers_use_the_routes_error_pages() {
    let dir = temp_dir("pages");
    let busy = write_file(&dir, "429.html", "<h1>Slow down</h1>\n");
    let down = write_file(&dir, "502.html", "<h1>Back soon</h1>\n");
    let dead = DeadAddress::new();
    let backend = Backend::start("app");
    let pages = format!(
        "    error_pages: {{429: {}, 502: {}}}\n",
        busy.display(),
        down.display()
    );
    let body = TopologyBody::new()
        .upstream("app", &[backend.addr], "")
        .upstream("gone", &[dead.addr], "    retries: 0\n")
        .section("rate_limits:\n  one: {key: client_ip, rate: 1/m, burst: 0}\n")
        .route("/busy/", "app", &format!("    rate_limit: one\n{pages}"))
        .route("/down/", "gone", &pages)
        .route("/", "gone", "")
        .yaml();
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(tollgate.url("/busy/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let limited = client.get(tollgate.url("/busy/b")).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(
        limited.headers().contains_key("retry-after"),
        "the status's headers stay"
    );
    assert_eq!(limited.headers()["content-type"], "text/html");
    assert_eq!(limited.text().await.unwrap(), "<h1>Slow down</h1>\n");
    let failed = client.get(tollgate.url("/down/x")).send().await.unwrap();
    assert_eq!(failed.status(), 502);
    assert_eq!(failed.text().await.unwrap(), "<h1>Back soon</h1>\n");
    // A route without pages keeps tollgate's plain text.
    let plain = client.get(tollgate.url("/other")).send().await.unwrap();
    assert_eq!(plain.status(), 502);
    assert!(plain.text().await.unwrap().starts_with("502 Bad Gateway"));
}

#[test]
fn a_missing_error_page_is_a_config_error_naming_the_file() {
    let dir = temp_dir("missing");
    let missing = dir.join("nope.html");
    let result = check_topology(&format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    backends: [{{address: 127.0.0.1:9}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    error_pages: {{503: {}}}\n",
        missing.display()
    ));
    assert!(!result.ok, "{}", result.output);
    let line = format!("{}:10:", result.file);
    assert!(
        result.output.contains(&line),
        "no file:line in {}",
        result.output
    );
    assert!(
        result.output.contains("routes[0].error_pages.503"),
        "{}",
        result.output
    );
    assert!(
        result.output.contains(&missing.display().to_string()),
        "{}",
        result.output
    );
}
