//! Certificates from files are read again on reload (SIGHUP): a rotated
//! certificate is served to new handshakes without a restart, connections
//! open before keep theirs, and a broken file keeps the old certificate and
//! fails the reload. The listener is bound to 0.0.0.0, where TLS must hold too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tls::{client_trusting, connect, get_over, served_der};
use common::*;
use std::net::SocketAddr;
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
    - address: 0.0.0.0:0                # a wildcard bind: TLS all the same
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
    let mut tollgate = Tollgate::launch_reported(dir.clone(), &config, &[]).await;
    tollgate.addr = SocketAddr::from(([127, 0, 0, 1], tollgate.addr.port()));
    let roots = client_trusting(&[&old_pem, &new_pem]);
    let mut held = connect(tollgate.addr, "shop.test", roots.clone()).unwrap();
    assert_eq!(served_der(&held), old_der);
    assert_eq!(get_over(&mut held, "shop.test"), "HTTP/1.1 200 OK");

    std::fs::write(&key_file, &new_key).unwrap();
    std::fs::write(&cert_file, &new_pem).unwrap();
    tollgate.signal(libc::SIGHUP);
    let addr = tollgate.addr;
    let rotated = wait_until(Duration::from_secs(10), || {
        let served = connect(addr, "shop.test", roots.clone()).map(|s| served_der(&s));
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
        get_over(&mut held, "shop.test"),
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
    let still = connect(tollgate.addr, "shop.test", roots.clone()).unwrap();
    assert_eq!(
        served_der(&still),
        new_der,
        "the last good certificate is kept"
    );
}
