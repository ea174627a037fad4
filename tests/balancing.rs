//! Load balancing over real backends: round robin counts and smooth order, ip_hash
//! stickiness and consistency, least connections, and in-flight counts that return
//! to zero however a request ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

fn upstream_yaml(algorithm: &str, backends: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    algorithm: {algorithm}\n    backends:\n{backends}{extra}\nroutes:\n  - name: app\n    match: {{path_prefix: /}}\n    upstream: app\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_backend_exactly_its_share() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start(&upstream_yaml("round_robin", &backend_list(&refs), "")).await;
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let (status, backend, _) = get(&client, &tollgate.url("/x")).await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(backend).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_5_1_1_interleave_smoothly() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let list = format!(
        "      - address: {}\n        weight: 5\n      - address: {}\n      - address: {}\n",
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let tollgate = Tollgate::start(&upstream_yaml("round_robin", &list, "")).await;
    let client = reqwest::Client::new();
    let mut order = String::new();
    for _ in 0..14 {
        let (_, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        order.push_str(&backend);
    }
    assert_eq!(order, "aabacaaaabacaa");
}

/// A client bound to `ip`, so tollgate sees that address as the peer.
fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

async fn ip_hash_assignment(tollgate: &Tollgate, clients: &[IpAddr]) -> HashMap<IpAddr, String> {
    let mut assignment = HashMap::new();
    for ip in clients {
        let client = client_from(*ip);
        let (status, first, _) = get(&client, &tollgate.url("/")).await.unwrap();
        assert_eq!(status, 200);
        for _ in 0..3 {
            let (_, again, _) = get(&client, &tollgate.url("/")).await.unwrap();
            assert_eq!(again, first, "client {ip} moved");
        }
        assignment.insert(*ip, first);
    }
    assignment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_clients_and_moves_only_the_removed_backends_clients() {
    let mut backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    ];
    let clients: Vec<IpAddr> = (2..=40).map(|i| IpAddr::from([127, 0, 0, i])).collect();

    let all: Vec<&Backend> = backends.iter().collect();
    let health = "    health_check:\n      tcp: {}\n      interval: 100ms\n      timeout: 100ms\n      unhealthy_threshold: 1\n    passive: {max_fails: 0}\n";
    let four = Tollgate::start(&upstream_yaml("ip_hash", &backend_list(&all), health)).await;
    let before = ip_hash_assignment(&four, &clients).await;
    let used: std::collections::HashSet<&String> = before.values().collect();
    assert!(
        used.len() >= 3,
        "39 clients should spread over the backends: {before:?}"
    );

    // Removed from the topology: only d's clients move.
    let three: Vec<&Backend> = backends[..3].iter().collect();
    let without_d = Tollgate::start(&upstream_yaml("ip_hash", &backend_list(&three), "")).await;
    let after = ip_hash_assignment(&without_d, &clients).await;
    for ip in &clients {
        if before[ip] != "d" {
            assert_eq!(
                after[ip], before[ip],
                "client {ip} moved though its backend stayed"
            );
        } else {
            assert_ne!(after[ip], "d");
        }
    }

    // Dead (health check takes it out): the same holds on the four-backend topology.
    backends[3].kill();
    let down = wait_until(Duration::from_secs(5), || async {
        four.metric(
            "tollgate_upstream_backend_healthy",
            &[("backend", &backends[3].addr.to_string())],
        )
        .await
            == Some(0.0)
    })
    .await;
    assert!(down, "killed backend not taken out");
    let after_kill = ip_hash_assignment(&four, &clients).await;
    for ip in &clients {
        if before[ip] != "d" {
            assert_eq!(
                after_kill[ip], before[ip],
                "client {ip} moved though its backend is alive"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_slow_backend() {
    // The slow backend holds each request far longer than the measuring window, so
    // a worker that lands on it stays stuck; every stuck worker is one request it got.
    let slow = Backend::start_with("slow", "127.0.0.1:0", &["--delay", "8000"]);
    let fast1 = Backend::start("fast1");
    let fast2 = Backend::start("fast2");
    let tollgate = Tollgate::start(&upstream_yaml(
        "least_connections",
        &backend_list(&[&slow, &fast1, &fast2]),
        "",
    ))
    .await;
    let client = reqwest::Client::new();
    let window = Duration::from_millis(1500);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        let url = tollgate.url(&format!("/w{worker}"));
        tasks.push(tokio::spawn(async move {
            let (mut fast, mut stuck) = (0usize, false);
            while let Some(left) = window.checked_sub(started.elapsed()) {
                // A fast answer takes milliseconds; the grace second past the window
                // only lets the last one finish. The slow backend takes 8 s.
                let grace = Duration::from_secs(1);
                match tokio::time::timeout(left + grace, get(&client, &url)).await {
                    Ok(Ok((200, backend, _))) if backend.starts_with("fast") => fast += 1,
                    Ok(other) => panic!("unexpected answer {other:?}"),
                    Err(_) => {
                        stuck = true;
                        break;
                    }
                }
            }
            (fast, stuck)
        }));
    }
    let (mut fast_total, mut stuck_workers) = (0, 0);
    for task in tasks {
        let (fast, stuck) = task.await.unwrap();
        fast_total += fast;
        stuck_workers += usize::from(stuck);
    }
    // Round robin would send every third request to the slow backend and strand all
    // four workers within a handful of requests. Least connections sends a request
    // there only on a tie: the first, and at most one more when both fast backends
    // hold one each of the other workers' requests at that moment; with two stuck
    // there, the two free workers can never tie with it again.
    assert!(
        stuck_workers <= 2,
        "{stuck_workers} of 4 workers stuck on the slow backend"
    );
    // Every request the slow backend got is one stuck worker (the access log
    // counts them once the stuck clients give up and tollgate logs them).
    let slow_label = format!("\"backend\":\"{}\"", slow.addr);
    let logged = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().matches(&slow_label).count() == stuck_workers
    })
    .await;
    assert!(
        logged,
        "the slow backend got other requests:\n{}",
        tollgate.access_log()
    );
    assert!(
        fast_total >= 50,
        "only {fast_total} requests reached the fast backends in {window:?}"
    );
}

async fn in_flight_total(tollgate: &Tollgate) -> f64 {
    tollgate
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("tollgate_upstream_in_flight{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_returns_to_zero_after_errors_timeouts_and_client_aborts() {
    let live = Backend::start("live");
    let dead = DeadAddress::new();
    let dead_port = dead.addr.port();
    let body = format!(
        "upstreams:
  app:
    algorithm: least_connections
    backends:
      - address: {live}
    timeouts: {{read: 300ms}}
    passive: {{max_fails: 0}}
  dead:
    algorithm: least_connections
    backends:
      - address: 127.0.0.1:{dead_port}
    retries: 0
routes:
  - match: {{path_prefix: /dead}}
    upstream: dead
  - match: {{path_prefix: /}}
    upstream: app
",
        live = live.addr
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();

    // Refused connection: 502.
    let (status, _, _) = get(&client, &tollgate.url("/dead")).await.unwrap();
    assert_eq!(status, 502);
    // Backend slower than the read timeout: 504.
    let (status, _, body) = get(&client, &tollgate.url("/slow?ms=2000")).await.unwrap();
    assert_eq!(status, 504, "{body}");
    // Backend error status: passed through.
    let (status, _, _) = get(&client, &tollgate.url("/status/500")).await.unwrap();
    assert_eq!(status, 500);
    // After an error answer the count is released in the logging phase, just
    // after the client has the answer.
    let released = wait_until(Duration::from_secs(5), || async {
        in_flight_total(&tollgate).await == 0.0
    })
    .await;
    assert!(
        released,
        "in-flight count stuck after errors:\n{}",
        tollgate.metrics().await
    );

    // Client gone mid-request: counted while in flight, released after.
    let addr = tollgate.addr;
    let abort = std::thread::spawn(move || {
        raw_exchange(
            addr,
            b"GET /slow?ms=250 HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_millis(100),
        )
    });
    let counted = wait_until(Duration::from_secs(5), || async {
        in_flight_total(&tollgate).await == 1.0
    })
    .await;
    assert!(counted, "the aborted request was never counted in flight");
    abort.join().unwrap(); // returns after 100 ms and drops the connection
    let released = wait_until(Duration::from_secs(5), || async {
        in_flight_total(&tollgate).await == 0.0
    })
    .await;
    assert!(
        released,
        "in-flight count stuck after a client abort:\n{}",
        tollgate.metrics().await
    );
}
