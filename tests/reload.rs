//! Topology reload on SIGHUP under a steady stream of requests: the new backend
//! set takes over with no failed request, an invalid file changes nothing, and
//! the health of backends that stay is kept. The metric series of what a reload
//! takes out go (once no request uses it), those of what stays keep counting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

fn app_upstream(backends: &[&Backend], extra: &str) -> String {
    let addresses: Vec<_> = backends.iter().map(|b| b.addr).collect();
    TopologyBody::new()
        .upstream("app", &addresses, extra)
        .route("/", "app", "")
        .yaml()
}

/// The config text with the upstreams/routes part replaced by `body`.
fn with_body(current: &str, body: &str) -> String {
    let server_part = current.split("upstreams:").next().unwrap_or(current);
    format!("{server_part}{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_traffic_to_the_new_backends_without_a_failed_request() {
    let old = [Backend::start("old-1"), Backend::start("old-2")];
    let new = [Backend::start("new-1"), Backend::start("new-2")];
    let tollgate = Tollgate::start(&app_upstream(&[&old[0], &old[1]], "")).await;
    let load = SteadyLoad::start(tollgate.url("/"), 4);
    assert!(load.wait_answered(50).await, "traffic before the reload");
    tollgate.rewrite_config(&with_body(
        &tollgate.config_text(),
        &app_upstream(&[&new[0], &new[1]], ""),
    ));
    tollgate.signal(libc::SIGHUP);
    let moved = wait_until(Duration::from_secs(5), || {
        let last = load.last_backends(20);
        async move { last.len() == 20 && last.iter().all(|b| b.starts_with("new")) }
    })
    .await;
    assert!(moved, "traffic did not move to the new backends");

    // An invalid file changes nothing.
    let good = tollgate.config_text();
    tollgate.rewrite_config(&good.replace("upstream: app", "upstream: nowhere"));
    tollgate.signal(libc::SIGHUP);
    let counted = tollgate
        .metric_reaches("tollgate_config_reloads_total", &[("result", "error")], 1.0)
        .await;
    assert!(counted, "failed reload not counted");
    assert!(
        load.wait_answered(20).await,
        "traffic after the failed reload"
    );
    let report = load.stop().await;
    report.assert_no_failure(101);
    let last = &report.backends[report.backends.len() - 20..];
    assert!(
        last.iter().all(|b| b.starts_with("new")),
        "the invalid file changed the backends"
    );
    assert_eq!(
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "success")])
            .await,
        Some(1.0)
    );
    assert!(tollgate
        .stderr()
        .contains("reload failed; the running topology is unchanged"));
    assert!(
        tollgate.stderr().contains("tollgate.yaml:"),
        "error without file:line:\n{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_backends_that_stay_is_kept() {
    let mut dying = Backend::start("dying");
    let healthy = Backend::start("healthy");
    let added = Backend::start("added");
    let checks = "    health_check:\n      tcp: {}\n      interval: 100ms\n      unhealthy_threshold: 1\n      healthy_threshold: 1000\n    passive: {max_fails: 0}\n";
    let tollgate = Tollgate::start(&app_upstream(&[&dying, &healthy], checks)).await;
    dying.kill();
    let dying_addr = dying.addr.to_string();
    let down = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric(
                "tollgate_upstream_backend_healthy",
                &[("backend", &dying_addr)],
            )
            .await
            == Some(0.0)
    })
    .await;
    assert!(down);
    // Restarted, it would need 1000 good probes to come back: its state must survive the reload.
    dying.restart();
    tollgate.rewrite_config(&with_body(
        &tollgate.config_text(),
        &app_upstream(&[&dying, &healthy, &added], checks),
    ));
    tollgate.signal(libc::SIGHUP);
    let reloaded = tollgate
        .metric_reaches(
            "tollgate_config_reloads_total",
            &[("result", "success")],
            1.0,
        )
        .await;
    assert!(reloaded);
    let client = reqwest::Client::new();
    let mut reached = std::collections::HashSet::new();
    for _ in 0..30 {
        let (status, backend, _) = get(&client, &tollgate.url("/")).await.unwrap();
        assert_eq!(status, 200);
        reached.insert(backend);
    }
    assert!(
        !reached.contains("dying"),
        "a backend's unhealthy state was lost in the reload"
    );
    assert!(
        reached.contains("added") && reached.contains("healthy"),
        "{reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_reload_checks_the_file_then_signals_the_running_process() {
    let first = Backend::start("first");
    let second = Backend::start("second");
    let tollgate = Tollgate::start(&app_upstream(&[&first], "")).await;
    let config = tollgate.dir.join("tollgate.yaml");
    let reload = || {
        std::process::Command::new(TOLLGATE)
            .arg("-c")
            .arg(&config)
            .arg("reload")
            .output()
            .unwrap()
    };

    // An invalid file: the command fails with the error and sends nothing.
    let good = tollgate.config_text();
    tollgate.rewrite_config(&good.replace("upstream: app", "upstream: nowhere"));
    let out = reload();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream `nowhere`"));

    tollgate.rewrite_config(&with_body(&good, &app_upstream(&[&second], "")));
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = wait_until(Duration::from_secs(5), || async {
        matches!(get(&reqwest::Client::new(), &tollgate.url("/")).await, Ok((200, b, _)) if b == "second")
    })
    .await;
    assert!(moved, "reload did not take effect");
    assert_eq!(
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "error")])
            .await,
        None
    );
    assert_eq!(
        tollgate
            .metric("tollgate_config_reloads_total", &[("result", "success")])
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_buckets_survive_a_reload_that_leaves_them_unchanged() {
    let backend = Backend::start("app");
    let limited = |rate: &str| {
        format!(
            "upstreams:\n  app:\n    backends:\n{}rate_limits:\n  slow: {{key: client_ip, rate: {rate}, burst: 0}}\n\
             routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    rate_limit: slow\n",
            backend_list(&[&backend])
        )
    };
    let tollgate = Tollgate::start(&limited("1/m")).await;
    let client = reqwest::Client::new();
    let status = || async {
        client
            .get(tollgate.url("/"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status().await, 200);
    assert_eq!(status().await, 429);
    let reloads = |n: f64| {
        tollgate.metric_reaches("tollgate_config_reloads_total", &[("result", "success")], n)
    };
    // The same limit (another route beside it): the spent bucket stays spent.
    let same = with_body(&tollgate.config_text(), &limited("1/m"))
        + "  - match: {path: /other}\n    respond: {status: 204}\n";
    tollgate.rewrite_config(&same);
    tollgate.signal(libc::SIGHUP);
    assert!(reloads(1.0).await);
    assert_eq!(
        status().await,
        429,
        "the reload refilled an unchanged bucket"
    );
    // A changed limit starts with a full bucket.
    tollgate.rewrite_config(&with_body(&tollgate.config_text(), &limited("2/m")));
    tollgate.signal(libc::SIGHUP);
    assert!(reloads(2.0).await);
    assert_eq!(status().await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_when_the_server_section_changed_and_only_then() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&app_upstream(&[&backend], "")).await;
    let reloads = |n: f64| {
        tollgate.metric_reaches("tollgate_config_reloads_total", &[("result", "success")], n)
    };
    let warned = || {
        tollgate
            .stderr()
            .matches("the server section changed")
            .count()
    };
    // The same file again, written differently: no change to report.
    let respaced = tollgate
        .config_text()
        .replace("grace_period: 1s", "grace_period: 1000ms");
    tollgate.rewrite_config(&respaced);
    tollgate.signal(libc::SIGHUP);
    assert!(reloads(1.0).await);
    assert_eq!(warned(), 0, "{}", tollgate.stderr());
    tollgate.rewrite_config(&respaced.replace("grace_period: 1000ms", "grace_period: 2s"));
    tollgate.signal(libc::SIGHUP);
    assert!(reloads(2.0).await);
    let said = wait_until(Duration::from_secs(5), || async { warned() == 1 }).await;
    assert!(said, "{}", tollgate.stderr());
}

/// The sample lines of `text` (a `/metrics` body) with label `name="value"`.
fn series_labelled(text: &str, name: &str, value: &str) -> Vec<String> {
    let pair = format!("{name}=\"{value}\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split_once('{')
                .and_then(|(_, labels)| labels.rsplit_once('}'))
                .is_some_and(|(labels, _)| labels.split(',').any(|p| p == pair))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_the_series_of_what_it_takes_out_and_keeps_the_rest() {
    let kept = Backend::start("kept");
    let gone = Backend::start("gone");
    let pair = [Backend::start("pair-1"), Backend::start("pair-2")];
    let (pair_1, pair_2) = (pair[0].addr.to_string(), pair[1].addr.to_string());
    // Everything, or everything but the route to `gone`, its upstream, its
    // rate limit and cache, and pair-2.
    let pair_addrs = [pair[0].addr, pair[1].addr];
    let body = |all: bool| {
        let mut body = TopologyBody::new()
            .upstream("stay", &[kept.addr], "")
            .upstream("pair", &pair_addrs[..if all { 2 } else { 1 }], "")
            .route("/kept", "stay", "    name: kept\n")
            .route("/pair", "pair", "    name: pair\n");
        if all {
            body = body
                .upstream("gone", &[gone.addr], "")
                .section("rate_limits:\n  tight: {key: client_ip, rate: 1/m, burst: 1}\n")
                .section("caches:\n  pages: {memory: 1MiB, default_ttl: {200: 1m}}\n")
                .route(
                    "/dropped",
                    "gone",
                    "    name: dropped\n    rate_limit: tight\n    cache: pages\n",
                );
        }
        body.yaml()
    };
    let tollgate = Tollgate::start(&body(true)).await;
    let client = reqwest::Client::new();
    let statuses = |path: &'static str, n: usize| {
        let (client, url) = (client.clone(), tollgate.url(path));
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(get(&client, &url).await.unwrap().0);
            }
            out
        }
    };
    assert_eq!(statuses("/kept", 3).await, [200; 3]);
    assert_eq!(statuses("/pair", 4).await, [200; 4]);
    // The bucket holds 2 (rate and burst): the third is refused.
    assert_eq!(statuses("/dropped", 3).await, [200, 200, 429]);
    let requests = "tollgate_requests_total";
    let backend_requests = "tollgate_upstream_requests_total";
    let ok = ("code", "200");
    assert!(
        tollgate
            .metric_reaches(requests, &[("route", "dropped"), ("code", "429")], 1.0)
            .await
    );
    assert!(
        tollgate
            .metric_reaches(requests, &[("route", "pair"), ok], 4.0)
            .await
    );
    assert!(
        tollgate
            .metric_reaches(requests, &[("route", "kept"), ok], 3.0)
            .await
    );
    let before = tollgate.metrics().await;
    let gone_addr = gone.addr.to_string();
    for (name, value) in [
        ("route", "dropped"),
        ("upstream", "gone"),
        ("backend", gone_addr.as_str()),
        ("backend", pair_2.as_str()),
        ("cache", "pages"),
    ] {
        assert!(
            !series_labelled(&before, name, value).is_empty(),
            "no series of {name}={value} to begin with:\n{before}"
        );
    }
    assert!(
        metric_value(
            &before,
            "tollgate_rate_limited_total",
            &[("route", "dropped")]
        ) == Some(1.0)
    );
    let pair_1_before = metric_value(&before, backend_requests, &[("backend", &pair_1), ok]);
    let pair_2_before = metric_value(&before, backend_requests, &[("backend", &pair_2), ok]);
    assert_eq!(pair_1_before, Some(2.0), "round robin over the pair");
    assert_eq!(pair_2_before, Some(2.0), "round robin over the pair");

    tollgate.rewrite_config(&with_body(&tollgate.config_text(), &body(false)));
    tollgate.signal(libc::SIGHUP);
    let reloads = |n: f64| {
        tollgate.metric_reaches("tollgate_config_reloads_total", &[("result", "success")], n)
    };
    assert!(reloads(1.0).await, "{}", tollgate.stderr());
    // Gone once the old topology is (no request holds it: soon after the swap).
    let cleared = wait_until(Duration::from_secs(5), || async {
        let text = tollgate.metrics().await;
        series_labelled(&text, "route", "dropped").is_empty()
            && series_labelled(&text, "upstream", "gone").is_empty()
            && series_labelled(&text, "backend", &gone_addr).is_empty()
            && series_labelled(&text, "backend", &pair_2).is_empty()
            && series_labelled(&text, "policy", "tight").is_empty()
            && series_labelled(&text, "cache", "pages").is_empty()
    })
    .await;
    let after = tollgate.metrics().await;
    assert!(cleared, "series of removed objects left:\n{after}");
    // What stays kept its counts, and its gauges.
    let kept_addr = kept.addr.to_string();
    for labels in [
        &[("route", "kept"), ("upstream", "stay"), ok][..],
        &[("route", "pair"), ("upstream", "pair"), ok],
        &[("upstream", "stay"), ("backend", kept_addr.as_str()), ok],
        &[("upstream", "pair"), ("backend", pair_1.as_str()), ok],
    ] {
        let was = metric_value(&before, requests, labels)
            .or_else(|| metric_value(&before, backend_requests, labels));
        let is = metric_value(&after, requests, labels)
            .or_else(|| metric_value(&after, backend_requests, labels));
        assert!(
            was.is_some() && is == was,
            "{labels:?}: {was:?} before, {is:?} after"
        );
    }
    assert_eq!(
        metric_value(
            &after,
            "tollgate_upstream_backend_healthy",
            &[("backend", &pair_1)]
        ),
        Some(1.0)
    );
    assert_eq!(statuses("/dropped", 1).await, [404]);

    // Back again, the backend, upstream and route start from zero.
    tollgate.rewrite_config(&with_body(&tollgate.config_text(), &body(true)));
    tollgate.signal(libc::SIGHUP);
    assert!(reloads(2.0).await, "{}", tollgate.stderr());
    let fresh = tollgate.metrics().await;
    assert_eq!(
        metric_value(
            &fresh,
            "tollgate_upstream_in_flight",
            &[("backend", &pair_2)]
        ),
        Some(0.0),
        "pair-2 has no series again:\n{fresh}"
    );
    assert_eq!(
        metric_value(&fresh, backend_requests, &[("backend", &pair_2)]),
        None
    );
    let memory = [("cache", "pages"), ("tier", "memory")];
    assert_eq!(
        metric_value(&fresh, "tollgate_cache_entries", &memory),
        Some(0.0)
    );
    assert_eq!(statuses("/pair", 4).await, [200; 4]);
    assert_eq!(statuses("/dropped", 1).await, [200]);
    assert!(
        tollgate
            .metric_reaches(requests, &[("route", "pair"), ok], 8.0)
            .await
    );
    assert!(
        tollgate
            .metric_reaches(requests, &[("route", "dropped"), ok], 1.0)
            .await,
        "the route's count did not start again from zero"
    );
    let last = tollgate.metrics().await;
    let count = |backend: &str| metric_value(&last, backend_requests, &[("backend", backend), ok]);
    let pair_1_new = count(&pair_1).unwrap_or(0.0) - 2.0;
    let pair_2_total = count(&pair_2).unwrap_or(0.0);
    assert!(pair_2_total >= 1.0, "pair-2 got none of 4:\n{last}");
    assert_eq!(
        pair_1_new + pair_2_total,
        4.0,
        "pair-2 did not start from zero (its 2 of before came back):\n{last}"
    );
    assert_eq!(count(&gone_addr), Some(1.0), "{last}");
    assert_eq!(
        metric_value(
            &last,
            "tollgate_rate_limited_total",
            &[("route", "dropped")]
        ),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_removed_backend_stay_while_a_request_uses_it() {
    let main = Backend::start("main");
    let slow = Backend::start("slow");
    let slow_addr = slow.addr.to_string();
    let body = |with_slow: bool| {
        let mut body = TopologyBody::new().upstream("app", &[main.addr], "").route(
            "/",
            "app",
            "    name: main\n",
        );
        if with_slow {
            body = body.upstream("slowpoke", &[slow.addr], "").route(
                "/slow",
                "slowpoke",
                "    name: slow\n",
            );
        }
        body.yaml()
    };
    let tollgate = Tollgate::start(&body(true)).await;
    let in_flight = [("backend", slow_addr.as_str())];
    let request = tokio::spawn(reqwest::get(tollgate.url("/slow?ms=3000")));
    assert!(
        tollgate
            .metric_reaches("tollgate_upstream_in_flight", &in_flight, 1.0)
            .await
    );
    tollgate.rewrite_config(&with_body(&tollgate.config_text(), &body(false)));
    tollgate.signal(libc::SIGHUP);
    assert!(
        tollgate
            .metric_reaches(
                "tollgate_config_reloads_total",
                &[("result", "success")],
                1.0
            )
            .await
    );
    // The request started on the old topology: what it uses stays exported.
    let during = tollgate.metrics().await;
    assert_eq!(
        metric_value(&during, "tollgate_upstream_in_flight", &in_flight),
        Some(1.0),
        "{during}"
    );
    assert!(!series_labelled(&during, "route", "slow").is_empty());
    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    // Once it ended, its series go, and nothing brings them back.
    let gone = wait_until(Duration::from_secs(5), || async {
        let text = tollgate.metrics().await;
        series_labelled(&text, "backend", &slow_addr).is_empty()
            && series_labelled(&text, "route", "slow").is_empty()
    })
    .await;
    assert!(gone, "{}", tollgate.metrics().await);
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &tollgate.url("/")).await.unwrap().0, 200);
    assert!(
        tollgate
            .metric_reaches("tollgate_requests_total", &[("route", "main")], 1.0)
            .await
    );
    let later = tollgate.metrics().await;
    assert!(
        series_labelled(&later, "backend", &slow_addr).is_empty(),
        "{later}"
    );
    assert!(
        series_labelled(&later, "route", "slow").is_empty(),
        "{later}"
    );
}
