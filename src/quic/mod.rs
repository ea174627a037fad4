//! HTTP/3 on the TLS listeners with `http3`: QUIC on UDP at the listener's
//! address (quinn, rustls with the listener's own certificate resolver, so
//! the same certificates, SNI choice and rotations as over TCP), HTTP/3
//! framing and QPACK from h3, and a bridge ([`session::H3Session`]) that
//! hands each request to the same pingora `HttpProxy` the TCP listeners
//! serve: routing, policies, cache, metrics and the access log are decided
//! there, never here.
//!
//! The service ([`QuicService`]) runs one endpoint per listener. Its limits:
//! the listener's `http3.max_streams` requests at once per connection,
//! `http3.idle_timeout`, a 10 s handshake, [`MAX_HANDSHAKES`] handshakes in
//! flight at most, address validation by Retry (`http3.retry`), quinn's
//! anti-amplification limit (3x what an unvalidated address sent), and no
//! 0-RTT (early data could be replayed to backends). On shutdown (SIGTERM,
//! the end of a binary upgrade's handover) every connection gets a GOAWAY,
//! its requests in flight finish, and it closes; new connections are refused.
//! The UDP socket passes to the new process of a binary upgrade (see
//! [`handover`]).

mod connection;
mod handover;
mod session;

use crate::config::{Config, Http3Config, Http3Retry};
use crate::edge::certs::CertStore;
use crate::metrics::metrics;
use crate::proxy::Proxy;
use async_trait::async_trait;
use pingora::proxy::HttpProxy;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use pingora::tls::{version, ServerConfig};
use prometheus::{IntCounter, IntGauge};
use quinn::crypto::rustls::QuicServerConfig;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol of HTTP/3.
const H3_ALPN: &[u8] = b"h3";

/// Handshakes in flight on one listener above which `retry: auto` validates
/// new clients' addresses with a Retry first.
const RETRY_ABOVE: usize = 64;

/// Handshakes in flight on one listener at most; further new connections are
/// refused (the client may try again, or fall back to TCP).
pub(crate) const MAX_HANDSHAKES: usize = 4096;

/// The longest a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unidirectional streams a client may open: HTTP/3's control and QPACK
/// streams, and a few more it may send (RFC 9114 6.2.3 allows any).
const MAX_UNI_STREAMS: u32 = 16;

/// One `http3` listener, before it runs.
struct Listener {
    /// Where it listens (port 0 resolved): its TCP listener's address.
    address: SocketAddr,
    /// The socket reserved for it, if this process bound one.
    socket: Option<UdpSocket>,
    config: quinn::ServerConfig,
    limits: Http3Config,
}

/// What a listener's connections share.
pub(crate) struct ListenerState {
    pub(crate) address: SocketAddr,
    proxy: Arc<HttpProxy<Proxy>>,
    retry: Http3Retry,
    /// Handshakes under way now.
    handshakes: AtomicUsize,
    pub(crate) metrics: ListenerMetrics,
}

/// The metric handles of one listener, resolved once.
pub(crate) struct ListenerMetrics {
    pub(crate) open: IntGauge,
    pub(crate) success: IntCounter,
    pub(crate) failure: IntCounter,
    pub(crate) timeout: IntCounter,
    retry: IntCounter,
    refused: IntCounter,
    pub(crate) sent: IntCounter,
    pub(crate) lost: IntCounter,
}

impl ListenerMetrics {
    fn new(address: SocketAddr) -> Self {
        let m = metrics();
        let listener = address.to_string();
        let handshakes = |result: &str| m.quic_handshakes.with_label_values(&[&listener, result]);
        ListenerMetrics {
            open: m.quic_connections.with_label_values(&[&listener]),
            success: handshakes("success"),
            failure: handshakes("failure"),
            timeout: handshakes("timeout"),
            retry: handshakes("retry"),
            refused: handshakes("refused"),
            sent: m.quic_packets_sent.with_label_values(&[&listener]),
            lost: m.quic_packets_lost.with_label_values(&[&listener]),
        }
    }
}

/// The QUIC listeners of a config, as one pingora service.
pub struct QuicService {
    listeners: Vec<Listener>,
    proxy: Arc<HttpProxy<Proxy>>,
    threads: usize,
}

impl QuicService {
    /// The service of `config`'s `http3` listeners, at `addresses` (one per
    /// listener), on the sockets in `sockets` (one per listener, `None` where
    /// none was bound), serving with `proxy`; `None` when no listener has
    /// `http3`. The error says which listener's TLS setup failed.
    pub fn new(
        config: &Config,
        addresses: &[SocketAddr],
        mut sockets: Vec<Option<UdpSocket>>,
        certs: &Arc<CertStore>,
        proxy: Arc<HttpProxy<Proxy>>,
    ) -> anyhow::Result<Option<QuicService>> {
        sockets.resize_with(addresses.len(), || None);
        let mut listeners = Vec::new();
        let configured = config.server.listeners.iter().zip(addresses).zip(sockets);
        for (i, ((listener, &address), socket)) in configured.enumerate() {
            let Some(limits) = &listener.http3 else {
                continue;
            };
            let config = server_config(certs, i, limits).map_err(|e| {
                anyhow::anyhow!("server.listeners[{i}].http3: cannot set up QUIC: {e}")
            })?;
            listeners.push(Listener {
                address,
                socket,
                config,
                limits: limits.clone(),
            });
        }
        if listeners.is_empty() {
            return Ok(None);
        }
        let threads = config
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        Ok(Some(QuicService {
            listeners,
            proxy,
            threads,
        }))
    }
}

/// The QUIC configuration of listener `index`: TLS 1.3 with the listener's
/// certificate resolver, ALPN h3, no early data; the listener's limits.
fn server_config(
    certs: &Arc<CertStore>,
    index: usize,
    limits: &Http3Config,
) -> anyhow::Result<quinn::ServerConfig> {
    pingora::tls::install_default_crypto_provider();
    let mut tls = ServerConfig::builder_with_protocol_versions(&[&version::TLS13])
        .with_no_client_auth()
        .with_cert_resolver(certs.resolver(index));
    tls.alpn_protocols = vec![H3_ALPN.to_vec()];
    // 0-RTT off: a replayed early request would reach the backends twice.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(limits.idle_timeout)?));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(Arc::new(transport))
        .max_incoming(MAX_HANDSHAKES);
    Ok(config)
}

#[async_trait]
impl Service for QuicService {
    /// Runs every listener's endpoint until shutdown, then until their
    /// connections have closed.
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut endpoints = tokio::task::JoinSet::new();
        for listener in std::mem::take(&mut self.listeners) {
            let socket = match handover::socket(listener.address, listener.socket, fds.as_ref()) {
                Ok(socket) => socket,
                Err(e) => {
                    log::error!("HTTP/3 on {} is off: {e}", listener.address);
                    continue;
                }
            };
            let state = Arc::new(ListenerState {
                address: listener.address,
                proxy: Arc::clone(&self.proxy),
                retry: listener.limits.retry,
                handshakes: AtomicUsize::new(0),
                metrics: ListenerMetrics::new(listener.address),
            });
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(listener.config),
                socket,
                Arc::new(quinn::TokioRuntime),
            );
            match endpoint {
                Ok(endpoint) => {
                    log::info!("HTTP/3 on UDP {}", listener.address);
                    endpoints.spawn(accept_loop(endpoint, state, shutdown.clone()));
                }
                Err(e) => log::error!("HTTP/3 on {} is off: {e}", listener.address),
            }
        }
        while endpoints.join_next().await.is_some() {}
    }

    fn name(&self) -> &str {
        "quic"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(
            self.listeners
                .iter()
                .map(|l| handover::fd_key(l.address))
                .collect(),
        )
    }
}

/// Takes `endpoint`'s new connections until shutdown (then refuses new
/// ones) or until a binary upgrade's handover begins (then leaves new ones
/// to the new process: their first packet is ignored, and its retransmission
/// may reach the new process, which reads the same socket); either way every
/// connection gets a GOAWAY and the loop waits for them to finish. On a
/// handover the endpoint stops reading the socket as soon as its last
/// connection has closed.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    state: Arc<ListenerState>,
    mut shutdown: ShutdownWatch,
) {
    let (closing, closing_watch) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut handover = std::pin::pin!(handover::started());
    let mut handing_over = false;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if handing_over {
                    incoming.ignore();
                } else if let Some(connecting) = admit(incoming, &state) {
                    let serving = connection::serve(connecting, Arc::clone(&state), closing_watch.clone());
                    connections.spawn(serving);
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if handing_over && connections.is_empty() {
                    break;
                }
            }
            () = &mut handover, if !handing_over => {
                log::info!("HTTP/3 on {}: handing over to the new process", state.address);
                handing_over = true;
                let _ = closing.send(true);
                if connections.is_empty() {
                    break;
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    let _ = closing.send(true);
    if !handing_over {
        endpoint.set_server_config(None);
    }
    while connections.join_next().await.is_some() {}
    // Let the last CONNECTION_CLOSE frames go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// What becomes of a new client's first packet: a handshake (returned), a
/// Retry (the client comes back with a token proving its address), or a
/// refusal when [`MAX_HANDSHAKES`] are under way.
fn admit(incoming: quinn::Incoming, state: &ListenerState) -> Option<quinn::Connecting> {
    let in_flight = state.handshakes.load(Ordering::Relaxed);
    let validate = match state.retry {
        Http3Retry::Always => true,
        Http3Retry::Auto => in_flight >= RETRY_ABOVE,
    };
    if validate && !incoming.remote_address_validated() && incoming.may_retry() {
        state.metrics.retry.inc();
        // Fails only when the packet cannot be retried, checked above.
        let _ = incoming.retry();
        return None;
    }
    if in_flight >= MAX_HANDSHAKES {
        state.metrics.refused.inc();
        incoming.refuse();
        return None;
    }
    match incoming.accept() {
        Ok(connecting) => {
            state.handshakes.fetch_add(1, Ordering::Relaxed);
            Some(connecting)
        }
        Err(e) => {
            log::debug!("QUIC connection not accepted: {e}");
            state.metrics.failure.inc();
            None
        }
    }
}
