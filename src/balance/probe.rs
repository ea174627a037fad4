//! One active health probe of one backend: a TCP connect, or an HTTP/1.1 GET whose
//! status is checked.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Probes `address` within `timeout`; `Err` says why the backend failed.
    pub async fn check(&self, address: SocketAddr, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.check_unbounded(address)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn check_unbounded(&self, address: SocketAddr) -> Result<(), String> {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
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
