//! Opening upstream connections for hyper-util's pooled client: TCP with the pool's connect
//! timeout and no Nagle delay, then the PROXY header when the pool sends one.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A `tower_service::Service<Uri>` the legacy client calls for each new connection; the URI's
/// authority is the backend's `IP:PORT`.
#[derive(Clone)]
pub struct UpstreamConnector {
    connect_timeout: Duration,
    /// Written first on every connection this connector opens (one client's PROXY header).
    proxy_header: Option<Arc<[u8]>>,
}

impl UpstreamConnector {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            proxy_header: None,
        }
    }

    /// The same connector, sending `header` first on each connection.
    pub fn with_proxy_header(&self, header: Vec<u8>) -> Self {
        Self {
            proxy_header: Some(header.into()),
            ..self.clone()
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
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
            let mut tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tcp.set_nodelay(true)?;
            if let Some(header) = &this.proxy_header {
                tcp.write_all(header).await?;
            }
            Ok(TokioIo::new(tcp))
        })
    }
}
