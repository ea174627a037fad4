//! One active health probe of one backend: a TCP connect, or an HTTP/1.1 GET whose
//! status is checked; over TLS when the upstream's traffic is.

use crate::config::UpstreamTlsConfig;
use pingora::tls::{
    install_default_crypto_provider, load_platform_certs_incl_env_into_store, CertificateDer,
    ClientConfig, CryptoProvider, DigitallySignedStruct, HandshakeSignatureValid, RootCertStore,
    RusTlsError, ServerCertVerified, ServerCertVerifier, ServerName, SignatureScheme, TlsConnector,
    UnixTime,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a backend is probed.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Healthy when a TCP connection opens.
    Tcp,
    /// Healthy when `GET path` answers an expected status.
    Http {
        path: String,
        /// Host header; the backend address when `None`.
        host: Option<String>,
        /// Accepted statuses; any 2xx when `None`.
        expect_status: Option<Vec<u16>>,
    },
}

/// Largest response head read from a probe.
const MAX_HEAD: usize = 8 * 1024;

impl Probe {
    /// Probes `address` within `timeout`, over TLS when `tls` is set; `Err` says
    /// why the backend failed.
    pub async fn check(
        &self,
        address: SocketAddr,
        tls: Option<&ProbeTls>,
        timeout: Duration,
    ) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.check_unbounded(address, tls)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn check_unbounded(
        &self,
        address: SocketAddr,
        tls: Option<&ProbeTls>,
    ) -> Result<(), String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            None => self.exchange(tcp, address).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                self.exchange(stream, address).await
            }
        }
    }

    /// The HTTP part of a probe on an open connection; nothing for TCP probes.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        address: SocketAddr,
    ) -> Result<(), String> {
        let Probe::Http {
            path,
            host,
            expect_status,
        } = self
        else {
            return Ok(());
        };
        let host = host.clone().unwrap_or_else(|| address.to_string());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-health-check\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        let line_end = loop {
            if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if head.len() > MAX_HEAD {
                return Err("status line too long".to_string());
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            head.extend_from_slice(&buf[..n]);
        };
        let status = parse_status_line(&head[..line_end])
            .ok_or_else(|| "malformed status line".to_string())?;
        let accepted = match expect_status {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        };
        if accepted {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

/// TLS for probes, set up as the upstream's traffic is: SNI and verification
/// against the system's CAs when `verify`, no verification otherwise.
pub struct ProbeTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl ProbeTls {
    pub fn new(config: &UpstreamTlsConfig) -> Self {
        install_default_crypto_provider();
        let builder = ClientConfig::builder();
        let mut client = if config.verify {
            let mut roots = RootCertStore::empty();
            if let Err(e) = load_platform_certs_incl_env_into_store(&mut roots) {
                log::warn!("health checks: system CA certificates unavailable: {e}");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
                .with_no_client_auth()
        };
        let sni = config.sni.clone().filter(|s| !s.is_empty());
        client.enable_sni = sni.is_some();
        let server_name = sni
            .and_then(|s| ServerName::try_from(s).ok())
            .unwrap_or_else(|| ServerName::try_from("backend.invalid").expect("a valid DNS name"));
        ProbeTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        }
    }
}

/// The certificate check of `verify: false`: none.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_default()
    }
}

/// The status of `HTTP/1.x SSS reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?;
    if status.len() != 3 {
        return None;
    }
    status.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
    }
}
