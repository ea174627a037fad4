//! `algorithm: hash` over real backends: each `hash_key` form keeps a key on
//! its backend (across reloads too) and spreads keys over the backends (a
//! header an auth policy sets is read as the backend gets it); a
//! request without the key goes round robin; a down backend's keys move and
//! come back, as do a drained backend's; adding or removing one backend moves
//! about 1/N of the keys; and a bad `hash_key` is refused at its line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// An upstream `app` over `backends` hashing by `key`, with `extra` lines,
/// every path to it.
fn hashing_body(backends: &[&Backend], key: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    algorithm: hash\n    hash_key: \"{key}\"\n    backends:\n{}{extra}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n",
        backend_list(backends)
    )
}

/// The backend that answers GET `path` with `headers`.
async fn backend_of(
    client: &reqwest::Client,
    tollgate: &Tollgate,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut request = client.get(tollgate.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("an answer");
    assert_eq!(response.status(), 200, "{path} {headers:?}");
    response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .expect("X-Backend")
        .to_string()
}

/// The backend of each of `users` (as `X-User`), asked 8 at a time.
async fn users_backends(tollgate: &Tollgate, users: &[String]) -> HashMap<String, String> {
    let client = reqwest::Client::new();
    let mut assignment = HashMap::new();
    for chunk in users.chunks(users.len().div_ceil(8)) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|user| {
                let (client, url, user) = (client.clone(), tollgate.url("/"), user.clone());
                tokio::spawn(async move {
                    let response = client.get(url).header("x-user", &user).send().await;
                    let response = response.expect("an answer");
                    assert_eq!(response.status(), 200, "user {user}");
                    let backend = response.headers().get("x-backend").cloned();
                    (
                        user,
                        backend.expect("X-Backend").to_str().unwrap().to_string(),
                    )
                })
            })
            .collect();
        for task in tasks {
            let (user, backend) = task.await.unwrap();
            assignment.insert(user, backend);
        }
    }
    assignment
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Rewrites tollgate's topology below `server:` to `body`, signals a reload
/// and waits until it is the `count`th successful one.
async fn reload(tollgate: &Tollgate, body: &str, count: f64) {
    let current = tollgate.config_text();
    let server_part = current.split("upstreams:").next().unwrap_or(&current);
    tollgate.rewrite_config(&format!("{server_part}{body}"));
    tollgate.signal(libc::SIGHUP);
    let reloaded = tollgate
        .metric_reaches(
            "tollgate_config_reloads_total",
            &[("result", "success")],
            count,
        )
        .await;
    assert!(reloaded, "reload {count} failed:\n{}", tollgate.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keeps_its_backend_across_requests_and_a_reload_and_values_spread() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start(&hashing_body(&all, "header:X-User", "")).await;
    let client = reqwest::Client::new();
    let keys = users(60);
    let before = users_backends(&tollgate, &keys).await;
    for user in keys.iter().take(10) {
        for _ in 0..10 {
            let again = backend_of(&client, &tollgate, "/x", &[("X-User", user)]).await;
            assert_eq!(again, before[user], "{user} moved between requests");
        }
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for backend in before.values() {
        *per_backend.entry(backend).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "60 users over 3 backends: {per_backend:?}"
    );
    assert!(
        per_backend.values().all(|&n| n >= 8),
        "60 users spread unevenly: {per_backend:?}"
    );

    // A reload that changes the routes, not the upstream, keeps every key.
    let body = hashing_body(&all, "header:X-User", "").replace(
        "routes:\n",
        "routes:\n  - match: {path: /healthz}\n    respond: {status: 200, body: ok}\n",
    );
    reload(&tollgate, &body, 1.0).await;
    assert_eq!(
        users_backends(&tollgate, &keys).await,
        before,
        "keys moved on reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_key_goes_round_robin() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start(&hashing_body(&all, "header:X-User", "")).await;
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..30 {
        // No header, an empty one, or another header: no key.
        let headers: &[(&str, &str)] = match i % 3 {
            0 => &[],
            1 => &[("X-User", "")],
            _ => &[("X-Other", "user-1")],
        };
        *counts
            .entry(backend_of(&client, &tollgate, "/", headers).await)
            .or_default() += 1;
    }
    let expected: HashMap<String, usize> = ["a", "b", "c"].map(|b| (b.to_string(), 10)).into();
    assert_eq!(counts, expected, "30 key-less requests over 3 backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_path_and_uri_keys() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let hashing = |key: &str| format!("    algorithm: hash\n    hash_key: \"{key}\"\n");
    let body = TopologyBody::new()
        .upstream("by_cookie", &addrs, &hashing("cookie:sid"))
        .upstream("by_path", &addrs, &hashing("path"))
        .upstream("by_uri", &addrs, &hashing("uri"))
        .route("/c/", "by_cookie", "")
        .route("/p/", "by_path", "")
        .route("/u/", "by_uri", "")
        .yaml();
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();

    // cookie:sid: the value of `sid` among other cookies, in any place.
    let mut cookie_backends = HashSet::new();
    for i in 0..30 {
        let sid = format!("s{i}");
        let first = backend_of(
            &client,
            &tollgate,
            "/c/",
            &[("Cookie", &format!("sid={sid}"))],
        )
        .await;
        for cookie in [
            format!("theme=dark; sid={sid}"),
            format!("sid={sid};lang=en"),
            format!("a=1;  sid={sid} ; b=2"),
        ] {
            let again = backend_of(&client, &tollgate, "/c/x", &[("Cookie", &cookie)]).await;
            assert_eq!(again, first, "{cookie}");
        }
        cookie_backends.insert(first);
    }
    assert_eq!(cookie_backends.len(), 3, "30 sessions over 3 backends");
    // A Cookie header without `sid` (or a cookie named `SID`) goes round robin.
    let mut rr = HashSet::new();
    for _ in 0..3 {
        rr.insert(backend_of(&client, &tollgate, "/c/", &[("Cookie", "SID=s1; xsid=s1")]).await);
    }
    assert_eq!(rr.len(), 3, "key-less cookie requests: {rr:?}");

    // path: the normalized path, whatever the query.
    let mut path_backends = HashSet::new();
    for i in 0..30 {
        let first = backend_of(&client, &tollgate, &format!("/p/item/{i}"), &[]).await;
        // (The client removes dot segments itself; escapes and slashes it sends as written.)
        for spelling in [
            format!("/p/item/{i}?q={i}"),
            format!("/p/%69tem//{i}"),
            format!("/p//item/{i}?other"),
        ] {
            let again = backend_of(&client, &tollgate, &spelling, &[]).await;
            assert_eq!(again, first, "{spelling}");
        }
        path_backends.insert(first);
    }
    assert_eq!(path_backends.len(), 3, "30 paths over 3 backends");

    // uri: the path and the query, so one path with many queries spreads.
    let mut uri_backends = HashSet::new();
    for i in 0..30 {
        let uri = format!("/u/search?q={i}");
        let first = backend_of(&client, &tollgate, &uri, &[]).await;
        let again = backend_of(&client, &tollgate, &uri, &[]).await;
        assert_eq!(again, first, "{uri}");
        uri_backends.insert(first);
    }
    assert_eq!(
        uri_backends.len(),
        3,
        "30 queries of one path over 3 backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backends_keys_move_to_the_others_and_come_back() {
    let mut backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
        Backend::start("d"),
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let health = "    health_check:\n      tcp: {}\n      interval: 100ms\n      timeout: 100ms\n      healthy_threshold: 1\n      unhealthy_threshold: 1\n    passive: {max_fails: 0}\n";
    let tollgate = Tollgate::start(&hashing_body(&all, "header:X-User", health)).await;
    let keys = users(80);
    let before = users_backends(&tollgate, &keys).await;
    let on_d = before.values().filter(|b| *b == "d").count();
    assert!(on_d > 0, "no key on d: {before:?}");

    let d = backends[3].addr.to_string();
    let healthy_is = |value: f64| {
        let d = d.clone();
        let tollgate = &tollgate;
        async move {
            wait_until(Duration::from_secs(5), || async {
                tollgate
                    .metric("tollgate_upstream_backend_healthy", &[("backend", &d)])
                    .await
                    == Some(value)
            })
            .await
        }
    };
    backends[3].kill();
    assert!(
        healthy_is(0.0).await,
        "the killed backend was not taken out"
    );
    let down = users_backends(&tollgate, &keys).await;
    for user in &keys {
        if before[user] == "d" {
            assert_ne!(down[user], "d", "{user} stayed on the down backend");
        } else {
            assert_eq!(
                down[user], before[user],
                "{user} moved though its backend is up"
            );
        }
    }

    backends[3].restart();
    assert!(
        healthy_is(1.0).await,
        "the restarted backend did not come back"
    );
    let back = users_backends(&tollgate, &keys).await;
    assert_eq!(back, before, "keys did not return to their backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backends_keys_move_and_come_back_when_undrained() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let tollgate = Tollgate::start_with(
        &hashing_body(&all, "cookie:sid", ""),
        "  admin: 127.0.0.1:0\n",
    )
    .await;
    let admin = format!("http://{}", tollgate.reported("server.admin"));
    let client = reqwest::Client::new();
    let sessions: Vec<String> = (0..60).map(|i| format!("sid=s{i}")).collect();
    let assignment = || async {
        let mut seen = Vec::new();
        for cookie in &sessions {
            seen.push(backend_of(&client, &tollgate, "/", &[("Cookie", cookie)]).await);
        }
        seen
    };
    let before = assignment().await;
    assert!(
        before.iter().any(|b| b == "b"),
        "no session on b: {before:?}"
    );
    let upstreams: serde_json::Value = client
        .get(format!("{admin}/api/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upstreams["app"]["algorithm"], "hash");
    assert_eq!(upstreams["app"]["hash_key"], "cookie:sid");

    let action = |verb: &'static str| {
        let url = format!(
            "{admin}/api/upstreams/app/backends/{}/{verb}",
            backends[1].addr
        );
        let client = client.clone();
        async move {
            let response = client.post(url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{verb}");
        }
    };
    action("drain").await;
    let drained = assignment().await;
    for (was, now) in before.iter().zip(&drained) {
        if was == "b" {
            assert_ne!(now, "b", "a session stayed on the drained backend");
        } else {
            assert_eq!(now, was, "a session moved though its backend is in");
        }
    }
    action("undrain").await;
    assert_eq!(assignment().await, before, "sessions did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_the_auth_policy_sets_is_the_key_and_a_forged_one_is_none() {
    let backends = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let dir = temp_dir("htpasswd");
    let names: Vec<String> = (0..24).map(|i| format!("staff{i}")).collect();
    let lines: Vec<String> = names
        .iter()
        .map(|name| htpasswd_line("-B", name, "pw"))
        .collect();
    let users_file = write_file(&dir, "htpasswd", &(lines.join("\n") + "\n"));
    let body = hashing_body(&all, "header:X-User", "").replace(
        "routes:\n  - match: {path_prefix: /}\n    upstream: app\n",
        &format!(
            "auth:\n  staff:\n    basic:\n      users_file: {}\n      user_header: X-User\nroutes:\n  - match: {{path_prefix: /staff/}}\n    upstream: app\n    auth: staff\n  - match: {{path_prefix: /}}\n    upstream: app\n",
            users_file.display()
        ),
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    let mut staff_backends = HashSet::new();
    for name in &names {
        let mut seen = HashSet::new();
        for forged in ["someone", "else", "entirely"] {
            let response = client
                .get(tollgate.url("/staff/x"))
                .basic_auth(name, Some("pw"))
                .header("X-User", forged)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let backend = response.headers().get("x-backend").cloned().unwrap();
            seen.insert(backend.to_str().unwrap().to_string());
        }
        assert_eq!(
            seen.len(),
            1,
            "{name} moved with the X-User it forged: {seen:?}"
        );
        staff_backends.extend(seen);
    }
    assert_eq!(staff_backends.len(), 3, "24 users over 3 backends");

    // Without auth, a client's X-User never reaches a backend: it is no key.
    let mut open = HashSet::new();
    for _ in 0..3 {
        open.insert(backend_of(&client, &tollgate, "/open", &[("X-User", "staff1")]).await);
    }
    assert_eq!(open.len(), 3, "a forged X-User chose the backend: {open:?}");
}

/// The share of `keys` whose backend differs between `before` and `after`,
/// after checking that each moved to or from `changed` only.
fn moved_share(
    before: &HashMap<String, String>,
    after: &HashMap<String, String>,
    changed: &str,
) -> f64 {
    let mut moved = 0;
    for (key, was) in before {
        let now = &after[key];
        if now != was {
            assert!(
                now == changed || was == changed,
                "{key} moved from {was} to {now}, neither of them {changed}"
            );
            moved += 1;
        }
    }
    moved as f64 / before.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_or_removing_one_of_n_backends_moves_about_one_nth_of_the_keys() {
    const N: usize = 4;
    let backends: Vec<Backend> = (0..=N).map(|i| Backend::start(&format!("b{i}"))).collect();
    let first_n: Vec<&Backend> = backends[..N].iter().collect();
    let tollgate = Tollgate::start(&hashing_body(&first_n, "header:X-User", "")).await;
    let keys = users(2000);
    let with_n = users_backends(&tollgate, &keys).await;

    // Added: N + 1 backends; the keys that move all go to the new one.
    let all: Vec<&Backend> = backends.iter().collect();
    reload(&tollgate, &hashing_body(&all, "header:X-User", ""), 1.0).await;
    let with_added = users_backends(&tollgate, &keys).await;
    let added = moved_share(&with_n, &with_added, &backends[N].name);

    // Removed: b1 of the N + 1; only its keys move.
    let without_b1: Vec<&Backend> = all.iter().copied().filter(|b| b.name != "b1").collect();
    reload(
        &tollgate,
        &hashing_body(&without_b1, "header:X-User", ""),
        2.0,
    )
    .await;
    let with_removed = users_backends(&tollgate, &keys).await;
    let removed = moved_share(&with_added, &with_removed, "b1");

    let ideal = 1.0 / (N + 1) as f64;
    println!(
        "keys moved: {:.1}% when one backend joined {N} (ideal {:.1}%), {:.1}% when one of {} left (ideal {:.1}%)",
        added * 100.0,
        ideal * 100.0,
        removed * 100.0,
        N + 1,
        ideal * 100.0
    );
    for (what, share) in [("added", added), ("removed", removed)] {
        assert!(
            (0.5 * ideal..1.6 * ideal).contains(&share),
            "{what}: {share:.3} of the keys moved, ideal {ideal:.3}"
        );
    }
}

#[test]
fn a_bad_hash_key_is_refused_at_its_line() {
    let file = |upstream: &str| {
        format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:18080\nupstreams:\n  app:\n{upstream}    backends:\n      - address: 127.0.0.1:19001\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
        )
    };
    let cases = [
        (
            "    algorithm: hash\n    hash_key: query\n",
            7,
            "invalid hash_key `query`: expected client_ip, header:NAME, cookie:NAME, path or uri",
        ),
        (
            "    algorithm: hash\n    hash_key: \"header:X User\"\n",
            7,
            "invalid header name `X User` in hash_key",
        ),
        (
            "    algorithm: hash\n    hash_key: \"cookie:a=b\"\n",
            7,
            "invalid cookie name `a=b` in hash_key",
        ),
        (
            "    algorithm: hash\n",
            6,
            "algorithm hash needs `hash_key`",
        ),
        (
            "    algorithm: least_connections\n    hash_key: path\n",
            7,
            "hash_key is read only with `algorithm: hash`",
        ),
        (
            "    algorithm: hash\n    hash_key: path\n    slow_start: 30s\n",
            8,
            "hash does not ramp",
        ),
    ];
    for (upstream, line, words) in cases {
        let result = check_topology(&file(upstream));
        assert!(!result.ok, "accepted:\n{upstream}");
        let at = format!("{}:{line}:", result.file);
        assert!(
            result.output.contains(&at) && result.output.contains(words),
            "expected `{at}` and `{words}` in:\n{}",
            result.output
        );
    }
    let valid = check_topology(&file(
        "    algorithm: hash\n    hash_key: \"header:X-User\"\n",
    ));
    assert!(valid.ok, "{}", valid.output);
}
