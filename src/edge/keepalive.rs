//! Client connections between requests.
//!
//! pingora's own HTTP/1 loop waits for the next request inside the request's
//! state: its session, a 4 KiB header buffer and the whole boxed proxy future,
//! about 25 KB for every idle keep-alive connection. Waiting here instead, an
//! idle TLS connection holds 36 KB instead of 54.7 KB (5,000 connections). [`LeanKeepalive`] runs
//! that loop itself for HTTP/1 connections, plain TCP or TLS, and waits for
//! the first bytes of each request on the bare stream. Only once they arrive
//! does it build the session, hand the bytes back to the stream and let
//! pingora read and proxy the request as before. HTTP/2 (ALPN h2, h2c) goes to
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
use pingora::protocols::tls::TlsStream;
use pingora::protocols::{Stream, ALPN, IO};
use pingora::server::ShutdownWatch;
use tokio::io::ReadBuf;
use tokio::sync::watch;

use super::replay::ReplayStream;
use crate::listen::ByListener;

/// How long a new connection may wait before its first request starts; the
/// wait pingora itself allows.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(60);

/// The most bytes read while waiting; pingora's first read of a request head
/// takes as many.
const FIRST_READ: usize = 4096;

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TLS client connection, able to take back the bytes read while it waited.
type TlsClient = ReplayStream<TlsStream<TcpStream>>;

/// A client stream the loop can wait on: read from, and handed back what was read.
trait WaitableStream: IO + Sized + 'static {
    /// The next reads return `bytes` first.
    fn hand_back(&mut self, bytes: &[u8]);
}

impl WaitableStream for TcpStream {
    fn hand_back(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }
}

impl WaitableStream for TlsClient {
    fn hand_back(&mut self, bytes: &[u8]) {
        self.replay(bytes);
    }
}

/// An HTTP application whose HTTP/1 connections hold no request state while
/// they wait for a request.
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
    /// Request bytes arrived and were handed back to the stream.
    Request,
    /// The bytes that arrived begin HTTP/2's preface (or all of them are its
    /// start); handed back to the stream too.
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
    pub fn new(app: Arc<A>, keepalive: Duration, h2c: ByListener<()>) -> Self {
        LeanKeepalive {
            app,
            keepalive,
            closing: watch::Sender::new(false),
            h2c,
        }
    }

    /// Whether the wrapped app speaks a custom protocol, which only pingora's
    /// loop tells apart from HTTP/1.
    fn is_custom(&self) -> bool {
        self.app.server_options().is_some_and(|o| o.force_custom)
    }

    /// Whether `stream` came in on an `h2c` listener.
    fn serves_h2c(&self, stream: &TcpStream) -> bool {
        self.h2c.of_stream(stream).is_some()
    }

    /// Waits up to `limit` for the first bytes of a request on `stream` and
    /// hands them back to it, so the session built next reads them first.
    /// `closing` is this connection's subscription to [`Self::closing`].
    async fn wait_for_request<S: WaitableStream>(
        stream: &mut S,
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
                    stream.hand_back(filled);
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

/// `stream` as the concrete stream it is, once `is::<S>()` said so. `None`
/// only for another kind of stream, which is then closed.
fn downcast<S: 'static>(stream: Stream) -> Option<Box<S>> {
    stream.into_any().downcast::<S>().ok()
}

impl<A> LeanKeepalive<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Serves an HTTP/1 connection to its end: wait for a request on the
    /// bare stream, then let the wrapped app read and answer it; the
    /// keep-alive settings of one request carry over to the next as in
    /// pingora's loop. On an `h2c` listener, a connection that begins with
    /// HTTP/2's preface goes to [`Self::serve_h2c`]. Returns `None`, or a
    /// stream pingora's loop must serve should the session hand back a stream
    /// of another kind.
    async fn serve_http1<S: WaitableStream>(
        self: &Arc<Self>,
        mut conn: Box<S>,
        h2c: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut closing = self.closing.subscribe();
        let mut carried: Option<HttpPersistentSettings> = None;
        let mut limit = FIRST_REQUEST_WAIT;
        let mut first = true;
        loop {
            match Self::wait_for_request(&mut *conn, limit, &mut closing).await {
                Wait::Done => return None,
                // Prior knowledge comes first on a connection: pingora reads
                // the whole preface again (the bytes are back in the stream)
                // and serves the connection in HTTP/2, or, were it not the
                // preface after all, in HTTP/1.
                Wait::Http2 if h2c && first => {
                    return self.serve_h2c(conn, limit, shutdown).await;
                }
                Wait::Http2 | Wait::Request => {}
            }
            let mut session = ServerSession::new_http1(conn);
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
            if !stream.as_any().is::<S>() {
                return self.app.process_new(stream, shutdown).await;
            }
            conn = downcast::<S>(stream)?;
            // tollgate leaves pingora's pipelining off, so a finished request
            // never leaves the next one's bytes in `settings`: all of them are
            // still in the stream, where the wait above looks.
            carried = settings;
            limit = self.keepalive;
            first = false;
        }
    }

    /// Hands a connection that began with (the start of) HTTP/2's preface to
    /// pingora's loop, once the whole preface is in within `limit` (pingora
    /// would wait for it without one): pingora reads it again and serves the
    /// connection in HTTP/2, or in HTTP/1 were it not the preface after all.
    async fn serve_h2c<S: WaitableStream>(
        self: &Arc<Self>,
        mut conn: Box<S>,
        limit: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut preface = [0u8; H2_PREFACE.len()];
        match pingora::prelude::timeout(limit, conn.try_peek(&mut preface)).await {
            Ok(Ok(_)) => self.app.process_new(conn, shutdown).await,
            Ok(Err(e)) => {
                log::debug!("client connection failed before its HTTP/2 preface: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

#[async_trait]
impl<A> ServerApp for LeanKeepalive<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Serves one client connection to its end. HTTP/1 connections, plain
    /// TCP or TLS (ALPN not h2), loop in [`Self::serve_http1`]; other
    /// connections are the wrapped app's. Always returns `None`: the
    /// connection is finished here.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.is_custom() {
            return self.app.process_new(stream, shutdown).await;
        }
        let any = stream.as_any();
        if any.is::<TcpStream>() {
            let tcp = downcast::<TcpStream>(stream)?;
            let h2c = self.serves_h2c(&tcp);
            return self.serve_http1(tcp, h2c, shutdown).await;
        }
        if any.is::<TlsStream<TcpStream>>()
            && !matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
        {
            let tls = downcast::<TlsStream<TcpStream>>(stream)?;
            let client: Box<TlsClient> = Box::new(ReplayStream::new(*tls));
            return self.serve_http1(client, false, shutdown).await;
        }
        self.app.process_new(stream, shutdown).await
    }

    /// Closes the idle connections, then cleans up the wrapped app.
    async fn cleanup(&self) {
        self.closing.send_replace(true);
        ServerApp::cleanup(self.app.as_ref()).await;
    }
}
