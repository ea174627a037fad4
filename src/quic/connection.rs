//! One QUIC connection: its handshake, its HTTP/3 requests (each handed to
//! the proxy as an [`H3Session`] on a task of its own), a GOAWAY on
//! shutdown, and its packet counts in the listener's metrics.

use super::session::H3Session;
use super::{ListenerState, HANDSHAKE_TIMEOUT};
use bytes::Bytes;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::{Digest, SocketDigest};
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The largest request head (QPACK-decoded field section) a client may send.
const MAX_FIELD_SECTION: u64 = 64 * 1024;

/// How long a request stream may take to send its head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a connection's packet counts reach the metrics while it is open.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// How long a closing connection waits, beyond four round trips, for what
/// it has sent to arrive before it closes; and the longest it waits.
const DRAIN_MARGIN: Duration = Duration::from_millis(100);
const MAX_DRAIN: Duration = Duration::from_secs(2);

/// HTTP/3's code for a connection closed with nothing wrong (RFC 9114 8.1).
const H3_NO_ERROR: u32 = 0x100;

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Counts a connection among the open ones while it lives.
struct Open<'a>(&'a prometheus::IntGauge);

impl<'a> Open<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves the connection `connecting` opens, to its end.
pub(super) async fn serve(
    connecting: quinn::Connecting,
    state: Arc<ListenerState>,
    shutdown: ShutdownWatch,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await;
    state.handshakes.fetch_sub(1, Ordering::Relaxed);
    let connection = match handshake {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            log::debug!("QUIC handshake failed: {e}");
            state.metrics.failure.inc();
            return;
        }
        Err(_) => {
            log::debug!("QUIC handshake took longer than {HANDSHAKE_TIMEOUT:?}");
            state.metrics.timeout.inc();
            return;
        }
    };
    state.metrics.success.inc();
    let _open = Open::new(&state.metrics.open);
    let mut stats = Stats::default();
    let h3 = h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .build(h3_quinn::Connection::new(connection.clone()))
        .await;
    match h3 {
        Ok(h3) => serve_requests(h3, &connection, &state, shutdown, &mut stats).await,
        Err(e) => log::debug!("HTTP/3 connection setup failed: {e}"),
    }
    stats.report(&connection, &state);
}

/// Accepts the requests of `h3` until the client closes the connection, or
/// until shutdown and the requests in flight then have finished: a GOAWAY
/// naming the stream after the last one accepted tells the client that every
/// request it sent after that was not processed (so it may send them again,
/// elsewhere), and the connection closes with H3_NO_ERROR.
async fn serve_requests(
    mut h3: H3Connection,
    connection: &quinn::Connection,
    state: &Arc<ListenerState>,
    mut shutdown: ShutdownWatch,
    stats: &mut Stats,
) {
    let mut requests = tokio::task::JoinSet::new();
    let mut digest = digest_of(connection, state.address);
    let mut closing = *shutdown.borrow();
    if closing {
        let _ = h3.shutdown(1).await;
    }
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    loop {
        tokio::select! {
            accepted = h3.accept(), if !closing => match accepted {
                Ok(Some(resolver)) => {
                    if peer_of(&digest) != Some(connection.remote_address()) {
                        // The client moved (connection migration).
                        digest = digest_of(connection, state.address);
                    }
                    let request = serve_request(resolver, connection.clone(), Arc::clone(&digest), Arc::clone(state), shutdown.clone());
                    requests.spawn(request);
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("HTTP/3 connection ended: {e}");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                if closing && requests.is_empty() {
                    break;
                }
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    let _ = h3.shutdown(1).await;
                    if requests.is_empty() {
                        break;
                    }
                }
            }
            _ = tick.tick() => stats.report(connection, state),
        }
    }
    while requests.join_next().await.is_some() {}
    if closing {
        // Closing drops what is not yet sent: let the GOAWAY and the last
        // answers reach the client first (or the client close first).
        let drain = (connection.rtt() * 4 + DRAIN_MARGIN).min(MAX_DRAIN);
        let _ = tokio::time::timeout(drain, connection.closed()).await;
        connection.close(H3_NO_ERROR.into(), b"");
    }
}

/// Reads one request's head and hands the request to the proxy.
async fn serve_request(
    resolver: Resolver,
    connection: quinn::Connection,
    digest: Arc<Digest>,
    state: Arc<ListenerState>,
    shutdown: ShutdownWatch,
) {
    let resolved = tokio::time::timeout(HEAD_TIMEOUT, resolver.resolve_request()).await;
    let (request, stream) = match resolved {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(e)) => {
            log::debug!("HTTP/3 request head refused: {e}");
            return;
        }
        Err(_) => return,
    };
    let session = H3Session::new(request, stream, connection, digest);
    let session = ServerSession::new_custom(Box::new(session));
    state.proxy.process_new_http(session, &shutdown).await;
}

/// The digest of `connection`'s requests: its client and local address
/// (the listener's port, the address the client sent to).
fn digest_of(connection: &quinn::Connection, listener: SocketAddr) -> Arc<Digest> {
    // No file descriptor of its own: the connection shares the listener's.
    let socket = SocketDigest::from_raw_fd(-1);
    let peer = connection.remote_address();
    let local = SocketAddr::new(
        connection.local_ip().unwrap_or_else(|| listener.ip()),
        listener.port(),
    );
    let _ = socket.peer_addr.set(Some(PeerAddr::Inet(peer)));
    let _ = socket.local_addr.set(Some(PeerAddr::Inet(local)));
    Arc::new(Digest {
        socket_digest: Some(Arc::new(socket)),
        ..Digest::default()
    })
}

/// The client address in `digest`.
fn peer_of(digest: &Digest) -> Option<SocketAddr> {
    digest
        .socket_digest
        .as_ref()?
        .peer_addr()?
        .as_inet()
        .copied()
}

/// A connection's packet counts as last reported.
#[derive(Default)]
struct Stats {
    sent: u64,
    lost: u64,
}

impl Stats {
    /// Adds what `connection` sent and lost since the last report.
    fn report(&mut self, connection: &quinn::Connection, state: &ListenerState) {
        let path = connection.stats().path;
        state
            .metrics
            .sent
            .inc_by(path.sent_packets.saturating_sub(self.sent));
        state
            .metrics
            .lost
            .inc_by(path.lost_packets.saturating_sub(self.lost));
        self.sent = path.sent_packets;
        self.lost = path.lost_packets;
    }
}
