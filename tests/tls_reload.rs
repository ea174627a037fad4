//! Certificates from files are read again on reload (SIGHUP): a rotated
//! certificate is served to new handshakes without a restart, connections
//! open before keep theirs, and a broken file keeps the old certificate and
//! fails the reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A self-signed certificate for shop.test, valid for `days`: (cert PEM, key PEM, DER).
fn certificate(days: i64) -> (String, String, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

type Connection = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection for shop.test trusting `roots`, its handshake done.
fn connect(addr: SocketAddr, roots: &[&[u8]]) -> std::io::Result<Connection> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn served_der(stream: &Connection) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn get_over(stream: &mut Connection) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !response_complete(&out) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_after_a_reload_and_a_broken_one_is_refused() {
    let dir = temp_dir("tls-reload");
    let (old_pem, old_key, old_der) = certificate(30);
    let (new_pem, new_key, new_der) = certificate(90);
    let cert_file = write_file(&dir, "site.crt", &old_pem);
    let key_file = write_file(&dir, "site.key", &old_key);
    let backend = Backend::start("app");
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {}, key: {}}}]
  metrics: 127.0.0.1:0
  pid_file: {}
  upgrade_sock: {}
{}",
        cert_file.display(),
        key_file.display(),
        dir.join("tollgate.pid").display(),
        dir.join("upgrade.sock").display(),
        proxy_to(&[backend.addr]),
    );
    let tollgate = Tollgate::launch_reported(dir.clone(), &config, &[]).await;
    let roots: [&[u8]; 2] = [&old_der, &new_der];
    let mut held = connect(tollgate.addr, &roots).unwrap();
    assert_eq!(served_der(&held), old_der);
    assert_eq!(get_over(&mut held), "HTTP/1.1 200 OK");

    std::fs::write(&key_file, &new_key).unwrap();
    std::fs::write(&cert_file, &new_pem).unwrap();
    tollgate.signal(libc::SIGHUP);
    let addr = tollgate.addr;
    let rotated = wait_until(Duration::from_secs(10), || {
        let served = connect(addr, &roots).map(|s| served_der(&s));
        let done = served.is_ok_and(|der| der == new_der);
        async move { done }
    })
    .await;
    assert!(
        rotated,
        "the new certificate is not served:\n{}",
        tollgate.stderr()
    );
    assert_eq!(
        get_over(&mut held),
        "HTTP/1.1 200 OK",
        "the open connection"
    );
    let expiry = tollgate
        .metric(
            "tollgate_tls_certificate_expiry_timestamp_seconds",
            &[("name", "shop.test"), ("source", "file")],
        )
        .await
        .unwrap();
    let in_days = (expiry - time::OffsetDateTime::now_utc().unix_timestamp() as f64) / 86400.0;
    assert!((89.0..=90.0).contains(&in_days), "expiry in {in_days} days");

    std::fs::write(&cert_file, "not a certificate\n").unwrap();
    tollgate.signal(libc::SIGHUP);
    let failed = tollgate
        .metric_reaches("tollgate_config_reloads_total", &[("result", "error")], 1.0)
        .await;
    assert!(failed, "the broken certificate was not refused");
    assert!(
        tollgate.stderr().contains(&cert_file.display().to_string()),
        "the error names the file:\n{}",
        tollgate.stderr()
    );
    let still = connect(tollgate.addr, &roots).unwrap();
    assert_eq!(
        served_der(&still),
        new_der,
        "the last good certificate is kept"
    );
}
