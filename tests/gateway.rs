//! The API gateway of the tutorial set-up tollgate replaces nginx in:
//! config/gateway.yaml itself (with test ports) in front of the tutorial's own
//! services, run for real (examples/gateway: Flask, an auth service issuing HS256
//! tokens and two product-service replicas that trust X-Auth-User/X-Auth-Role).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

struct Gateway {
    tollgate: Tollgate,
    auth: Backend,
    products: [Backend; 2],
}

/// config/gateway.yaml with its addresses moved to ports this test picked, and
/// `edit` applied to the text.
async fn gateway_with(auth_args: &[&str], edit: impl Fn(String) -> String) -> Gateway {
    let auth = Backend::start_script("auth", "examples/gateway/auth_service.py", auth_args);
    let auth_url = format!("http://{}", auth.addr);
    let product = |name: &str| {
        Backend::start_script(
            name,
            "examples/gateway/product_service.py",
            &["--name", name, "--auth", &auth_url],
        )
    };
    let products = [product("product-1"), product("product-2")];
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.yaml"))
        .expect("config/gateway.yaml")
        .replace("127.0.0.1:7000", &auth.addr.to_string())
        .replace("127.0.0.1:9001", &products[0].addr.to_string())
        .replace("127.0.0.1:9002", &products[1].addr.to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9091", "127.0.0.1:0")
        .replace("access_log: stdout", "access_log: off");
    let tollgate = Tollgate::launch_reported(temp_dir("gateway"), &edit(text), &[]).await;
    Gateway {
        tollgate,
        auth,
        products,
    }
}

async fn gateway() -> Gateway {
    gateway_with(&[], |t| t).await
}

/// `POST /public/auth/login` with Basic credentials, through the gateway.
async fn login(gw: &Gateway, user: &str, password: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(gw.tollgate.url("/public/auth/login"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["token"].as_str().expect("a token").to_string()
}

/// GETs `path` with `token` (when given) and `headers`: (status, JSON body).
async fn call(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(gw.tollgate.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn rejections(gw: &Gateway, reason: &str) -> Option<f64> {
    gw.tollgate
        .metric(
            "tollgate_auth_rejections_total",
            &[
                ("route", "protected"),
                ("policy", "users"),
                ("reason", reason),
            ],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_flow_through_the_gateway() {
    let gw = gateway().await;
    let admin = login(&gw, "admin", "admin-password").await;
    let gues = login(&gw, "gues", "gues-password").await;

    let (status, list) = call(&gw, "/public/product/all", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(list["products"].as_array().map(Vec::len), Some(3));

    // admin: the service sees who the auth service says the token is.
    let (status, product) = call(&gw, "/protected/product/1/", Some(&admin), &[]).await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(
        (product["user"].as_str(), product["role"].as_str()),
        (Some("admin"), Some("admin"))
    );

    // gues: authenticated, but the service's own authorization says no.
    let (status, answer) = call(&gw, "/protected/product/1/", Some(&gues), &[]).await;
    assert_eq!(
        (status, &answer["message"]),
        (403, &Value::from("Forbidden"))
    );

    // No token: 401 from tollgate itself, without asking the auth service.
    let (status, answer) = call(&gw, "/protected/product/1/", None, &[]).await;
    assert_eq!(
        (status, &answer),
        (401, &serde_json::json!({"message": "Unauthorized"}))
    );
    assert!(
        gw.tollgate
            .metric_reaches(
                "tollgate_auth_rejections_total",
                &[("policy", "users"), ("reason", "missing_credentials")],
                1.0
            )
            .await
    );
    // A bad token: the auth service's 400 means 401.
    let (status, answer) = call(&gw, "/protected/product/1/", Some("not-a-token"), &[]).await;
    assert_eq!(
        (status, &answer),
        (401, &serde_json::json!({"message": "Unauthorized"}))
    );
    assert_eq!(rejections(&gw, "denied").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_clients_are_never_believed() {
    let gw = gateway().await;
    let gues = login(&gw, "gues", "gues-password").await;
    for forged in [
        [("X-Auth-User", "admin"), ("X-Auth-Role", "admin")],
        [("X_Auth_User", "admin"), ("X_Auth_Role", "admin")],
    ] {
        let (status, _) = call(&gw, "/protected/product/1/", Some(&gues), &forged).await;
        assert_eq!(
            status, 403,
            "{forged:?} stood in for the gateway's identity"
        );
        let (status, _) = call(&gw, "/protected/product/1/", None, &forged).await;
        assert_eq!(status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_401() {
    let gw = gateway_with(&["--token-ttl", "1"], |t| t.replace("      cache: 10s", "")).await;
    let admin = login(&gw, "admin", "admin-password").await;
    assert_eq!(
        call(&gw, "/protected/product/1/", Some(&admin), &[])
            .await
            .0,
        200
    );
    // PyJWT checks exp to the second.
    let expired = wait_until(Duration::from_secs(5), || async {
        call(&gw, "/protected/product/1/", Some(&admin), &[])
            .await
            .0
            == 401
    })
    .await;
    assert!(expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_traffic_fails_no_request() {
    // A limit far above what the load sends: this is about failover.
    let mut gw = gateway_with(&[], |t| t.replace("rate: 10/s", "rate: 100000/s")).await;
    let load = SteadyLoad::start(gw.tollgate.url("/public/product/all"), 4);
    let both = wait_until(Duration::from_secs(5), || async {
        let seen = load.last_backends(20);
        seen.iter().any(|b| b == "product-1") && seen.iter().any(|b| b == "product-2")
    })
    .await;
    assert!(both, "both replicas should serve");
    gw.products[0].kill();
    let moved = wait_until(Duration::from_secs(5), || async {
        let seen = load.last_backends(20);
        seen.len() == 20 && seen.iter().all(|b| b == "product-2")
    })
    .await;
    assert!(moved, "traffic should move to product-2");
    let more = wait_until(Duration::from_secs(10), || async {
        load.last_backends(200).len() == 200
    })
    .await;
    assert!(more);
    load.stop().await.assert_no_failure(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_auth_service_is_served_at_once() {
    let mut gw = gateway().await;
    gw.auth.kill();
    let client = reqwest::Client::new();
    let login = || {
        client
            .post(gw.tollgate.url("/public/auth/login"))
            .basic_auth("admin", Some("admin-password"))
            .send()
    };
    assert_eq!(login().await.unwrap().status(), 502);
    gw.auth.restart();
    // Its only backend was never taken out: no wait for fail_timeout.
    let asked = Instant::now();
    assert_eq!(login().await.unwrap().status(), 200);
    assert!(asked.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_down_slow_or_wrong_means_503() {
    let mut gw = gateway().await;
    let admin = login(&gw, "admin", "admin-password").await;
    // Both replicas learn the admin role's permissions while the service is up.
    for _ in 0..2 {
        let (status, _) = call(&gw, "/protected/product/1/", Some(&admin), &[]).await;
        assert_eq!(status, 200);
    }
    gw.auth.kill();
    // gateway.yaml caches positive answers for 10s: the known token still passes...
    assert_eq!(
        call(&gw, "/protected/product/2/", Some(&admin), &[])
            .await
            .0,
        200
    );
    // ...but nothing else does while the auth service is down.
    let (status, answer) = call(&gw, "/protected/product/1/", Some("another-token"), &[]).await;
    assert_eq!(
        (status, &answer["message"]),
        (503, &Value::from("Service Unavailable"))
    );

    // An answer that is neither 2xx nor a refusal (the service's 404 for an
    // endpoint it lacks) does not let the request pass either.
    let wrong = gateway_with(&[], |t| t.replace("/token/info", "/no-such-endpoint")).await;
    assert_eq!(
        call(&wrong, "/protected/product/1/", Some("x"), &[])
            .await
            .0,
        503
    );
    assert_eq!(rejections(&wrong, "unavailable").await, Some(1.0));

    // An auth service that does not answer in time: 503 after `timeout`.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // (It accepts connections and never answers.)
    let slow = gateway_with(&[], move |t| {
        let auth_line = t.lines().find(|l| l.contains("url: http://")).unwrap();
        let url = format!("      url: http://{silent_addr}/public/auth/token/info");
        t.replace(auth_line, &url)
            .replace("      timeout: 1s\n", "      timeout: 300ms\n")
    })
    .await;
    let asked = Instant::now();
    assert_eq!(
        call(&slow, "/protected/product/1/", Some("x"), &[]).await.0,
        503
    );
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "auth timeout not applied: {:?}",
        asked.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_on_its_own_origin_may_call_the_api() {
    const APP: &str = "http://localhost:3000";
    let gw = gateway().await;
    let client = reqwest::Client::new();
    // The browser's preflight for a GET with the bearer token: answered by
    // tollgate, the auth service and the products not asked.
    for _ in 0..3 {
        let preflight = client
            .request(
                reqwest::Method::OPTIONS,
                gw.tollgate.url("/protected/product/1/"),
            )
            .header("Origin", APP)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204);
        let headers = preflight.headers();
        assert_eq!(headers["access-control-allow-origin"], APP);
        assert_eq!(headers["access-control-allow-headers"], "Authorization");
        assert_eq!(headers["access-control-max-age"], "600");
    }
    let metrics = gw.tollgate.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_upstream_requests_total",
            &[("upstream", "products")]
        ),
        None,
        "a preflight reached the products"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_auth_rejections_total",
            &[("policy", "users")]
        ),
        None,
        "a preflight was put to the auth policy"
    );
    // The real request: the app reads the answer, and the 401 without a token.
    let admin = login(&gw, "admin", "admin-password").await;
    let answer = client
        .get(gw.tollgate.url("/protected/product/1/"))
        .header("Origin", APP)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], APP);
    assert_eq!(
        answer.headers()["access-control-expose-headers"],
        "RateLimit-Remaining, Retry-After"
    );
    assert!(answer
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v == "Origin"));
    let refused = client
        .get(gw.tollgate.url("/protected/product/1/"))
        .header("Origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], APP);
    // Another site's pages get no allow header.
    let elsewhere = client
        .get(gw.tollgate.url("/public/product/all"))
        .header("Origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);
    assert!(!elsewhere
        .headers()
        .contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_gateway_carries_a_request_id() {
    let gw = gateway().await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (path, status) in [("/public/product/all", 200), ("/protected/product/1/", 401)] {
        let answer = client.get(gw.tollgate.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), status, "{path}");
        let id = answer.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{path}: {id}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}
