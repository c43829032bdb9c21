//! One health check of one backend: a TCP connect, or an HTTP/1.1 request (over TLS for https,
//! certificate not verified: a check asks "does it answer", not "do I trust it") whose status
//! must fall in the expected range and whose body must contain the expected text.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::config::health_check::CheckKind;

/// Largest body read to look for `expect_body`.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out")]
    Timeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(String),
    #[error("status {0} not in {1}-{2}")]
    Status(u16, u16, u16),
    #[error("body does not contain {0:?}")]
    Body(String),
}

/// Runs one check of `addr` within `timeout`.
pub async fn probe(
    kind: &CheckKind,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, run(kind, addr))
        .await
        .map_err(|_| ProbeError::Timeout)?
}

async fn run(kind: &CheckKind, addr: SocketAddr) -> Result<(), ProbeError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let CheckKind::Http {
        tls,
        path,
        host,
        expect_status,
        expect_body,
    } = kind
    else {
        return Ok(());
    };
    let _ = tcp.set_nodelay(true);
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let exchange = Exchange {
        path,
        host: &host,
        expect_status: *expect_status,
        expect_body: expect_body.as_deref(),
    };
    if *tls {
        let config = crate::tls_client::unverified_client_config(&[b"http/1.1"])
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let name = ServerName::try_from(host.split(':').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        exchange.run(stream).await
    } else {
        exchange.run(tcp).await
    }
}

struct Exchange<'a> {
    path: &'a str,
    host: &'a str,
    expect_status: (u16, u16),
    expect_body: Option<&'a str>,
}

impl Exchange<'_> {
    async fn run<S>(&self, io: S) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| ProbeError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        let conn = tokio::spawn(conn);
        let request = Request::get(self.path)
            .header(header::HOST, self.host)
            .header(header::USER_AGENT, "lb-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let (lo, hi) = self.expect_status;
        let result = if !(lo..=hi).contains(&status) {
            Err(ProbeError::Status(status, lo, hi))
        } else if let Some(expected) = self.expect_body {
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ProbeError::Http(e.to_string()))?
                .to_bytes();
            if String::from_utf8_lossy(&body).contains(expected) {
                Ok(())
            } else {
                Err(ProbeError::Body(expected.to_owned()))
            }
        } else {
            Ok(())
        };
        conn.abort();
        result
    }
}
