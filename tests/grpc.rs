//! gRPC and HTTP/2 to backends: a Python gRPC server (grpcio) behind tollgate
//! over h2c and over TLS (`protocol: h2`), called by a Python gRPC client over
//! an `h2c` listener and over TLS h2; tollgate's own failures as gRPC errors;
//! deadlines; the standard gRPC health check; a backend killed mid-stream;
//! HTTP/1.1 on the h2c listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ECHO: &str = "/tollgate.test.Echo";

/// A self-signed certificate for `localhost` and 127.0.0.1 made with openssl,
/// served by the TLS backend and by tollgate's TLS listener.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
}

fn openssl_certificate(dir: &Path) -> Certificate {
    let (cert, key) = (dir.join("localhost.crt"), dir.join("localhost.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (make deps installs it)");
    assert!(status.success(), "openssl req failed");
    Certificate { cert, key }
}

/// `tests/python/grpc_server.py` named `name`, in cleartext or over TLS.
fn grpc_server(name: &str, tls: Option<&Certificate>) -> Backend {
    let mut args = vec!["--name".to_string(), name.to_string()];
    if let Some(tls) = tls {
        args.push("--tls".into());
        args.push(tls.cert.display().to_string());
        args.push(tls.key.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Backend::start_script(name, "tests/python/grpc_server.py", &args)
}

/// tollgate on `body` with two listeners: `[0]` plain with `h2c: true`,
/// `[1]` TLS with HTTP/2 (`cert`).
async fn tollgate(body: &str, cert: &Certificate) -> (Tollgate, SocketAddr) {
    let dir = temp_dir("tollgate");
    let config = format!(
        "server:
  threads: 2
  listeners:
    - address: 127.0.0.1:0
      h2c: true
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
        http2: true
  metrics: 127.0.0.1:0
  access_log: {log}
  access_log_format: json
  pid_file: {pid}
  upgrade_sock: {sock}
  grace_period: 1s
{body}",
        cert = cert.cert.display(),
        key = cert.key.display(),
        log = dir.join("access.log").display(),
        pid = dir.join("tollgate.pid").display(),
        sock = dir.join("upgrade.sock").display(),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let tls = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(tls).await;
    (tollgate, tls)
}

/// How a client reaches tollgate (or a backend).
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// The CA file that signs the server's certificate, for TLS.
    ca: Option<PathBuf>,
}

impl Target {
    fn h2c(addr: SocketAddr) -> Target {
        Target { addr, ca: None }
    }

    fn tls(addr: SocketAddr, cert: &Certificate) -> Target {
        Target {
            addr,
            ca: Some(cert.cert.clone()),
        }
    }

    /// The `grpc_client.py` command calling `method` with `data`.
    fn command(&self, method: &str, data: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(python());
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client.py"))
            .arg(self.addr.to_string())
            .arg(method)
            .arg(data)
            .args(extra);
        if let Some(ca) = &self.ca {
            command
                .arg("--ca")
                .arg(ca)
                .args(["--server-name", "localhost"]);
        }
        command
    }

    /// One call of `method` (unary, or server-streaming with `--stream` in
    /// `extra`) and its outcome.
    fn call(&self, method: &str, data: &str, extra: &[&str]) -> Call {
        let output = self
            .command(method, data, extra)
            .output()
            .expect("run grpc_client.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        Call::parse(stdout.lines()).unwrap_or_else(|| {
            panic!(
                "grpc_client.py gave no outcome:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// What a gRPC client saw of one call.
#[derive(Debug)]
struct Call {
    messages: Vec<String>,
    code: String,
    details: String,
    trailers: HashMap<String, String>,
}

impl Call {
    fn parse<'a>(lines: impl Iterator<Item = &'a str>) -> Option<Call> {
        let mut messages = Vec::new();
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            if let Some(message) = value["message"].as_str() {
                messages.push(message.to_string());
                continue;
            }
            let trailers = value["trailers"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            return Some(Call {
                messages,
                code: value["code"].as_str()?.to_string(),
                details: value["details"].as_str()?.to_string(),
                trailers,
            });
        }
        None
    }

    fn assert_code(&self, code: &str) -> &Call {
        assert_eq!(self.code, code, "{self:?}");
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_their_trailers_pass_through_h2c_and_tls() {
    let dir = temp_dir("certs");
    let cert = openssl_certificate(&dir);
    let plain = grpc_server("plain", None);
    let secure = grpc_server("secure", Some(&cert));
    let body = format!(
        "upstreams:
  plain:
    protocol: h2c
    backends: [{{address: {plain}}}]
  secure:
    protocol: h2
    tls: {{sni: localhost, verify: false}}
    backends: [{{address: {secure}}}]
routes:
  - match: {{path_prefix: /secure/}}
    upstream: secure
    strip_prefix: true
  - match: {{path_prefix: /}}
    upstream: plain
",
        plain = plain.addr,
        secure = secure.addr
    );
    let (tollgate, tls) = tollgate(&body, &cert).await;
    let clients = [
        ("h2c", Target::h2c(tollgate.addr)),
        ("tls", Target::tls(tls, &cert)),
    ];
    for (over, client) in &clients {
        for (prefix, backend) in [("", "plain"), ("/secure", "secure")] {
            let method = |name: &str| format!("{prefix}{ECHO}/{name}");
            let unary = client.call(&method("Unary"), "hello", &[]);
            unary.assert_code("OK");
            assert_eq!(unary.messages, [format!("{backend}:hello")], "{over}");
            assert_eq!(unary.trailers["x-backend"], backend, "{over}: {unary:?}");

            let stream = client.call(&method("Count"), "3,10", &["--stream"]);
            stream.assert_code("OK");
            let expected: Vec<String> = (0..3).map(|i| format!("{backend}:{i}")).collect();
            assert_eq!(stream.messages, expected, "{over} to {backend}");

            let failed = client.call(&method("Fail"), "x", &[]);
            failed.assert_code("FAILED_PRECONDITION");
            assert_eq!(failed.details, "bad precondition", "{over}: {failed:?}");
            assert_eq!(failed.trailers["x-reason"], "failed-on-purpose", "{over}");
        }
    }
    let log = tollgate.access_log();
    assert!(log.contains("\"protocol\":\"HTTP/2.0\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_fails_grpc_calls_with_grpc_statuses() {
    let dir = temp_dir("grpc-errors");
    let cert = openssl_certificate(&dir);
    let live = grpc_server("live", None);
    let dead = DeadAddress::new();
    let keys = write_file(&dir, "keys.txt", "key-1\n");
    let body = format!(
        "upstreams:
  live:
    protocol: h2c
    backends: [{{address: {live}}}]
  dead:
    protocol: h2c
    backends: [{{address: {dead}}}]
auth:
  keyed:
    api_keys: {{header: X-API-Key, keys_file: {keys}}}
rate_limits:
  one:
    key: global
    rate: 1/m
    burst: 0
routes:
  - match: {{path_prefix: /dead/}}
    upstream: dead
    strip_prefix: true
  - match: {{path_prefix: /limited/}}
    upstream: live
    strip_prefix: true
    rate_limit: one
  - match: {{path_prefix: /keyed/}}
    upstream: live
    strip_prefix: true
    auth: keyed
  - match: {{path_prefix: /denied/}}
    upstream: live
    strip_prefix: true
    deny: [127.0.0.0/8]
  - match: {{path_prefix: {ECHO}/}}
    upstream: live
",
        live = live.addr,
        dead = dead.addr,
        keys = keys.display()
    );
    let (tollgate, _) = tollgate(&body, &cert).await;
    let client = Target::h2c(tollgate.addr);
    let unary = |prefix: &str| format!("{prefix}{ECHO}/Unary");

    let unavailable = client.call(&unary("/dead"), "x", &[]);
    unavailable.assert_code("UNAVAILABLE");
    assert!(unavailable.details.contains("502"), "{unavailable:?}");

    client.call(&unary("/limited"), "x", &[]).assert_code("OK");
    client
        .call(&unary("/limited"), "x", &[])
        .assert_code("RESOURCE_EXHAUSTED");

    let unauthenticated = client.call(&unary("/keyed"), "x", &[]);
    unauthenticated.assert_code("UNAUTHENTICATED");
    let keyed = client.call(&unary("/keyed"), "x", &["--metadata", "x-api-key=key-1"]);
    keyed.assert_code("OK");
    assert_eq!(keyed.messages, ["live:x"]);

    client
        .call(&unary("/denied"), "x", &[])
        .assert_code("PERMISSION_DENIED");
    client
        .call("/nowhere.Service/Method", "x", &[])
        .assert_code("UNIMPLEMENTED");

    // On the wire: HTTP 200, the status in a head that ends the stream.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = grpc_post(&h2, &tollgate.url(&unary("/dead")), "x", &[]).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/grpc");
    assert_eq!(answer.headers()["grpc-status"], "14");
    assert!(answer.bytes().await.unwrap().is_empty());
    // A request that is not gRPC still gets the plain answer.
    let plain = h2.get(tollgate.url("/dead/")).send().await.unwrap();
    assert_eq!(plain.status(), 502);
    assert!(plain.headers().get("grpc-status").is_none());
    // The log and the metrics count the status the gRPC error stands for.
    assert!(
        tollgate
            .metric_reaches(
                "tollgate_requests_total",
                &[("route", "0:/dead/"), ("code", "502")],
                3.0
            )
            .await,
        "{}",
        tollgate.metrics().await
    );
}

/// A unary gRPC call made by hand: `data` framed as one message, with
/// `headers` (`grpc-timeout`) the Python client cannot set.
async fn grpc_post(
    client: &reqwest::Client,
    url: &str,
    data: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut body = vec![0];
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data.as_bytes());
    let mut request = client
        .post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_the_read_timeout_ends_the_call() {
    let dir = temp_dir("deadline");
    let cert = openssl_certificate(&dir);
    let hung = grpc_server("hung", None);
    let live = grpc_server("live", None);
    let body = format!(
        "upstreams:
  rpc:
    protocol: h2c
    backends: [{{address: {hung}}}, {{address: {live}}}]
    timeouts: {{read: 30s}}
routes:
  - match: {{path_prefix: /}}
    upstream: rpc
",
        hung = hung.addr,
        live = live.addr
    );
    let (tollgate, _) = tollgate(&body, &cert).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let sleep = tollgate.url(&format!("{ECHO}/Sleep"));
    // One backend hangs: its process stops, and its socket still takes the
    // connection tollgate opens to it (a fresh one, whose failures count).
    hung.signal(libc::SIGSTOP);
    let mut deadline_exceeded = 0;
    for _ in 0..2 {
        let started = Instant::now();
        let answer = grpc_post(&h2, &sleep, "0", &[("grpc-timeout", "300m")]).await;
        let took = started.elapsed();
        assert_eq!(answer.status(), 200);
        if let Some(status) = answer.headers().get("grpc-status") {
            assert_eq!(status, "4", "{:?}", answer.headers());
            let message = answer.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("504"), "tollgate's own answer: {message}");
            assert!(
                took >= Duration::from_millis(290) && took < Duration::from_secs(5),
                "the deadline, not the read timeout, ended the call: {took:?}"
            );
            deadline_exceeded += 1;
        } else {
            let body = answer.bytes().await.unwrap();
            assert!(body.ends_with(b"live:slept"), "{body:?}");
        }
    }
    assert_eq!(deadline_exceeded, 1, "the call to the hung backend");
    // The client's deadline is not the backend's failure: it stays in.
    let labels = [("upstream", "rpc"), ("backend", &*hung.addr.to_string())];
    assert_eq!(
        tollgate
            .metric("tollgate_upstream_backend_healthy", &labels)
            .await,
        Some(1.0),
        "{}",
        tollgate.stderr()
    );
    hung.signal(libc::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_health_check_takes_not_serving_and_stopped_backends_out() {
    let dir = temp_dir("grpc-health");
    let cert = openssl_certificate(&dir);
    let mut a = grpc_server("a", None);
    let b = grpc_server("b", None);
    let body = format!(
        "upstreams:
  rpc:
    protocol: h2c
    backends: [{{address: {a}}}, {{address: {b}}}]
    health_check:
      grpc: {{service: \"\"}}
      interval: 100ms
      timeout: 1s
      healthy_threshold: 1
      unhealthy_threshold: 1
routes:
  - match: {{path_prefix: /}}
    upstream: rpc
",
        a = a.addr,
        b = b.addr
    );
    let (tollgate, _) = tollgate(&body, &cert).await;
    let (a_label, b_label) = (a.addr.to_string(), b.addr.to_string());
    let successes = [
        ("upstream", "rpc"),
        ("backend", &*a_label),
        ("result", "success"),
    ];
    let probed = wait_until(Duration::from_secs(5), || async {
        let passed = tollgate
            .metric("tollgate_health_checks_total", &successes)
            .await;
        passed.is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(
        probed,
        "the probe passes on a SERVING backend:\n{}",
        tollgate.stderr()
    );

    // a says NOT_SERVING: out, and every call goes to b.
    Target::h2c(a.addr)
        .call(&format!("{ECHO}/SetHealth"), "NOT_SERVING", &[])
        .assert_code("OK");
    assert!(
        healthy_reaches(&tollgate, &a_label, 0.0).await,
        "{}",
        tollgate.stderr()
    );
    let client = Target::h2c(tollgate.addr);
    for _ in 0..3 {
        let call = client.call(&format!("{ECHO}/Unary"), "x", &[]);
        assert_eq!(call.messages, ["b:x"], "{call:?}");
    }
    Target::h2c(a.addr)
        .call(&format!("{ECHO}/SetHealth"), "SERVING", &[])
        .assert_code("OK");
    assert!(
        healthy_reaches(&tollgate, &a_label, 1.0).await,
        "{}",
        tollgate.stderr()
    );

    // a stops: out again.
    a.kill();
    assert!(
        healthy_reaches(&tollgate, &a_label, 0.0).await,
        "{}",
        tollgate.stderr()
    );
    assert!(healthy_reaches(&tollgate, &b_label, 1.0).await);
    assert!(
        tollgate.stderr().contains("serving status NOT_SERVING"),
        "the log says why:\n{}",
        tollgate.stderr()
    );
}

/// Waits for `tollgate_upstream_backend_healthy` of `backend` (of upstream
/// `rpc`) to be `value`.
async fn healthy_reaches(tollgate: &Tollgate, backend: &str, value: f64) -> bool {
    let labels = [("upstream", "rpc"), ("backend", backend)];
    tollgate
        .metric_reaches("tollgate_upstream_backend_healthy", &labels, value)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_stream_fails_the_call_and_the_next_goes_to_a_live_one() {
    let dir = temp_dir("killed");
    let cert = openssl_certificate(&dir);
    let mut backends = [grpc_server("a", None), grpc_server("b", None)];
    let body = format!(
        "upstreams:
  rpc:
    protocol: h2c
    backends: [{{address: {a}}}, {{address: {b}}}]
    passive: {{fail_timeout: 2s}}
routes:
  - match: {{path_prefix: /}}
    upstream: rpc
",
        a = backends[0].addr,
        b = backends[1].addr
    );
    let (tollgate, tls) = tollgate(&body, &cert).await;
    for client in [Target::h2c(tollgate.addr), Target::tls(tls, &cert)] {
        let mut child = client
            .command(&format!("{ECHO}/Count"), "500,20", &["--stream"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let second = lines.next().unwrap().unwrap();
        let streaming = Call::parse([first.as_str()].into_iter());
        assert!(streaming.is_none(), "still streaming: {first}");
        let from = if first.contains("\"a:0\"") { 0 } else { 1 };
        assert!(
            second.contains(&format!("{}:1", ["a", "b"][from])),
            "{second}"
        );
        backends[from].kill();
        let started = Instant::now();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = child.wait();
        assert!(started.elapsed() < Duration::from_secs(5), "no hang");
        let outcome = Call::parse(
            rest.iter()
                .map(String::as_str)
                .filter(|l| !l.contains("message")),
        )
        .unwrap_or_else(|| panic!("no outcome: {rest:?}"));
        // tollgate ends the stream with the status in trailers, not a reset.
        outcome.assert_code("UNAVAILABLE");
        assert!(outcome.details.contains("502"), "{outcome:?}");
        assert!(
            rest.len() < 100,
            "the stream ended when its backend died: {} messages",
            rest.len()
        );
        // The next calls go to the live backend.
        let live = ["a", "b"][1 - from];
        for _ in 0..3 {
            let next = client.call(&format!("{ECHO}/Unary"), "x", &[]);
            assert_eq!(next.messages, [format!("{live}:x")], "{next:?}");
        }
        backends[from].restart();
        // Both are back in turn once the restarted one answers again.
        let restarted = ["a", "b"][from];
        let back = wait_until(Duration::from_secs(15), || {
            let client = client.clone();
            async move {
                let call = client.call(&format!("{ECHO}/Unary"), "x", &[]);
                call.messages == [format!("{restarted}:x")]
            }
        })
        .await;
        assert!(back, "{} is back: {}", restarted, tollgate.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_are_still_served_on_an_h2c_listener() {
    let dir = temp_dir("h1");
    let cert = openssl_certificate(&dir);
    let server = grpc_server("rpc", None);
    let body = format!(
        "upstreams:
  rpc:
    protocol: h2c
    backends: [{{address: {}}}]
routes:
  - match: {{path: /h}}
    respond: {{status: 200, body: \"ok\\n\"}}
  - match: {{path_prefix: /}}
    upstream: rpc
",
        server.addr
    );
    let (tollgate, _) = tollgate(&body, &cert).await;
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    for _ in 0..3 {
        let answer = h1.get(tollgate.url("/h")).send().await.unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_11);
        assert_eq!(answer.text().await.unwrap(), "ok\n");
    }
    // An HTTP/1.1 client to an HTTP/2 backend: a unary gRPC call made by
    // hand, `TE: trailers` passed on (the server refuses a call without it).
    let answer = grpc_post(&h1, &tollgate.url(&format!("{ECHO}/Unary")), "hi", &[]).await;
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("grpc-status").is_none());
    let body = answer.bytes().await.unwrap();
    assert_eq!(&body[..], b"\0\0\0\0\x06rpc:hi");
    // And a gRPC client on the same port.
    let call = Target::h2c(tollgate.addr).call(&format!("{ECHO}/Unary"), "x", &[]);
    assert_eq!(call.messages, ["rpc:x"]);
    // A request shorter than HTTP/2's preface is answered at once, not held
    // until 24 bytes have come.
    let (reply, closed) = raw_exchange(
        tollgate.addr,
        b"GET /h HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok\n"),
        "{reply}"
    );
    assert!(closed);
}

#[test]
fn h2c_with_tls_and_other_mismatches_are_config_errors() {
    let file = |upstream: &str, listener: &str| {
        format!(
            "server:
  listeners:
    - address: 127.0.0.1:18080
{listener}upstreams:
  rpc:
    backends: [{{address: 127.0.0.1:19001}}]
{upstream}routes:
  - match: {{path_prefix: /}}
    upstream: rpc
"
        )
    };
    let refused = assert_refused_at;
    refused(
        &file("    protocol: h2c\n    tls: {sni: rpc.internal}\n", ""),
        7,
        &["h2c is cleartext HTTP/2", "protocol: h2"],
    );
    refused(
        &file("    protocol: h2\n", ""),
        7,
        &["h2 is HTTP/2 over TLS and needs `tls`"],
    );
    refused(
        &file("    protocol: h3\n", ""),
        7,
        &["unknown variant `h3`", "h1", "h2c"],
    );
    refused(
        &file("    health_check: {grpc: {service: \"\"}}\n", ""),
        7,
        &["gRPC health check needs `protocol: h2`"],
    );
    refused(
        &file(
            "    protocol: h2c\n    health_check: {grpc: {}, tcp: {}}\n",
            "",
        ),
        8,
        &["exactly one of `http`, `tcp` or `grpc`"],
    );
    refused(
        &file(
            "",
            "      h2c: true\n      tls: {certificates: [{cert: /x.crt, key: /x.key}]}\n",
        ),
        4,
        &["h2c is for plain listeners"],
    );
    let valid = check_topology(&file(
        "    protocol: h2c\n    health_check: {grpc: {service: app}}\n",
        "      h2c: true\n",
    ));
    assert!(valid.ok, "{}", valid.output);
}
