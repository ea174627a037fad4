//! A client stream that can be handed back bytes already read from it.
//!
//! pingora's plain TCP stream has `rewind`; its TLS stream has nothing like
//! it. [`ReplayStream`] wraps any stream and serves the bytes given to
//! [`ReplayStream::replay`] before reading the stream again, so that
//! [`LeanKeepalive`](super::keepalive::LeanKeepalive) can wait for a request
//! on a TLS connection the way it waits on a plain one. Everything else (writes,
//! shutdown, TLS and socket digests, ALPN) is the wrapped stream's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, with bytes to serve before its own.
#[derive(Debug)]
pub(crate) struct ReplayStream<S> {
    inner: S,
    /// Bytes handed back and not read again yet, from `replayed_from` on.
    replayed: Vec<u8>,
    replayed_from: usize,
}

impl<S> ReplayStream<S> {
    pub fn new(inner: S) -> Self {
        ReplayStream {
            inner,
            replayed: Vec::new(),
            replayed_from: 0,
        }
    }

    /// Hands `bytes` back: the next reads return them first, in order.
    /// Only called with nothing replayed pending, once a wait for a request
    /// read its first bytes.
    pub fn replay(&mut self, bytes: &[u8]) {
        debug_assert!(self.replayed_from >= self.replayed.len());
        self.replayed = bytes.to_vec();
        self.replayed_from = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplayStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let pending = this.replayed.get(this.replayed_from..).unwrap_or_default();
        if pending.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        this.replayed_from += n;
        if this.replayed_from >= this.replayed.len() {
            // Served: the connection holds no buffer while it waits again.
            this.replayed = Vec::new();
            this.replayed_from = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplayStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl<S: Shutdown + Send> Shutdown for ReplayStream<S> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl<S: UniqueID> UniqueID for ReplayStream<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for ReplayStream<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for ReplayStream<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for ReplayStream<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: GetSocketDigest> GetSocketDigest for ReplayStream<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

/// Peeking would see past the replayed bytes: not offered, as pingora's TLS
/// stream does not offer it either.
impl<S> Peek for ReplayStream<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replayed_bytes_come_first_then_the_stream() {
        let (client, server) = tokio::io::duplex(64);
        let mut stream = ReplayStream::new(server);
        let mut client = client;
        client.write_all(b" world").await.unwrap();
        stream.replay(b"hello");
        let mut got = [0u8; 3];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hel");
        let mut rest = [0u8; 8];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"lo world");
        assert!(stream.replayed.capacity() == 0, "served bytes are freed");
    }
}
