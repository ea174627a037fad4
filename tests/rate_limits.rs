//! Rate limits: a bucket per key as nginx `limit_req ... nodelay`, refused
//! requests reaching no backend, and memory bounded whatever the number of keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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
async fn a_limit_may_answer_503_as_nginx_does() {
    let backend = Backend::start("app");
    let topology =
        limited_topology(&backend).replace("    burst: 5\n", "    burst: 0\n    status: 503\n");
    let tollgate = Tollgate::start(&topology).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(tollgate.url("/")).send().await.unwrap().status(),
        200
    );
    let refused = client.get(tollgate.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.text().await.unwrap().contains("too many requests"));
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
    // burst: 5 admits 6 at once, as nginx `burst=5 nodelay` does.
    for i in 0..6 {
        let r = greedy.get(tollgate.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} of the burst");
        assert_eq!(r.headers()["ratelimit-remaining"], (5 - i).to_string());
    }
    let refused = greedy.get(tollgate.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let h = refused.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-limit"], "6");
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
            7.0,
        )
        .await;
    assert!(
        sent,
        "the backend did not get exactly the 7 admitted requests"
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
    burst: 0
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
