//! HTTP/3 on a TLS listener with `http3: true`, spoken to by a real HTTP/3
//! client (aioquic, `tests/python/h3_client.py`): requests with bodies both
//! ways, 100 streams at once on one connection, the same answers as HTTP/2
//! for auth, rate limits, the cache and static ranges, Alt-Svc on TCP
//! answers, no UDP on a listener without `http3`, a certificate rotated by
//! a reload served over QUIC too, Retry under a flood of
//! Initials, reloads and a binary upgrade under HTTP/3 load with no failed
//! request, and (where a network namespace with netem can be made) page
//! fetches over 2% loss.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::origin::Origin;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The API key of the `keys` policy.
const API_KEY: &str = "h3-test-key";

/// A tollgate with two TLS listeners (`[0]` with `http3`, `[1]` without) in
/// front of a demo backend (`/echo/`), the cache origin (`/cached/`, `/o/`)
/// and static files (`/static/`).
struct Edge {
    tollgate: Tollgate,
    /// The `http3` listener, TCP and UDP.
    h3: SocketAddr,
    /// The TLS listener without `http3`.
    tls_only: SocketAddr,
    ca: PathBuf,
    ca_pem: String,
    origin: Origin,
    _backend: Backend,
}

fn topology(dir: &Path, backend: SocketAddr, origin: SocketAddr, http3: &str) -> String {
    let (cert, key, _) = tls::self_signed_files(dir, "edge", &["localhost"]);
    let keys = write_file(dir, "keys.txt", &format!("{API_KEY}\n"));
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("page.txt"),
        "0123456789abcdefghijklmnopqrstuvwxyz",
    )
    .unwrap();
    format!(
        "server:
  threads: 2
  listeners:
    - address: 127.0.0.1:0
      http3: {http3}
      tls:
        http2: true
        certificates: [{{cert: {cert}, key: {key}}}]
    - address: 127.0.0.1:0
      tls:
        http2: true
        certificates: [{{cert: {cert}, key: {key}}}]
  metrics: 127.0.0.1:0
  access_log: {log}
  access_log_format: json
  pid_file: {dir}/tollgate.pid
  upgrade_sock: {dir}/upgrade.sock
  grace_period: 2s
  max_request_body: 2MiB
upstreams:
  demo:
    backends: [{{address: {backend}}}]
  origin:
    backends: [{{address: {origin}}}]
auth:
  keys:
    api_keys: {{header: X-API-Key, keys_file: {keys}}}
rate_limits:
  per_client:
    key: header:X-Client
    rate: 1/m
    burst: 0
caches:
  pages:
    memory: 16MiB
routes:
  - match: {{path_prefix: /echo/}}
    upstream: demo
  - match: {{path_prefix: /auth/}}
    upstream: origin
    auth: keys
  - match: {{path_prefix: /limited/}}
    upstream: origin
    rate_limit: per_client
  - match: {{path_prefix: /cached/}}
    upstream: origin
    cache: pages
  - match: {{path_prefix: /static/}}
    static: {{root: {root}}}
    strip_prefix: true
  - match: {{path_prefix: /}}
    upstream: origin
",
        cert = cert.display(),
        key = key.display(),
        log = dir.join("access.log").display(),
        dir = dir.display(),
        keys = keys.display(),
        root = root.display(),
    )
}

impl Edge {
    async fn start() -> Edge {
        Self::start_with("true").await
    }

    /// A tollgate whose first listener has `http3: {http3}`.
    async fn start_with(http3: &str) -> Edge {
        let dir = temp_dir("h3");
        let backend = Backend::start("demo");
        let origin = Origin::start().await;
        let config = topology(&dir, backend.addr, origin.addr, http3);
        let ca_pem = std::fs::read_to_string(dir.join("edge.crt")).unwrap();
        let tollgate = Tollgate::launch_reported(dir.clone(), &config, &[]).await;
        let h3 = tollgate.reported("server.listeners[0]");
        let tls_only = tollgate.reported("server.listeners[1]");
        Edge {
            tollgate,
            h3,
            tls_only,
            ca: dir.join("edge.crt"),
            ca_pem,
            origin,
            _backend: backend,
        }
    }

    /// The `h3_client.py` command against `addr` in `mode`.
    fn client(&self, addr: SocketAddr, mode: &str, target: &str) -> Command {
        let mut command = Command::new(python());
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/h3_client.py"))
            .arg(addr.to_string())
            .arg(mode)
            .arg(target)
            .arg("--ca")
            .arg(&self.ca);
        command
    }

    /// Sends `requests` over one HTTP/3 connection to `addr` (all at once,
    /// or one after the other when `sequential`); the client's report.
    fn h3_at(
        &self,
        addr: SocketAddr,
        requests: &[Value],
        sequential: bool,
        extra: &[&str],
    ) -> Value {
        let file = self
            .tollgate
            .dir
            .join(format!("requests-{}.json", rand_tag()));
        std::fs::write(&file, serde_json::to_vec(requests).unwrap()).unwrap();
        let mut command = self.client(addr, "requests", file.to_str().unwrap());
        if sequential {
            command.arg("--sequential");
        }
        let output = command.args(extra).output().expect("run h3_client.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "h3_client.py gave no report ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// The answers to `requests` over HTTP/3 on the `http3` listener.
    fn h3(&self, requests: &[Value], sequential: bool) -> Vec<Value> {
        let report = self.h3_at(self.h3, requests, sequential, &[]);
        report["responses"]
            .as_array()
            .unwrap_or_else(|| panic!("no responses: {report}"))
            .clone()
    }

    /// An HTTP/2 client of the `http3` listener (TLS, ALPN h2).
    fn h2_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .http2_prior_knowledge()
            .resolve("localhost", self.h3)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.h3.port())
    }

    /// `tollgate_quic_handshakes_total` of the `http3` listener for `result`.
    async fn handshakes(&self, result: &str) -> Option<f64> {
        let listener = self.h3.to_string();
        let labels = [("listener", listener.as_str()), ("result", result)];
        self.tollgate
            .metric("tollgate_quic_handshakes_total", &labels)
            .await
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn get(path: &str, headers: &[(&str, &str)]) -> Value {
    let headers: Vec<Value> = headers
        .iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect();
    serde_json::json!({"method": "GET", "path": path, "headers": headers})
}

/// The value of header `name` in an h3_client.py answer.
fn header<'a>(answer: &'a Value, name: &str) -> Option<&'a str> {
    answer["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str() == Some(name))
        .and_then(|h| h[1].as_str())
}

fn status(answer: &Value) -> u64 {
    answer["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("no status in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_with_bodies_stream_both_ways() {
    let edge = Edge::start().await;
    let big = "x".repeat(1024 * 1024);
    let too_big = "y".repeat(3 * 1024 * 1024);
    let answers = edge.h3(
        &[
            get("/echo/hello", &[]),
            serde_json::json!({"method": "POST", "path": "/echo/upload",
                "headers": [["content-type", "text/plain"]], "body": big}),
            get("/o/large?size=3000000", &[]),
            serde_json::json!({"method": "POST", "path": "/echo/upload", "body": too_big}),
        ],
        false,
    );
    assert_eq!(status(&answers[0]), 200, "{}", answers[0]);
    let echoed: Value = serde_json::from_str(answers[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["uri"], "/echo/hello");
    assert_eq!(
        echoed["headers"]["host"],
        format!("localhost:{}", edge.h3.port())
    );
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert_eq!(status(&answers[1]), 200, "{}", answers[1]);
    let upload: Value = serde_json::from_str(answers[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(upload["method"], "POST");
    assert_eq!(upload["body_length"], 1024 * 1024);
    assert_eq!(status(&answers[2]), 200);
    assert_eq!(answers[2]["body_len"], 3_000_000);
    // max_request_body holds over HTTP/3 too.
    assert_eq!(status(&answers[3]), 413, "{}", answers[3]);

    let log = edge.tollgate.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("/echo/hello"))
        .expect("an access log line");
    assert!(line.contains("\"protocol\":\"HTTP/3.0\""), "{line}");
    assert!(line.contains("\"route\":\"0:/echo/\""), "{line}");
    // The host an HTTP/3 client names as `:authority`.
    let host = format!("\"host\":\"localhost:{}\"", edge.h3.port());
    assert!(line.contains(&host), "{line}");
    assert!(
        edge.tollgate
            .metric_reaches(
                "tollgate_requests_by_protocol_total",
                &[("protocol", "h3")],
                4.0
            )
            .await
    );
    assert_eq!(edge.handshakes("success").await, Some(1.0));
    let listener = edge.h3.to_string();
    let sent = [("listener", listener.as_str())];
    assert!(
        edge.tollgate
            .metric("tollgate_quic_packets_sent_total", &sent)
            .await
            .unwrap()
            > 100.0
    );
    assert!(
        edge.tollgate
            .metric_reaches("tollgate_quic_connections", &sent, 0.0)
            .await,
        "the connection is counted open only while it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_on_one_connection() {
    let edge = Edge::start().await;
    let requests: Vec<Value> = (0..100)
        .map(|i| get(&format!("/o/slow/{i}?delay=300"), &[]))
        .collect();
    let started = Instant::now();
    let answers = edge.h3(&requests, false);
    let took = started.elapsed();
    assert_eq!(answers.len(), 100);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(status(answer), 200, "{answer}");
        assert!(answer["body"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/o/slow/{i}?")));
    }
    // One after the other they would take 30 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(edge.handshakes("success").await, Some(1.0));
    assert_eq!(edge.origin.seen().len(), 100);
}

/// A row of the comparison: what, path, request headers, expected status.
type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u64);

/// What must be the same over HTTP/2 and HTTP/3: status, body and the
/// headers that carry the answer's meaning.
const COMPARED: [&str; 9] = [
    "content-type",
    "content-length",
    "content-range",
    "x-cache-status",
    "www-authenticate",
    "retry-after",
    "strict-transport-security",
    "cache-control",
    "accept-ranges",
];

async fn over_h2(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Value {
    let mut request = client.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("HTTP/2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let status = response.status().as_u16();
    let headers: Vec<Value> = response
        .headers()
        .iter()
        .map(|(k, v)| serde_json::json!([k.as_str(), v.to_str().unwrap_or("")]))
        .collect();
    let body = response.text().await.unwrap();
    serde_json::json!({"status": status, "headers": headers, "body": body})
}

/// An answer's body, less the origin's ` #N` request count.
fn body(answer: &Value) -> &str {
    let body = answer["body"].as_str().unwrap_or("");
    body.rsplit_once(" #").map_or(body, |(before, _)| before)
}

fn assert_same(what: &str, h2: &Value, h3: &Value) {
    assert_eq!(status(h2), status(h3), "{what}: h2 {h2}\nh3 {h3}");
    assert_eq!(body(h2), body(h3), "{what}: bodies differ");
    for name in COMPARED {
        assert_eq!(header(h2, name), header(h3, name), "{what}: {name} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_answers_and_headers_as_over_http2() {
    let edge = Edge::start().await;
    let h2 = edge.h2_client();
    // (what, path, headers, answers to compare): each row is asked over
    // HTTP/2 first, then over HTTP/3, then (for the cache) over HTTP/2 again.
    let rows: [Row; 6] = [
        ("auth 401", "/auth/a", vec![], 401),
        ("auth 200", "/auth/a", vec![("x-api-key", API_KEY)], 200),
        (
            "static range",
            "/static/page.txt",
            vec![("range", "bytes=10-19")],
            206,
        ),
        ("static whole", "/static/page.txt", vec![], 200),
        ("direct 404", "/static/none.txt", vec![], 404),
        ("proxied", "/o/plain?v=1", vec![], 200),
    ];
    for (what, path, headers, expected) in &rows {
        let over_2 = over_h2(&h2, &edge.url(path), headers).await;
        let over_3 = &edge.h3(&[get(path, headers)], true)[0];
        assert_eq!(status(&over_2), *expected, "{what}: {over_2}");
        if *what == "proxied" {
            // The origin counts its requests in the body.
            assert_eq!(status(over_3), 200);
            continue;
        }
        assert_same(what, &over_2, over_3);
    }
    let range = &edge.h3(
        &[get("/static/page.txt", &[("range", "bytes=10-19")])],
        true,
    )[0];
    assert_eq!(range["body"], "abcdefghij");
    assert_eq!(header(range, "content-range"), Some("bytes 10-19/36"));

    // Rate limit: one request per minute per X-Client, over either protocol.
    let first_2 = over_h2(&h2, &edge.url("/limited/x"), &[("x-client", "h2")]).await;
    let then_2 = over_h2(&h2, &edge.url("/limited/x"), &[("x-client", "h2")]).await;
    let over_3 = edge.h3(
        &[
            get("/limited/x", &[("x-client", "h3")]),
            get("/limited/x", &[("x-client", "h3")]),
        ],
        true,
    );
    assert_eq!(status(&first_2), 200);
    assert_eq!(status(&then_2), 429);
    assert_eq!(status(&over_3[0]), 200);
    assert_same("rate limit 429", &then_2, &over_3[1]);

    // Cache: the HTTP/2 request stores it, both then get the stored answer.
    let cached = "/cached/page?cc=max-age=60";
    let miss = over_h2(&h2, &edge.url(cached), &[]).await;
    assert_eq!(header(&miss, "x-cache-status"), Some("MISS"));
    let hit_3 = &edge.h3(&[get(cached, &[])], true)[0];
    let hit_2 = over_h2(&h2, &edge.url(cached), &[]).await;
    assert_eq!(header(hit_3, "x-cache-status"), Some("HIT"), "{hit_3}");
    assert_same("cache HIT", &hit_2, hit_3);
    assert_eq!(edge.origin.hits("/cached/page?cc=max-age=60"), 1);

    // The backend sees the same request from either client.
    let _ = over_h2(&h2, &edge.url("/o/seen?by=h2"), &[]).await;
    let _ = edge.h3(&[get("/o/seen?by=h3", &[])], true);
    let (by_2, by_3) = (
        edge.origin.last("/o/seen?by=h2"),
        edge.origin.last("/o/seen?by=h3"),
    );
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
    ] {
        assert_eq!(by_2.headers.get(name), by_3.headers.get(name), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_on_the_tcp_answers_of_an_http3_listener_only() {
    let edge = Edge::start().await;
    let expected = format!("h3=\":{}\"; ma=86400", edge.h3.port());
    let h2 = edge.h2_client();
    for path in ["/o/x", "/static/page.txt", "/static/missing", "/auth/x"] {
        let answer = over_h2(&h2, &edge.url(path), &[]).await;
        assert_eq!(
            header(&answer, "alt-svc"),
            Some(expected.as_str()),
            "{path}: {answer}"
        );
    }
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .http1_only()
        .resolve("localhost", edge.h3)
        .add_root_certificate(reqwest::Certificate::from_pem(edge.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = h1.get(edge.url("/o/y")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.headers()["alt-svc"], expected.as_str());
    // The listener without http3 does not advertise it; HTTP/3 answers need not.
    let other = reqwest::Client::builder()
        .use_rustls_tls()
        .resolve("localhost", edge.tls_only)
        .add_root_certificate(reqwest::Certificate::from_pem(edge.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/o/z", edge.tls_only.port());
    let response = other.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("alt-svc").is_none());
    let over_3 = &edge.h3(&[get("/o/w", &[])], true)[0];
    assert_eq!(header(over_3, "alt-svc"), None);
}

/// Whether a GET over HTTP/3 is answered 200 when the client trusts `ca` alone.
fn h3_trusting(edge: &Edge, ca: &Path) -> bool {
    let file = edge
        .tollgate
        .dir
        .join(format!("requests-{}.json", rand_tag()));
    std::fs::write(
        &file,
        serde_json::to_vec(&[get("/echo/rotated", &[])]).unwrap(),
    )
    .unwrap();
    let output = edge
        .client(edge.h3, "requests", file.to_str().unwrap())
        .arg("--ca")
        .arg(ca)
        .output()
        .expect("run h3_client.py");
    let report: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    report.is_some_and(|r| r["responses"][0]["status"] == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_over_http3_after_a_reload() {
    let edge = Edge::start().await;
    let dir = edge.tollgate.dir.clone();
    let old_ca = write_file(&dir, "old.crt", &edge.ca_pem);
    assert!(h3_trusting(&edge, &old_ca), "{}", edge.tollgate.stderr());
    let fresh = temp_dir("h3-rotated");
    let (new_cert, new_key, _) = tls::self_signed_files(&fresh, "edge", &["localhost"]);
    std::fs::copy(&new_key, dir.join("edge.key")).unwrap();
    std::fs::copy(&new_cert, dir.join("edge.crt")).unwrap();
    edge.tollgate.signal(libc::SIGHUP);
    let rotated = wait_until(Duration::from_secs(10), || async {
        h3_trusting(&edge, &new_cert)
    })
    .await;
    assert!(
        rotated,
        "the new certificate is not served over HTTP/3:\n{}",
        edge.tollgate.stderr()
    );
    assert!(
        !h3_trusting(&edge, &old_ca),
        "the old certificate is still served over HTTP/3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_without_http3_does_not_answer_udp() {
    let edge = Edge::start().await;
    let report = edge.h3_at(
        edge.tls_only,
        &[get("/o/x", &[])],
        true,
        &["--connect-timeout", "3"],
    );
    let error = report["error"]
        .as_str()
        .unwrap_or_else(|| panic!("answered: {report}"));
    assert!(error.contains("connect"), "{error}");
    // Nothing listens on its UDP port at all.
    assert!(std::net::UdpSocket::bind(edge.tls_only).is_ok());
    assert!(
        std::net::UdpSocket::bind(edge.h3).is_err(),
        "the http3 listener holds its UDP port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_validates_addresses_under_a_flood_of_initials() {
    let edge = Edge::start().await;
    // A handful of handshakes in flight: served without a Retry.
    assert_eq!(status(&edge.h3(&[get("/o/a", &[])], true)[0]), 200);
    assert_eq!(edge.handshakes("retry").await, Some(0.0));
    // 300 Initials never followed up hold 300 handshakes open.
    let flood = edge.client(edge.h3, "flood", "300").output().unwrap();
    assert!(
        flood.status.success(),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    // A new client is asked to prove its address first, and then served.
    let answer = &edge.h3(&[get("/o/b", &[])], true)[0];
    assert_eq!(status(answer), 200, "{answer}");
    assert!(edge.handshakes("retry").await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_always_validates_every_new_client() {
    let edge = Edge::start_with("{retry: always, max_streams: 10, idle_timeout: 5s}").await;
    let requests: Vec<Value> = (0..30).map(|i| get(&format!("/o/{i}"), &[])).collect();
    let answers = edge.h3(&requests, false);
    assert!(answers.iter().all(|a| status(a) == 200), "{answers:?}");
    assert_eq!(edge.handshakes("retry").await, Some(1.0));
}

/// HTTP/3 load in the background: `connections` connections with 8 requests
/// in flight on each, until `stop` exists.
fn load(edge: &Edge, connections: usize, stop: &Path) -> Child {
    edge.client(edge.h3, "load", "60")
        .args(["--concurrency", "8", "--path", "/o/load"])
        .args(["--connections", &connections.to_string()])
        .arg("--stop-file")
        .arg(stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start h3 load")
}

fn load_report(child: Child) -> Value {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no load report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

async fn answered(edge: &Edge) -> f64 {
    edge.tollgate
        .metric("tollgate_requests_by_protocol_total", &[("protocol", "h3")])
        .await
        .unwrap_or(0.0)
}

/// Whether, within 10 s, more than `n` HTTP/3 requests have been answered.
async fn answered_over(edge: &Edge, n: f64) -> bool {
    wait_until(Duration::from_secs(10), || async {
        answered(edge).await > n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_http3_load_fail_no_request() {
    let edge = Edge::start().await;
    let stop = edge.tollgate.dir.join("stop-load");
    let child = load(&edge, 2, &stop);
    assert!(answered_over(&edge, 200.0).await);
    for n in 1..=3 {
        let config = edge.tollgate.config_text().replace(
            "  - match: {path_prefix: /}\n",
            &format!("  - match: {{path: /added{n}}}\n    respond: {{status: 200, body: ok}}\n  - match: {{path_prefix: /}}\n"),
        );
        edge.tollgate.rewrite_config(&config);
        edge.tollgate.signal(libc::SIGHUP);
        let done = [("result", "success")];
        assert!(
            edge.tollgate
                .metric_reaches("tollgate_config_reloads_total", &done, n as f64)
                .await
        );
        let before = answered(&edge).await;
        assert!(answered_over(&edge, before + 100.0).await);
    }
    // The new routes answer over HTTP/3 as well.
    assert_eq!(status(&edge.h3(&[get("/added3", &[])], true)[0]), 200);
    std::fs::write(&stop, "").unwrap();
    let report = load_report(child);
    eprintln!("HTTP/3 load across 3 reloads: {report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 500, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_http3_load_fails_no_request() {
    let mut edge = Edge::start().await;
    let stop = edge.tollgate.dir.join("stop-load");
    let child = load(&edge, 2, &stop);
    assert!(answered_over(&edge, 200.0).await);
    let old_pid = edge.tollgate.pid();
    edge.tollgate.signal(libc::SIGUSR2);
    let moved = wait_until(Duration::from_secs(15), || {
        let pid = edge.tollgate.pid_in_file();
        async move { pid.is_some_and(|p| p != old_pid) }
    })
    .await;
    assert!(moved, "no new process:\n{}", edge.tollgate.stderr());
    let new_pid = edge.tollgate.pid_in_file().unwrap();
    let _reap = Reap(new_pid);
    // The old process hands over, sends its connections a GOAWAY and exits.
    let exited = edge.tollgate.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exited.is_some(),
        "the old process did not exit:\n{}",
        edge.tollgate.stderr()
    );
    // The new process answers over HTTP/3 on the same UDP socket.
    let answer = &edge.h3(&[get("/o/after", &[])], true)[0];
    assert_eq!(status(answer), 200, "{answer}");
    std::fs::write(&stop, "").unwrap();
    let report = load_report(child);
    eprintln!("HTTP/3 load across a binary upgrade: {report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["goaways"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["connections"].as_u64().unwrap() >= 4, "{report}");
}

/// Kills the upgraded tollgate (a child of the one the harness started) when
/// dropped.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the tollgate this test's upgrade started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn http3_mistakes_are_refused_at_their_line() {
    let dir = temp_dir("h3-check");
    let (cert, key, _) = tls::self_signed_files(&dir, "c", &["localhost"]);
    let tls = format!(
        "      tls: {{certificates: [{{cert: {}, key: {}}}]}}\n",
        cert.display(),
        key.display()
    );
    let topology = |listener: &str| {
        format!("server:\n  listeners:\n    - address: 127.0.0.1:0\n{listener}routes:\n  - match: {{path: /}}\n    respond: {{status: 200}}\n")
    };
    // Line 4: the listener's `http3`.
    assert_refused_at(&topology("      http3: true\n"), 4, &["QUIC", "tls"]);
    let proxied = format!("      proxy_protocol: v2\n      http3: true\n{tls}");
    assert_refused_at(&topology(&proxied), 5, &["PROXY protocol"]);
    let streams = format!("      http3: {{max_streams: 0}}\n{tls}");
    assert_refused_at(&topology(&streams), 4, &["max_streams", "1 to 10000"]);
    let unknown = format!("      http3: {{zero_rtt: true}}\n{tls}");
    assert_refused_at(&topology(&unknown), 4, &["zero_rtt"]);
    let retry = format!("      http3: {{retry: sometimes}}\n{tls}");
    assert_refused_at(&topology(&retry), 4, &["sometimes", "auto", "always"]);
    let fine = format!("      http3: {{max_streams: 50, idle_timeout: 10s, retry: always}}\n{tls}");
    let result = check_topology(&topology(&fine));
    assert!(result.ok, "{}", result.output);
}

/// A network namespace of the test's own whose loopback loses 2% of its
/// packets (and delays each by 10 ms): a process holding it, or why none
/// can be made here.
fn lossy_namespace() -> Result<Child, String> {
    let setup = "ip link set lo up && tc qdisc add dev lo root netem loss 2% delay 10ms \
                 && echo ready && exec sleep 600";
    let mut holder = Command::new("unshare")
        .args(["-rn", "sh", "-c", setup])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let mut line = String::new();
    let stdout = holder.stdout.take().ok_or("no stdout")?;
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
    if line.trim() == "ready" {
        return Ok(holder);
    }
    let _ = holder.kill();
    let output = holder.wait_with_output().map_err(|e| e.to_string())?;
    Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
}

/// `program` run in the network (and user) namespace `holder` holds.
fn inside(holder: &Child, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .args([
            "-t",
            &holder.id().to_string(),
            "-U",
            "-n",
            "--preserve-credentials",
        ])
        .arg(program);
    command
}

/// The median of `samples`, in ms.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_two_percent_loss_over_http3_and_http2() {
    let mut holder = match lossy_namespace() {
        Ok(holder) => holder,
        Err(why) => {
            eprintln!("skipped: no network namespace with tc netem here ({why})");
            return;
        }
    };
    let dir = temp_dir("h3-loss");
    let (cert, key, _) = tls::self_signed_files(&dir, "edge", &["localhost"]);
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    // A page: its document and 20 assets of 64 KiB.
    let paths: Vec<String> = std::iter::once("/index.html".to_string())
        .chain((0..20).map(|i| format!("/asset{i}.bin")))
        .collect();
    for path in &paths {
        std::fs::write(root.join(&path[1..]), vec![b'a'; 64 * 1024]).unwrap();
    }
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n      http3: true\n      tls: {{http2: true, certificates: [{{cert: {}, key: {}}}]}}\n  access_log: off\n  pid_file: {}/tollgate.pid\n  upgrade_sock: {}/upgrade.sock\nroutes:\n  - match: {{path_prefix: /}}\n    static: {{root: {}}}\n",
        cert.display(),
        key.display(),
        dir.display(),
        dir.display(),
        root.display()
    );
    let config_path = write_file(&dir, "tollgate.yaml", &config);
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut tollgate = inside(&holder, TOLLGATE)
        .arg("-c")
        .arg(&config_path)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let listening = wait_until(Duration::from_secs(15), || async {
        reported_address(&log(), "server.listeners[0]").is_some()
    })
    .await;
    assert!(listening, "tollgate did not start:\n{}", log());
    let addr = reported_address(&log(), "server.listeners[0]").unwrap();
    let requests: Vec<Value> = paths.iter().map(|p| get(p, &[])).collect();
    let file = write_file(
        &dir,
        "page.json",
        &serde_json::to_string(&requests).unwrap(),
    );
    let (mut over_2, mut over_3) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let curl = inside(&holder, "curl")
            .args([
                "--http2",
                "--parallel",
                "--parallel-max",
                "21",
                "-sf",
                "-o",
                "/dev/null",
            ])
            .arg("--cacert")
            .arg(&cert)
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
            .args(
                paths
                    .iter()
                    .map(|p| format!("https://localhost:{}{p}", addr.port())),
            )
            .output()
            .unwrap();
        assert!(
            curl.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&curl.stderr)
        );
        over_2.push(started.elapsed().as_secs_f64() * 1000.0);
        let h3 = inside(&holder, python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/h3_client.py"))
            .arg(addr.to_string())
            .args([
                "requests",
                file.to_str().unwrap(),
                "--ca",
                cert.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&h3.stdout).expect("an h3 report");
        let answers = report["responses"].as_array().unwrap();
        assert!(
            answers
                .iter()
                .all(|a| a["status"] == 200 && a["body_len"] == 65536),
            "{report}"
        );
        over_3.push(report["elapsed_ms"].as_f64().unwrap());
    }
    eprintln!(
        "a page of 21 files (1.3 MiB) over 2% loss and 10 ms delay, median of 5: \
         HTTP/2 {:.0} ms (curl, from its start), HTTP/3 {:.0} ms (aioquic, handshake included)",
        median(over_2),
        median(over_3)
    );
    let _ = tollgate.kill();
    let _ = tollgate.wait();
    let _ = holder.kill();
    let _ = holder.wait();
}
