//! Metrics at `server.metrics` and the access log, after real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_with_bounded_labels() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let body = format!(
        "upstreams:
  app:
    backends:
{list}    health_check:
      tcp: {{}}
      interval: 100ms
routes:
  - name: api
    match: {{path_prefix: /api/}}
    upstream: app
    strip_prefix: true
  - match: {{path: /healthz}}
    respond: {{status: 200, body: ok}}
",
        list = backend_list(&[&a, &b])
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    for i in 0..6 {
        let (status, _, _) = get(
            &client,
            &tollgate.url(&format!("/api/item/{i}?token=secret{i}")),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(
        get(&client, &tollgate.url("/api/status/503"))
            .await
            .unwrap()
            .0,
        503
    );
    assert_eq!(
        get(&client, &tollgate.url("/healthz")).await.unwrap().0,
        200
    );
    assert_eq!(
        get(&client, &tollgate.url("/nothing/here"))
            .await
            .unwrap()
            .0,
        404
    );
    // The last request is counted once its logging phase ran (each earlier one
    // was, before its connection read the next request).
    let settled = tollgate
        .metric_reaches(
            "tollgate_requests_total",
            &[("route", "-"), ("code", "404")],
            1.0,
        )
        .await;
    assert!(settled, "the last request was never counted");

    let text = tollgate.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        value(
            "tollgate_requests_total",
            &[("route", "api"), ("upstream", "app"), ("code", "200")]
        ),
        Some(6.0)
    );
    assert_eq!(
        value(
            "tollgate_requests_total",
            &[("route", "api"), ("upstream", "app"), ("code", "503")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "tollgate_requests_total",
            &[("route", "1:/healthz"), ("upstream", "-"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "tollgate_requests_total",
            &[("route", "-"), ("upstream", "-"), ("code", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "tollgate_request_duration_seconds_count",
            &[("route", "api"), ("upstream", "app")]
        ),
        Some(7.0)
    );
    let per_backend: f64 = [&a, &b]
        .iter()
        .map(|bk| {
            value(
                "tollgate_upstream_requests_total",
                &[
                    ("upstream", "app"),
                    ("backend", &bk.addr.to_string()),
                    ("code", "200"),
                ],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(per_backend, 6.0);
    for bk in [&a, &b] {
        let backend = bk.addr.to_string();
        assert_eq!(
            value(
                "tollgate_upstream_backend_healthy",
                &[("upstream", "app"), ("backend", &backend)]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                "tollgate_upstream_in_flight",
                &[("upstream", "app"), ("backend", &backend)]
            ),
            Some(0.0)
        );
    }
    assert!(value(
        "tollgate_health_checks_total",
        &[("upstream", "app"), ("result", "success")]
    )
    .is_some());
    assert_eq!(
        value(
            "tollgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        value("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0),
        "process metrics missing"
    );
    // Labels stay bounded: no raw path, query or client address appears.
    assert!(
        !text.contains("secret"),
        "a query string leaked into a label"
    );
    assert!(
        !text.contains("/api/item"),
        "a raw path leaked into a label"
    );

    // The exposition passes Prometheus' own linter (Debian package prometheus).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let response = reqwest::get(format!("http://{}/other", tollgate.metrics_addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let a = Backend::start("a");
    let body = TopologyBody::new()
        .upstream("app", &[a.addr], "")
        .raw_route("  - name: app\n    match: {path_prefix: /}\n    upstream: app\n")
        .yaml();
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        client
            .get(tollgate.url(&format!("/p{i}?q=1")))
            .header("User-Agent", "test-agent")
            .send()
            .await
            .unwrap();
    }
    let complete = wait_until(std::time::Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() >= 5
    })
    .await;
    assert!(
        complete,
        "access log has {} lines",
        tollgate.access_log().lines().count()
    );
    let log = tollgate.access_log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["uri"], format!("/p{i}?q=1"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["route"], "app");
        assert_eq!(line["upstream"], "app");
        assert_eq!(line["backend"], a.addr.to_string());
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["user_agent"], "test-agent");
        assert!(line["bytes_sent"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_takes_a_format_of_nginx_variables() {
    let a = Backend::start("a");
    let dir = temp_dir("log-format");
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  access_log: {log}\n\
         \x20 access_log_format: '$remote_addr - $remote_user \"$request\" $status $body_bytes_sent \"$http_x_forwarded_for\" $upstream_addr $sent_http_x_backend'\n\
         upstreams:\n  app:\n    backends: [{{address: {backend}}}]\n\
         routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        log = dir.join("access.log").display(),
        backend = a.addr
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    reqwest::Client::new()
        .get(tollgate.url("/x?y=1"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let written = wait_until(std::time::Duration::from_secs(5), || async {
        tollgate.access_log().lines().count() == 1
    })
    .await;
    assert!(written);
    assert_eq!(
        tollgate.access_log(),
        format!(
            "127.0.0.1 - - \"GET /x?y=1 HTTP/1.1\" 200 {} \"203.0.113.9\" {} a\n",
            tollgate.access_log().split(' ').nth(7).unwrap(),
            a.addr
        )
    );
    let bad = check_topology(&config.replace("$upstream_addr", "$upstream_adr"));
    assert!(!bad.ok);
    assert!(
        bad.output.contains("unknown variable `$upstream_adr`"),
        "{}",
        bad.output
    );
}

/// As logrotate does: the file is moved away, SIGUSR1 makes tollgate open the
/// path again; lines before the signal are in the moved file, lines after it
/// in the new one, none lost. A file that cannot be opened leaves the old one
/// in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_file_at_its_path() {
    let a = Backend::start("a");
    let tollgate = Tollgate::start(&proxy_to(&[a.addr])).await;
    let client = reqwest::Client::new();
    let log = tollgate.dir.join("access.log");
    let rotated = tollgate.dir.join("access.log.1");
    let lines_in = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_lines = |path: std::path::PathBuf, n: usize| async move {
        wait_until(std::time::Duration::from_secs(5), || {
            let count = lines_in(&path);
            async move { count == n }
        })
        .await
    };
    for _ in 0..3 {
        client.get(tollgate.url("/before")).send().await.unwrap();
    }
    assert!(wait_lines(log.clone(), 3).await);
    std::fs::rename(&log, &rotated).unwrap();
    tollgate.signal(libc::SIGUSR1);
    let reopened = wait_until(std::time::Duration::from_secs(5), || {
        let exists = log.exists();
        async move { exists }
    })
    .await;
    assert!(reopened, "no new file:\n{}", tollgate.stderr());
    for _ in 0..2 {
        client.get(tollgate.url("/after")).send().await.unwrap();
    }
    assert!(
        wait_lines(log.clone(), 2).await,
        "{}",
        tollgate.access_log()
    );
    assert_eq!(lines_in(&rotated), 3);
    assert!(tollgate.access_log().contains("/after"));
    assert!(!tollgate.access_log().contains("/before"));
    assert!(
        tollgate.stderr().contains("reopened"),
        "{}",
        tollgate.stderr()
    );

    // The path is a directory now: the reopen fails, lines go on to the file
    // open before, and the process keeps serving.
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::create_dir(&log).unwrap();
    tollgate.signal(libc::SIGUSR1);
    let refused = wait_until(std::time::Duration::from_secs(5), || {
        let said = tollgate
            .stderr()
            .contains("lines go on to the file open before");
        async move { said }
    })
    .await;
    assert!(refused, "{}", tollgate.stderr());
    client.get(tollgate.url("/still")).send().await.unwrap();
    assert!(wait_lines(rotated.clone(), 3).await);
    std::fs::remove_dir(&log).unwrap();
}
