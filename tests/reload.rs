//! Topology reload on SIGHUP under a steady stream of requests: the new backend
//! set takes over with no failed request, an invalid file changes nothing, and
//! the health of backends that stay is kept.

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
