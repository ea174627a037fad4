//! Traffic management over real backends on loopback: `least_time` against a
//! backend 20x slower, outlier ejection on 5xx streaks and its return,
//! `max_ejected`, slow start after a backend recovers, retry budgets on a
//! failing upstream, and the config errors of these keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Two upstreams over the same `backends`, `/rr/` round robin and `/lt/`
/// least_time.
fn rr_and_least_time(backends: &str) -> String {
    format!(
        "upstreams:\n  rr:\n    backends:\n{backends}  lt:\n    algorithm: least_time\n    backends:\n{backends}\
         routes:\n  - name: rr\n    match: {{path_prefix: /rr/}}\n    upstream: rr\n\
         \x20 - name: lt\n    match: {{path_prefix: /lt/}}\n    upstream: lt\n"
    )
}

/// `clients` concurrent clients GET `url` `each` times; the backends that
/// answered, counted, and every latency seen, sorted.
async fn load(url: &str, clients: usize, each: usize) -> (HashMap<String, usize>, Vec<Duration>) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen = Vec::with_capacity(each);
                for _ in 0..each {
                    let started = Instant::now();
                    let (status, backend, _) = get(&client, &url).await.expect("request");
                    assert_eq!(status, 200, "from {backend}");
                    seen.push((backend, started.elapsed()));
                }
                seen
            })
        })
        .collect();
    let mut counts = HashMap::new();
    let mut latencies = Vec::new();
    for task in tasks {
        for (backend, latency) in task.await.expect("client") {
            *counts.entry(backend).or_insert(0) += 1;
            latencies.push(latency);
        }
    }
    latencies.sort();
    (counts, latencies)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_sends_a_20x_slower_backend_under_a_tenth_where_round_robin_sends_a_third() {
    let fast1 = Backend::start_with("fast1", "127.0.0.1:0", &["--delay", "5"]);
    let slow = Backend::start_with("slow", "127.0.0.1:0", &["--delay", "100"]);
    let fast2 = Backend::start_with("fast2", "127.0.0.1:0", &["--delay", "5"]);
    let tollgate =
        Tollgate::start(&rr_and_least_time(&backend_list(&[&fast1, &slow, &fast2]))).await;

    // Each client's first request opens its connections; the tail is
    // measured on the requests after it, the shares on all.
    let (mut rr, _) = load(&tollgate.url("/rr/x"), 6, 5).await;
    let (mut lt, _) = load(&tollgate.url("/lt/x"), 6, 5).await;
    let (rr_steady, rr_latencies) = load(&tollgate.url("/rr/x"), 6, 50).await;
    let (lt_steady, lt_latencies) = load(&tollgate.url("/lt/x"), 6, 50).await;
    for (name, n) in rr_steady {
        *rr.entry(name).or_insert(0) += n;
    }
    for (name, n) in lt_steady {
        *lt.entry(name).or_insert(0) += n;
    }
    let share = |counts: &HashMap<String, usize>| {
        counts.get("slow").copied().unwrap_or(0) as f64 / counts.values().sum::<usize>() as f64
    };
    assert!((0.3..0.37).contains(&share(&rr)), "round robin: {rr:?}");
    assert!(share(&lt) < 0.10, "least_time: {lt:?}");
    assert!(
        lt.contains_key("fast1") && lt.contains_key("fast2"),
        "least_time uses both fast backends: {lt:?}"
    );
    // Round robin's tail is the slow backend's 100 ms; least_time's is not.
    let (rr_p99, lt_p99) = (p99(&rr_latencies), p99(&lt_latencies));
    assert!(
        rr_p99 >= Duration::from_millis(100),
        "round robin p99 {rr_p99:?}"
    );
    assert!(
        lt_p99 * 2 < rr_p99,
        "least_time p99 {lt_p99:?} against round robin's {rr_p99:?}; {lt:?}; slowest {:?}",
        &lt_latencies[lt_latencies.len() - 8..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_recovers_wins_its_traffic_back_under_least_time() {
    // b answers slowly at first (its /slow path), then as fast as a.
    let a = Backend::start("a");
    let b = Backend::start("b");
    let body = format!(
        "upstreams:\n  lt:\n    algorithm: least_time\n    backends:\n{}routes:\n  - match: {{path_prefix: /}}\n    upstream: lt\n",
        backend_list(&[&a, &b])
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    // Both answer /slow?ms=30: each gets a sample of about 30 ms. Then /
    // answers at once: as samples come in, both estimates fall and both keep
    // getting traffic (neither is starved by an old estimate).
    for _ in 0..4 {
        get(&client, &tollgate.url("/slow?ms=30")).await.unwrap();
    }
    let (counts, _) = load(&tollgate.url("/x"), 4, 100).await;
    assert!(
        counts.get("a").copied().unwrap_or(0) > 40 && counts.get("b").copied().unwrap_or(0) > 40,
        "{counts:?}"
    );
}

/// An upstream `app` over `origins` with `outlier` settings, route `/`.
fn outlier_body(origins: &[&Origin], outlier: &str) -> String {
    let list: String = origins
        .iter()
        .map(|o| format!("      - address: {}\n", o.addr))
        .collect();
    format!(
        "upstreams:\n  app:\n    passive: {{max_fails: 0}}\n    outlier: {outlier}\n    backends:\n{list}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
    )
}

fn hits(origin: &Origin) -> usize {
    origin.seen().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_within_consecutive_5xx_and_returns_after_ejection() {
    let good = Origin::start().await;
    let bad = Origin::start().await;
    let tollgate = Tollgate::start(&outlier_body(
        &[&good, &bad],
        "{consecutive_5xx: 3, ejection: 2s, max_ejected: 50%}",
    ))
    .await;
    let client = reqwest::Client::new();
    for _ in 0..10 {
        client.get(tollgate.url("/warm")).send().await.unwrap();
    }
    bad.fail(true);
    let before = hits(&bad);
    // Round robin: every other request goes to `bad` until it is ejected.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(
            client
                .get(tollgate.url("/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    let ejected_at = Instant::now();
    assert_eq!(
        hits(&bad) - before,
        3,
        "requests that reached the failing backend"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    let bad_label = bad.addr.to_string();
    let labels = [("upstream", "app"), ("backend", bad_label.as_str())];
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_ejected", &labels)
            .await,
        Some(1.0)
    );
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_outlier_ejections_total", &labels)
            .await,
        Some(1.0)
    );
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &labels)
            .await,
        Some(0.0)
    );

    // It is fixed; it gets traffic again once its 2 s are over, not before.
    bad.fail(false);
    let back = wait_until(Duration::from_secs(10), || async {
        client.get(tollgate.url("/y")).send().await.unwrap();
        hits(&bad) > before + 3
    })
    .await;
    assert!(back, "the backend never returned");
    let out_for = ejected_at.elapsed();
    assert!(
        out_for >= Duration::from_millis(1900),
        "back after {out_for:?}"
    );
    assert!(out_for < Duration::from_secs(5), "back after {out_for:?}");
    assert!(
        tollgate
            .metric_reaches("tollgate_upstream_backend_ejected", &labels, 0.0)
            .await
    );
    assert!(
        tollgate.stderr().contains("ejected for 2s"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_ejection_lasts_twice_as_long() {
    let good = Origin::start().await;
    let bad = Origin::start().await;
    let tollgate = Tollgate::start(&outlier_body(
        &[&good, &bad],
        "{consecutive_5xx: 2, ejection: 1s}",
    ))
    .await;
    let client = reqwest::Client::new();
    bad.fail(true);
    let bad_label = bad.addr.to_string();
    let labels = [("upstream", "app"), ("backend", bad_label.as_str())];
    for round in 1..=2 {
        let ejected = wait_until(Duration::from_secs(10), || async {
            client.get(tollgate.url("/x")).send().await.unwrap();
            tollgate
                .metric("tollgate_upstream_outlier_ejections_total", &labels)
                .await
                == Some(f64::from(round))
        })
        .await;
        assert!(ejected, "ejection {round}");
    }
    let stderr = tollgate.stderr();
    assert!(stderr.contains("ejected for 1s"), "{stderr}");
    assert!(stderr.contains("ejected for 2s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_keeps_part_of_the_upstream_in() {
    let origins = [
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    ];
    let refs: Vec<&Origin> = origins.iter().collect();
    let tollgate = Tollgate::start(&outlier_body(
        &refs,
        "{consecutive_5xx: 2, ejection: 30s, max_ejected: 34%}",
    ))
    .await;
    // Two of three fail: only one may be out (34% of 3 rounds down to 1).
    origins[0].fail(true);
    origins[1].fail(true);
    let client = reqwest::Client::new();
    for _ in 0..60 {
        client.get(tollgate.url("/x")).send().await.unwrap();
    }
    let mut ejected = 0.0;
    for origin in &origins {
        let label = origin.addr.to_string();
        let labels = [("upstream", "app"), ("backend", label.as_str())];
        ejected += tollgate
            .metric("tollgate_upstream_backend_ejected", &labels)
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(ejected, 1.0);
    assert!(
        tollgate.stderr().contains("max_ejected"),
        "{}",
        tollgate.stderr()
    );
}

/// GETs `/x` until `until`, then `after` more; b's share of each part.
async fn shares_of_b_early_and_late(tollgate: &Tollgate, ramp_began: Instant) -> (f64, f64, usize) {
    let client = reqwest::Client::new();
    let share_of_b = |seen: &[String]| {
        seen.iter().filter(|s| *s == "b").count() as f64 / seen.len().max(1) as f64
    };
    // The first second of a 6 s ramp: b's weight counts 0.1 to 0.17 of a's.
    let mut early = Vec::new();
    while ramp_began.elapsed() < Duration::from_secs(1) {
        early.push(get(&client, &tollgate.url("/x")).await.unwrap().1);
    }
    tokio::time::sleep_until((ramp_began + Duration::from_millis(6500)).into()).await;
    let mut late = Vec::new();
    for _ in 0..200 {
        late.push(get(&client, &tollgate.url("/x")).await.unwrap().1);
    }
    (share_of_b(&early), share_of_b(&late), early.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_backend_ramps_up_over_slow_start() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    // Two failed probes take a backend out, so that a probe of `a` slowed
    // by a busy machine does not.
    let body = format!(
        "upstreams:\n  app:\n    slow_start: 6s\n    health_check: {{http: {{path: /health}}, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 2}}\n    backends:\n{}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend_list(&[&a, &b])
    );
    let tollgate = Tollgate::start(&body).await;
    let b_label = b.addr.to_string();
    let labels = [("upstream", "app"), ("backend", b_label.as_str())];
    b.kill();
    assert!(
        tollgate
            .metric_reaches("tollgate_upstream_backend_healthy", &labels, 0.0)
            .await
    );
    b.restart();
    assert!(
        tollgate
            .metric_reaches("tollgate_upstream_backend_healthy", &labels, 1.0)
            .await
    );
    let (early, late, early_requests) = shares_of_b_early_and_late(&tollgate, Instant::now()).await;
    assert!(
        early_requests >= 50,
        "only {early_requests} requests in the first second"
    );
    assert!(early > 0.0 && early < 0.25, "first second: {early}");
    assert!((0.45..=0.55).contains(&late), "after the window: {late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_added_by_a_reload_ramps_up_over_slow_start() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let body = |backends: &[&Backend]| {
        format!(
            "upstreams:\n  app:\n    algorithm: least_connections\n    slow_start: 6s\n    backends:\n{}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
            backend_list(backends)
        )
    };
    let tollgate = Tollgate::start(&body(&[&a])).await;
    let config = tollgate.config_text();
    tollgate.rewrite_config(&config.replace(&body(&[&a]), &body(&[&a, &b])));
    tollgate.signal(libc::SIGHUP);
    let client = reqwest::Client::new();
    let reloaded = wait_until(Duration::from_secs(10), || async {
        get(&client, &tollgate.url("/x")).await.unwrap().1 == "b"
    })
    .await;
    assert!(reloaded, "b never answered");
    let (early, late, _) = shares_of_b_early_and_late(&tollgate, Instant::now()).await;
    assert!(early < 0.25, "first second: {early}");
    assert!((0.4..=0.6).contains(&late), "after the window: {late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_limits_retries_on_a_failing_upstream() {
    let live = Backend::start("live");
    let dead = [DeadAddress::new(), DeadAddress::new(), DeadAddress::new()];
    let list: String = dead
        .iter()
        .map(|d| format!("      - address: {}\n", d.addr))
        .chain([format!("      - address: {}\n", live.addr)])
        .collect();
    let upstream = |name: &str, extra: &str| {
        format!("  {name}:\n    retries: 3\n    passive: {{max_fails: 0}}\n{extra}    backends:\n{list}")
    };
    let body = format!(
        "upstreams:\n{}{}routes:\n  - name: budget\n    match: {{path_prefix: /budget/}}\n    upstream: budget\n  - name: free\n    match: {{path_prefix: /free/}}\n    upstream: free\n",
        upstream("budget", "    retry_budget: {ratio: 10%, min_per_second: 1}\n"),
        upstream("free", ""),
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    let mut failed = HashMap::new();
    for route in ["budget", "free"] {
        for _ in 0..100 {
            let status = client
                .get(tollgate.url(&format!("/{route}/x")))
                .send()
                .await
                .unwrap()
                .status();
            if status != 200 {
                *failed.entry(route).or_insert(0) += 1;
            }
        }
    }
    let metrics = tollgate.metrics().await;
    let retries = |upstream: &str| {
        metric_value(
            &metrics,
            "tollgate_upstream_retries_total",
            &[("upstream", upstream)],
        )
        .unwrap_or(0.0)
    };
    let (budget, free) = (retries("budget"), retries("free"));
    // Without a budget, round robin over 3 dead and 1 live with 3 retries
    // (each retry takes the next slot, so each request starts on a dead one
    // and tries all three): 300 retries, and every request answered.
    assert_eq!(free, 300.0);
    assert_eq!(failed.get("free"), None);
    // With one: 10% of 100 requests plus 1/s over 10 s.
    assert!(budget <= 20.0, "{budget} retries");
    assert!(budget >= 10.0, "{budget} retries");
    let refused = tollgate
        .metric(
            "tollgate_upstream_retry_budget_exhausted_total",
            &[("upstream", "budget")],
        )
        .await
        .unwrap_or(0.0);
    assert!(refused > 0.0);
    assert!(failed.get("budget").copied().unwrap_or(0) > 0, "{failed:?}");
}

#[test]
fn traffic_settings_are_checked_at_their_line() {
    let cases = [
        (
            "    outlier: {max_ejected: 150%}\n",
            "upstreams.app.outlier",
            "percentage",
        ),
        (
            "    retry_budget: {ratio: 120%}\n",
            "upstreams.app.retry_budget",
            "percentage",
        ),
        (
            "    algorithm: ip_hash\n    slow_start: 30s\n",
            "upstreams.app.slow_start",
            "ip_hash",
        ),
        (
            "    slow_start: 0s\n",
            "upstreams.app.slow_start",
            "more than 0",
        ),
        (
            "    outlier: {consecutive_5xx: 0}\n",
            "upstreams.app.outlier.consecutive_5xx",
            "at least 1",
        ),
        (
            "    algorithm: least_tme\n",
            "upstreams.app.algorithm",
            "least_time",
        ),
    ];
    for (extra, key, message) in cases {
        let text = format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n{extra}    backends: [{{address: 127.0.0.1:9}}]\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
        );
        let check = check_topology(&text);
        assert!(!check.ok, "{extra} passed");
        assert!(
            check.output.contains(":6:") || check.output.contains(":7:"),
            "{extra}: no line in {}",
            check.output
        );
        assert!(check.output.contains(key), "{extra}: {}", check.output);
        assert!(check.output.contains(message), "{extra}: {}", check.output);
    }
    let good = "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    algorithm: least_time\n    slow_start: 30s\n    outlier: {consecutive_5xx: 5, ejection: 30s, max_ejected: 50%}\n    retry_budget: {ratio: 20%, min_per_second: 10}\n    backends: [{address: 127.0.0.1:9}]\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n";
    let check = check_topology(good);
    assert!(check.ok, "{}", check.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_topology_routes_around_its_slow_backend() {
    // config/tollgate.yaml as `make run` starts it, on ports of the test's.
    let app1 = Backend::start("app-1");
    let app2 = Backend::start("app-2");
    let app3 = Backend::start("app-3");
    let slow = Backend::start_with("app-slow", "127.0.0.1:0", &["--delay", "40"]);
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.yaml"))
            .expect("config/tollgate.yaml");
    let mut config = demo
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9091", "127.0.0.1:0")
        .replace("127.0.0.1:9092", "127.0.0.1:0")
        .replace("access_log: stdout", "access_log: off");
    for (port, backend) in [(9001, &app1), (9002, &app2), (9003, &app3), (9004, &slow)] {
        config = config.replace(&format!("127.0.0.1:{port}"), &backend.addr.to_string());
    }
    let tollgate = Tollgate::launch_reported(temp_dir("demo"), &config, &[]).await;
    let (counts, _) = load(&tollgate.url("/fast/x"), 4, 50).await;
    let slow_share = counts.get("app-slow").copied().unwrap_or(0) as f64 / 200.0;
    assert!(slow_share < 0.1, "{counts:?}");
}
