//! Request buffering: bodies read whole before a backend is chosen, in memory
//! and beyond it in a temporary file, replayed to a real Flask service with a
//! Content-Length; over-limit bodies and slow uploaders never reach a backend;
//! `request_buffering: false` streams; a full temporary directory (a real
//! tmpfs) costs the one request that did not fit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `server:` lines: a 1 MiB body limit, 16 KiB of each body in memory.
fn buffer_settings(temp_dir: &Path) -> String {
    format!(
        "  max_request_body: 1MiB\n  request_buffer_memory: 16KiB\n  temp_dir: {}\n",
        temp_dir.display()
    )
}

/// Routes `/buffered/` (the default) and `/streamed/` (`request_buffering:
/// false`) to `backend`.
fn routes(backend: SocketAddr) -> String {
    TopologyBody::new()
        .upstream("app", &[backend], "")
        .route("/streamed/", "app", "    request_buffering: false\n")
        .route("/buffered/", "app", "")
        .yaml()
}

/// Bytes that differ from offset to offset, so a reordered replay shows.
fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A POST head of `path` with `Transfer-Encoding: chunked` and `extra` lines.
fn chunked_head(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n{extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// `body` in chunks of `size`, with the last chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The status and JSON body of a response read to its end.
fn status_and_json(response: &str) -> (u16, Value) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post_chunked(tollgate: &Tollgate, path: &str, body: &[u8]) -> (u16, Value) {
    let mut request = chunked_head(path, "");
    request.extend_from_slice(&chunked(body, 1000));
    let (response, _) = raw_exchange(tollgate.addr, &request, Duration::from_secs(10));
    status_and_json(&response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_reach_the_service_whole_with_a_length() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let spill = temp_dir("spill");
    let tollgate = Tollgate::start_with(&routes(flask.addr), &buffer_settings(&spill)).await;
    for len in [5_000, 300_000] {
        // 5,000 bytes stay in memory; 300,000 go to a file past the first 16 KiB.
        let body = body_of(len);
        let (status, seen) = post_chunked(&tollgate, "/buffered/upload", &body);
        assert_eq!(status, 200, "{len}: {seen}");
        assert_eq!(seen["length"], len, "{seen}");
        assert_eq!(
            seen["sha256"],
            sha256_hex(&body),
            "{len} bytes arrived changed"
        );
        assert_eq!(seen["content_length"], len.to_string());
        assert_eq!(seen["transfer_encoding"], Value::Null);
    }
    let (status, seen) = post_chunked(&tollgate, "/streamed/upload", &body_of(5_000));
    assert_eq!(status, 200);
    assert_eq!(seen["transfer_encoding"], "chunked", "{seen}");
    // Body files have no name; one still open shows among tollgate's fds.
    let spill_text = spill.display().to_string();
    let pid = tollgate.pid();
    let closed = wait_until(Duration::from_secs(5), || {
        let spill_text = spill_text.clone();
        async move { open_files_under(pid, &spill_text) == 0 }
    })
    .await;
    assert!(closed, "a body file outlived its request");

    let m = tollgate.metrics().await;
    let counted = |name: &str, labels: &[(&str, &str)]| metric_value(&m, name, labels);
    let backend = flask.addr.to_string();
    assert_eq!(
        counted(
            "tollgate_upstream_requests_total",
            &[("backend", &backend), ("code", "200")]
        ),
        Some(3.0),
        "each request counted once at its backend"
    );
    let both_logged = wait_until(Duration::from_secs(5), || async {
        tollgate
            .access_log()
            .matches("\"uri\":\"/buffered/upload\"")
            .count()
            == 2
    })
    .await;
    let log = tollgate.access_log();
    assert!(both_logged, "{log}");
    let logged: Vec<&str> = log.lines().filter(|l| l.contains("/buffered/")).collect();
    assert!(logged.iter().all(|l| l.contains(&backend)), "{log}");
}

/// How many of the files process `pid` holds open are in `dir`, named or
/// not (`/proc/PID/fd` links of unnamed files read `DIR/#INODE (deleted)`).
fn open_files_under(pid: u32, dir: &str) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(dir))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_tollgate() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let tollgate =
        Tollgate::start_with(&routes(flask.addr), &buffer_settings(&temp_dir("spill"))).await;
    let body = body_of(40_000);
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    stream
        .write_all(&chunked_head(
            "/buffered/upload",
            "Expect: 100-continue\r\n",
        ))
        .unwrap();
    let (interim, _) = read_until(&mut stream, Duration::from_secs(5), |got| {
        got.windows(4).any(|w| w == b"\r\n\r\n")
    });
    let interim = String::from_utf8_lossy(&interim).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    stream.write_all(&chunked(&body, 4096)).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(
        !rest.contains("100 Continue"),
        "a second 100 Continue: {rest}"
    );
    let (status, seen) = status_and_json(&rest);
    assert_eq!(status, 200, "{rest}");
    assert_eq!(seen["sha256"], sha256_hex(&body));
    assert_eq!(seen["expect"], Value::Null, "Expect reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_never_reaches_a_backend() {
    let backend = RawBackend::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let tollgate =
        Tollgate::start_with(&routes(backend.addr), &buffer_settings(&temp_dir("spill"))).await;
    let too_large = body_of(1_200_000);
    let (status, _) = post_chunked(&tollgate, "/buffered/upload", &too_large);
    assert_eq!(status, 413);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        0,
        "the body reached a backend"
    );
    // Streamed, the same body goes to the backend until the limit cuts it.
    let mut request = chunked_head("/streamed/upload", "");
    request.extend_from_slice(&chunked(&too_large, 1000));
    let _ = raw_exchange(tollgate.addr, &request, Duration::from_secs(10));
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_uploader_holds_no_backend_connection() {
    let backend = RawBackend::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let tollgate =
        Tollgate::start_with(&routes(backend.addr), &buffer_settings(&temp_dir("spill"))).await;
    let body = chunked(&body_of(50_000), 1000);
    let half = body.len() / 2;
    // The buffered upload starts first and stalls halfway.
    let mut buffered = TcpStream::connect(tollgate.addr).unwrap();
    buffered
        .write_all(&chunked_head("/buffered/upload", ""))
        .unwrap();
    buffered.write_all(&body[..half]).unwrap();
    // A streamed upload that stalls the same way holds a backend connection.
    let mut streamed = TcpStream::connect(tollgate.addr).unwrap();
    streamed
        .write_all(&chunked_head("/streamed/upload", ""))
        .unwrap();
    streamed.write_all(&body[..half]).unwrap();
    let connections = || backend.connections.load(Ordering::SeqCst);
    let streamed_connected =
        wait_until(Duration::from_secs(5), || async { connections() >= 1 }).await;
    assert!(
        streamed_connected,
        "the streamed upload never reached the backend"
    );
    assert_eq!(
        connections(),
        1,
        "the stalled buffered upload holds a backend connection"
    );
    buffered.write_all(&body[half..]).unwrap();
    let (answer, _) = read_until(&mut buffered, Duration::from_secs(5), response_complete);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(connections(), 2);
    drop(streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_request_keeps_what_the_gateway_established() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let dir = temp_dir("buffered-identity");
    let users = write_file(&dir, "htpasswd", &htpasswd_line("-B", "alice", "pw"));
    let body = TopologyBody::new()
        .upstream("app", &[flask.addr], "")
        .section(&format!(
            "auth:\n  staff:\n    basic: {{users_file: {}, user_header: X-User}}\nrate_limits:\n  uploads: {{key: client_ip, rate: 10/m, burst: 5}}\n",
            users.display()
        ))
        .route(
            "/buffered/",
            "app",
            "    auth: staff\n    rate_limit: uploads\n    response_headers: {set: {X-Frame-Options: DENY}}\n",
        )
        .yaml();
    let server = format!(
        "{}  compression: {{level: 6, min_size: 10B, types: [application/json]}}\n",
        buffer_settings(&dir)
    );
    let tollgate = Tollgate::start_with(&body, &server).await;
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let upload = body_of(100_000);
    let response = client
        .post(tollgate.url("/buffered/upload"))
        .basic_auth("alice", Some("pw"))
        .header("X-User", "forged")
        .header("Accept-Encoding", "gzip")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["ratelimit-remaining"], "5");
    assert_eq!(headers["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .expect("compressed once, with gzip");
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(seen["sha256"], sha256_hex(&upload));
    assert_eq!(seen["forwarded_for"], "127.0.0.2");
    assert_eq!(seen["user"], "alice");

    let response = client
        .post(tollgate.url("/buffered/upload"))
        .basic_auth("alice", Some("pw"))
        .header("Accept-Encoding", "br")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "br");
    let compressed = response.bytes().await.unwrap();
    let mut text = String::new();
    brotli::Decompressor::new(&compressed[..], 4096)
        .read_to_string(&mut text)
        .expect("compressed once, with brotli");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["user"],
        "alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_temp_dir_costs_only_the_body_that_does_not_fit() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let dir = temp_dir("tollgate");
    let spill = temp_dir("spill");
    // The temporary directory is a 64 KiB tmpfs, mounted for tollgate alone.
    let config = format!(
        "server:\n  threads: 2\n  listeners:\n    - address: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n  pid_file: {}\n  upgrade_sock: {}\n{}{}",
        dir.join("tollgate.pid").display(),
        dir.join("upgrade.sock").display(),
        buffer_settings(&spill),
        routes(flask.addr)
    );
    let tollgate =
        Tollgate::launch_reported_by(dir, &config, tollgate_over_small_tmpfs(&spill, "64k")).await;
    let (status, _) = post_chunked(&tollgate, "/buffered/upload", &body_of(500_000));
    assert_eq!(status, 503);
    assert!(
        tollgate.stderr().contains("cannot buffer a request body"),
        "{}",
        tollgate.stderr()
    );
    for len in [10_000, 60_000] {
        // In memory, and a file that fits: the space of the failed one is free again.
        let body = body_of(len);
        let (status, seen) = post_chunked(&tollgate, "/buffered/upload", &body);
        assert_eq!(
            (status, seen["sha256"].clone()),
            (200, sha256_hex(&body).into())
        );
    }
}

#[test]
fn a_temp_dir_that_cannot_be_written_is_a_config_error() {
    let check = check_topology(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n  temp_dir: /nonexistent/tollgate\nupstreams:\n  app:\n    backends: [{address: 127.0.0.1:9}]\nroutes:\n  - match: {path_prefix: /}\n    upstream: app\n    request_buffering: false\n",
    );
    assert!(!check.ok);
    assert!(
        check.output.contains("server.temp_dir") && check.output.contains("/nonexistent/tollgate"),
        "{}",
        check.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_uploads_over_tls_are_buffered_too() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let dir = temp_dir("h2-upload");
    let (cert_path, key_path, cert_pem) =
        common::tls::self_signed_files(&dir, "shop", &["shop.test"]);
    let config = format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:0\n    - address: 127.0.0.1:0\n      tls:\n        certificates: [{{cert: {}, key: {}}}]\n        http2: true\n        hsts: {{max_age: 1d}}\n  metrics: 127.0.0.1:0\n  access_log: off\n{}{}",
        cert_path.display(),
        key_path.display(),
        buffer_settings(&dir),
        routes(flask.addr)
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let https = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(https).await;
    let client = reqwest::Client::builder()
        .resolve("shop.test", https)
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let upload = body_of(200_000);
    let url = format!("https://shop.test:{}/buffered/upload", https.port());
    let response = client.post(url).body(upload.clone()).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("strict-transport-security"));
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["sha256"], sha256_hex(&upload));
    assert_eq!(seen["content_length"], "200000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_request_goes_to_the_next_backend_when_one_is_down() {
    let flask = Backend::start_python("flask", "upload_backend.py", &[]);
    let dead = DeadAddress::new();
    let body = TopologyBody::new()
        .upstream("app", &[dead.addr, flask.addr], "    retries: 1\n")
        .upstream("gone", &[DeadAddress::new().addr], "")
        .route("/buffered/", "app", "")
        .route("/gone/", "gone", "")
        .yaml();
    let tollgate = Tollgate::start_with(&body, &buffer_settings(&temp_dir("spill"))).await;
    let upload = body_of(200_000);
    for _ in 0..4 {
        // Round robin sends every other request to the dead backend first.
        let (status, seen) = post_chunked(&tollgate, "/buffered/upload", &upload);
        assert_eq!(
            (status, seen["sha256"].clone()),
            (200, sha256_hex(&upload).into())
        );
    }
    let retried = tollgate
        .metric("tollgate_upstream_retries_total", &[("upstream", "app")])
        .await;
    assert!(
        retried >= Some(1.0),
        "no request went to the dead backend first"
    );
    let (status, _) = post_chunked(&tollgate, "/gone/upload", &upload);
    assert_eq!(status, 502);
}

/// A backend that reads a request head and its body, answers the head of a
/// 1,000-byte answer and 7 bytes of it, and closes.
fn backend_failing_mid_answer() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (request, _) = read_until(&mut stream, Duration::from_secs(5), response_complete);
            if request.is_empty() {
                continue;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_mid_answer_closes_the_clients_connection() {
    let backend = backend_failing_mid_answer();
    let tollgate =
        Tollgate::start_with(&routes(backend), &buffer_settings(&temp_dir("spill"))).await;
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    let body = b"hello";
    let request = format!(
        "POST /buffered/upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let (answer, closed) = read_until(&mut stream, Duration::from_secs(10), |_| false);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed,
        "the connection stayed open after a cut answer: {answer}"
    );
    let body_received = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    assert_eq!(body_received, "partial", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_ends_the_backend_request() {
    // The backend takes 10 s; the client leaves at once.
    let slow = Backend::start_with("slow", "127.0.0.1:0", &["--delay", "10000"]);
    let tollgate =
        Tollgate::start_with(&routes(slow.addr), &buffer_settings(&temp_dir("spill"))).await;
    let mut request = chunked_head("/buffered/upload", "");
    request.extend_from_slice(&chunked(&body_of(30_000), 1000));
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    stream.write_all(&request).unwrap();
    let in_flight = wait_until(Duration::from_secs(5), || async {
        tollgate
            .metric("tollgate_upstream_in_flight", &[("upstream", "app")])
            .await
            == Some(1.0)
    })
    .await;
    assert!(in_flight, "the request never reached the backend");
    drop(stream);
    let logged = wait_until(Duration::from_secs(5), || async {
        tollgate.access_log().contains("\"status\":499")
    })
    .await;
    assert!(
        logged,
        "the request outlived its client:\n{}",
        tollgate.access_log()
    );
    let released = tollgate
        .metric("tollgate_upstream_in_flight", &[("upstream", "app")])
        .await;
    assert_eq!(
        released,
        Some(0.0),
        "the backend request is still counted in flight"
    );
}
