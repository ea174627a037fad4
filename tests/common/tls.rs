//! TLS for the tests: clients that trust given roots and keep their
//! connection, and certificate authorities of their own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A client connection whose handshake is done.
pub type Connection = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client config that trusts the certificates of `roots_pem` and nothing else.
pub fn client_trusting(roots_pem: &[&str]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("a PEM certificate")).expect("a root");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to `addr` for `name`, its handshake done (an error when
/// the server refuses it or its certificate does not verify).
pub fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Connection> {
    let server_name =
        rustls::pki_types::ServerName::try_from(name.to_string()).expect("a server name");
    let connection = rustls::ClientConnection::new(config, server_name).expect("a client");
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The DER of the certificate the server of `stream` presented.
pub fn served_der(stream: &Connection) -> Vec<u8> {
    stream.conn.peer_certificates().expect("a peer certificate")[0]
        .as_ref()
        .to_vec()
}

/// GET / for `host` over `stream`, kept alive; the status line.
pub fn get_over(stream: &mut Connection, host: &str) -> String {
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !super::response_complete(&out) {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the connection closed");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A certificate authority of the test's own.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("a CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate it signs for `names` and `ips`: (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str], ips: &[std::net::IpAddr]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("parameters");
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A self-signed certificate for `names`, written to `dir` as `NAME.crt`
/// and `NAME.key`: (cert path, key path, cert PEM).
pub fn self_signed_files(
    dir: &std::path::Path,
    name: &str,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("parameters")
        .self_signed(&key)
        .expect("a certificate");
    let cert_path = super::write_file(dir, &format!("{name}.crt"), &cert.pem());
    let key_path = super::write_file(dir, &format!("{name}.key"), &key.serialize_pem());
    (cert_path, key_path, cert.pem())
}
