//! TLS termination with certificates generated at test time: SNI picks the
//! certificate, HTTP/2 and HTTP/1.1 both work, plain listeners redirect to HTTPS,
//! HSTS, bad certificates are `-t` errors that name the file, and tollgate's own
//! error answers reach HTTP/2 clients whole, as they reach HTTP/1.1 ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A self-signed certificate for `names`, valid from `from_days` to `to_days`
/// (relative to now); returns (cert path, key path, PEM of the cert).
fn certificate(
    dir: &Path,
    tag: &str,
    names: &[&str],
    from_days: i64,
    to_days: i64,
) -> (PathBuf, PathBuf, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = write_file(dir, &format!("{tag}.crt"), &cert.pem());
    let key_path = write_file(dir, &format!("{tag}.key"), &key.serialize_pem());
    (cert_path, key_path, cert.pem())
}

struct Edge {
    tollgate: Tollgate,
    https: SocketAddr,
    /// A second plain listener, redirecting with 301.
    http_301: SocketAddr,
    _backend: Backend,
    roots: Vec<String>,
}

async fn edge(http2: bool) -> Edge {
    let dir = temp_dir("tls");
    let a = certificate(&dir, "a", &["a.test"], -1, 30);
    let b = certificate(&dir, "b", &["b.test", "www.b.test"], -1, 30);
    let c = certificate(&dir, "c", &["*.c.test"], -1, 30);
    let backend = Backend::start("app");
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      redirect_https: true
    - address: 127.0.0.1:0
      redirect_https: true
      redirect_status: 301
    - address: 127.0.0.1:0
      tls:
        certificates:
          - {{cert: {ac}, key: {ak}}}
          - {{cert: {bc}, key: {bk}}}
          - {{cert: {cc}, key: {ck}}}
        http2: {http2}
        hsts: {{max_age: 365d, include_subdomains: true}}
  metrics: 127.0.0.1:0
  access_log: off
upstreams:
  app:
    backends: [{{address: {backend}}}]
routes:
  - match: {{path_prefix: /}}
    upstream: app
  - match: {{path: /old}}
    redirect: {{to: /new, status: 301}}
",
        ac = a.0.display(),
        ak = a.1.display(),
        bc = b.0.display(),
        bk = b.1.display(),
        cc = c.0.display(),
        ck = c.1.display(),
        backend = backend.addr
    );
    // The harness waits on the redirect listener; the TLS one belongs to another
    // service and may start listening a moment later.
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let http_301 = tollgate.reported("server.listeners[1]");
    let https = tollgate.reported("server.listeners[2]");
    tollgate.wait_listening(https).await;
    tollgate.wait_listening(http_301).await;
    Edge {
        tollgate,
        https,
        http_301,
        _backend: backend,
        roots: vec![a.2, b.2, c.2],
    }
}

/// A client that trusts the test certificates and sends `name` to the TLS listener.
fn client_for(edge: &Edge, name: &str, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .resolve(name, edge.https)
        .tls_info(true)
        .use_rustls_tls();
    for pem in &edge.roots {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// The DNS names of the certificate the server presented.
fn served_names(response: &reqwest::Response) -> Vec<String> {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let der = info.peer_certificate().expect("a peer certificate");
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_http2_is_offered() {
    let edge = edge(true).await;
    for (name, expected) in [
        ("a.test", "a.test"),
        ("www.b.test", "www.b.test"),
        ("shop.c.test", "*.c.test"),
    ] {
        let response = client_for(&edge, name, false)
            .get(format!("https://{name}:{}/hello", edge.https.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(response.status(), 200);
        assert!(
            served_names(&response).iter().any(|n| n == expected),
            "{name}: {:?}",
            served_names(&response)
        );
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{name}");
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        let seen: serde_json::Value = response.json().await.unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    }
    // HTTP/1.1 is always there too.
    let response = client_for(&edge, "a.test", true)
        .get(format!("https://a.test:{}/", edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    // A client without SNI (or with an unknown name) gets the first certificate.
    let no_sni = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .use_rustls_tls()
        .build()
        .unwrap()
        .get(format!("https://{}/", edge.https))
        .send()
        .await
        .unwrap();
    assert_eq!(served_names(&no_sni), vec!["a.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http2_alpn_offers_http1_only() {
    let edge = edge(false).await;
    let response = client_for(&edge, "a.test", false)
        .get(format!("https://a.test:{}/", edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https_keeping_path_and_query() {
    let edge = edge(true).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{}/a/b?c=d&e", edge.tollgate.addr))
        .header("Host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://shop.example.com:{}/a/b?c=d&e", edge.https.port()).as_str()
    );
    // The listener's own status (redirect_status), as nginx `return 301` users expect.
    let response = client
        .get(format!("http://{}/a", edge.http_301))
        .header("Host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(
        response.headers()["location"],
        format!("https://shop.example.com:{}/a", edge.https.port()).as_str()
    );
    // A route's own redirect.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("a.test", edge.https)
        .add_root_certificate(reqwest::Certificate::from_pem(edge.roots[0].as_bytes()).unwrap())
        .build()
        .unwrap()
        .get(format!("https://a.test:{}/old", edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "/new");
}

/// Runs `tollgate -t` on a TLS listener with `cert` and `key`.
fn check_tls(cert: &Path, key: &Path) -> (bool, String, String) {
    let result = check_topology(&format!(
        "server:\n  listeners:\n    - address: 127.0.0.1:1\n      tls:\n        certificates:\n          - cert: {}\n            key: {}\nroutes:\n  - match: {{path: /}}\n    respond: {{status: 200}}\n",
        cert.display(),
        key.display()
    ));
    (result.ok, result.output, result.file)
}

#[test]
fn bad_certificates_are_config_errors_naming_the_file() {
    let dir = temp_dir("bad-certs");
    let good = certificate(&dir, "good", &["a.test"], -1, 30);
    let other = certificate(&dir, "other", &["b.test"], -1, 30);
    let expired = certificate(&dir, "expired", &["a.test"], -30, -1);

    let (ok, text, _) = check_tls(&good.0, &good.1);
    assert!(ok, "{text}");

    let missing = dir.join("missing.crt");
    let (ok, text, config) = check_tls(&missing, &good.1);
    assert!(!ok);
    assert!(
        text.contains(&format!("{config}:6:")) && text.contains("missing.crt"),
        "{text}"
    );

    let (ok, text, config) = check_tls(&good.0, &other.1);
    assert!(!ok);
    assert!(
        text.contains(&format!("{config}:7:")) && text.contains("does not match"),
        "{text}"
    );

    let (ok, text, _) = check_tls(&expired.0, &expired.1);
    assert!(!ok);
    assert!(text.contains("expired.crt is not valid now"), "{text}");
}

/// A rustls client connection to `addr` for `name`, trusting `root_pem`,
/// offering HTTP/1.1 only; reads time out after 100 ms so callers can poll.
fn http1_tls_client(
    addr: SocketAddr,
    root_pem: &str,
    name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
    let socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// Reads from `stream` until `count` whole responses arrived, the server
/// closed, or `timeout` passed: (the text, whether the server closed).
fn read_tls_responses(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    count: usize,
    timeout: std::time::Duration,
) -> (String, bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if std::time::Instant::now() >= deadline {
                    return (String::from_utf8_lossy(&out).into_owned(), false);
                }
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
        let text = String::from_utf8_lossy(&out);
        if text.matches("HTTP/1.1 ").count() >= count && response_complete(&out) {
            return (text.into_owned(), false);
        }
    }
}

/// An idle TLS connection waits for its next request on the bare stream, as
/// a plain one does (src/edge/keepalive.rs, src/edge/replay.rs): requests
/// that start late, arrive in pieces, have a head longer than the first read,
/// or come two in one write are served whole, and an idle connection closes
/// after `keepalive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connections_serve_late_split_long_and_pipelined_requests() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let dir = temp_dir("tls-keepalive");
    let (cert, key, pem) = certificate(&dir, "a", &["a.test"], -1, 30);
    let backend = Backend::start("app");
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
  client_timeouts: {{keepalive: 3s}}
  access_log: off
{body}",
        cert = cert.display(),
        key = key.display(),
        body = proxy_to(&[backend.addr]),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let mut stream = http1_tls_client(tollgate.addr, &pem, "a.test");
    let long_wait = Duration::from_secs(5);

    // Silent for a while after the handshake, then a request in two pieces.
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"GET /first HT").unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(b"TP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let (first, _) = read_tls_responses(&mut stream, 1, long_wait);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("\"uri\":\"/first\""), "{first}");

    // A head longer than the 4 KiB first read, over several TLS records.
    let long = format!(
        "GET /second HTTP/1.1\r\nHost: a.test\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(20_000)
    );
    stream.write_all(long.as_bytes()).unwrap();
    let (second, _) = read_tls_responses(&mut stream, 1, long_wait);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("\"uri\":\"/second\""), "{second}");

    // Idle between requests, then one more.
    std::thread::sleep(Duration::from_millis(500));
    stream
        .write_all(b"GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let (third, _) = read_tls_responses(&mut stream, 1, long_wait);
    assert!(third.contains("\"uri\":\"/third\""), "{third}");

    // Two requests in one write, so in one TLS record: the first is answered
    // and the second is too, or the connection closes at once; it never
    // waits for the keep-alive timeout with bytes it already decrypted.
    let started = Instant::now();
    stream
        .write_all(
            b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        )
        .unwrap();
    let (both, closed) = read_tls_responses(&mut stream, 2, long_wait);
    assert!(both.contains("\"uri\":\"/p1\""), "{both}");
    assert!(
        both.contains("\"uri\":\"/p2\"") || closed,
        "second pipelined request neither answered nor refused: {both}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // An idle TLS connection is closed after `keepalive` (3 s).
    let mut idle = http1_tls_client(tollgate.addr, &pem, "a.test");
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let (answer, _) = read_tls_responses(&mut idle, 1, long_wait);
    assert!(answer.contains("\"uri\":\"/idle\""), "{answer}");
    let (_, closed) = read_tls_responses(&mut idle, 2, Duration::from_secs(6));
    let waited = started.elapsed();
    assert!(closed, "idle TLS connection left open");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// tollgate on a TLS listener with HTTP/2 whose only route goes to an
/// upstream of two dead backends (`retries: 1`, so every try fails) and
/// buffers request bodies (the default); (tollgate, the listener, the PEM of
/// its certificate for `a.test`).
async fn edge_to_dead_backends(dead: &[DeadAddress; 2]) -> (Tollgate, SocketAddr, String) {
    let dir = temp_dir("tls-dead");
    let (cert, key, pem) = certificate(&dir, "a", &["a.test"], -1, 30);
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {cert}, key: {key}}}]
        http2: true
        hsts: {{max_age: 1d}}
  access_log: off
upstreams:
  gone:
    backends: [{{address: {a}}}, {{address: {b}}}]
    retries: 1
routes:
  - match: {{path_prefix: /}}
    upstream: gone
",
        cert = cert.display(),
        key = key.display(),
        a = dead[0].addr,
        b = dead[1].addr,
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let https = tollgate.addr;
    (tollgate, https, pem)
}

/// An answer as a client reads it to its end: the HTTP version, status, the
/// headers but `date` and `connection` (which differ by time and by HTTP
/// version), and the body. Panics when the answer does not end cleanly (a
/// reset stream), naming `what`.
async fn read_whole(
    what: &str,
    request: reqwest::RequestBuilder,
) -> (reqwest::Version, u16, Vec<(String, String)>, Vec<u8>) {
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), request.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let (version, status) = (response.version(), response.status().as_u16());
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date" && *name != "connection")
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    headers.sort();
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), response.bytes())
        .await
        .unwrap_or_else(|_| panic!("{what}: the body did not end within 10 s"))
        .unwrap_or_else(|e| panic!("{what}: the answer did not end cleanly: {e:?}"));
    (version, status, headers, body.to_vec())
}

/// A client for `a.test` at `https` trusting `pem`: HTTP/2 by ALPN, or
/// HTTP/1.1 only.
fn a_test_client(https: SocketAddr, pem: &str, http1_only: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .resolve("a.test", https)
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

/// A POST whose body is buffered and whose backends all refuse: an HTTP/2
/// client gets the same 502 as an HTTP/1.1 client (status, headers, body),
/// its stream ended cleanly, not reset. Bodies both under and over one
/// HTTP/2 flow-control window (64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_post_to_dead_backends_gets_the_same_502_over_http2() {
    let dead = [DeadAddress::new(), DeadAddress::new()];
    let (_tollgate, https, pem) = edge_to_dead_backends(&dead).await;
    let url = format!("https://a.test:{}/upload", https.port());
    for len in [5, 70_000, 200_000] {
        let body = vec![b'x'; len];
        let h1 = a_test_client(https, &pem, true);
        let over_h1 = read_whole("HTTP/1.1", h1.post(&url).body(body.clone())).await;
        assert_eq!((over_h1.0, over_h1.1), (reqwest::Version::HTTP_11, 502));
        assert_eq!(
            over_h1.3,
            b"502 Bad Gateway: the backend failed to answer\n"
        );
        for round in 0..3 {
            let h2 = a_test_client(https, &pem, false);
            let what = format!("HTTP/2 POST of {len} bytes, round {round}");
            let over_h2 = read_whole(&what, h2.post(&url).body(body.clone())).await;
            assert_eq!(over_h2.0, reqwest::Version::HTTP_2, "{what}");
            assert_eq!(
                (over_h2.1, &over_h2.2, &over_h2.3),
                (over_h1.1, &over_h1.2, &over_h1.3),
                "{what}"
            );
        }
    }
}

/// A HEAD whose backends all refuse gets its 502 head over HTTP/2 with the
/// same headers as over HTTP/1.1 (Content-Length of the body a GET would
/// get), the stream ended by the head itself, not reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_to_dead_backends_gets_its_502_head_over_http2() {
    let dead = [DeadAddress::new(), DeadAddress::new()];
    let (_tollgate, https, pem) = edge_to_dead_backends(&dead).await;
    let url = format!("https://a.test:{}/page", https.port());
    let h1 = a_test_client(https, &pem, true);
    let over_h1 = read_whole("HTTP/1.1 HEAD", h1.head(&url)).await;
    assert_eq!((over_h1.0, over_h1.1), (reqwest::Version::HTTP_11, 502));
    assert!(
        over_h1.2.contains(&("content-length".into(), "46".into())),
        "{:?}",
        over_h1.2
    );
    assert!(over_h1.3.is_empty());
    for round in 0..3 {
        let h2 = a_test_client(https, &pem, false);
        let what = format!("HTTP/2 HEAD, round {round}");
        let over_h2 = read_whole(&what, h2.head(&url)).await;
        assert_eq!(over_h2.0, reqwest::Version::HTTP_2, "{what}");
        assert_eq!(
            (over_h2.1, &over_h2.2, &over_h2.3),
            (over_h1.1, &over_h1.2, &over_h1.3),
            "{what}"
        );
    }
}
