//! One client connection: TCP (+ PROXY header) (+ TLS) + HTTP/1.1 or HTTP/2 via hyper.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    l7::proxy_header::{self, ProxyVersion},
    tls_client::AcceptAnyCert,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore, client::Resumption, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{
    HttpVersion, ProxyHeaderVersion, Target, TargetError,
    h1::{self, H1Conn},
};

/// Why a request did not produce a response. Counted apart from HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportError {
    Connect,
    Tls,
    Timeout,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// The server closed a connection that had answered before, without taking this request
    /// (it was idle: a keep-alive timeout, a server draining, GOAWAY). The engine resends the
    /// request once on a new connection; only that one's outcome counts.
    IdleClosed,
    /// The peer broke the HTTP protocol.
    Protocol,
    /// The forward proxy (`-x`) did not open the tunnel (its answer to CONNECT was not 200).
    Tunnel,
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Sender {
    H1(H1Conn<Box<dyn Io>>),
    H2(conn::http2::SendRequest<Full<Bytes>>),
}

/// An established connection.
pub struct Conn {
    sender: Sender,
    /// Responses received on it (a connection that never answered is not "idle").
    answered: u64,
}

/// Time spent setting up a connection.
pub struct SetupTimes {
    pub connect: Duration,
    pub tls: Option<Duration>,
}

/// Makes connections to one target, sharing the TLS configuration (and so its session cache:
/// new connections resume sessions unless resumption is off).
pub struct Connector {
    target: Arc<Target>,
    /// Request URIs in rotation: path only for HTTP/1.1, absolute for HTTP/2.
    uris: Vec<Uri>,
    headers: hyper::HeaderMap,
    h1_requests: Vec<Bytes>,
    version: HttpVersion,
    proxy: Option<ProxyHeaderVersion>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

/// TLS options.
pub struct TlsOptions<'a> {
    pub insecure: bool,
    pub ca_file: Option<&'a Path>,
    pub resumption: bool,
}

impl Connector {
    pub fn new(
        target: Arc<Target>,
        version: HttpVersion,
        proxy: Option<ProxyHeaderVersion>,
        tls: &TlsOptions<'_>,
        timeout: Duration,
    ) -> Result<Self, TargetError> {
        let tls = if target.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TargetError::Tls(e.to_string()))?;
            let mut config = if tls.insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCert::new(provider)))
                    .with_no_client_auth()
            } else {
                let path = tls.ca_file.ok_or_else(|| {
                    TargetError::Tls("https needs --cacert FILE or --insecure".into())
                })?;
                let certs = std::fs::read(path)
                    .and_then(|bytes| crate::pem::certs(&bytes))
                    .map_err(|e| TargetError::Read(path.to_owned(), e))?;
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| TargetError::Tls(e.to_string()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            config.alpn_protocols = match version {
                HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
                HttpVersion::Http2 => vec![b"h2".to_vec()],
            };
            if !tls.resumption {
                config.resumption = Resumption::disabled();
            }
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| TargetError::Tls(e.to_string()))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let scheme = if target.tls { "https" } else { "http" };
        let uris = target
            .paths
            .iter()
            .map(|path| match version {
                HttpVersion::Http1 => path.parse::<Uri>(),
                HttpVersion::Http2 => format!("{scheme}://{}{path}", target.authority).parse(),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TargetError::BadUrl(target.authority.clone(), e))?;
        let mut headers = hyper::HeaderMap::new();
        if version == HttpVersion::Http1 {
            let host = hyper::http::HeaderValue::from_str(&target.authority)
                .map_err(|_| TargetError::BadHeader(format!("Host: {}", target.authority)))?;
            headers.insert(hyper::header::HOST, host);
        }
        for (name, value) in &target.headers {
            headers.append(name.clone(), value.clone());
        }
        let h1_requests = target
            .paths
            .iter()
            .map(|path| h1::serialize(target.method.as_str(), path, &headers, &target.body))
            .collect();
        Ok(Self {
            target,
            uris,
            headers,
            h1_requests,
            version,
            proxy,
            tls,
            timeout,
        })
    }

    pub async fn connect(&self) -> Result<(Conn, SetupTimes), TransportError> {
        let start = Instant::now();
        let dial = self
            .target
            .tunnel
            .as_ref()
            .map_or(self.target.addr, |t| t.addr);
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(dial))
            .await
            .map_err(|_| TransportError::Timeout)?
            .map_err(|_| TransportError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        if let Some(version) = self.proxy {
            let local = tcp.local_addr().map_err(|_| TransportError::Connect)?;
            let version = match version {
                ProxyHeaderVersion::V1 => ProxyVersion::V1,
                ProxyHeaderVersion::V2 => ProxyVersion::V2,
            };
            let header = proxy_header::encode(version, local, self.target.addr, None);
            tcp.write_all(&header)
                .await
                .map_err(|_| TransportError::Reset)?;
        }
        if let Some(tunnel) = &self.target.tunnel {
            tokio::time::timeout(self.timeout, open_tunnel(&mut tcp, tunnel, &self.target))
                .await
                .map_err(|_| TransportError::Timeout)??;
        }
        // Through a forward proxy: the tunnel's set-up included.
        let connect = start.elapsed();
        let (io, tls): (Box<dyn Io>, _) = match &self.tls {
            None => (Box::new(tcp), None),
            Some((connector, name)) => {
                let tls_start = Instant::now();
                let stream =
                    tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| TransportError::Timeout)?
                        .map_err(|_| TransportError::Tls)?;
                (Box::new(stream), Some(tls_start.elapsed()))
            }
        };
        let sender = match self.version {
            HttpVersion::Http1 => Sender::H1(H1Conn::new(io, self.target.method == Method::HEAD)),
            HttpVersion::Http2 => {
                let (sender, connection) =
                    conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .map_err(|_| TransportError::Protocol)?;
                tokio::spawn(connection);
                Sender::H2(sender)
            }
        };
        Ok((
            Conn {
                sender,
                answered: 0,
            },
            SetupTimes { connect, tls },
        ))
    }

    /// HTTP/1.1 request number `n` (paths rotate), serialized once.
    fn serialized(&self, n: u64) -> &[u8] {
        &self.h1_requests[(n % self.h1_requests.len() as u64) as usize]
    }

    /// HTTP/2 request number `n` (paths rotate), from parts prepared once.
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let uri = &self.uris[(n % self.uris.len() as u64) as usize];
        let mut request = Request::new(Full::new(self.target.body.clone()));
        *request.method_mut() = self.target.method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A response: status and body bytes read.
pub struct Response {
    pub status: u16,
    pub body_bytes: u64,
}

impl Conn {
    /// True while requests can be sent on this connection.
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::H1(c) => c.is_open(),
            Sender::H2(s) => !s.is_closed(),
        }
    }

    /// Sends request number `n` of `connector` and reads the whole response.
    pub async fn send(
        &mut self,
        connector: &Connector,
        n: u64,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let reused = self.answered > 0;
        let exchange = async {
            match &mut self.sender {
                Sender::H1(c) => c.exchange(connector.serialized(n)).await,
                Sender::H2(s) => {
                    // Gone away since the last answer: nothing is sent.
                    if let Err(e) = s.ready().await {
                        return Err(if reused {
                            TransportError::IdleClosed
                        } else {
                            classify(e)
                        });
                    }
                    let response = match s.send_request(connector.request(n)).await {
                        Ok(response) => response,
                        Err(e) if reused && not_processed(&e) => {
                            return Err(TransportError::IdleClosed);
                        }
                        Err(e) => return Err(classify(e)),
                    };
                    read_response(response).await
                }
            }
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?;
        if result.is_ok() {
            self.answered += 1;
        }
        result
    }
}

/// CONNECT to the target through the forward proxy on `tcp`; Ok once it answered 200 (the
/// stream is then the target's).
async fn open_tunnel(
    tcp: &mut TcpStream,
    tunnel: &super::target::Tunnel,
    target: &Target,
) -> Result<(), TransportError> {
    use tokio::io::AsyncReadExt as _;
    let authority = format!("{}:{}", target.host, target.addr.port());
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.addr.port())
    } else {
        authority
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = tunnel.authorization.as_ref().and_then(|a| a.to_str().ok()) {
        request += &format!("Proxy-Authorization: {auth}\r\n");
    }
    request += "\r\n";
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|_| TransportError::Reset)?;
    // The answer's head, byte by byte: nothing of the tunnel may be read past it (the target
    // speaks only after our first bytes anyway).
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(TransportError::Tunnel);
        }
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err(TransportError::Reset),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) if response.code == Some(200) => Ok(()),
        Ok(_) => Err(TransportError::Tunnel),
        Err(_) => Err(TransportError::Protocol),
    }
}

async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<Response, TransportError> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(classify)?;
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    Ok(Response { status, body_bytes })
}

/// Whether an HTTP/2 request failed because the server never processed it: above the last
/// stream id of its GOAWAY, or refused (RFC 9113 §8.7: safe to send again).
fn not_processed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    e.is_canceled()
}

fn classify(err: hyper::Error) -> TransportError {
    if err.is_parse() || err.is_user() {
        TransportError::Protocol
    } else if err.is_timeout() {
        TransportError::Timeout
    } else {
        TransportError::Reset
    }
}
