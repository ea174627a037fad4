//! The hooks on a real pingora `Session` over an in-memory stream: what
//! `request_filter` answers, and what `upstream_request_filter` sends on.

use super::*;
use crate::access_log::AccessLog;
use crate::config::{AccessLogFormat, AccessLogTarget};
use crate::topology::Resources;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TOPOLOGY: &str = "\
server:
  listeners: [{address: 127.0.0.1:1}]
upstreams:
  app: {backends: [{address: 127.0.0.1:9}]}
auth:
  keys:
    jwt: {algorithms: [HS256], secret_env: PROXY_TEST_SECRET, claims_to_headers: {sub: X-User}}
rate_limits:
  once: {key: global, rate: 1/m, burst: 0}
routes:
  - match: {path: /healthz}
    respond: {status: 200, body: ok}
  - match: {path_prefix: /once/}
    respond: {status: 204}
    rate_limit: once
  - match: {path_prefix: /private/}
    upstream: app
    auth: keys
  - match: {path_prefix: /app/}
    upstream: app
    strip_prefix: true
";

fn proxy() -> Proxy {
    std::env::set_var("PROXY_TEST_SECRET", "proxy-test-secret");
    let loaded = crate::config::parse(TOPOLOGY, std::path::Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let resources = Resources::read(&loaded.config).unwrap_or_else(|e| panic!("{:?}", e.0));
    let topology = Topology::compile(&loaded.config, resources, None);
    let access_log = AccessLog::open(&AccessLogTarget::Off, AccessLogFormat::Json).unwrap();
    Proxy::new(
        Arc::new(ArcSwap::from_pointee(topology)),
        access_log,
        ProxySettings {
            tls_listeners: Default::default(),
            max_request_body: 1024,
            client_timeouts: ClientTimeoutsConfig::default(),
            compression: None,
            encoded_slashes: EncodedSlashes::Reject,
            underscores_in_headers: UnderscoreHeaders::Drop,
            http01: None,
            buffering_default: true,
            buffer_limits: crate::edge::request_body::BufferLimits {
                max_body: 1024,
                memory: 512,
                temp_dir: std::env::temp_dir(),
            },
            request_ids: None,
            tracer: None,
        },
    )
}

/// A session that has read `request`, and the client's end of its stream.
async fn session(request: &str) -> (Session, DuplexStream) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(request.as_bytes()).await.unwrap();
    let mut session = Session::new_h1(Box::new(server));
    assert!(session.read_request().await.unwrap(), "no request read");
    (session, client)
}

/// What `request_filter` did with `request`: whether it answered, the answer's
/// bytes, and the request's context after it.
async fn filter(proxy: &Proxy, request: &str) -> (bool, String, RequestCtx) {
    let (mut session, mut client) = session(request).await;
    let mut ctx = proxy.new_ctx();
    let answered = proxy.request_filter(&mut session, &mut ctx).await.unwrap();
    drop(session);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    (answered, String::from_utf8_lossy(&out).into_owned(), ctx)
}

#[tokio::test]
async fn direct_answers_are_written_and_their_status_recorded() {
    let proxy = proxy();
    let (answered, out, ctx) = filter(&proxy, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answered);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("ok"), "{out}");
    assert_eq!(ctx.own_status(), Some(200));

    let (answered, out, ctx) = filter(&proxy, "GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answered);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert_eq!(ctx.own_status(), Some(404));
}

#[tokio::test]
async fn refused_heads_and_paths_get_400_and_a_closed_connection() {
    let proxy = proxy();
    for request in [
        "GET /app/a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",
        "POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let (answered, out, ctx) = filter(&proxy, request).await;
        assert!(answered, "{request}");
        assert!(out.starts_with("HTTP/1.1 400"), "{request}: {out}");
        assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
        assert_eq!(ctx.own_status(), Some(400));
    }
}

#[tokio::test]
async fn a_rate_limit_refuses_with_its_answer_and_auth_with_401() {
    let proxy = proxy();
    let (_, first, _) = filter(&proxy, "GET /once/a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 204"), "{first}");
    let (answered, second, ctx) = filter(&proxy, "GET /once/a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answered);
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    let lower = second.to_ascii_lowercase();
    assert!(
        lower.contains("retry-after: 60") && lower.contains("ratelimit-limit: 1"),
        "{second}"
    );
    assert_eq!(ctx.own_status(), Some(429));

    let (answered, out, ctx) = filter(&proxy, "GET /private/x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answered);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert_eq!(ctx.own_status(), Some(401));
}

#[tokio::test]
async fn a_proxied_request_goes_on_with_its_upstream_and_forwarded_head() {
    let proxy = proxy();
    let request =
        "GET /app/%70a//th?q=1 HTTP/1.1\r\nHost: a\r\nX-User: forged\r\nX_Role: x\r\n\r\n";
    let (mut session, _client) = session(request).await;
    let mut ctx = proxy.new_ctx();
    assert!(!proxy.request_filter(&mut session, &mut ctx).await.unwrap());
    assert_eq!(ctx.upstream, Some(0));
    assert_eq!(ctx.own_status(), None);
    let mut upstream_request = session.req_header().clone();
    proxy
        .upstream_request_filter(&mut session, &mut upstream_request, &mut ctx)
        .await
        .unwrap();
    // Normalized, the prefix stripped, the query kept.
    assert_eq!(upstream_request.raw_path(), b"/pa/th?q=1");
    assert!(
        !upstream_request.headers.contains_key("x-user"),
        "a client's identity header"
    );
    assert!(
        !upstream_request.headers.contains_key("x_role"),
        "an underscore header"
    );
    assert_eq!(upstream_request.headers["x-forwarded-proto"], "http");
    assert_eq!(upstream_request.headers["x-forwarded-host"], "a");
}
