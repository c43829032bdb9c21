//! One client connection served over HTTP/1.1 or HTTP/2. The protocol comes from ALPN on TLS
//! connections and from the connection's first bytes on plain ones (the HTTP/2 preface:
//! h2c with prior knowledge). lb reads those bytes with the same read hyper would have made
//! and hands them back in front of the socket (`Prefixed`).
//!
//! Why not hyper-util's `auto` builder: it reads 24 bytes first, then hyper reads the rest of
//! the request, a second recv(2) and a second parse on every connection, and it looks at
//! the bytes of TLS connections too, where ALPN already said. Measured: 8 of 61 us of proxy
//! CPU per new plain connection (docs/ARCHITECTURE.md, performance).
use std::{
    error::Error as StdError,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::{body::Incoming, server::conn, service::HttpService};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    sync::watch,
};

use super::lifecycle::Phase;

/// Streams one HTTP/2 connection may have open at once: Envoy's edge recommendation (NGINX
/// allows 128; hyper's default is 200). More are refused with RST_STREAM REFUSED_STREAM.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before lb accepted them, at once (rapid reset, CVE-2023-44487):
/// then GOAWAY ENHANCE_YOUR_CALM. h2's own default, pinned.
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams lb may reset for the client's errors over a connection's life (refused beyond
/// `H2_MAX_CONCURRENT_STREAMS`, malformed requests; RUSTSEC-2024-0003): then GOAWAY. A quarter
/// of hyper's 1024, still room for a first flight opened before our SETTINGS arrived (RFC 9113
/// lets a client assume no stream limit until then).
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// What a client connection starts with when it speaks HTTP/2 without TLS (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read's buffer: a whole ordinary request head, so hyper reads nothing more for it.
const FIRST_READ: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// The protocol a TLS handshake agreed on (no ALPN: HTTP/1.1).
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Self::Http2,
            _ => Self::Http1,
        }
    }
}

/// A listener's HTTP/1.1 and HTTP/2 server settings, made once and shared by its connections.
pub struct HttpBuilders {
    http1: conn::http1::Builder,
    http2: conn::http2::Builder<TokioExecutor>,
    /// How long a client has for its first bytes (as for each request head after them).
    header_timeout: Duration,
}

impl HttpBuilders {
    /// `max_header_bytes` bounds a request head (HTTP/1.1: hyper's read buffer; HTTP/2: the
    /// header list, 431 beyond); `header_timeout` the wait for one.
    pub fn new(max_header_bytes: usize, header_timeout: Duration) -> Self {
        let mut http1 = conn::http1::Builder::new();
        http1
            .max_buf_size(max_header_bytes)
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        // HTTP/2 limits hyper enforces itself, set explicitly (its defaults may change).
        // Control-frame floods, which hyper does not limit, are `H2Guard`'s.
        let mut http2 = conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Self {
            http1,
            http2,
            header_timeout,
        }
    }

    /// The HTTP/1.1 settings, for a connection served another way.
    pub fn http1(&self) -> &conn::http1::Builder {
        &self.http1
    }

    /// Reads a plain connection's first bytes and tells its protocol by them; `None` when the
    /// client closed or sent nothing within the header timeout (hyper would have closed it
    /// silently too).
    async fn sniff<I: AsyncRead + Unpin>(&self, io: &mut I) -> Option<(Protocol, Bytes)> {
        let read = async {
            let mut first = BytesMut::with_capacity(FIRST_READ);
            loop {
                if io.read_buf(&mut first).await.ok()? == 0 {
                    return None;
                }
                let seen = first.len().min(H2_PREFACE.len());
                if first[..seen] != H2_PREFACE[..seen] {
                    return Some((Protocol::Http1, first.freeze()));
                }
                if seen == H2_PREFACE.len() {
                    return Some((Protocol::Http2, first.freeze()));
                }
                // A start of the preface (shorter than the buffer): the rest decides.
            }
        };
        tokio::time::timeout(self.header_timeout, read)
            .await
            .ok()
            .flatten()
    }

    /// Serves a plain (not TLS) connection: its protocol from its first bytes (`sniff`),
    /// which hyper then reads first.
    pub async fn serve_plain<I, S, B>(&self, mut io: I, service: S, phase: watch::Receiver<Phase>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: hyper::body::Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    {
        let Some((protocol, first)) = self.sniff(&mut io).await else {
            return;
        };
        self.serve(protocol, Prefixed::new(first, io), service, phase)
            .await;
    }

    /// Serves `io` with `protocol` until the client is done, finishing gracefully when the
    /// phase leaves `Serving` (HTTP/1.1: after the current request; HTTP/2: GOAWAY).
    /// HTTP/1.1 connections may be upgraded (WebSocket).
    pub async fn serve<I, S, B>(
        &self,
        protocol: Protocol,
        io: I,
        service: S,
        phase: watch::Receiver<Phase>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: hyper::body::Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    {
        // On the heap: hyper's connection state is kilobytes, and inline it would make every
        // connection task that large, copied whole when spawned and again when it ends.
        // `lifecycle::drive`'s steps written out: passing the connection (it borrows its
        // builder) through a generic async fn defeats rustc's proof that the accept loop's
        // task is Send ("implementation of Send is not general enough").
        let mut phase = phase;
        let draining = async move { phase.wait_for(|p| *p != Phase::Serving).await.is_ok() };
        macro_rules! drive {
            ($connection:expr) => {{
                let mut connection = Box::pin($connection);
                let drain = tokio::select! {
                    _ = connection.as_mut() => return,
                    drain = draining => drain,
                };
                // Not draining: the `Lifecycle` is gone and no one will ever ask to.
                if drain {
                    connection.as_mut().graceful_shutdown();
                }
                let _ = connection.await;
            }};
        }
        match protocol {
            Protocol::Http1 => drive!(
                self.http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades()
            ),
            Protocol::Http2 => drive!(self.http2.serve_connection(TokioIo::new(io), service)),
        }
    }
}

/// A connection with bytes already read from it in front: reads take those first.
struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn sniffed(client_sends: &[&[u8]]) -> Option<(Protocol, Bytes)> {
        let (mut client, mut server) = tokio::io::duplex(64);
        let builders = HttpBuilders::new(16 * 1024, Duration::from_secs(5));
        let sends: Vec<Vec<u8>> = client_sends.iter().map(|s| s.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for s in sends {
                client.write_all(&s).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let found = builders.sniff(&mut server).await;
        drop(writer.await);
        found
    }

    #[tokio::test]
    async fn the_first_bytes_tell_http1_from_h2c_and_are_kept() {
        let (protocol, bytes) = sniffed(&[b"GET / HTTP/1.1\r\n"]).await.expect("sniffed");
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n");
        // The preface in pieces: decided only once it is whole.
        let (protocol, bytes) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"])
            .await
            .expect("sniffed");
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(&bytes[..], H2_PREFACE);
        // A start of the preface that goes wrong is HTTP/1.1's to refuse.
        let (protocol, _) = sniffed(&[b"PRI", b" /x HTTP/1.1\r\n"])
            .await
            .expect("sniffed");
        assert_eq!(protocol, Protocol::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_closed_client_gives_nothing() {
        assert!(sniffed(&[]).await.is_none());
        let (_client, mut server) = tokio::io::duplex(64);
        let builders = HttpBuilders::new(16 * 1024, Duration::from_secs(5));
        assert!(builders.sniff(&mut server).await.is_none());
    }

    #[tokio::test]
    async fn prefixed_reads_the_kept_bytes_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        io.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }

    #[test]
    fn alpn_h2_means_http2_anything_else_http1() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Http1);
    }
}
