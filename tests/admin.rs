//! The admin API over a real listener: state of upstreams, routes and reloads;
//! drain under load with no failed request and no new request to the drained
//! backend; weights at run time; reloads; tokens; errors with JSON bodies; the
//! `status` and `drain` commands; and a proxy that a stuck admin client does
//! not slow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// An upstream `app` (round robin) over `backends`, route `/`, plus `extra`.
fn app_body(backends: &[&Backend], extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends:\n{}{extra}routes:\n  - name: web\n    match: {{path_prefix: /}}\n    upstream: app\n",
        backend_list(backends)
    )
}

struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Api {
    fn of(tollgate: &Tollgate, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{}", tollgate.reported("server.admin")),
            token: token.map(str::to_string),
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call("GET", path, None).await;
        assert_eq!(status, 200, "{path}: {value}");
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_upstreams_routes_and_reloads() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let tollgate = Tollgate::start_with(
        &app_body(&[&a, &b], "    algorithm: least_time\n"),
        "  admin: 127.0.0.1:0\n",
    )
    .await;
    let api = Api::of(&tollgate, None);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        get(&client, &tollgate.url("/x")).await.unwrap();
    }
    let upstreams = api.get("/api/upstreams").await;
    let backends = upstreams["app"]["backends"]
        .as_array()
        .expect("backends list");
    assert_eq!(backends.len(), 2);
    for (backend, addr) in backends.iter().zip([a.addr, b.addr]) {
        assert_eq!(backend["address"], addr.to_string());
        assert_eq!(backend["state"], "healthy");
        assert_eq!(backend["weight"], 1);
        assert!(backend["latency_ms"].as_f64().is_some(), "{backend}");
    }
    assert_eq!(upstreams["app"]["algorithm"], "least_time");
    let status = api.get("/api/status").await;
    assert_eq!(status["routes"][0]["name"], "web");
    assert_eq!(status["routes"][0]["match"], "path_prefix /");
    assert_eq!(status["routes"][0]["upstreams"][0], "app");
    assert!(status["source"]
        .as_str()
        .unwrap()
        .ends_with("tollgate.yaml"));
    assert_eq!(status["reload"]["last_result"], Value::Null);
    assert!(status["certificates"].as_array().unwrap().is_empty());
    // Rates come from the sampler, every 2 s.
    let moving = wait_until(Duration::from_secs(10), || async {
        get(&client, &tollgate.url("/x")).await.unwrap();
        let history = api.get("/api/history").await;
        history["series"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["requests_per_second"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|v| v.as_f64() > Some(0.0)))
            })
        })
    })
    .await;
    assert!(moving, "{}", api.get("/api/history").await);
    // A reload through the API, then one of a broken file.
    let (code, answer) = api.call("POST", "/api/reload", None).await;
    assert_eq!(
        (code, &answer["result"]),
        (200, &Value::from("success")),
        "{answer}"
    );
    let good = tollgate.config_text();
    tollgate.rewrite_config(&good.replace("upstream: app", "upstream: nowhere"));
    let (code, answer) = api.call("POST", "/api/reload", None).await;
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer["problems"].as_str().unwrap().contains("nowhere"),
        "{answer}"
    );
    let status = api.get("/api/status").await;
    assert_eq!(status["reload"]["last_result"], "error");
    assert!(
        tollgate.stderr().contains("admin API, asked by 127.0.0.1:"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_gets_no_new_request_and_none_fails() {
    let a = Backend::start("a");
    let b = Backend::start_with("b", "127.0.0.1:0", &["--delay", "20"]);
    let tollgate = Tollgate::start_with(&app_body(&[&a, &b], ""), "  admin: 127.0.0.1:0\n").await;
    let api = Api::of(&tollgate, None);
    let load = SteadyLoad::start(tollgate.url("/x"), 8);
    assert!(load.wait_answered(100).await);
    let path = format!("/api/upstreams/app/backends/{}/drain", b.addr);
    let (code, answer) = api.call("POST", &path, None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["state"], "drained");
    assert_eq!(answer["persisted"], false);
    assert!(answer["note"].as_str().unwrap().contains("reload"));
    // Requests sent to b before the answer finish; none starts after it: b
    // answers no more than it had in flight when it was drained.
    let in_flight = answer["in_flight"].as_u64().unwrap() as usize;
    let drained_at = load.answered();
    assert!(load.wait_answered(300).await);
    let after = load.last_backends(load.answered() - drained_at);
    let late_b = after.iter().filter(|name| *name == "b").count();
    assert!(
        late_b <= in_flight,
        "b answered {late_b} requests after it was drained with {in_flight} in flight"
    );
    let b_label = b.addr.to_string();
    let labels = [("upstream", "app"), ("backend", b_label.as_str())];
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_drained", &labels)
            .await,
        Some(1.0)
    );
    let upstreams = api.get("/api/upstreams").await;
    assert_eq!(upstreams["app"]["backends"][1]["state"], "drained");
    // Undrained, it gets traffic again.
    let undrain = format!("/api/upstreams/app/backends/{}/undrain", b.addr);
    assert_eq!(api.call("POST", &undrain, None).await.0, 200);
    let back = wait_until(Duration::from_secs(10), || async {
        load.last_backends(20).iter().any(|name| name == "b")
    })
    .await;
    assert!(back);
    let report = load.stop().await;
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    assert!(
        tollgate.stderr().contains("undrained by 127.0.0.1:"),
        "{}",
        tollgate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_at_run_time_until_a_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let tollgate = Tollgate::start_with(&app_body(&[&a, &b], ""), "  admin: 127.0.0.1:0\n").await;
    let api = Api::of(&tollgate, None);
    let path = format!("/api/upstreams/app/backends/{}/weight", a.addr);
    let (code, answer) = api.call("PUT", &path, Some(r#"{"weight": 3}"#)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["persisted"], false);
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        *counts
            .entry(get(&client, &tollgate.url("/x")).await.unwrap().1)
            .or_default() += 1;
    }
    assert_eq!((counts["a"], counts["b"]), (30, 10), "{counts:?}");
    let upstreams = api.get("/api/upstreams").await;
    assert_eq!(upstreams["app"]["backends"][0]["weight"], 3);
    assert_eq!(upstreams["app"]["backends"][0]["configured_weight"], 1);
    // A reload compiles the file again: weights as written.
    tollgate.signal(libc::SIGHUP);
    let reset = wait_until(Duration::from_secs(10), || async {
        api.get("/api/upstreams").await["app"]["backends"][0]["weight"] == 1
    })
    .await;
    assert!(reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let a = Backend::start("a");
    let tollgate = Tollgate::start_with(&app_body(&[&a], ""), "  admin: 127.0.0.1:0\n").await;
    let api = Api::of(&tollgate, None);
    let weight = |upstream: &str, address: &str| {
        format!("/api/upstreams/{upstream}/backends/{address}/weight")
    };
    let cases = [
        (
            "POST",
            "/api/upstreams/nope/backends/127.0.0.1:1/drain".to_string(),
            None,
            404,
        ),
        (
            "POST",
            "/api/upstreams/app/backends/127.0.0.1:1/drain".to_string(),
            None,
            404,
        ),
        (
            "PUT",
            weight("app", &a.addr.to_string()),
            Some(r#"{"weight": 0}"#),
            400,
        ),
        (
            "PUT",
            weight("app", &a.addr.to_string()),
            Some(r#"{"weight": "x"}"#),
            400,
        ),
        (
            "PUT",
            weight("app", &a.addr.to_string()),
            Some("not json"),
            400,
        ),
        (
            "PUT",
            weight("nope", &a.addr.to_string()),
            Some(r#"{"weight": 2}"#),
            404,
        ),
        ("GET", "/api/nothing".to_string(), None, 404),
        ("GET", "/api/upstreams/nope".to_string(), None, 404),
        ("DELETE", "/api/reload".to_string(), None, 405),
        (
            "PUT",
            weight("app", &a.addr.to_string()),
            Some(&*"x".repeat(5000)),
            413,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (code, answer) = api.call(method, &path, body).await;
        assert_eq!(code, expected, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_there_is_one() {
    let a = Backend::start("a");
    let dir = temp_dir("admin-token");
    let token_file = write_file(&dir, "admin.token", "s3cret-token\n");
    let extra = format!(
        "  admin: 127.0.0.1:0\n  admin_token_file: {}\n",
        token_file.display()
    );
    let tollgate = Tollgate::start_with(&app_body(&[&a], ""), &extra).await;
    for token in [None, Some("wrong")] {
        let (code, answer) = Api::of(&tollgate, token)
            .call("GET", "/api/upstreams", None)
            .await;
        assert_eq!(code, 401, "{answer}");
        assert!(answer["error"].is_string());
    }
    let api = Api::of(&tollgate, Some("s3cret-token"));
    assert!(api.get("/api/upstreams").await["app"].is_object());
    // The page itself holds no data.
    let page = reqwest::get(format!("{}/", api.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_cannot_use_the_api() {
    let a = Backend::start("a");
    let tollgate = Tollgate::start_with(&app_body(&[&a], ""), "  admin: 127.0.0.1:0\n").await;
    let api = Api::of(&tollgate, None);
    let drain = format!("{}/api/upstreams/app/backends/{}/drain", api.base, a.addr);
    let client = reqwest::Client::new();
    let refused = [
        client.post(&drain).header("Origin", "https://evil.example"),
        client.post(&drain).header("Sec-Fetch-Site", "cross-site"),
        // A name rebound to 127.0.0.1 by another site's DNS.
        client.post(&drain).header("Host", "evil.example"),
    ];
    for request in refused {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(body["error"].is_string());
    }
    assert_eq!(
        api.get("/api/upstreams").await["app"]["backends"][0]["state"],
        "healthy"
    );
    let response = client
        .delete(format!("{}/api/reload", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token_file() {
    let text = "server:\n  listeners:\n    - address: 127.0.0.1:0\n  admin: 0.0.0.0:9092\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n";
    let check = check_topology(text);
    assert!(!check.ok);
    assert!(
        check.output.contains(":4:") && check.output.contains("admin_token_file"),
        "{}",
        check.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_drain_commands_use_the_api() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let tollgate = Tollgate::start_with(&app_body(&[&a, &b], ""), "  admin: 127.0.0.1:0\n").await;
    // The commands read server.admin from the file: give it the real port.
    let admin = tollgate.reported("server.admin");
    let config = tollgate.config_text();
    tollgate.rewrite_config(&config.replace("admin: 127.0.0.1:0", &format!("admin: {admin}")));
    let (ok, table) = tollgate.command(&["status"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("UPSTREAM") && table.contains(&a.addr.to_string()),
        "{table}"
    );
    assert!(table.contains("healthy"), "{table}");
    let (ok, out) = tollgate.command(&["drain", &b.addr.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("app") && out.contains("drained"), "{out}");
    let (_, table) = tollgate.command(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&b.addr.to_string()) && l.contains("drained")),
        "{table}"
    );
    let (ok, out) = tollgate.command(&["undrain", &b.addr.to_string(), "--upstream", "app"]);
    assert!(ok && out.contains("healthy"), "{out}");
    let (ok, out) = tollgate.command(&["drain", "127.0.0.1:1"]);
    assert!(!ok && out.contains("no upstream has a backend"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_admin_clients_do_not_slow_the_proxy() {
    let a = Backend::start("a");
    let tollgate = Tollgate::start_with(&app_body(&[&a], ""), "  admin: 127.0.0.1:0\n").await;
    let admin = tollgate.reported("server.admin");
    // Fifty admin connections that never finish their request head.
    let mut stuck = Vec::new();
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            b"GET /api/status HTTP/1.1\r\nHost: x\r\n",
        )
        .await
        .unwrap();
        stuck.push(stream);
    }
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    for _ in 0..100 {
        assert_eq!(get(&client, &tollgate.url("/x")).await.unwrap().0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_caches_and_drains_until_a_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let dir = temp_dir("admin-certs");
    let (cert, key, _) = common::tls::self_signed_files(&dir, "site", &["shop.test"]);
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n    - address: 127.0.0.1:0\n      tls:\n        certificates:\n          - {{cert: {}, key: {}}}\n  metrics: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  access_log: off\n  pid_file: {pid}\n  upgrade_sock: {sock}\ncaches:\n  pages: {{memory: 1MiB, default_ttl: {{200: 1h}}}}\nupstreams:\n  app:\n    backends:\n{}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    cache: pages\n",
        cert.display(),
        key.display(),
        backend_list(&[&a, &b]),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    );
    let tollgate = Tollgate::launch_reported(dir.clone(), &config, &[]).await;
    let api = Api::of(&tollgate, None);
    let client = reqwest::Client::new();
    client.get(tollgate.url("/cached")).send().await.unwrap();
    let status = api.get("/api/status").await;
    let certificates = status["certificates"].as_array().unwrap();
    assert!(
        certificates.iter().any(|c| c["name"] == "shop.test"
            && c["source"] == "file"
            && c["expires"].as_f64() > Some(1.7e9)),
        "{status}"
    );
    let caches = status["caches"].as_array().unwrap();
    assert!(
        caches.iter().any(|c| c["name"] == "pages"
            && c["tier"] == "memory"
            && c["entries"].as_f64() >= Some(1.0)),
        "{status}"
    );
    // A drain lasts until the next reload.
    let drain = format!("/api/upstreams/app/backends/{}/drain", b.addr);
    assert_eq!(api.call("POST", &drain, None).await.0, 200);
    assert_eq!(
        api.get("/api/upstreams").await["app"]["backends"][1]["state"],
        "drained"
    );
    assert_eq!(api.call("POST", "/api/reload", None).await.0, 200);
    assert_eq!(
        api.get("/api/upstreams").await["app"]["backends"][1]["state"],
        "healthy"
    );
    let weight = format!("/api/upstreams/app/backends/{}/weight", a.addr);
    assert_eq!(
        api.call("PUT", &weight, Some(r#"{"weight": 2}"#)).await.0,
        200
    );
    assert!(
        tollgate.stderr().contains(&format!(
            "admin: backend {} of upstream app set to weight 2 by 127.0.0.1:",
            a.addr
        )),
        "{}",
        tollgate.stderr()
    );
}

#[test]
fn a_bare_admin_port_is_on_loopback() {
    let text = "server:\n  listeners:\n    - address: 127.0.0.1:0\n  admin: 9092\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n";
    let check = check_topology(text);
    assert!(check.ok, "{}", check.output);
}
