//! Active health probes, run by pingora's own health checks (`HttpHealthCheck`,
//! `TcpHealthCheck`) or tollgate's gRPC one (`grpc_probe`) with each backend's own peer: a probe connects exactly as
//! traffic does, TLS, SNI and certificate verification included.

use super::grpc_probe::GrpcHealthCheck;
use crate::balance::Backend;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::upstreams::peer::{BasicPeer, HttpPeer, PeerOptions};
use pingora::ErrorType;
use std::time::Duration;

/// What a probe asks for.
#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// Healthy when a connection (TCP, and TLS when the upstream has `tls`) opens.
    Tcp,
    /// Healthy when `GET path` answers an expected status.
    Http {
        path: http::uri::PathAndQuery,
        /// Host header; the backend's address when `None`.
        host: Option<http::HeaderValue>,
        /// Accepted statuses; any 2xx when `None`.
        expect_status: Option<Vec<u16>>,
    },
    /// Healthy when the standard gRPC health service says `SERVING` for
    /// `service` (see `grpc_probe`).
    Grpc { service: String },
}

/// The probes of one upstream's backends, one check per backend.
pub struct Probes {
    checks: Vec<Box<dyn HealthCheck + Send + Sync>>,
    timeout: Duration,
}

impl Probes {
    /// Probes of `kind` for `backends`, each bounded by `timeout`.
    pub fn new(kind: &ProbeKind, backends: &[Backend], timeout: Duration) -> Probes {
        let checks = backends
            .iter()
            .map(|backend| check_of(kind, backend, timeout))
            .collect();
        Probes { checks, timeout }
    }

    /// Probes backend `index` (of `backend`) once; `Err` says why it failed.
    pub async fn check(&self, index: usize, backend: &Backend) -> Result<(), String> {
        let Some(check) = self.checks.get(index) else {
            return Err("no probe for this backend".into());
        };
        let target = pingora::lb::Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(backend.address),
            weight: 1,
            ext: http::Extensions::new(),
        };
        // pingora bounds connecting and each read; this bounds the whole probe.
        match tokio::time::timeout(self.timeout, check.check(&target)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// The backend's connection settings with the probe's `timeout` for every step.
fn probe_options(backend: &Backend, timeout: Duration) -> PeerOptions {
    let mut options = backend.peer.options.clone();
    options.connection_timeout = Some(timeout);
    options.total_connection_timeout = Some(timeout);
    options.read_timeout = Some(timeout);
    options.write_timeout = Some(timeout);
    options
}

fn check_of(
    kind: &ProbeKind,
    backend: &Backend,
    timeout: Duration,
) -> Box<dyn HealthCheck + Send + Sync> {
    let options = probe_options(backend, timeout);
    if let ProbeKind::Grpc { service } = kind {
        let mut peer = backend.peer.clone();
        peer.options = options;
        return Box::new(GrpcHealthCheck::new(peer, service, &backend.label));
    }
    let ProbeKind::Http {
        path,
        host,
        expect_status,
    } = kind
    else {
        let mut tcp = TcpHealthCheck::new();
        let mut peer = BasicPeer::new(&backend.address.to_string());
        if backend.peer.is_tls() {
            peer.sni = backend.peer.sni.clone();
        }
        peer.options = options;
        tcp.peer_template = peer;
        return tcp;
    };
    let mut http = HttpHealthCheck::new("", backend.peer.is_tls());
    let mut peer: HttpPeer = backend.peer.clone();
    peer.options = options;
    http.peer_template = peer;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.uri = http::Uri::from(path.clone());
    // Labels are `IP:port` or `name:port`: always a valid Host value.
    let host = host
        .clone()
        .or_else(|| http::HeaderValue::from_str(&backend.label).ok());
    if let Some(host) = host {
        parts.headers.insert(http::header::HOST, host);
    }
    parts.headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("tollgate-health-check"),
    );
    http.req = pingora::http::RequestHeader::from(parts);
    let accepted = expect_status.clone();
    http.validator = Some(Box::new(move |resp| {
        let status = resp.status.as_u16();
        let ok = match &accepted {
            Some(list) => list.contains(&status),
            None => resp.status.is_success(),
        };
        if ok {
            Ok(())
        } else {
            pingora::Error::e_explain(
                ErrorType::CustomCode("unexpected status", status),
                format!("status {status}"),
            )
        }
    }));
    Box::new(http)
}
