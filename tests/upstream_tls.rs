//! HTTPS to backends: traffic and health probes go over TLS with SNI;
//! `verify: true` refuses a certificate no CA vouches for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS backend's certificate for `backend.test`, which notes the SNI name
/// of every ClientHello (`None`: the client sent none).
#[derive(Debug)]
struct NotingResolver {
    key: Arc<rustls::sign::CertifiedKey>,
    names: Mutex<Vec<Option<String>>>,
}

impl rustls::server::ResolvesServerCert for NotingResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name().map(str::to_string);
        self.names.lock().unwrap().push(name);
        Some(self.key.clone())
    }
}

/// A TLS backend for `backend.test` with a self-signed certificate, answering
/// every request `200 tls-backend`; counts completed handshakes.
async fn tls_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let (addr, handshakes, _) = noting_tls_backend().await;
    (addr, handshakes)
}

/// [`tls_backend`], and the SNI names its ClientHellos carried.
async fn noting_tls_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<NotingResolver>) {
    pingora::tls::install_default_crypto_provider();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["backend.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let private = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&private).unwrap();
    let resolver = Arc::new(NotingResolver {
        key: Arc::new(rustls::sign::CertifiedKey::new(chain, signer)),
        names: Mutex::new(Vec::new()),
    });
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        request.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\ntls-backend";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, handshakes, resolver)
}

/// Asserts that `/x` is answered by the TLS backend.
async fn assert_served_by_the_tls_backend(tollgate: &Tollgate) {
    let response = reqwest::get(tollgate.url("/x")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "tls-backend");
}

/// Whether, within 5 s, `upstream`'s health checks with `result` count `n`.
async fn probes_reach(tollgate: &Tollgate, upstream: &str, result: &str, n: f64) -> bool {
    wait_until(std::time::Duration::from_secs(5), || async {
        let labels = [("upstream", upstream), ("result", result)];
        let counted = tollgate
            .metric("tollgate_health_checks_total", &labels)
            .await;
        counted.unwrap_or(0.0) >= n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_and_health_checks_go_over_tls() {
    let (backend, handshakes) = tls_backend().await;
    let tollgate = Tollgate::start(&format!(
        "upstreams:
  secure:
    backends: [{{address: {backend}}}]
    tls: {{sni: backend.test, verify: false}}
    health_check:
      http: {{path: /health}}
      interval: 100ms
  strict:
    backends: [{{address: {backend}}}]
    tls: {{sni: backend.test, verify: true}}
    retries: 0
    health_check:
      http: {{path: /health}}
      interval: 100ms
routes:
  - match: {{path_prefix: /strict}}
    upstream: strict
  - match: {{path_prefix: /}}
    upstream: secure
"
    ))
    .await;
    assert_served_by_the_tls_backend(&tollgate).await;

    let probed = probes_reach(&tollgate, "secure", "success", 2.0).await;
    assert!(
        probed,
        "no successful TLS health probe:\n{}",
        tollgate.metrics().await
    );
    assert!(
        handshakes.load(Ordering::SeqCst) >= 2,
        "the backend saw no TLS handshakes"
    );

    // A self-signed certificate is not accepted when verification is on: not by
    // traffic, and not by the probes, which use the same peer and TLS set-up.
    let refused = reqwest::get(tollgate.url("/strict")).await.unwrap();
    assert_eq!(refused.status(), 502);
    let probes_refused = probes_reach(&tollgate, "strict", "failure", 2.0).await;
    assert!(probes_refused, "{}", tollgate.metrics().await);
    let strict_successes = tollgate
        .metric(
            "tollgate_health_checks_total",
            &[("upstream", "strict"), ("result", "success")],
        )
        .await
        .unwrap_or(0.0);
    assert_eq!(
        strict_successes, 0.0,
        "a probe accepted an untrusted certificate"
    );
}

/// `tls` without `sni` (and so without `verify`): the connection opens with
/// no SNI at all, for traffic and probes alike, rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sni_the_connection_sends_none_and_is_served() {
    let (backend, _, resolver) = noting_tls_backend().await;
    let tollgate = Tollgate::start(&format!(
        "upstreams:
  nameless:
    backends: [{{address: {backend}}}]
    tls: {{verify: false}}
    health_check:
      http: {{path: /health}}
      interval: 100ms
routes:
  - match: {{path_prefix: /}}
    upstream: nameless
"
    ))
    .await;
    assert_served_by_the_tls_backend(&tollgate).await;
    let probed = probes_reach(&tollgate, "nameless", "success", 1.0).await;
    assert!(probed, "no successful probe:\n{}", tollgate.metrics().await);
    let names = resolver.names.lock().unwrap().clone();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(Option::is_none),
        "a ClientHello carried SNI: {names:?}"
    );
}
