//! Request IDs (`server.request_id`): every request reaches its backend with
//! an ID in the configured header and every answer, tollgate's own included,
//! carries the same one back; the access log and the forward-auth service see
//! it too. Incoming IDs are kept only when trusted and well formed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const IDS_ON: &str = "  request_id: {header: X-Request-Id, trust_incoming: false}";
const IDS_TRUSTED: &str = "  request_id: {header: X-Request-Id, trust_incoming: true}";

/// The ID an answer carries; panics when it carries none.
fn id_of(answer: &reqwest::Response) -> String {
    let ids: Vec<_> = answer.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "one X-Request-Id on {}", answer.status());
    ids[0].to_str().unwrap().to_string()
}

/// Whether `id` is of the form tollgate makes: 32 lower-case hex digits.
fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The request ID the demo backend was sent, from its JSON description.
async fn seen_by_backend(answer: reqwest::Response) -> String {
    let seen: Value = answer.json().await.unwrap();
    seen["headers"]["x-request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("the backend got no X-Request-Id: {seen}"))
        .to_string()
}

/// The JSON access log lines, once there are at least `n`.
async fn json_log(tollgate: &Tollgate, n: usize) -> Vec<Value> {
    let written = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() >= n
    })
    .await;
    assert!(written, "fewer than {n} lines:\n{}", tollgate.access_log());
    tollgate
        .access_log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_reaches_the_backend_with_the_id_its_answer_and_log_line_carry() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(&proxy_to(&[backend.addr]), IDS_ON).await;
    let client = reqwest::Client::new();

    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = client.get(tollgate.url("/get")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let id = id_of(&answer);
        assert!(is_generated(&id), "{id}");
        assert_eq!(seen_by_backend(answer).await, id);
        ids.push(id);
    }
    // A buffered body goes through a subrequest: it keeps its request's ID.
    let posted = client
        .post(tollgate.url("/post"))
        .body("a body")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let id = id_of(&posted);
    assert_eq!(seen_by_backend(posted).await, id);
    ids.push(id);
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");

    let log = json_log(&tollgate, 3).await;
    let mut logged: Vec<&str> = log
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    logged.sort_unstable();
    ids.sort_unstable();
    assert_eq!(logged, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_ids_are_kept_only_when_trusted_and_well_formed() {
    let backend = Backend::start("app");
    let body = proxy_to(&[backend.addr]);
    let untrusting = Tollgate::start_with(&body, IDS_ON).await;
    let trusting = Tollgate::start_with(&body, IDS_TRUSTED).await;
    let client = reqwest::Client::new();
    let send = |tollgate: &Tollgate, ids: &[&str]| {
        let mut request = client.get(tollgate.url("/"));
        for id in ids {
            request = request.header("X-Request-Id", *id);
        }
        request.send()
    };
    let uuid = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    let longest = "a".repeat(128);

    // Not trusted: replaced, however well formed.
    let answer = send(&untrusting, &[uuid]).await.unwrap();
    let id = id_of(&answer);
    assert!(is_generated(&id), "{id}");
    assert_eq!(seen_by_backend(answer).await, id);

    // Trusted and well formed: kept, to the backend and back.
    for kept in [uuid, "edge:req_1.2", longest.as_str()] {
        let answer = send(&trusting, &[kept]).await.unwrap();
        assert_eq!(id_of(&answer), kept);
        assert_eq!(seen_by_backend(answer).await, kept);
    }

    // Trusted but malformed: too long, characters outside the set, empty,
    // several header lines. The backend gets the one new ID, once.
    let too_long = "a".repeat(129);
    let malformed: [&[&str]; 5] = [
        &[too_long.as_str()],
        &["<script>"],
        &["id with spaces"],
        &[""],
        &["first", "second"],
    ];
    for sent in malformed {
        let answer = send(&trusting, sent).await.unwrap();
        let id = id_of(&answer);
        assert!(is_generated(&id), "{sent:?} -> {id}");
        assert_eq!(seen_by_backend(answer).await, id, "{sent:?}");
    }
}

/// A forward-auth service: `Cookie: session=good` passes with
/// `{"seen": {the headers it got}}`, anything else gets 401. Counts requests.
fn auth_service() -> (SocketAddr, Arc<AtomicUsize>) {
    head_answering_service(|seen| {
        if seen.get("cookie").and_then(Value::as_str) == Some("session=good") {
            ("200 OK", serde_json::json!({ "seen": seen }))
        } else {
            ("401 Unauthorized", serde_json::json!({}))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_service_is_sent_the_id_which_is_no_credential_nor_cache_key() {
    let (auth, asked) = auth_service();
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!(
            "upstreams:\n  app:\n    backends: [{{address: {backend}}}]\n\
             auth:\n\
             \x20 plain:\n    forward:\n      url: http://{auth}/check\n      pass_headers: [Cookie]\n\
             \x20     identity_from_json: {{X-Seen-Request-Id: seen.x-request-id}}\n\
             \x20 cached:\n    forward:\n      url: http://{auth}/check\n      pass_headers: [Cookie, X-Request-Id]\n\
             \x20     identity_from_json: {{X-Seen-Request-Id: seen.x-request-id}}\n      cache: 1m\n\
             routes:\n\
             \x20 - {{match: {{path_prefix: /plain/}}, upstream: app, auth: plain}}\n\
             \x20 - {{match: {{path_prefix: /cached/}}, upstream: app, auth: cached}}\n",
            backend = backend.addr
        ),
        IDS_ON,
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = client
            .get(tollgate.url(path))
            .header("X-Request-Id", "client-1");
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie.to_string());
        }
        request.send()
    };

    // The auth service got the request's ID, the one the backend and the
    // client see, not the client's.
    let passed = get("/plain/x", Some("session=good")).await.unwrap();
    assert_eq!(passed.status(), 200);
    let id = id_of(&passed);
    assert!(is_generated(&id), "{id}");
    let seen: Value = passed.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], id.as_str());
    assert_eq!(seen["headers"]["x-seen-request-id"], id.as_str(), "{seen}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // Listed in pass_headers, the ID is sent, but is no part of the cache key:
    // the second request, with the same cookie and another ID, is a cache hit.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let passed = get("/cached/x", Some("session=good")).await.unwrap();
        assert_eq!(passed.status(), 200);
        ids.push(id_of(&passed));
        let seen: Value = passed.json().await.unwrap();
        assert_eq!(
            seen["headers"]["x-request-id"],
            ids.last().unwrap().as_str()
        );
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "one ask for the two requests"
    );

    // Nor is it a credential: a request with nothing else is refused unasked.
    let refused = get("/cached/x", None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(is_generated(&id_of(&refused)));
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgates_own_answers_and_files_carry_an_id_and_log_it() {
    let backend = Backend::start("app");
    let dead = DeadAddress::new();
    let auth_down = DeadAddress::new();
    let files = temp_dir("ids-static");
    write_file(&files, "a.txt", "a file\n");
    let body = format!(
        "upstreams:
  app:
    backends: [{{address: {backend}}}]
  gone:
    backends: [{{address: {dead}}}]
    retries: 0
auth:
  down:
    forward: {{url: \"http://{auth_down}/check\"}}
rate_limits:
  once:
    key: client_ip
    rate: 1/m
    burst: 0
routes:
  - {{match: {{path_prefix: /app/}}, upstream: app}}
  - {{match: {{path_prefix: /gone/}}, upstream: gone}}
  - {{match: {{path_prefix: /limited/}}, upstream: app, rate_limit: once}}
  - {{match: {{path_prefix: /auth/}}, upstream: app, auth: down}}
  - {{match: {{path: /ok}}, respond: {{status: 200, body: ok}}}}
  - {{match: {{path: /old}}, redirect: {{to: /new, status: 301}}}}
  - {{match: {{path_prefix: /files/}}, static: {{root: {files}}}, strip_prefix: true}}
",
        files = files.display(),
        backend = backend.addr,
        dead = dead.addr,
        auth_down = auth_down.addr,
    );
    let tollgate =
        Tollgate::start_with(&body, &format!("  max_request_body: 1KiB\n{IDS_ON}")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        client
            .get(tollgate.url("/limited/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let auth = |bearer: bool| {
        let request = client.get(tollgate.url("/auth/"));
        if bearer {
            request.bearer_auth("t")
        } else {
            request
        }
    };
    let cases = [
        (client.get(tollgate.url("/nowhere")), 404),
        (client.get(tollgate.url("/gone/")), 502),
        (client.get(tollgate.url("/limited/")), 429),
        (auth(false), 401),
        (auth(true), 503),
        (client.get(tollgate.url("/ok")), 200),
        (client.get(tollgate.url("/old")), 301),
        (client.get(tollgate.url("/files/a.txt")), 200),
        (client.get(tollgate.url("/files/missing.txt")), 404),
        (client.get(tollgate.url("/app/a%2Fb")), 400),
        (
            client.post(tollgate.url("/app/")).body(vec![b'x'; 4096]),
            413,
        ),
    ];
    let mut ids = Vec::new();
    for (request, status) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), status);
        let id = id_of(&answer);
        assert!(is_generated(&id), "{status}: {id}");
        ids.push((status, id));
    }
    let log = json_log(&tollgate, ids.len() + 1).await;
    for (status, id) in &ids {
        let line = log
            .iter()
            .find(|line| line["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line with the {status}'s ID {id}:\n{log:?}"));
        assert_eq!(line["status"], *status, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_carry_their_own_requests_id() {
    let backend = Backend::start("app");
    let body = format!(
        "upstreams:\n  app:\n    backends: [{{address: {}}}]\n\
         caches:\n  pages: {{memory: 1MiB}}\n\
         routes:\n  - {{match: {{path_prefix: /}}, upstream: app, cache: pages}}\n",
        backend.addr
    );
    let tollgate = Tollgate::start_with(&body, IDS_ON).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for expected in ["MISS", "HIT"] {
        let answer = client
            .get(tollgate.url("/c?max_age=60"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.headers()["x-cache-status"], expected);
        ids.push(id_of(&answer));
    }
    assert_ne!(ids[0], ids[1], "the stored answer's ID is not served again");
    let log = json_log(&tollgate, 2).await;
    let hit = log
        .iter()
        .find(|line| line["request_id"] == ids[1].as_str());
    assert!(hit.is_some(), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_log_ends_with_the_id() {
    let backend = Backend::start("app");
    let dir = temp_dir("combined");
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  access_log: {log}\n  access_log_format: combined\n\
         \x20 pid_file: {pid}\n  upgrade_sock: {sock}\n{IDS_ON}\n{body}",
        log = dir.join("access.log").display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        body = proxy_to(&[backend.addr]),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let answer = reqwest::get(tollgate.url("/x")).await.unwrap();
    let id = id_of(&answer);
    let logged = wait_until(Duration::from_secs(5), || async {
        !tollgate.access_log().is_empty()
    })
    .await;
    assert!(logged);
    let line = tollgate.access_log();
    assert!(line.contains("\"GET /x HTTP/1.1\" 200 "), "{line}");
    assert!(line.ends_with(&format!("\" \"{id}\"\n")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirects_and_http2_answers_carry_an_id() {
    let backend = Backend::start("app");
    let dir = temp_dir("ids-tls");
    let (cert, key, pem) = tls::self_signed_files(&dir, "site", &["site.test"]);
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      redirect_https: true
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
        http2: true
  access_log: off
  pid_file: {pid}
  upgrade_sock: {sock}
{IDS_ON}
{body}",
        cert = cert.display(),
        key = key.display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
        body = proxy_to(&[backend.addr]),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let https = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(https).await;

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = plain.get(tollgate.url("/a")).send().await.unwrap();
    assert_eq!(redirect.status(), 308);
    assert!(is_generated(&id_of(&redirect)));

    let client = reqwest::Client::builder()
        .resolve("site.test", https)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://site.test:{}/a", https.port());
    let answer = client.get(url).send().await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    let id = id_of(&answer);
    assert!(is_generated(&id));
    assert_eq!(seen_by_backend(answer).await, id);
}

#[test]
fn a_bad_request_id_header_is_an_error_at_its_line() {
    let topology = |header: &str| {
        format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:18080\n  request_id:\n    header: {header}\n\
             routes:\n  - match: {{path_prefix: /}}\n    respond: {{status: 200}}\n"
        )
    };
    let valid = check_topology(&topology("X-Correlation-Id"));
    assert!(valid.ok, "{}", valid.output);
    for (header, words) in [
        ("\"X Request Id\"", "invalid header name `X Request Id`"),
        ("Content-Length", "meaning of its own"),
    ] {
        let result = check_topology(&topology(header));
        assert!(!result.ok, "{header} accepted");
        let at = format!("{}:5:", result.file);
        assert!(
            result.output.contains(&at) && result.output.contains(words),
            "{header}: expected `{at} ...{words}` in:\n{}",
            result.output
        );
    }
}
