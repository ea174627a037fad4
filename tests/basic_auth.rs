//! `basic` auth from an htpasswd file written by Apache's `htpasswd`: bcrypt
//! entries (`-B`) pass, MD5, SHA-1 and plain-text ones are refused at load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn topology(users_file: &Path, backend: &Backend) -> String {
    TopologyBody::new()
        .upstream("app", &[backend.addr], "")
        .section(&format!(
            "auth:
  staff:
    basic:
      users_file: {}
      realm: Staff area
      user_header: X-User
rate_limits:
  per_user:
    key: auth_subject
    rate: 1/m
    burst: 1
",
            users_file.display()
        ))
        .route("/staff/", "app", "    auth: staff\n")
        .route(
            "/limited/",
            "app",
            "    auth: staff\n    rate_limit: per_user\n",
        )
        .yaml()
}

/// (status, WWW-Authenticate, the X-User the backend saw).
async fn call(
    tollgate: &Tollgate,
    path: &str,
    user: Option<(&str, &str)>,
) -> (u16, String, String) {
    let mut request = reqwest::Client::new()
        .get(tollgate.url(path))
        .header("X-User", "forged");
    if let Some((user, password)) = user {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let seen: Value = response.json().await.unwrap_or(Value::Null);
    let user = seen["headers"]["x-user"].as_str().unwrap_or("").to_string();
    (status, challenge, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_the_htpasswd_file_pass_with_their_name() {
    let dir = temp_dir("basic-auth");
    let users = write_file(
        &dir,
        "htpasswd",
        &format!(
            "# staff of the shop\n{}\n\n{}\n",
            htpasswd_line("-B", "alice", "correct horse"),
            htpasswd_line("-B", "bob", "battery staple")
        ),
    );
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&topology(&users, &backend)).await;
    let challenge = "Basic realm=\"Staff area\", charset=\"UTF-8\"";

    assert_eq!(
        call(&tollgate, "/staff/1", None).await,
        (401, challenge.into(), String::new())
    );
    for wrong in [
        ("alice", "battery staple"),
        ("carol", "correct horse"),
        ("alice", ""),
    ] {
        let (status, sent, _) = call(&tollgate, "/staff/1", Some(wrong)).await;
        assert_eq!((status, sent.as_str()), (401, challenge), "{wrong:?}");
    }
    for _ in 0..2 {
        // The second time alice's password is remembered, not checked again.
        let answer = call(&tollgate, "/staff/1", Some(("alice", "correct horse"))).await;
        assert_eq!(answer, (200, String::new(), "alice".into()));
    }
    let bob = call(&tollgate, "/staff/1", Some(("bob", "battery staple"))).await;
    assert_eq!(bob, (200, String::new(), "bob".into()));

    // Rate limits by auth_subject count each user apart.
    for _ in 0..2 {
        let (status, _, _) = call(&tollgate, "/limited/1", Some(("alice", "correct horse"))).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = call(&tollgate, "/limited/1", Some(("alice", "correct horse"))).await;
    assert_eq!(status, 429, "alice's third request in a minute (burst 1)");
    let (status, _, _) = call(&tollgate, "/limited/1", Some(("bob", "battery staple"))).await;
    assert_eq!(status, 200, "bob has a bucket of his own");

    let metrics = tollgate.metrics().await;
    let rejected = |reason| {
        metric_value(
            &metrics,
            "tollgate_auth_rejections_total",
            &[("policy", "staff"), ("reason", reason)],
        )
    };
    assert_eq!(rejected("missing_credentials"), Some(1.0));
    assert_eq!(rejected("invalid_credentials"), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_users_file_again() {
    let dir = temp_dir("basic-reload");
    let users = write_file(&dir, "htpasswd", &htpasswd_line("-B", "alice", "old"));
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&topology(&users, &backend)).await;
    let (status, _, _) = call(&tollgate, "/staff/1", Some(("alice", "old"))).await;
    assert_eq!(status, 200);

    std::fs::write(&users, htpasswd_line("-B", "alice", "new")).unwrap();
    tollgate.signal(libc::SIGHUP);
    let changed = wait_until(Duration::from_secs(10), || async {
        call(&tollgate, "/staff/1", Some(("alice", "new"))).await.0 == 200
    })
    .await;
    assert!(changed, "the new password is not accepted after the reload");
    let (status, _, _) = call(&tollgate, "/staff/1", Some(("alice", "old"))).await;
    assert_eq!(status, 401, "the old password is still remembered");
}

#[test]
fn bad_users_files_are_config_errors_naming_file_and_line() {
    let dir = temp_dir("basic-check");
    let backend = "127.0.0.1:9";
    for (name, text, line, says) in [
        (
            "not-a-line",
            format!("# staff\n{}\nalice\n", htpasswd_line("-B", "bob", "pw")),
            3,
            "expected `user:hash`",
        ),
        (
            "md5",
            format!("{}\n", htpasswd_line("-m", "alice", "pw")),
            1,
            "too weak",
        ),
        (
            "sha1",
            format!("\n{}\n", htpasswd_line("-s", "alice", "pw")),
            2,
            "too weak",
        ),
        (
            "plain",
            format!("{}\n", htpasswd_line("-p", "alice", "pw")),
            1,
            "too weak",
        ),
    ] {
        let file = write_file(&dir, name, &text);
        let check = check_topology(&format!(
            "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    backends: [{{address: {backend}}}]\nauth:\n  staff:\n    basic:\n      users_file: {}\nroutes:\n  - match: {{path_prefix: /}}\n    upstream: app\n    auth: staff\n",
            file.display()
        ));
        assert!(!check.ok, "{name} accepted");
        let expected = format!("{}:{line}:", file.display());
        assert!(
            check.output.contains(&expected) && check.output.contains(says),
            "{name}: {}",
            check.output
        );
        assert!(
            check.output.contains("auth.staff.basic.users_file"),
            "{}",
            check.output
        );
    }
    let missing = check_topology(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nauth:\n  staff:\n    basic:\n      users_file: /nonexistent/htpasswd\n      realm: 'a \"quoted\" realm'\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n    auth: staff\n",
    );
    assert!(!missing.ok);
    assert!(
        missing.output.contains("auth.staff.basic.realm"),
        "{}",
        missing.output
    );
}
