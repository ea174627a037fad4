//! TLS termination in front of the proxy. pingora listens on TLS listeners'
//! addresses as plain TCP; [`TlsTerminating`] does the handshake itself, with
//! a rustls configuration of tollgate's own: certificates from the live
//! [`CertStore`](super::certs::CertStore), and `acme-tls/1` offered beside h2
//! and HTTP/1.1, which pingora's TLS settings cannot express and TLS-ALPN-01
//! needs. A TLS-ALPN-01 handshake is closed once done (the ACME server only
//! looks at the certificate); every other connection goes on to the wrapped
//! app as the TLS stream pingora would have made. TLS 1.2 and 1.3 only.
//! A listener with `client_certificates` asks for a client certificate and
//! verifies it in the handshake; the identity of a verified one goes with the
//! stream (see `edge::client_certs`). Each listener's acceptor is a
//! [`LiveAcceptor`], which a reload rebuilds with the client CAs it read.

use super::certs::{ListenerResolver, ACME_TLS_ALPN};
use super::client_certs::IdentifyClients;
use crate::listen::ByListener;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::ALPN;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::tls::{version, ClientCertVerifier, ServerConfig};
use std::sync::Arc;
use std::time::Duration;

/// The longest a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor of a TLS listener: its certificates from `resolver`, h2
/// offered when `http2`, client certificates asked for and checked by
/// `clients` when it is set.
pub fn acceptor(
    resolver: Arc<ListenerResolver>,
    http2: bool,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Acceptor {
    pingora::tls::install_default_crypto_provider();
    let builder = ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13]);
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    if http2 {
        alpn.push(b"h2".to_vec());
    }
    alpn.push(b"http/1.1".to_vec());
    alpn.push(ACME_TLS_ALPN.to_vec());
    config.alpn_protocols = alpn;
    Acceptor::from_server_config(Arc::new(config))
}

/// A TLS listener's acceptor: its certificates from its resolver (which
/// follows rotations by itself), and the client certificate verifier it was
/// last given. A handshake uses the acceptor current when it starts.
pub struct LiveAcceptor {
    resolver: Arc<ListenerResolver>,
    http2: bool,
    current: ArcSwap<Acceptor>,
}

impl LiveAcceptor {
    /// The acceptor of [`acceptor`]`(resolver, http2, clients)`.
    pub fn new(
        resolver: Arc<ListenerResolver>,
        http2: bool,
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> LiveAcceptor {
        let current = ArcSwap::from_pointee(acceptor(Arc::clone(&resolver), http2, clients));
        LiveAcceptor {
            resolver,
            http2,
            current,
        }
    }

    /// Handshakes from now on check client certificates with `clients`
    /// (`None`: none asked for); those under way finish as they began.
    pub fn set_client_verifier(&self, clients: Option<Arc<dyn ClientCertVerifier>>) {
        let rebuilt = acceptor(Arc::clone(&self.resolver), self.http2, clients);
        self.current.store(Arc::new(rebuilt));
    }
}

/// The TLS listeners' acceptors, by listener index (`None` for plain ones).
pub type ListenerAcceptors = Vec<Option<Arc<LiveAcceptor>>>;

/// An app whose TLS listeners' connections it terminates before `app`
/// serves them.
pub struct TlsTerminating<A> {
    app: Arc<A>,
    acceptors: ByListener<Arc<LiveAcceptor>>,
}

impl<A> TlsTerminating<A> {
    pub fn new(app: A, acceptors: ByListener<Arc<LiveAcceptor>>) -> Self {
        TlsTerminating {
            app: Arc::new(app),
            acceptors,
        }
    }
}

#[async_trait]
impl<A> ServerApp for TlsTerminating<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    /// Serves one client connection: a TLS listener's after its handshake
    /// (none for a failed or TLS-ALPN-01 one), a plain listener's as it is.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(live) = self.acceptors.of_stream(&*stream) else {
            return self.app.process_new(stream, shutdown).await;
        };
        let acceptor = live.current.load_full();
        let tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        // Boxed: the handshake's state is large, and inline it would make
        // every connection's future as large, plain ones included.
        let handshake = Box::pin(pingora::prelude::timeout(
            HANDSHAKE_TIMEOUT,
            handshake_with_callback(&acceptor, *tcp, &IdentifyClients),
        ));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                log::debug!("TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                log::debug!("TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}");
                return None;
            }
        };
        let tls: Stream = Box::new(tls);
        if matches!(tls.selected_alpn_proto(), Some(ALPN::Custom(p)) if p.protocol() == ACME_TLS_ALPN)
        {
            return None;
        }
        self.app.process_new(tls, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
