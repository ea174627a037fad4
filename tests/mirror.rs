//! A route's `mirror`: copies of its requests (method, target, headers as the
//! backend gets them, bodies buffered or streamed) reach a live shadow while
//! the client's answer comes from the primary; `percent` copies about that
//! share; a dead shadow and a slow one under load fail and delay no client
//! request, the slow one filling the in-flight bound so that further copies
//! are dropped and counted; a copy cut off by its timeout gives its place
//! back; bodies over `max_body` are not copied; bad mirrors are refused at
//! their line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MIRROR_TOTAL: &str = "tollgate_mirror_requests_total";

/// Upstreams `app` and `shadow`; route `web` on `/` to `app` and route
/// `streamed` on `/stream/` to `app` without request buffering, both
/// mirrored with `mirror` (a YAML flow mapping); route `plain` on `/plain/`
/// to `app`, not mirrored.
fn mirrored(app: SocketAddr, shadow: SocketAddr, mirror: &str) -> String {
    TopologyBody::new()
        .upstream("app", &[app], "")
        .upstream("shadow", &[shadow], "")
        .raw_route(&format!(
            "  - name: web\n    match: {{path_prefix: /}}\n    upstream: app\n    mirror: {mirror}\n"
        ))
        .raw_route(&format!(
            "  - name: streamed\n    match: {{path_prefix: /stream/}}\n    upstream: app\n    request_buffering: false\n    mirror: {mirror}\n"
        ))
        .raw_route("  - name: plain\n    match: {path_prefix: /plain/}\n    upstream: app\n")
        .yaml()
}

/// The copies of route `route` counted with `result` (0 before the first).
async fn copies(tollgate: &Tollgate, route: &str, result: &str) -> u64 {
    let labels = [("route", route), ("result", result)];
    tollgate.metric(MIRROR_TOTAL, &labels).await.unwrap_or(0.0) as u64
}

/// Waits until no copy is in flight to the shadow (its backend's in-flight
/// gauge, which a copy holds from the moment it is handed to its task).
async fn shadow_settled(tollgate: &Tollgate) {
    let settled = wait_until(Duration::from_secs(10), || async {
        tollgate
            .metric("tollgate_upstream_in_flight", &[("upstream", "shadow")])
            .await
            == Some(0.0)
    })
    .await;
    assert!(settled, "copies still in flight to the shadow");
}

/// What one client request got.
#[derive(Debug)]
struct Answered {
    status: u16,
    /// The `X-Origin` of the answer: which origin answered.
    origin: String,
    latency: Duration,
}

/// Sends `n` requests, POSTs with `body` (GETs when `None`) to `url_of(i)`,
/// over `workers` keep-alive clients at once.
async fn send_all(
    n: usize,
    workers: usize,
    body: Option<Vec<u8>>,
    url_of: impl Fn(usize) -> String,
) -> Vec<Answered> {
    let urls: Vec<String> = (0..n).map(url_of).collect();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let mine: Vec<String> = urls.iter().skip(w).step_by(workers).cloned().collect();
            let body = body.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answered = Vec::with_capacity(mine.len());
                for url in mine {
                    let started = Instant::now();
                    let request = match &body {
                        Some(body) => client.post(&url).body(body.clone()),
                        None => client.get(&url),
                    };
                    let (status, origin) = match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let origin = response
                                .headers()
                                .get("x-origin")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            match response.bytes().await {
                                Ok(_) => (status, origin),
                                Err(_) => (0, origin),
                            }
                        }
                        Err(_) => (0, String::new()),
                    };
                    answered.push(Answered {
                        status,
                        origin,
                        latency: started.elapsed(),
                    });
                }
                answered
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Asserts that every request was answered 200 by the primary.
fn assert_all_from_app(answered: &[Answered]) {
    let failed: Vec<&Answered> = answered
        .iter()
        .filter(|a| a.status != 200 || a.origin != "app")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests not answered by the primary: {:?}",
        failed.len(),
        answered.len(),
        &failed[..failed.len().min(3)]
    );
}

/// The median and the largest latency.
fn latencies(answered: &[Answered]) -> (Duration, Duration) {
    let mut sorted: Vec<Duration> = answered.iter().map(|a| a.latency).collect();
    sorted.sort();
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

/// A POST of `body` in chunks of `chunk` bytes (no Content-Length) to
/// `target` on a connection of its own, which it closes; the answer's text.
fn chunked_post(
    addr: SocketAddr,
    target: &str,
    headers: &str,
    body: &[u8],
    chunk: usize,
) -> String {
    let mut request = format!(
        "POST {target} HTTP/1.1\r\nHost: mirror.test\r\n{headers}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    raw_exchange(addr, &request, Duration::from_secs(10)).0
}

fn header<'a>(seen: &'a common::origin::Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_reach_a_live_shadow_with_the_backends_head_and_body() {
    let (app, shadow) = (
        Origin::start_named("app").await,
        Origin::start_named("shadow").await,
    );
    let topology = mirrored(app.addr, shadow.addr, "{upstream: shadow}");
    let tollgate = Tollgate::start_with(&topology, "  request_id: {}").await;
    let client = reqwest::Client::new();

    let got = client
        .get(tollgate.url("/search?q=mirror&page=2"))
        .header("X-Custom", "one")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["x-origin"], "app");
    let id = got.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(got.text().await.unwrap(), "/search?q=mirror&page=2 #1");

    // Buffered (the default): the body is read whole, then copied.
    let posted = client
        .post(tollgate.url("/orders?id=7"))
        .header("Content-Type", "text/plain")
        .body("a small order")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.headers()["x-origin"], "app");

    // Streamed: teed as it passes to the primary; connection headers stay behind.
    let streamed: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let answer = chunked_post(
        tollgate.addr,
        "/stream/upload?part=1",
        "Connection: close, X-Hop\r\nX-Hop: secret\r\nX-Custom: streamed\r\n",
        &streamed,
        7_000,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-origin: app"),
        "{answer}"
    );

    assert!(
        wait_until(Duration::from_secs(10), || async {
            shadow.seen().len() == 3
        })
        .await,
        "the shadow got {} copies",
        shadow.seen().len()
    );
    let search = shadow.last("/search?q=mirror&page=2");
    assert_eq!(search.method, "GET");
    assert_eq!(header(&search, "x-custom"), "one");
    assert_eq!(header(&search, "host"), tollgate.addr.to_string());
    assert_eq!(header(&search, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(header(&search, "x-real-ip"), "127.0.0.1");
    assert_eq!(header(&search, "x-forwarded-proto"), "http");
    // The same request ID as the client's answer and the primary's request.
    assert_eq!(header(&search, "x-request-id"), id);
    assert_eq!(
        header(&app.last("/search?q=mirror&page=2"), "x-request-id"),
        id
    );
    assert!(search.body.is_empty());

    let order = shadow.last("/orders?id=7");
    assert_eq!(order.method, "POST");
    assert_eq!(&order.body[..], b"a small order");
    assert_eq!(header(&order, "content-length"), "13");
    assert_eq!(header(&order, "content-type"), "text/plain");

    let upload = shadow.last("/stream/upload?part=1");
    assert_eq!(upload.method, "POST");
    assert_eq!(upload.body.len(), streamed.len());
    assert!(upload.body[..] == streamed[..], "the streamed body differs");
    assert_eq!(header(&upload, "content-length"), "60000");
    assert_eq!(header(&upload, "host"), "mirror.test");
    assert_eq!(header(&upload, "x-custom"), "streamed");
    assert!(!upload.headers.contains_key("x-hop"));
    assert!(!upload.headers.contains_key("transfer-encoding"));
    assert!(app.last("/stream/upload?part=1").body[..] == streamed[..]);

    shadow_settled(&tollgate).await;
    assert_eq!(copies(&tollgate, "web", "sent").await, 2);
    assert_eq!(copies(&tollgate, "streamed", "sent").await, 1);
    for route in ["web", "streamed"] {
        assert_eq!(copies(&tollgate, route, "failed").await, 0);
        assert_eq!(copies(&tollgate, route, "dropped").await, 0);
    }
    // The shadow's answers count as its backend's traffic.
    let labels = [("upstream", "shadow"), ("code", "200")];
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_requests_total", &labels)
            .await,
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_reach_an_http2_shadow() {
    let app = Origin::start_named("app").await;
    let shadow = Origin::start_h2c_named("shadow").await;
    let topology = TopologyBody::new()
        .upstream("app", &[app.addr], "")
        .upstream("shadow", &[shadow.addr], "    protocol: h2c\n")
        .raw_route("  - name: web\n    match: {path_prefix: /}\n    upstream: app\n    mirror: {upstream: shadow}\n")
        .yaml();
    let tollgate = Tollgate::start(&topology).await;
    let client = reqwest::Client::new();
    let got = client
        .get(tollgate.url("/h2/get?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["x-origin"], "app");
    let posted = client
        .post(tollgate.url("/h2/post"))
        .body("over http/2")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.headers()["x-origin"], "app");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            shadow.seen().len() == 2
        })
        .await,
        "the shadow got {:?}",
        shadow.seen()
    );
    assert!(shadow.last("/h2/get?x=1").body.is_empty());
    let post = shadow.last("/h2/post");
    assert_eq!(
        (post.method.as_str(), &post.body[..]),
        ("POST", &b"over http/2"[..])
    );
    assert_eq!(header(&post, "x-forwarded-for"), "127.0.0.1");
    shadow_settled(&tollgate).await;
    assert_eq!(copies(&tollgate, "web", "sent").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn percent_copies_about_that_share_of_1000_requests() {
    let (app, shadow) = (
        Origin::start_named("app").await,
        Origin::start_named("shadow").await,
    );
    let topology = mirrored(app.addr, shadow.addr, "{upstream: shadow, percent: 20%}");
    let tollgate = Tollgate::start(&topology).await;
    let answered = send_all(1000, 8, None, |i| tollgate.url(&format!("/item/{i}"))).await;
    assert_all_from_app(&answered);
    shadow_settled(&tollgate).await;
    let copied = shadow.seen().len();
    eprintln!("copied {copied} of 1000 requests at 20%");
    // Binomial(1000, 0.2): 200 expected, standard deviation 12.6; this is
    // more than six of them either side.
    assert!(
        (120..=280).contains(&copied),
        "{copied} copies of 1000 at 20%"
    );
    assert_eq!(copies(&tollgate, "web", "sent").await, copied as u64);
    assert_eq!(copies(&tollgate, "web", "failed").await, 0);
    assert_eq!(copies(&tollgate, "web", "dropped").await, 0);
    // Every copy is of a request the primary got.
    assert!(shadow
        .seen()
        .iter()
        .all(|s| app.hits(&s.target) == 1 && s.method == "GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_shadow_fails_no_client_request_under_load() {
    let app = Origin::start_named("app").await;
    let dead = DeadAddress::new();
    let topology = mirrored(app.addr, dead.addr, "{upstream: shadow}");
    let tollgate = Tollgate::start(&topology).await;
    let body = vec![b'x'; 2048];
    let started = Instant::now();
    let answered = send_all(300, 10, Some(body), |i| {
        // Half buffered, half streamed.
        let prefix = if i % 2 == 0 { "" } else { "/stream" };
        tollgate.url(&format!("{prefix}/upload/{i}"))
    })
    .await;
    let elapsed = started.elapsed();
    assert_all_from_app(&answered);
    assert!(app.seen().iter().all(|s| s.body.len() == 2048));
    let (median, max) = latencies(&answered);
    eprintln!("300 requests, dead shadow: {elapsed:?} in all, median {median:?}, max {max:?}");
    shadow_settled(&tollgate).await;
    let (mut failed, mut dropped) = (0, 0);
    for route in ["web", "streamed"] {
        assert_eq!(copies(&tollgate, route, "sent").await, 0);
        failed += copies(&tollgate, route, "failed").await;
        dropped += copies(&tollgate, route, "dropped").await;
    }
    eprintln!("copies to the dead shadow: {failed} failed, {dropped} dropped");
    assert_eq!(
        failed + dropped,
        300,
        "every copy is counted, as failed or dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_shadow_delays_no_client_request_and_fills_the_bound() {
    let app = Origin::start_named("app").await;
    // Answers after 30 s: long after this test is over.
    let shadow = Backend::start_with("shadow", "127.0.0.1:0", &["--delay", "30000"]);
    let mirror = "{upstream: shadow, max_in_flight: 8, timeout: 60s}";
    let tollgate = Tollgate::start_with(
        &mirrored(app.addr, shadow.addr, mirror),
        "  admin: 127.0.0.1:0\n",
    )
    .await;
    let body = vec![b'y'; 1024];

    let started = Instant::now();
    let plain = send_all(200, 8, Some(body.clone()), |i| {
        tollgate.url(&format!("/plain/{i}"))
    })
    .await;
    let plain_elapsed = started.elapsed();
    assert_all_from_app(&plain);

    let started = Instant::now();
    let answered = send_all(200, 8, Some(body), |i| tollgate.url(&format!("/order/{i}"))).await;
    let elapsed = started.elapsed();
    assert_all_from_app(&answered);
    let (plain_median, plain_max) = latencies(&plain);
    let (median, max) = latencies(&answered);
    eprintln!(
        "200 POSTs without a mirror: {plain_elapsed:?} (median {plain_median:?}, max {plain_max:?}); \
         with a shadow that answers after 30 s: {elapsed:?} (median {median:?}, max {max:?})"
    );
    // A client that waited for its copy would wait 30 s.
    assert!(max < Duration::from_secs(5), "a request took {max:?}");

    // Eight copies hold the eight places, waiting on the shadow; every
    // later one was dropped, none queued.
    assert_eq!(copies(&tollgate, "web", "dropped").await, 192);
    assert_eq!(copies(&tollgate, "web", "sent").await, 0);
    assert_eq!(copies(&tollgate, "web", "failed").await, 0);
    let in_flight = [("upstream", "shadow")];
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_in_flight", &in_flight)
            .await,
        Some(8.0)
    );

    // The admin API shows the mirror of each route, its places and counts.
    let admin = tollgate.reported("server.admin");
    let routes: serde_json::Value = reqwest::get(format!("http://{admin}/api/routes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let web = &routes[0];
    assert_eq!(web["name"], "web");
    let expected = serde_json::json!({
        "upstream": "shadow", "percent": 100.0, "in_flight": 8, "max_in_flight": 8,
        "sent": 0, "failed": 0, "dropped": 192,
    });
    assert_eq!(web["mirror"], expected, "{routes}");
    let plain = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "plain");
    assert_eq!(plain.unwrap()["mirror"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_cut_off_by_its_timeout_fails_and_gives_its_place_back() {
    let app = Origin::start_named("app").await;
    let shadow = Backend::start_with("shadow", "127.0.0.1:0", &["--delay", "5000"]);
    let mirror = "{upstream: shadow, max_in_flight: 2, timeout: 300ms}";
    let tollgate = Tollgate::start(&mirrored(app.addr, shadow.addr, mirror)).await;
    for round in 1..=3u64 {
        let answered = send_all(2, 2, None, |i| tollgate.url(&format!("/r{round}/{i}"))).await;
        assert_all_from_app(&answered);
        assert!(
            tollgate
                .metric_reaches(
                    MIRROR_TOTAL,
                    &[("route", "web"), ("result", "failed")],
                    (2 * round) as f64
                )
                .await,
            "round {round}: {} failed",
            copies(&tollgate, "web", "failed").await
        );
        shadow_settled(&tollgate).await;
    }
    assert_eq!(copies(&tollgate, "web", "dropped").await, 0);
    assert_eq!(copies(&tollgate, "web", "sent").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_over_max_body_is_not_copied_and_counts_dropped() {
    let (app, shadow) = (
        Origin::start_named("app").await,
        Origin::start_named("shadow").await,
    );
    let mirror = "{upstream: shadow, max_body: 1KiB}";
    let tollgate = Tollgate::start(&mirrored(app.addr, shadow.addr, mirror)).await;
    let client = reqwest::Client::new();
    for (target, size) in [("/fits", 1024), ("/declared-too-long", 1025)] {
        let answer = client
            .post(tollgate.url(target))
            .body(vec![b'z'; size])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-origin"], "app");
    }
    // Without a Content-Length: found too long as the body is read, buffered
    // or streamed.
    let long = vec![b'w'; 2000];
    for target in ["/chunked-too-long", "/stream/chunked-too-long"] {
        let answer = chunked_post(tollgate.addr, target, "Connection: close\r\n", &long, 500);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(app.last(target).body.len(), 2000, "the primary gets it all");
    }
    assert!(
        tollgate
            .metric_reaches(
                MIRROR_TOTAL,
                &[("route", "web"), ("result", "dropped")],
                2.0
            )
            .await
    );
    assert!(
        tollgate
            .metric_reaches(
                MIRROR_TOTAL,
                &[("route", "streamed"), ("result", "dropped")],
                1.0
            )
            .await
    );
    shadow_settled(&tollgate).await;
    assert_eq!(copies(&tollgate, "web", "sent").await, 1);
    let seen = shadow.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/fits");
    assert_eq!(seen[0].body.len(), 1024);
    assert_eq!(app.last("/declared-too-long").body.len(), 1025);
}

/// A topology whose route (proxying to `app`, line 9) has `mirror:` on
/// line 10 with `lines` under it.
fn with_mirror(lines: &str) -> String {
    format!(
        "server:
  listeners:
    - address: 127.0.0.1:18080
upstreams:
  app:
    backends: [{{address: 127.0.0.1:9}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
    mirror:
{lines}"
    )
}

#[test]
fn bad_mirrors_are_refused_at_their_line() {
    let valid = with_mirror("      upstream: app\n      percent: 0.5%\n      max_body: 1MiB\n");
    let checked = check_topology(&valid);
    assert!(checked.ok, "{}", checked.output);
    assert_refused_at(
        &with_mirror("      upstream: shadow\n"),
        11,
        &["unknown upstream `shadow`", "defined: app"],
    );
    assert_refused_at(
        &with_mirror("      upstream: app\n      max_in_flight: 0\n"),
        12,
        &["out of range", "1 to 100000"],
    );
    // A value its type refuses is reported at its mapping, as for every
    // percentage of the file.
    assert_refused_at(
        &with_mirror("      upstream: app\n      percent: 120%\n"),
        11,
        &["routes[0].mirror", "not a percentage from 0% to 100%"],
    );
    assert_refused_at(
        &with_mirror("      upstream: app\n      timeout: 0s\n"),
        12,
        &["above zero"],
    );
    assert_refused_at(
        &with_mirror("      upstream: app\n      share: 10\n"),
        12,
        &["unknown field `share`"],
    );
    let respond = "server:
  listeners:
    - address: 127.0.0.1:18080
upstreams:
  app:
    backends: [{address: 127.0.0.1:9}]
routes:
  - match: {path_prefix: /}
    respond: {status: 200}
    mirror: {upstream: app}
";
    assert_refused_at(respond, 10, &["only a route with an `upstream` or `split`"]);
}
