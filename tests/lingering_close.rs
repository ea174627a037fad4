//! Lingering close: a client that writes its whole request body before reading
//! (as many simple clients and scripts do) gets tollgate's 413, over TLS and
//! plain HTTP, instead of a connection reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A body well past the limit and the socket buffers between client and tollgate.
const BODY: usize = 4 << 20;
const RUNS: usize = 10;

fn request() -> Vec<u8> {
    let mut request =
        format!("POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {BODY}\r\n\r\n")
            .into_bytes();
    request.resize(request.len() + BODY, b'x');
    request
}

/// Writes `request` whole, then reads until the server closes; what was read,
/// or the error that ended it.
fn write_all_then_read(mut stream: impl Read + Write) -> Result<String, std::io::Error> {
    stream.write_all(&request())?;
    stream.flush()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify: what came is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn tls_exchange(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<String, std::io::Error> {
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    write_all_then_read(rustls::StreamOwned::new(connection, tcp))
}

fn plain_exchange(addr: SocketAddr) -> Result<String, std::io::Error> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    write_all_then_read(tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_first_reads_the_413() {
    let dir = temp_dir("linger");
    let (cert_path, key_path, cert_pem) =
        common::tls::self_signed_files(&dir, "site", &["shop.test"]);
    let backend = RawBackend::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    let config = format!(
        "server:
  listeners:
    - address: 127.0.0.1:0
    - address: 127.0.0.1:0
      tls:
        certificates: [{{cert: {}, key: {}}}]
  max_request_body: 64KiB
  pid_file: {}
  upgrade_sock: {}
{}",
        cert_path.display(),
        key_path.display(),
        dir.join("tollgate.pid").display(),
        dir.join("upgrade.sock").display(),
        proxy_to(&[backend.addr]),
    );
    let tollgate = Tollgate::launch_reported(dir, &config, &[]).await;
    let plain = tollgate.addr;
    let tls = tollgate.reported("server.listeners[1]");
    tollgate.wait_listening(tls).await;
    let client = common::tls::client_trusting(&[&cert_pem]);

    let results = tokio::task::spawn_blocking(move || {
        let mut outcomes = Vec::new();
        for _ in 0..RUNS {
            outcomes.push(("tls", tls_exchange(tls, Arc::clone(&client))));
            outcomes.push(("plain", plain_exchange(plain)));
        }
        outcomes
    })
    .await
    .unwrap();
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, r)| !r.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 413")))
        .map(|(kind, r)| format!("{kind}: {r:?}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} exchanges did not read the 413: {failures:?}",
        failures.len(),
        results.len()
    );
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the body reached the backend"
    );
}
