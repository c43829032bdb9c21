//! Opening upstream connections for hyper-util's pooled client: TCP with the pool's connect
//! timeout and no Nagle delay, then the PROXY header when the pool sends one, then TLS for
//! HTTPS pools (ALPN h2 tells the client to speak HTTP/2).
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::super::{counted_io::CountedIo, traffic::TrafficStats};
use super::tls::UpstreamTls;

/// A `tower_service::Service<Uri>` the legacy client calls for each new connection; the URI's
/// authority is the backend's `IP:PORT`.
#[derive(Clone)]
pub struct UpstreamConnector {
    connect_timeout: Duration,
    tls: Option<UpstreamTls>,
    /// Written first on every connection this connector opens (one client's PROXY header).
    proxy_header: Option<Arc<[u8]>>,
    /// Counts connections and pending connects against the pool's caps.
    breaker: Option<Arc<super::Breaker>>,
    /// Each backend's totals, which its connections count their bytes in.
    traffic: Option<Arc<HashMap<SocketAddr, Arc<TrafficStats>>>>,
}

impl UpstreamConnector {
    pub fn new(connect_timeout: Duration, tls: Option<UpstreamTls>) -> Self {
        Self {
            connect_timeout,
            tls,
            proxy_header: None,
            breaker: None,
            traffic: None,
        }
    }

    /// The same connector, its connections counting bytes in their backend's totals.
    pub fn with_traffic(self, traffic: HashMap<SocketAddr, Arc<TrafficStats>>) -> Self {
        Self {
            traffic: Some(Arc::new(traffic)),
            ..self
        }
    }

    /// The same connector, counting its connections in `breaker`.
    pub fn with_breaker(self, breaker: Option<Arc<super::Breaker>>) -> Self {
        Self { breaker, ..self }
    }

    /// The same connector, sending `header` first on each connection.
    pub fn with_proxy_header(&self, header: Vec<u8>) -> Self {
        Self {
            proxy_header: Some(header.into()),
            ..self.clone()
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<UpstreamStream>>> + Send>>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "backend is not IP:PORT")
                })?;
            // Pending (counted) until connected; then the slot lives with the stream.
            let connecting = match &this.breaker {
                None => None,
                Some(b) => Some(
                    b.connect()
                        .map_err(|shed| io::Error::other(super::breaker::Overflow(shed)))?,
                ),
            };
            let tcp = connect_tcp(addr, this.connect_timeout).await?;
            let stats = this.traffic.as_ref().and_then(|t| t.get(&addr).cloned());
            let mut tcp = CountedIo::upstream(tcp, stats);
            if let Some(header) = &this.proxy_header {
                tcp.write_all(header).await?;
            }
            let Some(tls) = &this.tls else {
                return Ok(TokioIo::new(UpstreamStream {
                    io: Io::Plain(tcp),
                    _slot: connecting.map(super::breaker::Connecting::established),
                }));
            };
            let name = tls
                .server_name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
            let stream =
                tokio::time::timeout(this.connect_timeout, tls.connector.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
            Ok(TokioIo::new(UpstreamStream {
                io: Io::Tls(Box::new(stream)),
                _slot: connecting.map(super::breaker::Connecting::established),
            }))
        })
    }
}

/// A TCP connection to `addr` within `timeout`, without Nagle's delay (requests are written
/// whole).
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// An upstream connection, plain or TLS, with its breaker slot (pools with a breaker).
pub struct UpstreamStream {
    io: Io,
    _slot: Option<super::Counted>,
}

/// Bytes are counted on the TCP stream (what went over the wire, TLS records included).
enum Io {
    Plain(CountedIo<TcpStream>),
    Tls(Box<TlsStream<CountedIo<TcpStream>>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
