//! Client connections between requests.
//!
//! pingora's own HTTP/1 loop waits for the next request inside the request's
//! state: its session, a 4 KiB header buffer and the whole boxed proxy future,
//! about 35 KiB for every idle keep-alive connection. [`LeanKeepalive`] runs
//! that loop itself for plain-TCP HTTP/1 connections and waits for the first
//! bytes of each request on the bare socket. Only once they arrive does it
//! build the session, hand the bytes back to the socket and let pingora read
//! and proxy the request as before. Everything else (TLS, HTTP/2) goes to
//! pingora's loop unchanged: on a plain listener with `h2c`, a connection
//! whose first bytes are HTTP/2's connection preface (prior knowledge) goes
//! to pingora's HTTP/2 loop, every other one stays here as HTTP/1.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, Peek, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;

use crate::listen::ByListener;

/// How long a new connection may wait before its first request starts; the
/// wait pingora itself allows.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(60);

/// The most bytes read while waiting; pingora's first read of a request head
/// takes as many.
const FIRST_READ: usize = 4096;

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP application whose plain-TCP HTTP/1 connections hold no request
/// state while they wait for a request.
pub(crate) struct LeanKeepalive<A> {
    app: Arc<A>,
    /// How long an idle connection waits for its next request.
    keepalive: Duration,
    /// Turns true once the service stops listening; idle connections then close.
    closing: watch::Sender<bool>,
    /// The plain listeners that serve cleartext HTTP/2 beside HTTP/1 (`h2c`);
    /// the wrapped app's server options have `h2c` set when there is one.
    h2c: ByListener<()>,
}

/// How a wait for the next request ended.
enum Wait {
    /// Request bytes arrived and were handed back to the socket.
    Request,
    /// The bytes that arrived begin HTTP/2's preface (or all of them are its
    /// start); handed back to the socket too.
    Http2,
    /// The client closed, the wait timed out, the socket failed, or the
    /// service is closing: the connection is done.
    Done,
}

impl<A> LeanKeepalive<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Wraps `app`; idle connections wait `keepalive` for their next request.
    /// Connections to the listeners in `h2c` may speak HTTP/2 instead.
    pub fn new(app: A, keepalive: Duration, h2c: ByListener<()>) -> Self {
        LeanKeepalive {
            app: Arc::new(app),
            keepalive,
            closing: watch::Sender::new(false),
            h2c,
        }
    }

    /// Whether this connection is plain TCP, the only kind this loop handles
    /// (TLS has no way to hand read bytes back).
    fn is_plain(&self, stream: &Stream) -> bool {
        let custom = self.app.server_options().is_some_and(|o| o.force_custom);
        !custom && stream.as_any().is::<TcpStream>()
    }

    /// Whether `stream` came in on an `h2c` listener.
    fn serves_h2c(&self, stream: &TcpStream) -> bool {
        stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
            .is_some_and(|local| self.h2c.get(&local).is_some())
    }

    /// Waits up to `limit` for the first bytes of a request on `stream` and
    /// hands them back to it, so the session built next reads them first.
    /// `closing` is this connection's subscription to [`Self::closing`].
    async fn wait_for_request(
        stream: &mut TcpStream,
        limit: Duration,
        closing: &mut watch::Receiver<bool>,
    ) -> Wait {
        if *closing.borrow_and_update() {
            return Wait::Done;
        }
        let first_bytes = poll_fn(|cx| {
            // The buffer lives only during the poll, not in the waiting future,
            // and is not zeroed first: the socket read fills what it returns.
            let mut buf = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut read = ReadBuf::uninit(&mut buf);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Wait::Done),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    let start = &filled[..filled.len().min(H2_PREFACE.len())];
                    stream.rewind(filled);
                    Poll::Ready(if H2_PREFACE.starts_with(start) {
                        Wait::Http2
                    } else {
                        Wait::Request
                    })
                }
                Poll::Ready(Err(e)) => {
                    log::debug!("client connection failed while idle: {e}");
                    Poll::Ready(Wait::Done)
                }
                Poll::Pending => Poll::Pending,
            }
        });
        tokio::select! {
            biased;
            wait = pingora::prelude::timeout(limit, first_bytes) => wait.unwrap_or(Wait::Done),
            _ = closing.changed() => Wait::Done,
        }
    }
}

impl<A> LeanKeepalive<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Hands a connection that began with (the start of) HTTP/2's preface to
    /// pingora's loop, once the whole preface is in within `limit` (pingora
    /// would wait for it without one): pingora reads it again and serves the
    /// connection in HTTP/2, or in HTTP/1 were it not the preface after all.
    async fn serve_h2c(
        self: &Arc<Self>,
        mut tcp: Box<TcpStream>,
        limit: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut preface = [0u8; H2_PREFACE.len()];
        match pingora::prelude::timeout(limit, tcp.try_peek(&mut preface)).await {
            Ok(Ok(_)) => self.app.process_new(tcp, shutdown).await,
            Ok(Err(e)) => {
                log::debug!("client connection failed before its HTTP/2 preface: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

/// `stream` as the plain TCP stream it is, once `is::<TcpStream>()` said so.
/// `None` only for another kind of stream, which is then closed.
fn into_tcp(stream: Stream) -> Option<Box<TcpStream>> {
    stream.into_any().downcast::<TcpStream>().ok()
}

#[async_trait]
impl<A> ServerApp for LeanKeepalive<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Serves one client connection to its end. Plain-TCP HTTP/1 connections
    /// loop here: wait for a request on the bare socket, then let the wrapped
    /// app read and answer it; the keep-alive settings of one request carry
    /// over to the next as in pingora's loop. Other connections are the
    /// wrapped app's. Always returns `None`: the connection is finished here.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.is_plain(&stream) {
            return self.app.process_new(stream, shutdown).await;
        }
        let mut tcp = into_tcp(stream)?;
        let h2c = self.serves_h2c(&tcp);
        let mut closing = self.closing.subscribe();
        let mut carried: Option<HttpPersistentSettings> = None;
        let mut limit = FIRST_REQUEST_WAIT;
        let mut first = true;
        loop {
            match Self::wait_for_request(&mut tcp, limit, &mut closing).await {
                Wait::Done => return None,
                // Prior knowledge comes first on a connection: pingora reads
                // the whole preface again (the bytes are back in the socket)
                // and serves the connection in HTTP/2, or, were it not the
                // preface after all, in HTTP/1.
                Wait::Http2 if h2c && first => {
                    return self.serve_h2c(tcp, limit, shutdown).await;
                }
                Wait::Http2 | Wait::Request => {}
            }
            let mut session = ServerSession::new_http1(tcp);
            match carried.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // What pingora sets on a new connection (the same 60 s);
                    // the proxy's request filter then applies the configured
                    // keep-alive.
                    let keepalive = if *shutdown.borrow() {
                        None
                    } else {
                        Some(FIRST_REQUEST_WAIT.as_secs())
                    };
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let (stream, settings) = self
                .app
                .process_new_http(session, shutdown)
                .await?
                .consume();
            // The session gives back the stream it was given; were it another
            // kind, pingora's loop would take over.
            if !stream.as_any().is::<TcpStream>() {
                return self.app.process_new(stream, shutdown).await;
            }
            tcp = into_tcp(stream)?;
            // tollgate leaves pingora's pipelining off, so a finished request
            // never leaves the next one's bytes in `settings`: all of them are
            // still in the socket, where the wait above looks.
            carried = settings;
            limit = self.keepalive;
            first = false;
        }
    }

    /// Closes the idle connections, then cleans up the wrapped app.
    async fn cleanup(&self) {
        self.closing.send_replace(true);
        ServerApp::cleanup(self.app.as_ref()).await;
    }
}
