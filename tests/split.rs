//! A route's `split` over real backends: weighted shares counted by which
//! backend answered, `when_header` arms, sticky arms over `ip_hash`
//! upstreams for clients on distinct loopback addresses, retries and the
//! metric and log labels of the arm's upstream, buffered bodies taking one
//! arm, and the bad splits `tollgate -t` refuses at their line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

/// Upstreams `app` (over `app`) and `app_v2` (over `v2`) with `extra` lines
/// under each, and one route `web` on `/` splitting as `arms` (YAML flow
/// items, one per line).
fn split_topology(app: &[&Backend], v2: &[&Backend], extra: &str, arms: &[&str]) -> String {
    let arms: String = arms.iter().map(|a| format!("      - {a}\n")).collect();
    format!(
        "upstreams:\n  app:\n{extra}    backends:\n{}  app_v2:\n{extra}    backends:\n{}routes:\n  - name: web\n    match: {{path_prefix: /}}\n    split:\n{arms}",
        backend_list(app),
        backend_list(v2),
    )
}

/// GETs `path` `n` times over `workers` keep-alive clients at once, with
/// `header` when given; how many answers each backend gave.
async fn answers_by_backend(
    tollgate: &Tollgate,
    path: &str,
    n: usize,
    workers: usize,
    header: Option<(&'static str, &'static str)>,
) -> HashMap<String, usize> {
    let url = tollgate.url(path);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let url = url.clone();
            let share = n / workers + usize::from(w < n % workers);
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen = Vec::with_capacity(share);
                for _ in 0..share {
                    let mut request = client.get(&url);
                    if let Some((name, value)) = header {
                        request = request.header(name, value);
                    }
                    let response = request.send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let backend = response.headers()["x-backend"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    response.bytes().await.unwrap();
                    seen.push(backend);
                }
                seen
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for task in tasks {
        for backend in task.await.unwrap() {
            *counts.entry(backend).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_gives_each_arm_its_share_of_5000_requests() {
    let (app, v2) = (Backend::start("app"), Backend::start("v2"));
    let tollgate = Tollgate::start(&split_topology(
        &[&app],
        &[&v2],
        "",
        &[
            "{upstream: app, weight: 90}",
            "{upstream: app_v2, weight: 10}",
        ],
    ))
    .await;
    let counts = answers_by_backend(&tollgate, "/x", 5000, 8, None).await;
    let (to_app, to_v2) = (counts["app"], counts["v2"]);
    assert_eq!(to_app + to_v2, 5000, "{counts:?}");
    // 90% ± 2% of 5000; the schedule makes it exact.
    assert!(to_app.abs_diff(4500) <= 100, "{counts:?}");
    assert!(to_v2.abs_diff(500) <= 100, "{counts:?}");
    assert_eq!((to_app, to_v2), (4500, 500), "a smooth schedule is exact");

    // Each answer is counted under the upstream of its arm.
    for (upstream, count) in [("app", to_app), ("app_v2", to_v2)] {
        let labels = [("route", "web"), ("upstream", upstream), ("code", "200")];
        assert!(
            tollgate
                .metric_reaches("tollgate_requests_total", &labels, count as f64)
                .await,
            "tollgate_requests_total{labels:?} != {count}:\n{}",
            tollgate.metrics().await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_header_sends_marked_requests_to_its_arm_only() {
    let (app, v2) = (Backend::start("app"), Backend::start("v2"));
    // Weight 0: the canary gets its marked requests and nothing else.
    let tollgate = Tollgate::start(&split_topology(
        &[&app],
        &[&v2],
        "",
        &[
            "{upstream: app, weight: 1}",
            "{upstream: app_v2, weight: 0, when_header: {X-Canary: \"1\"}}",
        ],
    ))
    .await;
    let marked = answers_by_backend(&tollgate, "/", 300, 4, Some(("X-Canary", "1"))).await;
    assert_eq!(marked.get("v2"), Some(&300), "{marked:?}");
    let plain = answers_by_backend(&tollgate, "/", 300, 4, None).await;
    assert_eq!(plain.get("app"), Some(&300), "{plain:?}");
    let other_value = answers_by_backend(&tollgate, "/", 50, 2, Some(("X-Canary", "2"))).await;
    assert_eq!(other_value.get("app"), Some(&50), "{other_value:?}");

    // A weighted arm with a when_header takes every marked request too, and
    // its share of the others.
    let weighted = Tollgate::start(&split_topology(
        &[&app],
        &[&v2],
        "",
        &[
            "{upstream: app, weight: 90}",
            "{upstream: app_v2, weight: 10, when_header: {X-Canary: \"1\"}}",
        ],
    ))
    .await;
    let marked = answers_by_backend(&weighted, "/", 200, 4, Some(("x-canary", "1"))).await;
    assert_eq!(marked.get("v2"), Some(&200), "{marked:?}");
    let plain = answers_by_backend(&weighted, "/", 200, 4, None).await;
    assert_eq!((plain["app"], plain["v2"]), (180, 20), "{plain:?}");
}

/// The auth service of the next test: `Bearer beta` is in group `beta`,
/// any other bearer token in `general`.
fn group_service(
    seen: &serde_json::Map<String, serde_json::Value>,
) -> (&'static str, serde_json::Value) {
    match seen.get("authorization").and_then(|v| v.as_str()) {
        Some("Bearer beta") => ("200 OK", serde_json::json!({"group": "beta"})),
        Some(_) => ("200 OK", serde_json::json!({"group": "general"})),
        None => ("401 Unauthorized", serde_json::json!({})),
    }
}

/// A `when_header` on a header the route's auth sets reads the auth's
/// value: a client cannot put itself in the canary by sending the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_header_on_an_identity_header_takes_the_auth_services_value() {
    let (app, v2) = (Backend::start("app"), Backend::start("v2"));
    let (auth, _) = head_answering_service(group_service);
    let topology = split_topology(
        &[&app],
        &[&v2],
        "",
        &[
            "{upstream: app, weight: 1}",
            "{upstream: app_v2, weight: 0, when_header: {X-Group: beta}}",
        ],
    );
    let tollgate = Tollgate::start(&format!(
        "{topology}    auth: groups\nauth:\n  groups:\n    forward:\n      url: http://{auth}/check\n      identity_from_json: {{X-Group: group}}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let backend_for = |token: &'static str, forged: Option<&'static str>| {
        let mut request = client
            .get(tollgate.url("/"))
            .header("Authorization", format!("Bearer {token}"));
        if let Some(group) = forged {
            request = request.header("X-Group", group);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-backend"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    for _ in 0..5 {
        assert_eq!(backend_for("beta", None).await, "v2");
        assert_eq!(backend_for("plain", Some("beta")).await, "app");
        assert_eq!(backend_for("plain", None).await, "app");
    }
}

/// A client bound to `ip`, so tollgate sees that address as the client.
fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ip_hash_upstreams_each_client_keeps_its_arm() {
    let (a1, a2) = (Backend::start("a1"), Backend::start("a2"));
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let tollgate = Tollgate::start(&split_topology(
        &[&a1, &a2],
        &[&b1, &b2],
        "    algorithm: ip_hash\n",
        &[
            "{upstream: app, weight: 50}",
            "{upstream: app_v2, weight: 50}",
        ],
    ))
    .await;
    let clients: Vec<IpAddr> = (10..=60).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let mut assignment: HashMap<IpAddr, String> = HashMap::new();
    for ip in &clients {
        let client = client_from(*ip);
        let (status, first, _) = get(&client, &tollgate.url("/")).await.unwrap();
        assert_eq!(status, 200);
        for _ in 0..5 {
            let (_, again, _) = get(&client, &tollgate.url("/")).await.unwrap();
            assert_eq!(again, first, "client {ip} moved");
        }
        assignment.insert(*ip, first);
    }
    let in_app = assignment.values().filter(|b| b.starts_with('a')).count();
    let in_v2 = clients.len() - in_app;
    // 51 clients at 50/50: far outside 12..=39 only if the split ignored weights.
    assert!(
        (12..=39).contains(&in_app) && (12..=39).contains(&in_v2),
        "app {in_app}, app_v2 {in_v2}: {assignment:?}"
    );
    // The arm does not decide the backend: each arm's clients spread over
    // both of its backends.
    let used: HashSet<&String> = assignment.values().collect();
    assert_eq!(used.len(), 4, "{assignment:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_labels_follow_the_arms_upstream() {
    let dead = DeadAddress::new();
    let (app, v2) = (Backend::start("app"), Backend::start("v2"));
    // `app` allows no retry, `app_v2` one: app_v2's requests that meet its
    // dead backend are retried on its live one.
    let body = format!(
        "upstreams:\n  app:\n    retries: 0\n    backends:\n      - address: {app}\n  app_v2:\n    retries: 1\n    passive: {{max_fails: 0}}\n    backends:\n      - address: {dead}\n      - address: {v2}\nroutes:\n  - name: web\n    match: {{path_prefix: /}}\n    split:\n      - {{upstream: app, weight: 0, when_header: {{X-App: \"1\"}}}}\n      - {{upstream: app_v2, weight: 1}}\n",
        app = app.addr,
        dead = dead.addr,
        v2 = v2.addr,
    );
    let tollgate = Tollgate::start(&body).await;
    let counts = answers_by_backend(&tollgate, "/", 40, 1, None).await;
    assert_eq!(counts.get("v2"), Some(&40), "{counts:?}");
    let counts = answers_by_backend(&tollgate, "/", 10, 1, Some(("X-App", "1"))).await;
    assert_eq!(counts.get("app"), Some(&10), "{counts:?}");

    // Retried under app_v2's `retries`, never app's 0.
    let retried = tollgate
        .metric("tollgate_upstream_retries_total", &[("upstream", "app_v2")])
        .await;
    assert!(
        retried.is_some_and(|n| n >= 1.0),
        "{}",
        tollgate.metrics().await
    );
    // The access log names the arm's upstream with the backend that answered.
    let logged = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() == 50
    })
    .await;
    assert!(logged, "{}", tollgate.access_log());
    for line in tollgate.access_log().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let expected = match entry["backend"].as_str().unwrap() {
            b if b == app.addr.to_string() => "app",
            b if b == v2.addr.to_string() => "app_v2",
            other => panic!("answered by {other}: {line}"),
        };
        assert_eq!(entry["upstream"], expected, "{line}");
        assert_eq!(entry["route"], "web", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_request_takes_one_slot_of_the_split() {
    let (app, v2) = (Backend::start("app"), Backend::start("v2"));
    let tollgate = Tollgate::start(&split_topology(
        &[&app],
        &[&v2],
        "",
        &[
            "{upstream: app, weight: 90}",
            "{upstream: app_v2, weight: 10}",
        ],
    ))
    .await;
    // POST bodies are read whole and proxied by a subrequest, which must go
    // where its request's arm points and not choose again.
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let response = client
            .post(tollgate.url("/upload"))
            .body("a body")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let backend = response.headers()["x-backend"]
            .to_str()
            .unwrap()
            .to_string();
        *counts.entry(backend).or_default() += 1;
    }
    assert_eq!((counts["app"], counts["v2"]), (90, 10), "{counts:?}");
    let labels = [("route", "web"), ("upstream", "app_v2"), ("code", "200")];
    assert!(
        tollgate
            .metric_reaches("tollgate_requests_total", &labels, 10.0)
            .await,
        "{}",
        tollgate.metrics().await
    );
}

const VALID: &str = "\
server:
  listeners:
    - address: 127.0.0.1:18080
upstreams:
  app:
    backends:
      - address: 127.0.0.1:19001
  app_v2:
    backends:
      - address: 127.0.0.1:19002
routes:
  - match: {path_prefix: /}
    split:
      - {upstream: app, weight: 90}
      - {upstream: app_v2, weight: 10, when_header: {X-Canary: \"1\"}}
";

#[test]
fn a_valid_split_passes_the_check() {
    let result = check_topology(VALID);
    assert!(result.ok, "{}", result.output);
}

#[test]
fn bad_splits_are_refused_at_their_line() {
    assert_refused_at(
        &VALID
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 0"),
        14,
        &["routes[0].split", "sum to 0"],
    );
    assert_refused_at(
        &VALID.replace("{upstream: app_v2,", "{upstream: app_v3,"),
        15,
        &[
            "routes[0].split[1].upstream",
            "unknown upstream `app_v3`",
            "defined: app, app_v2",
        ],
    );
    assert_refused_at(
        &VALID.replace("    split:\n", "    upstream: app\n    split:\n"),
        15,
        &["routes[0].split", "either `upstream` or `split`, not both"],
    );
    let empty = VALID
        .replace("      - {upstream: app, weight: 90}\n", "")
        .replace(
            "      - {upstream: app_v2, weight: 10, when_header: {X-Canary: \"1\"}}\n",
            "",
        )
        .replace("    split:\n", "    split: []\n");
    assert_refused_at(&empty, 13, &["routes[0].split", "at least one arm"]);
    assert_refused_at(
        &VALID.replace("X-Canary", "X Canary"),
        15,
        &[
            "routes[0].split[1].when_header",
            "invalid header name `X Canary`",
        ],
    );
    assert_refused_at(
        &VALID.replace("weight: 90", "weight: 1001"),
        14,
        &["routes[0].split[0].weight", "0 to 1000"],
    );
    assert_refused_at(
        &VALID.replace("weight: 90}", "weight: 90, when: {X-A: b}}"),
        14,
        &["unknown field `when`", "when_header"],
    );
}
