//! What passes through the proxy and what does not: hop-by-hop headers in both
//! directions, ambiguous request framing, forwarding headers, upstream errors and
//! timeouts, upstream keep-alive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn single_upstream(address: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends:\n      - address: {address}\n{extra}routes:\n  - match: {{path_prefix: /}}\n    upstream: app\n"
    )
}

/// The JSON body the demo backend answered, from a raw HTTP/1.1 response.
fn echoed(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_named_headers_never_reach_the_backend() {
    let backend = Backend::start("echo");
    let tollgate = Tollgate::start(&single_upstream(&backend.addr.to_string(), "")).await;
    let request = b"GET /h HTTP/1.1\r\n\
Host: shop.example.com\r\n\
Connection: close, X-Secret, X-Other\r\n\
X-Secret: s3cret\r\n\
X-Other: o\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\n\
TE: trailers\r\n\
Trailer: X-Checksum\r\n\
Upgrade: h2c\r\n\
Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
X-Forwarded-For: 198.51.100.1\r\n\
X-Kept: kept\r\n\r\n";
    let (raw, _) = raw_exchange(tollgate.addr, request, Duration::from_secs(5));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let headers = &echoed(&raw)["headers"];
    for gone in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the backend: {headers}"
        );
    }
    assert_eq!(headers["x-kept"], "kept");
    assert_eq!(headers["host"], "shop.example.com", "Host must be kept");
    assert_eq!(
        headers["x-forwarded-for"], "198.51.100.1, 127.0.0.1",
        "X-Forwarded-For is appended to"
    );
    assert_eq!(
        headers["x-real-ip"], "127.0.0.1",
        "the peer is not a trusted proxy"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_of_responses_never_reach_the_client() {
    let backend = RawBackend::start(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\nok",
    ));
    let tollgate = Tollgate::start(&single_upstream(&backend.addr.to_string(), "")).await;
    let response = reqwest::get(tollgate.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the client: {h:?}");
    }
    // The only Connection header is the one tollgate sets for its own connection.
    let connection: Vec<_> = h.get_all("connection").iter().collect();
    assert!(
        connection
            .iter()
            .all(|v| *v == "keep-alive" || *v == "close"),
        "{connection:?}"
    );
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_with_400_and_a_closed_connection() {
    let backend = RawBackend::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let tollgate = Tollgate::start(&single_upstream(&backend.addr.to_string(), "")).await;
    let requests: [&[u8]; 7] = [
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for request in requests {
        let (raw, closed) = raw_exchange(tollgate.addr, request, Duration::from_secs(5));
        let shown = String::from_utf8_lossy(request);
        assert!(raw.starts_with("HTTP/1.1 400"), "{shown:?} got: {raw}");
        assert!(closed, "{shown:?}: connection left open");
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        0,
        "an ambiguous request reached the backend"
    );

    // The same requests framed clearly do pass.
    let (raw, _) = raw_exchange(
        tollgate.addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let backend = Backend::start("echo");
    let tollgate = Tollgate::start_with(
        &single_upstream(&backend.addr.to_string(), ""),
        "  trusted_proxies: [127.0.0.5/32]\n",
    )
    .await;
    let ask = |from: [u8; 4]| {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(from))
            .build()
            .unwrap();
        let url = tollgate.url("/");
        async move {
            client
                .get(url)
                .header("X-Forwarded-For", "203.0.113.7")
                .header("X-Forwarded-Proto", "https")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let via_proxy = ask([127, 0, 0, 5]).await;
    assert_eq!(via_proxy["headers"]["x-real-ip"], "203.0.113.7");
    assert_eq!(
        via_proxy["headers"]["x-forwarded-for"],
        "203.0.113.7, 127.0.0.5"
    );
    assert_eq!(
        via_proxy["headers"]["x-forwarded-proto"], "https",
        "a trusted proxy's proto is kept"
    );
    let direct = ask([127, 0, 0, 6]).await;
    assert_eq!(direct["headers"]["x-real-ip"], "127.0.0.6");
    assert_eq!(
        direct["headers"]["x-forwarded-proto"], "http",
        "a client's claimed proto is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_504() {
    let slow = Backend::start("slow");
    let closer = RawBackend::start(None);
    let refused_address = DeadAddress::new();
    let refused = refused_address.addr.to_string();
    let body = format!(
        "upstreams:
  slow:
    backends: [{{address: {slow}}}]
    timeouts: {{read: 300ms}}
  closer:
    backends: [{{address: {closer}}}]
    retries: 0
  refused:
    backends: [{{address: {refused}}}]
    retries: 0
routes:
  - match: {{path_prefix: /slow}}
    upstream: slow
  - match: {{path_prefix: /closer}}
    upstream: closer
  - match: {{path_prefix: /refused}}
    upstream: refused
",
        slow = slow.addr,
        closer = closer.addr
    );
    let tollgate = Tollgate::start(&body).await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let (status, _, text) = get(&client, &tollgate.url("/slow?ms=3000")).await.unwrap();
    assert_eq!(status, 504, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "read timeout not applied"
    );
    let (status, _, text) = get(&client, &tollgate.url("/closer")).await.unwrap();
    assert_eq!(status, 502, "{text}");
    let (status, _, text) = get(&client, &tollgate.url("/refused")).await.unwrap();
    assert_eq!(status, 502, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let backend = Backend::start("echo");
    let tollgate = Tollgate::start(&single_upstream(&backend.addr.to_string(), "")).await;
    let mut connections = std::collections::HashSet::new();
    for _ in 0..20 {
        // A new client connection each time: reuse must be on tollgate's side.
        let client = reqwest::Client::new();
        let body: Value = client
            .get(tollgate.url("/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        connections.insert(body["connection"].as_u64().unwrap());
    }
    // Without reuse every request opens a connection. With it, a request that
    // follows its predecessor's answer very closely may still find that
    // connection not yet back in the pool, so a few can be opened.
    assert!(
        connections.len() <= 4,
        "20 sequential requests used {} backend connections",
        connections.len()
    );
}
