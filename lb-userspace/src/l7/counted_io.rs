//! A connection's bytes in and out, counted on its stream for the status page. The counts
//! are kept in the connection's own fields and added to the shared totals when the stream is
//! flushed (hyper flushes once per response), past 64 KiB, and when it closes: a shared
//! atomic per flushed response, not per read or write, so cores serving one listener do not
//! contend on its counters.
//!
//! In and out follow HAProxy's stats: "in" is request bytes, "out" response bytes, on both
//! sides (a client connection reads requests; an upstream connection writes them).
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::traffic::TrafficStats;

/// Counts above this are handed to the totals even without a flush (long transfers).
const HAND_OVER_AT: u64 = 64 * 1024;

/// `stats` None: not observed, nothing counted.
pub struct CountedIo<S> {
    inner: S,
    stats: Option<Arc<TrafficStats>>,
    /// Upstream: what is written is the request ("in").
    upstream: bool,
    read: u64,
    written: u64,
}

impl<S> CountedIo<S> {
    /// A client connection: what it reads is requests.
    pub fn client(inner: S, stats: Option<Arc<TrafficStats>>) -> Self {
        Self {
            inner,
            stats,
            upstream: false,
            read: 0,
            written: 0,
        }
    }

    /// An upstream connection: what it writes is requests.
    pub fn upstream(inner: S, stats: Option<Arc<TrafficStats>>) -> Self {
        let mut io = Self::client(inner, stats);
        io.upstream = true;
        io
    }

    fn hand_over(&mut self) {
        if let Some(stats) = &self.stats
            && (self.read > 0 || self.written > 0)
        {
            match self.upstream {
                false => stats.add_bytes(self.read, self.written),
                true => stats.add_bytes(self.written, self.read),
            }
            (self.read, self.written) = (0, 0);
        }
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if self.written >= HAND_OVER_AT {
            self.hand_over();
        }
    }
}

impl<S> Drop for CountedIo<S> {
    fn drop(&mut self) {
        self.hand_over();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if n > 0 {
            self.read += n;
            if self.read >= HAND_OVER_AT {
                self.hand_over();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hand_over();
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hand_over();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions_by_flush_and_close() {
        let stats = Arc::new(TrafficStats::default());
        let (near, mut far) = tokio::io::duplex(1024);
        let mut counted = CountedIo::client(near, Some(stats.clone()));
        counted.write_all(b"hello").await.expect("write");
        assert_eq!(stats.snapshot().bytes_out, 0, "kept until a flush");
        counted.flush().await.expect("flush");
        assert_eq!(stats.snapshot().bytes_out, 5);
        far.write_all(b"abc").await.expect("write");
        let mut got = [0u8; 3];
        counted.read_exact(&mut got).await.expect("read");
        drop(counted);
        let s = stats.snapshot();
        assert_eq!((s.bytes_in, s.bytes_out), (3, 5));
    }
}
