//! The API gateway: forward auth against a real auth service (config/gateway.yaml
//! itself, with test ports), identity headers clients cannot forge, fail-closed
//! behaviour, and rate limits.

mod common;

use common::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

struct Gateway {
    tollgate: Tollgate,
    auth: Backend,
    _products: [Backend; 2],
}

/// config/gateway.yaml with its addresses moved to ports this test picked, and
/// `edit` applied to the text.
async fn gateway_with(auth_args: &[&str], edit: impl Fn(String) -> String) -> Gateway {
    let auth = Backend::start_with(
        "auth",
        "127.0.0.1:0",
        &[&["--role", "auth"], auth_args].concat(),
    );
    let products = [Backend::start("product-1"), Backend::start("product-2")];
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.yaml"))
        .expect("config/gateway.yaml")
        .replace("127.0.0.1:7000", &auth.addr.to_string())
        .replace("127.0.0.1:9001", &products[0].addr.to_string())
        .replace("127.0.0.1:9002", &products[1].addr.to_string())
        .replace("127.0.0.1:8080", &addr.to_string())
        .replace("127.0.0.1:9091", &metrics.to_string())
        .replace("access_log: stdout", "access_log: off");
    let tollgate = Tollgate::launch(temp_dir("gateway"), &edit(text), addr, metrics, &[]).await;
    Gateway {
        tollgate,
        auth,
        _products: products,
    }
}

async fn gateway() -> Gateway {
    gateway_with(&[], |t| t).await
}

async fn login(gw: &Gateway, user: &str, password: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(gw.tollgate.url("/auth/login"))
        .body(format!(r#"{{"user":"{user}","password":"{password}"}}"#))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["token"].as_str().expect("a token").to_string()
}

/// Requests sent to the product backends so far.
async fn product_requests(gw: &Gateway) -> f64 {
    gw.tollgate
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("tollgate_upstream_requests_total{")
                && l.contains("upstream=\"products\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_call_a_protected_route_as_that_user() {
    let gw = gateway().await;
    let token = login(&gw, "alice", "alice-password").await;
    let client = reqwest::Client::new();
    let response = client
        .get(gw.tollgate.url("/product/42"))
        .bearer_auth(&token)
        .header("X-User", "mallory")
        .header("X-Permissions", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ratelimit-limit"], "40");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-user"], "alice",
        "identity comes from the auth service only"
    );
    assert_eq!(
        seen["headers"]["x-permissions"],
        "products:read,products:write"
    );
    assert_eq!(seen["uri"], "/product/42");

    let bob = login(&gw, "bob", "bob-password").await;
    let seen: Value = client
        .get(gw.tollgate.url("/product/7"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-user"], "bob");
    assert_eq!(seen["headers"]["x-permissions"], "products:read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_invalid_token_is_401_and_reaches_no_backend() {
    let gw = gateway().await;
    let client = reqwest::Client::new();
    let before = product_requests(&gw).await;
    for token in [None, Some("not-a-token")] {
        let mut request = client.get(gw.tollgate.url("/product/42"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"], "invalid or missing token",
            "the auth service's body is passed on"
        );
    }
    assert_eq!(product_requests(&gw).await, before);
    assert_eq!(
        gw.tollgate
            .metric(
                "tollgate_auth_rejections_total",
                &[
                    ("route", "products"),
                    ("policy", "users"),
                    ("reason", "denied")
                ]
            )
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_never_reach_a_backend() {
    let gw = gateway().await;
    let seen: Value = reqwest::Client::new()
        .get(gw.tollgate.url("/product/public/1"))
        .header("X-User", "admin")
        .header("x-permissions", "everything")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seen["headers"].get("x-user").is_none(), "{seen}");
    assert!(seen["headers"].get("x-permissions").is_none(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_down_slow_or_wrong_means_503() {
    let mut gw = gateway().await;
    let client = reqwest::Client::new();
    let token = login(&gw, "alice", "alice-password").await;
    let call = |token: String| {
        client
            .get(gw.tollgate.url("/product/1"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(call(token.clone()).await.unwrap().status(), 200);
    gw.auth.kill();
    // gateway.yaml caches positive answers for 10s: the known token still passes...
    assert_eq!(
        call(token.clone()).await.unwrap().status(),
        200,
        "cached answer not used"
    );
    // ...but nothing else does while the auth service is down.
    let response = call("some-token".to_string()).await.unwrap();
    assert_eq!(response.status(), 503);

    let slow = gateway_with(&["--delay", "2000"], |t| {
        t.replace("      timeout: 1s\n", "      timeout: 300ms\n")
    })
    .await;
    let asked = Instant::now();
    let response = client
        .get(slow.tollgate.url("/product/1"))
        .bearer_auth("some-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "auth timeout not applied: {:?}",
        asked.elapsed()
    );

    // An answer other than 2xx/401/403 (here the auth service's 404 for an
    // endpoint it lacks) does not let the request pass either.
    let wrong = gateway_with(&[], |t| t.replace("/token-info", "/no-such-endpoint")).await;
    let response = client
        .get(wrong.tollgate.url("/product/1"))
        .bearer_auth("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        wrong
            .tollgate
            .metric(
                "tollgate_auth_rejections_total",
                &[("policy", "users"), ("reason", "unavailable")]
            )
            .await,
        Some(1.0)
    );
}

fn limited_topology(backend: &Backend) -> String {
    format!(
        "upstreams:
  app:
    backends: [{{address: {}}}]
rate_limits:
  tight:
    key: client_ip
    rate: 2/s
    burst: 5
routes:
  - name: limited
    match: {{path_prefix: /}}
    upstream: app
    rate_limit: tight
",
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_429_per_client_until_the_bucket_refills() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&limited_topology(&backend)).await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let greedy = from([127, 0, 0, 8]);
    for i in 0..5 {
        let r = greedy.get(tollgate.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} of the burst");
        assert_eq!(r.headers()["ratelimit-remaining"], (4 - i).to_string());
    }
    let refused = greedy.get(tollgate.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-limit"], "5");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(
        h["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 2
    );

    // Another client has its own bucket.
    assert_eq!(
        from([127, 0, 0, 9])
            .get(tollgate.url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Refused requests reach no backend, and are counted.
    let sent = tollgate
        .metric_reaches(
            "tollgate_upstream_requests_total",
            &[("upstream", "app"), ("code", "200")],
            6.0,
        )
        .await;
    assert!(
        sent,
        "the backend did not get exactly the 6 admitted requests"
    );
    assert_eq!(
        tollgate
            .metric(
                "tollgate_rate_limited_total",
                &[("route", "limited"), ("policy", "tight")]
            )
            .await,
        Some(1.0)
    );

    // After the refill time (one request per 500 ms) the client passes again.
    let again = wait_until(Duration::from_secs(3), || async {
        greedy
            .get(tollgate.url("/"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(again, "never passed again after the refill time");
}

/// Sends one request per key in `keys` over `connections` keep-alive connections;
/// returns how many were refused with 429.
async fn spray_keys(tollgate: &Tollgate, keys: std::ops::Range<u32>, connections: u32) -> usize {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = tollgate.url("/limited");
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut refused = 0;
            for key in keys.filter(|k| k % connections == c) {
                let status = client
                    .get(&url)
                    .header("X-Client", format!("client-{key}"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                refused += usize::from(status == 429);
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_distinct_keys_leave_memory_bounded() {
    let tollgate = Tollgate::start(
        "rate_limits:
  per_key:
    key: header:X-Client
    rate: 1/m
    burst: 1
routes:
  - match: {path: /limited}
    respond: {status: 200, body: ok}
    rate_limit: per_key
",
    )
    .await;
    let rss = || async {
        tollgate
            .metric("process_resident_memory_bytes", &[])
            .await
            .unwrap()
    };
    // Warm up: buffers, connections and allocator pools reach their working size.
    assert_eq!(spray_keys(&tollgate, 0..20_000, 8).await, 0);
    let warm = rss().await;
    let started = Instant::now();
    // Every key is new: none is refused, and the table does not grow.
    assert_eq!(spray_keys(&tollgate, 20_000..200_000, 8).await, 0);
    let after = rss().await;
    let grown = (after - warm) / 1_048_576.0;
    eprintln!(
        "180,000 new keys in {:?}: RSS {:.1} MiB -> {:.1} MiB",
        started.elapsed(),
        warm / 1_048_576.0,
        after / 1_048_576.0
    );
    assert!(
        grown < 8.0,
        "RSS grew by {grown:.1} MiB over 180,000 new keys"
    );
    // The limiter remembers recent keys: a key seen just now is refused.
    assert_eq!(spray_keys(&tollgate, 199_990..200_000, 1).await, 10);
}
