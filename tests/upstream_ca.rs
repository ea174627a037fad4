//! A private CA per upstream: `tls.ca` verifies a backend whose certificate
//! an internal CA (made with the openssl CLI) signed, instead of the system's
//! CAs, for traffic and health checks alike; without it, or with another CA,
//! the same backend is refused by both. A CA file that is missing or not
//! certificates is a `-t` error at its line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `openssl COMMAND` (split at spaces) in `dir`; panics when it fails.
fn openssl(dir: &Path, command: &str) {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("run openssl (the openssl package)");
    assert!(
        out.status.success(),
        "openssl {command} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A CA `NAME.pem` (key `NAME.key`) of an internal PKI.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 {NEW_KEY} -keyout {name}.key -out {name}.pem -days 30 -subj /CN={name} \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ),
    );
}

/// A certificate for `app.internal` signed by CA `ca`: `backend.crt`, `backend.key`.
fn make_backend_cert(dir: &Path, ca: &str) {
    openssl(
        dir,
        &format!("req -new {NEW_KEY} -keyout backend.key -out backend.csr -subj /CN=app.internal"),
    );
    std::fs::write(
        dir.join("backend.ext"),
        "subjectAltName=DNS:app.internal\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &format!(
            "x509 -req -in backend.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out backend.crt -days 30 -extfile backend.ext"
        ),
    );
}

/// A TLS backend serving `backend.crt` of `dir`, answering every request
/// `200 internal-backend`.
async fn tls_backend(dir: &Path) -> std::net::SocketAddr {
    pingora::tls::install_default_crypto_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("backend.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("backend.key")).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        request.drain(..end + 4);
                        let answer =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\ninternal-backend";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The count of `tollgate_health_checks_total` for `upstream` and `result`.
async fn probes(tollgate: &Tollgate, upstream: &str, result: &str) -> f64 {
    let labels = [("upstream", upstream), ("result", result)];
    tollgate
        .metric("tollgate_health_checks_total", &labels)
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_verifies_traffic_and_health_checks() {
    let dir = temp_dir("upstream-ca");
    make_ca(&dir, "internal-ca");
    make_ca(&dir, "other-ca");
    make_backend_cert(&dir, "internal-ca");
    let backend = tls_backend(&dir).await;
    let upstream = |name: &str, ca: &str| {
        format!(
            "  {name}:
    backends: [{{address: {backend}}}]
    tls: {{sni: app.internal, verify: true{ca}}}
    retries: 0
    health_check:
      http: {{path: /health}}
      interval: 100ms
"
        )
    };
    let internal_ca = format!(", ca: {}", dir.join("internal-ca.pem").display());
    let other_ca = format!(", ca: {}", dir.join("other-ca.pem").display());
    let tollgate = Tollgate::start(&format!(
        "upstreams:
{}{}{}routes:
  - match: {{path_prefix: /system}}
    upstream: system
  - match: {{path_prefix: /other}}
    upstream: other
  - match: {{path_prefix: /}}
    upstream: internal
",
        upstream("internal", &internal_ca),
        upstream("system", ""),
        upstream("other", &other_ca),
    ))
    .await;

    let trusted = reqwest::get(tollgate.url("/x")).await.unwrap();
    assert_eq!(trusted.status(), 200);
    assert_eq!(trusted.text().await.unwrap(), "internal-backend");
    // The system's CAs do not know the internal one, nor does another CA.
    for path in ["/system", "/other"] {
        let refused = reqwest::get(tollgate.url(path)).await.unwrap();
        assert_eq!(refused.status(), 502, "{path}");
    }

    let probed = wait_until(Duration::from_secs(10), || async {
        probes(&tollgate, "internal", "success").await >= 2.0
            && probes(&tollgate, "system", "failure").await >= 2.0
            && probes(&tollgate, "other", "failure").await >= 2.0
    })
    .await;
    assert!(probed, "{}", tollgate.metrics().await);
    for untrusting in ["system", "other"] {
        assert_eq!(
            probes(&tollgate, untrusting, "success").await,
            0.0,
            "a probe of {untrusting} accepted a certificate it has no CA for"
        );
    }
    assert_eq!(probes(&tollgate, "internal", "failure").await, 0.0);
}

#[test]
fn bad_upstream_ca_settings_are_errors_at_their_line() {
    let dir = temp_dir("upstream-ca-check");
    make_ca(&dir, "internal-ca");
    let ca = dir.join("internal-ca.pem");
    let file = |ca: &Path, verify: bool| {
        format!(
            "server:
  listeners:
    - address: 127.0.0.1:0
upstreams:
  internal:
    backends: [{{address: 127.0.0.1:9}}]
    tls:
      sni: app.internal
      verify: {verify}
      ca: {}
routes:
  - match: {{path_prefix: /}}
    upstream: internal
",
            ca.display()
        )
    };
    let checked = check_topology(&file(&ca, true));
    assert!(checked.ok, "{}", checked.output);
    assert_refused_at(
        &file(&dir.join("missing.pem"), true),
        10,
        &["upstreams.internal.tls.ca", "cannot read", "missing.pem"],
    );
    assert_refused_at(
        &file(&dir.join("internal-ca.key"), true),
        10,
        &["holds no PEM certificate"],
    );
    assert_refused_at(&file(&ca, false), 10, &["`verify` is false"]);
}
