//! Several tollgate instances as one: `scope: cluster` rate limits shared
//! through a real `redis-server` (with an ACL user, as `user:pass@`), Redis
//! killed and restarted under traffic, and the `on_store_error` choices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server on loopback whose only user is `tollgate` / `secret`.
struct Redis {
    child: Option<Child>,
    port: u16,
    /// `--tls-*` arguments, when it speaks TLS only.
    tls: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        Self::start_with(Vec::new())
    }

    /// A Redis that speaks only TLS, with a certificate for 127.0.0.1 signed
    /// by a CA of its own; returns it and the CA's PEM file.
    fn start_tls(dir: &std::path::Path) -> (Redis, std::path::PathBuf) {
        let ca = common::tls::TestCa::new();
        let (cert, key) = ca.leaf(&[], &["127.0.0.1".parse().unwrap()]);
        let ca_file = write_file(dir, "redis-ca.pem", &ca.pem);
        let path = |p: std::path::PathBuf| p.display().to_string();
        let tls = vec![
            "--tls-cert-file".to_string(),
            path(write_file(dir, "redis.crt", &cert)),
            "--tls-key-file".to_string(),
            path(write_file(dir, "redis.key", &key)),
            "--tls-ca-cert-file".to_string(),
            path(ca_file.clone()),
            "--tls-auth-clients".to_string(),
            "no".to_string(),
        ];
        (Self::start_with(tls), ca_file)
    }

    fn start_with(tls: Vec<String>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            child: None,
            port,
            tls,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.tls.is_empty() {
            ["--port", &port, "--tls-port", "0"]
        } else {
            ["--port", "0", "--tls-port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(&self.tls)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .args(["--user", "default", "off"])
            .args(["--user", "tollgate", "on", ">secret", "~*", "&*", "+@all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is needed");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://tollgate:secret@127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Upstream `app` on `backend`; `/limited/` shares the limit `shared`
/// (`burst + 1` = 10 requests, refilling one a minute) among instances.
fn topology(backend: &Backend, on_store_error: &str) -> String {
    TopologyBody::new()
        .upstream("app", &[backend.addr], "")
        .section(&format!(
            "rate_limits:\n  shared:\n    key: global\n    rate: 1/m\n    burst: 9\n    scope: cluster\n    on_store_error: {on_store_error}\n  roomy:\n    key: client_ip\n    rate: 100000/s\n    burst: 100000\n    scope: cluster\n"
        ))
        .route("/limited/", "app", "    rate_limit: shared\n")
        .route("/busy/", "app", "    rate_limit: roomy\n")
        .yaml()
}

async fn start_instances(n: usize, redis_url: &str, body: &str) -> Vec<Tollgate> {
    // Generous for a loaded CI machine: a first request connects, logs in
    // and loads the script. The 50 ms default is for production.
    let server = format!("  cluster: {{redis: '{redis_url}', timeout: 500ms}}\n");
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(Tollgate::start_with(body, &server).await);
    }
    instances
}

/// GETs `/limited/x` from each instance in turn, `rounds` times; the
/// statuses by instance.
async fn round_robin(instances: &[Tollgate], rounds: usize) -> Vec<Vec<u16>> {
    let client = reqwest::Client::new();
    let mut statuses = vec![Vec::new(); instances.len()];
    for _ in 0..rounds {
        for (i, tollgate) in instances.iter().enumerate() {
            let response = client.get(tollgate.url("/limited/x")).send().await.unwrap();
            statuses[i].push(response.status().as_u16());
        }
    }
    statuses
}

fn passed(statuses: &[Vec<u16>]) -> usize {
    statuses.iter().flatten().filter(|&&s| s == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_together_what_one_would() {
    let redis = Redis::start();
    let backend = Backend::start("app");
    let instances = start_instances(3, &redis.url(), &topology(&backend, "local")).await;
    // Concurrently from every instance: 60 requests for a bucket of 10.
    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for _ in 0..20 {
        for tollgate in &instances {
            let url = tollgate.url("/limited/x");
            let client = client.clone();
            requests.push(tokio::spawn(async move {
                client.get(url).send().await.unwrap().status().as_u16()
            }));
        }
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(passed, 10, "{statuses:?}");
    for tollgate in &instances {
        let errors = tollgate
            .metric(
                "tollgate_rate_limit_store_errors_total",
                &[("policy", "shared")],
            )
            .await;
        assert_eq!(errors, None, "the store failed:\n{}", tollgate.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_local_buckets_and_shared_limits_resume() {
    let mut redis = Redis::start();
    let backend = Backend::start("app");
    let instances = start_instances(2, &redis.url(), &topology(&backend, "local")).await;
    // Steady traffic on a roomy cluster limit all along: no request fails
    // while Redis goes away and comes back.
    let load = SteadyLoad::start(instances[1].url("/busy/x"), 2);
    assert!(load.wait_answered(20).await);
    assert_eq!(passed(&round_robin(&instances, 2).await), 4);

    // Redis gone: each instance's own bucket (10 each) decides, at once.
    redis.kill();
    let started = Instant::now();
    let statuses = round_robin(&instances, 12).await;
    let per_request = started.elapsed() / 24;
    assert_eq!(passed(&statuses), 20, "{statuses:?}");
    assert!(
        per_request < Duration::from_millis(100),
        "requests waited on the store: {per_request:?}"
    );
    let errors = instances[0]
        .metric(
            "tollgate_rate_limit_store_errors_total",
            &[("policy", "shared")],
        )
        .await;
    assert!(errors >= Some(12.0), "{errors:?}");
    assert!(instances[0]
        .stderr()
        .contains("the rate-limit store does not answer"));

    // Redis back (empty): shared limiting resumes by itself. Instance 0
    // spends the new shared bucket; instance 1, whose own bucket is empty
    // too, is refused by the shared one.
    redis.spawn();
    let client = reqwest::Client::new();
    let first = &instances[0];
    let errors_now = || async {
        metric_value(
            &first.metrics().await,
            "tollgate_rate_limit_store_errors_total",
            &[],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut resumed = false;
    while !resumed && Instant::now() < deadline {
        let before = errors_now().await;
        let _ = client.get(first.url("/limited/x")).send().await;
        resumed = errors_now().await == before;
        if !resumed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        resumed,
        "the store was not used again:\n{}",
        instances[0].stderr()
    );
    // Instance 1's own bucket is spent: what passes now passes by the shared
    // bucket, which then runs out too.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let status = client
            .get(instances[1].url("/limited/x"))
            .send()
            .await
            .unwrap()
            .status();
        statuses.push(status.as_u16());
    }
    assert!(
        statuses.contains(&200) && statuses.last() == Some(&429),
        "instance 1 is not limited by the shared bucket: {statuses:?}"
    );
    assert!(load.wait_answered(20).await);
    load.stop().await.assert_no_failure(40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_requests_no_more_than_the_store_timeout() {
    let redis = Redis::start();
    let backend = Backend::start("app");
    let server = format!("  cluster: {{redis: '{}', timeout: 100ms}}\n", redis.url());
    let instances = vec![Tollgate::start_with(&topology(&backend, "allow"), &server).await];
    assert_eq!(passed(&round_robin(&instances, 1).await), 1);
    // Redis stops answering for 3 s (it is busy, not gone).
    let sleeping = std::thread::spawn({
        let port = redis.port.to_string();
        move || {
            Command::new("redis-cli")
                .args([
                    "-p",
                    &port,
                    "--user",
                    "tollgate",
                    "--pass",
                    "secret",
                    "--no-auth-warning",
                ])
                .args(["DEBUG", "SLEEP", "3"])
                .output()
        }
    });
    let busy = wait_until(Duration::from_secs(5), || async {
        let reply = Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "--user",
                "tollgate",
                "--pass",
                "secret",
            ])
            .args(["--no-auth-warning", "PING"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // A PING that is not answered at once: Redis sleeps.
        std::thread::sleep(Duration::from_millis(200));
        let mut reply = reply;
        let asleep = reply.try_wait().unwrap().is_none();
        let _ = reply.kill();
        let _ = reply.wait();
        asleep
    })
    .await;
    assert!(busy, "Redis never slept");
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let started = Instant::now();
        let status = client
            .get(instances[0].url("/limited/x"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "on_store_error: allow");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a request waited {:?} on a slow Redis",
            started.elapsed()
        );
    }
    let errors = instances[0]
        .metric(
            "tollgate_rate_limit_store_errors_total",
            &[("policy", "shared")],
        )
        .await;
    assert!(errors >= Some(5.0), "{errors:?}");
    let _ = sleeping.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_store_error_allow_and_deny_decide_without_a_store() {
    // Nothing listens where this store should be.
    let nowhere = DeadAddress::new();
    let url = format!("redis://tollgate:secret@{}/0", nowhere.addr);
    let backend = Backend::start("app");
    let allow = start_instances(1, &url, &topology(&backend, "allow")).await;
    assert_eq!(
        passed(&round_robin(&allow, 15).await),
        15,
        "allow lets every request pass"
    );
    let deny = start_instances(1, &url, &topology(&backend, "deny")).await;
    assert_eq!(
        passed(&round_robin(&deny, 5).await),
        0,
        "deny refuses every request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_is_shared_the_same() {
    let dir = temp_dir("redis-tls");
    let (redis, ca_file) = Redis::start_tls(&dir);
    let backend = Backend::start("app");
    let server = format!(
        "  cluster: {{redis: '{}', timeout: 200ms, ca_roots: {}}}\n",
        redis.url(),
        ca_file.display()
    );
    let body = topology(&backend, "allow");
    let instances = vec![
        Tollgate::start_with(&body, &server).await,
        Tollgate::start_with(&body, &server).await,
    ];
    // `allow` would let every request pass without the store.
    assert_eq!(passed(&round_robin(&instances, 10).await), 10);
}

#[test]
fn cluster_limits_need_a_store() {
    let check = check_topology(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nrate_limits:\n  shared: {key: global, rate: 1/s, burst: 1, scope: cluster}\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n    rate_limit: shared\n",
    );
    assert!(!check.ok);
    assert!(
        check.output.contains("rate_limits.shared.scope"),
        "{}",
        check.output
    );
    let check = check_topology(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  cluster: {redis: 'http://nope'}\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n",
    );
    assert!(!check.ok);
    assert!(
        check.output.contains("server.cluster.redis"),
        "{}",
        check.output
    );
    // Redis's clock counts microseconds: a faster shared rate is refused
    // rather than silently made stricter.
    let check = check_topology(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  cluster: {redis: 'redis://127.0.0.1:9'}\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nrate_limits:\n  shared: {key: global, rate: 2000000/s, burst: 1, scope: cluster}\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n    rate_limit: shared\n",
    );
    assert!(!check.ok);
    assert!(
        check.output.contains("rate_limits.shared.rate") && check.output.contains("1000000/s"),
        "{}",
        check.output
    );
}
