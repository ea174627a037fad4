//! Health: active checks take a dead backend out within interval x threshold and
//! bring it back after healthy_threshold successes; retries hide a backend's death
//! from clients; passive failures take a backend out, but never the last one up,
//! and a passing check brings it back; with every backend out, all are tried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};

const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 2;
const HEALTHY_THRESHOLD: u64 = 2;

fn checked_upstream(backends: &[&Backend], passive: &str, retries: u32) -> String {
    format!(
        "upstreams:
  app:
    backends:
{list}    health_check:
      http: {{path: /health, expect_status: [200]}}
      interval: {INTERVAL_MS}ms
      timeout: 150ms
      healthy_threshold: {HEALTHY_THRESHOLD}
      unhealthy_threshold: {UNHEALTHY_THRESHOLD}
    passive: {passive}
    retries: {retries}
routes:
  - match: {{path_prefix: /}}
    upstream: app
",
        list = backend_list(backends)
    )
}

async fn healthy(tollgate: &Tollgate, backend: &Backend) -> Option<f64> {
    tollgate
        .metric(
            "tollgate_upstream_backend_healthy",
            &[("upstream", "app"), ("backend", &backend.addr.to_string())],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_dead_backend_out_and_bring_it_back() {
    let mut backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    // Passive checks off: only the active checker may move health here.
    let tollgate = Tollgate::start(&checked_upstream(&refs, "{max_fails: 0}", 0)).await;
    let client = reqwest::Client::new();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            healthy(&tollgate, &backends[1]).await == Some(1.0)
        })
        .await
    );

    backends[1].kill();
    let killed_at = Instant::now();
    // Out within interval x unhealthy_threshold, plus one interval for the probe
    // that was in progress and scheduling slack.
    let limit = Duration::from_millis(INTERVAL_MS * (UNHEALTHY_THRESHOLD + 1) + 500);
    let out = wait_until(limit, || async {
        healthy(&tollgate, &backends[1]).await == Some(0.0)
    })
    .await;
    assert!(
        out,
        "backend b still in rotation {:?} after the kill",
        killed_at.elapsed()
    );
    let failures = tollgate
        .metric(
            "tollgate_health_checks_total",
            &[
                ("backend", &backends[1].addr.to_string()),
                ("result", "failure"),
            ],
        )
        .await
        .unwrap_or(0.0);
    assert!(
        failures >= UNHEALTHY_THRESHOLD as f64,
        "{failures} failed probes"
    );

    // Out of rotation: with no retries at all, no request fails or reaches b.
    for _ in 0..30 {
        let (status, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        assert_eq!(status, 200);
        assert_ne!(backend, "b");
    }

    backends[1].restart();
    let back = wait_until(
        Duration::from_millis(INTERVAL_MS * (HEALTHY_THRESHOLD + 1) + 1000),
        || async { healthy(&tollgate, &backends[1]).await == Some(1.0) },
    )
    .await;
    assert!(back, "backend b did not come back");
    let mut reached_b = false;
    for _ in 0..6 {
        let (_, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        reached_b |= backend == "b";
    }
    assert!(reached_b, "b healthy again but gets no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_gets_sees_no_error_while_a_backend_is_killed() {
    let mut backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start(&checked_upstream(
        &refs,
        "{max_fails: 1, fail_timeout: 5s}",
        2,
    ))
    .await;
    let load = SteadyLoad::start(tollgate.url("/"), 4);
    assert!(load.wait_answered(50).await, "traffic before the kill");
    backends[0].kill();
    let killed = wait_until(Duration::from_secs(5), || async {
        healthy(&tollgate, &backends[0]).await == Some(0.0)
    })
    .await;
    assert!(load.wait_answered(50).await, "traffic after the kill");
    let report = load.stop().await;
    assert!(killed, "killed backend never marked down");
    report.assert_no_failure(101);
    // Traffic did meet the dead backend, and retries carried it elsewhere.
    let retries = tollgate
        .metric("tollgate_upstream_retries_total", &[("upstream", "app")])
        .await
        .unwrap_or(0.0);
    assert!(
        retries >= 1.0,
        "no request was retried: the kill was never seen by traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_refused_connection_and_passive_checks_take_the_backend_out() {
    let live = Backend::start("live");
    let dead_address = DeadAddress::new();
    let dead_port = dead_address.addr.port();
    let body = format!(
        "upstreams:
  app:
    backends:
      - address: 127.0.0.1:{dead_port}
      - address: {live}
    passive: {{max_fails: 1, fail_timeout: 30s}}
    retries: 1
routes:
  - match: {{path_prefix: /}}
    upstream: app
",
        live = live.addr
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    for _ in 0..10 {
        let (status, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(backend, "live");
    }
    let dead = format!("127.0.0.1:{dead_port}");
    // One refused connect was retried on `live`, then passive health took it out.
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_retries_total", &[("upstream", "app")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &[("backend", &dead)])
            .await,
        Some(0.0)
    );
    assert_eq!(
        tollgate
            .metric(
                "tollgate_upstream_requests_total",
                &[("backend", &dead), ("code", "error")]
            )
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_out_all_are_tried_anyway() {
    let mut backends = [Backend::start("a"), Backend::start("b")];
    let refs: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start(&checked_upstream(&refs, "{max_fails: 0}", 1)).await;
    for b in backends.iter_mut() {
        b.kill();
    }
    let down = wait_until(Duration::from_secs(5), || async {
        healthy(&tollgate, &backends[0]).await == Some(0.0)
            && healthy(&tollgate, &backends[1]).await == Some(0.0)
    })
    .await;
    assert!(down);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Both really are dead: each is tried (panic mode), and the answer comes at once.
    let asked = Instant::now();
    let (status, _, _) = get(&client, &tollgate.url("/")).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(status, 502);
    assert!(took < Duration::from_secs(1), "502 took {took:?}");
    assert!(
        tollgate
            .metric_reaches(
                "tollgate_upstream_panic_requests_total",
                &[("upstream", "app")],
                2.0
            )
            .await
    );
    assert!(tollgate
        .stderr()
        .contains("no backend is up; trying all 2 anyway"));
    // One comes back before its checks have seen it: it answers at once.
    backends[0].restart();
    let (status, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
    assert_eq!((status, backend.as_str()), (200, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_backend_up_is_never_taken_out_by_passive_checks() {
    let mut only = Backend::start("only");
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  auth:\n    backends: [{{address: {}}}]\n    passive: {{max_fails: 1, fail_timeout: 60s}}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: auth\n",
        only.addr
    ))
    .await;
    let client = reqwest::Client::new();
    only.kill();
    let (status, _, _) = get(&client, &tollgate.url("/")).await.unwrap();
    assert_eq!(status, 502);
    // Restarted (an auth service after a deploy): served at once, not after 60 s.
    only.restart();
    let (status, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
    assert_eq!((status, backend.as_str()), (200, "only"));
    let label = only.addr.to_string();
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &[("backend", &label)])
            .await,
        Some(1.0)
    );
    assert!(
        tollgate
            .stderr()
            .contains("kept in: it is the upstream's last backend that is up"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_active_check_ends_a_passive_ejection() {
    let mut backends = [Backend::start("a"), Backend::start("b")];
    let refs: Vec<&Backend> = backends.iter().collect();
    // Probes that never take a backend out themselves (unhealthy_threshold is out
    // of reach), so that only traffic can.
    let body = checked_upstream(&refs, "{max_fails: 1, fail_timeout: 60s}", 1).replace(
        &format!("unhealthy_threshold: {UNHEALTHY_THRESHOLD}"),
        "unhealthy_threshold: 1000",
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    // `a` dies and a request finds it (retried on `b`): passive checks take it out.
    backends[0].kill();
    let a_out = wait_until(Duration::from_secs(5), || async {
        let _ = get(&client, &tollgate.url("/")).await;
        healthy(&tollgate, &backends[0]).await == Some(0.0)
    })
    .await;
    assert!(a_out, "{}", tollgate.stderr());
    // Back before its 60 s are over: the next passing probe brings it back.
    backends[0].restart();
    let a_back = wait_until(Duration::from_secs(5), || async {
        healthy(&tollgate, &backends[0]).await == Some(1.0)
    })
    .await;
    assert!(a_back, "{}", tollgate.stderr());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(&client, &tollgate.url("/")).await.unwrap().1);
    }
    assert!(seen.iter().any(|b| b == "a"), "{seen:?}");
    let log = tollgate.stderr();
    assert!(log.contains("out for 60s"), "{log}");
    assert!(
        log.contains("is back in: it passed an active check"),
        "{log}"
    );
}
