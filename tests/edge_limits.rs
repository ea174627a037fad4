//! Request limits (413 before anything reaches a backend, per-route allow/deny)
//! and response compression (gzip, brotli and zstd that decode to the original;
//! never for images, ranges or small bodies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_and_never_reach_the_backend() {
    let backend = RawBackend::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let tollgate =
        Tollgate::start_with(&proxy_to(&[backend.addr]), "  max_request_body: 1KiB\n").await;
    let big = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    let (raw, closed) = raw_exchange(tollgate.addr, big.as_bytes(), Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(closed, "connection left open after 413");
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        0,
        "the large body reached the backend"
    );

    let small = reqwest::Client::new()
        .post(tollgate.url("/upload"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);

    // Without Content-Length the body is counted as it streams.
    let chunked = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
        .to_string()
        + &"y".repeat(2048)
        + "\r\n0\r\n\r\n";
    let (raw, _) = raw_exchange(tollgate.addr, chunked.as_bytes(), Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_answer_403() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start(&format!(
        "upstreams:
  app:
    backends: [{{address: {}}}]
routes:
  - match: {{path_prefix: /admin/}}
    upstream: app
    allow: [127.0.0.10/31]
    deny: [127.0.0.11]
  - match: {{path_prefix: /}}
    upstream: app
    deny: [127.0.0.66]
",
        backend.addr
    ))
    .await;
    let status_from = |ip: [u8; 4], path: &'static str| {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::from(ip))
            .build()
            .unwrap();
        let url = tollgate.url(path);
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_from([127, 0, 0, 10], "/admin/x").await, 200);
    assert_eq!(
        status_from([127, 0, 0, 11], "/admin/x").await,
        403,
        "deny beats allow"
    );
    assert_eq!(
        status_from([127, 0, 0, 12], "/admin/x").await,
        403,
        "not in the allow list"
    );
    assert_eq!(status_from([127, 0, 0, 12], "/").await, 200);
    assert_eq!(status_from([127, 0, 0, 66], "/").await, 403);
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Strict brotli decoding: fails on a stream that is not finished.
fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a complete brotli stream");
    out
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_compressed_by_accept_encoding_and_decodes_to_the_original() {
    let dir = temp_dir("compress");
    let text: String = (0..2000)
        .map(|i| format!("line {i}: the quick brown fox\n"))
        .collect();
    std::fs::write(dir.join("page.html"), &text).unwrap();
    std::fs::write(dir.join("tiny.txt"), "small").unwrap();
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("photo.jpg"), &image).unwrap();
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &format!(
            "upstreams:\n  app:\n    backends: [{{address: {}}}]\nroutes:\n  - match: {{path_prefix: /api/}}\n    upstream: app\n  - match: {{path_prefix: /}}\n    static: {{root: {}}}\n",
            backend.addr,
            dir.display()
        ),
        "  compression: {level: 6, min_size: 100B}\n",
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, encoding: Option<&str>, range: Option<&str>| {
        let mut request = client.get(tollgate.url(path));
        if let Some(e) = encoding {
            request = request.header("Accept-Encoding", e);
        }
        if let Some(r) = range {
            request = request.header("Range", r);
        }
        request.send()
    };

    let gz = get("/page.html", Some("gzip"), None).await.unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert!(gz.headers()["vary"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    let body = gz.bytes().await.unwrap();
    assert!(
        body.len() < text.len() / 4,
        "gzip body of {} bytes for {}",
        body.len(),
        text.len()
    );
    assert_eq!(gunzip(&body), text.as_bytes());

    let zst = get("/page.html", Some("zstd"), None).await.unwrap();
    assert_eq!(zst.headers()["content-encoding"], "zstd");
    assert_eq!(unzstd(&zst.bytes().await.unwrap()), text.as_bytes());

    // Brotli comes from our own module (pingora#1013), finished properly, and
    // wins over gzip when the client accepts both.
    for accept in ["br", "gzip, br", "br, gzip"] {
        let br = get("/page.html", Some(accept), None).await.unwrap();
        assert_eq!(br.headers()["content-encoding"], "br", "{accept}");
        assert!(br.headers().get("content-length").is_none());
        assert_eq!(
            unbrotli(&br.bytes().await.unwrap()),
            text.as_bytes(),
            "{accept}"
        );
    }
    let api_br = get("/api/x", Some("br"), None).await.unwrap();
    assert_eq!(api_br.headers()["content-encoding"], "br");
    let json: serde_json::Value =
        serde_json::from_slice(&unbrotli(&api_br.bytes().await.unwrap())).unwrap();
    assert_eq!(json["backend"], "app");

    // Proxied answers too (the demo backend's JSON is over 100 bytes).
    let api = get("/api/x", Some("gzip"), None).await.unwrap();
    assert_eq!(api.headers()["content-encoding"], "gzip");
    let json: serde_json::Value =
        serde_json::from_slice(&gunzip(&api.bytes().await.unwrap())).unwrap();
    assert_eq!(json["backend"], "app");

    for (path, encoding, range, why) in [
        ("/page.html", None, None, "no Accept-Encoding"),
        ("/photo.jpg", Some("gzip, br"), None, "an image"),
        ("/tiny.txt", Some("br"), None, "under min_size (br)"),
        ("/page.html", Some("br"), Some("bytes=0-99"), "a range (br)"),
        ("/tiny.txt", Some("gzip"), None, "under min_size"),
        ("/page.html", Some("gzip"), Some("bytes=0-99"), "a range"),
    ] {
        let response = get(path, encoding, range).await.unwrap();
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{why} was compressed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_timed_out() {
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &proxy_to(&[backend.addr]),
        "  client_timeouts: {read_body: 500ms, send: 5s, keepalive: 1s}\n",
    )
    .await;
    // A body that stops arriving: 408 and the connection closed, soon after read_body.
    let started = std::time::Instant::now();
    let (raw, closed) = raw_exchange(
        tollgate.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-a-little",
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection is closed after `keepalive`.
    let started = std::time::Instant::now();
    let (raw, closed) = raw_exchange(
        tollgate.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(closed, "idle connection left open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// Reads one response (head and its Content-Length body) from `stream`.
/// Returns it, or what arrived before the connection closed or 5 s passed.
fn read_response(stream: &mut std::net::TcpStream) -> String {
    let (out, _) = read_until(stream, Duration::from_secs(5), response_complete);
    String::from_utf8_lossy(&out).into_owned()
}

/// An idle client connection is held as a bare socket until a request starts
/// (src/edge/keepalive.rs); requests that start late, arrive in pieces, or
/// have a head longer than the first read must all be served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_late_or_in_pieces_are_served() {
    use std::io::Write;
    let backend = Backend::start("app");
    let tollgate = Tollgate::start_with(
        &proxy_to(&[backend.addr]),
        "  client_timeouts: {keepalive: 5s}\n",
    )
    .await;
    let mut stream = std::net::TcpStream::connect(tollgate.addr).expect("connect");
    // Silent for a while after connecting, then a request in two pieces.
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"GET /first HT").expect("send");
    std::thread::sleep(Duration::from_millis(200));
    stream
        .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let first = read_response(&mut stream);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("\"uri\":\"/first\""), "{first}");

    // On the same connection, a head longer than the 4 KiB first read.
    let long = format!(
        "GET /second HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(6000)
    );
    stream.write_all(long.as_bytes()).expect("send");
    let second = read_response(&mut stream);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("\"uri\":\"/second\""), "{second}");

    // Idle between requests, then one more.
    std::thread::sleep(Duration::from_millis(500));
    stream
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let third = read_response(&mut stream);
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(third.contains("\"uri\":\"/third\""), "{third}");
}
